"""
[antispam.dnsbl] received_headers: when mail comes through one of our
trusted hosts (a backup MX, a gateway: [relay] trusted), the client IP the
lists should judge is not the trusted host's but the one it received the
message from. That IP is in the Received header the trusted host added on
top; if it is trusted too, the next header down says where that host got
the message, and so on: the first untrusted IP is looked up.

Received headers below the first untrusted hop were written by hosts we do
not trust, so they are never read.
"""

import re
from email.parser import BytesHeaderParser

from twisted.internet import defer

from mailsrv.dns import TemporaryDNSError
from mailsrv.netaddr import normalise_ip
from mailsrv.policy.verdict import Verdict

# The "from" clause of a Received header: up to " by ".
_FROM = re.compile(r"^\s*from\s+(.*?)(?:\bby\b|;|$)", re.IGNORECASE | re.DOTALL)
# An address literal in it: Postfix "(rdns [192.0.2.1])", Exim "([192.0.2.1]
# helo=x)", ours "([IPv6:2001:db8::1])".
_LITERAL = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")


def received_from(header):
    """
    @param header: a message's header section (bytes).
    @return: for each Received header, top down, the IP in its C{from}
        clause as text, or L{None} where there is none.
    """
    ips = []
    for value in BytesHeaderParser().parsebytes(header).get_all("Received", []):
        clause = _FROM.match(str(value))
        ips.append(_first_address(clause.group(1)) if clause else None)
    return ips


def _first_address(text):
    for literal in _LITERAL.findall(text):
        try:
            return str(normalise_ip(literal))
        except ValueError:
            continue
    return None


class ReceivedIPs:
    """
    A filter check of the header hook: it reads the header section.

    @param trusted: the L{mailsrv.netaddr.ListedClients} of [relay] trusted.
    @param check_ip: a function from an IP to a Deferred
        L{mailsrv.policy.verdict.Verdict} with a finding (the DNS blacklists).
    """

    def __init__(self, trusted, check_ip):
        self.trusted = trusted
        self.check_ip = check_ip

    @defer.inlineCallbacks
    def check(self, session, transaction, header):
        """
        @return: a Deferred L{Verdict}: C{check_ip}'s, or one without a
            finding when the client is not a trusted host or no untrusted
            IP is named.
        """
        if (session.user is not None or not self.trusted
                or not (yield self._trusted(session.ip))):
            return Verdict.accept()
        for ip in received_from(header):
            if ip is None:
                return Verdict.accept()  # a hop we cannot follow
            if not (yield self._trusted(ip)):
                return (yield self.check_ip(ip))
        return Verdict.accept()  # trusted all the way

    def _trusted(self, ip):
        d = self.trusted.match(ip)
        return d.addErrback(lambda f: f.trap(TemporaryDNSError) and False)
