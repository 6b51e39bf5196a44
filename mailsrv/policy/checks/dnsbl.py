"""
DNS blacklists ([antispam.dnsbl]): is the connecting IP (or an IP that
our trusted hosts received the message from) listed?

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

from mailsrv.policy.actions import combine
from mailsrv.policy.failopen import skip_on_failure
from mailsrv.policy.verdict import Verdict

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
    @ivar action: an L{mailsrv.policy.actions.Action}.
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
    The lists, looked up in parallel for one IP. One hit on a trusted list
    is enough alone; a hit on a standard list is a counted finding (see
    L{mailsrv.policy.verdict.Finding.counted}). A filter check of the
    sender hook.

    @param lists: L{DNSBL}s.
    @param resolvers: a function from a list to its L{mailsrv.dns.Resolver}.
    @param timeout: seconds before a list is skipped.
    @param clock: for the timeout.
    """

    def __init__(self, lists, resolvers, timeout, clock):
        self.lists = tuple(lists)
        self.resolvers = resolvers
        self.timeout = timeout
        self.clock = clock

    def check(self, session, transaction, sender):
        """The client's IP."""
        return self.check_ip(session.ip)

    def check_received(self, ip):
        """An IP from a Received header (L{mailsrv.policy.checks.received})."""
        return self.check_ip(ip, received=True)

    def check_ip(self, ip, received=False):
        """
        @param received: whether C{ip} is from a Received header (the
            reasons and headers say so).
        @return: a Deferred L{Verdict} with its finding.
        """
        d = defer.gatherResults([self._lookup(bl, ip) for bl in self.lists])
        return d.addCallback(self._judge, ip, received)

    def _lookup(self, bl, ip):
        try:
            name = bl.query_name(ip)
        except ValueError:
            return defer.succeed(None)  # not an IP (a UNIX socket): nothing to look up
        d = self.resolvers(bl).query(name, "A")
        d.addCallback(bl.classify)
        return skip_on_failure(d, self.timeout, self.clock, "dnsbl", bl.name, name)

    def _judge(self, lookups, ip, received):
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
            reasons.append(f"dnsbl {bl.name} {code}" + (f" received {ip}" if received else ""))
            if bl.action.kind != "none":
                headers.append(("X-Mailsrv-DNSBL", f"{ip} listed in {bl.name} ({code})"
                                + (", from a Received header" if received else "")))
            (trusted if bl.kind == "trusted" else counted).append(bl.action)
        return Verdict.found(bool(trusted), combine(trusted), reasons, headers, counted)
