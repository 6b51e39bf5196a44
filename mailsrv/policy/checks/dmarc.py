"""
DMARC ([antispam.dmarc], RFC 7489): does the message's From: domain stand
behind it? It passes when SPF passed for a MAIL FROM domain, or a DKIM
signature passed for a domain, aligned with the From: domain (the same
organisational domain, or the same name when the policy says strict);
otherwise the domain's policy (C{p=}, C{sp=} for its subdomains, applied
to C{pct=} per cent of failures) picks the outcome, and the admin's action
for that outcome applies: by default a C{p=reject} failure is refused and
a C{p=quarantine} one moved to Junk.

The DKIM results are the shared verification's
(L{mailsrv.policy.dkimverify}); the SPF result is the one [antispam.spf]
recorded at MAIL FROM, or, without it, evaluated here the same way
(L{mailsrv.policy.spfeval}). The organisational domain comes from the
public suffix list that the publicsuffixlist package ships (no download
at run time). Policy records are looked up through our cached resolver.
"""

import random
from email.utils import getaddresses

from publicsuffixlist import PublicSuffixList
from twisted.internet import defer

from mailsrv.dns import TemporaryDNSError
from mailsrv.policy import spfeval
from mailsrv.policy.authentication import AuthResult
from mailsrv.policy.verdict import Verdict

POLICIES = ("none", "quarantine", "reject")
# RFC 7489 6.6.4: a failure outside pct= gets the next policy down.
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_suffixes = []


def organizational_domain(domain):
    """RFC 7489 3.2: the registered domain of C{domain} (itself for a public suffix)."""
    if not _suffixes:
        _suffixes.append(PublicSuffixList())  # (60 ms, once: only when DMARC is on)
    return _suffixes[0].privatesuffix(domain) or domain


def aligned(domain, author, mode):
    """Whether an authenticated C{domain} is aligned with the From: C{author}."""
    if mode == "s":
        return domain == author
    return organizational_domain(domain) == organizational_domain(author)


def parse_record(text):
    """
    A DMARC record's tags (RFC 7489 6.3) as a dict, or L{None} when it is
    no DMARC record (it must start with C{v=DMARC1}).
    """
    tags = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    if not text.lstrip().startswith("v=") or tags.get("v") != "DMARC1":
        return None
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        if "rua" not in tags:  # RFC 7489 6.6.3: no usable policy
            return None
        tags["p"] = "none"
    tags["p"] = tags["p"].lower()
    if tags.get("sp", "").lower() not in POLICIES:
        tags["sp"] = tags["p"]
    tags["sp"] = tags["sp"].lower()
    try:
        tags["pct"] = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        tags["pct"] = 100
    for mode in ("adkim", "aspf"):
        tags[mode] = "s" if tags.get(mode, "r").lower() == "s" else "r"
    return tags


def author_domain(senders):
    """
    C{(the From: domain, "")}, or C{(None, why not)} when the From: fields
    name no domain or several (RFC 7489 6.6.1).
    """
    domains = {address.rpartition("@")[2].lower().rstrip(".")
               for _, address in getaddresses(list(senders)) if "@" in address}
    domains.discard("")
    if not domains:
        return None, "no From: address"
    if len(domains) > 1:
        return None, "From: names several domains"
    return domains.pop(), ""


class DMARCFilter:
    """
    @param verifier: the shared L{mailsrv.policy.dkimverify.Verifier}.
    @param resolver: the L{mailsrv.dns.Resolver} for policy records.
    @param actions: C{{outcome: Action}}: pass, fail (under p=none), none,
        permerror, temperror, reject, quarantine.
    @param receiver: our host name (SPF's).
    @param spf_timeout: seconds for SPF when this check evaluates it.
    @param trusted_sealers: domains whose ARC seal (RFC 8617 7.2) turns a
        failure into the pass outcome: mailing lists and forwarders the
        admin trusts to have checked the mail before they changed it.
    @param sample: a function giving a number in [0, 1): which failures
        fall within C{pct=}.
    """

    def __init__(self, verifier, resolver, actions, receiver, spf_timeout=20,
                 trusted_sealers=(), sample=random.random):
        self.verifier = verifier
        self.trusted_sealers = frozenset(trusted_sealers)
        self.resolver = resolver
        self.actions = actions
        self.receiver = receiver
        self.spf_timeout = spf_timeout
        self.sample = sample

    @defer.inlineCallbacks
    def check(self, session, transaction, message):
        verified = yield self.verifier.verify(message)
        dkim = verified.results()
        author, problem = author_domain(verified.senders)
        if author is None:
            return self._found("permerror", "permerror", None, dkim, problem)
        try:
            record = yield self._record(author)
        except TemporaryDNSError as e:
            return self._found("temperror", "temperror", author, dkim, str(e))
        if record is None:
            return self._found("none", "none", author, dkim)
        spf_result, spf_domain, spf = yield self._spf(session, transaction)
        dkim_aligned = [d for d in verified.passed() if aligned(d, author, record["adkim"])]
        spf_aligned = spf_result == "pass" and aligned(spf_domain, author, record["aspf"])
        known = dkim + spf
        if dkim_aligned or spf_aligned:
            how = "dkim" if dkim_aligned else "spf"
            return self._found("pass", "pass", author, known, f"aligned {how}",
                               policy=record["p"])
        policy = record["p"] if organizational_domain(author) == author else record["sp"]
        if policy != "none" and self.sample() * 100 >= record["pct"]:
            policy = _WEAKER[policy]  # outside pct=
        if policy != "none" and self._trusts(verified.sealer):
            return self._found("fail", "pass", author, known,
                               f"overridden: ARC sealed by {verified.sealer}", policy=policy)
        outcome = "fail" if policy == "none" else policy
        return self._found("fail", outcome, author, known, "no aligned pass", policy=policy)

    def _trusts(self, sealer):
        """Whether C{sealer} (a passing chain's newest sealer) or a parent domain is trusted."""
        labels = sealer.split(".") if sealer else []
        return any(".".join(labels[i:]) in self.trusted_sealers for i in range(len(labels)))

    @defer.inlineCallbacks
    def _record(self, author):
        """The policy record of C{author}, else of its organisational domain, else None."""
        names = [author]
        organisation = organizational_domain(author)
        if organisation != author:
            names.append(organisation)
        for name in names:
            records = [r for r in (yield self.resolver.txt(f"_dmarc.{name}"))
                       if r.lstrip().startswith("v=DMARC1")]
            if len(records) == 1:  # (several: as none, RFC 7489 6.6.3)
                return parse_record(records[0])
        return None

    @defer.inlineCallbacks
    def _spf(self, session, transaction):
        """
        C{(SPF result, the domain it was for, results to report)}: the one
        the judgement holds, else evaluated now (and reported).
        """
        helo = session.helo or ""
        sender = transaction.sender
        domain = (sender.rpartition("@")[2] if sender else helo).lower().rstrip(".")
        recorded = [r for r in transaction.judgement.results if r.method == "spf"]
        if recorded:
            return recorded[0].result, domain, ()
        result, _ = yield spfeval.evaluate(session.ip, sender, helo, self.receiver,
                                           self.spf_timeout)
        return result, domain, (AuthResult("spf", result, (spfeval.identity(sender, helo),)),)

    def _found(self, result, outcome, author, known, why="", policy=None):
        comment = f"p={policy}" if policy else ""
        if why and result != "pass":
            comment = f"{comment} {why}".strip()
        properties = (("header.from", author),) if author else ()
        results = (*known, AuthResult("dmarc", result, properties, comment))
        reason = f"dmarc {result}" + (f" p={policy}" if result == "fail" else "")
        if result == "fail" and outcome == "pass":
            reason += " arc-override"
        spam = outcome in ("reject", "quarantine")
        return Verdict.found(spam, self.actions[outcome], (reason,), results=results)
