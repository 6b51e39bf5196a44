"""
SPF evaluation (RFC 7208), shared by [antispam.spf] and [antispam.dmarc]
(which needs the SPF result of the MAIL FROM domain when no [antispam.spf]
section reported one).

pyspf does the work, blocking, so it runs in the thread pool (a few
queries at a time, so that slow domains cannot take every thread). It does
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

MAX_CONCURRENT = 4
_limit = defer.DeferredSemaphore(MAX_CONCURRENT)


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


def identity(sender, helo):
    """The RFC 8601 property of what SPF checks: the MAIL FROM, else the HELO name."""
    return ("smtp.mailfrom", sender) if sender else ("smtp.helo", helo)


def evaluate(ip, sender, helo, receiver, timeout):
    """
    A Deferred of C{(result, Received-SPF value)} for a client at C{ip}
    sending as C{sender} ("" for the null sender: its HELO name is checked)
    after C{helo}; C{receiver} is our host name, C{timeout} the seconds the
    whole check may take (then the result is temperror).
    """
    return _limit.run(threads.deferToThread, _query, ip, sender, helo, receiver, timeout)


def _query(ip, sender, helo, receiver, timeout):
    query = spf.query(ip, sender, helo, receiver=receiver, timeout=timeout, querytime=timeout)
    result = query.check()[0]
    return result, query.get_header(result, receiver)
