"""
The connection stage of a listener, and how the service holds a connection
until it has decided.
"""

import ipaddress
from collections import Counter
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial import unittest

from mailsrv import netaddr
from mailsrv.config import ListenerAccessSettings
from mailsrv.dns import TemporaryDNSError
from mailsrv.policy.checks.connect import SAFE, ListenerAccess
from mailsrv.policy.checks.sender import AuthRequired
from mailsrv.policy.hooks import Peer
from mailsrv.policy.verdict import Verdict
from mailsrv.service import BUSY_REPLIES, DENIED_REPLIES, LATER_REPLIES, ConnectionLimits
from mailsrv.smtp.state import Session


def decided(d):
    results = []
    d.addBoth(results.append)
    return results[0]


class FailingResolver:
    def confirmed_names(self, ip):
        return defer.fail(TemporaryDNSError(f"PTR {ip}: timed out"))


class ListenerAccessTests(unittest.TestCase):
    def access(self, clock=None, **settings):
        return ListenerAccess(ListenerAccessSettings(**settings), None, clock or task.Clock())

    def test_table(self):
        access = self.access(allow=["10.0.0.0/8"], deny=["10.0.0.9"], safe=["10.0.0.9",
                             "192.0.2.1"], block_own_ips=True)
        # peer, local address, allowed, safe
        for peer, local, allowed, safe in [
            ("10.1.2.3", "10.0.0.1", True, False),
            ("192.0.2.2", "10.0.0.1", False, False),     # not on the allow list
            ("10.0.0.9", "10.0.0.1", True, True),        # safe beats deny
            ("192.0.2.1", "10.0.0.1", True, True),       # safe beats allow
            ("10.0.0.1", "10.0.0.1", False, False),      # our own address
            ("::ffff:10.0.0.1", "10.0.0.1", False, False),
        ]:
            verdict = decided(access.check(Peer(peer, local), None, None))
            self.assertEqual((verdict.accepted, verdict.reason == SAFE), (allowed, safe), peer)

    def test_block_own_ips_covers_every_address_of_this_machine(self):
        """Not only the address the client reached: any of this machine's (issue 18)."""
        self.patch(netaddr, "_own", (float("inf"), frozenset(
            {ipaddress.ip_address("192.0.2.50"), ipaddress.ip_address("2001:db8::5")})))
        access = self.access(block_own_ips=True)
        for peer, allowed in [("192.0.2.50", False), ("2001:db8::5", False),
                              ("::ffff:192.0.2.50", False), ("192.0.2.51", True)]:
            verdict = decided(access.check(Peer(peer, "10.0.0.1"), None, None))
            self.assertEqual(verdict.accepted, allowed, peer)

    def test_this_machine_on_the_safe_list_by_one_word(self):
        self.patch(netaddr, "_own", (float("inf"), frozenset({ipaddress.ip_address("192.0.2.50")})))
        access = self.access(safe=["self"], deny=["0.0.0.0/0"])
        self.assertEqual(decided(access.check(Peer("192.0.2.50", "10.0.0.1"), None, None)).reason,
                         SAFE)
        self.assertFalse(decided(access.check(Peer("192.0.2.51", "10.0.0.1"), None, None)).accepted)

    def test_deny(self):
        access = self.access(deny=["192.0.2.0/24"])
        verdict = decided(access.check(Peer("192.0.2.7", "10.0.0.1"), None, None))
        self.assertEqual((verdict.accepted, verdict.reason), (False, "deny list"))
        self.assertTrue(decided(access.check(Peer("198.51.100.1", "10.0.0.1"), None, None)).accepted)

    def test_a_list_file_edit_holds_for_the_next_connection(self):
        path = Path(self.mktemp())
        path.write_text("# nobody yet\n")
        clock = task.Clock()
        access = self.access(clock, deny_file=path)
        self.assertTrue(decided(access.check(Peer("192.0.2.7", "10.0.0.1"), None, None)).accepted)
        path.write_text("192.0.2.7, 192.0.2.8; 203.0.113.0/24\n")
        clock.advance(2)
        self.assertFalse(decided(access.check(Peer("192.0.2.7", "10.0.0.1"), None, None)).accepted)
        self.assertFalse(decided(access.check(Peer("203.0.113.9", "10.0.0.1"), None, None)).accepted)

    def test_failed_lookup_is_a_temporary_refusal(self):
        access = ListenerAccess(ListenerAccessSettings(allow=[".example.test"]),
                                FailingResolver(), task.Clock())
        verdict = decided(access.check(Peer("192.0.2.7", "10.0.0.1"), None, None))
        self.assertEqual((verdict.accepted, verdict.temporary), (False, True))


class Greeter(Protocol):
    def connectionMade(self):
        self.received = b""
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data):
        self.received += data


class Pending:
    """A connect check whose verdict the test makes."""

    settings = ListenerAccessSettings(deny=["192.0.2.0/24"])

    def __init__(self):
        self.decision = defer.Deferred()

    def check(self, peer, transaction, subject):
        return self.decision


class HeldConnectionTests(unittest.TestCase):
    def connect(self, access):
        limits = ConnectionLimits(
            Factory.forProtocol(Greeter), BUSY_REPLIES["smtp"], max_connections=5,
            max_per_ip=5, per_ip=Counter(), access=access,
            denied_reply=DENIED_REPLIES["smtp"], later_reply=LATER_REPLIES["smtp"])
        address = IPv4Address("TCP", "192.0.2.7", 40000)
        protocol = limits.buildProtocol(address)
        transport = StringTransportWithDisconnection(
            peerAddress=address, hostAddress=IPv4Address("TCP", "10.0.0.1", 25))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return limits, protocol, transport

    def test_input_waits_for_the_decision(self):
        access = Pending()
        limits, protocol, transport = self.connect(access)
        protocol.dataReceived(b"EHLO early\r\n")
        self.assertEqual(transport.value(), b"")  # no greeting before the decision
        access.decision.callback(Verdict.accept())
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertEqual(protocol.wrappedProtocol.received, b"EHLO early\r\n")

    def test_refused(self):
        access = Pending()
        limits, protocol, transport = self.connect(access)
        access.decision.callback(Verdict.refuse(554, "5.7.1", "Access denied", "deny list"))
        self.assertEqual(transport.value(), b"554 5.7.1 Access denied for 192.0.2.7\r\n")
        self.assertFalse(transport.connected)
        self.assertEqual((limits.active, dict(limits.per_ip)), (0, {}))

    def test_temporary(self):
        access = Pending()
        _, protocol, transport = self.connect(access)
        access.decision.callback(Verdict.refuse(421, "4.7.0", "Try again later", "lookup failed"))
        self.assertEqual(transport.value(), LATER_REPLIES["smtp"])

    def test_client_gone_before_the_decision(self):
        access = Pending()
        limits, protocol, transport = self.connect(access)
        transport.loseConnection()
        access.decision.callback(Verdict.accept())
        self.assertEqual(transport.value(), b"")
        self.assertEqual(limits.active, 0)


class RequireAuthTests(unittest.TestCase):
    def test_named_account_and_safe_list(self):
        access = ListenerAccess(ListenerAccessSettings(safe=["192.0.2.1"]), None, task.Clock())
        stage = AuthRequired("bob@example.test", access)
        for ip, user, accepted in [
            ("192.0.2.9", None, False),
            ("192.0.2.9", "alice@example.test", False),
            ("192.0.2.9", "bob@example.test", True),
            ("192.0.2.1", None, True),   # a script on the safe list
        ]:
            verdict = decided(stage.check(Session(ip, user=user), None, "x@example.test"))
            self.assertEqual(verdict.accepted, accepted, (ip, user))
        verdict = decided(stage.check(Session("192.0.2.9", user="alice@example.test"),
                                      None, "x@example.test"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (530, "5.7.0", "This port takes mail only from bob@example.test"))
