"""
Where mail for a remote recipient goes, from [delivery] settings: the
per-domain transport if one is set, else the smart hosts, else the
recipient domain's MX hosts. A route is a tuple of next hops tried in order
(docs/queue.md, "Routes and failover"): L{Hop}s, and L{MXLookup}s that the
runner turns into hops when it reaches them.
"""

from mailsrv.address import domain_of
from mailsrv.queue.client import Hop
from mailsrv.queue.mx import MXLookup


def route_for(address, delivery):
    """
    @param address: the recipient address.
    @param delivery: the L{mailsrv.config.DeliverySettings}.
    @return: a tuple of L{Hop}s and L{MXLookup}s to try in order.
    """
    domain = domain_of(address)
    hops = delivery.smart_hosts
    for transport_domain, transport in delivery.transports:
        if transport_domain == domain:
            hops = transport
            break
    if not hops:
        return (MXLookup(domain, delivery.mx_port, delivery.outbound),)
    return tuple(_route_entry(hop, domain) for hop in hops)


def _route_entry(hop, domain):
    """A L{mailsrv.config.NextHop} for mail to C{domain}, as a route entry."""
    if not hop.mx:
        return Hop(hop.host, hop.port, hop.host, hop.outbound)
    if hop.host:
        return MXLookup(hop.host, hop.port, hop.outbound, relay=True)
    return MXLookup(domain, hop.port, hop.outbound)


def group_by_route(recipients, delivery):
    """
    Split recipients by route so that each destination gets one connection
    carrying all of its recipients; MX routes of the recipients' own domains
    are split by domain.

    @param recipients: objects with an C{address}.
    @return: a dict of route -> list of recipients, in first-seen order.
    """
    groups = {}
    for recipient in recipients:
        groups.setdefault(route_for(recipient.address, delivery), []).append(recipient)
    return groups
