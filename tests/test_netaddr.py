from twisted.trial import unittest

from mailsrv.netaddr import IPList, is_loopback, normalise_ip, parse_entry


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

    def test_entries(self):
        for entry, inside, outside in self.table:
            iplist = IPList([entry])
            self.assertTrue(iplist.contains(inside), (entry, inside))
            self.assertFalse(iplist.contains(outside), (entry, outside))

    def test_bad_entries(self):
        for entry in ["10.0.0.0/40", "1.2.3.4-1.2.3.1", "1.2.3.4-x", "300.1.1.1", "a b"]:
            self.assertRaises(ValueError, parse_entry, entry)

    def test_hostnames_match_nothing_until_resolved(self):
        iplist = IPList(["gw.example.test"])
        self.assertEqual(parse_entry("gw.example.test"), ("host", "gw.example.test"))
        self.assertFalse(iplist.contains("127.0.0.1"))

    def test_localhost_resolves(self):
        iplist = IPList(["localhost"])
        return iplist.resolve().addCallback(
            lambda _: self.assertTrue(iplist.contains("127.0.0.1")))

    def test_not_an_address(self):
        self.assertFalse(IPList(["10.0.0.0/8"]).contains("garbage"))

    def test_helpers(self):
        self.assertEqual(str(normalise_ip("::ffff:10.0.0.1")), "10.0.0.1")
        self.assertTrue(is_loopback("::1"))
        self.assertTrue(is_loopback("::ffff:127.0.0.1"))
        self.assertFalse(is_loopback("10.0.0.1"))
