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
    The lists and the validation tests (L{mailsrv.filters.validation}),
    which share one count: standard-list hits and failed tests add up, and
    the message is spam when the count reaches C{threshold}; one hit on a
    trusted list is enough alone.

    @param lists: L{DNSBL}s.
    @param threshold: the count that makes a message spam.
    @param resolvers: a function from a list to its L{mailsrv.dns.Resolver}.
    @param timeout: seconds before a list or a test is skipped.
    @param clock: for the timeout.
    @param tests: validation tests: C{name}, C{action}, and
        C{check(session)} giving a Deferred of L{None} (passed) or of what
        failed.
    """

    def __init__(self, lists, threshold, resolvers, timeout, clock, tests=()):
        self.lists = tuple(lists)
        self.threshold = threshold
        self.resolvers = resolvers
        self.timeout = timeout
        self.clock = clock
        self.tests = tuple(tests)

    def check(self, session, transaction):
        lookups = defer.gatherResults([self._lookup(bl, session.ip) for bl in self.lists])
        tests = defer.gatherResults([self._test(test, session) for test in self.tests])
        d = defer.gatherResults([lookups, tests])
        return d.addCallback(self._judge, session.ip)

    def _lookup(self, bl, ip):
        try:
            name = bl.query_name(ip)
        except ValueError:
            return defer.succeed(None)  # not an IP (a UNIX socket): nothing to look up
        d = self.resolvers(bl).query(name, "A")
        d.addTimeout(self.timeout, self.clock)
        d.addCallback(bl.classify)
        return d.addErrback(self._failed, "dnsbl", bl.name, name)

    def _test(self, test, session):
        d = defer.maybeDeferred(test.check, session)
        d.addTimeout(self.timeout, self.clock)
        return d.addErrback(self._failed, "validation", test.name, session.ip)

    def _failed(self, failure, kind, name, subject):
        """A timeout or a DNS failure skips the list or test (fail open)."""
        failure.trap(dns.TemporaryDNSError, defer.TimeoutError)
        if failure.check(defer.TimeoutError):
            error = f"no answer in {self.timeout:g}s"
        else:
            error = failure.getErrorMessage()
        log.info("{kind} {name} skipped: {subject}: {error}",
                 kind=kind, name=name, subject=subject, error=error)
        return None

    def _judge(self, outcomes, ip):
        lookups, failures = outcomes
        trusted, counted, reasons, headers = [], [], [], []
        for bl, found in zip(self.lists, lookups):
            if found is None:  # skipped
                continue
            outcome, code = found
            if outcome == "refused":
                log.warn("dnsbl {name} refused the query for {ip} with {code}",
                         name=bl.name, ip=ip, code=code)
            if outcome != "hit":
                continue
            reasons.append(f"dnsbl {bl.name} {code}")
            headers.append(("X-Mailsrv-DNSBL", f"{ip} listed in {bl.name} ({code})"))
            (trusted if bl.kind == "trusted" else counted).append(bl)
        for test, failure in zip(self.tests, failures):
            if failure is not None:
                reasons.append(f"validation {test.name}")
                headers.append(("X-Mailsrv-Validation", failure))
                counted.append(test)
        reached = len(counted) >= self.threshold
        if not (trusted or reached):
            if counted:
                reasons.append(f"count below threshold {len(counted)}/{self.threshold}")
            return FilterResult(False, NONE, tuple(reasons), tuple(headers))
        action = combine(check.action for check in trusted + (counted if reached else []))
        if action.kind == "none":
            headers = []
        return FilterResult(True, action, tuple(reasons), tuple(headers))
