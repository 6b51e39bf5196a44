"""
DNS blacklists: query names, answer codes, threshold and kinds, timeouts
and failures (fail open), with a fake resolver and task.Clock.
"""

from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv import config, dns, preflight
from mailsrv.policy import failopen
from mailsrv.policy.actions import HEADER, NONE, Action
from mailsrv.policy.checks.dnsbl import DNSBL, DNSBLFilter
from mailsrv.policy.judgement import Judgement
from mailsrv.smtp.state import Session
from tests.helpers import result


def bl(zone, kind="standard", codes=(), action=HEADER, server=None, lookup="ip"):
    return DNSBL(zone, zone, server, kind, codes, action, lookup)


class FakeResolver:
    """Answers from a dict; a name missing is NXDOMAIN, "pending" never answers."""

    def __init__(self, answers):
        self.answers = answers
        self.queries = []

    def query(self, name, rdtype):
        self.queries.append((name, rdtype))
        answer = self.answers.get(name, ())
        if answer == "pending":
            return defer.Deferred()
        if answer == "servfail":
            return defer.fail(dns.TemporaryDNSError(f"{rdtype} {name}: SERVFAIL"))
        return defer.succeed(answer)



class QueryNameTests(unittest.TestCase):
    def test_ipv4_reversed_octets(self):
        self.assertEqual(bl("zen.test").query_name("192.0.2.10"), "10.2.0.192.zen.test")

    def test_ipv4_mapped(self):
        self.assertEqual(bl("zen.test").query_name("::ffff:192.0.2.10"), "10.2.0.192.zen.test")

    def test_ipv6_nibbles(self):
        name = bl("zen.test").query_name("2001:db8::1")
        self.assertEqual(name, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test")


class NameQueryTests(unittest.TestCase):
    """RHSBL: a name looked up under the zone."""

    def test_names(self):
        self.assertEqual(bl("dbl.test").name_query("Spam.Example."), "spam.example.dbl.test")
        for no_domain in ("[192.0.2.1]", "localhost", "", "a..example", "-a.example",
                          "a" * 64 + ".example", ("a" * 60 + ".") * 4 + "example"):
            self.assertRaises(ValueError, bl("dbl.test").name_query, no_domain)


class ClassifyTests(unittest.TestCase):
    def test_table(self):
        for codes, records, outcome in [
            ((), (), ("clear", "")),
            ((), ("127.0.0.2",), ("hit", "127.0.0.2")),
            ((), ("127.0.0.10", "127.0.0.4"), ("hit", "127.0.0.10")),
            ((), ("127.255.255.254",), ("refused", "127.255.255.254")),
            ((), ("127.0.0.2", "127.255.255.252"), ("refused", "127.255.255.252")),
            ((), ("10.0.0.1",), ("clear", "")),
            (("127.0.0.4",), ("127.0.0.2",), ("clear", "")),
            (("127.0.0.4",), ("127.0.0.2", "127.0.0.4"), ("hit", "127.0.0.4")),
        ]:
            self.assertEqual(bl("z", codes=codes).classify(records), outcome, (codes, records))


IP = "192.0.2.10"
LISTED = ("127.0.0.2",)


class FilterTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def check(self, lists, answers, threshold=1):
        """The judgement of the lists' result alone."""
        self.resolver = FakeResolver({f"10.2.0.192.{z}": a for z, a in answers.items()})
        f = DNSBLFilter(lists, lambda _: self.resolver, 5, self.clock)
        d = f.check(Session(ip=IP), None, None)
        return d.addCallback(lambda found: Judgement(True, threshold=threshold).adding([found]))

    def test_clean(self):
        found = result(self.check([bl("a.test"), bl("b.test")], {}))
        self.assertEqual((found.spam, found.action, found.reasons), (False, NONE, ()))

    def test_one_hit_at_threshold_one(self):
        found = result(self.check([bl("a.test"), bl("b.test")], {"b.test": LISTED}))
        self.assertEqual((found.spam, found.action, found.reasons),
                         (True, HEADER, ("dnsbl b.test 127.0.0.2",)))
        self.assertEqual(found.headers,
                         (("X-Mailsrv-DNSBL", f"{IP} listed in b.test (127.0.0.2)"),))

    def test_lookups_run_in_parallel(self):
        d = self.check([bl("a.test"), bl("b.test")], {"a.test": "pending", "b.test": "pending"})
        self.assertNoResult(d)
        self.assertEqual(len(self.resolver.queries), 2)

    def test_threshold_counts_standard_hits(self):
        lists = [bl("a.test", action=Action("move", "Junk")), bl("b.test", action=Action("reject")),
                 bl("c.test")]
        below = result(self.check(lists, {"a.test": LISTED}, threshold=2))
        self.assertEqual((below.spam, below.action), (False, NONE))
        self.assertIn("count below threshold 1/2", below.reasons)
        reached = result(self.check(lists, {"a.test": LISTED, "b.test": LISTED}, threshold=2))
        self.assertEqual((reached.spam, reached.action), (True, Action("reject")))

    def test_one_trusted_hit_is_enough(self):
        lists = [bl("a.test"), bl("t.test", kind="trusted", action=Action("move", "Junk"))]
        found = result(self.check(lists, {"t.test": LISTED}, threshold=2))
        self.assertEqual((found.spam, found.action), (True, Action("move", "Junk")))

    def test_refusal_codes_are_errors_not_hits(self):
        found = result(self.check([bl("a.test")], {"a.test": ("127.255.255.254",)}))
        self.assertFalse(found.spam)

    def test_timeout_skips_the_list(self):
        logged = []
        self.patch(failopen.log, "info", lambda fmt, **kw: logged.append(kw["error"]))
        d = self.check([bl("slow.test"), bl("b.test")], {"slow.test": "pending", "b.test": LISTED})
        self.assertNoResult(d)
        self.clock.advance(5)
        found = result(d)
        self.assertEqual((found.spam, found.reasons), (True, ("dnsbl b.test 127.0.0.2",)))
        self.assertEqual(logged, ["no answer in 5s"])

    def test_servfail_skips_the_list(self):
        found = result(self.check([bl("a.test")], {"a.test": "servfail"}))
        self.assertFalse(found.spam)

    def test_action_none_adds_no_list_header(self):
        found = result(self.check([bl("a.test", action=NONE)], {"a.test": LISTED}))
        self.assertEqual((found.spam, found.headers), (True, ()))

    def test_received_ip_says_so(self):
        self.resolver = FakeResolver({"9.113.0.203.a.test": LISTED})
        f = DNSBLFilter([bl("a.test"), bl("t.test", kind="trusted")], lambda _: self.resolver,
                        5, self.clock)
        found = result(f.check_received("203.0.113.9")).finding
        self.assertEqual((found.spam, found.counted), (False, (HEADER,)))
        self.assertEqual(found.reasons, ("dnsbl a.test 127.0.0.2 received 203.0.113.9",))
        self.assertEqual(found.headers, (("X-Mailsrv-DNSBL", "203.0.113.9 listed in a.test "
                                                             "(127.0.0.2), from a Received header"),))

    def test_sender_domain_and_helo_lists(self):
        """Lists with lookup "sender" or "helo" (RHSBL) ask about names, beside the IP lists."""
        resolver = FakeResolver({"spam.example.dbl.test": ("127.0.1.2",),
                                 "bad.helo.example.hbl.test": ("127.0.0.2",)})
        lists = [bl("zen.test"), bl("dbl.test", lookup="sender"),
                 bl("hbl.test", kind="trusted", lookup="helo")]
        f = DNSBLFilter(lists, lambda _: resolver, 5, self.clock)
        found = result(f.check(Session(ip=IP, helo="bad.helo.example"), None,
                               "x@spam.example")).finding
        self.assertEqual(sorted(resolver.queries), [
            ("10.2.0.192.zen.test", "A"), ("bad.helo.example.hbl.test", "A"),
            ("spam.example.dbl.test", "A")])
        self.assertEqual(found.reasons, ("dnsbl dbl.test 127.0.1.2 sender spam.example",
                                         "dnsbl hbl.test 127.0.0.2 helo bad.helo.example"))
        self.assertEqual(found.headers, (
            ("X-Mailsrv-DNSBL", "spam.example listed in dbl.test (127.0.1.2), the sender name"),
            ("X-Mailsrv-DNSBL", "bad.helo.example listed in hbl.test (127.0.0.2), "
                                "the helo name")))
        self.assertTrue(found.spam)  # (the trusted HELO list alone)

    def test_names_not_looked_up(self):
        """The null sender, an address literal HELO, a Received IP: no name query."""
        resolver = FakeResolver({})
        lists = [bl("dbl.test", lookup="sender"), bl("hbl.test", lookup="helo")]
        f = DNSBLFilter(lists, lambda _: resolver, 5, self.clock)
        result(f.check(Session(ip=IP, helo="[192.0.2.10]"), None, ""))
        result(f.check_received("192.0.2.20"))
        self.assertEqual(resolver.queries, [])

    def test_per_list_resolver(self):
        own = bl("own.test", server=("127.0.0.1", 5353))
        asked = []
        f = DNSBLFilter([own], lambda b: asked.append(b) or FakeResolver({}), 5, self.clock)
        result(f.check(Session(ip=IP), None, None))
        self.assertEqual(asked, [own])


class CachingTests(unittest.TestCase):
    """Answers are cached with the record's TTL (by mailsrv.dns.Resolver)."""

    def test_second_lookup_is_cached(self):
        clock = task.Clock()

        class Backend:
            calls = 0

            def query(self, name, rdtype):
                Backend.calls += 1
                return dns.Answer(LISTED, 300)

        self.patch(dns.threads, "deferToThread",
                   lambda f, *a: defer.maybeDeferred(f, *a))
        resolver = dns.Resolver(Backend(), clock)
        f = DNSBLFilter([bl("a.test")], lambda _: resolver, 5, clock)
        for _ in range(2):
            verdict = result(f.check(Session(ip=IP), None, None))
            self.assertEqual(verdict.finding.counted, (HEADER,))
        self.assertEqual(Backend.calls, 1)
        clock.advance(301)
        result(f.check(Session(ip=IP), None, None))
        self.assertEqual(Backend.calls, 2)


def parse(dnsbl, **antispam):
    """The settings of C{dnsbl}, checked as check-config and start-up do."""
    settings = config.parse({"antispam": {**antispam, "dnsbl": dnsbl}},
                            Path("/etc/mailsrv.toml"))
    preflight.check_settings(settings, task.Clock())
    return settings


class ConfigTests(unittest.TestCase):
    def test_absent_is_off(self):
        settings = config.parse({}, Path("/x"))
        self.assertIsNone(settings.antispam.dnsbl)
        self.assertEqual(settings.antispam.subject_prefix, "[SPAM] ")

    def test_zones_and_tables(self):
        settings = parse({
            "lists": ["zen.example", {"zone": "bl.example.", "name": "BL", "server": "127.0.0.1:5353",
                                      "kind": "trusted", "codes": ["127.0.0.4"],
                                      "action": "move:Junk"}],
            "action": "subject", "threshold": 1, "timeout": 2,
        }, subject_prefix="***SPAM*** ")
        s = settings.antispam
        self.assertEqual(s.subject_prefix, "***SPAM*** ")
        self.assertEqual((s.dnsbl.threshold, s.dnsbl.timeout), (1, 2.0))
        self.assertFalse(s.dnsbl.received_headers)
        self.assertTrue(parse({"lists": ["a.example"], "received_headers": True})
                        .antispam.dnsbl.received_headers)
        self.assertEqual(s.dnsbl.lists, (
            config.DNSBLList("zen.example", "zen.example", None, "standard", (), "subject"),
            config.DNSBLList("bl.example", "BL", ("127.0.0.1", 5353), "trusted",
                             ("127.0.0.4",), "move:Junk"),
        ))
        self.assertEqual(parse({"lists": [{"zone": "dbl.example", "lookup": "sender"}]})
                         .antispam.dnsbl.lists[0].lookup, "sender")

    def test_errors(self):
        for table, key in [
            ({}, "[antispam.dnsbl] lists"),
            ({"lists": ["a.example"], "action": "junk"}, "[antispam.dnsbl] action"),
            ({"lists": ["a.example"], "threshold": 2}, "[antispam.dnsbl] threshold"),
            ({"lists": ["a.example", {"zone": "t.example", "kind": "trusted"}], "threshold": 2},
             "[antispam.dnsbl] threshold"),
            ({"lists": [{"zone": "a.example", "kind": "big"}]}, "[antispam.dnsbl.lists] kind"),
            ({"lists": [{"zone": "a.example", "codes": ["x"]}]}, "[antispam.dnsbl.lists] codes"),
            ({"lists": [{"name": "a"}]}, "[antispam.dnsbl.lists] zone"),
            ({"lists": [{"zone": "a.example", "typo": 1}]}, "[antispam.dnsbl.lists] typo"),
            ({"lists": [{"zone": "a.example", "lookup": "from"}]},
             "[antispam.dnsbl.lists] lookup"),
            ({"lists": [3]}, "[antispam.dnsbl] lists"),
            ({"lists": ["a.example"], "treshold": 1}, "[antispam.dnsbl] treshold"),
        ]:
            with self.assertRaises(config.ConfigError, msg=table) as caught:
                parse(table)
            self.assertIn(key, str(caught.exception), table)

    def test_unknown_antispam_key(self):
        with self.assertRaises(config.ConfigError) as caught:
            config.parse({"antispam": {"bayes2": {}}}, Path("/x"))
        self.assertIn("[antispam] bayes2", str(caught.exception))
