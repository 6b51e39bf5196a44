"""
IP lists as admins write them: single addresses, CIDR (C{10.0.0.0/8}),
address/netmask (C{10.1.0.0/255.255.0.0}), ranges (C{192.168.0.1-50},
C{192.168.0.1-192.168.1.20}), IPv6 forms, host names, and domains
(C{.example.com} or C{*.example.com}: clients whose forward-confirmed
reverse DNS name ends in that domain), and C{self}: every address of
this machine (L{own_addresses}), so that an admin need not list them.

Names are looked up through L{mailsrv.dns} (cached for their TTL).
L{IPList.contains} answers from what is known now and never waits;
L{IPList.match} looks names up first.
"""

import ipaddress
import re
import socket
import time

import psutil
from twisted.internet import defer
from twisted.logger import Logger

from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines

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


# The entry that stands for every address of this machine.
SELF = "self"
# Seconds the machine's addresses are remembered (an interface may get a
# new address: DHCP, a VPN coming up).
OWN_ADDRESSES_TTL = 60
_own = (0.0, frozenset())


def own_addresses():
    """
    Every address of this machine's interfaces (loopback included), as
    L{normalise_ip} gives them; read again after L{OWN_ADDRESSES_TTL}
    seconds (psutil: getifaddrs, a few microseconds).
    """
    global _own
    expires, addresses = _own
    if time.monotonic() >= expires:
        addresses = frozenset(
            normalise_ip(found.address)
            for interface in psutil.net_if_addrs().values() for found in interface
            if found.family in (socket.AF_INET, socket.AF_INET6))
        _own = (time.monotonic() + OWN_ADDRESSES_TTL, addresses)
    return addresses


def parse_entry(entry):
    """
    Parse one list entry.

    @return: C{("net", network)}, C{("range", first, last)},
        C{("host", name)}, C{("domain", name)} or C{("self",)}.
    @raise ValueError: with the entry named, when it is none of these.
    """
    text = entry.strip()
    if not text:
        raise ValueError("empty entry")
    if text.lower() == SELF:
        return (SELF,)
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
    kind = "host"
    for prefix in ("*.", "."):
        if text.startswith(prefix):
            kind, text = "domain", text[len(prefix):]
            break
    name = text.rstrip(".").lower()
    labels = name.split(".")
    if all(
        label and len(label) < 64 and label.replace("-", "").isalnum()
        for label in labels
    ) and not name.replace(".", "").isdigit():
        return (kind, name)
    raise ValueError(f"not an address, network, range, host name or domain: {entry!r}")


def split_entries(text):
    """Entries on one line: separated by spaces, tabs, commas or semicolons."""
    return [entry for entry in re.split(r"[\s,;]+", text) if entry]


def _is_netmask(text):
    """A dotted IPv4 netmask (C{255.255.255.0}): ones, then zeros."""
    try:
        mask = int(ipaddress.IPv4Address(text))
    except ValueError:
        return False
    host_bits = ~mask & 0xFFFFFFFF
    return mask != 0 and host_bits & (host_bits + 1) == 0


def _join_netmasks(entries):
    """
    C{192.168.1.0 255.255.255.0} (IMail's spamskip.txt form) is one network,
    C{192.168.1.0/255.255.255.0}, not two addresses.
    """
    joined = []
    for entry in entries:
        if joined and "/" not in joined[-1] and _is_netmask(entry):
            try:
                ipaddress.IPv4Address(joined[-1])
            except ValueError:
                pass
            else:
                joined[-1] += "/" + entry
                continue
        joined.append(entry)
    return joined


def read_entries(path):
    """
    The entries of a list file, each checked; an IPv4 address followed by
    a netmask is one entry.

    @return: a list of entry strings.
    @raise ListFileError: naming the file, line and entry of the first bad one.
    """
    entries = []
    for lineno, text in read_lines(path):
        for entry in _join_netmasks(split_entries(text)):
            try:
                parse_entry(entry)
            except ValueError as e:
                raise ListFileError(path, lineno, str(e))
            entries.append(entry)
    return entries


class IPList:
    """
    A set of addresses built from list entries.

    @param resolver: a L{mailsrv.dns.Resolver}; needed only when there are
        host names or domains.
    """

    def __init__(self, entries=(), resolver=None):
        self.resolver = resolver
        self._nets = []
        self._ranges = []
        self._hosts = {}  # name -> frozenset of addresses, as last looked up
        self._domains = []
        self._own = False
        for entry in entries:
            kind, *value = parse_entry(entry)
            if kind == SELF:
                self._own = True
            elif kind == "net":
                self._nets.append(value[0])
            elif kind == "range":
                self._ranges.append(tuple(value))
            elif kind == "host":
                self._hosts[value[0]] = frozenset()
            else:
                self._domains.append(value[0])
        if (self._hosts or self._domains) and resolver is None:
            raise ValueError("host names and domains need a resolver")

    def __bool__(self):
        return bool(self._own or self._nets or self._ranges or self._hosts or self._domains)

    def __len__(self):
        return (self._own + len(self._nets) + len(self._ranges) + len(self._hosts)
                + len(self._domains))

    def contains(self, ip):
        """Whether C{ip} is listed by address, or by a host name as last looked up."""
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
        if self._own and address in own_addresses():
            return True
        return any(address in addresses for addresses in self._hosts.values())

    @defer.inlineCallbacks
    def match(self, ip):
        """
        Whether C{ip} is listed, host names looked up again when their TTL
        has run out, and domains checked against the forward-confirmed
        reverse DNS names of C{ip}.

        @return: a Deferred of a bool; it fails with
            L{mailsrv.dns.TemporaryDNSError} when only a failed lookup could
            have matched.
        """
        yield self.resolve()
        if self.contains(ip) or not self._domains:
            return self.contains(ip)
        try:
            address = str(normalise_ip(ip))
        except ValueError:
            return False
        names = yield self.resolver.confirmed_names(address)
        return any(name.endswith("." + domain) for name in names for domain in self._domains)

    def resolve(self):
        """
        Look the host names up (answers come from the resolver's cache while
        their TTL runs); a name that does not resolve now keeps its last
        addresses, and is logged.

        @return: a Deferred that fires when every name has been tried.
        """
        return defer.DeferredList(
            [
                self.resolver.addresses(name).addCallbacks(
                    self._resolved, self._unresolved, (name,), None, (name,)
                )
                for name in self._hosts
            ]
        )

    def _resolved(self, addresses, name):
        if not addresses:
            log.warn("IP list: {name} has no address", name=name)
        self._hosts[name] = frozenset(normalise_ip(a) for a in addresses)

    def _unresolved(self, failure, name):
        log.warn("IP list: cannot resolve {name}: {error}", name=name,
                 error=failure.getErrorMessage())


class ListedClients:
    """
    Entries from the config plus an optional list file, which is re-read
    when it changes so that an admin's edit holds for the next connection.
    """

    def __init__(self, entries, path, resolver, clock):
        self._entries = tuple(entries)
        self._resolver = resolver
        self._file = WatchedFile(path, read_entries, clock) if path is not None else None
        self._built_from = None
        self._list = IPList(self._entries, resolver)

    def __bool__(self):
        return bool(self._entries) or self._file is not None

    def current(self):
        if self._file is not None:
            from_file = self._file.get()
            if from_file is not self._built_from:
                self._list = IPList(self._entries + tuple(from_file), self._resolver)
                self._built_from = from_file
        return self._list

    def match(self, ip):
        return self.current().match(ip)

    def resolve(self):
        return self.current().resolve()


def peer_ip(address):
    """
    The IP of a peer address as lists and logs use it: IPv4-mapped IPv6
    folded to IPv4; a non-IP host (a UNIX socket) as it is.
    """
    host = getattr(address, "host", "")
    try:
        return str(normalise_ip(host))
    except ValueError:
        return host
