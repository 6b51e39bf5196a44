"""
DNS blacklists ([antispam.dnsbl]): is the connecting IP (or an IP that
our trusted hosts received the message from) listed? And, for the lists
that look up names (RHSBL, C{lookup = "sender"} or C{"helo"}), the
sender's domain or the HELO name?

The client's address, reversed (octets for IPv4, nibbles for IPv6), or
the name, is looked up as an A record under each list's zone, all lists
at once. An answer in 127.255.255.0/24 is the list refusing the query
(for example "you query too much through a public resolver"): an error,
not a hit. A timeout or SERVFAIL skips the list and is logged: the filter
fails open.
"""

import ipaddress
import re
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv.address import domain_of
from mailsrv.policy.actions import combine
from mailsrv.policy.failopen import skip_on_failure
from mailsrv.policy.verdict import Verdict

log = Logger()

_REFUSED = ipaddress.ip_network("127.255.255.0/24")
# A label of a name an RHSBL is asked about (underscores occur in mail names).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


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
    @ivar lookup: "ip" (the client's address), "sender" (the sender's
        domain) or "helo" (the HELO name).
    """

    zone: str
    name: str
    server: tuple
    kind: str
    codes: tuple
    action: object
    lookup: str = "ip"

    def query_name(self, ip):
        """C{1.2.0.192.zone} for 192.0.2.1; 32 nibbles for IPv6."""
        address = ipaddress.ip_address(ip)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        reversed_ip = address.reverse_pointer.rpartition(
            ".in-addr.arpa" if address.version == 4 else ".ip6.arpa")[0]
        return f"{reversed_ip}.{self.zone}"

    def name_query(self, name):
        """
        C{spam.example.zone} for the name spam.example (RHSBL).

        @raise ValueError: no domain name (an address literal, one label,
            a name too long to look up under the zone).
        """
        name = name.strip().rstrip(".").lower()
        labels = name.split(".")
        query = f"{name}.{self.zone}"
        if (len(labels) < 2 or not all(_LABEL.match(label) for label in labels)
                or len(query) > 253):
            raise ValueError(f"{name!r} is not a domain name")
        return query

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
        """The client's IP, and the names the RHSBLs look up (the sender's domain, the HELO)."""
        subjects = {"ip": session.ip, "sender": domain_of(sender) if sender else "",
                    "helo": session.helo or ""}
        return self._check([(bl, subjects[bl.lookup]) for bl in self.lists])

    def check_received(self, ip):
        """An IP from a Received header (L{mailsrv.policy.checks.received})."""
        return self._check([(bl, ip) for bl in self.lists if bl.lookup == "ip"], received=True)

    def _check(self, asked, received=False):
        """
        @param asked: C{(list, what it looks up)} pairs.
        @param received: whether the IP is from a Received header (the
            reasons and headers say so).
        @return: a Deferred L{Verdict} with its finding.
        """
        d = defer.gatherResults([self._lookup(bl, subject) for bl, subject in asked])
        return d.addCallback(self._judge, asked, received)

    def _lookup(self, bl, subject):
        try:
            name = bl.query_name(subject) if bl.lookup == "ip" else bl.name_query(subject)
        except ValueError:
            return defer.succeed(None)  # nothing to look up (a UNIX socket, HELO [192.0.2.1])
        d = self.resolvers(bl).query(name, "A")
        d.addCallback(bl.classify)
        return skip_on_failure(d, self.timeout, self.clock, "dnsbl", bl.name, name)

    def _judge(self, lookups, asked, received):
        trusted, counted, reasons, headers = [], [], [], []
        for (bl, subject), found in zip(asked, lookups):
            if found is None:  # skipped
                continue
            outcome, code = found
            if outcome == "refused":
                log.warn("dnsbl {name} refused the query for {subject} with {code}",
                         name=bl.name, subject=subject, code=code)
            if outcome != "hit":
                continue
            if received:
                what, where = f" received {subject}", ", from a Received header"
            elif bl.lookup == "ip":
                what, where = "", ""
            else:
                what, where = f" {bl.lookup} {subject}", f", the {bl.lookup} name"
            reasons.append(f"dnsbl {bl.name} {code}{what}")
            if bl.action.kind != "none":
                headers.append(("X-Mailsrv-DNSBL",
                                f"{subject} listed in {bl.name} ({code}){where}"))
            (trusted if bl.kind == "trusted" else counted).append(bl.action)
        return Verdict.found(bool(trusted), combine(trusted), reasons, headers, counted)
