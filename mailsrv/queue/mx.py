"""
MX routing (RFC 5321 5.1, RFC 7505): the addresses that take mail for a
domain, best first, from the project's resolver (mailsrv/dns.py).
"""

import random as _random
from dataclasses import dataclass

from twisted.internet import defer

from mailsrv.config import OutboundTLS
from mailsrv.dns import TemporaryDNSError
from mailsrv.queue.client import Hop
from mailsrv.queue.courier import PERMANENT, TEMPORARY


class NoRoute(Exception):
    """
    No host to try for a domain.

    @ivar status: L{TEMPORARY} (a DNS failure) or L{PERMANENT}.
    @ivar code: the reply code to record (-1: none, RFC 7505's 556).
    @ivar text: what went wrong, with an enhanced status code.
    """

    def __init__(self, status, code, text):
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


@dataclass(frozen=True)
class MXLookup:
    """
    A next hop that is a mail domain: its MX hosts (or its own addresses),
    each on C{port} with the C{outbound} TLS policy.

    @ivar relay: the config names the domain (C{"mx:domain"}); it is not
        the recipient's own.
    """

    domain: str
    port: int
    outbound: OutboundTLS = OutboundTLS()
    relay: bool = False


def order_exchanges(records, random=_random.random):
    """
    MX records C{(preference, host)} -> hosts, lowest preference first and
    in random order among equal preferences (RFC 5321 5.1).
    """
    return [host for _, _, host in sorted((pref, random(), host) for pref, host in records)]


@defer.inlineCallbacks
def mx_route(resolver, domain, port, random=_random.random, outbound=OutboundTLS()):
    """
    @param resolver: a L{mailsrv.dns.Resolver}.
    @param outbound: the L{OutboundTLS} policy of every hop.
    @return: a Deferred of a tuple of L{Hop}s to try in order, each an
        address of an exchange (named for certificate checks); it fails
        with L{NoRoute}.
    """
    try:
        records = yield resolver.mx(domain)
    except TemporaryDNSError as e:
        raise NoRoute(TEMPORARY, -1, f"4.4.3 MX lookup failed: {e}")
    exchanges = [(pref, host) for pref, host in records if host]  # "": a null MX
    if records and not exchanges:
        raise NoRoute(PERMANENT, 556, f"5.1.10 {domain} does not accept mail (null MX)")
    hosts = order_exchanges(exchanges, random) if records else [domain]
    route, errors = [], []
    for host in hosts:
        try:
            addresses = yield resolver.addresses(host)
        except TemporaryDNSError as e:
            errors.append(str(e))
            continue
        route.extend(Hop(address, port, host, outbound) for address in addresses)
    if route:
        return tuple(route)
    if errors:
        raise NoRoute(TEMPORARY, -1, f"4.4.3 address lookup failed: {errors[0]}")
    if not records:
        raise NoRoute(PERMANENT, -1, f"5.1.2 {domain} has no MX or address record")
    raise NoRoute(TEMPORARY, -1, f"4.4.4 no MX host of {domain} has an address")


@defer.inlineCallbacks
def mx_hops(resolver, lookup, random=_random.random):
    """
    The hops of an L{MXLookup}, as L{mx_route}, except that a relay domain
    the config names with no host to try is a temporary failure: the
    config is wrong, not the recipient's address, and the mail waits for
    the admin to fix it instead of bouncing (as Postfix defers mail when
    its relayhost does not resolve).
    """
    try:
        return (yield mx_route(resolver, lookup.domain, lookup.port, random,
                               lookup.outbound))
    except NoRoute as e:
        if lookup.relay and e.status == PERMANENT:
            raise NoRoute(TEMPORARY, -1,
                          f"4.4.4 next hop mx:{lookup.domain}: {e.text.partition(' ')[2]}")
        raise
