"""
DNS blacklists ([antispam.dnsbl]): is the connecting IP listed?

The client's address, reversed (octets for IPv4, nibbles for IPv6), is
looked up as an A record under each list's zone, all lists at once. An
answer in 127.255.255.0/24 is the list refusing the query (for example
"you query too much through a public resolver"): an error, not a hit. A
timeout or SERVFAIL skips the list and is logged: the filter fails open.
"""

import ipaddress
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv import dns
from mailsrv.filters.actions import NONE, FilterResult, combine

log = Logger()

_REFUSED = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class DNSBL:
    """
    One list.

    @ivar name: for headers and the log (default: the zone).
    @ivar server: C{(host, port)} of the list's own server, or L{None}.
    @ivar kind: "standard" (hits add up to the threshold) or "trusted"
        (one hit is enough).
    @ivar codes: the answers that count as listed; empty: any 127.0.0.0/8.
    @ivar action: an L{mailsrv.filters.actions.Action}.
    """

    zone: str
    name: str
    server: tuple
    kind: str
    codes: tuple
    action: object

    def query_name(self, ip):
        """C{1.2.0.192.zone} for 192.0.2.1; 32 nibbles for IPv6."""
        address = ipaddress.ip_address(ip)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        reversed_ip = address.reverse_pointer.rpartition(
            ".in-addr.arpa" if address.version == 4 else ".ip6.arpa")[0]
        return f"{reversed_ip}.{self.zone}"

    def classify(self, records):
        """
        @return: C{("hit", code)}, C{("refused", code)} or C{("clear", "")}.
        """
        for record in records:
            code = ipaddress.ip_address(record)
            if code in _REFUSED:
                return "refused", record
        for record in records:
            if (record in self.codes if self.codes
                    else ipaddress.ip_address(record) in ipaddress.ip_network("127.0.0.0/8")):
                return "hit", record
        return "clear", ""


class DNSBLFilter:
    """
    @param lists: L{DNSBL}s.
    @param threshold: standard hits (with failed validation tests) that
        make a message spam.
    @param resolvers: a function from a list to its L{mailsrv.dns.Resolver}.
    @param timeout: seconds before a list is skipped.
    @param clock: for the timeout.
    """

    def __init__(self, lists, threshold, resolvers, timeout, clock):
        self.lists = tuple(lists)
        self.threshold = threshold
        self.resolvers = resolvers
        self.timeout = timeout
        self.clock = clock

    def check(self, session, transaction):
        lookups = [self._lookup(bl, session.ip) for bl in self.lists]
        d = defer.gatherResults(lookups)
        return d.addCallback(self._judge, session.ip)

    def _lookup(self, bl, ip):
        try:
            name = bl.query_name(ip)
        except ValueError:
            return defer.succeed(("skipped", f"not an IP: {ip}"))
        d = self.resolvers(bl).query(name, "A")
        d.addTimeout(self.timeout, self.clock)
        d.addCallback(bl.classify)
        d.addErrback(self._failed, bl, name)
        return d

    def _failed(self, failure, bl, name):
        failure.trap(dns.TemporaryDNSError, defer.TimeoutError)
        if failure.check(defer.TimeoutError):
            error = f"no answer in {self.timeout:g}s"
        else:
            error = failure.getErrorMessage()
        log.info("dnsbl {name} skipped: {query}: {error}", name=bl.name, query=name, error=error)
        return "skipped", ""

    def _judge(self, outcomes, ip):
        trusted, standard, reasons, headers = [], [], [], []
        for bl, (outcome, code) in zip(self.lists, outcomes):
            if outcome == "refused":
                log.warn("dnsbl {name} refused the query for {ip} with {code}",
                         name=bl.name, ip=ip, code=code)
            if outcome != "hit":
                continue
            reasons.append(f"dnsbl {bl.name} {code}")
            headers.append(("X-Mailsrv-DNSBL", f"{ip} listed in {bl.name} ({code})"))
            (trusted if bl.kind == "trusted" else standard).append(bl)
        spam = bool(trusted) or len(standard) >= self.threshold
        if not spam:
            if standard:
                reasons.append(f"dnsbl below threshold {len(standard)}/{self.threshold}")
            return FilterResult(False, NONE, tuple(reasons), tuple(headers))
        hits = trusted + (standard if len(standard) >= self.threshold else [])
        action = combine(bl.action for bl in hits)
        if action.kind == "none":
            headers = []
        return FilterResult(True, action, tuple(reasons), tuple(headers))
