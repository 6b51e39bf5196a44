"""
Connection limits and what a refused client is told; what the service
sets for the whole process.
"""

import sys
from collections import Counter
from pathlib import Path

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial import unittest

from mailsrv import config, service
from mailsrv.netaddr import peer_ip
from mailsrv.service import BUSY_REPLIES, ConnectionLimits, ListenerService
from tests.helpers import make_settings


def connect_through(limits, ip):
    """A client from C{ip} connecting to the listener C{limits} wraps."""
    address = IPv4Address("TCP", ip, 40000)
    protocol = limits.buildProtocol(address)
    transport = StringTransportWithDisconnection(peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


class Greeter(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello\r\n")


class ConnectionLimitTests(unittest.TestCase):
    def setUp(self):
        self.per_ip = Counter()
        self.limits = ConnectionLimits(Factory.forProtocol(Greeter), BUSY_REPLIES["smtp"],
                                       max_connections=3, max_per_ip=2, per_ip=self.per_ip)

    def connect(self, ip):
        return connect_through(self.limits, ip)

    def test_per_ip_and_per_listener(self):
        _, first = self.connect("10.0.0.1")
        self.connect("10.0.0.1")
        _, third = self.connect("10.0.0.1")
        self.assertEqual(first.value(), b"hello\r\n")
        self.assertEqual(third.value(), b"421 4.7.0 Too many connections, try again later\r\n")
        self.assertFalse(third.connected)
        self.connect("10.0.0.2")
        _, fourth = self.connect("10.0.0.3")
        self.assertEqual(fourth.value(), BUSY_REPLIES["smtp"])

    def test_closing_frees_the_slot(self):
        protocol, transport = self.connect("10.0.0.1")
        self.connect("10.0.0.1")
        transport.loseConnection()
        self.assertEqual(self.per_ip["10.0.0.1"], 1)
        _, again = self.connect("10.0.0.1")
        self.assertEqual(again.value(), b"hello\r\n")

    def test_refused_connection_does_not_count(self):
        for _ in range(2):
            self.connect("10.0.0.1")
        _, refused = self.connect("10.0.0.1")
        self.assertEqual(self.limits.active, 2)
        self.assertEqual(self.per_ip["10.0.0.1"], 2)

    def test_ipv4_mapped_peers_count_as_ipv4(self):
        self.connect("10.0.0.1")
        address = IPv6Address("TCP", "::ffff:10.0.0.1", 40000)
        protocol = self.limits.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.assertEqual(self.per_ip, Counter({"10.0.0.1": 2}))


class PeerIPTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(peer_ip(IPv6Address("TCP", "::ffff:192.0.2.1", 1)), "192.0.2.1")
        self.assertEqual(peer_ip(IPv6Address("TCP", "::1", 1)), "::1")
        self.assertEqual(peer_ip(IPv4Address("TCP", "127.0.0.1", 1)), "127.0.0.1")
        self.assertEqual(peer_ip(UNIXAddress(b"/tmp/sock")), "")


class ListenBacklogTests(unittest.TestCase):
    def test_listener_listens_with_its_backlog(self):
        """[[listen]] backlog reaches listen(2) (Twisted's own default is 50)."""
        listener = config.parse(
            {"listen": [{"protocol": "smtp", "endpoint": "tcp:0:interface=127.0.0.1",
                         "backlog": 321}]}, Path("/x")).listeners[0]
        service = ListenerService(listener, None, Factory.forProtocol(Greeter))
        service.privilegedStartService()
        self.addCleanup(service.port.stopListening)
        self.assertEqual(service.port.backlog, 321)


class SwitchIntervalTests(unittest.TestCase):
    def test_the_reactor_thread_gets_the_interpreter_lock_back_soon(self):
        """A thread judging a big message holds the lock 0.5 ms, not CPython's 5 ms."""
        self.addCleanup(sys.setswitchinterval, sys.getswitchinterval())
        sys.setswitchinterval(0.005)
        service.make_service(make_settings(self.mktemp()))
        self.assertEqual(sys.getswitchinterval(), service.SWITCH_INTERVAL)
