"""
[antispam.dkim] and [antispam.dmarc] (mailsrv/policy/checks/dkim.py,
dmarc.py, mailsrv/policy/dkimverify.py): messages signed by dkimpy with
keys `mailsrv dkim keygen` makes, verified against records a fake resolver
serves; DMARC's policy, alignment, pct= and the SPF result it finds or
evaluates; the one Authentication-Results header.
"""

from io import BytesIO

import dkim
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.trial import unittest

from mailsrv import dkimkeys
from mailsrv.dns import TemporaryDNSError
from mailsrv.policy import spfeval
from mailsrv.policy.actions import HEADER, Action
from mailsrv.policy.authentication import AuthResult, authserv_id, header_value
from mailsrv.policy.checks import dmarc
from mailsrv.policy.checks.dkim import DKIMFilter
from mailsrv.policy.checks.dmarc import DMARCFilter
from mailsrv.policy.dkimverify import Verifier
from mailsrv.policy.hooks import Message
from mailsrv.policy.judgement import Judgement
from mailsrv.policy.verdict import Finding
from tests.test_smtp.support import run_threads_inline

BODY = (b"To: bob@remote.test\r\nSubject: signed\r\n"
        b"Date: Sun, 06 Dec 2026 09:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n"
        b"hello\r\n")
RSA = dkimkeys.generate("rsa")
ED25519 = dkimkeys.generate("ed25519")


def signed(message, domain="example.test", selector="s1", key=RSA, **kwargs):
    """C{message} with a DKIM-Signature of dkimpy's (an independent signer)."""
    if isinstance(key, type(RSA)):
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        return dkim.sign(message, selector.encode(), domain.encode(), pem, **kwargs) + message
    import base64
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return dkim.sign(message, selector.encode(), domain.encode(), base64.b64encode(seed),
                     signature_algorithm=b"ed25519-sha256", **kwargs) + message


def from_(address):
    return f"From: {address}\r\n".encode() + BODY


def message(data):
    return Message(len(data), lambda: BytesIO(data))


class Resolver:
    """TXT records from a dict; a name mapped to an exception raises it."""

    def __init__(self, records=None):
        self.records = dict(records or {})
        self.asked = []

    def txt(self, name):
        self.asked.append(name)
        value = self.records.get(name, ())
        if isinstance(value, Exception):
            return defer.fail(value)
        return defer.succeed(tuple(value))


class Session:
    ip = "192.0.2.1"
    helo = "client.example.test"


class Transaction:
    def __init__(self, sender="alice@example.test", judgement=Judgement(True)):
        self.sender = sender
        self.judgement = judgement


def keys(**more):
    records = {"s1._domainkey.example.test": (dkimkeys.record(RSA),),
               "ed._domainkey.example.test": (dkimkeys.record(ED25519),)}
    records.update(more)
    return records


ACTIONS = {"pass": Action("none"), "fail": HEADER, "neutral": HEADER, "none": HEADER,
           "permerror": HEADER, "temperror": Action("tempfail")}


class DKIMTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.resolver = Resolver(keys())
        self.filter = DKIMFilter(Verifier(self.resolver), ACTIONS.__getitem__)

    def judge(self, data):
        return self.successResultOf(self.filter.check(Session(), Transaction(),
                                                      message(data))).finding

    def test_rsa_and_ed25519_pass(self):
        data = signed(signed(from_("alice@example.test")), selector="ed", key=ED25519)
        finding = self.judge(data)
        self.assertEqual([(r.result, dict(r.properties)["header.s"]) for r in finding.results],
                         [("pass", "ed"), ("pass", "s1")])
        self.assertEqual(finding.reasons, ("dkim pass example.test",))
        self.assertFalse(finding.spam)
        self.assertEqual(finding.action, Action("none"))

    def test_tampered_body_fails(self):
        data = signed(from_("alice@example.test")).replace(b"hello", b"hullo")
        finding = self.judge(data)
        self.assertEqual(finding.results[0].result, "fail")
        self.assertEqual(finding.results[0].comment, "body hash mismatch")
        self.assertFalse(finding.spam)  # (a broken signature is no signature: RFC 6376 6.1)

    def test_tampered_header_fails(self):
        data = signed(from_("alice@example.test")).replace(b"Subject: signed",
                                                           b"Subject: changed")
        self.assertEqual(self.judge(data).results[0].result, "fail")

    def test_unsigned_is_none(self):
        finding = self.judge(from_("alice@example.test"))
        self.assertEqual(finding.results, (AuthResult("dkim", "none"),))
        self.assertEqual(self.resolver.asked, [])

    def test_missing_key_is_permerror(self):
        finding = self.judge(signed(from_("alice@example.test"), selector="gone"))
        self.assertEqual(finding.results[0].result, "permerror")
        self.assertIn("no key at gone._domainkey.example.test", finding.results[0].comment)

    def test_dns_failure_is_temperror(self):
        self.resolver.records["s1._domainkey.example.test"] = TemporaryDNSError("timeout")
        finding = self.judge(signed(from_("alice@example.test")))
        self.assertEqual(finding.results[0].result, "temperror")
        self.assertEqual(finding.action, Action("tempfail"))

    def test_key_over_4096_bits_is_not_used(self):
        """RFC 8301 3.2: 1024 to 4096 bits; a longer key's cost is not the sender's to pick."""
        from cryptography.hazmat.primitives.asymmetric import rsa
        long = rsa.generate_private_key(public_exponent=65537, key_size=4104)
        self.resolver.records["long._domainkey.example.test"] = (dkimkeys.record(long),)
        result = self.judge(signed(from_("alice@example.test"), selector="long",
                                   key=long)).results[0]
        self.assertEqual((result.result, result.comment),
                         ("permerror", "key of 4104 bits is too long"))

    def test_rsa_sha1_is_not_accepted(self):
        data = signed(from_("alice@example.test"), signature_algorithm=b"rsa-sha1")
        result = self.judge(data).results[0]
        self.assertEqual((result.result, result.comment),
                         ("neutral", "rsa-sha1 is not accepted (RFC 8301)"))

    def test_signatures_past_the_limit_are_not_verified(self):
        self.filter = DKIMFilter(Verifier(self.resolver, max_signatures=2),
                                 ACTIONS.__getitem__)
        data = from_("alice@example.test")
        for selector in ("a", "b", "c", "d"):
            data = signed(data, selector=selector)
        finding = self.judge(data)
        self.assertEqual(len(finding.results), 2)
        self.assertEqual(len(self.resolver.asked), 2)

    def test_key_lookups_are_capped_and_made_at_once(self):
        """A sender's many selectors cost one lookup's time, at most MAX_KEY_LOOKUPS names."""
        pending = {}
        self.resolver.txt = lambda name: pending.setdefault(name, defer.Deferred())
        self.filter = DKIMFilter(Verifier(self.resolver, max_signatures=5),
                                 ACTIONS.__getitem__)
        data = from_("alice@example.test")
        for selector in ("a", "b", "c", "d", "e"):
            data = signed(data, selector=selector)
        chain = b"".join(b"ARC-Seal: i=%d; a=rsa-sha256; cv=none; d=x%d.test; s=s; b=AA\r\n"
                         b"ARC-Message-Signature: i=%d; a=rsa-sha256; d=y%d.test; s=s; "
                         b"h=from; bh=AA; b=AA\r\n" % (i, i, i, i) for i in range(1, 6))
        d = self.filter.check(Session(), Transaction(), message(chain + data))
        self.assertEqual(len(pending), 8)  # all asked before any answered
        for name, waiting in pending.items():
            waiting.errback(TemporaryDNSError("timeout"))
        self.assertEqual({r.result for r in self.successResultOf(d).finding.results
                          if r.method == "dkim"}, {"temperror"})

    def test_unreadable_signature_and_garbage(self):
        data = b"DKIM-Signature: v=1; a=rsa-sha256; garbage\r\n" + from_("a@example.test")
        self.assertEqual(self.judge(data).results[0].result, "permerror")
        data = b"DKIM-Signature: ;;;==;\r\n" + from_("a@example.test")
        self.assertIn(self.judge(data).results[0].result, ("permerror", "neutral"))

    def test_verified_once_for_every_check(self):
        verifier = Verifier(self.resolver)
        shared = message(signed(from_("alice@example.test")))
        first = self.successResultOf(verifier.verify(shared))
        second = self.successResultOf(verifier.verify(shared))
        self.assertIs(first, second)
        self.assertEqual(self.resolver.asked, ["s1._domainkey.example.test"])


def sealed(message, domain="lists.test", selector="s1", key=RSA):
    """C{message} with an ARC set of dkimpy's, as a mailing list at C{domain} adds."""
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    chain = "; arc=pass" if b"ARC-Seal:" in message else ""  # (dkimpy's cv= comes from it)
    message = f"Authentication-Results: {domain}; dkim=pass{chain}\r\n".encode() + message
    arc = dkim.arc_sign(message, selector.encode(), domain.encode(), pem, domain.encode())
    return b"".join(arc) + message


class ARCTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.resolver = Resolver(keys(**{"s1._domainkey.lists.test": (dkimkeys.record(RSA),)}))
        self.filter = DKIMFilter(Verifier(self.resolver), ACTIONS.__getitem__)

    def arc(self, data):
        finding = self.successResultOf(self.filter.check(Session(), Transaction(),
                                                         message(data))).finding
        return [r for r in finding.results if r.method == "arc"]

    def test_a_sealed_chain_passes(self):
        once = sealed(signed(from_("alice@example.test")))
        self.assertEqual(self.arc(once), [AuthResult("arc", "pass", (), "i=1 d=lists.test")])
        self.assertEqual(self.arc(sealed(once))[0].comment, "i=2 d=lists.test")

    def test_a_changed_message_breaks_the_chain(self):
        data = sealed(from_("alice@example.test")).replace(b"hello", b"hullo")
        self.assertEqual(self.arc(data)[0].result, "fail")

    def test_no_chain_reports_nothing(self):
        self.assertEqual(self.arc(signed(from_("alice@example.test"))), [])

    def test_a_long_chain_fails_unread(self):
        data = b"".join(b"ARC-Seal: i=%d; a=rsa-sha256; cv=none; d=x.test; s=s; b=AA\r\n" % i
                        for i in range(1, 12)) + from_("alice@example.test")
        self.assertEqual(self.arc(data),
                         [AuthResult("arc", "fail", (), "11 ARC sets, more than 10")])
        self.assertEqual(self.resolver.asked, [])


DMARC_ACTIONS = {"pass": Action("none"), "fail": HEADER, "none": HEADER,
                 "permerror": HEADER, "temperror": Action("tempfail"),
                 "reject": Action("reject"), "quarantine": Action("move:Junk")}


class DMARCTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.resolver = Resolver(keys(**{
            "_dmarc.example.test": ("v=DMARC1; p=reject; rua=mailto:d@example.test",),
            "_dmarc.quarantined.test": ("v=DMARC1; p=quarantine; sp=none",),
            "_dmarc.strict.test": ("v=DMARC1; p=reject; adkim=s; aspf=s",),
            "_dmarc.half.test": ("v=DMARC1; p=reject; pct=50",),
            "_dmarc.watching.test": ("v=DMARC1; p=none",),
            "s1._domainkey.strict.test": (dkimkeys.record(RSA),),
            "s1._domainkey.mail.strict.test": (dkimkeys.record(RSA),),
            "s1._domainkey.other.test": (dkimkeys.record(RSA),),
        }))
        self.spf = {}
        self.patch(spfeval, "evaluate", self.evaluate)
        self.sample = 0.0
        self.filter = DMARCFilter(Verifier(self.resolver), self.resolver, DMARC_ACTIONS,
                                  "mx.test", sample=lambda: self.sample)

    def evaluate(self, ip, sender, helo, receiver, timeout):
        self.spf[sender] = True
        return defer.succeed((self.spf_result, "header"))

    spf_result = "none"

    def judge(self, data, transaction=None):
        verdict = self.successResultOf(self.filter.check(
            Session(), transaction or Transaction("bounce@elsewhere.test"), message(data)))
        return verdict.finding

    def dmarc(self, finding):
        return [r for r in finding.results if r.method == "dmarc"][0]

    def test_forged_from_of_a_reject_domain_is_refused(self):
        finding = self.judge(from_("ceo@example.test"))
        self.assertEqual(finding.action, Action("reject"))
        self.assertTrue(finding.spam)
        self.assertEqual(finding.reasons, ("dmarc fail p=reject",))
        self.assertEqual(self.dmarc(finding).text(),
                         "dmarc=fail (p=reject no aligned pass) header.from=example.test")

    def test_aligned_dkim_passes(self):
        finding = self.judge(signed(from_("ceo@example.test")))
        self.assertEqual((self.dmarc(finding).result, finding.action),
                         ("pass", Action("none")))
        self.assertIn("dkim", [r.method for r in finding.results])

    def test_relaxed_alignment_takes_the_organisational_domain(self):
        data = signed(from_("ceo@mail.example.test"), domain="example.test")
        self.resolver.records["_dmarc.example.test"] = ("v=DMARC1; p=reject",)
        self.assertEqual(self.dmarc(self.judge(data)).result, "pass")

    def test_strict_alignment_wants_the_same_name(self):
        data = signed(from_("ceo@strict.test"), domain="mail.strict.test")
        finding = self.judge(data)
        self.assertEqual((self.dmarc(finding).result, finding.action),
                         ("fail", Action("reject")))
        self.assertEqual(self.dmarc(self.judge(signed(from_("ceo@strict.test"),
                                                      domain="strict.test"))).result, "pass")

    def test_unaligned_dkim_pass_does_not_count(self):
        data = signed(from_("ceo@example.test"), domain="other.test")
        self.assertEqual(self.judge(data).action, Action("reject"))

    def test_aligned_spf_passes_and_is_evaluated_when_not_recorded(self):
        self.spf_result = "pass"
        finding = self.judge(from_("ceo@example.test"), Transaction("bounce@example.test"))
        self.assertEqual(self.dmarc(finding).result, "pass")
        self.assertIn(AuthResult("spf", "pass", (("smtp.mailfrom", "bounce@example.test"),)),
                      finding.results)

    def test_spf_recorded_at_mail_from_is_used(self):
        recorded = Judgement(True, (Finding(False, results=(
            AuthResult("spf", "pass", (("smtp.mailfrom", "x@example.test"),)),)),))
        finding = self.judge(from_("ceo@example.test"), Transaction("x@example.test",
                                                                    recorded))
        self.assertEqual(self.dmarc(finding).result, "pass")
        self.assertEqual(self.spf, {})  # not evaluated again
        self.assertNotIn("spf", [r.method for r in finding.results])

    def test_spf_pass_of_another_domain_is_not_aligned(self):
        self.spf_result = "pass"
        finding = self.judge(from_("ceo@example.test"), Transaction("x@other.test"))
        self.assertEqual(self.dmarc(finding).result, "fail")

    def test_quarantine_and_subdomain_policy(self):
        finding = self.judge(from_("a@quarantined.test"))
        self.assertEqual(finding.action, Action("move:Junk"))
        finding = self.judge(from_("a@sub.quarantined.test"))  # sp=none
        self.assertEqual((self.dmarc(finding).result, finding.action, finding.spam),
                         ("fail", HEADER, False))

    def test_pct_samples_failures(self):
        self.sample = 0.49
        self.assertEqual(self.judge(from_("a@half.test")).action, Action("reject"))
        self.sample = 0.5  # outside pct=50: the next policy down
        self.assertEqual(self.judge(from_("a@half.test")).action, Action("move:Junk"))

    def test_p_none_is_reported_only(self):
        finding = self.judge(from_("a@watching.test"))
        self.assertEqual((self.dmarc(finding).result, finding.action, finding.spam),
                         ("fail", HEADER, False))

    def test_no_record_is_none(self):
        finding = self.judge(from_("a@nowhere.test"))
        self.assertEqual(self.dmarc(finding).text(), "dmarc=none header.from=nowhere.test")
        self.assertIn("_dmarc.nowhere.test", self.resolver.asked)

    def test_record_lookup_failure_is_temperror(self):
        self.resolver.records["_dmarc.example.test"] = TemporaryDNSError("SERVFAIL")
        self.assertEqual(self.judge(from_("a@example.test")).action, Action("tempfail"))

    def test_several_from_domains_are_permerror(self):
        data = b"From: a@example.test, b@other.test\r\n" + BODY
        finding = self.judge(data)
        self.assertEqual(self.dmarc(finding).result, "permerror")
        data = b"From: a@example.test\r\nFrom: b@other.test\r\n" + BODY
        self.assertEqual(self.dmarc(self.judge(data)).result, "permerror")
        self.assertEqual(self.dmarc(self.judge(BODY)).result, "permerror")

    def test_a_trusted_sealer_overrides_a_failure(self):
        """RFC 8617 7.2: a list that changed the mail and sealed it, trusted by the admin."""
        self.resolver.records["s1._domainkey.lists.test"] = (dkimkeys.record(RSA),)
        data = sealed(signed(from_("ceo@example.test")).replace(b"hello", b"[list] hello"))
        finding = self.judge(data)
        self.assertEqual(finding.action, Action("reject"))  # (not trusted yet)
        self.filter = DMARCFilter(Verifier(self.resolver), self.resolver, DMARC_ACTIONS,
                                  "mx.test", trusted_sealers=["lists.test"])
        finding = self.judge(data)
        self.assertEqual((finding.action, finding.spam, finding.reasons),
                         (Action("none"), False, ("dmarc fail p=reject arc-override",)))
        self.assertEqual(self.dmarc(finding).comment,
                         "p=reject overridden: ARC sealed by lists.test")
        self.assertIn(AuthResult("arc", "pass", (), "i=1 d=lists.test"), finding.results)

    def test_records(self):
        self.assertIsNone(dmarc.parse_record("v=spf1 -all"))
        self.assertIsNone(dmarc.parse_record("v=DMARC1; p=bogus"))
        self.assertEqual(dmarc.parse_record("v=DMARC1; p=bogus; rua=mailto:x@y")["p"], "none")
        tags = dmarc.parse_record("v=DMARC1;p=Reject;pct=500;adkim=s")
        self.assertEqual((tags["p"], tags["sp"], tags["pct"], tags["adkim"], tags["aspf"]),
                         ("reject", "reject", 100, "s", "r"))
        self.assertEqual(dmarc.organizational_domain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(dmarc.organizational_domain("example.test"), "example.test")


class RFCExampleTests(unittest.TestCase):
    """The examples of RFC 7489 (DMARC) and RFC 8601 (Authentication-Results)."""

    def test_rfc7489_records(self):
        """Appendix B.2: the policies a domain owner publishes."""
        monitor = dmarc.parse_record("v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com")
        self.assertEqual((monitor["p"], monitor["pct"]), ("none", 100))
        sampled = dmarc.parse_record("v=DMARC1; p=quarantine; "
                                     "rua=mailto:dmarc-feedback@example.com; "
                                     "ruf=mailto:auth-reports@thirdparty.example.net; pct=10")
        self.assertEqual((sampled["p"], sampled["sp"], sampled["pct"]),
                         ("quarantine", "quarantine", 10))

    def test_rfc7489_alignment(self):
        """Section 3.1.1: foo.example.com and example.com align relaxed, not strict."""
        self.assertTrue(dmarc.aligned("example.com", "foo.example.com", "r"))
        self.assertFalse(dmarc.aligned("example.com", "foo.example.com", "s"))
        self.assertTrue(dmarc.aligned("example.com", "example.com", "s"))

    def test_rfc8601_authserv_ids(self):
        """Appendix B: the headers an MTA may find, and whose they are."""
        for value, expected in (
                ("example.com; none", "example.com"),
                ("example.com; spf=pass smtp.mailfrom=example.net", "example.com"),
                ("example.com; auth=pass (cram-md5) smtp.auth=sender@example.net; "
                 "spf=pass smtp.mailfrom=example.net", "example.com"),
                ("example.com 1; none", "example.com"),
                ("mail-router.example.net; dkim=pass (good signature) header.d=newyork.example.com",
                 "mail-router.example.net")):
            self.assertEqual(authserv_id(value), expected, value)


class AuthenticationResultsTests(unittest.TestCase):
    def test_header_value(self):
        results = (AuthResult("spf", "pass", (("smtp.mailfrom", "a@example.test"),)),
                   AuthResult("dkim", "pass", (("header.d", "example.test"),
                                               ("header.b", "ab/c+d=e"))),
                   AuthResult("spf", "pass", (("smtp.mailfrom", "a@example.test"),)))
        self.assertEqual(header_value("mx.test", results),
                         'mx.test;\r\n\tspf=pass smtp.mailfrom="a@example.test";\r\n\t'
                         'dkim=pass header.d=example.test header.b="ab/c+d=e"')
        self.assertEqual(header_value("mx.test", ()), "mx.test; none")

    def test_authserv_id(self):
        self.assertEqual(authserv_id(" (c) MX.test 1; spf=pass"), "mx.test")
        self.assertEqual(authserv_id("mx.test; none"), "mx.test")
        self.assertEqual(authserv_id(""), "")

    def test_one_header_for_every_method(self):
        judgement = Judgement(True, (
            Finding(False, results=(AuthResult("spf", "pass", (("smtp.mailfrom", "x@y.test"),)),)),
            Finding(False, results=(AuthResult("dkim", "none"),)),
            Finding(True, reasons=("dmarc fail p=reject",),
                    results=(AuthResult("dkim", "none"), AuthResult("dmarc", "fail")))))
        block = judgement.header_block("mx.test").decode()
        self.assertEqual(block.count("Authentication-Results:"), 1)
        self.assertIn("Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom="
                      "\"x@y.test\";\r\n\tdkim=none;\r\n\tdmarc=fail\r\n", block)
