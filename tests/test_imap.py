"""
The IMAP server through its protocol: exact bytes in, exact replies out, with
a StringTransport and a task.Clock.
"""

import base64
import dataclasses
import errno
import itertools
import os
from pathlib import Path
from types import SimpleNamespace

from twisted.cred import checkers, credentials, error
from twisted.internet import defer, interfaces, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import alsoProvides, implementer

from mailsrv import context, dns
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import UserPasswordChecker
from mailsrv.imap import mailbox as mailbox_module
from mailsrv.imap import server as server_module
from mailsrv.imap.server import build_factory
from mailsrv.sessions import MemorySessionStore
from mailsrv.store import folder as folder_module, layout
from mailsrv.store.delivery import deliver_file
from mailsrv.store.mailstore import MailStore
from tests import certs
from tests.fulldisk import FullDisk
from tests.helpers import make_settings, opened
from tests.test_smtp.support import run_threads_inline
from tests.test_smtp.test_server import LogCapture

ALICE = "alice@example.test"
# SELECT's FLAGS before any keyword
PERMANENT = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"
# every extension, in every state (tests/test_imap_extensions.py tests each)
EXTENSIONS = (b"LITERAL+ ID ENABLE NAMESPACE IDLE UIDPLUS MOVE SPECIAL-USE CONDSTORE"
              b" QRESYNC MULTIAPPEND BINARY CATENATE UNSELECT CHILDREN LIST-EXTENDED LIST-STATUS"
              b" STATUS=SIZE ESEARCH SEARCHRES SORT SORT=DISPLAY THREAD=REFERENCES"
              b" THREAD=ORDEREDSUBJECT ESORT APPENDLIMIT=36700160")
MESSAGE = (
    b"From: Bob <bob@example.org>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: Hello there\r\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hi Alice,\r\nhow are you?\r\n"
)
MULTIPART = (
    b"From: carol@example.org\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="xx"\r\n'
    b"\r\n"
    b"--xx\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"part one\r\n"
    b"--xx\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAEC\r\n"
    b"--xx--\r\n"
)


@implementer(checkers.ICredentialsChecker)
class FakeChecker:
    """Answers at once, like the real checker minus the thread."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, passwords):
        self.passwords = passwords

    def requestAvatarId(self, creds):
        name = creds.username.decode()
        if self.passwords.get(name) == creds.password.decode():
            return defer.succeed(name)
        return defer.fail(error.UnauthorizedLogin())


class SyncThreads:
    """deferToThread run at once, so protocol tests need no reactor."""

    @staticmethod
    def deferToThread(f, *args, **kwargs):
        return defer.maybeDeferred(f, *args, **kwargs)


@implementer(interfaces.ITLSTransport)
class TLSStringTransport(StringTransport):
    tls = None

    def startTLS(self, ctx):
        self.tls = ctx
        alsoProvides(self, interfaces.ISSLTransport)


def make_mail_server(root, clock, checker=None, **sections):
    settings = make_settings(root, **sections)
    users = UserDB(root / "users", clock)
    directory = Directory(settings.local_domains, users, AliasMap(root / "aliases", clock))
    return context.MailServer(
        settings=settings,
        directory=directory,
        checker=checker or FakeChecker({ALICE: "secret", "bob@example.test": "pw"}),
        sessions=MemorySessionStore(1800, clock),
        store=MailStore(root / "mail", clock),
        spool=None,
        trusted=None,
        tls_context=object(),
        clock=clock,
        resolvers=dns.Resolvers(clock),
    )


def deliver(store, data, user=ALICE, folder="INBOX"):
    source = Path(store.mail_root).parent / "source"
    source.write_bytes(data)
    deliver_file(source, [store.maildir(user, folder)])
    source.unlink()


class Client:
    """One connection: send lines, read what the server wrote."""

    def __init__(self, server, tls="starttls", ip="127.0.0.1", secure=False, auth=True,
                 client_cert=None, issued=None):
        """@param issued: the client's certificate (L{certs.present}) if C{client_cert}."""
        listener = _listener(server.settings, tls, auth, client_cert)
        self.factory = build_factory(server, listener)
        self.clock = server.clock
        self.proto = self.factory.buildProtocol(None)
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        if secure:
            alsoProvides(self.transport, interfaces.ISSLTransport)
        if client_cert is not None:
            certs.present(self.transport, issued)
        self.proto.makeConnection(self.transport)
        self.greeting = self.read()

    def read(self):
        self.pump()
        data = self.transport.value()
        self.transport.clear()
        return data

    def pump(self):
        """Run what the clock and the transport's producer hold now."""
        for _ in range(10000):
            producer = self.transport.producer
            if producer is not None:
                producer.resumeProducing()
            elif any(c.getTime() <= self.clock.seconds()
                     for c in self.clock.getDelayedCalls()):
                self.clock.advance(0)
            else:
                return

    def send(self, data):
        self.proto.dataReceived(data)
        return self.read()

    def cmd(self, line):
        return self.send(line + b"\r\n")

    def login(self):
        reply = self.cmd(b"L LOGIN alice@example.test secret")
        assert reply.startswith(b"L OK"), reply
        return reply


def _listener(settings, tls, auth=True, client_cert=None):
    from mailsrv.config import Listener

    return Listener(index=0, protocol="imap", role="", endpoint="tcp:0", tls=tls,
                    max_connections=10, auth=auth, client_cert=client_cert)


class IMAPTestCase(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.clock = task.Clock()
        self.clock.advance(1_795_000_000)
        self.patch(folder_module, "threads", SyncThreads)
        self.patch(mailbox_module, "threads", SyncThreads)
        self.server = make_mail_server(self.root, self.clock)
        self.store = self.server.store

    def client(self, **kw):
        c = Client(self.server, **kw)
        self.addCleanup(c.proto.connectionLost, None)
        return c

    def selected(self, *messages):
        """A session with INBOX selected, holding C{messages}, none \\Recent."""
        for m in messages:
            deliver(self.store, m)
        opened(self.store, ALICE).claim_recent()
        c = self.client()
        c.login()
        c.cmd(b"S SELECT INBOX")
        return c


class GreetingAndLoginTests(IMAPTestCase):
    def test_greeting_loopback_plaintext_allowed(self):
        c = self.client()
        self.assertEqual(
            c.greeting,
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN AUTH=LOGIN SASL-IR " + EXTENSIONS
            + b"] "
            b"mailsrv IMAP4rev1 ready\r\n",
        )

    def test_capability_without_tls_remote(self):
        c = self.client(ip="192.0.2.7")
        self.assertEqual(
            c.cmd(b"a CAPABILITY"),
            b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED " + EXTENSIONS + b"\r\n"
            b"a OK CAPABILITY completed\r\n",
        )

    def test_login_refused_without_tls(self):
        c = self.client(ip="192.0.2.7")
        self.assertEqual(
            c.cmd(b"a LOGIN alice@example.test secret"),
            b"a NO [PRIVACYREQUIRED] Passwords need TLS: use STARTTLS first\r\n",
        )
        self.assertIsNone(self.successResultOf(
            self.server.sessions.window_user("192.0.2.7")))

    def test_starttls_then_login(self):
        c = self.client(ip="192.0.2.7")
        self.assertEqual(c.cmd(b"t STARTTLS"), b"t OK Begin TLS negotiation now\r\n")
        self.assertIs(c.transport.tls, self.server.tls_context)
        self.assertEqual(
            c.cmd(b"a CAPABILITY"),
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR " + EXTENSIONS + b"\r\n"
            b"a OK CAPABILITY completed\r\n",
        )
        self.assertTrue(c.cmd(b"l LOGIN alice@example.test secret").startswith(b"l OK"))

    def test_starttls_drops_pipelined_plaintext(self):
        c = self.client(ip="192.0.2.7")
        reply = c.send(b"t STARTTLS\r\nx LOGIN alice@example.test secret\r\n")
        self.assertEqual(reply, b"t OK Begin TLS negotiation now\r\n")
        self.assertEqual(c.proto.state, "unauth")

    def test_no_starttls_when_none_or_implicit(self):
        c = self.client(tls="none")
        self.assertNotIn(b"STARTTLS", c.greeting)
        self.assertEqual(c.cmd(b"t STARTTLS"), b"t BAD STARTTLS not available\r\n")
        c = self.client(tls="implicit", ip="192.0.2.7", secure=True)
        self.assertEqual(
            c.greeting,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN SASL-IR " + EXTENSIONS + b"] "
            b"mailsrv IMAP4rev1 ready\r\n",
        )
        self.assertTrue(c.login().startswith(b"L OK"))

    def test_required_refuses_loopback_plaintext(self):
        c = self.client(tls="required")
        self.assertIn(b"LOGINDISABLED", c.greeting)
        self.assertTrue(c.cmd(b"a LOGIN alice@example.test secret").startswith(
            b"a NO [PRIVACYREQUIRED]"))

    def test_login_records_window_and_logs(self):
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        c = self.client()
        self.assertEqual(
            c.cmd(b"a LOGIN alice@example.test secret"),
            b"a OK [CAPABILITY IMAP4rev1 " + EXTENSIONS + b"] Logged in\r\n",
        )
        self.assertEqual(
            self.successResultOf(self.server.sessions.window_user("127.0.0.1")), ALICE
        )
        self.assertEqual(
            c.cmd(b"b LOGIN x y"), b"b BAD Command not valid in this state\r\n"
        )
        self.assertEqual(
            self.client().cmd(b'b LOGIN "bob@example.test" wrong'),
            b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n",
        )
        lines = [e["log_format"].format(**e) for e in events
                 if e.get("log_format", "").startswith("login")]
        self.assertEqual(lines, [
            "login ok: user=alice@example.test ip=127.0.0.1 protocol=imap",
            "login failed: user=bob@example.test ip=127.0.0.1 protocol=imap",
        ])
        self.assertFalse(any("secret" in repr(e) or "wrong" in repr(e) for e in events))

    def test_login_with_literal(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a LOGIN {18}"), b"+ Ready for 18 octets of text\r\n")
        self.assertTrue(c.cmd(b"alice@example.test secret").startswith(b"a OK"))

    def test_logout(self):
        c = self.client()
        self.assertEqual(
            c.cmd(b"z LOGOUT"), b"* BYE Nice talking to you\r\nz OK LOGOUT successful\r\n"
        )
        self.assertTrue(c.transport.disconnecting)


def plain(user, password):
    return base64.b64encode(b"\0" + user + b"\0" + password)


LOGGED_IN = b"OK [CAPABILITY IMAP4rev1 " + EXTENSIONS + b"] Logged in\r\n"


class AuthenticateTests(IMAPTestCase):
    """AUTHENTICATE PLAIN (RFC 3501 6.2.2, SASL-IR from RFC 4959)."""

    def test_with_continuation(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a AUTHENTICATE PLAIN"), b"+ \r\n")
        self.assertEqual(c.cmd(plain(b"alice@example.test", b"secret")), b"a " + LOGGED_IN)
        self.assertEqual(
            self.successResultOf(self.server.sessions.window_user("127.0.0.1")), ALICE)
        self.assertEqual(c.cmd(b"b AUTHENTICATE PLAIN"),
                         b"b BAD Command not valid in this state\r\n")

    def test_initial_response(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a authenticate plain " + plain(b"bob@example.test", b"pw")),
                         b"a " + LOGGED_IN)

    def test_wrong_password(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a AUTHENTICATE PLAIN " + plain(b"bob@example.test", b"x")),
                         b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertEqual(c.proto.state, "unauth")

    def test_cancel_malformed_and_unknown(self):
        c = self.client()
        table = [
            (b"a AUTHENTICATE PLAIN", b"+ \r\n"),
            (b"*", b"a BAD Authentication cancelled\r\n"),
            (b"b AUTHENTICATE PLAIN %%%", b"b BAD Cannot decode base64 response\r\n"),
            (b"c AUTHENTICATE PLAIN", b"+ \r\n"),
            (b"A" * 3000, b"c BAD Response too long\r\n"),
            (b"d AUTHENTICATE PLAIN =", b"d BAD Malformed PLAIN response\r\n"),
            (b"e AUTHENTICATE PLAIN " + base64.b64encode(b"bob\0alice@example.test\0secret"),
             b"e NO [AUTHORIZATIONFAILED] Authentication credentials invalid\r\n"),
            (b"f AUTHENTICATE CRAM-MD5", b"f NO Unsupported authentication mechanism\r\n"),
            (b"g AUTHENTICATE EXTERNAL", b"g NO Unsupported authentication mechanism\r\n"),
            (b"h AUTHENTICATE", b"h BAD Syntax: AUTHENTICATE mechanism\r\n"),
        ]
        for line, reply in table:
            self.assertEqual(c.cmd(line), reply, line)
        self.assertEqual(c.proto.state, "unauth")
        self.assertTrue(c.login().startswith(b"L OK"))

    def test_login_mechanism(self):
        c = self.client()
        table = [
            (b"a AUTHENTICATE LOGIN", b"+ VXNlcm5hbWU6\r\n"),
            (base64.b64encode(b"bob@example.test"), b"+ UGFzc3dvcmQ6\r\n"),
            (base64.b64encode(b"x"), b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
            (b"b AUTHENTICATE LOGIN", b"+ VXNlcm5hbWU6\r\n"),
            (b"*", b"b BAD Authentication cancelled\r\n"),
            (b"c AUTHENTICATE LOGIN " + base64.b64encode(b"bob@example.test"),
             b"+ UGFzc3dvcmQ6\r\n"),
            (base64.b64encode(b"pw"), b"c " + LOGGED_IN),
        ]
        for line, reply in table:
            self.assertEqual(c.cmd(line), reply, line)
        self.assertEqual(
            self.successResultOf(self.server.sessions.window_user("127.0.0.1")),
            "bob@example.test")

    def test_login_mechanism_needs_tls_from_afar(self):
        c = self.client(ip="192.0.2.7")
        self.assertEqual(c.cmd(b"a AUTHENTICATE LOGIN"),
                         b"a NO [PRIVACYREQUIRED] Passwords need TLS: use STARTTLS first\r\n")
        c = self.client(ip="192.0.2.7", tls="implicit", secure=True)
        self.assertIn(b" AUTH=PLAIN AUTH=LOGIN SASL-IR ", c.greeting)
        self.assertEqual(c.cmd(b"a AUTHENTICATE LOGIN"), b"+ VXNlcm5hbWU6\r\n")

    def test_overlong_response_line(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a AUTHENTICATE PLAIN"), b"+ \r\n")
        self.assertEqual(c.cmd(b"A" * 70000), b"a BAD Line too long\r\n")
        self.assertEqual(c.cmd(b"b NOOP"), b"b OK NOOP completed\r\n")

    def test_pipelined_behind_authenticate(self):
        deliver(self.store, MESSAGE)
        c = self.client()
        reply = c.send(b"a AUTHENTICATE PLAIN\r\n" + plain(b"alice@example.test", b"secret")
                       + b"\r\nb SELECT INBOX\r\n")
        self.assertTrue(reply.startswith(b"+ \r\na " + LOGGED_IN), reply)
        self.assertTrue(reply.endswith(b"b OK [READ-WRITE] SELECT completed\r\n"), reply)

    def test_refused_without_tls_from_afar(self):
        c = self.client(ip="192.0.2.7")
        self.assertEqual(c.cmd(b"a AUTHENTICATE PLAIN"),
                         b"a NO [PRIVACYREQUIRED] Passwords need TLS: use STARTTLS first\r\n")

    def test_auth_disabled_on_listener(self):
        c = self.client(auth=False, secure=True)
        self.assertEqual(c.greeting,
                         b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED " + EXTENSIONS + b"] "
                         b"mailsrv IMAP4rev1 ready\r\n")
        refusal = b"NO Password logins are disabled on this port\r\n"
        self.assertEqual(c.cmd(b"a LOGIN alice@example.test secret"), b"a " + refusal)
        self.assertEqual(c.cmd(b"b AUTHENTICATE PLAIN " + plain(b"alice@example.test", b"secret")),
                         b"b " + refusal)
        self.assertEqual(c.cmd(b"c AUTHENTICATE PLAIN"), b"c " + refusal)


class ExternalTests(IMAPTestCase):
    """AUTHENTICATE EXTERNAL: the verified client certificate names the user (RFC 4422 A)."""

    def setUp(self):
        super().setUp()
        UserDB(self.root / "users", self.clock).set_password(ALICE, "secret")
        self.clock.advance(1)  # the directory looks at the file once a second
        self.alice = certs.make(ALICE)

    def client(self, issued=None, client_cert="require", ip="192.0.2.7"):
        c = Client(self.server, tls="implicit", ip=ip, secure=True, client_cert=client_cert,
                   issued=issued)
        self.addCleanup(c.proto.connectionLost, None)
        return c

    def test_offered_with_a_certificate_only(self):
        for c in (self.client(self.alice), self.client(self.alice, client_cert="request")):
            self.assertIn(b" AUTH=PLAIN AUTH=LOGIN AUTH=EXTERNAL SASL-IR ", c.greeting)
            self.assertIn(b" AUTH=PLAIN AUTH=LOGIN AUTH=EXTERNAL SASL-IR ",
                          c.cmd(b"a CAPABILITY"))
        for c in (self.client(None, client_cert="request"),
                  self.client(self.alice, client_cert="none")):
            self.assertIn(b" AUTH=PLAIN AUTH=LOGIN SASL-IR ", c.cmd(b"a CAPABILITY"))
            self.assertEqual(c.cmd(b"b AUTHENTICATE EXTERNAL ="),
                             b"b NO Unsupported authentication mechanism\r\n")

    def test_offered_in_the_greeting_before_the_handshake_under_require(self):
        """The greeting is written before the handshake, which ends with a certificate."""
        c = self.client(None)
        self.assertIn(b" AUTH=PLAIN AUTH=LOGIN AUTH=EXTERNAL SASL-IR ", c.greeting)
        self.assertEqual(c.cmd(b"a AUTHENTICATE EXTERNAL ="),
                         b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n")

    def test_success(self):
        logs = LogCapture(self)
        for lines in ([b"a AUTHENTICATE EXTERNAL ="], [b"a AUTHENTICATE EXTERNAL", b""],
                      [b"a AUTHENTICATE EXTERNAL " + base64.b64encode(ALICE.encode())]):
            c = self.client(self.alice)
            replies = [c.cmd(line) for line in lines]
            self.assertTrue(replies[-1].startswith(b"a OK [CAPABILITY IMAP4rev1 "), lines)
            self.assertEqual(c.proto.state, "auth")
        self.assertEqual(
            self.successResultOf(self.server.sessions.window_user("192.0.2.7")), ALICE)
        self.assertEqual(
            logs.text().count(f"login ok: user={ALICE} ip=192.0.2.7 protocol=imap"), 3)

    def test_failures(self):
        logs = LogCapture(self)
        failed = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        c = self.client(self.alice)
        self.assertEqual(c.cmd(b"a AUTHENTICATE EXTERNAL " + base64.b64encode(b"bob")),
                         b"a " + failed)
        self.assertEqual(c.cmd(b"b AUTHENTICATE EXTERNAL"), b"+ \r\n")
        self.assertEqual(c.cmd(b"*"), b"b BAD Authentication cancelled\r\n")
        c = self.client(certs.make("carol@example.test"))
        self.assertEqual(c.cmd(b"c AUTHENTICATE EXTERNAL ="), b"c " + failed)
        self.assertEqual(c.proto.state, "unauth")
        text = logs.text()
        self.assertIn("login failed: user=bob ip=192.0.2.7 protocol=imap", text)
        self.assertIn("login failed: user=carol@example.test ip=192.0.2.7 protocol=imap", text)
        self.assertNotIn("login ok", text)


class ThrottlingTests(IMAPTestCase):
    """The real checker, counting in a store with the [auth] defaults."""

    def setUp(self):
        super().setUp()
        run_threads_inline(self)
        users = UserDB(self.root / "users", self.clock)
        users.set_password(ALICE, "secret")
        users.set_password("bob@example.test", "pw")
        self.clock.advance(1)  # the directory looks at the file once a second
        sessions = MemorySessionStore(1800, self.clock, self.server.settings.auth)
        self.server = dataclasses.replace(
            self.server, sessions=sessions,
            checker=UserPasswordChecker(self.server.directory, sessions, self.clock))

    def test_refused_after_five_distinct_wrong_passwords(self):
        logs = []
        globalLogPublisher.addObserver(logs.append)
        self.addCleanup(globalLogPublisher.removeObserver, logs.append)
        c = self.client()
        failed = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        for n in range(3):
            self.assertEqual(c.cmd(b"a%d LOGIN alice guess-%d" % (n, n)), b"a%d " % n + failed)
        for n in range(3, 5):
            self.assertEqual(c.cmd(b"a%d AUTHENTICATE PLAIN " % n + plain(b"alice", b"g%d" % n)),
                             b"a%d " % n + failed)
        throttled = b"NO [UNAVAILABLE] Too many failed logins, try again later\r\n"
        self.assertEqual(c.cmd(b"x LOGIN alice@example.test secret"), b"x " + throttled)
        self.assertEqual(c.cmd(b"y AUTHENTICATE PLAIN"), b"+ \r\n")
        self.assertEqual(c.cmd(plain(b"alice", b"secret")), b"y " + throttled)
        self.assertEqual(c.cmd(b"z LOGIN bob@example.test pw"), b"z " + LOGGED_IN)
        self.assertTrue(self.client(ip="127.0.0.2").login().startswith(b"L OK"))
        self.clock.advance(900)
        self.assertTrue(self.client().login().startswith(b"L OK"))
        lines = [formatEvent(e) for e in logs if "refused" in e.get("log_format", "")]
        self.assertEqual(lines, 2 * [
            "login refused (throttled): key=127.0.0.1/alice@example.test protocol=imap"])
        self.assertFalse([e for e in logs if "guess-" in repr(e) or "secret" in repr(e)])


class RealCheckerTests(unittest.TestCase):
    """The real checker hashes in a thread: the test waits for it."""

    def test_login_with_hashed_password(self):
        root = Path(self.mktemp())
        root.mkdir()
        clock = task.Clock()
        UserDB(root / "users", clock).set_password(ALICE, "secret")
        server = make_mail_server(root, clock)
        checker = UserPasswordChecker(server.directory, server.sessions, clock)
        calls = []

        def request(creds):
            calls.append(checker.requestAvatarId(creds))
            return calls[-1]

        server.checker.requestAvatarId = request
        c = Client(server)
        self.addCleanup(c.proto.connectionLost, None)
        c.cmd(b"a LOGIN alice@example.test secret")
        # the protocol's callbacks are on the same Deferred, before this one
        return calls[0].addCallback(
            lambda _: self.assertEqual(
                c.read(), b"a OK [CAPABILITY IMAP4rev1 " + EXTENSIONS + b"] Logged in\r\n"
            )
        )


SELECT_REPLY = (
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    b"* 2 EXISTS\r\n"
    b"* 2 RECENT\r\n"
    b"* OK [UNSEEN 1] First unseen\r\n"
    b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n"
    b"* OK [UIDVALIDITY 1795000000] UIDs valid\r\n"
    b"* OK [UIDNEXT 3] Predicted next UID\r\n"
    b"* OK [HIGHESTMODSEQ 2] Highest\r\n"
)


class MailboxCommandTests(IMAPTestCase):
    def test_select_and_examine(self):
        deliver(self.store, MESSAGE)
        deliver(self.store, MULTIPART)
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"s SELECT INBOX"),
                         SELECT_REPLY + b"s OK [READ-WRITE] SELECT completed\r\n")
        reply = c.cmd(b"e EXAMINE inbox")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Limited\r\n", reply)
        self.assertTrue(reply.endswith(b"e OK [READ-ONLY] EXAMINE completed\r\n"))
        self.assertTrue(reply.startswith(b"* OK [CLOSED] Previous mailbox closed\r\n"))
        # a SELECT that fails leaves no mailbox selected (RFC 3501 6.3.1)
        self.assertEqual(c.cmd(b"x SELECT Nope"), b"* OK [CLOSED] Previous mailbox closed\r\n"
                                                  b"x NO [NONEXISTENT] No such mailbox\r\n")
        self.assertEqual(c.cmd(b"y SELECT Nope"), b"y NO [NONEXISTENT] No such mailbox\r\n")

    def test_fetch_items(self):
        c = self.selected(MESSAGE, MULTIPART)
        reply = c.cmd(b"f FETCH 1 (FLAGS UID RFC822.SIZE ENVELOPE)")
        self.assertEqual(
            reply,
            b'* 1 FETCH (FLAGS () UID 1 RFC822.SIZE 178 ENVELOPE ('
            b'"Mon, 23 Nov 2026 09:00:00 +0000" "Hello there" '
            b'(("Bob" NIL "bob" "example.org")) (("Bob" NIL "bob" "example.org")) '
            b'(("Bob" NIL "bob" "example.org")) (("Alice" NIL "alice" "example.test")) '
            b'NIL NIL NIL "<1@example.org>"))\r\nf OK FETCH completed\r\n',
        )
        self.assertEqual(
            c.cmd(b"b FETCH 2 BODYSTRUCTURE"),
            b'* 2 FETCH (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit"'
            b' 8 1 NIL NIL NIL NIL)("application" "octet-stream" NIL NIL NIL "base64"'
            b' 4 NIL NIL NIL NIL) "mixed" ("boundary" "xx") NIL NIL NIL))\r\n'
            b"b OK FETCH completed\r\n",
        )
        self.assertRegex(c.cmd(b"d FETCH 1 INTERNALDATE"),
                         rb'^\* 1 FETCH \(INTERNALDATE "\d\d-\w\w\w-\d{4} [\d:]{8} \+0000"\)')

    def test_body_peek_keeps_unseen_body_sets_seen(self):
        c = self.selected(MESSAGE)
        self.assertEqual(
            c.cmd(b"p FETCH 1 BODY.PEEK[]"),
            b"* 1 FETCH (BODY[] {178}\r\n" + MESSAGE + b")\r\np OK FETCH completed\r\n",
        )
        self.assertEqual(c.cmd(b"f FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS ())\r\nf OK FETCH completed\r\n")
        self.assertEqual(
            c.cmd(b"b UID FETCH 1 BODY[]"),
            b"* 1 FETCH (FLAGS (\\Seen) BODY[] {178}\r\n" + MESSAGE
            + b" UID 1)\r\nb OK FETCH completed\r\n",
        )
        # the next session, even after a restart, sees \Seen
        fresh = MailStore(self.root / "mail", self.clock)
        self.assertEqual(opened(fresh, ALICE).message(1).flags, {"\\Seen"})

    def test_large_message_structure_parsed_in_a_thread(self):
        calls = []

        class Recording(SyncThreads):
            @staticmethod
            def deferToThread(f, *args):
                calls.append(f.__name__)
                return SyncThreads.deferToThread(f, *args)

        self.patch(server_module, "threads", Recording)
        big = MULTIPART.replace(b"AAEC\r\n", b"AAEC\r\n" * 70000)
        c = self.selected(MESSAGE, big)
        self.assertEqual(
            c.cmd(b"b FETCH 2 (BODYSTRUCTURE BODY.PEEK[1])"),
            b'* 2 FETCH (BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL "7bit"'
            b' 8 1 NIL NIL NIL NIL)("application" "octet-stream" NIL NIL NIL "base64"'
            b' 419998 NIL NIL NIL NIL) "mixed" ("boundary" "xx") NIL NIL NIL)'
            b" BODY[1] {8}\r\npart one)\r\nb OK FETCH completed\r\n",
        )
        self.assertEqual(len(calls), 2)  # the structure, then part 1
        c.cmd(b"s FETCH 1 BODYSTRUCTURE")
        self.assertEqual(len(calls), 2)  # a small one is parsed at once

    def test_header_fields_and_partial(self):
        c = self.selected(MESSAGE)
        self.assertEqual(
            c.cmd(b"h FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[]<2.3>)"),
            b"* 1 FETCH (BODY[HEADER.FIELDS (Subject From)] {53}\r\n"
            b"From: Bob <bob@example.org>\r\nSubject: Hello there\r\n\r\n"
            b" BODY[]<2> {3}\r\nom:)\r\nh OK FETCH completed\r\n",
        )

    def test_store_and_uid_store(self):
        c = self.selected(MESSAGE, MULTIPART)
        self.assertEqual(c.cmd(b"a STORE 1 +FLAGS (\\Seen \\Flagged)"),
                         b"* 1 FETCH (FLAGS (\\Flagged \\Seen))\r\na OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"b UID STORE 1 -FLAGS (\\Flagged)"),
                         b"* 1 FETCH (FLAGS (\\Seen) UID 1)\r\nb OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"c STORE 2 FLAGS.SILENT (\\Answered)"),
                         b"c OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"d STORE 2 BOGUS (\\Seen)"),
                         b"d BAD Expected FLAGS, +FLAGS or -FLAGS\r\n")
        flags = [m.flags for m in opened(self.store, ALICE).messages()]
        self.assertEqual(flags, [{"\\Seen"}, {"\\Answered"}])

    def test_expunge(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE)
        c.cmd(b"a STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.cmd(b"e EXPUNGE"),
                         b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\ne OK EXPUNGE completed\r\n")
        self.assertEqual(opened(self.store, ALICE).uids(), [2])
        self.assertEqual(c.cmd(b"f FETCH 1 UID"), b"* 1 FETCH (UID 2)\r\nf OK FETCH completed\r\n")

    def test_append(self):
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b'a APPEND INBOX (\\Seen) "01-Jan-2020 10:00:00 +0000" {20}'),
                         b"+ Ready for 20 octets of data\r\n")
        self.assertEqual(c.send(b"Subject: x\r\n\r\nbody\r\n\r\n"), b"a OK [APPENDUID 1795000000 1] APPEND completed\r\n")
        info = opened(self.store, ALICE).message(1)
        self.assertEqual((info.flags, info.internaldate, info.size),
                         ({"\\Seen"}, 1577872800, 20))
        self.assertEqual(info.path.read_bytes(), b"Subject: x\r\n\r\nbody\r\n")
        c.cmd(b"b APPEND Nope {1}")
        self.assertEqual(c.send(b"x\r\n"), b"b NO [TRYCREATE] No such mailbox\r\n")

    def test_append_to_selected_sends_exists(self):
        c = self.selected(MESSAGE, MESSAGE)
        c.cmd(b"a APPEND INBOX {3}")
        self.assertEqual(c.send(b"x\r\n\r\n"), b"* 3 EXISTS\r\n* 1 RECENT\r\n"
                                            b"a OK [APPENDUID 1795000000 3] APPEND completed\r\n")

    def test_append_too_big(self):
        c = self.client()
        c.login()
        self.assertEqual(
            c.cmd(b"a APPEND INBOX {999999999999}"),
            b"a NO [TOOBIG] Message larger than 36700160 bytes\r\n",
        )

    def test_uid_copy(self):
        c = self.selected(MESSAGE, MULTIPART)
        self.assertEqual(c.cmd(b"a UID COPY 1:* Archive"),
                         b"a NO [TRYCREATE] No such mailbox\r\n")
        c.cmd(b"c CREATE Archive")
        c.cmd(b"s STORE 2 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(c.cmd(b"a UID COPY 2,1 Archive"),
                         b"a OK [COPYUID 1795000001 1:2 1:2] COPY completed\r\n")
        copied = opened(self.store, ALICE, "Archive").messages()
        self.assertEqual([(m.uid, m.flags) for m in copied],
                         [(1, frozenset()), (2, {"\\Flagged"})])
        self.assertEqual(copied[1].path.read_bytes(), MULTIPART)

    def test_search(self):
        c = self.selected(MESSAGE, MULTIPART)
        c.cmd(b"s STORE 2 +FLAGS.SILENT (\\Seen)")
        table = [
            (b"ALL", b"1 2"),
            (b"SEEN", b"2"),
            (b"UNSEEN", b"1"),
            (b"FROM bob", b"1"),
            (b'TO "alice@example.test"', b"1 2"),
            (b"SUBJECT hello", b"1"),
            (b"SUBJECT gr\xc3\xbc\xc3\x9fe", b"2"),
            (b"HEADER Message-ID <1@example.org>", b"1"),
            (b"UID 2:*", b"2"),
            (b"SINCE 1-Jan-2020", b"1 2"),
            (b"BEFORE 1-Jan-2020", b""),
            (b"OR FROM carol NOT SEEN", b"1 2"),
            (b"(UNSEEN FROM nobody)", b""),
            (b"BODY part", b"2"),
        ]
        for criteria, found in table:
            self.assertEqual(
                c.cmd(b"q SEARCH " + criteria),
                b"* SEARCH" + (b" " + found if found else b"") + b"\r\nq OK SEARCH completed\r\n",
                criteria,
            )
        self.assertEqual(c.cmd(b"u UID SEARCH FROM carol"),
                         b"* SEARCH 2\r\nu OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"b SEARCH FOO"),
                         b"b BAD Invalid search: unknown search key FOO\r\n")
        self.assertEqual(c.cmd(b"b SEARCH SINCE yesterday"),
                         b"b BAD Invalid search: bad date b'yesterday'\r\n")
        self.assertEqual(c.cmd(b"b SEARCH CHARSET KOI8-R ALL"),
                         b"b NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")

    def search(self, c, criteria):
        """The numbers a SEARCH found."""
        reply = c.cmd(b"q SEARCH " + criteria)
        self.assertTrue(reply.endswith(b"\r\nq OK SEARCH completed\r\n"), reply)
        return reply.split(b"\r\n")[0][len(b"* SEARCH "):]

    def test_search_header_empty_matches_only_messages_with_it(self):
        c = self.selected(MESSAGE, b"X-Extra: one\r\nX-Extra: another\r\n\r\nbody\r\n")
        self.assertEqual(self.search(c, b'HEADER X-Extra ""'), b"2")
        self.assertEqual(self.search(c, b'NOT HEADER X-Extra ""'), b"1")
        self.assertEqual(self.search(c, b'HEADER Subject ""'), b"1")
        self.assertEqual(self.search(c, b'CC ""'), b"")

    def test_search_every_instance_of_a_repeated_header(self):
        c = self.selected(b"X-Extra: one\r\nX-Extra: another\r\nTo: a@x.org\r\n"
                          b"To: =?utf-8?q?B=C3=BC?= <b@x.org>\r\n\r\nbody\r\n")
        self.assertEqual(self.search(c, b"HEADER X-Extra another"), b"1")
        self.assertEqual(self.search(c, b"TO b\xc3\xbc"), b"1")

    def test_search_from_matches_addresses_with_comments(self):
        c = self.selected(b"From: <bob (comment)@ (more) example.org>\r\n\r\nx\r\n",
                          b"From: bob@example.org (Bob Real)\r\n\r\nx\r\n",
                          b"From: Carol <carol@example.org>\r\n\r\nx\r\n")
        self.assertEqual(self.search(c, b"FROM bob@example.org"), b"1 2")
        self.assertEqual(self.search(c, b'FROM "bob real"'), b"2")
        self.assertEqual(self.search(c, b'FROM "carol <carol@example.org>"'), b"3")

    def test_search_subject_nil(self):
        c = self.selected(b"Subject: nil\r\n\r\nx\r\n", MESSAGE)
        self.assertEqual(self.search(c, b"SUBJECT NIL"), b"1")
        self.assertEqual(self.search(c, b"BODY nil"), b"")

    def test_folders(self):
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"a CREATE Archive/2024"), b"a OK Mailbox created\r\n")
        self.assertEqual(c.cmd(b"a CREATE Archive"), b"a NO Mailbox named Archive already exists\r\n")
        self.assertEqual(c.cmd(b'l LIST "" "A*"'),
                         b'* LIST (\\HasChildren) "/" "Archive"\r\n'
                         b'* LIST (\\HasNoChildren) "/" "Archive/2024"\r\nl OK LIST completed\r\n')
        self.assertEqual(c.cmd(b'l LIST "" ""'),
                         b'* LIST (\\Noselect) "/" ""\r\nl OK LIST completed\r\n')
        self.assertEqual(c.cmd(b"r RENAME Archive Old"), b"r OK Mailbox renamed\r\n")
        self.assertEqual(c.cmd(b'l LIST "" "%"'),
                         b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
                         b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
                         b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
                         b'* LIST (\\HasChildren) "/" "Old"\r\n'
                         b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
                         b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
                         b'l OK LIST completed\r\n')
        self.assertEqual(c.cmd(b"d DELETE Old"),
                         b"d NO folder Old has subfolders; delete them first\r\n")
        self.assertEqual(c.cmd(b"d DELETE Old/2024"), b"d OK Mailbox deleted\r\n")
        self.assertEqual(c.cmd(b"s SUBSCRIBE Old"), b"s OK Subscribed\r\n")
        self.assertEqual(c.cmd(b'l LSUB "" "*"'),
                         b'* LSUB () "/" "INBOX"\r\n* LSUB (\\Drafts) "/" "Drafts"\r\n'
                         b'* LSUB (\\Junk) "/" "Junk"\r\n* LSUB () "/" "Old"\r\n'
                         b'* LSUB (\\Sent) "/" "Sent"\r\n* LSUB (\\Trash) "/" "Trash"\r\n'
                         b'l OK LSUB completed\r\n')
        self.assertEqual(self.store.folders(ALICE),
                         ["INBOX", "Drafts", "Junk", "Old", "Sent", "Trash"])

    def test_two_sessions_see_each_other(self):
        deliver(self.store, MESSAGE)
        deliver(self.store, MESSAGE)
        a, b = self.selected(), self.client()
        b.login()
        b.cmd(b"s SELECT INBOX")
        self.assertEqual(a.cmd(b"x STORE 1 +FLAGS.SILENT (\\Seen)"), b"x OK STORE completed\r\n")
        self.assertEqual(b.read(), b"* 1 FETCH (FLAGS (\\Seen))\r\n")
        a.cmd(b"y STORE 2 +FLAGS.SILENT (\\Deleted)")
        b.read()
        a.cmd(b"z EXPUNGE")
        # not during FETCH; at the end of NOOP
        self.assertEqual(b.cmd(b"f FETCH 1:* UID"),
                         b"* 1 FETCH (UID 1)\r\nf OK FETCH completed\r\n")
        self.assertEqual(b.cmd(b"n NOOP"), b"* 2 EXPUNGE\r\nn OK NOOP completed\r\n")
        deliver(self.store, MESSAGE)
        # a heard first: the new message is \\Recent there
        self.assertEqual(b.cmd(b"n NOOP"),
                         b"* 2 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n")
        self.assertEqual(a.read(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")

    def test_idle(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b"i IDLE"), b"+ idling\r\n")
        deliver(self.store, MESSAGE)
        self.clock.advance(c.proto.IDLE_POLL)
        self.assertEqual(c.read(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")
        opened(self.store, ALICE).delete([1])
        self.assertEqual(c.read(), b"* 1 EXPUNGE\r\n")
        self.assertEqual(c.cmd(b"DONE"), b"i OK IDLE terminated\r\n")
        c.cmd(b"j IDLE")
        self.assertEqual(c.cmd(b"k NOOP"), b"j BAD Expected DONE\r\n")
        self.assertEqual(c.cmd(b"k NOOP"), b"k OK NOOP completed\r\n")

    def test_store_notify_wakes_sessions(self):
        c = self.selected(MESSAGE)
        deliver(self.store, MESSAGE)
        self.store.notify(ALICE)
        self.assertEqual(c.read(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")


class FastFetchTests(IMAPTestCase):
    """
    The fast FETCH path (index items and whole messages) answers byte for
    byte as Twisted's general FETCH does, sets \\Seen by the same rules,
    and yields to other connections between batches.
    """

    BIG = MESSAGE.replace(b"how are you?\r\n", b"how are you?\r\n" * 3000)
    BARE_LF = MESSAGE.replace(b"\r\n", b"\n")
    SETUP = (
        b"a STORE 1 +FLAGS (\\Flagged $Junk)",
        b"b STORE 2 +FLAGS (\\Seen \\Answered)",
        b"c STORE 4 +FLAGS (\\Deleted \\Draft Later)",
    )

    def session(self, fast, commands, select=b"SELECT", setup=SETUP):
        """The replies to C{commands} in a fresh store, fast path or not."""
        root = Path(self.mktemp())
        root.mkdir()
        server = make_mail_server(root, self.clock)
        # both stores' messages arrive in the same order at the same second (INTERNALDATE)
        ticks = itertools.count()
        self.patch(layout, "time", SimpleNamespace(time=lambda: 1_795_000_000 + next(ticks) / 1000))
        for m in (MESSAGE, MULTIPART, self.BIG, self.BARE_LF, MESSAGE):
            deliver(server.store, m)
        opened(server.store, ALICE).claim_recent()  # FLAGS without \\Recent
        saved = server_module._fast_item
        if not fast:
            server_module._fast_item = lambda part: False
        try:
            c = Client(server)
            self.addCleanup(c.proto.connectionLost, None)
            used = []
            original = c.proto._fetch_fast

            def recording(*args):
                used.append(args[0])
                return original(*args)
            c.proto._fetch_fast = recording
            c.login()
            c.cmd(b"s SELECT INBOX")
            for line in setup:
                c.cmd(line)
            if select != b"SELECT":
                c.cmd(b"s " + select + b" INBOX")
            replies = [c.cmd(line) for line in commands]
        finally:
            server_module._fast_item = saved
        fetches = sum(1 for line in commands if b"FETCH" in line)
        self.assertEqual(len(used), fetches if fast else 0)
        return replies

    def assertSame(self, commands, **kw):
        fast = self.session(True, commands, **kw)
        general = self.session(False, commands, **kw)
        for command, a, b in zip(commands, fast, general):
            if a != b:
                self.fail(f"{command!r}: fast {a[:300]!r}... general {b[:300]!r}...")
        for command, reply in zip(commands, fast):
            if b"FETCH" in command:
                self.assertTrue(reply.endswith(b" OK FETCH completed\r\n"), reply[-200:])
        return fast

    def test_index_items(self):
        replies = self.assertSame([
            b"f FETCH 1:* (FLAGS UID RFC822.SIZE)",
            b"g UID FETCH 2:* (FLAGS RFC822.SIZE INTERNALDATE)",
            b"h FETCH 1:3 (RFC822.SIZE)",
            b"i UID FETCH 1:* FLAGS",
        ])
        self.assertIn(b"* 1 FETCH (FLAGS ($Junk \\Flagged) UID 1 RFC822.SIZE 178)", replies[0])
        self.assertIn(b"* 4 FETCH (FLAGS (Later \\Deleted \\Draft) UID 4 ", replies[0])

    def test_whole_messages_peek(self):
        replies = self.assertSame([
            b"p FETCH 1:* BODY.PEEK[]",
            b"q UID FETCH 1:* (RFC822.SIZE BODY.PEEK[] FLAGS)",
            b"f FETCH 1:* FLAGS",
        ])
        self.assertTrue(
            (b"* 3 FETCH (BODY[] {%d}\r\n" % len(self.BIG) + self.BIG + b")\r\n") in replies[0])
        self.assertIn(b"* 4 FETCH (BODY[] {%d}\r\n" % len(self.BARE_LF), replies[0])
        self.assertNotIn(b"\\Seen) UID 1", replies[2])

    def test_body_sets_seen(self):
        replies = self.assertSame([
            b"b FETCH 1,3 BODY[]",
            b"u UID FETCH 4:5 (UID BODY[])",
            b"r FETCH 2 RFC822",
            b"f FETCH 1:* FLAGS",
        ])
        self.assertTrue(replies[0].startswith(
            b"* 1 FETCH (FLAGS ($Junk \\Flagged \\Seen) BODY[] {178}\r\n" + MESSAGE + b")\r\n"))
        self.assertIn(b"* 5 FETCH (FLAGS (\\Seen) UID 5 BODY[] {178}\r\n", replies[1])
        self.assertIn(b"* 2 FETCH (FLAGS (\\Answered \\Seen) RFC822 {", replies[2])
        self.assertIn(b"* 4 FETCH (FLAGS (Later \\Deleted \\Draft \\Seen))", replies[3])

    def test_read_only_does_not_set_seen(self):
        replies = self.assertSame([b"b FETCH 1 BODY[]", b"f FETCH 1 FLAGS"],
                                  select=b"EXAMINE")
        self.assertEqual(replies[0], b"* 1 FETCH (BODY[] {178}\r\n" + MESSAGE
                         + b")\r\nb OK FETCH completed\r\n")

    def test_condstore(self):
        replies = self.assertSame([
            b"e FETCH 1 (MODSEQ)",
            b"f FETCH 1:* (FLAGS BODY.PEEK[])",
            b"m FETCH 1:* (UID) (CHANGEDSINCE 2)",
            b"b UID FETCH 1:2 (BODY[] MODSEQ)",
        ])
        self.assertIn(b"MODSEQ (", replies[1])

    def test_batches_yield_and_follow_flow_control(self):
        self.patch(server_module, "FETCH_BATCH", 2)
        c = self.selected(MESSAGE, MESSAGE, MESSAGE, MESSAGE, MESSAGE)
        c.proto.dataReceived(b"f FETCH 1:* BODY.PEEK[]\r\n")
        self.assertEqual(c.transport.value().count(b" FETCH ("), 2)
        producer = c.transport.producer
        producer.pauseProducing()
        self.clock.advance(0)
        self.assertEqual(c.transport.value().count(b" FETCH ("), 2)  # paused
        producer.resumeProducing()
        self.assertEqual(c.transport.value().count(b" FETCH ("), 4)
        self.clock.advance(0)
        reply = c.read()
        self.assertEqual(reply.count(b" FETCH ("), 5)
        self.assertTrue(reply.endswith(b"f OK FETCH completed\r\n"))
        self.assertIsNone(c.transport.producer)
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")

    def test_byte_budget_per_batch(self):
        self.patch(server_module, "FETCH_BATCH_BYTES", 1000)
        c = self.selected(MESSAGE, MESSAGE, MESSAGE, MESSAGE, MESSAGE, MESSAGE, MESSAGE)
        c.proto.dataReceived(b"f FETCH 1:* (BODY.PEEK[])\r\n")
        self.assertEqual(c.transport.value().count(b" FETCH ("), 5)  # 5 x 200 bytes
        self.assertEqual(c.read().count(b" FETCH ("), 7)

    def test_vanished_file_left_out(self):
        c = self.selected(MESSAGE, MULTIPART, MESSAGE)
        folder = opened(self.store, ALICE)
        os.unlink(folder.cur_prefix() + folder.entry(2).name)
        reply = c.cmd(b"f FETCH 1:* BODY.PEEK[]")
        self.assertEqual(reply.count(b" FETCH ("), 2)
        self.assertNotIn(b"* 2 FETCH", reply)
        self.assertTrue(reply.endswith(b"f OK FETCH completed\r\n"))

    def test_literal_is_the_file_size(self):
        c = self.selected(MESSAGE)
        folder = opened(self.store, ALICE)
        with open(folder.cur_prefix() + folder.entry(1).name, "ab") as f:
            f.write(b"PS\r\n")
        self.assertEqual(
            c.cmd(b"f FETCH 1 (RFC822.SIZE BODY.PEEK[])"),
            b"* 1 FETCH (RFC822.SIZE 178 BODY[] {182}\r\n" + MESSAGE
            + b"PS\r\n)\r\nf OK FETCH completed\r\n")


class PipeliningTests(IMAPTestCase):
    def test_select_and_fetch_in_one_packet(self):
        deliver(self.store, MESSAGE)
        deliver(self.store, MULTIPART)
        c = self.client()
        c.login()
        reply = c.send(b"s SELECT INBOX\r\nf FETCH 1:* (UID FLAGS)\r\nn NOOP\r\n")
        self.assertEqual(
            reply,
            SELECT_REPLY + b"s OK [READ-WRITE] SELECT completed\r\n"
            b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n"
            b"f OK FETCH completed\r\nn OK NOOP completed\r\n",
        )

    def test_commands_wait_for_a_pending_login(self):
        pending = defer.Deferred()
        self.server.checker.requestAvatarId = lambda creds: pending
        c = self.client()
        self.assertEqual(c.send(b"l LOGIN alice@example.test secret\r\n"
                                b"s SELECT INBOX\r\nn NOOP\r\n"), b"")
        self.assertEqual(c.transport.producerState, "paused")
        pending.callback(ALICE)
        reply = c.read()
        self.assertTrue(reply.startswith(b"l OK [CAPABILITY"), reply)
        self.assertIn(b"s OK [READ-WRITE] SELECT completed\r\nn OK NOOP completed\r\n", reply)
        self.assertEqual(c.transport.producerState, "producing")


class BadInputTests(IMAPTestCase):
    """Each input gets its exact reply, then the connection still works."""

    table = [
        (b"x" * 70000 + b"\r\n", b"* BAD Line too long\r\n"),
        (b"\x00\xff\xfe garbage\r\n", b"* BAD Invalid tag or missing command\r\n"),
        (b"a \xff\xfe\r\n", b"a BAD Invalid command\r\n"),
        (b"\r\n", b"* BAD Invalid tag or missing command\r\n"),
        (b"lonely\r\n", b"lonely BAD Missing command\r\n"),
        (b"a FROBNICATE\r\n", b"a BAD Unknown command\r\n"),
        (b"a FETCH 1 FLAGS\r\n", b"a BAD Command not valid in this state\r\n"),
        (b"a LOGIN {abc}\r\n", b"a BAD Syntax error: Bad literal size: b'abc'\r\n"),
        (b"a LOGIN {5\r\n", b"a BAD Syntax error: Malformed literal\r\n"),
        (b"a LOGIN {99999}\r\n",
         b"a BAD Syntax error: Literal too long! I accept at most 4096 octets\r\n"),
        (b'a LOGIN "unterminated\r\n', b"a BAD Syntax error: Unmatched quotes\r\n"),
        (b"a LOGIN\r\n", b"a BAD Syntax error: Missing argument\r\n"),
    ]
    selected_table = [
        (b"a FETCH 1 (FOO)\r\n", b"a BAD Syntax error: Nothing recognized in fetch_att: b'foo)'\r\n"),
        (b"a FETCH x FLAGS\r\n", b"a BAD Syntax error: Bad message number b'x'\r\n"),
        (b"a SEARCH (FROM\r\n", b"a BAD Syntax error: b'(FROM'\r\n"),
        (b"a UID FROB 1\r\n", b"a BAD Unknown UID command\r\n"),
        (b"a UID EXPUNGE\r\n", b"a BAD Syntax: EXPUNGE, or UID EXPUNGE set\r\n"),
        (b"a STORE 1 FLAGS (\\Seen\r\n", b"a BAD Syntax error: Mismatched parenthesis\r\n"),
        (b"a LOGIN x y\r\n", b"a BAD Command not valid in this state\r\n"),
    ]

    def test_not_authenticated(self):
        for data, reply in self.table:
            c = self.client()
            self.assertEqual(c.send(data), reply, data[:40])
            self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n", data[:40])

    def test_selected(self):
        deliver(self.store, MESSAGE)
        for data, reply in self.selected_table:
            c = self.selected()
            self.assertEqual(c.send(data), reply, data[:40])
            self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n", data[:40])

    def test_overlong_line_in_pieces(self):
        c = self.client()
        self.assertEqual(c.send(b"a " + b"x" * 70000), b"a BAD Line too long\r\n")
        self.assertEqual(c.send(b"y" * 1000 + b"\r\nn NOOP\r\n"), b"n OK NOOP completed\r\n")

    def test_unterminated_literal_then_vanish(self):
        c = self.client()
        c.login()
        c.cmd(b"a APPEND INBOX {100}")
        c.send(b"half a message")
        c.proto.connectionLost(None)
        self.assertEqual(opened(self.store, ALICE).messages(), [])
        self.assertTrue(self.client().cmd(b"n NOOP").endswith(b"n OK NOOP completed\r\n"))

    def test_vanish_during_login(self):
        pending = defer.Deferred()
        self.server.checker.requestAvatarId = lambda creds: pending
        c = self.client()
        c.cmd(b"l LOGIN alice@example.test secret")
        c.proto.connectionLost(None)
        pending.callback(ALICE)
        self.assertEqual(c.read(), b"")

    def test_vanish_while_selected_releases_folder(self):
        c = self.selected(MESSAGE)
        folder = opened(self.store, ALICE)
        self.assertEqual(len(folder.listeners), 1)
        c.proto.connectionLost(None)
        self.assertEqual(folder.listeners, [])

    def test_idle_timeout_closes(self):
        c = self.client()
        self.clock.advance(c.proto.deadline.timeouts.login)
        self.assertEqual(c.read(), b"* BYE Autologout; no login in time\r\n")
        self.assertTrue(c.transport.disconnecting)


class FullDiskTests(IMAPTestCase):
    """
    Issue 13, finding 4: with the disk full, LOGIN, SELECT and FETCH work;
    a command that must write answers NO [OVERQUOTA] (NO [SERVERBUG] for
    other write errors), never BAD, and logs one line.
    """

    def setUp(self):
        super().setUp()
        self.logs = []
        globalLogPublisher.addObserver(self.logs.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs.append)
        self.disk = FullDisk(self)

    def errors(self):
        return [formatEvent(e) for e in self.logs
                if e.get("log_level") is not None and e["log_level"].name in ("error", "warn")
                and e.get("log_namespace", "").startswith("mailsrv")]

    def test_login_works_on_full_disk(self):
        self.disk.fill()  # a new user: the special folders cannot be made
        c = self.client()
        c.login()
        self.assertEqual(len(self.errors()), 1, self.errors())
        self.assertIn("Drafts", self.errors()[0])
        self.disk.free()
        self.client().login()  # the next login makes them
        self.assertEqual(self.store.folders(ALICE),
                         ["INBOX", "Drafts", "Junk", "Sent", "Trash"])

    def test_select_and_fetch_work_on_full_disk(self):
        c = self.selected(MESSAGE)
        deliver(self.store, MESSAGE)
        self.disk.fill()
        reply = c.cmd(b"s SELECT INBOX")  # the new message cannot be indexed: it waits
        self.assertIn(b"* 1 EXISTS\r\n", reply)
        self.assertTrue(reply.endswith(b"s OK [READ-WRITE] SELECT completed\r\n"), reply)
        self.assertEqual(
            c.cmd(b"f FETCH 1 BODY[]"),
            b"* 1 FETCH (FLAGS () BODY[] {178}\r\n" + MESSAGE
            + b")\r\nf OK FETCH completed\r\n",
        )
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")
        self.assertEqual(len(self.errors()), 3, self.errors())  # one per failed write
        self.disk.free()
        self.assertEqual(c.cmd(b"n NOOP"), b"* 2 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n")

    def test_select_answers_no_when_the_inbox_cannot_be_made(self):
        self.disk.fill()
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"s SELECT INBOX"),
                         b"s NO [OVERQUOTA] SELECT failed: disk full\r\n")

    def test_store_on_full_disk_answers_no_overquota(self):
        c = self.selected(MESSAGE, MESSAGE)
        self.disk.fill()
        self.assertEqual(
            c.cmd(b"s STORE 1:2 +FLAGS (\\Seen $Work)"),
            b"s NO [OVERQUOTA] STORE failed: disk full\r\n",
        )
        self.assertEqual(len(self.errors()), 1, self.errors())
        self.disk.free()
        self.assertEqual(c.cmd(b"f FETCH 1:2 FLAGS"),
                         b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\n"
                         b"f OK FETCH completed\r\n")

    def test_store_failing_part_way_reports_what_it_stored(self):
        c = self.selected(MESSAGE, MESSAGE)
        folder = opened(self.store, ALICE)
        set_flags = folder.set_flags

        def second_fails(uid, flags, origin=None):
            if uid == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return set_flags(uid, flags, origin)

        self.patch(folder, "set_flags", second_fails)
        self.assertEqual(c.cmd(b"s STORE 1:2 +FLAGS ($Work)"),
                         b"* FLAGS (" + PERMANENT + b" $Work)\r\n"
                         b"* OK [PERMANENTFLAGS (" + PERMANENT + b" $Work \\*)] Limited\r\n"
                         b"* 1 FETCH (FLAGS ($Work))\r\n"
                         b"s NO [OVERQUOTA] STORE failed: disk full\r\n")

    def test_store_with_other_write_error_answers_no_serverbug(self):
        c = self.selected(MESSAGE)
        FullDisk(self, errno.EIO).fill()
        self.assertEqual(
            c.cmd(b"s STORE 1 +FLAGS ($Work)"),
            b"s NO [SERVERBUG] STORE failed: server error\r\n",
        )

    def test_append_create_copy_on_full_disk_answer_no_overquota(self):
        c = self.selected(MESSAGE)
        self.disk.fill()
        self.assertEqual(c.send(b"a APPEND INBOX {6+}\r\nHi\r\n\r\n\r\n"),
                         b"a NO [OVERQUOTA] APPEND failed: disk full\r\n")
        for command in (b"CREATE Work", b"COPY 1 Drafts", b"MOVE 1 Drafts"):
            name = command.split()[0]
            self.assertEqual(c.cmd(b"t " + command),
                             b"t NO [OVERQUOTA] " + name + b" failed: disk full\r\n")
        # one line per command (and one for Drafts' new index, which
        # could not be written either)
        failed = [line for line in self.errors() if " failed" in line]
        self.assertEqual(len(failed), 4, self.errors())
        self.disk.free()
        self.assertEqual(self.store.folders(ALICE),
                         ["INBOX", "Drafts", "Junk", "Sent", "Trash"])
        self.assertEqual(len(opened(self.store, ALICE)), 1)
        self.assertEqual(len(opened(self.store, ALICE, "Drafts")), 0)



class ComplianceTests(IMAPTestCase):
    """What Dovecot's imaptest found (issue 14): flags, names, LSUB, LOGOUT."""

    def append_to_selected(self, c, flags, uid):
        c.cmd(b"p APPEND INBOX (" + flags + b") {3}")
        # the appending session is the first to see the message: \Recent
        self.assertEqual(c.send(b"x\r\n\r\n"), b"* %d EXISTS\r\n* 1 RECENT\r\n"
                         b"p OK [APPENDUID 1795000000 %d] APPEND completed\r\n" % (uid, uid))

    def test_system_flags_are_case_insensitive(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b"a STORE 1 FLAGS (\\seen \\DELETED \\fLaGgEd)"),
                         b"* 1 FETCH (FLAGS (\\Deleted \\Flagged \\Seen))\r\n"
                         b"a OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"b STORE 1 -FLAGS (\\DELETED)"),
                         b"* 1 FETCH (FLAGS (\\Flagged \\Seen))\r\nb OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"s SEARCH SEEN FLAGGED UNDELETED"),
                         b"* SEARCH 1\r\ns OK SEARCH completed\r\n")
        self.append_to_selected(c, b"\\answered \\draft", 2)
        self.assertEqual(opened(self.store, ALICE).message(2).flags,
                         {"\\Answered", "\\Draft"})
        c.cmd(b"c CREATE Archive")
        self.assertEqual(c.cmd(b"k COPY 1:2 Archive"),
                         b"k OK [COPYUID 1795000001 1:2 1:2] COPY completed\r\n")
        self.assertEqual([m.flags for m in opened(self.store, ALICE, "Archive").messages()],
                         [{"\\Flagged", "\\Seen"}, {"\\Answered", "\\Draft"}])

    def test_search_new_old_recent(self):
        """imaptest's search-flags: RECENT, NEW and OLD follow \\Recent."""
        c = self.selected(MESSAGE)  # delivered before: another session's to claim
        c.cmd(b"p APPEND INBOX (\\Seen) {3}")
        c.send(b"x\r\n\r\n")
        c.cmd(b"p APPEND INBOX () {3}")
        c.send(b"x\r\n\r\n")
        self.assertEqual(c.cmd(b"a FETCH 1:* FLAGS"),
                         b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS (\\Recent \\Seen))\r\n"
                         b"* 3 FETCH (FLAGS (\\Recent))\r\na OK FETCH completed\r\n")
        for key, found in ((b"RECENT", b" 2 3"), (b"NEW", b" 3"), (b"OLD", b" 1"),
                           (b"NOT NEW", b" 1 2")):
            self.assertEqual(c.cmd(b"s SEARCH " + key),
                             b"* SEARCH" + found + b"\r\ns OK SEARCH completed\r\n", key)

    def test_recent_is_ignored_and_unknown_system_flags_refused(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b"a STORE 1 +FLAGS (\\Recent \\Seen)"),
                         b"* 1 FETCH (FLAGS (\\Seen))\r\na OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"b STORE 1 +FLAGS (\\Bogus)"),
                         b"b BAD Syntax error: Invalid system flag \\Bogus\r\n")
        self.append_to_selected(c, b"\\recent", 2)
        self.assertEqual(c.cmd(b"q APPEND INBOX (\\Bogus) {3}"),
                         b"q BAD Syntax error: Invalid system flag \\Bogus\r\n")
        self.assertEqual(len(opened(self.store, ALICE)), 2)

    def test_flags_announced_before_new_keyword(self):
        c = self.selected(MESSAGE, MESSAGE)
        other = self.client()
        other.login()
        other.cmd(b"s SELECT INBOX")
        announced = (b"* FLAGS (" + PERMANENT + b" $hello)\r\n"
                     b"* OK [PERMANENTFLAGS (" + PERMANENT + b" $hello \\*)] Limited\r\n")
        self.assertEqual(c.cmd(b"a STORE 1 +FLAGS ($hello)"),
                         announced + b"* 1 FETCH (FLAGS ($hello))\r\na OK STORE completed\r\n")
        self.assertEqual(other.read(), announced + b"* 1 FETCH (FLAGS ($hello))\r\n")
        # once announced, not again
        self.assertEqual(c.cmd(b"b STORE 2 +FLAGS.SILENT ($hello)"),
                         b"b OK STORE completed\r\n")
        self.assertEqual(other.read(), b"* 2 FETCH (FLAGS ($hello))\r\n")
        # a keyword arriving with new mail: announced before the FETCH shows it
        c.cmd(b"p APPEND INBOX (NIL) {3}")
        c.send(b"x\r\n\r\n")
        self.assertEqual(other.cmd(b"n NOOP"),
                         b"* 3 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n")
        self.assertEqual(
            other.cmd(b"f FETCH 3 (UID FLAGS)"),
            b"* FLAGS (" + PERMANENT + b" $hello NIL)\r\n"
            b"* OK [PERMANENTFLAGS (" + PERMANENT + b" $hello NIL \\*)] Limited\r\n"
            b"* 3 FETCH (UID 3 FLAGS (NIL))\r\nf OK FETCH completed\r\n")

    def append_with_keyword(self, keyword=b"Work"):
        """Another session appends a message with C{keyword}: no FETCH tells of it."""
        other = self.client()
        other.login()
        other.cmd(b"p APPEND INBOX (" + keyword + b") {3}")
        other.send(b"x\r\n\r\n")

    def test_flags_announced_before_fetch_through_twisted(self):
        c = self.selected(MESSAGE)
        self.append_with_keyword()
        c.cmd(b"n NOOP")
        reply = c.cmd(b"f FETCH 2 (FLAGS ENVELOPE)")
        self.assertTrue(reply.startswith(
            b"* FLAGS (" + PERMANENT + b" Work)\r\n"
            b"* OK [PERMANENTFLAGS (" + PERMANENT + b" Work \\*)] Limited\r\n"
            b"* 2 FETCH (FLAGS (Work \\Recent) ENVELOPE"), reply)

    def test_keyword_set_during_a_fetch_is_shown_after_its_announcement(self):
        """
        imaptest's stress mode: a keyword another session sets while
        Twisted's FETCH runs was shown in that FETCH before any FLAGS
        announced it.
        """
        c = self.selected(MESSAGE)
        c.proto.blocked = []  # as during Twisted's FETCH
        opened(self.store, ALICE).set_flags(1, {"$late"})  # another session's STORE
        written = []
        message = mailbox_module.Message(opened(self.store, ALICE),
                                         opened(self.store, ALICE).message(1))
        c.proto.spew_flags(1, message, written.append)
        self.assertEqual(written, [b"FLAGS ()"])
        c.proto.blocked = None
        c.proto._flush_news()  # the end of the FETCH
        self.assertEqual(c.read(), b"* FLAGS (" + PERMANENT + b" $late)\r\n"
                         b"* OK [PERMANENTFLAGS (" + PERMANENT + b" $late \\*)] Limited\r\n"
                         b"* 1 FETCH (FLAGS ($late))\r\n")

    def test_examine_announces_flags_without_permanentflags(self):
        deliver(self.store, MESSAGE)
        c = self.client()
        c.login()
        c.cmd(b"e EXAMINE INBOX")
        self.append_with_keyword()
        c.cmd(b"n NOOP")
        self.assertEqual(c.cmd(b"f FETCH 2 FLAGS"),
                         b"* FLAGS (" + PERMANENT + b" Work)\r\n"
                         b"* 2 FETCH (FLAGS (Work \\Recent))\r\nf OK FETCH completed\r\n")

    def test_nothing_after_logout(self):
        deliver(self.store, MESSAGE)
        deliver(self.store, MESSAGE)
        c, other = self.selected(), self.selected()
        other.cmd(b"d STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.cmd(b"x EXPUNGE")
        c.read()
        # what the client has yet to hear comes before BYE, nothing after
        self.assertEqual(c.send(b"z LOGOUT\r\nn NOOP\r\n"),
                         b"* 1 EXPUNGE\r\n* BYE Nice talking to you\r\n"
                         b"z OK LOGOUT successful\r\n")
        self.assertTrue(c.transport.disconnecting)
        other.cmd(b"s STORE 1 +FLAGS (\\Seen)")
        deliver(self.store, MESSAGE)
        other.cmd(b"n NOOP")
        self.assertEqual(c.read(), b"")

    def test_nothing_after_logout_while_a_command_waits(self):
        c = self.selected(MESSAGE)
        waiting = defer.Deferred()
        self.patch(c.proto.mbox, "search", lambda query, uid, saved: waiting)
        self.assertEqual(c.send(b"s SEARCH ALL\r\nz LOGOUT\r\n"), b"")
        waiting.callback(([1], False))
        self.assertEqual(c.read(), b"* SEARCH 1\r\ns OK SEARCH completed\r\n"
                         b"* BYE Nice talking to you\r\nz OK LOGOUT successful\r\n")

    def test_lsub_shows_unsubscribed_parent_noselect(self):
        c = self.client()
        c.login()
        for name in (b"box/a", b"box/b/c", b"box/d/e"):
            c.cmd(b"c CREATE " + name)
        for name in (b"box/a", b"box/b/c", b"box/d/e", b"box/d"):
            c.cmd(b"s SUBSCRIBE " + name)
        self.assertEqual(c.cmd(b'l LSUB "" box/%'),
                         b'* LSUB () "/" "box/a"\r\n'
                         b'* LSUB (\\Noselect) "/" "box/b"\r\n'
                         b'* LSUB () "/" "box/d"\r\nl OK LSUB completed\r\n')
        self.assertEqual(c.cmd(b'l LSUB "" box/*'),
                         b'* LSUB () "/" "box/a"\r\n* LSUB () "/" "box/b/c"\r\n'
                         b'* LSUB () "/" "box/d"\r\n* LSUB () "/" "box/d/e"\r\n'
                         b'l OK LSUB completed\r\n')
        self.assertEqual(c.cmd(b'l LSUB "" %'),
                         b'* LSUB () "/" "INBOX"\r\n* LSUB (\\Drafts) "/" "Drafts"\r\n'
                         b'* LSUB (\\Junk) "/" "Junk"\r\n* LSUB (\\Sent) "/" "Sent"\r\n'
                         b'* LSUB (\\Trash) "/" "Trash"\r\n'
                         b'* LSUB (\\Noselect) "/" "box"\r\nl OK LSUB completed\r\n')

    def test_select_invalid_name_is_no(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b's SELECT "a.b"'), b"* OK [CLOSED] Previous mailbox closed\r\n"
                                                   b"s NO Folder names may not contain '.'\r\n")
        for name, reason in [
            (b'"a.b"', b"Folder names may not contain '.'"),
            (b'"a//b"', b"Folder names may not have empty levels or a leading '/'"),
            (b'"a\\"b"', None),
            (b"&Jjo", b"Mailbox name is not valid mUTF-7"),
            (b"!#$&'+,-.0123456789:;<=>?@^_`|[}", b"Mailbox name is not valid mUTF-7"),
        ]:
            reply = c.cmd(b"s SELECT " + name)
            if reason is None:
                self.assertEqual(reply, b"s NO [NONEXISTENT] No such mailbox\r\n", name)
            else:
                self.assertEqual(reply, b"s NO " + reason + b"\r\n", name)

    def test_list_pattern_with_ampersand(self):
        c = self.client()
        c.login()
        c.cmd(b"c CREATE &-x")
        for pattern in (b"&", b"&x", b"&-*", b"!#$&'+,-.0123456789:;<=>?@^_`|[}%*",
                        b"&Jjo", b"&Jjo-", b"&AGE-*"):
            for command in (b"LIST", b"LSUB"):
                reply = c.cmd(b'l ' + command + b' "" ' + pattern)
                self.assertTrue(reply.endswith(b"l OK " + command + b" completed\r\n"),
                                (pattern, reply))
        # a bare "&" is itself, in the reference too
        for arguments in (b'"" &-*', b'"" &x', b'"&" "*"'):
            self.assertEqual(c.cmd(b"l LIST " + arguments),
                             b'* LIST (\\HasNoChildren) "/" "&-x"\r\nl OK LIST completed\r\n', arguments)
        self.assertEqual(c.cmd(b'l LIST "" "\xc3\xa9"'),
                         b"l NO Mailbox name is not valid mUTF-7\r\n")


class BareLFMaildirTests(IMAPTestCase):
    """
    Files copied in from another server's Maildir (Dovecot's: bare LF,
    C{,S=} and C{,W=} in the name) are served with CRLF, and every size
    IMAP and POP3 give is the size of what they send.
    """

    LF = MESSAGE.replace(b"\r\n", b"\n")

    def copied_in(self, name):
        new = self.store.maildir(ALICE) / "new"
        new.mkdir(parents=True, exist_ok=True)
        (new / name).write_bytes(self.LF)
        self.store.folder(ALICE).claim_recent()

    def fetched(self, *items):
        c = self.client()
        c.login()
        c.cmd(b"S SELECT INBOX")
        return [c.cmd(b"F FETCH 1 " + item) for item in items]

    def check_crlf(self):
        size = len(MESSAGE)
        body = MESSAGE[MESSAGE.index(b"\r\n\r\n") + 4:]
        items = (b"(RFC822.SIZE)", b"(BODY.PEEK[])", b"(BODY.PEEK[]<0.10>)",
                 b"(RFC822.TEXT)", b"(BODY.PEEK[TEXT]<2.5>)", b"(RFC822)",
                 b"(UID RFC822.SIZE BODY.PEEK[])")
        replies = self.fetched(*items)
        done = b"F OK FETCH completed\r\n"
        self.assertEqual(replies[0], b"* 1 FETCH (RFC822.SIZE %d)\r\n" % size + done)
        self.assertEqual(replies[1], b"* 1 FETCH (BODY[] {%d}\r\n%b)\r\n" % (size, MESSAGE)
                         + done)
        self.assertEqual(replies[2], b"* 1 FETCH (BODY[]<0> {10}\r\n%b)\r\n" % MESSAGE[:10]
                         + done)
        self.assertIn(b"RFC822.TEXT {%d}\r\n%b" % (len(body), body), replies[3])
        self.assertIn(b"BODY[TEXT]<2> {5}\r\n%b)" % body[2:7], replies[4])
        self.assertIn(b"RFC822 {%d}\r\n%b" % (size, MESSAGE), replies[5])
        self.assertIn(b"RFC822.SIZE %d BODY[] {%d}\r\n%b)" % (size, size, MESSAGE),
                      replies[6])
        c = self.client()
        c.login()
        c.cmd(b"S SELECT INBOX")
        self.assertIn(b"* SEARCH 1\r\n", c.cmd(b"s SEARCH LARGER %d" % (size - 1)))
        self.assertIn(b"* SEARCH\r\n", c.cmd(b"s SEARCH LARGER %d" % size))
        return replies[1]

    def pop3_retr(self):
        from mailsrv.pop3 import server as pop3server
        listener = _listener(self.server.settings, "starttls")
        listener = type(listener)(**{**listener.__dict__, "protocol": "pop3"})
        proto = pop3server.build_factory(self.server, listener).buildProtocol(None)
        proto.deferToThread = lambda f, *a: defer.maybeDeferred(f, *a)
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        self.addCleanup(proto.connectionLost, None)
        for line in (b"USER " + ALICE.encode(), b"PASS secret"):
            proto.dataReceived(line + b"\r\n")
        transport.clear()
        proto.dataReceived(b"LIST 1\r\n")
        self.assertEqual(transport.value(), b"+OK 1 %d\r\n" % len(MESSAGE))
        transport.clear()
        proto.dataReceived(b"RETR 1\r\n")
        status, _, rest = transport.value().partition(b"\r\n")
        self.assertEqual(status, b"+OK %d octets" % len(MESSAGE))
        return rest[:-len(b".\r\n")]

    def test_bare_lf_maildir_file_served_with_crlf(self):
        self.copied_in("1600000000.M1P2.host,S=%d,W=%d" % (len(self.LF), len(MESSAGE)))
        imap_body = self.check_crlf()
        self.assertEqual(self.pop3_retr(), MESSAGE)
        self.assertIn(MESSAGE, imap_body)

    def test_bare_lf_file_without_w_field(self):
        self.copied_in("1600000000.M1P2.host,S=%d" % len(self.LF))
        self.check_crlf()
        self.assertEqual(self.pop3_retr(), MESSAGE)

    def test_crlf_file_fetch_unchanged(self):
        c = self.selected(MESSAGE)
        self.assertEqual(
            c.cmd(b"F FETCH 1 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[]<0.10>)"),
            b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%b BODY[]<0> {10}\r\n%b)\r\n"
            b"F OK FETCH completed\r\n" % (len(MESSAGE), len(MESSAGE), MESSAGE, MESSAGE[:10]))
