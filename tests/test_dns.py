"""
The resolver: caching and error kinds with a fake backend, and the real
dnspython backend against a tiny DNS server on 127.0.0.1.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv.config import DNSSettings
from mailsrv.dns import Answer, DNSPythonBackend, Resolver, Resolvers, TemporaryDNSError
from tests.dnsserver import TinyDNSServer


class FakeBackend:
    """Answers from a dict of (name, type) -> Answer or exception; counts queries."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def query(self, name, rdtype):
        self.calls.append((name, rdtype))
        answer = self.answers.get((name, rdtype), Answer((), 60))
        if isinstance(answer, Exception):
            raise answer
        return answer


ANSWERS = {
    ("mail.test", "MX"): Answer(((10, "mx.mail.test"),), 300),
    ("mx.mail.test", "A"): Answer(("192.0.2.25",), 300),
    ("aonly.test", "A"): Answer(("192.0.2.26",), 300),
    ("v6only.test", "AAAA"): Answer(("2001:db8::26",), 300),
    ("nullmx.test", "MX"): Answer(((0, ""),), 300),
    ("slow.test", "MX"): TemporaryDNSError("MX slow.test: timeout"),
    ("halfslow.test", "MX"): Answer((), 60),
    ("halfslow.test", "A"): TemporaryDNSError("A halfslow.test: timeout"),
    ("halfslow.test", "AAAA"): Answer(("2001:db8::27",), 300),
    ("9.2.0.192.in-addr.arpa", "PTR"): Answer(("host.good.test", "liar.test"), 300),
    ("host.good.test", "A"): Answer(("192.0.2.9",), 300),
    ("liar.test", "A"): Answer(("198.51.100.1",), 300),
}


class ResolverTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.backend = FakeBackend(dict(ANSWERS))
        self.resolver = Resolver(self.backend, self.clock)

    @defer.inlineCallbacks
    def test_accepts_mail(self):
        for domain, expected in [("mail.test", True), ("aonly.test", True),
                                 ("v6only.test", True), ("nullmx.test", False),
                                 ("nowhere.test", False), ("halfslow.test", True),
                                 ("[192.0.2.1]", True)]:
            self.assertEqual((yield self.resolver.accepts_mail(domain)), expected, domain)

    @defer.inlineCallbacks
    def test_a_timeout_is_temporary(self):
        with self.assertRaises(TemporaryDNSError):
            yield self.resolver.accepts_mail("slow.test")

    @defer.inlineCallbacks
    def test_cached_for_the_ttl(self):
        self.assertEqual((yield self.resolver.mx("mail.test")), [(10, "mx.mail.test")])
        yield self.resolver.mx("MAIL.test.")
        self.assertEqual(len(self.backend.calls), 1)
        self.clock.advance(301)
        yield self.resolver.mx("mail.test")
        self.assertEqual(len(self.backend.calls), 2)

    @defer.inlineCallbacks
    def test_negative_answers_are_cached_errors_are_not(self):
        yield self.resolver.mx("nowhere.test")
        yield self.resolver.mx("nowhere.test")
        for _ in range(2):
            with self.assertRaises(TemporaryDNSError):
                yield self.resolver.mx("slow.test")
        self.assertEqual(self.backend.calls.count(("nowhere.test", "MX")), 1)
        self.assertEqual(self.backend.calls.count(("slow.test", "MX")), 2)

    @defer.inlineCallbacks
    def test_the_cache_is_bounded(self):
        resolver = Resolver(self.backend, self.clock, cache_size=2)
        for name in ("a.test", "b.test", "c.test", "a.test"):
            yield resolver.query(name, "A")
        self.assertEqual(self.backend.calls.count(("a.test", "A")), 2)
        self.assertEqual(len(resolver._cache), 2)

    @defer.inlineCallbacks
    def test_forward_confirmed_reverse_names(self):
        self.assertEqual((yield self.resolver.confirmed_names("192.0.2.9")),
                         ("host.good.test",))
        self.assertEqual((yield self.resolver.confirmed_names("192.0.2.10")), ())


class RealServerTests(unittest.TestCase):
    """dnspython against a DNS server on 127.0.0.1: nothing leaves loopback."""

    def setUp(self):
        self.server = TinyDNSServer({
            ("mail.test", "MX"): ["10 mx.mail.test."],
            ("mx.mail.test", "A"): ["127.0.0.25"],
            ("mx.mail.test", "AAAA"): ["::1"],
            ("2.0.0.127.in-addr.arpa", "PTR"): ["relay.trusted.test."],
            ("relay.trusted.test", "A"): ["127.0.0.2"],
            ("nullmx.test", "MX"): ["0 ."],
            ("nullmx.test", "A"): ["127.0.0.9"],
        }, silent={"slow.test"}, failing={"broken.test"})
        self.addCleanup(self.server.close)
        self.resolver = Resolver(DNSPythonBackend([("127.0.0.1", self.server.port)], 0.5),
                                 task.Clock())

    @defer.inlineCallbacks
    def test_null_mx_from_a_real_server(self):
        self.assertEqual((yield self.resolver.mx("nullmx.test")), [(0, "")])
        self.assertFalse((yield self.resolver.accepts_mail("nullmx.test")))
        self.assertTrue((yield self.resolver.accepts_mail("mail.test")))

    @defer.inlineCallbacks
    def test_lookups(self):
        self.assertEqual((yield self.resolver.mx("mail.test")), [(10, "mx.mail.test")])
        self.assertEqual(sorted((yield self.resolver.addresses("mx.mail.test"))),
                         ["127.0.0.25", "::1"])
        self.assertEqual((yield self.resolver.ptr("127.0.0.2")), ("relay.trusted.test",))
        self.assertEqual((yield self.resolver.confirmed_names("127.0.0.2")),
                         ("relay.trusted.test",))
        self.assertTrue((yield self.resolver.accepts_mail("mail.test")))
        self.assertFalse((yield self.resolver.accepts_mail("nowhere.test")))  # NXDOMAIN
        self.assertFalse((yield self.resolver.accepts_mail("relay.trusted.test"
                                                           ".nodata.test")))

    @defer.inlineCallbacks
    def test_no_answer_and_servfail_are_temporary(self):
        for name in ("slow.test", "broken.test"):
            with self.assertRaises(TemporaryDNSError):
                yield self.resolver.accepts_mail(name)

    @defer.inlineCallbacks
    def test_a_server_given_by_name(self):
        """
        Regression: a blacklist's own server written as a name ("ns.own.test:PORT")
        was handed to dnspython as an address, and every lookup through it timed out.
        """
        listed = TinyDNSServer({("2.0.0.127.own.test", "A"): ["127.0.0.2"]})
        self.addCleanup(listed.close)
        self.server.records[("ns.own.test", "A")] = ["127.0.0.1"]
        main = DNSSettings((("127.0.0.1", self.server.port),), 0.5)
        resolvers = Resolvers(task.Clock(), main)
        own = resolvers(DNSSettings((("ns.own.test", listed.port),), 0.5))
        self.assertEqual((yield own.query("2.0.0.127.own.test", "A")), ("127.0.0.2",))
        unknown = resolvers(DNSSettings((("ns.nowhere.test", listed.port),), 0.5))
        with self.assertRaises(TemporaryDNSError):
            yield unknown.query("2.0.0.127.own.test", "A")
