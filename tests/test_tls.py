"""
Certificates, client certificates over real loopback handshakes (implicit
TLS and STARTTLS), expiry warnings, reload, the TLS version floor.
"""

import datetime
import os
import shutil
import signal
import socket
import ssl
import stat
import struct
from pathlib import Path
from types import SimpleNamespace

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from mailsrv import tls
from mailsrv.config import ConfigError
from mailsrv.context import MailServer
from tests import certs
from tests.helpers import make_settings
from tests.test_smtp.test_server import LogCapture


class TLSLogCapture(LogCapture):
    """The log events of a test, with the TLS ones picked out."""

    def audit(self):
        return [e for e in self.events if e.get("audit") == "tls_invalid_client_certificate"]

    def formats(self):
        return [e.get("log_format", "") for e in self.events]


class CertificateTests(unittest.TestCase):
    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.settings = make_settings(self.dir, tls={"cert": "tls/cert.pem",
                                                     "key": "tls/key.pem"})

    def test_self_signed_certificate_is_generated_once(self):
        server_tls = tls.ServerTLS(self.settings)
        self.assertIsInstance(server_tls.context().getContext(), SSL.Context)
        cert, key = self.dir / "tls" / "cert.pem", self.dir / "tls" / "key.pem"
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["mail.example.test"])
        before = cert.read_bytes()
        tls.ServerTLS(self.settings)
        self.assertEqual(cert.read_bytes(), before)

    def test_key_that_does_not_match(self):
        tls.ServerTLS(self.settings)
        other = Path(self.mktemp())
        other.mkdir()
        tls.generate_self_signed(str(other / "c"), str(other / "k"), "x.test")
        (self.dir / "tls" / "key.pem").write_bytes((other / "k").read_bytes())
        with self.assertRaises(ConfigError) as caught:
            tls.ServerTLS(self.settings)
        self.assertIn("[tls] cert: cannot use", str(caught.exception))

    def test_only_one_of_the_pair(self):
        tls.ServerTLS(self.settings)
        (self.dir / "tls" / "key.pem").unlink()
        with self.assertRaises(ConfigError) as caught:
            tls.ServerTLS(self.settings)
        self.assertIn("[tls] key", str(caught.exception))
        self.assertIn("does not exist", str(caught.exception))

    def test_chain_is_served_leaf_first(self):
        ca = certs.make("Server CA", ca=True)
        leaf = certs.make("mail.example.test", issuer=ca)
        tls_dir = self.dir / "tls"
        tls_dir.mkdir(parents=True)
        (tls_dir / "cert.pem").write_bytes(leaf.cert_pem + ca.cert_pem)
        (tls_dir / "key.pem").write_bytes(leaf.key_pem)
        server_tls = tls.ServerTLS(self.settings)
        self.assertEqual(server_tls.certificate, leaf.cert)


class RedisTLSConfigTests(unittest.TestCase):
    """[sessions] redis_ca, redis_cert and redis_key: read at start-up, checked by check-config too."""

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.authority = certs.make("Redis CA", ca=True)

    def preflight(self, **sessions):
        from mailsrv.preflight import preflight

        settings = make_settings(self.dir, sessions={"redis_url": "rediss://cache:6380/0",
                                                     **sessions})
        preflight(settings, task.Clock(), warnings=False)
        return settings

    def refused(self, **sessions):
        with self.assertRaises(ConfigError) as caught:
            self.preflight(**sessions)
        text = str(caught.exception)
        self.assertNotIn("\n", text)
        return text

    def test_ca_missing_or_not_pem(self):
        self.assertIn("[sessions] redis_ca: cannot read " + str(self.dir / "ca.pem"),
                      self.refused(redis_ca="ca.pem"))
        (self.dir / "ca.pem").write_text("not a certificate\n")
        self.assertIn("[sessions] redis_ca: " + str(self.dir / "ca.pem") +
                      " holds no PEM certificate", self.refused(redis_ca="ca.pem"))

    def test_client_certificate_unreadable_or_not_its_keys(self):
        client = certs.make("mailsrv", issuer=self.authority)
        cert, _ = client.write(self.dir, "client")
        self.assertIn("[sessions] redis_key: cannot read",
                      self.refused(redis_cert="client.pem", redis_key="none.key"))
        certs.make("other").write(self.dir, "other")
        self.assertIn("[sessions] redis_cert: cannot use " + str(cert),
                      self.refused(redis_cert="client.pem", redis_key="other.key"))

    def test_options_name_the_host_and_show_the_client_certificate(self):
        self.authority.write(self.dir, "ca")
        certs.make("mailsrv", issuer=self.authority).write(self.dir, "client")
        settings = self.preflight(redis_ca="ca.pem", redis_cert="client.pem",
                                  redis_key="client.key")
        options = tls.redis_client_tls(settings)("cache.example")
        self.assertEqual(options._hostnameASCII, "cache.example")

    def test_none_without_tls(self):
        self.assertIsNone(tls.redis_client_tls(make_settings(self.dir)))


class DeliveryCAConfigTests(unittest.TestCase):
    """[delivery] tls_ca_file is read at the first "verify" hop: start-up and check-config check it first."""

    def preflight(self, pem):
        from mailsrv.preflight import preflight

        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        if pem is not None:
            (self.dir / "ca.pem").write_bytes(pem)
        settings = make_settings(self.dir, delivery={"tls_ca_file": "ca.pem"})
        return preflight(settings, task.Clock(), warnings=False)

    def test_missing_file_is_one_config_line(self):
        with self.assertRaises(ConfigError) as caught:
            self.preflight(None)
        text = str(caught.exception)
        self.assertIn("[delivery] tls_ca_file: cannot read", text)
        self.assertNotIn("\n", text)

    def test_file_without_certificates(self):
        with self.assertRaises(ConfigError) as caught:
            self.preflight(b"not a certificate\n")
        self.assertIn("holds no PEM certificate", str(caught.exception))

    def test_broken_pem_block(self):
        with self.assertRaises(ConfigError) as caught:
            self.preflight(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        self.assertIn("[delivery] tls_ca_file: bad PEM certificate", str(caught.exception))

    def test_good_bundle_and_its_trust_root(self):
        bundle = certs.make("CA one", ca=True).cert_pem + certs.make("CA two", ca=True).cert_pem
        self.preflight(bundle)
        self.assertIsNotNone(tls.trust_root(self.dir / "ca.pem"))


class ClientCAConfigTests(unittest.TestCase):
    def settings(self, **tls_keys):
        self.dir = Path(self.mktemp()).absolute()
        return make_settings(self.dir, tls=tls_keys)

    def test_unreadable_client_ca_is_one_config_line(self):
        settings = self.settings(client_ca="missing.pem", client_cert="require")
        with self.assertRaises(ConfigError) as caught:
            tls.ServerTLS(settings)
        text = str(caught.exception)
        self.assertIn("[tls] client_ca: cannot read", text)
        self.assertIn("missing.pem", text)
        self.assertNotIn("\n", text)

    def test_client_ca_that_is_not_pem(self):
        settings = self.settings(client_ca="ca.pem", client_cert="request")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "ca.pem").write_text("not a certificate\n")
        with self.assertRaises(ConfigError) as caught:
            tls.ServerTLS(settings)
        self.assertIn("[tls] client_ca:", str(caught.exception))
        self.assertIn("holds no PEM certificate", str(caught.exception))

    def test_client_ca_with_a_broken_pem_block(self):
        settings = self.settings(client_ca="ca.pem", client_cert="request")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "ca.pem").write_text(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        with self.assertRaises(ConfigError) as caught:
            tls.ServerTLS(settings)
        self.assertIn("bad PEM certificate", str(caught.exception))

    def test_request_or_require_need_a_client_ca(self):
        for mode in ("request", "require"):
            with self.assertRaises(ConfigError) as caught:
                self.settings(client_cert=mode)
            self.assertIn(f"[tls] client_cert: '{mode}' needs [tls] client_ca",
                          str(caught.exception))

    def test_listener_value_needs_a_client_ca_too(self):
        with self.assertRaises(ConfigError) as caught:
            make_settings(Path(self.mktemp()), listen=[
                {"protocol": "imap", "endpoint": "tcp:0", "client_cert": "require"}])
        self.assertIn("[listen #1] client_cert: 'require' needs [tls] client_ca",
                      str(caught.exception))


class EffectiveModeTests(unittest.TestCase):
    """[tls] client_cert applies to every listener but mx, which only takes its own."""

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.paths = certs.client_set(self.dir / "certs")
        self.settings = make_settings(
            self.dir,
            tls={"client_ca": str(self.paths["ca"][0]), "client_cert": "require"},
            listen=[
                {"protocol": "smtp", "role": "mx", "endpoint": "tcp:0"},
                {"protocol": "smtp", "role": "mx", "endpoint": "tcp:0",
                 "client_cert": "request"},
                {"protocol": "smtp", "role": "submission", "endpoint": "tcp:0"},
                {"protocol": "pop3", "endpoint": "tcp:0", "client_cert": "none"},
                {"protocol": "imap", "endpoint": "tcp:0", "tls": "implicit"},
            ],
        )

    def test_modes(self):
        modes = [self.settings.client_cert_mode(l) for l in self.settings.listeners]
        self.assertEqual(modes, ["none", "request", "require", "none", "require"])

    def test_one_context_per_mode(self):
        server_tls = tls.ServerTLS(self.settings)
        server = MailServer(settings=self.settings, directory=None, checker=None,
                            sessions=None, store=None, spool=None, trusted=None,
                            tls_context=server_tls.context(), tls=server_tls,
                            clock=task.Clock(), resolvers=None)
        mx, mx_request, submission, pop3, imap = (
            server.tls_context_for(l) for l in self.settings.listeners)
        self.assertIs(mx, server.tls_context)
        self.assertIs(pop3, server.tls_context)
        self.assertIs(submission, imap)
        self.assertEqual(submission.mode, "require")
        self.assertEqual(mx_request.mode, "request")
        self.assertIsNot(mx_request, submission)


class ClientCertificateForLoginTests(unittest.TestCase):
    """MailServer.client_certificate: when a certificate may vouch for a login."""

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.paths = certs.client_set(self.dir / "certs")
        self.settings = make_settings(
            self.dir,
            tls={"client_ca": str(self.paths["ca"][0]), "client_cert": "require"},
            listen=[
                {"protocol": "imap", "endpoint": "tcp:0"},
                {"protocol": "imap", "endpoint": "tcp:0", "client_cert": "request"},
                {"protocol": "imap", "endpoint": "tcp:0", "client_cert": "none"},
                {"protocol": "imap", "endpoint": "tcp:0", "auth": False},
                {"protocol": "smtp", "role": "mx", "endpoint": "tcp:0"},
            ],
        )
        self.server = MailServer(settings=self.settings, directory=None, checker=None,
                                 sessions=None, store=None, spool=None, trusted=None,
                                 tls_context=None, clock=task.Clock(), resolvers=None)
        self.alice = certs.make("alice@example.test")

    def certificates(self, transport):
        return [self.server.client_certificate(transport, listener)
                for listener in self.settings.listeners]

    def test_require_and_request_with_a_certificate(self):
        self.assertEqual(self.certificates(certs.tls_transport(self.alice)),
                         [self.alice.cert, self.alice.cert, None, None, None])

    def test_no_certificate_or_no_tls(self):
        self.assertEqual(self.certificates(certs.tls_transport(None)), 5 * [None])
        self.assertEqual(self.certificates(StringTransport()), 5 * [None])

    def test_external_offered(self):
        def offered(transport):
            return [self.server.external_offered(transport, listener)
                    for listener in self.settings.listeners]

        self.assertEqual(offered(certs.tls_transport(self.alice)),
                         [True, True, False, False, False])
        # before the handshake ends, "require" promises a certificate
        self.assertEqual(offered(certs.tls_transport(None)), [True, False, False, False, False])
        self.assertEqual(offered(StringTransport()), 5 * [False])


class Reporter(Protocol):
    """
    Answers each line with the client certificate's subject (or "none");
    a C{STARTTLS} line first starts TLS, as the mail protocols do.
    """

    context = None

    def dataReceived(self, data):
        if data == b"STARTTLS\n":
            self.transport.write(b"GO\n")
            self.transport.startTLS(self.context)
            return
        cert = self.transport.getPeerCertificate()
        subject = cert.to_cryptography().subject.rfc4514_string() if cert else "none"
        self.transport.write(subject.encode() + b"\n")


def tls_client(port, client=None, starttls=False, host="127.0.0.1",
               maximum=None):
    """
    A blocking Python ssl client (run it in a thread): the server's answer,
    or C{"refused: ..."} when the handshake or first read fails.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum:
        context.maximum_version = maximum
    if client:
        context.load_cert_chain(*map(str, client))
    with socket.create_connection((host, port), 10) as raw:
        if starttls:
            raw.sendall(b"STARTTLS\n")
            assert raw.recv(3) == b"GO\n"
        try:
            with context.wrap_socket(raw) as conn:
                conn.sendall(b"who\n")
                answer = conn.recv(1000)
        except (ssl.SSLError, OSError) as e:
            return f"refused: {e}"
        return answer.decode().strip() if answer else "refused: closed"


class ClientCertificateTests(unittest.TestCase):
    """Real handshakes on loopback against each client_cert mode."""

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.paths = certs.client_set(self.dir / "certs")
        settings = make_settings(self.dir, tls={"client_ca": str(self.paths["ca"][0])})
        self.server_tls = tls.ServerTLS(settings)
        self.log = TLSLogCapture(self)

    def listen(self, mode, starttls=False):
        context = self.server_tls.context(mode)
        factory = Factory.forProtocol(Reporter)
        factory.protocol.context = context
        if not starttls:
            factory = TLSMemoryBIOFactory(context, False, factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def connect(self, port, name=None, starttls=False):
        client = self.paths[name] if name else None
        return threads.deferToThread(tls_client, port, client, starttls)

    async def check_require(self, starttls):
        port = self.listen("require", starttls)
        self.assertEqual(await self.connect(port, "valid", starttls),
                         "CN=alice@example.test")
        self.assertIn("client certificate: subject={subject} ip={ip}", self.log.formats())
        self.assertEqual(self.log.audit(), [])
        reasons = {}
        for name in (None, "selfsigned", "expired"):
            answer = await self.connect(port, name, starttls)
            self.assertTrue(answer.startswith("refused"), (name, answer))
            event = self.log.audit()[-1]
            self.assertEqual(event["ip"], "127.0.0.1")
            reasons[name] = event["reason"]
        self.assertEqual(reasons, {None: "no certificate", "selfsigned": "self-signed",
                                   "expired": "expired"})
        self.assertEqual(len(self.log.audit()), 3)

    def test_require_implicit_tls(self):
        return defer.ensureDeferred(self.check_require(starttls=False))

    def test_require_starttls(self):
        return defer.ensureDeferred(self.check_require(starttls=True))

    async def check_no_certificate_tls_1_2(self):
        port = self.listen("require")
        answer = await threads.deferToThread(tls_client, port,
                                             maximum=ssl.TLSVersion.TLSv1_2)
        self.assertTrue(answer.startswith("refused"), answer)
        self.assertEqual([e["reason"] for e in self.log.audit()], ["no certificate"])

    def test_no_certificate_over_tls_1_2(self):
        return defer.ensureDeferred(self.check_no_certificate_tls_1_2())

    async def check_request(self):
        port = self.listen("request")
        self.assertEqual(await self.connect(port), "none")
        self.assertEqual(await self.connect(port, "valid"), "CN=alice@example.test")
        self.assertTrue((await self.connect(port, "selfsigned")).startswith("refused"))
        self.assertEqual([e["reason"] for e in self.log.audit()], ["self-signed"])

    def test_request_accepts_no_certificate_but_refuses_an_invalid_one(self):
        return defer.ensureDeferred(self.check_request())

    async def check_none(self):
        port = self.listen("none")
        self.assertEqual(await self.connect(port, "selfsigned"), "none")

    def test_none_ignores_client_certificates(self):
        return defer.ensureDeferred(self.check_none())


def client_hello(version):
    """A minimal ClientHello record offering only C{version} (no extensions)."""
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00"
            + b"\x00\x04\xc0\x13\x00\x2f" + b"\x01\x00")
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def first_record(port, data):
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(data)
        return s.recv(100)


class VersionTests(unittest.TestCase):
    def setUp(self):
        settings = make_settings(Path(self.mktemp()))
        factory = TLSMemoryBIOFactory(tls.ServerTLS(settings).context(), False,
                                      Factory.forProtocol(Reporter))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def check(self):
        tls11 = await threads.deferToThread(first_record, self.port, client_hello(0x0302))
        # a fatal protocol_version alert
        self.assertEqual(tls11[0], 0x15)
        self.assertEqual(tls11[-2:], b"\x02\x46")
        answer = await threads.deferToThread(tls_client, self.port,
                                             maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(answer, "none")

    def test_tls_1_1_is_refused_1_2_works(self):
        return defer.ensureDeferred(self.check())


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


class ExpiryAndReloadTests(unittest.TestCase):
    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.settings = make_settings(self.dir)
        self.cert = self.dir / "tls" / "cert.pem"
        self.key = self.dir / "tls" / "key.pem"
        self.log = TLSLogCapture(self)

    def install(self, days):
        tls.generate_self_signed(str(self.cert), str(self.key), "mail.example.test", days)

    def warnings(self):
        return [e for e in self.log.events if "TLS certificate E" in e.get("log_format", "")
                or "TLS certificate expires" in e.get("log_format", "")]

    def test_expiring_soon_warns(self):
        self.install(days=5)
        tls.ServerTLS(self.settings).check_expiry()
        [event] = self.warnings()
        self.assertEqual(event["log_level"].name, "warn")
        self.assertEqual(event["path"], str(self.cert))
        self.assertEqual(event["subject"], "CN=mail.example.test")
        self.assertIn(event["days"], (4, 5))

    def test_expired_is_critical(self):
        self.install(days=30)
        tls.ServerTLS(self.settings).check_expiry(now=_now() + datetime.timedelta(days=31))
        [event] = self.warnings()
        self.assertEqual(event["log_level"].name, "critical")
        self.assertIn("EXPIRED", event["log_format"])

    def test_valid_certificate_is_quiet(self):
        self.install(days=30)
        tls.ServerTLS(self.settings).check_expiry()
        self.assertEqual(self.warnings(), [])

    def test_checked_at_start_and_daily(self):
        self.install(days=5)
        clock = task.Clock()
        watch = tls.CertificateWatch(tls.ServerTLS(self.settings), clock)
        previous = signal.getsignal(signal.SIGHUP)
        watch.startService()
        self.assertEqual(len(self.warnings()), 1)
        clock.advance(tls.CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), 2)
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), previous)
        watch.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
        clock.advance(tls.CHECK_INTERVAL)
        self.assertEqual(len(self.warnings()), 2)

    def test_reload_takes_new_files_for_new_connections(self):
        self.install(days=30)
        server_tls = tls.ServerTLS(self.settings)
        context = server_tls.context()
        old = context.getContext()
        self.install(days=60)
        self.assertTrue(server_tls.reload())
        self.assertIsNot(context.getContext(), old)
        self.assertEqual(server_tls.certificate,
                         x509.load_pem_x509_certificate(self.cert.read_bytes()))

    def test_bad_new_files_keep_the_old_ones(self):
        self.install(days=30)
        server_tls = tls.ServerTLS(self.settings)
        before = server_tls.certificate
        context = server_tls.context("none").getContext()
        self.key.write_text("garbage")
        self.assertFalse(server_tls.reload())
        self.assertEqual(server_tls.certificate, before)
        self.assertIs(server_tls.context("none").getContext(), context)
        self.assertIn("TLS reload failed, still using the previous certificate: {error}",
                      self.log.formats())

    async def check_sighup(self):
        self.install(days=30)
        server_tls = tls.ServerTLS(self.settings)
        watch = tls.CertificateWatch(server_tls, reactor)  # the signal's reload runs on it
        watch.startService()
        self.addCleanup(watch.stopService)
        self.install(days=60)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if server_tls.certificate.not_valid_after_utc > _now() + datetime.timedelta(days=45):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("SIGHUP did not reload the certificate")

    def test_sighup_reloads(self):
        return defer.ensureDeferred(self.check_sighup())


def handshake(factory, server_name=None, client=None):
    """
    A TLS handshake in memory between a connection of C{factory} and a
    client asking for C{server_name} (SNI) with C{client}'s certificate.

    @return: the certificate the server presented (C{cryptography}).
    @raise SSL.Error: when the server refuses the handshake.
    """
    server = factory.serverConnectionForTLS(None)
    server.set_app_data(SimpleNamespace(  # (a TLSMemoryBIOProtocol over a plain protocol)
        transport=SimpleNamespace(getPeer=lambda: IPv4Address("TCP", "127.0.0.1", 1)),
        wrappedProtocol=None))
    server.set_accept_state()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if client:
        context.use_certificate_file(str(client[0]))
        context.use_privatekey_file(str(client[1]))
    peer = SSL.Connection(context, None)
    if server_name:
        peer.set_tlsext_host_name(server_name.encode())
    peer.set_connect_state()
    for _ in range(5):
        for side, other in ((peer, server), (server, peer)):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
    return peer.get_peer_certificate().to_cryptography()


class DomainCertificateTests(unittest.TestCase):
    """
    [domain."NAME"] certificates chosen by the name the client asks for:
    the domain's own, then its certificate's subjectAltNames.
    """

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.org = self.install("example.org", ["example.org", "mail.example.org",
                                                "example.net"])
        self.net = self.install("example.net", ["mail.example.net", "*.pop.example.net"])
        self.paths = certs.client_set(self.dir / "clients")
        self.log = TLSLogCapture(self)

    def install(self, domain, names, days=30):
        issued = certs.make(f"mail.{domain}", names=names, days=days)
        issued.write(self.dir, domain)
        return issued.cert

    def settings(self, **tls_keys):
        return make_settings(
            self.dir, tls=tls_keys,
            domains={"local": ["example.test", "example.org", "example.net"]},
            domain={name: {"tls_cert": f"{name}.pem", "tls_key": f"{name}.key"}
                    for name in ("example.org", "example.net")})

    def server_tls(self, **tls_keys):
        return tls.ServerTLS(self.settings(**tls_keys))

    def test_each_name_gets_its_certificate(self):
        server_tls = self.server_tls()
        for name, expected in [
            ("example.org", self.org),
            ("MAIL.example.org.", self.org),
            ("example.net", self.net),  # its own domain, before example.org's altName
            ("mail.example.net", self.net),
            ("imap.pop.example.net", self.net),
            ("a.b.pop.example.net", server_tls.certificate),  # * is one label
            ("pop.example.net", server_tls.certificate),
            ("example.test", server_tls.certificate),
            ("unknown.example", server_tls.certificate),
            (None, server_tls.certificate),
        ]:
            self.assertEqual(handshake(server_tls.context(), name), expected, name)

    def test_client_certificates_are_still_verified(self):
        server_tls = self.server_tls(client_ca=str(self.paths["ca"][0]))
        context = server_tls.context("require")
        self.assertEqual(handshake(context, "example.org", self.paths["valid"]), self.org)
        for bad in (None, "selfsigned"):
            with self.assertRaises(SSL.Error):
                handshake(context, "example.org", self.paths.get(bad))
        self.assertEqual([e["reason"] for e in self.log.audit()],
                         ["no certificate", "self-signed"])

    def test_reload_takes_the_domains_new_files(self):
        server_tls = self.server_tls()
        new = self.install("example.org", ["example.org"], days=60)
        self.assertTrue(server_tls.reload())
        self.assertEqual(handshake(server_tls.context(), "example.org"), new)
        self.assertEqual(handshake(server_tls.context(), "mail.example.net"), self.net)
        [event] = [e for e in self.log.events if e.get("domain") == "example.org"]
        self.assertEqual(event["log_format"],
                         "TLS certificate of {domain} reloaded: {path} (SHA-256 {fingerprint})")
        self.assertEqual(event["path"], str(self.dir / "example.org.pem"))

    def test_a_bad_domain_file_keeps_every_old_certificate(self):
        server_tls = self.server_tls()
        global_before = server_tls.certificate
        (self.dir / "example.net.key").write_text("garbage")
        tls.generate_self_signed(str(self.dir / "tls" / "cert.pem"),
                                 str(self.dir / "tls" / "key.pem"), "new.example.test")
        self.assertFalse(server_tls.reload())
        self.assertEqual(handshake(server_tls.context(), "example.net"), self.net)
        self.assertEqual(handshake(server_tls.context()), global_before)
        [event] = [e for e in self.log.events if "TLS reload failed" in e["log_format"]]
        self.assertIn('[domain."example.net"] tls_cert: cannot use', event["error"])

    def test_expiry_warning_names_the_domain(self):
        self.install("example.net", ["mail.example.net"], days=5)
        self.server_tls().check_expiry()
        [event] = [e for e in self.log.events if "expires in" in e.get("log_format", "")]
        self.assertTrue(event["log_format"].startswith("TLS certificate of {domain} expires"))
        self.assertEqual((event["domain"], event["path"], event["subject"]),
                         ("example.net", str(self.dir / "example.net.pem"),
                          "CN=mail.example.net"))

    def test_missing_or_mismatched_files_are_config_errors(self):
        from mailsrv.preflight import preflight

        (self.dir / "example.org.key").write_bytes((self.dir / "example.net.key").read_bytes())
        with self.assertRaises(ConfigError) as caught:
            self.server_tls()
        self.assertIn('[domain."example.org"] tls_cert: cannot use '
                      f'{self.dir}/example.org.pem with {self.dir}/example.org.key',
                      str(caught.exception))
        (self.dir / "example.org.key").unlink()
        expected = (f'[domain."example.org"] tls_key: cannot read {self.dir}/example.org.key: '
                    "No such file or directory")
        with self.assertRaises(ConfigError) as caught:
            self.server_tls()
        self.assertIn(expected, str(caught.exception))
        # check-config too, even while the [tls] pair is still to be generated
        shutil.rmtree(self.dir / "tls")
        with self.assertRaises(ConfigError) as caught:
            preflight(self.settings(), task.Clock(), warnings=False)
        self.assertIn(expected, str(caught.exception))
