"""
HAProxy's PROXY protocol (v1 text and v2 binary headers) in front of a
[[listen]] table with C{proxy_protocol = true}: a TCP load balancer sends,
before the client's first byte, a header naming the client's address, and
everything after this wrapper (connection limits, connect checks, the
protocols, POP-before-SMTP, login throttling, logs) sees that address.
The specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt

Twisted has a wrapper (twisted.protocols.haproxy) that does not fit: it
starts the wrapped protocol before the header is read (our greeting would
go out first, connection limits and connect checks would see the
balancer's IP), its v2 parser refuses a first read shorter than 16 bytes
and waits for up to 64 KiB, and its v1 parser lets a bad port or a
non-ASCII address escape as ValueError and checks no address. So the
header is parsed here, by L{parse_header}, a pure function.
"""

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import directlyProvides, providedBy

from mailsrv import metrics
from mailsrv.netaddr import peer_ip

log = Logger()

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# The longest v1 header, CRLF included (the specification's 2.1).
V1_MAX = 107
# The longest v2 header taken, TLVs included: the smallest segment every
# TCP stack accepts (RFC 879), the size the specification (2.2) says a
# sender should keep the header in so that it arrives in one read. The
# addresses take at most 16 + 216 bytes; HAProxy's TLVs (ALPN, authority,
# SSL details) fit in the rest.
V2_MAX = 536
# Seconds a trusted balancer has to send the whole header. HAProxy sends it
# with the connection; this covers a few lost segments' retransmissions.
HEADER_TIMEOUT = 10

_V2_LOCAL, _V2_PROXY = 0, 1
_V2_TCP4, _V2_TCP6 = 0x11, 0x21


class BadHeader(Exception):
    """The first bytes are not a PROXY header we take (the text says why)."""


@dataclass(frozen=True)
class ProxyHeader:
    """
    What a header says: the client's address (C{source}) and the address it
    connected to (C{destination}), or L{None} for both when the connection's
    own addresses stand (v1 C{UNKNOWN}, v2 C{LOCAL} from health checks, and
    the v2 families the specification lets a receiver treat as C{UNSPEC}:
    UNIX sockets and datagrams).
    """

    source: Optional[IAddress]
    destination: Optional[IAddress]


_UNSPECIFIED = ProxyHeader(None, None)


def parse_header(data):
    """
    Parse the PROXY header at the start of a connection's bytes.

    @return: L{None} while C{data} may still become a header; then
        C{(ProxyHeader, the bytes after the header)}.
    @raise BadHeader: as soon as C{data} cannot be the start of a header,
        or the header is longer than L{V1_MAX} / L{V2_MAX}.
    """
    for signature, parse in ((V1_SIGNATURE, _parse_v1), (V2_SIGNATURE, _parse_v2)):
        if data.startswith(signature):
            return parse(data)
        if signature.startswith(data):
            return None
    raise BadHeader("no PROXY signature")


def _parse_v1(data):
    """C{PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT\\r\\n} or C{PROXY UNKNOWN ...\\r\\n}."""
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise BadHeader(f"v1 header longer than {V1_MAX} bytes")
        return None
    rest = data[end + 2:]
    words = data[len(V1_SIGNATURE):end].split(b" ")
    if words[0] == b"UNKNOWN":  # (the rest of the line is to be ignored)
        return _UNSPECIFIED, rest
    if words[0] not in (b"TCP4", b"TCP6") or len(words) != 5:
        raise BadHeader("v1 header is not PROXY TCP4|TCP6 SOURCE DEST SPORT DPORT")
    family, source, destination, source_port, destination_port = words
    version = 4 if family == b"TCP4" else 6
    return ProxyHeader(_v1_address(source, source_port, version),
                       _v1_address(destination, destination_port, version)), rest


def _v1_address(host, port, version):
    try:
        address = ipaddress.ip_address(host.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        address = None
    if address is None or address.version != version or b"%" in host:
        raise BadHeader(f"v1 header: bad IPv{version} address")
    # (5 digits at most, decimal: int() alone would take "+1", "1_0" and more)
    if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise BadHeader("v1 header: bad port")
    return _address(address, int(port))


def _parse_v2(data):
    """The 16-byte v2 header, its addresses, and TLVs (which are skipped)."""
    if len(data) < 16:
        return None
    version_command, family = data[12], data[13]
    size = 16 + struct.unpack("!H", data[14:16])[0]
    if version_command >> 4 != 2:
        raise BadHeader("v2 header: version is not 2")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise BadHeader("v2 header: unknown command")
    if size > V2_MAX:
        raise BadHeader(f"v2 header of {size} bytes, longer than {V2_MAX}")
    if len(data) < size:
        return None
    body, rest = data[16:size], data[size:]
    if command == _V2_LOCAL:
        return _UNSPECIFIED, rest
    if family >> 4 > 3 or family & 0x0F > 2:
        raise BadHeader("v2 header: unknown address family or transport")
    if family == _V2_TCP4:
        length = 4
    elif family == _V2_TCP6:
        length = 16
    else:  # UNSPEC, UNIX, datagrams: the connection's own addresses (2.2)
        return _UNSPECIFIED, rest
    if len(body) < 2 * length + 4:
        raise BadHeader("v2 header: address block too short")
    source_port, destination_port = struct.unpack("!HH", body[2 * length:2 * length + 4])
    return ProxyHeader(
        _address(ipaddress.ip_address(body[:length]), source_port),
        _address(ipaddress.ip_address(body[length:2 * length]), destination_port),
    ), rest


def _address(address, port):
    kind = IPv4Address if address.version == 4 else IPv6Address
    return kind("TCP", str(address), port)


class ProxyProtocolFactory(policies.WrappingFactory):
    """
    The outermost factory of a listener with C{proxy_protocol = true}.

    A connection from an address not in C{proxy_from} is closed at once;
    from one that is, nothing starts until the whole header has arrived:
    then the wrapped factory builds its protocol for the header's client,
    whose transport answers C{getPeer} and C{getHost} with the header's
    addresses, and the bytes after the header follow. A bad header, or
    none within L{HEADER_TIMEOUT}, closes the connection. Nothing is
    written back in any case: only the balancer sees it, and the protocol
    behind it has not started.

    @ivar trusted: the L{mailsrv.netaddr.IPList} of C{proxy_from}.
    """

    noisy = False

    def __init__(self, wrapped, trusted, clock, name, timeout=HEADER_TIMEOUT):
        super().__init__(wrapped)
        self.trusted = trusted
        self.clock = clock
        self.name = name
        self.timeout = timeout

    def buildProtocol(self, addr):
        return _ProxiedConnection(self)


class _ProxiedConnection(policies.ProtocolWrapper):
    """
    One connection: waits for the header (L{wrappedProtocol} is L{None}),
    then passes everything through.
    """

    _peer = _host = None
    _deadline = None  # set while the header is awaited
    _buffer = b""

    def __init__(self, factory):
        super().__init__(factory, None)

    def logPrefix(self):
        return super().logPrefix() if self.wrappedProtocol is not None else "PROXY"

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))  # (as ProtocolWrapper does)
        self.transport = transport
        self.connected = 1
        ip = peer_ip(transport.getPeer())
        if not self.factory.trusted.contains(ip):
            self._refuse(log.info, "not in proxy_from")
            return
        self._deadline = self.factory.clock.callLater(self.factory.timeout, self._refuse,
                                                      log.warn, "no PROXY header in time")

    def dataReceived(self, data):
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._deadline is None:  # refused, closing
            return
        self._buffer += data
        try:
            parsed = parse_header(self._buffer)
        except BadHeader as e:
            self._refuse(log.warn, f"bad PROXY header: {e}")
            return
        if parsed is not None:
            self._start(*parsed)

    def _start(self, header, rest):
        self._deadline.cancel()
        self._deadline = None
        self._buffer = b""
        self._peer, self._host = header.source, header.destination
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest:
            protocol.dataReceived(rest)

    def _refuse(self, level, reason):
        """One log line, and close without a word."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._buffer = b""
        level("refused connection from {ip} to {listener}: {reason}",
              ip=peer_ip(self.transport.getPeer()), listener=self.factory.name, reason=reason)
        metrics.CONNECTIONS_REFUSED.labels(self.factory.name, "proxy").inc()
        self.transport.loseConnection()

    def getPeer(self):
        return self._peer if self._peer is not None else self.transport.getPeer()

    def getHost(self):
        return self._host if self._host is not None else self.transport.getHost()

    def connectionLost(self, reason):
        self.connected = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)
