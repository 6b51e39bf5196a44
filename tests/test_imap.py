"""
The IMAP server through its protocol: exact bytes in, exact replies out, with
a StringTransport and a task.Clock.
"""

from pathlib import Path

from twisted.cred import checkers, credentials, error
from twisted.internet import defer, interfaces, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import alsoProvides, implementer

from mailsrv import context
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import UserPasswordChecker
from mailsrv.imap import mailbox as mailbox_module
from mailsrv.imap.server import build_factory
from mailsrv.sessions import MemorySessionStore
from mailsrv.store import folder as folder_module
from mailsrv.store.delivery import deliver_file
from mailsrv.store.folder import MailStore
from tests.helpers import make_settings

ALICE = "alice@example.test"
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
    )


def deliver(store, data, user=ALICE, folder="INBOX"):
    source = Path(store.mail_root).parent / "source"
    source.write_bytes(data)
    deliver_file(source, [store.maildir(user, folder)])
    source.unlink()


class Client:
    """One connection: send lines, read what the server wrote."""

    def __init__(self, server, tls="starttls", ip="127.0.0.1", secure=False):
        listener = _listener(server.settings, tls)
        self.factory = build_factory(server, listener)
        self.clock = server.clock
        self.proto = self.factory.buildProtocol(None)
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
        if secure:
            alsoProvides(self.transport, interfaces.ISSLTransport)
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


def _listener(settings, tls):
    from mailsrv.config import Listener

    return Listener(index=0, protocol="imap", role="", endpoint="tcp:0", tls=tls,
                    max_connections=10, auth=True, client_cert=None)


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
        for m in messages:
            deliver(self.store, m)
        c = self.client()
        c.login()
        c.cmd(b"S SELECT INBOX")
        return c


class GreetingAndLoginTests(IMAPTestCase):
    def test_greeting_loopback_plaintext_allowed(self):
        c = self.client()
        self.assertEqual(
            c.greeting,
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS NAMESPACE IDLE] mailsrv IMAP4rev1 ready\r\n",
        )

    def test_capability_without_tls_remote(self):
        c = self.client(ip="192.0.2.7")
        self.assertEqual(
            c.cmd(b"a CAPABILITY"),
            b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED NAMESPACE IDLE\r\n"
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
            b"* CAPABILITY IMAP4rev1 NAMESPACE IDLE\r\na OK CAPABILITY completed\r\n",
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
            b"* OK [CAPABILITY IMAP4rev1 NAMESPACE IDLE] mailsrv IMAP4rev1 ready\r\n",
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
            b"a OK [CAPABILITY IMAP4rev1 NAMESPACE IDLE] Logged in\r\n",
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


class RealCheckerTests(unittest.TestCase):
    """The real checker hashes in a thread: the test waits for it."""

    def test_login_with_hashed_password(self):
        root = Path(self.mktemp())
        root.mkdir()
        clock = task.Clock()
        UserDB(root / "users").set_password(ALICE, "secret")
        server = make_mail_server(root, clock)
        checker = UserPasswordChecker(server.directory)
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
                c.read(), b"a OK [CAPABILITY IMAP4rev1 NAMESPACE IDLE] Logged in\r\n"
            )
        )
