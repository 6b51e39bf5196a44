"""
SPF through pyspf with our DNS lookup, against a tiny DNS server on
loopback: each result, the RFC 7208 limits, the header and the actions.
"""

from pathlib import Path

import spf as pyspf
from twisted.internet import task
from twisted.trial import unittest

from mailsrv import config, preflight
from mailsrv.config import DNSSettings
from mailsrv.policy.actions import HEADER, Action
from mailsrv.policy import spfeval
from mailsrv.policy.checks import spf
from mailsrv.smtp.state import Session, Transaction
from tests.dnsserver import TinyDNSServer

INCLUDES = " ".join(f"include:i{n}.test" for n in range(11))
RECORDS = {
    ("pass.test", "TXT"): ['"v=spf1 ip4:127.0.0.0/8 -all"'],
    ("fail.test", "TXT"): ['"v=spf1 -all"'],
    ("softfail.test", "TXT"): ['"v=spf1 ~all"'],
    ("neutral.test", "TXT"): ['"v=spf1 ?all"'],
    ("none.test", "A"): ["192.0.2.1"],
    ("permerror.test", "TXT"): ['"v=spf1 frobnicate -all"'],
    ("helo.test", "TXT"): ['"v=spf1 a -all"'],
    ("helo.test", "A"): ["127.0.0.1"],
    # 11 includes: over the 10 DNS-querying mechanisms of RFC 7208 4.6.4
    ("many.test", "TXT"): [f'"v=spf1 {INCLUDES} -all"'],
    **{(f"i{n}.test", "TXT"): ['"v=spf1 -all"'] for n in range(11)},
    # 3 names that do not exist: over the 2 void lookups
    ("void.test", "TXT"): ['"v=spf1 a:v1.test a:v2.test a:v3.test ip4:127.0.0.1 -all"'],
    ("twovoid.test", "TXT"): ['"v=spf1 a:v1.test a:v2.test ip4:127.0.0.1 -all"'],
}


class SPFTests(unittest.TestCase):
    def setUp(self):
        self.dns = TinyDNSServer(RECORDS, failing={"temperror.test"})
        self.addCleanup(self.dns.close)
        self.addCleanup(self.restore, pyspf.DNSLookup, pyspf.MAX_LOOKUP,
                        pyspf.MAX_VOID_LOOKUPS)
        self.use_limits(10, 2)
        self.actions = {"fail": Action("reject"), "softfail": Action("subject")}
        self.filter = spf.SPFFilter(lambda r: self.actions.get(r, HEADER),
                                    "mail.example.test", 5)

    def restore(self, lookup, max_lookup, max_void):
        pyspf.DNSLookup, pyspf.MAX_LOOKUP, pyspf.MAX_VOID_LOOKUPS = lookup, max_lookup, max_void

    def use_limits(self, lookups, void):
        spfeval.install_lookup(DNSSettings((("127.0.0.1", self.dns.port),), 2), lookups, void)

    def check(self, sender, helo="client.test", ip="127.0.0.1"):
        """The finding of the check."""
        d = self.filter.check(Session(ip=ip, helo=helo), Transaction(sender), sender)
        return d.addCallback(lambda verdict: verdict.finding)

    async def expect(self, sender, result, **kwargs):
        found = await self.check(sender, **kwargs)
        self.assertEqual(found.reasons, (f"spf {result}",), sender)
        [(name, value)] = found.headers
        self.assertEqual(name, "Received-SPF")
        self.assertTrue(value.lower().startswith(result), value)
        return found

    async def test_each_result(self):
        for domain in ["pass", "fail", "softfail", "neutral", "none", "permerror",
                       "temperror"]:
            await self.expect(f"x@{domain}.test", domain)

    async def test_actions_and_spam(self):
        found = await self.expect("x@fail.test", "fail")
        self.assertEqual((found.spam, found.action), (True, Action("reject")))
        found = await self.expect("x@softfail.test", "softfail")
        self.assertEqual((found.spam, found.action), (True, Action("subject")))
        found = await self.expect("x@pass.test", "pass")
        self.assertEqual((found.spam, found.action), (False, HEADER))

    async def test_header_names_the_client(self):
        found = await self.check("x@pass.test")
        value = found.headers[0][1]
        self.assertIn("client-ip=127.0.0.1;", value)
        self.assertIn('envelope-from="x@pass.test";', value)
        self.assertIn("receiver=mail.example.test;", value)

    async def test_null_sender_checks_the_helo(self):
        await self.expect("", "pass", helo="helo.test")
        await self.expect("", "fail", helo="helo.test", ip="127.0.0.9")

    async def test_lookup_limit(self):
        await self.expect("x@many.test", "permerror")

    async def test_void_lookup_limit(self):
        await self.expect("x@twovoid.test", "pass")
        await self.expect("x@void.test", "permerror")

    async def test_limits_may_be_lowered(self):
        self.use_limits(10, 1)
        await self.expect("x@twovoid.test", "permerror")

    async def test_asks_our_server(self):
        await self.check("x@neutral.test")
        self.assertIn(("neutral.test", "TXT"), self.dns.queries)


def parse(spf_table):
    """The settings of C{spf_table}, checked as check-config and start-up do."""
    settings = config.parse({"antispam": {"spf": spf_table}}, Path("/etc/mailsrv.toml"))
    preflight.check_settings(settings, task.Clock())
    return settings


class ConfigTests(unittest.TestCase):
    def test_absent_is_off(self):
        self.assertIsNone(config.parse({}, Path("/x")).antispam.spf)

    def test_defaults(self):
        s = parse({}).antispam.spf
        self.assertEqual((s.max_lookups, s.max_void_lookups, s.timeout), (10, 2, 20.0))
        self.assertEqual([result for result, _ in s.actions], list(config.SPF_RESULTS))
        self.assertEqual({action for _, action in s.actions}, {"header"})

    def test_per_result_overrides_the_default(self):
        s = parse({"action": "none", "fail": "reject", "softfail": "move:Junk"}).antispam.spf
        self.assertEqual([dict(s.actions)[r] for r in ("pass", "fail", "softfail")],
                         ["none", "reject", "move:Junk"])

    def test_errors(self):
        for table, key in [
            ({"max_lookups": 11}, "[antispam.spf] max_lookups"),
            ({"max_void_lookups": 3}, "[antispam.spf] max_void_lookups"),
            ({"max_lookups": 0}, "[antispam.spf] max_lookups"),
            ({"fail": "bounce"}, "[antispam.spf] fail"),
            ({"softfial": "subject"}, "[antispam.spf] softfial"),
        ]:
            with self.assertRaises(config.ConfigError, msg=table) as caught:
                parse(table)
            self.assertIn(key, str(caught.exception))
