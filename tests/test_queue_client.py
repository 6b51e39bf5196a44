"""
The outbound SMTP client and its connection pool (mailsrv/queue/client.py),
driven with StringTransport and a task.Clock: what goes on the wire, and
what each recipient's result is.
"""

import base64
import io

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv.config import OutboundTLS
from mailsrv.queue.client import ConnectionPool, Hop, HostFailure, SMTPConnection

MESSAGE = b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"


class TLSStringTransport(StringTransport):
    """StringTransport that records STARTTLS instead of doing it."""

    tls_options = None

    def startTLS(self, options):
        self.tls_options = options


class Session:
    """A connection on a string transport, with the server's side scripted."""

    def __init__(self, testcase, clock=None):
        self.clock = clock or task.Clock()
        self.connection = SMTPConnection(timeout=60)
        self.connection.callLater = self.clock.callLater
        self.transport = TLSStringTransport()
        self.connection.makeConnection(self.transport)
        testcase.addCleanup(self.connection.setTimeout, None)

    def reply(self, *lines):
        self.connection.dataReceived(b"".join(line.encode() + b"\r\n" for line in lines))

    def sent(self):
        """The lines written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data.decode().split("\r\n")[:-1]

    def ready(self, *extensions):
        """As after the greeting and EHLO: the host's extensions."""
        self.reply("220 hi")
        self.connection.extensions = {e: "" for e in extensions}


class TransactionTests(unittest.TestCase):
    def transaction(self, session, recipients=("a@r.test", "b@r.test"), size=None):
        return session.connection.transaction(
            "s@example.test", list(recipients), io.BytesIO(MESSAGE),
            len(MESSAGE) if size is None else size,
        )

    def test_pipelined_transaction(self):
        session = Session(self)
        session.ready("PIPELINING", "SIZE")
        d = self.transaction(session)
        self.assertEqual(session.sent(), [
            f"MAIL FROM:<s@example.test> SIZE={len(MESSAGE)}",
            "RCPT TO:<a@r.test>", "RCPT TO:<b@r.test>", "DATA",
        ])
        session.reply("250 2.1.0 ok", "550 5.1.1 no such user", "250 2.1.5 ok",
                      "354 go ahead")
        self.assertEqual(session.sent(), ["Subject: hi", "", "..dot", "body", "."])
        self.assertNoResult(d)
        session.reply("250 2.0.0 queued as X")
        replies = self.successResultOf(d)
        self.assertEqual([(r.code, r.text) for r in replies], [
            (550, "5.1.1 no such user"), (250, "2.0.0 queued as X"),
        ])

    def test_one_command_at_a_time_without_pipelining(self):
        session = Session(self)
        session.ready()
        d = self.transaction(session, ["a@r.test"])
        self.assertEqual(session.sent(), ["MAIL FROM:<s@example.test>"])
        session.reply("250 ok")
        self.assertEqual(session.sent(), ["RCPT TO:<a@r.test>"])
        session.reply("250 ok")
        self.assertEqual(session.sent(), ["DATA"])
        session.reply("354 go")
        session.sent()
        session.reply("250 done")
        self.assertEqual([r.code for r in self.successResultOf(d)], [250])

    def test_no_data_when_every_recipient_is_refused(self):
        session = Session(self)
        session.ready()
        d = self.transaction(session, ["a@r.test"])
        session.reply("250 ok")
        session.sent()
        session.reply("450 4.2.0 mailbox busy")
        self.assertEqual(session.sent(), [])
        self.assertEqual([r.code for r in self.successResultOf(d)], [450])

    def test_refused_sender_applies_to_everyone_and_next_message_resets(self):
        session = Session(self)
        session.ready("PIPELINING")
        d = self.transaction(session)
        session.sent()
        session.reply("553 5.7.1 sender refused", "503 5.5.1 no MAIL",
                      "503 5.5.1 no MAIL", "503 5.5.1 no valid recipients")
        self.assertEqual([r.code for r in self.successResultOf(d)], [553, 553])
        self.transaction(session, ["a@r.test"])
        self.assertEqual(session.sent()[:2], ["RSET", "MAIL FROM:<s@example.test>"])

    def test_pipelined_354_without_recipients_sends_only_the_dot(self):
        session = Session(self)
        session.ready("PIPELINING")
        d = self.transaction(session, ["a@r.test"])
        session.sent()
        session.reply("250 ok", "550 no", "354 go")  # a host that says 354 anyway
        self.assertEqual(session.sent(), ["."])
        session.reply("554 no valid recipients")
        self.assertEqual([r.code for r in self.successResultOf(d)], [550])

    def test_size_over_the_hosts_limit_is_refused_before_sending(self):
        session = Session(self)
        session.ready("SIZE")
        session.connection.extensions["SIZE"] = "1000"
        d = self.transaction(session, size=5000)
        self.assertEqual(session.sent(), [])
        replies = self.successResultOf(d)
        self.assertEqual([r.code for r in replies], [552, 552])
        self.assertIn("5.3.4", replies[0].text)

    def test_multiline_reply_and_timeout(self):
        session = Session(self)
        session.ready()
        d = self.transaction(session, ["a@r.test"])
        session.reply("250-first line", "250 second line")
        session.sent()
        session.clock.advance(61)
        self.assertTrue(session.transport.disconnecting)
        session.connection.connectionLost(Failure(ConnectionError("aborted")))
        failure = self.failureResultOf(d, HostFailure)
        self.assertIn("no reply in 60 s", failure.value.text)

    def test_dropped_connection_fails_every_waiting_reply(self):
        session = Session(self)
        session.ready("PIPELINING")
        d = self.transaction(session)
        session.connection.connectionLost(Failure(ConnectionError("reset")))
        self.failureResultOf(d, HostFailure)
        self.assertEqual(self.successResultOf(session.connection.closed), None)

    def test_garbage_reply_aborts(self):
        session = Session(self)
        session.ready()
        d = self.transaction(session, ["a@r.test"])
        session.reply("HTTP/1.1 400 Bad Request")
        session.connection.connectionLost(Failure(ConnectionError("aborted")))
        self.assertIn("unreadable reply", self.failureResultOf(d).value.text)


class OpenTests(unittest.TestCase):
    def open(self, session, outbound=OutboundTLS(), plaintext=False):
        hop = Hop("192.0.2.1", 25, "mx.r.test", outbound, plaintext)
        return session.connection.open("mail.example.test", hop, "tls-options")

    def test_greeting_ehlo_starttls_ehlo(self):
        session = Session(self)
        d = self.open(session)
        session.reply("220 mx.r.test ESMTP")
        self.assertEqual(session.sent(), ["EHLO mail.example.test"])
        session.reply("250-mx.r.test", "250-PIPELINING", "250 STARTTLS")
        self.assertEqual(session.sent(), ["STARTTLS"])
        session.reply("220 go ahead")
        self.assertEqual(session.transport.tls_options, "tls-options")
        self.assertEqual(session.sent(), ["EHLO mail.example.test"])
        session.reply("250-mx.r.test", "250 SIZE 1000")
        self.assertIs(self.successResultOf(d), session.connection)
        self.assertTrue(session.connection.tls)
        self.assertEqual(session.connection.extensions, {"SIZE": "1000"})

    def test_refused_greeting(self):
        session = Session(self)
        d = self.open(session)
        session.reply("554 5.7.1 go away")
        failure = self.failureResultOf(d, HostFailure)
        self.assertEqual(failure.value.code, 554)
        self.assertIn("QUIT", session.sent())

    def test_helo_when_ehlo_is_refused(self):
        session = Session(self)
        d = self.open(session)
        session.reply("220 old host")
        session.sent()
        session.reply("502 5.5.1 what")
        self.assertEqual(session.sent(), ["HELO mail.example.test"])
        session.reply("250 hello")
        self.successResultOf(d)
        self.assertEqual(session.connection.extensions, {})
        self.assertFalse(session.connection.tls)

    def test_required_tls_not_offered(self):
        session = Session(self)
        d = self.open(session, OutboundTLS("required"))
        session.reply("220 hi")
        session.reply("250 hello")
        failure = self.failureResultOf(d, HostFailure)
        self.assertIn("no STARTTLS offered", failure.value.text)
        self.assertFalse(failure.value.tls_failed)

    def test_plaintext_hop_skips_starttls(self):
        session = Session(self)
        d = self.open(session, plaintext=True)
        session.reply("220 hi")
        session.reply("250-hello", "250 STARTTLS")
        self.successResultOf(d)
        self.assertEqual(session.sent(), ["EHLO mail.example.test"])

    def test_handshake_failure_is_marked_for_a_plaintext_retry(self):
        session = Session(self)
        d = self.open(session)
        session.reply("220 hi", "250-hello", "250 STARTTLS", "220 go")
        session.connection.connectionLost(Failure(ConnectionError("SSL routines")))
        failure = self.failureResultOf(d, HostFailure)
        self.assertTrue(failure.value.tls_failed)
        self.assertIn("TLS handshake failed", failure.value.text)

    def authenticate(self, mechanisms):
        session = Session(self)
        d = self.open(session, OutboundTLS("required", None, "relay-user", "s3cret"))
        session.reply("220 hi", "250-hello", "250 STARTTLS", "220 go")
        session.sent()
        session.reply("250-hello", f"250 AUTH {mechanisms}")
        return session, d

    def test_auth_plain(self):
        session, d = self.authenticate("LOGIN PLAIN")
        [line] = session.sent()
        self.assertEqual(line, "AUTH PLAIN " + base64.b64encode(
            b"\0relay-user\0s3cret").decode())
        session.reply("235 2.7.0 ok")
        self.successResultOf(d)

    def test_auth_login(self):
        session, d = self.authenticate("LOGIN")
        self.assertEqual(session.sent(), ["AUTH LOGIN"])
        session.reply("334 VXNlcm5hbWU6")
        self.assertEqual(session.sent(), [base64.b64encode(b"relay-user").decode()])
        session.reply("334 UGFzc3dvcmQ6")
        self.assertEqual(session.sent(), [base64.b64encode(b"s3cret").decode()])
        session.reply("235 ok")
        self.successResultOf(d)

    def test_auth_refused(self):
        session, d = self.authenticate("PLAIN")
        session.reply("535 5.7.8 bad credentials")
        failure = self.failureResultOf(d, HostFailure)
        self.assertEqual(failure.value.code, 535)
        self.assertIn("authentication as relay-user failed", failure.value.text)
        self.assertNotIn("s3cret", failure.value.text)

    def test_no_usable_mechanism(self):
        session, d = self.authenticate("CRAM-MD5")
        self.assertIn("no AUTH mechanism", self.failureResultOf(d, HostFailure).value.text)


class FakeConnection:
    def __init__(self, name):
        self.name = name
        self.connected = True
        self.transactions = 0
        self.released_from_pool = False
        self.closed = defer.Deferred()

    def quit(self):
        if self.connected:
            self.connected = False
            self.closed.callback(None)


class PoolTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.opened = []
        self.pool = ConnectionPool(self.open, self.clock, max_total=3,
                                   max_per_destination=2, idle_timeout=2.0, max_reuse=3)

    def open(self, hop):
        connection = FakeConnection(f"{hop.host}#{len(self.opened)}")
        self.opened.append(connection)
        return defer.succeed(connection)

    def test_reuse_within_the_idle_time_then_close(self):
        a = Hop("a", 25)
        first = self.successResultOf(self.pool.acquire(a))
        self.pool.release(a, first, reusable=True)
        self.assertIs(self.successResultOf(self.pool.acquire(a)), first)
        self.pool.release(a, first, reusable=True)
        self.clock.advance(2.1)
        self.assertFalse(first.connected)
        self.assertEqual(self.pool.total, 0)
        self.assertIsNot(self.successResultOf(self.pool.acquire(a)), first)

    def test_fresh_skips_idle_sessions_and_is_counted(self):
        a = Hop("a", 25)
        stale = self.successResultOf(self.pool.acquire(a))
        self.pool.release(a, stale, reusable=True)
        fresh = self.successResultOf(self.pool.acquire(a, fresh=True))
        self.assertIsNot(fresh, stale)
        self.assertEqual(self.pool.total, 2)
        self.pool.release(a, fresh, reusable=False)
        self.clock.advance(2.1)  # the idle one expires
        self.assertEqual(self.pool.total, 0)

    def test_not_reused_after_a_failure_or_max_reuse(self):
        a = Hop("a", 25)
        first = self.successResultOf(self.pool.acquire(a))
        self.pool.release(a, first, reusable=False)
        self.assertFalse(first.connected)
        second = self.successResultOf(self.pool.acquire(a))
        for _ in range(3):
            self.pool.release(a, second, reusable=True)
            self.pool.acquire(a)
        self.assertFalse(second.connected)
        self.assertEqual(len(self.opened), 3)

    def test_per_destination_limit_waits_for_a_release(self):
        a = Hop("a", 25)
        one = self.successResultOf(self.pool.acquire(a))
        self.successResultOf(self.pool.acquire(a))
        third = self.pool.acquire(a)
        self.assertNoResult(third)
        self.pool.release(a, one, reusable=True)
        self.assertIs(self.successResultOf(third), one)

    def test_waiting_request_gets_a_new_session_when_one_closes(self):
        a = Hop("a", 25)
        one = self.successResultOf(self.pool.acquire(a))
        self.successResultOf(self.pool.acquire(a))
        third = self.pool.acquire(a)
        self.pool.release(a, one, reusable=False)
        self.assertNotIn(self.successResultOf(third), (one,))
        self.assertEqual(self.pool.total, 2)

    def test_total_limit_closes_an_idle_session_of_another_hop(self):
        a, b, c = Hop("a", 25), Hop("b", 25), Hop("c", 25)
        sessions = [self.successResultOf(self.pool.acquire(h)) for h in (a, b)]
        busy_c = self.successResultOf(self.pool.acquire(c))
        self.pool.release(a, sessions[0], reusable=True)
        self.successResultOf(self.pool.acquire(b))  # total 3: a's idle one closes
        self.assertFalse(sessions[0].connected)
        self.assertEqual(self.pool.total, 3)
        waiting = self.pool.acquire(a)
        self.assertNoResult(waiting)
        self.pool.release(c, busy_c, reusable=False)
        self.assertEqual(self.successResultOf(waiting).name, "a#4")

    def test_failed_open_frees_its_place(self):
        def refuse(hop):
            return defer.fail(HostFailure("cannot connect: refused"))

        self.pool.open_session = refuse
        for _ in range(5):
            self.failureResultOf(self.pool.acquire(Hop("a", 25)), HostFailure)
        self.assertEqual(self.pool.total, 0)

    def test_close_idle(self):
        a = Hop("a", 25)
        first = self.successResultOf(self.pool.acquire(a))
        self.pool.release(a, first, reusable=True)
        self.pool.close_idle()
        self.assertFalse(first.connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
