import ipaddress

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv import netaddr
from mailsrv.directory.listfile import ListFileError
from mailsrv.dns import Answer, Resolver, TemporaryDNSError
from mailsrv.netaddr import (
    IPList, is_loopback, normalise_ip, parse_entry, read_entries, split_entries,
)
from tests.test_dns import FakeBackend

DNS = {
    ("gw.example.test", "A"): Answer(("192.0.2.1",), 300),
    ("9.2.0.192.in-addr.arpa", "PTR"): Answer(("host.office.test",), 300),
    ("host.office.test", "A"): Answer(("192.0.2.9",), 300),
    ("8.2.0.192.in-addr.arpa", "PTR"): Answer(("forged.office.test",), 300),
    ("forged.office.test", "A"): Answer(("198.51.100.1",), 300),
    ("7.2.0.192.in-addr.arpa", "PTR"): TemporaryDNSError("PTR: timeout"),
}


class OwnAddressesTests(unittest.TestCase):
    def test_this_machine(self):
        """Read from the interfaces (loopback's too), remembered, and one list entry: self."""
        self.patch(netaddr, "_own", (0.0, frozenset()))
        own = netaddr.own_addresses()
        self.assertIn(ipaddress.ip_address("127.0.0.1"), own)
        self.assertIs(netaddr.own_addresses(), own)
        self.assertEqual(netaddr.parse_entry(" Self "), ("self",))
        listed = netaddr.IPList(["self"])
        self.assertTrue(listed.contains("127.0.0.1"))
        self.assertFalse(listed.contains("198.51.100.7"))


class IPListTests(unittest.TestCase):
    table = [
        # entry, inside, outside
        ("127.0.0.1", "127.0.0.1", "127.0.0.2"),
        ("10.0.0.0/8", "10.255.1.2", "11.0.0.1"),
        ("10.1.0.0/255.255.0.0", "10.1.200.3", "10.2.0.1"),
        ("192.168.0.1-50", "192.168.0.50", "192.168.0.51"),
        ("192.168.0.1-192.168.1.20", "192.168.1.1", "192.168.1.21"),
        ("2001:db8::/32", "2001:db8::1", "2001:db9::1"),
        ("::1", "::1", "::2"),
        ("127.0.0.1", "::ffff:127.0.0.1", "::1"),
    ]

    def setUp(self):
        self.clock = task.Clock()
        self.backend = FakeBackend(dict(DNS))
        self.resolver = Resolver(self.backend, self.clock)

    def test_entries(self):
        for entry, inside, outside in self.table:
            iplist = IPList([entry])
            self.assertTrue(iplist.contains(inside), (entry, inside))
            self.assertFalse(iplist.contains(outside), (entry, outside))

    def test_bad_entries(self):
        for entry in ["10.0.0.0/40", "1.2.3.4-1.2.3.1", "1.2.3.4-x", "300.1.1.1", "a b",
                      ".", "*.", "*.bad_name.test"]:
            self.assertRaises(ValueError, parse_entry, entry)

    def test_domains(self):
        self.assertEqual(parse_entry(".Office.test"), ("domain", "office.test"))
        self.assertEqual(parse_entry("*.office.test"), ("domain", "office.test"))
        self.assertRaises(ValueError, IPList, [".office.test"])  # no resolver

    @defer.inlineCallbacks
    def test_domain_matches_forward_confirmed_names_only(self):
        iplist = IPList(["*.office.test"], self.resolver)
        self.assertTrue((yield iplist.match("192.0.2.9")))
        self.assertTrue((yield iplist.match("::ffff:192.0.2.9")))
        self.assertFalse((yield iplist.match("192.0.2.8")))  # PTR does not point back
        self.assertFalse((yield iplist.match("192.0.2.6")))  # no PTR
        self.assertFalse(iplist.contains("192.0.2.9"))  # the sync check knows no names
        with self.assertRaises(TemporaryDNSError):
            yield iplist.match("192.0.2.7")
        self.assertFalse((yield IPList([".office.test.example"], self.resolver)
                          .match("192.0.2.9")))

    @defer.inlineCallbacks
    def test_host_names_follow_their_ttl(self):
        iplist = IPList(["gw.example.test"], self.resolver)
        self.assertFalse(iplist.contains("192.0.2.1"))  # not looked up yet
        self.assertTrue((yield iplist.match("192.0.2.1")))
        self.assertTrue(iplist.contains("192.0.2.1"))
        self.backend.answers[("gw.example.test", "A")] = Answer(("192.0.2.2",), 300)
        self.assertTrue((yield iplist.match("192.0.2.1")))  # cached
        self.clock.advance(301)
        self.assertFalse((yield iplist.match("192.0.2.1")))
        self.assertTrue((yield iplist.match("192.0.2.2")))

    @defer.inlineCallbacks
    def test_a_failed_lookup_keeps_the_last_addresses(self):
        iplist = IPList(["gw.example.test"], self.resolver)
        yield iplist.resolve()
        self.backend.answers[("gw.example.test", "A")] = TemporaryDNSError("timeout")
        self.backend.answers[("gw.example.test", "AAAA")] = TemporaryDNSError("timeout")
        self.clock.advance(301)
        self.assertTrue((yield iplist.match("192.0.2.1")))

    def test_not_an_address(self):
        self.assertFalse(IPList(["10.0.0.0/8"]).contains("garbage"))

    def test_helpers(self):
        self.assertEqual(str(normalise_ip("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertTrue(is_loopback("::1"))
        self.assertTrue(is_loopback("::ffff:127.0.0.1"))
        self.assertFalse(is_loopback("10.0.0.1"))


class ListFileTests(unittest.TestCase):
    def test_separators_and_comments(self):
        self.assertEqual(split_entries(" 10.0.0.1,10.0.0.2;\t10.0.0.3  ::1 "),
                         ["10.0.0.1", "10.0.0.2", "10.0.0.3", "::1"])
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# office\n10.0.0.0/8, 192.168.0.1-50 # lan\n\n.office.test;gw.test\n")
        self.assertEqual(read_entries(path),
                         ["10.0.0.0/8", "192.168.0.1-50", ".office.test", "gw.test"])

    def test_a_bad_entry_names_file_line_and_entry(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("10.0.0.1\n# fine\n10.0.0.2, 10.0.0.0/33\n")
        with self.assertRaises(ListFileError) as caught:
            read_entries(path)
        self.assertEqual(str(caught.exception), f"{path}:3: bad network '10.0.0.0/33'")

    def test_address_and_netmask_is_one_network(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("192.168.1.0 255.255.255.0\n10.0.0.1 10.0.0.2, 172.16.0.0\t255.240.0.0\n"
                    "10.9.9.9 255.255.255.255 # one host\n192.0.2.1 0.0.0.0\n")
        self.assertEqual(read_entries(path),
                         ["192.168.1.0/255.255.255.0", "10.0.0.1", "10.0.0.2",
                          "172.16.0.0/255.240.0.0", "10.9.9.9/255.255.255.255",
                          "192.0.2.1", "0.0.0.0"])
        iplist = IPList(read_entries(path))
        self.assertTrue(iplist.contains("192.168.1.77"))
        self.assertTrue(iplist.contains("172.31.0.1"))
        self.assertFalse(iplist.contains("192.168.2.1"))
