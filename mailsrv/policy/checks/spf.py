"""
SPF ([antispam.spf], RFC 7208): may the client send for the MAIL FROM
domain (or, for the null sender, for its HELO name)?

pyspf does the work, blocking, so it runs in the thread pool (a few
checks at a time, so that slow domains cannot take every thread). It does
its DNS through its module-level C{DNSLookup} function, which
L{install_lookup} replaces once at start (service.build_mail_server, the
one place that sets process-wide state) with one that asks our [dns]
servers, port and timeout. RFC 7208's limits (10 DNS-querying mechanisms,
2 void lookups) are pyspf's module limits; the config may lower them.
"""

import dns.exception
import dns.resolver
import spf
from twisted.internet import defer, threads

from mailsrv.dns import dnspython_resolver
from mailsrv.policy.verdict import Verdict

SPAM_RESULTS = frozenset({"fail", "softfail"})
MAX_CONCURRENT = 4


def install_lookup(dns_settings, max_lookups, max_void_lookups):
    """
    Point pyspf's DNS at C{[dns]} and set its limits (process-wide, as
    pyspf's are; called once, by service.build_mail_server).
    """
    resolver = dnspython_resolver(dns_settings.servers, dns_settings.timeout)

    def lookup(name, qtype, strict=True, timeout=30):
        try:
            answer = resolver.resolve(name, qtype, lifetime=min(timeout, resolver.lifetime),
                                      search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as e:
            raise spf.TempError(f"DNS {e}")
        return [((name, qtype), _value(qtype, rdata)) for rdata in answer]

    spf.DNSLookup = lookup
    spf.MAX_LOOKUP = max_lookups
    spf.MAX_VOID_LOOKUPS = max_void_lookups


def _value(qtype, rdata):
    """What pyspf expects of each record type (as its own dnspython lookup gives)."""
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return rdata.preference, rdata.exchange
    if qtype == "PTR":
        return rdata.target.to_text(True)
    return rdata.strings


class SPFFilter:
    """
    @param actions: a function from an SPF result to its
        L{mailsrv.policy.actions.Action}.
    @param receiver: our host name, for the Received-SPF header.
    @param timeout: seconds for the whole check (RFC 7208 4.6.4 says 20).
    """

    def __init__(self, actions, receiver, timeout):
        self.actions = actions
        self.receiver = receiver
        self.timeout = timeout
        self._limit = defer.DeferredSemaphore(MAX_CONCURRENT)

    def check(self, session, transaction, sender):
        d = self._limit.run(threads.deferToThread, self._query, session.ip,
                            transaction.sender, session.helo or "")
        return d.addCallback(self._judge)

    def _query(self, ip, sender, helo):
        """In a thread: C{(result, Received-SPF value)}."""
        query = spf.query(ip, sender, helo, receiver=self.receiver,
                          timeout=self.timeout, querytime=self.timeout)
        result = query.check()[0]
        return result, query.get_header(result, self.receiver)

    def _judge(self, outcome):
        result, header = outcome
        return Verdict.found(result in SPAM_RESULTS, self.actions(result), (f"spf {result}",),
                             (("Received-SPF", header),))

