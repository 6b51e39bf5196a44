"""
[antispam.dnsbl] received_headers: which IP of the Received headers is
looked up when a trusted host passes a message on.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv.netaddr import ListedClients
from mailsrv.policy.checks.received import ReceivedIPs, received_from
from mailsrv.policy.verdict import Verdict
from mailsrv.smtp.state import Session
from tests.helpers import result

HEADER = (
    b"Received: from gw.example.test (gw.example.test [10.0.0.2])\r\n"
    b"\tby backup.example.test (Postfix) with ESMTP id 1;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Received: from sender.test ([203.0.113.9] helo=sender.test)\r\n"
    b"\tby gw.example.test with esmtp (Exim 4.96); Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Received: from forged ([198.51.100.1]) by sender.test; Mon, 1 Jan 2024\r\n"
    b"Subject: hello\r\n\r\n"
)



class ReceivedFromTests(unittest.TestCase):
    def test_table(self):
        for value, ip in [
            (b"from a.test (a.test [192.0.2.1]) by b.test", "192.0.2.1"),  # Postfix
            (b"from a.test ([192.0.2.1] helo=a) by b.test", "192.0.2.1"),  # Exim
            (b"from a.test ([IPv6:2001:db8::1])\r\n\tby b.test (mailsrv)", "2001:db8::1"),
            (b"from a.test ([IPv6:::ffff:192.0.2.1]) by b", "192.0.2.1"),
            (b"from a.test ([not-an-ip] [192.0.2.5]) by b", "192.0.2.5"),
            (b"from a.test by b.test ([192.0.2.1])", None),  # an address after "by"
            (b"by b.test with local; date", None),
            (b"from a.test (a.test) by b.test", None),
        ]:
            self.assertEqual(received_from(b"Received: " + value + b"\r\n\r\n"), [ip], value)

    def test_top_down(self):
        self.assertEqual(received_from(HEADER), ["10.0.0.2", "203.0.113.9", "198.51.100.1"])
        self.assertEqual(received_from(b"Subject: none\r\n\r\n"), [])


class WalkTests(unittest.TestCase):
    """The client and 10.0.0.0/8 are our trusted hosts."""

    def check(self, header=HEADER, ip="10.0.0.1", user=None, trusted=("10.0.0.0/8",)):
        checked = []

        def check_ip(address):
            checked.append(address)
            return defer.succeed(Verdict.found(True, reasons=(f"dnsbl x {address}",)))

        stage = ReceivedIPs(ListedClients(trusted, None, None, task.Clock()), check_ip)
        found = result(stage.check(Session(ip=ip, user=user), None, header)).finding
        return checked, found

    def test_first_untrusted_hop_is_checked(self):
        checked, found = self.check()
        self.assertEqual(checked, ["203.0.113.9"])
        self.assertEqual(found.reasons, ("dnsbl x 203.0.113.9",))

    def test_untrusted_client_is_left_to_the_client_check(self):
        self.assertEqual(self.check(ip="192.0.2.1"), ([], None))

    def test_authenticated_client(self):
        self.assertEqual(self.check(user="alice@example.test"), ([], None))

    def test_no_trusted_list(self):
        self.assertEqual(self.check(trusted=()), ([], None))

    def test_trusted_all_the_way(self):
        header = b"Received: from a ([10.9.9.9]) by gw\r\n\r\nbody"
        self.assertEqual(self.check(header), ([], None))

    def test_a_hop_without_an_address_stops_the_walk(self):
        header = b"Received: from a (a) by gw\r\nReceived: from b ([203.0.113.9]) by a\r\n\r\n"
        self.assertEqual(self.check(header), ([], None))
