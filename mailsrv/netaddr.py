"""
IP lists as admins write them: single addresses, CIDR (C{10.0.0.0/8}),
address/netmask (C{10.1.0.0/255.255.0.0}), ranges (C{192.168.0.1-50},
C{192.168.0.1-192.168.1.20}), IPv6 forms, and host names.

Host names are resolved off the reactor thread and cached; L{IPList.contains}
answers from what is known now, so it never blocks.
"""

import ipaddress
import socket

from twisted.internet import defer, threads
from twisted.logger import Logger

log = Logger()


def normalise_ip(ip):
    """
    An L{ipaddress} object for C{ip}, with IPv4-mapped IPv6 (C{::ffff:a.b.c.d})
    folded to IPv4 so that lists and session windows treat both alike.
    """
    address = ipaddress.ip_address(ip.split("%", 1)[0] if isinstance(ip, str) else ip)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(ip):
    try:
        return normalise_ip(ip).is_loopback
    except ValueError:
        return False


def _range(first, last, entry):
    if first.version != last.version or int(last) < int(first):
        raise ValueError(f"bad range {entry!r}: the end is before the start")
    return ("range", first, last)


def parse_entry(entry):
    """
    Parse one list entry.

    @return: C{("net", network)}, C{("range", first, last)} or
        C{("host", name)}.
    @raise ValueError: with the entry named, when it is none of these.
    """
    text = entry.strip()
    if not text:
        raise ValueError("empty entry")
    if "/" in text:
        address, _, mask = text.partition("/")
        try:
            if "." in mask and ":" not in address:  # address/netmask
                return ("net", ipaddress.ip_network(f"{address}/{mask}", strict=False))
            return ("net", ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"bad network {entry!r}")
    if "-" in text and not text[0].isalpha():
        start, _, end = text.partition("-")
        try:
            first = ipaddress.ip_address(start)
        except ValueError:
            raise ValueError(f"bad range {entry!r}")
        try:
            last = ipaddress.ip_address(end)
        except ValueError:
            # 192.168.0.1-50: the end replaces the last part of the start
            separator = "." if first.version == 4 else ":"
            head = start.rsplit(separator, 1)[0]
            try:
                last = ipaddress.ip_address(f"{head}{separator}{end}")
            except ValueError:
                raise ValueError(f"bad range {entry!r}")
        return _range(first, last, entry)
    try:
        return ("net", ipaddress.ip_network(text))
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if all(
        label and len(label) < 64 and label.replace("-", "").isalnum()
        for label in labels
    ) and not name.replace(".", "").isdigit():
        return ("host", name)
    raise ValueError(f"not an address, network, range or host name: {entry!r}")


class IPList:
    """
    A set of addresses built from list entries.
    """

    def __init__(self, entries=()):
        self._nets = []
        self._ranges = []
        self._hosts = {}  # name -> frozenset of addresses, filled by resolve()
        for entry in entries:
            kind, *value = parse_entry(entry)
            if kind == "net":
                self._nets.append(value[0])
            elif kind == "range":
                self._ranges.append(tuple(value))
            else:
                self._hosts[value[0]] = frozenset()

    def __bool__(self):
        return bool(self._nets or self._ranges or self._hosts)

    def contains(self, ip):
        try:
            address = normalise_ip(ip)
        except ValueError:
            return False
        for net in self._nets:
            if address.version == net.version and address in net:
                return True
        for first, last in self._ranges:
            if address.version == first.version and first <= address <= last:
                return True
        return any(address in addresses for addresses in self._hosts.values())

    def resolve(self):
        """
        Look up the host names in a thread; a name that does not resolve is
        logged and matches nothing.

        @return: a Deferred that fires when every name has been tried.
        """
        return defer.DeferredList(
            [
                threads.deferToThread(_addresses_of, name).addCallbacks(
                    self._resolved, self._unresolved, (name,), None, (name,)
                )
                for name in self._hosts
            ]
        )

    def _resolved(self, addresses, name):
        self._hosts[name] = addresses

    def _unresolved(self, failure, name):
        log.warn("IP list: cannot resolve {name}: {error}", name=name,
                 error=failure.getErrorMessage())


def _addresses_of(name):
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return frozenset(normalise_ip(info[4][0]) for info in infos)
