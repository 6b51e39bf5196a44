"""
Issue 13, finding 1, against the real server: a crowd of clients that
trickle one byte a second from several loopback addresses neither locks a
fresh client out nor keeps its connections. (The full-size check, 300
tricklers from 15 addresses with the default timeouts, is bench/slow_clients.py.)
"""

import select
import socket
import time

from twisted.trial import unittest

from tests.integration.harness import MailServerProcess

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 7)]  # 5 addresses
PER_ADDRESS = 10  # [access] max_connections_per_ip
MAX_CONNECTIONS = 40  # the SMTP listener's: 50 tricklers overfill it
COMMAND_TIMEOUT = 8
STRESS_TIMEOUT = 5


class Trickler:
    """One connection that sends a command line one byte a second, never its end."""

    def __init__(self, address, source):
        self.socket = socket.create_connection(address, 10, source_address=(source, 0))
        self.socket.setblocking(False)
        self.received = b""
        self.closed_at = None

    def poke(self):
        if self.closed_at is None:
            try:
                self.socket.send(b"X")
            except OSError:
                self.closed_at = time.monotonic()

    def read(self):
        try:
            data = self.socket.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.received += data
        elif self.closed_at is None:
            self.closed_at = time.monotonic()


class SlowClientTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(
            extra={"access": {"max_connections_per_ip": PER_ADDRESS}},
            listeners={"smtp": {"max_connections": MAX_CONNECTIONS,
                                "command_timeout": COMMAND_TIMEOUT,
                                "stress_timeout": STRESS_TIMEOUT}})
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def test_slow_clients_trickling_bytes_are_cut_and_a_fresh_client_is_greeted(self):
        address = self.server.address("smtp")
        started = time.monotonic()
        tricklers = [Trickler(address, source) for source in ADDRESSES
                     for _ in range(PER_ADDRESS)]
        self.addCleanup(lambda: [t.socket.close() for t in tricklers])
        for t in tricklers:
            t.poke()
        # the listener is full of tricklers: a new address still gets in
        with socket.create_connection(address, 10, source_address=("127.0.0.9", 0)) as fresh:
            fresh.settimeout(10)
            self.assertEqual(fresh.makefile("rb").readline()[:4], b"220 ")
        deadline = started + 45
        while time.monotonic() < deadline and any(t.closed_at is None for t in tricklers):
            open_sockets = [t.socket for t in tricklers if t.closed_at is None]
            select.select(open_sockets, [], [], 1.0)
            for t in tricklers:
                t.read()
                t.poke()
        lingering = [t for t in tricklers if t.closed_at is None]
        self.assertEqual(lingering, [], f"{len(lingering)} tricklers still open")
        # each was told why: a timeout, or that it made room for another
        for t in tricklers:
            last = t.received.splitlines()[-1]
            self.assertIn(last[:10], (b"421 4.4.2 ", b"421 4.7.0 "), t.received)
        # not one was kept longer than its deadline allows, with a wide margin
        # for a loaded machine: 8 s a command, 5 s under stress
        self.assertLess(max(t.closed_at for t in tricklers) - started, 30)
        log = self.server.log_text()
        self.assertGreaterEqual(log.count("evicted to make room for a new connection"),
                                len(tricklers) - MAX_CONNECTIONS)
        self.assertIn(": command not complete in time; closing", log)
