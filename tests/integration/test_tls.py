"""
TLS against the real server: client certificates with Python and openssl
clients, IPv6 listeners, bad input on TLS ports, certificate reload on
SIGHUP and the expiry warning, domains' certificates by SNI.
"""

import hashlib
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509
from twisted.trial import unittest

from mailsrv.tls import generate_self_signed
from tests import certs
from tests.integration.harness import LISTENERS, PASSWORD, MailServerProcess, require_tool

ALICE = "alice@example.test"
AUDIT = "tls_invalid_client_certificate"


def client_context(client=None):
    """A client TLS context that trusts any server, with C{client}'s certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client:
        context.load_cert_chain(*map(str, client))
    return context


def smtp_submit(address, context, message=b"Subject: hi\r\n\r\nhello\r\n"):
    """STARTTLS, AUTH and one message to alice; the refusals from sendmail."""
    with smtplib.SMTP(*address, timeout=30) as client:
        client.starttls(context=context)
        client.login(ALICE, PASSWORD)
        return client.sendmail(ALICE, [ALICE], message)


def pop3_login(address, context):
    pop3 = poplib.POP3_SSL(*address, context=context, timeout=30)
    pop3.user(ALICE)
    pop3.pass_(PASSWORD)
    count = pop3.stat()[0]
    pop3.quit()
    return count


def imap_login(address, context):
    imap = imaplib.IMAP4_SSL(*address, ssl_context=context, timeout=30)
    imap.login(ALICE, PASSWORD)
    status = imap.select("INBOX")[0]
    imap.logout()
    return status


REFUSED = (ssl.SSLError, OSError, EOFError, smtplib.SMTPException, poplib.error_proto,
           imaplib.IMAP4.abort, imaplib.IMAP4.error)


class ClientCertificateTests(unittest.TestCase):
    """
    [tls] client_cert = "require" with the test CA: every listener but the
    mx one wants a certificate issued by it.
    """

    def setUp(self):
        self.certs = certs.client_set(Path(self.mktemp()).absolute())
        self.server = MailServerProcess(extra={
            "tls": {"client_ca": str(self.certs["ca"][0]), "client_cert": "require"},
        }).start()
        self.addCleanup(self.server.cleanup)

    def clients(self):
        s = self.server
        return {
            "submission": lambda ctx: smtp_submit(s.address("submission"), ctx),
            "pop3s": lambda ctx: pop3_login(s.address("pop3s"), ctx),
            "imaps": lambda ctx: imap_login(s.address("imaps"), ctx),
        }

    def test_valid_certificate_works_others_are_refused_and_audited(self):
        for name, login in self.clients().items():
            login(client_context(self.certs["valid"]))
            for bad in (None, "selfsigned", "expired"):
                before = self.server.log_text().count(AUDIT)
                with self.assertRaises(REFUSED, msg=(name, bad)):
                    login(client_context(self.certs.get(bad)))
                self.server.wait_for_log(f"{AUDIT}: ip=127.0.0.1 reason=")
                self.assertEqual(self.server.log_text().count(AUDIT), before + 1, (name, bad))
        log = self.server.log_text()
        self.assertEqual(
            log.count("client certificate: subject=CN=alice@example.test ip=127.0.0.1"), 3)
        for reason in ("no certificate", "self-signed", "expired"):
            self.assertEqual(log.count(f"{AUDIT}: ip=127.0.0.1 reason={reason}"), 3, reason)
        self.assertIsNone(self.server.process.poll())

    def test_mx_listener_does_not_inherit_require(self):
        with self.server.smtp() as client:
            client.starttls(context=client_context())
            client.ehlo("mx.remote.test")
            self.assertEqual(client.mail("someone@remote.test")[0], 250)
            self.assertEqual(client.rcpt(ALICE)[0], 250)
        self.assertNotIn(AUDIT, self.server.log_text())

    def test_openssl_s_client(self):
        require_tool(self, "openssl")

        def s_client(*extra):
            host, port = self.server.address("imaps")
            return subprocess.run(
                ["openssl", "s_client", "-connect", f"{host}:{port}", "-ign_eof",
                 "-brief", *extra],
                input="a LOGOUT\r\n", capture_output=True, text=True, timeout=30)

        valid = s_client("-cert", str(self.certs["valid"][0]),
                         "-key", str(self.certs["valid"][1]))
        self.assertIn("* OK", valid.stdout, valid.stderr)
        self.assertIn("a OK", valid.stdout)
        forged = s_client("-cert", str(self.certs["selfsigned"][0]),
                          "-key", str(self.certs["selfsigned"][1]))
        self.assertNotIn("* OK", forged.stdout)
        self.server.wait_for_log(f"{AUDIT}: ip=127.0.0.1 reason=self-signed")


class SASLExternalTests(unittest.TestCase):
    """
    AUTH EXTERNAL with curl (swaks 20201014 has no EXTERNAL): the client
    certificate names the user, over implicit TLS and STARTTLS.
    """

    def setUp(self):
        require_tool(self, "curl")
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        ca = certs.make("Test Client CA", ca=True, days=365)
        self.certs = {name: made.write(directory, name) for name, made in [
            ("ca", ca),
            ("alice", certs.make("Alice", issuer=ca, emails=[ALICE])),
            ("carol", certs.make("carol@example.test", issuer=ca)),
        ]}
        self.server = MailServerProcess(extra={
            "tls": {"client_ca": str(self.certs["ca"][0]), "client_cert": "require"},
        }).start()
        self.addCleanup(self.server.cleanup)

    def curl(self, url, *extra, client="alice", user=f"{ALICE}:"):
        cert, key = self.certs[client]
        return subprocess.run(
            ["curl", "-s", "-v", "-k", "--cert", str(cert), "--key", str(key),
             "--login-options", "AUTH=EXTERNAL", "-u", user, *extra, url],
            input="Subject: external\r\n\r\nsent with a certificate\r\n",
            capture_output=True, text=True, timeout=60)

    def test_curl_logs_in_with_its_certificate(self):
        ports = self.server.ports
        sent = self.curl(f"smtp://127.0.0.1:{ports['submission']}/", "--ssl-reqd",
                         "--mail-from", ALICE, "--mail-rcpt", ALICE, "-T", "-")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        self.assertIn("< 250-AUTH PLAIN LOGIN EXTERNAL", sent.stderr)
        self.assertIn("< 235 2.7.0 Authentication successful", sent.stderr)
        listing = self.curl(f"pop3s://127.0.0.1:{ports['pop3s']}/1", user=":")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("> AUTH EXTERNAL", listing.stderr)
        self.assertIn("sent with a certificate", listing.stdout)
        fetched = self.curl(f"imap://127.0.0.1:{ports['imap']}/INBOX;UID=1", "--ssl-reqd",
                            "--sasl-ir")
        self.assertEqual(fetched.returncode, 0, fetched.stderr)
        self.assertIn("> A004 AUTHENTICATE EXTERNAL YWxpY2VAZXhhbXBsZS50ZXN0", fetched.stderr)
        self.assertIn("sent with a certificate", fetched.stdout)
        log = self.server.log_text()
        for protocol in ("smtp", "pop3", "imap"):
            self.assertIn(f"login ok: user={ALICE} ip=127.0.0.1 protocol={protocol}", log)

    def test_another_user_or_none_is_refused(self):
        ports = self.server.ports
        for url in (f"imaps://127.0.0.1:{ports['imaps']}/INBOX",
                    f"pop3s://127.0.0.1:{ports['pop3s']}/"):
            as_bob = self.curl(url, user="bob@example.test:")
            self.assertEqual(as_bob.returncode, 67, as_bob.stderr)  # login denied
            nobody = self.curl(url, client="carol", user=":")
            self.assertEqual(nobody.returncode, 67, nobody.stderr)
        log = self.server.log_text()
        for protocol in ("imap", "pop3"):
            self.assertIn(f"login failed: user=bob@example.test ip=127.0.0.1 "
                          f"protocol={protocol}", log)
            self.assertIn(f"login failed: user=carol@example.test ip=127.0.0.1 "
                          f"protocol={protocol}", log)
        self.assertNotIn("login ok", log)


class IPv6Tests(unittest.TestCase):
    """
    tcp6 listeners on ::1, and listeners on an IPv4-mapped address, whose
    peers count as IPv4 (loopback, POP-before-SMTP, the audit log).
    """

    def setUp(self):
        self.certs = certs.client_set(Path(self.mktemp()).absolute())
        on_ipv6 = {"endpoint": "tcp6:{port}:interface=\\:\\:1"}
        mapped = {"endpoint": "tcp6:{port}:interface=\\:\\:ffff\\:127.0.0.1"}
        self.server = MailServerProcess(
            extra={"tls": {"client_ca": str(self.certs["ca"][0])}},
            listeners={"submission": on_ipv6, "pop3s": on_ipv6, "imaps": on_ipv6,
                       "pop3": mapped, "smtps": {**mapped, "client_cert": "require"}},
        ).start()
        self.addCleanup(self.server.cleanup)

    def test_smtp_starttls_pop3_and_imap_over_implicit_tls_on_ipv6(self):
        self.assertEqual(self.server.address("submission")[0], "::1")
        self.assertEqual(smtp_submit(self.server.address("submission"), client_context()), {})
        deadline = time.monotonic() + 10
        while not self.server.maildir_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(pop3_login(self.server.address("pop3s"), client_context()), 1)
        self.assertEqual(imap_login(self.server.address("imaps"), client_context()), "OK")
        self.server.wait_for_log("login ok: user=alice@example.test ip=::1 protocol=imap")

    def test_ipv4_mapped_peers_are_ipv4(self):
        # a plaintext login is allowed: the mapped peer is loopback
        pop3 = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        pop3.user(ALICE)
        pop3.pass_(PASSWORD)
        pop3.quit()
        # and its POP-before-SMTP window opens for 127.0.0.1 on an IPv4 listener
        with self.server.smtp() as client:
            client.ehlo("laptop.example.test")
            self.assertEqual(client.mail(ALICE)[0], 250)
            self.assertEqual(client.rcpt("friend@elsewhere.test")[0], 250)
        with self.assertRaises(REFUSED):
            with smtplib.SMTP_SSL("127.0.0.1", self.server.ports["smtps"], timeout=30,
                                  context=client_context()) as client:
                client.noop()
        self.server.wait_for_log(f"{AUDIT}: ip=127.0.0.1 reason=no certificate")


def exchange(sock, data, until=b"\n", timeout=10):
    """Send C{data} (if any), then read until C{until}; what was read."""
    if data:
        sock.sendall(data)
    sock.settimeout(timeout)
    received = b""
    while until not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def read_until_closed(sock, timeout=10):
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


# What each STARTTLS flavour sends and expects: the STARTTLS command, a
# command to inject, a command to send after TLS and the start of its reply.
STARTTLS = {
    "smtp": (b"STARTTLS\r\n", b"QUIT\r\n", b"EHLO me\r\n", b"250-"),
    "pop3": (b"STLS\r\n", b"QUIT\r\n", b"CAPA\r\n", b"+OK Capability"),
    "imap": (b"a STARTTLS\r\n", b"b LOGOUT\r\n", b"c NOOP\r\n", b"c OK"),
}


class BadInputTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)

    def connect(self, name):
        sock = socket.create_connection(self.server.address(name), 10)
        self.addCleanup(sock.close)
        return sock

    def assert_serves(self, name):
        """A new TLS connection to listener C{name} gets a greeting."""
        sock = self.connect(name)
        if name in ("smtps", "pop3s", "imaps"):
            sock = client_context().wrap_socket(sock)
        self.assertRegex(exchange(sock, None), rb"^(220 |\+OK|\* OK)")
        self.assertIsNone(self.server.process.poll())

    def test_plain_text_to_implicit_tls_ports(self):
        for name, line in (("smtps", b"EHLO me\r\n"), ("pop3s", b"USER alice\r\n"),
                           ("imaps", b"a LOGIN alice secret\r\n")):
            sock = self.connect(name)
            sock.sendall(line)
            reply = read_until_closed(sock)
            self.assertNotIn(b"OK", reply)
            self.assertFalse(reply.startswith(b"220"))
            self.assert_serves(name)

    def test_abandoned_handshake_and_garbage(self):
        hello = ssl.MemoryBIO(), ssl.MemoryBIO()
        half = client_context().wrap_bio(*hello)
        with self.assertRaises(ssl.SSLWantReadError):
            half.do_handshake()
        client_hello = hello[1].read()
        for name in ("smtps", "pop3s", "imaps"):
            sock = self.connect(name)
            sock.sendall(client_hello[: len(client_hello) // 2])
            sock.close()
            sock = self.connect(name)  # the server's answer, then silence
            sock.sendall(client_hello)
            self.assertEqual(sock.recv(1), b"\x16")
            sock.close()
            sock = self.connect(name)
            sock.sendall(os.urandom(64) + b"\x16\x03\x01\xff\xff" + b"\x00" * 300)
            read_until_closed(sock)
            self.assert_serves(name)

    def starttls(self, name, inject=b""):
        command = STARTTLS[name][0]
        sock = self.connect(name)
        exchange(sock, None)
        if name == "smtp":
            exchange(sock, b"EHLO me\r\n", until=b"250 ")
        self.assertRegex(exchange(sock, command + inject), rb"^(220 |\+OK|a OK)")
        return client_context().wrap_socket(sock)

    def test_starttls_twice(self):
        for name, again, refusal in (("smtp", b"EHLO me\r\nSTARTTLS\r\n", b"503 5.5.1"),
                                     ("pop3", b"STLS\r\n", b"-ERR"),
                                     ("imap", b"b STARTTLS\r\n", b"b BAD")):
            tls = self.starttls(name)
            reply = exchange(tls, again, until=refusal)
            self.assertIn(refusal, reply, name)
            tls.close()
            self.assert_serves(name)

    def test_command_pipelined_after_starttls_is_discarded(self):
        for name in ("smtp", "pop3", "imap"):
            _, inject, command, own_reply = STARTTLS[name]
            tls = self.starttls(name, inject=inject)
            reply = exchange(tls, command, until=b"\r\n")
            # the first reply over TLS answers our command, not the injected
            # QUIT/LOGOUT, and the connection stays open
            self.assertTrue(reply.startswith(own_reply), (name, reply))
            self.assertNotIn(b"BYE", reply.upper())
            tls.close()
            self.assert_serves(name)


def server_fingerprint(address):
    with socket.create_connection(address, 10) as raw:
        with client_context().wrap_socket(raw) as conn:
            return hashlib.sha256(conn.getpeercert(binary_form=True)).hexdigest()


class ReloadTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess()
        self.cert = self.server.dir / "tls" / "cert.pem"
        self.key = self.server.dir / "tls" / "key.pem"
        self.addCleanup(self.server.cleanup)

    def test_sighup_serves_the_new_certificate_old_connections_keep_working(self):
        self.server.start()
        address = self.server.address("imaps")
        before = server_fingerprint(address)
        old = imaplib.IMAP4_SSL(*address, ssl_context=client_context(), timeout=30)
        old.login(ALICE, PASSWORD)
        generate_self_signed(str(self.cert), str(self.key), "new.example.test")
        self.server.process.send_signal(signal.SIGHUP)
        self.server.wait_for_log("TLS certificate reloaded")
        after = server_fingerprint(address)
        self.assertNotEqual(after, before)
        self.assertEqual(old.select("INBOX")[0], "OK")
        self.assertEqual(old.noop()[0], "OK")
        old.logout()
        # a broken file on the next reload: the whole reload is refused (the
        # config's files are checked first), the current certificate stays
        self.key.write_text("not a key\n")
        self.server.process.send_signal(signal.SIGHUP)
        self.server.wait_for_log("reload refused: ")
        self.assertIn("running on as before", self.server.log_text())
        self.assertEqual(server_fingerprint(address), after)
        self.assertIsNone(self.server.process.poll())

    def test_expiring_certificate_is_logged_at_start(self):
        generate_self_signed(str(self.cert), str(self.key), "mail.example.test", days=5)
        self.server.start()
        self.server.wait_for_log("TLS certificate expires in 4 days: " + str(self.cert))
        self.assertIn("subject=CN=mail.example.test notAfter=", self.server.log_text())


# What `openssl s_client -starttls` calls each STARTTLS listener's protocol.
S_CLIENT_STARTTLS = {"smtp": "smtp", "submission": "smtp", "pop3": "pop3", "imap": "imap"}


class DomainCertificateTests(unittest.TestCase):
    """
    [domain."NAME"] certificates by SNI on every listener, STARTTLS and
    implicit TLS, asked for with `openssl s_client -servername`.
    """

    def setUp(self):
        require_tool(self, "openssl")
        self.certs = Path(self.mktemp()).absolute()
        self.certs.mkdir(parents=True)
        self.org = self.install("example.org", ["example.org", "mail.example.org"])
        self.net = self.install("example.net", ["mail.example.net"])
        self.server = MailServerProcess(extra={
            "domains": {"local": ["example.test", "example.org", "example.net"]},
            **{f'domain."{name}"': {"tls_cert": str(self.certs / f"{name}.pem"),
                                    "tls_key": str(self.certs / f"{name}.key")}
               for name in ("example.org", "example.net")},
        })
        self.addCleanup(self.server.cleanup)

    def install(self, domain, names):
        issued = certs.make(f"mail.{domain}", names=names)
        issued.write(self.certs, domain)
        return issued.cert

    def served(self, listener, server_name):
        """The certificate listener C{listener} presents to C{server_name} (None: no SNI)."""
        host, port = self.server.address(listener)
        command = ["openssl", "s_client", "-connect", f"{host}:{port}"]
        command += ["-servername", server_name] if server_name else ["-noservername"]
        if listener in S_CLIENT_STARTTLS:
            command += ["-starttls", S_CLIENT_STARTTLS[listener]]
        result = subprocess.run(command, input="", capture_output=True, text=True, timeout=30)
        begin = result.stdout.find("-----BEGIN CERTIFICATE-----")
        self.assertNotEqual(begin, -1, (listener, server_name, result.stdout, result.stderr))
        return x509.load_pem_x509_certificate(result.stdout[begin:].encode())

    def test_each_name_gets_its_certificate_on_every_listener(self):
        self.server.start()
        default = x509.load_pem_x509_certificate(
            (self.server.dir / "tls" / "cert.pem").read_bytes())
        for listener, *_ in LISTENERS:
            for name, expected in (("example.org", self.org), ("mail.example.org", self.org),
                                   ("example.net", self.net), ("mail.example.net", self.net),
                                   ("unknown.example", default), ("example.test", default),
                                   (None, default)):
                self.assertEqual(self.served(listener, name), expected, (listener, name))

    def test_sighup_serves_a_domains_new_certificate(self):
        self.server.start()
        new = self.install("example.org", ["example.org"])
        self.server.process.send_signal(signal.SIGHUP)
        self.server.wait_for_log("TLS certificate of example.org reloaded: "
                                 f"{self.certs / 'example.org.pem'}")
        for listener in ("smtp", "pop3", "imaps"):
            self.assertEqual(self.served(listener, "example.org"), new, listener)
            self.assertEqual(self.served(listener, "example.net"), self.net, listener)

    def test_a_missing_domain_file_stops_check_config_and_start_up(self):
        (self.certs / "example.net.key").unlink()
        expected = (f'[domain."example.net"] tls_key: cannot read '
                    f'{self.certs / "example.net.key"}: No such file or directory')
        check = self.server.admin("check-config", check=False)
        self.assertEqual(check.returncode, 1)
        self.assertIn(expected, check.stderr)
        with self.assertRaises(AssertionError) as caught:
            self.server.start()
        self.assertIn(expected, str(caught.exception))
