"""
Issue 13, finding 1: slow clients hold connections forever. Each protocol
over a StringTransport and a task.Clock: bytes that trickle in do not extend
a deadline, complete commands do, stress shrinks every limit, and a full
listener evicts a slow client to greet a new one.
"""

from collections import Counter
from pathlib import Path

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailsrv.config import Timeouts
from mailsrv.deadline import Deadline
from mailsrv.service import BUSY_REPLIES, ConnectionLimits
from mailsrv.smtp.server import build_factory as smtp_factory
from tests.test_imap import Client as IMAPClient
from tests.test_imap import make_mail_server as make_imap_server
from tests.test_pop3 import Harness as POP3Harness
from tests.test_service import connect_through
from tests.test_smtp.support import (
    Connection,
    files_on_disk,
    make_mail_server,
    run_threads_inline,
)

SMTP_TIMEOUT = b"421 4.4.2 mail.example.test Error: timeout exceeded\r\n"


class Stressed:
    """A listener load that is always under stress."""

    stressed = True


def trickle(clock, protocol, data, every):
    """
    Send C{data} one byte at a time, C{every} seconds apart, until the
    server closes the connection; return when it did.
    """
    for byte in data:
        clock.advance(every)
        if protocol.transport.disconnecting or not protocol.transport.connected:
            return clock.seconds()
        protocol.dataReceived(bytes([byte]))
    clock.advance(every)
    return clock.seconds()


class LogLines:
    def __init__(self, test):
        self.lines = []
        observer = lambda event: self.lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)


class SMTPSlowClientTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.clock = task.Clock()
        self.server = make_mail_server(self, self.clock)
        self.factory = smtp_factory(self.server, self.server.settings.listeners[0])

    def connect(self):
        return Connection(self.factory)

    def test_slow_client_trickling_bytes_is_cut(self):
        log = LogLines(self)
        conn = self.connect()
        # the first byte at 10 s: the whole line was due at 70 s
        self.assertEqual(trickle(self.clock, conn.protocol, b"EHLO slow.example", every=10), 70)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.take(), SMTP_TIMEOUT)
        self.assertIn("smtp 192.0.2.10: command not complete in time; closing",
                      log.lines)

    def test_slow_client_complete_lines_keep_it_alive(self):
        conn = self.connect()
        for _ in range(10):
            self.clock.advance(290)
            self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
        self.clock.advance(299)
        self.assertFalse(conn.closed)
        self.clock.advance(1)
        self.assertEqual(conn.take(), SMTP_TIMEOUT)

    def test_slow_client_line_split_in_two_packets_is_fine(self):
        conn = self.connect()
        self.clock.advance(250)
        conn.send(b"NO")
        self.clock.advance(50)  # idle since the greeting: 300 s, but a command is coming
        self.assertEqual(conn.send(b"OP\r\n"), b"250 2.0.0 Ok\r\n")

    def start_data(self, conn):
        conn.send(b"EHLO client.example\r\nMAIL FROM:<s@remote.test>\r\n"
                  b"RCPT TO:<alice@example.test>\r\nDATA\r\n")

    def test_slow_client_trickling_data_is_cut(self):
        conn = self.connect()
        self.start_data(conn)
        cut = trickle(self.clock, conn.protocol, b"Subject: x\r\n\r\n" * 10, every=5)
        self.assertEqual(cut, 65)  # 60 s, plus 0.002 s for each byte
        self.assertTrue(conn.closed)
        self.assertTrue(conn.take().endswith(SMTP_TIMEOUT))
        self.assertEqual(files_on_disk(self.server), [])

    def test_slow_client_data_at_a_fair_rate_is_not_cut(self):
        conn = self.connect()
        self.start_data(conn)
        for _ in range(600):  # 10 minutes at 1000 bytes/s
            self.clock.advance(1)
            conn.send(b"x" * 998 + b"\r\n")
        self.assertEqual(conn.send(b".\r\n")[:24], b"250 2.0.0 Ok: queued as ")

    def test_slow_client_stress_shrinks_the_deadline(self):
        self.factory.load = Stressed()
        conn = self.connect()
        self.clock.advance(9)
        self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
        self.clock.advance(10)
        self.assertTrue(conn.closed)
        self.assertEqual(conn.take(), SMTP_TIMEOUT)


class POP3SlowClientTests(unittest.TestCase):
    def test_slow_client_trickling_bytes_is_cut(self):
        h = POP3Harness(self)
        h.login()
        self.assertEqual(trickle(h.clock, h.proto, b"NOOP NOOP NOOP", every=10), 70)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.read(), b"-ERR Disconnected: command not complete in time\r\n")

    def test_slow_client_must_log_in_in_time(self):
        h = POP3Harness(self)
        for _ in range(5):
            h.clock.advance(11)
            self.assertTrue(h.cmd(b"CAPA").startswith(b"+OK"))
        h.clock.advance(5)
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual(h.read(), b"-ERR Disconnected: no login in time\r\n")

    def test_slow_client_logged_in_has_the_idle_timeout(self):
        h = POP3Harness(self)
        h.clock.advance(50)
        h.login()
        h.clock.advance(599)
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(1)
        self.assertEqual(h.read(), b"-ERR Disconnected: idle too long\r\n")

    def test_slow_client_stress_shrinks_the_deadline(self):
        h = POP3Harness(self)
        h.login()
        h.proto.deadline.load = Stressed()
        h.proto.deadline.refresh()
        h.clock.advance(10)
        self.assertTrue(h.transport.disconnecting)


class IMAPSlowClientTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        run_threads_inline(self)  # SELECT's listing of the folder
        root = Path(self.mktemp())
        root.mkdir()
        self.server = make_imap_server(root, self.clock)

    def client(self):
        c = IMAPClient(self.server)
        self.addCleanup(c.proto.connectionLost, None)
        return c

    def test_slow_client_must_log_in_in_time(self):
        c = self.client()
        for _ in range(5):
            self.clock.advance(11)
            self.assertIn(b"a OK", c.send(b"a NOOP\r\n"))
        self.clock.advance(5)
        self.assertEqual(c.read(), b"* BYE Autologout; no login in time\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_slow_client_trickling_a_literal_is_cut(self):
        c = self.client()
        c.send(b"L LOGIN alice@example.test secret\r\n")
        self.assertTrue(c.send(b"A APPEND INBOX {10000}\r\n").startswith(b"+ "))
        self.assertEqual(trickle(self.clock, c.proto, b"x" * 20, every=5), 65)
        self.assertEqual(c.read(), b"* BYE Autologout; message data too slow\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_slow_client_idle_lasts_the_idle_timeout(self):
        c = self.client()
        c.send(b"L LOGIN alice@example.test secret\r\n")
        c.send(b"S SELECT INBOX\r\n")
        self.assertTrue(c.send(b"I IDLE\r\n").startswith(b"+ "))
        self.clock.advance(1799)
        self.assertFalse(c.transport.disconnecting)
        self.assertEqual(c.send(b"DONE\r\n"), b"I OK IDLE terminated\r\n")


TIMEOUTS = Timeouts(idle=300, command=60, min_data_rate=500, login=60,
                    stress_connections=3, stress=10)


class DeadlineTests(unittest.TestCase):
    """The shared object alone."""

    def setUp(self):
        self.clock = task.Clock()
        self.transport = StringTransport()
        self.expired = []

    def deadline(self, timeouts=TIMEOUTS):
        return Deadline(self.clock, timeouts, self, self.transport, "test", self.expired.append)

    stressed = False

    def test_held_is_not_timed(self):
        d = self.deadline()
        d.logged_in()
        d.hold()
        self.clock.advance(1000)
        self.assertEqual(self.expired, [])
        d.release()
        self.clock.advance(300)
        self.assertEqual(self.expired, ["idle"])

    def test_stress_applies_to_open_connections_on_refresh(self):
        d = self.deadline()
        d.logged_in()
        self.clock.advance(20)
        self.stressed = True
        d.refresh()
        self.clock.advance(0)
        self.assertEqual(self.expired, ["idle"])  # 20 s idle > 10 s under stress

    def test_a_stalled_reader_is_cut_even_while_held(self):
        d = self.deadline()
        d.logged_in()
        d.hold()  # a RETR or FETCH in progress
        d.output_stalled()
        self.clock.advance(59)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["write"])
        self.assertTrue(self.transport.disconnected)  # at once: it reads no last line

    def test_a_reader_that_catches_up_starts_afresh(self):
        d = self.deadline()
        d.logged_in()
        d.hold()
        for _ in range(5):
            d.output_stalled()
            self.clock.advance(50)
            d.output_flowing()
        self.assertEqual(self.expired, [])
        d.output_stalled()
        d.output_stalled()  # paused again before resuming: the stall began earlier
        self.clock.advance(60)
        self.assertEqual(self.expired, ["write"])

    def test_output_done_leaves_the_idle_timer(self):
        d = self.deadline()
        d.logged_in()
        d.output_stalled()
        d.output_flowing()
        self.clock.advance(299)
        self.assertEqual(self.expired, [])
        self.clock.advance(1)
        self.assertEqual(self.expired, ["idle"])

    def test_a_client_that_does_not_read_is_aborted(self):
        self.deadline()
        self.clock.advance(60)
        self.assertEqual(self.expired, ["login"])
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnected)


class EvictionTests(unittest.TestCase):
    """A full listener makes room for a new client (Dovecot: "Connection queue full")."""

    def setUp(self):
        run_threads_inline(self)
        self.clock = task.Clock()
        self.server = make_mail_server(self, self.clock)
        factory = smtp_factory(self.server, self.server.settings.listeners[0])
        self.per_ip = Counter()
        self.limits = ConnectionLimits(factory, BUSY_REPLIES["smtp"], max_connections=4,
                                       max_per_ip=3, per_ip=self.per_ip,
                                       stress_connections=3)

    def connect(self, ip):
        return connect_through(self.limits, ip)[1]

    def test_slow_client_evicted_for_a_fresh_address(self):
        log = LogLines(self)
        slow = [self.connect("203.0.113.1") for _ in range(3)]
        self.clock.advance(1)
        other = self.connect("203.0.113.2")
        fresh = self.connect("198.51.100.7")
        self.assertEqual(fresh.value(), b"220 mail.example.test ESMTP mailsrv\r\n")
        # the oldest connection of the address holding the most went
        self.assertEqual(slow[0].value().splitlines()[-1],
                         b"421 4.7.0 mail.example.test Too many connections; closing")
        self.assertFalse(slow[0].connected)
        self.assertTrue(all(t.connected for t in slow[1:] + [other]))
        self.assertEqual(self.limits.active, 4)
        self.assertEqual(self.per_ip["203.0.113.1"], 2)
        self.assertIn("smtp 203.0.113.1: evicted to make room for a new connection; closing",
                      log.lines)

    def test_slow_client_logged_in_clients_are_not_evicted(self):
        clients = [self.connect(f"203.0.113.{n}") for n in range(1, 5)]
        for t in clients:
            t.protocol.dataReceived(b"EHLO x\r\nMAIL FROM:<s@remote.test>\r\n")
        fresh = self.connect("198.51.100.7")
        self.assertEqual(fresh.value(), BUSY_REPLIES["smtp"])

    def test_slow_client_stress_begins_for_open_connections(self):
        first = self.connect("203.0.113.1")
        self.clock.advance(30)
        self.connect("203.0.113.2")
        self.assertTrue(first.connected)
        self.connect("203.0.113.3")  # 3 open: stress; the first has idled 30 s
        self.clock.advance(0)
        self.assertEqual(first.value().splitlines()[-1],
                         b"421 4.4.2 mail.example.test Error: timeout exceeded")
        self.assertFalse(first.connected)
