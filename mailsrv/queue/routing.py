"""
Where mail for a remote recipient goes, from [delivery] settings: the
per-domain transport if one is set, else the smart hosts (in preference
order), else MX lookup. A route is a tuple of L{Hop}s to try in order, or
L{MX}.
"""

from mailsrv.address import domain_of
from mailsrv.queue.client import Hop

MX = "mx"


def parse_host_port(text, default_port=25):
    """C{"host:port"}, C{"[::1]:25"} or a bare host -> C{(host, port)}."""
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":") or not port.isdigit():
        return text.strip("[]"), default_port
    return host.strip("[]"), int(port)


def route_for(address, delivery):
    """
    @param address: the recipient address.
    @param delivery: the L{mailsrv.config.DeliverySettings}.
    @return: a tuple of L{Hop}s to try in order, or L{MX}.
    """
    domain = domain_of(address)
    for transport_domain, target in delivery.transports:
        if transport_domain == domain:
            if target == MX:
                return MX
            host, port = parse_host_port(target)
            return (Hop(host, port, host, delivery.outbound),)
    if delivery.smart_hosts:
        return tuple(Hop(h.host, h.port, h.host, h.outbound) for h in delivery.smart_hosts)
    return MX


def group_by_route(recipients, delivery):
    """
    Split recipients by route so that each destination gets one connection
    carrying all of its recipients; MX routes are split by domain.

    @param recipients: objects with an C{address}.
    @return: a dict of route (or C{(MX, domain)}) -> list of recipients, in
        first-seen order.
    """
    groups = {}
    for recipient in recipients:
        route = route_for(recipient.address, delivery)
        if route == MX:
            route = (MX, domain_of(recipient.address))
        groups.setdefault(route, []).append(recipient)
    return groups
