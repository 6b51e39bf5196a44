"""
The validation tests (HELO, reverse DNS) on their own and counted with
DNS blacklist hits toward the threshold, with a fake resolver.
"""

from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv import config, dns, preflight
from mailsrv.policy.actions import HEADER, NONE, Action
from mailsrv.policy.checks import validation
from mailsrv.policy.checks.dnsbl import DNSBL, DNSBLFilter
from mailsrv.policy.judgement import Judgement
from mailsrv.smtp.state import Session
from tests.helpers import result

JUNK = Action("move", "Junk")


class Resolver:
    """PTR and address records from dicts; a name in C{failing} is a temporary error."""

    def __init__(self, ptr=None, addresses=None, failing=()):
        self._ptr = ptr or {}
        self._addresses = addresses or {}
        self.failing = set(failing)

    def _answer(self, key, table):
        if key in self.failing:
            return defer.fail(dns.TemporaryDNSError(f"{key}: SERVFAIL"))
        return defer.succeed(tuple(table.get(key, ())))

    def ptr(self, ip):
        return self._answer(ip, self._ptr)

    def addresses(self, name):
        return self._answer(name, self._addresses)

    @defer.inlineCallbacks
    def confirmed_names(self, ip):
        names = yield self.ptr(ip)
        confirmed = []
        for name in names:
            if ip in (yield self.addresses(name)):
                confirmed.append(name)
        return tuple(confirmed)

    def query(self, name, rdtype):
        return self._answer(name, self._addresses)



RESOLVER = Resolver(
    ptr={"192.0.2.1": ["good.client.test"], "192.0.2.2": ["liar.client.test"]},
    addresses={"good.client.test": ["192.0.2.1"], "liar.client.test": ["203.0.113.9"],
               "mail.example.test": ["198.51.100.25"]},
    failing={"192.0.2.99"},
)


class HeloTests(unittest.TestCase):
    def test_fqdn_table(self):
        test = validation.HeloIsFQDN(HEADER)
        for helo, passes in [
            ("client.test", True), ("a.b.c.example", True), ("client.test.", True),
            ("[192.0.2.1]", True), ("[IPv6:2001:db8::1]", True),
            ("client", False), ("localhost", False), ("", False), ("192.0.2.1", False),
            ("[not-an-ip]", False), ("under_score.test", False), ("-bad.test", False),
            ("x..test", False),
        ]:
            failed = result(test.check(Session(ip="192.0.2.1", helo=helo)))
            self.assertEqual(failed is None, passes, helo)

    def test_not_ours_table(self):
        test = validation.HeloNotOurs("mail.example.test", ("example.test",), RESOLVER, HEADER)
        for helo, passes in [
            ("client.test", True), ("[192.0.2.1]", True),
            ("mail.example.test", False), ("MAIL.Example.Test.", False),
            ("example.test", False), ("[198.51.100.25]", False),
        ]:
            failed = result(test.check(Session(ip="192.0.2.1", helo=helo)))
            self.assertEqual(failed is None, passes, helo)


class ReverseDNSTests(unittest.TestCase):
    def test_table(self):
        reverse = validation.ReverseDNS(RESOLVER, HEADER)
        forward = validation.ForwardConfirmed(RESOLVER, HEADER)
        for ip, has_ptr, confirmed in [
            ("192.0.2.1", True, True), ("192.0.2.2", True, False), ("192.0.2.3", False, False),
        ]:
            session = Session(ip=ip, helo="client.test")
            self.assertEqual(result(reverse.check(session)) is None, has_ptr, ip)
            self.assertEqual(result(forward.check(session)) is None, confirmed, ip)

    def test_failure_text(self):
        failed = result(validation.ReverseDNS(RESOLVER, HEADER).check(Session(ip="192.0.2.3")))
        self.assertEqual(failed, "192.0.2.3 has no reverse DNS")


class CountTests(unittest.TestCase):
    """Failed tests and standard-list hits share one count."""

    def judge(self, ip, helo, threshold, tests=None, lists=(), resolver=RESOLVER):
        tests = tests or [validation.HeloIsFQDN(HEADER), validation.ReverseDNS(RESOLVER, JUNK),
                          validation.ForwardConfirmed(RESOLVER, JUNK)]
        clock = task.Clock()
        filters = [validation.ValidationFilter(tests, 5, clock),
                   DNSBLFilter(lists, lambda _: resolver, 5, clock)]
        session = Session(ip=ip, helo=helo)
        found = [result(f.check(session, None, None)) for f in filters]
        return Judgement(True, threshold=threshold).adding(found)

    def test_all_pass(self):
        found = self.judge("192.0.2.1", "good.client.test", 1)
        self.assertEqual((found.spam, found.reasons, found.headers), (False, (), ()))

    def test_failures_add_up_to_the_threshold(self):
        below = self.judge("192.0.2.2", "client", 3)
        self.assertEqual((below.spam, below.reasons),
                         (False, ("validation helo-fqdn", "validation fcrdns",
                                  "count below threshold 2/3")))
        reached = self.judge("192.0.2.3", "client", 3)
        self.assertEqual((reached.spam, reached.action), (True, JUNK))
        self.assertIn(("X-Mailsrv-Validation", "192.0.2.3 has no reverse DNS"), reached.headers)

    def test_with_a_list_hit(self):
        listed = DNSBL("bl.test", "bl.test", None, "standard", (), Action("reject"))
        resolver = Resolver(addresses={"2.2.0.192.bl.test": ["127.0.0.2"]},
                            ptr=RESOLVER._ptr)
        found = self.judge("192.0.2.2", "client", 2, [validation.HeloIsFQDN(HEADER)],
                           [listed], resolver)
        self.assertEqual((found.spam, found.action), (True, Action("reject")))
        self.assertEqual(found.reasons, ("validation helo-fqdn", "dnsbl bl.test 127.0.0.2"))

    def test_each_test_has_its_own_action_and_header(self):
        subject = Action("subject")
        tests = [validation.HeloIsFQDN(subject), validation.ReverseDNS(RESOLVER, NONE)]
        helo = self.judge("192.0.2.1", "client", 1, tests)
        self.assertEqual((helo.spam, helo.action), (True, subject))
        self.assertEqual(helo.headers,
                         (("X-Mailsrv-Validation", "HELO client is not a fully qualified "
                                                   "domain name"),))
        # action none: counted and reported, no header, nothing done
        rdns = self.judge("192.0.2.3", "client.test", 1, tests)
        self.assertEqual((rdns.spam, rdns.action, rdns.headers, rdns.reasons),
                         (True, NONE, (), ("validation reverse-dns",)))
        both = self.judge("192.0.2.3", "client", 2, tests)
        self.assertEqual((both.spam, both.action), (True, subject))

    def test_dns_failure_skips_the_test(self):
        found = self.judge("192.0.2.99", "good.client.test", 1)
        self.assertFalse(found.spam)


def parse(antispam):
    """The [antispam] settings of C{antispam}, checked as check-config and start-up do."""
    settings = config.parse({"antispam": antispam}, Path("/etc/mailsrv.toml"))
    preflight.check_settings(settings, task.Clock())
    return settings.antispam


class ConfigTests(unittest.TestCase):
    def test_defaults_and_switches(self):
        s = parse({"validation": {}})
        self.assertEqual(s.validation.tests, (("helo-fqdn", "header"), ("helo-ours", "header"),
                                              ("reverse-dns", "header"), ("fcrdns", "header")))
        s = parse({"validation": {"reverse_dns": False, "helo_fqdn": False, "action": "move:Junk"}})
        self.assertEqual(s.validation.tests, (("helo-ours", "move:Junk"), ("fcrdns", "move:Junk")))

    def test_own_actions(self):
        s = parse({"validation": {"helo_fqdn": "subject", "helo_not_ours": "reject",
                                  "reverse_dns": True, "forward_confirmed": "none",
                                  "action": "move:Junk"}})
        self.assertEqual(s.validation.tests, (("helo-fqdn", "subject"), ("helo-ours", "reject"),
                                              ("reverse-dns", "move:Junk"), ("fcrdns", "none")))

    def test_bad_own_action(self):
        for value, problem in [("junk", "unknown action 'junk'"), (3, "must be true or false "
                                                                       "or a string")]:
            with self.assertRaises(config.ConfigError) as caught:
                parse({"validation": {"helo_fqdn": value}})
            self.assertIn(f"[antispam.validation] helo_fqdn: {problem}", str(caught.exception))

    def test_threshold_counts_the_tests(self):
        s = parse({"validation": {"reverse_dns": False},
                   "dnsbl": {"lists": ["a.test"], "threshold": 4}})
        self.assertEqual(s.dnsbl.threshold, 4)
        with self.assertRaises(config.ConfigError) as caught:
            parse({"validation": {"reverse_dns": False},
                   "dnsbl": {"lists": ["a.test"], "threshold": 5}})
        self.assertIn("[antispam.dnsbl] threshold: 5 is more than the 4", str(caught.exception))

    def test_unknown_key(self):
        with self.assertRaises(config.ConfigError) as caught:
            parse({"validation": {"helo": True}})
        self.assertIn("[antispam.validation] helo", str(caught.exception))
