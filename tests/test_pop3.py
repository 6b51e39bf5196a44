"""
POP3: exact bytes in, exact bytes out, over a StringTransport with a Clock,
on real Maildirs in temporary directories.
"""

import base64
import random
from pathlib import Path

from twisted.cred import checkers, error as cred_error
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import alsoProvides, implementer

from mailsrv import dns
from mailsrv.context import MailServer
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import UserPasswordChecker
from mailsrv.pop3 import server as pop3server
from mailsrv import realm as realm_module
from mailsrv.pop3.mailbox import FolderMailbox, uidl_for
from mailsrv.queue.dotstuff import DotStuffer, stuff
from mailsrv.sessions import MemorySessionStore
from mailsrv.store.delivery import deliver_file
from mailsrv.store.mailstore import MailStore
from tests import certs
from tests.fulldisk import FullDisk
from tests.helpers import fresh_error_log, make_settings
from tests.test_smtp.support import run_threads_inline
from tests.test_smtp.test_server import LogCapture

USER = "alice@example.test"
PASSWORD = b"s3cret pass"

MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n.starts with a dot\r\n..two dots\r\n",
    b"Subject: two\r\nX: y\r\n\r\nline 1\r\nline 2\r\nline 3\r\n\xc3\xa9 8-bit\r\n",
    b"Subject: three\r\n\r\nno final newline",
]


class TLSStringTransport(StringTransport):
    """A StringTransport that can start TLS, as a TCP transport can."""

    tls_context = None

    def startTLS(self, context):
        self.tls_context = context
        alsoProvides(self, ISSLTransport)


@implementer(checkers.ICredentialsChecker)
class FakeChecker:
    """Like the directory's checker: the avatar id is the address (str)."""

    credentialInterfaces = checkers.InMemoryUsernamePasswordDatabaseDontUse \
        .credentialInterfaces

    def __init__(self):
        self.pending = None  # set to a list to answer later

    def requestAvatarId(self, creds):
        if creds.username == USER.encode() and creds.password == PASSWORD:
            result = defer.succeed(USER)
        else:
            result = defer.fail(cred_error.UnauthorizedLogin())
        if self.pending is None:
            return result
        later = defer.Deferred()
        self.pending.append(lambda: result.chainDeferred(later))
        return later


def deliver(root, user, messages):
    """Deliver messages into C{user}'s INBOX as the SMTP server does."""
    store = MailStore(root, task.Clock())
    for number, data in enumerate(messages):
        source = Path(root) / f"incoming-{number}"
        source.write_bytes(data)
        deliver_file(source, [store.maildir(user)])
        source.unlink()


class Harness:
    """One POP3 server connection on a fake transport."""

    def __init__(self, test, root=None, messages=MESSAGES, peer="127.0.0.1",
                 tls="starttls", plaintext_on_loopback=True, deliver_now=True,
                 auth=True, checker=None, client_cert=None):
        """@param client_cert: the listener's, with a [tls] client_ca."""
        self.clock = task.Clock()
        run_threads_inline(test)  # the folder's listing at login
        self.root = Path(root or test.mktemp())
        self.root.mkdir(parents=True, exist_ok=True)
        if deliver_now:
            deliver(self.root, USER, messages)
        settings = make_settings(
            self.root, auth={"allow_plaintext_on_loopback": plaintext_on_loopback},
            tls={"client_ca": str(self.root / "ca.pem")},
        )
        self.sessions = MemorySessionStore(1800, self.clock, settings.auth)
        self.checker = FakeChecker() if checker is None else checker(self)
        self.server = MailServer(
            settings=settings, directory=getattr(self.checker, "directory", None),
            checker=self.checker,
            sessions=self.sessions, store=MailStore(self.root, self.clock),
            spool=None, trusted=None, tls_context=object(), clock=self.clock,
            resolvers=dns.Resolvers(self.clock),
        )
        listener = [l for l in settings.listeners][0]
        self.listener = type(listener)(**{**listener.__dict__, "protocol": "pop3",
                                          "role": "", "tls": tls, "auth": auth,
                                          "client_cert": client_cert, "timeouts": None})
        self.factory = pop3server.build_factory(self.server, self.listener)
        self.connect(peer)

    def connect(self, peer="127.0.0.1"):
        """A new connection; the previous one, if the server closed it, is lost."""
        if getattr(self, "transport", None) is not None and self.transport.disconnecting:
            self.drop()
        self.proto = self.factory.buildProtocol(None)
        self.proto.deferToThread = lambda f, *a: defer.maybeDeferred(f, *a)
        self.transport = TLSStringTransport(
            peerAddress=IPv4Address("TCP", peer, 40000)
        )
        self.proto.makeConnection(self.transport)
        return self.read()

    def read(self):
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data):
        """Send bytes; return everything the server wrote in reply."""
        self.proto.dataReceived(data)
        return self.read()

    def cmd(self, line):
        return self.send(line + b"\r\n")

    def login(self):
        assert self.cmd(b"USER " + USER.encode()) == b"+OK Send PASS\r\n"
        reply = self.cmd(b"PASS " + PASSWORD)
        assert reply == b"+OK Logged in\r\n", reply
        return reply

    def drop(self):
        self.proto.connectionLost(None)


class GreetingAndCapabilityTests(unittest.TestCase):
    def test_greeting_has_no_apop_timestamp(self):
        h = Harness(self)
        h.transport.clear()
        self.assertEqual(h.connect(), b"+OK mail.example.test POP3 ready\r\n")

    def test_capa_on_loopback_before_login(self):
        h = Harness(self)
        self.assertEqual(
            h.cmd(b"CAPA"),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n"
            b"AUTH-RESP-CODE\r\nPIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n"
            b"IMPLEMENTATION mailsrv\r\n.\r\n",
        )

    def test_capa_without_tls_from_afar_has_no_user(self):
        h = Harness(self, peer="192.0.2.7")
        caps = h.cmd(b"capa").split(b"\r\n")
        self.assertNotIn(b"USER", caps)
        self.assertFalse([c for c in caps if c.startswith(b"SASL")])
        self.assertIn(b"STLS", caps)

    def test_no_stls_without_tls_on_listener(self):
        h = Harness(self, tls="none")
        self.assertNotIn(b"STLS", h.cmd(b"CAPA").split(b"\r\n"))
        self.assertEqual(h.cmd(b"STLS"), b"-ERR STLS is not available here\r\n")

    def test_capa_after_login_has_no_stls(self):
        h = Harness(self)
        h.login()
        caps = h.cmd(b"CAPA").split(b"\r\n")
        self.assertNotIn(b"STLS", caps)
        self.assertIn(b"TOP", caps)


class STLSTests(unittest.TestCase):
    def test_passwords_refused_before_tls_from_afar(self):
        h = Harness(self, peer="192.0.2.7")
        refusal = b"-ERR Passwords are only accepted over TLS: send STLS first\r\n"
        self.assertEqual(h.cmd(b"USER " + USER.encode()), refusal)
        self.assertEqual(h.cmd(b"PASS " + PASSWORD), refusal)
        self.assertEqual(h.cmd(b"APOP alice 0123"), refusal)
        self.assertEqual(h.cmd(b"AUTH PLAIN"), refusal)
        self.assertEqual(h.cmd(b"STLS"), b"+OK Begin TLS negotiation\r\n")
        self.assertIs(h.transport.tls_context, h.server.tls_context)
        caps = h.cmd(b"CAPA").split(b"\r\n")
        self.assertIn(b"USER", caps)
        self.assertNotIn(b"STLS", caps)
        h.login()
        self.assertEqual(h.cmd(b"STLS"), b"-ERR Already logged in\r\n")

    def test_no_tls_port_says_so(self):
        h = Harness(self, peer="192.0.2.7", tls="none")
        self.assertEqual(
            h.cmd(b"USER x"),
            b"-ERR Passwords are only accepted over TLS: use the POP3 TLS port\r\n",
        )

    def test_required_refuses_passwords_on_loopback_too(self):
        h = Harness(self, tls="required")
        self.assertEqual(
            h.cmd(b"USER x"),
            b"-ERR Passwords are only accepted over TLS: send STLS first\r\n",
        )

    def test_input_pipelined_with_stls_is_discarded(self):
        """RFC 2595 4: plaintext sent along with STLS is an injection."""
        h = Harness(self, peer="192.0.2.7")
        reply = h.send(b"STLS\r\nUSER mallory\r\nPASS x\r\nCAPA\r\nQUI")
        self.assertEqual(reply, b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(h.cmd(b"PASS " + PASSWORD), b"-ERR Send USER first\r\n")
        h.login()

    def test_stls_when_already_secure(self):
        h = Harness(self, peer="192.0.2.7")
        alsoProvides(h.transport, ISSLTransport)
        self.assertNotIn(b"STLS", h.cmd(b"CAPA").split(b"\r\n"))
        self.assertEqual(h.cmd(b"STLS"), b"-ERR TLS is already active\r\n")
        h.login()


class LoginTests(unittest.TestCase):
    def test_bad_password(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"USER " + USER.encode()), b"+OK Send PASS\r\n")
        self.assertEqual(
            h.cmd(b"PASS wrong"), b"-ERR [AUTH] Invalid user name or password\r\n"
        )
        self.assertEqual(h.cmd(b"STAT"), b"-ERR Log in first (USER and PASS)\r\n")
        h.login()

    def test_one_session_per_maildrop(self):
        h = Harness(self)
        h.login()
        first = h.proto
        h.connect()
        h.cmd(b"USER " + USER.encode())
        self.assertEqual(h.cmd(b"PASS " + PASSWORD),
                         b"-ERR [IN-USE] Mailbox in use by another POP3 session\r\n")
        self.assertEqual(h.cmd(b"STAT"), b"-ERR Log in first (USER and PASS)\r\n")
        first.connectionLost(None)  # QUIT or a dropped connection frees it
        h.login()

    def test_login_opens_pop_before_smtp_window(self):
        h = Harness(self, peer="127.0.0.1")
        self.assertIsNone(self.successResultOf(h.sessions.window_user("127.0.0.1")))
        h.login()
        self.assertEqual(self.successResultOf(h.sessions.window_user("127.0.0.1")),
                         USER)

    def test_failed_login_opens_no_window(self):
        h = Harness(self)
        h.cmd(b"USER " + USER.encode())
        h.cmd(b"PASS nope")
        self.assertIsNone(self.successResultOf(h.sessions.window_user("127.0.0.1")))

    def test_login_lines_logged_without_password(self):
        events = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = Harness(self)
        h.cmd(b"USER " + USER.encode())
        h.cmd(b"PASS nope")
        h.login()
        lines = [e["log_format"].format(**e) for e in events
                 if "login" in e.get("log_format", "")]
        self.assertEqual(lines, [
            f"login failed: user={USER} ip=127.0.0.1 protocol=pop3",
            f"login ok: user={USER} ip=127.0.0.1 protocol=pop3",
        ])
        self.assertFalse([e for e in events if PASSWORD.decode() in repr(e)])

    def test_pipelined_commands_wait_for_login(self):
        """PIPELINING is advertised: commands behind PASS wait for its answer."""
        h = Harness(self)
        h.checker.pending = []
        reply = h.send(b"USER " + USER.encode() + b"\r\nPASS " + PASSWORD
                       + b"\r\nSTAT\r\nLIST 1\r\n")
        self.assertEqual(reply, b"+OK Send PASS\r\n")
        h.checker.pending.pop()()
        self.assertEqual(
            h.read(),
            b"+OK Logged in\r\n+OK 3 %d\r\n+OK 1 %d\r\n"
            % (sum(map(len, MESSAGES)), len(MESSAGES[0])),
        )

    def test_apop_is_refused(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"APOP alice c4c9334bac560ecc979e58001b3e22fb"),
                         b"-ERR APOP is not supported: use USER and PASS\r\n")

    def test_vanished_during_login(self):
        h = Harness(self)
        h.checker.pending = []
        h.send(b"USER " + USER.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
        h.transport.loseConnection()
        h.drop()
        h.checker.pending.pop()()
        self.assertEqual(h.read(), b"")
        self.assertIsNone(h.proto.mbox)


class TransactionTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.h.login()

    def test_stat_list_uidl(self):
        h = self.h
        sizes = [len(m) for m in MESSAGES]
        self.assertEqual(h.cmd(b"STAT"), b"+OK 3 %d\r\n" % sum(sizes))
        self.assertEqual(
            h.cmd(b"LIST"),
            b"+OK 3 messages\r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % tuple(sizes),
        )
        self.assertEqual(h.cmd(b"LIST 2"), b"+OK 2 %d\r\n" % sizes[1])
        keys = [m.key for m in h.proto.mbox.folder.messages()]
        self.assertEqual(
            h.cmd(b"UIDL"),
            b"+OK\r\n" + b"".join(b"%d %s\r\n" % (n, k.encode())
                                  for n, k in enumerate(keys, 1)) + b".\r\n",
        )
        self.assertEqual(h.cmd(b"UIDL 3"), b"+OK 3 %s\r\n" % keys[2].encode())

    def test_retr_sends_exact_bytes_dot_stuffed(self):
        h = self.h
        self.assertEqual(
            h.cmd(b"RETR 1"),
            b"+OK %d octets\r\n" % len(MESSAGES[0])
            + b"Subject: one\r\n\r\nfirst\r\n..starts with a dot\r\n"
            b"...two dots\r\n.\r\n",
        )
        self.assertEqual(
            h.cmd(b"RETR 2"), b"+OK %d octets\r\n" % len(MESSAGES[1])
            + MESSAGES[1] + b".\r\n"
        )
        self.assertEqual(
            h.cmd(b"RETR 3"), b"+OK %d octets\r\n" % len(MESSAGES[2])
            + MESSAGES[2] + b"\r\n.\r\n"
        )

    def test_small_message_read_at_once_larger_listed_size_streamed(self):
        self.patch(pop3server, "SMALL_MESSAGE", len(MESSAGES[0]) - 1)
        h = self.h
        h.proto.deferToThread = lambda f, *a: self.fail("read small in a thread")
        self.assertEqual(h.cmd(b"RETR 3"), b"+OK %d octets\r\n" % len(MESSAGES[2])
                         + MESSAGES[2] + b"\r\n.\r\n")
        reads = []
        h.proto.deferToThread = lambda f, *a: reads.append(f) or defer.succeed(f(*a))
        self.assertEqual(h.cmd(b"RETR 1"), b"+OK %d octets\r\n" % len(MESSAGES[0])
                         + stuff(MESSAGES[0]))
        self.assertEqual(len(reads), 1)

    def test_retr_is_one_write(self):
        h = self.h
        writes = []
        h.transport.write = writes.append
        h.cmd(b"RETR 2")
        self.assertEqual(len(writes), 1)

    def test_top(self):
        h = self.h
        self.assertEqual(
            h.cmd(b"TOP 2 0"),
            b"+OK Top of message follows\r\nSubject: two\r\nX: y\r\n\r\n.\r\n",
        )
        self.assertEqual(
            h.cmd(b"TOP 2 2"),
            b"+OK Top of message follows\r\nSubject: two\r\nX: y\r\n\r\n"
            b"line 1\r\nline 2\r\n.\r\n",
        )
        self.assertEqual(
            h.cmd(b"TOP 1 100"),
            b"+OK Top of message follows\r\n" + stuff(MESSAGES[0]),
        )
        self.assertEqual(h.cmd(b"TOP 1 x"), b"-ERR Syntax: TOP msg lines\r\n")

    def test_dele_takes_effect_at_quit(self):
        h = self.h
        self.assertEqual(h.cmd(b"DELE 1"), b"+OK Message 1 deleted\r\n")
        self.assertEqual(h.cmd(b"DELE 1"), b"-ERR Message 1 is deleted\r\n")
        self.assertEqual(h.cmd(b"RETR 1"), b"-ERR Message 1 is deleted\r\n")
        self.assertEqual(h.cmd(b"LIST 1"), b"-ERR Message 1 is deleted\r\n")
        self.assertEqual(
            h.cmd(b"STAT"), b"+OK 2 %d\r\n" % (len(MESSAGES[1]) + len(MESSAGES[2]))
        )
        self.assertEqual(h.cmd(b"LIST"), b"+OK 2 messages\r\n2 %d\r\n3 %d\r\n.\r\n"
                         % (len(MESSAGES[1]), len(MESSAGES[2])))
        self.assertEqual(len(h.cmd(b"UIDL").split(b"\r\n")), 5)
        self.assertEqual(len(h.proto.mbox.folder.messages()), 3)
        self.assertEqual(h.cmd(b"QUIT"), b"+OK Bye\r\n")
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(len(h.proto.mbox.folder.messages()), 2)
        h.drop()
        h.connect()
        h.login()
        self.assertEqual(h.cmd(b"RETR 1"),
                         b"+OK %d octets\r\n" % len(MESSAGES[1]) + MESSAGES[1] + b".\r\n")

    def test_rset_undeletes(self):
        h = self.h
        h.cmd(b"DELE 2")
        self.assertEqual(h.cmd(b"RSET"), b"+OK 3 messages\r\n")
        self.assertEqual(h.cmd(b"STAT"), b"+OK 3 %d\r\n" % sum(map(len, MESSAGES)))
        h.cmd(b"QUIT")
        self.assertEqual(len(h.proto.mbox.folder.messages()), 3)

    def test_dropped_connection_deletes_nothing(self):
        h = self.h
        h.cmd(b"DELE 1")
        h.cmd(b"DELE 2")
        h.drop()
        h.connect()
        h.login()
        self.assertEqual(h.cmd(b"STAT"), b"+OK 3 %d\r\n" % sum(map(len, MESSAGES)))

    def test_uidl_stable_across_restarts(self):
        first = self.h.cmd(b"UIDL")
        again = Harness(self, root=self.h.root, deliver_now=False)
        again.login()
        self.assertEqual(again.cmd(b"UIDL"), first)

    def test_new_mail_seen_at_next_login(self):
        h = self.h
        deliver(h.root, USER, [b"Subject: four\r\n\r\nx\r\n"])
        self.assertTrue(h.cmd(b"STAT").startswith(b"+OK 3 "))
        h.cmd(b"QUIT")
        h.connect()
        h.login()
        self.assertTrue(h.cmd(b"STAT").startswith(b"+OK 4 "))

    def test_message_removed_by_another_session(self):
        h = self.h
        folder = h.proto.mbox.folder
        folder.delete([folder.messages()[0].uid])
        self.assertEqual(h.cmd(b"RETR 1"),
                         b"-ERR Message 1 was removed by another session\r\n")
        self.assertEqual(h.cmd(b"QUIT"), b"+OK Bye\r\n")

    def test_noop_and_idle_timeout(self):
        h = self.h
        self.assertEqual(h.cmd(b"NOOP"), b"+OK\r\n")
        h.clock.advance(599)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)

    def test_quit_before_login(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"QUIT"), b"+OK Bye\r\n")
        self.assertTrue(h.transport.disconnecting)


class BadInputTests(unittest.TestCase):
    """Each input gets its exact reply and the session goes on."""

    LONG = b"X" * 5000

    CASES = [
        # (logged in?, input, exact reply)
        (False, b"STAT\r\n", b"-ERR Log in first (USER and PASS)\r\n"),
        (False, b"RETR 1\r\n", b"-ERR Log in first (USER and PASS)\r\n"),
        (False, b"PASS x\r\n", b"-ERR Send USER first\r\n"),
        (False, b"USER\r\n", b"-ERR Syntax: USER name\r\n"),
        (False, b"\r\n", b"-ERR Empty command\r\n"),
        (False, b"XYZZY\r\n", b"-ERR Unknown command\r\n"),
        (False, b"\x00\xff\xfe\x80garbage\r\n", b"-ERR Unknown command\r\n"),
        (False, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
         b"-ERR Unknown command\r\n"),
        (False, LONG + b"\r\n", b"-ERR Line too long\r\n"),
        (False, b"USER " + LONG + b"\r\n", b"-ERR Line too long\r\n"),
        (True, b"USER alice\r\n", b"-ERR Already logged in\r\n"),
        (True, b"RETR\r\n", b"-ERR Syntax: RETR msg\r\n"),
        (True, b"RETR 1 2\r\n", b"-ERR Syntax: RETR msg\r\n"),
        (True, b"RETR 0\r\n", b"-ERR No such message\r\n"),
        (True, b"RETR 4\r\n", b"-ERR No such message\r\n"),
        (True, b"RETR -1\r\n", b"-ERR No such message\r\n"),
        (True, b"RETR one\r\n", b"-ERR No such message\r\n"),
        (True, b"RETR 99999999999999999999999\r\n", b"-ERR No such message\r\n"),
        (True, b"DELE 4\r\n", b"-ERR No such message\r\n"),
        (True, b"DELE 1\r\nRETR 1\r\n",
         b"+OK Message 1 deleted\r\n-ERR Message 1 is deleted\r\n"),
        (True, b"DELE 2\r\nTOP 2 0\r\n",
         b"+OK Message 2 deleted\r\n-ERR Message 2 is deleted\r\n"),
        (True, b"TOP 1\r\n", b"-ERR Syntax: TOP msg lines\r\n"),
        (True, b"TOP 1 -1\r\n", b"-ERR Syntax: TOP msg lines\r\n"),
        (True, b"LIST 1 2\r\n", b"-ERR Syntax: LIST [msg]\r\n"),
        (True, b"UIDL x\r\n", b"-ERR No such message\r\n"),
        (True, b"STAT extra\r\n", b"-ERR Syntax: STAT\r\n"),
        (True, b"LAST\r\n", b"-ERR Unknown command\r\n"),
        (True, b"RPOP x\r\n", b"-ERR Unknown command\r\n"),
        (True, LONG + b"\r\n", b"-ERR Line too long\r\n"),
    ]

    def test_table(self):
        for logged_in, data, expected in self.CASES:
            h = Harness(self, root=self.mktemp())
            if logged_in:
                h.login()
            self.assertEqual(h.send(data), expected, data[:40])
            then = b"STAT" if logged_in else b"CAPA"
            self.assertTrue(h.cmd(then).startswith(b"+OK"), data[:40])
            self.assertFalse(h.transport.disconnecting, data[:40])

    def test_long_line_in_pieces(self):
        h = Harness(self)
        for _ in range(10):
            self.assertEqual(h.send(b"A" * 700), b"")
        self.assertEqual(h.send(b"A\r\nNOOP"), b"-ERR Line too long\r\n")
        self.assertEqual(h.send(b"\r\n"), b"-ERR Log in first (USER and PASS)\r\n")

    def test_bare_lf_lines_are_accepted(self):
        h = Harness(self)
        self.assertTrue(h.send(b"CAPA\n").startswith(b"+OK"))

    def test_too_many_errors_close(self):
        h = Harness(self)
        replies = h.send(b"BOGUS\r\n" * 25)
        self.assertEqual(replies.count(b"-ERR Unknown command\r\n"), 19)
        self.assertTrue(replies.endswith(b"-ERR Too many bad commands, closing\r\n"))
        self.assertTrue(h.transport.disconnecting)

    def test_http_request_closes(self):
        h = Harness(self)
        self.assertEqual(h.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                         b"-ERR This is a POP3 server\r\n")
        self.assertTrue(h.transport.disconnecting)

    def test_client_vanishes_mid_command(self):
        h = Harness(self)
        h.login()
        h.send(b"DELE 1\r\nRET")
        h.drop()
        h.connect()
        h.login()
        self.assertEqual(h.cmd(b"STAT"), b"+OK 3 %d\r\n" % sum(map(len, MESSAGES)))

    def test_client_vanishes_mid_retr(self):
        self.patch(pop3server, "CHUNK", 16)
        self.patch(pop3server, "SMALL_MESSAGE", 0)
        h = Harness(self)
        h.login()
        reads = []
        h.proto.deferToThread = lambda f, *a: reads.append(f) or defer.Deferred()
        h.cmd(b"RETR 2")
        self.assertEqual(len(reads), 1)
        h.transport.producer.stopProducing()
        h.drop()


class StreamingTests(unittest.TestCase):
    def test_large_message_in_chunks_with_backpressure(self):
        self.patch(pop3server, "CHUNK", 1000)
        self.patch(pop3server, "SMALL_MESSAGE", 0)
        body = b"".join(
            b".line %d\r\n" % i if i % 3 else b"line %d\n" % i for i in range(2000)
        )
        message = b"Subject: big\r\n\r\n" + body
        h = Harness(self, messages=[message])
        h.login()
        real = []
        def fake(f, *a):
            d = defer.Deferred()
            real.append((d, f, a))
            return d
        h.proto.deferToThread = fake
        h.proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
        writes = 0
        while real:
            d, f, a = real.pop(0)
            h.transport.producer.pauseProducing()  # the client reads slowly
            d.callback(f(*a))
            self.assertEqual(real, [])  # no further read while paused
            writes += 1
            if h.transport.producer is not None:
                h.transport.producer.resumeProducing()
        self.assertEqual(writes, len(message) // 1000 + 1)
        self.assertEqual(
            h.read(), b"+OK %d octets\r\n" % len(message) + stuff(message) + b"+OK\r\n"
        )


class DotStufferTests(unittest.TestCase):
    CASES = [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
        (b"a\r", b"a\r\r\n.\r\n"),
        (b"\xff\x00\r\n", b"\xff\x00\r\n.\r\n"),
    ]

    def test_table(self):
        for data, wire in self.CASES:
            self.assertEqual(stuff(data), wire, data)

    def test_chunking_never_changes_the_result(self):
        rng = random.Random(7)
        alphabet = [b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\n."]
        for _ in range(300):
            data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
            stuffer = DotStuffer()
            out = b""
            rest = data
            while rest:
                cut = rng.randrange(1, len(rest) + 1)
                out += stuffer.feed(rest[:cut])
                rest = rest[cut:]
            self.assertEqual(out + stuffer.finish(), stuff(data), data)


class UidlTests(unittest.TestCase):
    def test_maildir_names_are_kept(self):
        key = "1700000000.M12P34Q5.mail.example.test,S=120"
        self.assertEqual(uidl_for(key), key)

    def test_unfit_names_are_hashed_stably(self):
        for key in ("x" * 71, "with space", "caf\xe9"):
            uidl = uidl_for(key)
            self.assertEqual(uidl, uidl_for(key))
            self.assertTrue(len(uidl) <= 70 and uidl.isascii() and " " not in uidl)


def plain(user, password):
    return base64.b64encode(b"\0" + user + b"\0" + password)


class SASLTests(unittest.TestCase):
    """AUTH PLAIN (RFC 5034), through the same checker as USER/PASS."""

    def test_initial_response(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"AUTH PLAIN " + plain(USER.encode(), PASSWORD)),
                         b"+OK Logged in\r\n")
        self.assertEqual(self.successResultOf(h.sessions.window_user("127.0.0.1")), USER)
        self.assertEqual(h.cmd(b"AUTH PLAIN"), b"-ERR Already logged in\r\n")

    def test_continuation(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"auth plain"), b"+ \r\n")
        self.assertEqual(h.cmd(plain(USER.encode(), PASSWORD)), b"+OK Logged in\r\n")
        self.assertEqual(h.cmd(b"STAT")[:5], b"+OK 3")

    def test_wrong_password(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"AUTH PLAIN " + plain(USER.encode(), b"nope")),
                         b"-ERR [AUTH] Invalid user name or password\r\n")
        self.assertIsNone(self.successResultOf(h.sessions.window_user("127.0.0.1")))

    def test_cancel_malformed_and_unknown(self):
        h = Harness(self)
        table = [
            (b"AUTH PLAIN", b"+ \r\n"),
            (b"*", b"-ERR Authentication cancelled\r\n"),
            (b"AUTH PLAIN %%%", b"-ERR Cannot decode base64 response\r\n"),
            (b"AUTH PLAIN", b"+ \r\n"),
            (b"not base64!", b"-ERR Cannot decode base64 response\r\n"),
            (b"AUTH PLAIN " + base64.b64encode(b"alice\0pw"),
             b"-ERR Malformed PLAIN response\r\n"),
            (b"AUTH PLAIN " + base64.b64encode(b"bob\0" + USER.encode() + b"\0pw"),
             b"-ERR Authentication credentials invalid\r\n"),
            (b"AUTH PLAIN =", b"-ERR Malformed PLAIN response\r\n"),
            (b"AUTH CRAM-MD5", b"-ERR Unrecognized authentication mechanism\r\n"),
            (b"AUTH EXTERNAL", b"-ERR Unrecognized authentication mechanism\r\n"),
            (b"AUTH", b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"),
        ]
        for line, reply in table:
            self.assertEqual(h.cmd(line), reply, line)
        h.login()

    def test_login_mechanism(self):
        h = Harness(self)
        table = [
            (b"AUTH LOGIN", b"+ VXNlcm5hbWU6\r\n"),
            (base64.b64encode(USER.encode()), b"+ UGFzc3dvcmQ6\r\n"),
            (base64.b64encode(b"nope"), b"-ERR [AUTH] Invalid user name or password\r\n"),
            (b"AUTH LOGIN", b"+ VXNlcm5hbWU6\r\n"),
            (b"*", b"-ERR Authentication cancelled\r\n"),
            (b"AUTH LOGIN " + base64.b64encode(USER.encode()), b"+ UGFzc3dvcmQ6\r\n"),
            (base64.b64encode(PASSWORD), b"+OK Logged in\r\n"),
        ]
        for line, reply in table:
            self.assertEqual(h.cmd(line), reply, line)
        self.assertEqual(self.successResultOf(h.sessions.window_user("127.0.0.1")), USER)

    def test_login_mechanism_needs_tls_from_afar(self):
        h = Harness(self, peer="192.0.2.7")
        self.assertEqual(h.cmd(b"AUTH LOGIN"),
                         b"-ERR Passwords are only accepted over TLS: send STLS first\r\n")
        alsoProvides(h.transport, ISSLTransport)
        self.assertIn(b"SASL PLAIN LOGIN\r\n", h.cmd(b"CAPA"))
        self.assertEqual(h.cmd(b"AUTH LOGIN"), b"+ VXNlcm5hbWU6\r\n")

    def test_overlong_response_ends_the_exchange(self):
        h = Harness(self)
        self.assertEqual(h.cmd(b"AUTH PLAIN"), b"+ \r\n")
        self.assertEqual(h.cmd(b"A" * 1500), b"-ERR Line too long\r\n")
        self.assertEqual(h.cmd(b"NOOP"), b"-ERR Log in first (USER and PASS)\r\n")
        h.login()

    def test_pipelined_commands_wait_for_auth(self):
        h = Harness(self)
        h.checker.pending = []
        reply = h.send(b"AUTH PLAIN\r\n" + plain(USER.encode(), PASSWORD) + b"\r\nSTAT\r\n")
        self.assertEqual(reply, b"+ \r\n")
        h.checker.pending.pop()()
        self.assertEqual(h.read(), b"+OK Logged in\r\n+OK 3 %d\r\n" % sum(map(len, MESSAGES)))

    def test_refused_before_tls_from_afar(self):
        h = Harness(self, peer="192.0.2.7")
        self.assertEqual(h.cmd(b"AUTH PLAIN " + plain(USER.encode(), PASSWORD)),
                         b"-ERR Passwords are only accepted over TLS: send STLS first\r\n")


class ExternalTests(unittest.TestCase):
    """AUTH EXTERNAL: the verified client certificate names the user (RFC 4422 A)."""

    def harness(self, issued, client_cert="require", peer="192.0.2.7"):
        h = Harness(self, peer=peer, tls="implicit", checker=real_checker,
                    client_cert=client_cert)
        certs.present(h.transport, issued)
        return h

    def test_offered_with_a_certificate_only(self):
        alice = certs.make(USER)
        self.assertIn(b"SASL PLAIN LOGIN EXTERNAL\r\n", self.harness(alice).cmd(b"CAPA"))
        self.assertEqual(self.harness(alice).cmd(b"AUTH"),
                         b"+OK\r\nPLAIN\r\nLOGIN\r\nEXTERNAL\r\n.\r\n")
        self.assertIn(b"SASL PLAIN LOGIN EXTERNAL\r\n",
                      self.harness(alice, client_cert="request").cmd(b"CAPA"))
        for h in (self.harness(None, client_cert="request"),
                  self.harness(alice, client_cert="none")):
            self.assertIn(b"SASL PLAIN LOGIN\r\n", h.cmd(b"CAPA"))
            self.assertEqual(h.cmd(b"AUTH EXTERNAL ="),
                             b"-ERR Unrecognized authentication mechanism\r\n")

    def test_success(self):
        logs = LogCapture(self)
        for lines in ([b"AUTH EXTERNAL ="], [b"AUTH EXTERNAL", b""],
                      [b"AUTH EXTERNAL " + base64.b64encode(b"alice")]):
            h = self.harness(certs.make(USER))
            replies = [h.cmd(line) for line in lines]
            self.assertEqual(replies[-1], b"+OK Logged in\r\n", lines)
            self.assertEqual(h.cmd(b"STAT")[:5], b"+OK 3")
            h.drop()
        self.assertEqual(self.successResultOf(h.sessions.window_user("192.0.2.7")), USER)
        self.assertEqual(
            logs.text().count(f"login ok: user={USER} ip=192.0.2.7 protocol=pop3"), 3)

    def test_failures(self):
        logs = LogCapture(self)
        failed = b"-ERR [AUTH] Invalid user name or password\r\n"
        h = self.harness(certs.make(USER))
        self.assertEqual(h.cmd(b"AUTH EXTERNAL " + base64.b64encode(b"bob@example.test")),
                         failed)
        self.assertEqual(h.cmd(b"AUTH EXTERNAL"), b"+ \r\n")
        self.assertEqual(h.cmd(b"*"), b"-ERR Authentication cancelled\r\n")
        h = self.harness(certs.make("carol@example.test"))
        self.assertEqual(h.cmd(b"AUTH EXTERNAL ="), failed)
        self.assertEqual(h.cmd(b"STAT"), b"-ERR Log in first (USER and PASS)\r\n")
        self.assertIsNone(self.successResultOf(h.sessions.window_user("192.0.2.7")))
        text = logs.text()
        self.assertIn("login failed: user=bob@example.test ip=192.0.2.7 protocol=pop3", text)
        self.assertIn("login failed: user=carol@example.test ip=192.0.2.7 protocol=pop3", text)


class AuthDisabledTests(unittest.TestCase):
    """C{auth = false} on the listener: no password login at all."""

    def test_nothing_offered_nothing_accepted(self):
        h = Harness(self, auth=False)
        caps = h.cmd(b"CAPA").split(b"\r\n")
        self.assertNotIn(b"USER", caps)
        self.assertFalse([c for c in caps if c.startswith(b"SASL")])
        refusal = b"-ERR Password logins are disabled on this port\r\n"
        for line in (b"USER " + USER.encode(), b"PASS " + PASSWORD,
                     b"AUTH PLAIN " + plain(USER.encode(), PASSWORD), b"AUTH",
                     b"APOP alice c4c9334bac560ecc979e58001b3e22fb"):
            self.assertEqual(h.cmd(line), refusal, line)

    def test_even_over_tls(self):
        h = Harness(self, auth=False, peer="192.0.2.7")
        alsoProvides(h.transport, ISSLTransport)
        self.assertEqual(h.cmd(b"USER " + USER.encode()),
                         b"-ERR Password logins are disabled on this port\r\n")


def real_checker(harness):
    """The directory's checker over a users file with alice, counting in the store."""
    users = UserDB(harness.root / "users", harness.clock)
    users.set_password(USER, PASSWORD.decode())
    directory = Directory(["example.test"], users,
                          AliasMap(harness.root / "aliases", harness.clock))
    return UserPasswordChecker(directory, harness.sessions, harness.clock)


class ThrottlingTests(unittest.TestCase):
    def test_refused_after_five_distinct_wrong_passwords(self):
        run_threads_inline(self)
        logs = []
        globalLogPublisher.addObserver(logs.append)
        self.addCleanup(globalLogPublisher.removeObserver, logs.append)
        h = Harness(self, checker=real_checker)
        for n in range(3):
            h.cmd(b"USER " + USER.encode())
            self.assertEqual(h.cmd(b"PASS guess-%d" % n),
                             b"-ERR [AUTH] Invalid user name or password\r\n")
        for n in range(3, 5):
            self.assertEqual(h.cmd(b"AUTH PLAIN " + plain(b"alice", b"guess-%d" % n)),
                             b"-ERR [AUTH] Invalid user name or password\r\n")
        throttled = b"-ERR [SYS/TEMP] Too many failed logins, try again later\r\n"
        self.assertEqual(h.cmd(b"AUTH PLAIN " + plain(USER.encode(), PASSWORD)), throttled)
        h.cmd(b"USER " + USER.encode())
        self.assertEqual(h.cmd(b"PASS " + PASSWORD), throttled)
        self.assertIsNone(self.successResultOf(h.sessions.window_user("127.0.0.1")))
        h.connect(peer="127.0.0.2")
        self.assertEqual(h.cmd(b"AUTH PLAIN " + plain(USER.encode(), PASSWORD)),
                         b"+OK Logged in\r\n")
        h.clock.advance(900)
        h.drop()
        h.connect()
        h.login()
        lines = [formatEvent(e) for e in logs if "refused" in e.get("log_format", "")]
        self.assertEqual(lines, 2 * [
            f"login refused (throttled): key=127.0.0.1/{USER} protocol=pop3"])
        self.assertFalse([e for e in logs if b"guess-" in repr(e).encode()
                          or PASSWORD.decode() in repr(e)])


class MaildropLockTests(unittest.TestCase):
    """
    Issue 13, finding 5: whatever fails once the maildrop lock is taken,
    the lock is released, so the next login is not refused [IN-USE].
    """

    def setUp(self):
        fresh_error_log(self)

    def second_login_works(self, h):
        h.connect()
        h.login()

    def test_pop3_lock_released_after_error(self):
        """Opening the mailbox fails (its Maildir cannot be made: disk full)."""
        h = Harness(self, deliver_now=False)
        disk = FullDisk(self)
        disk.fill()
        h.cmd(b"USER " + USER.encode())
        self.assertEqual(h.cmd(b"PASS " + PASSWORD),
                         b"-ERR [SYS/TEMP] Login temporarily unavailable, try later\r\n")
        disk.free()
        self.second_login_works(h)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_lock_released_when_the_mailbox_view_fails(self):
        h = Harness(self)
        self.patch(realm_module, "FolderMailbox", lambda *a: 1 / 0)
        h.cmd(b"USER " + USER.encode())
        self.assertEqual(h.cmd(b"PASS " + PASSWORD),
                         b"-ERR [SYS/TEMP] Login temporarily unavailable, try later\r\n")
        self.patch(realm_module, "FolderMailbox", FolderMailbox)
        self.second_login_works(h)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_lock_released_when_the_client_vanishes_during_login(self):
        h = Harness(self)
        h.checker.pending = []
        h.send(b"USER " + USER.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
        h.drop()  # the peer closed: no loseConnection on our side
        h.checker.pending.pop()()
        h.checker.pending = None
        self.second_login_works(h)

    def test_lock_released_when_the_login_continuation_fails(self):
        h = Harness(self)
        answer = h.proto.successResponse
        self.patch(h.proto, "successResponse",
                   lambda message=b"": 1 / 0 if message == b"Logged in" else answer(message))
        h.cmd(b"USER " + USER.encode())
        h.cmd(b"PASS " + PASSWORD)
        h.drop()
        self.second_login_works(h)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_lock_released_after_quit_fails(self):
        h = Harness(self)
        h.login()
        h.cmd(b"DELE 1")
        self.patch(h.proto.mbox.folder, "delete", lambda *a, **kw: 1 / 0)
        self.assertEqual(h.cmd(b"QUIT"),
                         b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n")
        self.assertTrue(h.transport.disconnecting)
        h.drop()
        self.second_login_works(h)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
