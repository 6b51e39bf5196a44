"""
PROXY protocol headers (mailsrv/proxyprotocol.py): the parser's table, the
wrapper that starts nothing before the header, and the real SMTP stack
behind it seeing the header's client.
"""

import ipaddress
import struct
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from hypothesis import example, given, strategies as st
from prometheus_client import REGISTRY
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.trial import unittest

from mailsrv import config, preflight, tls
from mailsrv.netaddr import IPList
from mailsrv.proxyprotocol import (
    HEADER_TIMEOUT,
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    BadHeader,
    ProxyHeader,
    ProxyProtocolFactory,
    parse_header,
)
from mailsrv.service import BUSY_REPLIES, DENIED_REPLIES, LATER_REPLIES, ConnectionLimits
from mailsrv.smtp.server import build_factory
from tests.fuzzing import examples, packets
from tests.test_smtp.support import (
    maildir_messages,
    make_mail_server,
    run_threads_inline,
    send_to_alice,
)
from tests.test_smtp.test_server import LogCapture

BALANCER = "10.0.0.5"
CLIENT = "203.0.113.9"


def v4(host, port):
    return IPv4Address("TCP", host, port)


def v6(host, port):
    return IPv6Address("TCP", host, port)


def v2(command, family, body):
    """A v2 header: C{command} 0 LOCAL, 1 PROXY."""
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp4(source, destination, sport, dport, tlvs=b""):
    pack = bytes(int(part) for part in source.split(".")) + \
        bytes(int(part) for part in destination.split("."))
    return v2(1, 0x11, pack + struct.pack("!HH", sport, dport) + tlvs)


V1_TCP4 = b"PROXY TCP4 203.0.113.9 198.51.100.1 40001 25\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::9 2001:db8::1 40001 993\r\n"
V2_TCP4 = v2_tcp4(CLIENT, "198.51.100.1", 40001, 25)
# with a TLV (PP2_TYPE_ALPN "smtp") after the addresses
V2_TCP6 = v2(1, 0x21, bytes.fromhex("20010db8" + "0" * 23 + "9") + bytes.fromhex(
    "20010db8" + "0" * 23 + "1") + struct.pack("!HH", 40001, 993) + b"\x01\x00\x04smtp")

UNSPECIFIED = ProxyHeader(None, None)

# header -> what it says
GOOD = [
    (V1_TCP4, ProxyHeader(v4(CLIENT, 40001), v4("198.51.100.1", 25))),
    (V1_TCP6, ProxyHeader(v6("2001:db8::9", 40001), v6("2001:db8::1", 993))),
    (b"PROXY TCP6 ::ffff:203.0.113.9 ::1 0 65535\r\n",
     ProxyHeader(v6(str(ipaddress.ip_address("::ffff:203.0.113.9")), 0), v6("::1", 65535))),
    (b"PROXY UNKNOWN\r\n", UNSPECIFIED),
    (b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n", UNSPECIFIED),  # (107 bytes)
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", UNSPECIFIED),
    (V2_TCP4, ProxyHeader(v4(CLIENT, 40001), v4("198.51.100.1", 25))),
    (V2_TCP6, ProxyHeader(v6("2001:db8::9", 40001), v6("2001:db8::1", 993))),
    # health checks: LOCAL, whatever follows
    (v2(0, 0x00, b""), UNSPECIFIED),
    (v2(0, 0x11, b"\x00" * 12), UNSPECIFIED),
    (v2(0, 0xFF, b"junk"), UNSPECIFIED),
    # what a receiver may treat as UNSPEC: UNSPEC, UNIX, datagrams
    (v2(1, 0x00, b""), UNSPECIFIED),
    (v2(1, 0x31, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0")), UNSPECIFIED),
    (v2(1, 0x12, b"\x01" * 12), UNSPECIFIED),
    (v2(1, 0x22, b"\x01" * 36), UNSPECIFIED),
    # the largest taken
    (v2_tcp4(CLIENT, "198.51.100.1", 1, 2, tlvs=b"\x04" * (V2_MAX - 16 - 12)),
     ProxyHeader(v4(CLIENT, 1), v4("198.51.100.1", 2))),
]

# bytes -> the start of the reason they are refused
BAD = [
    (b"EHLO client.test\r\n", "no PROXY signature"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY signature"),
    (b"\r\n\r\n\x00\r\nQUIT!", "no PROXY signature"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1 header is not"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1 header is not"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1 header is not"),
    (b"PROXY \r\n", "v1 header is not"),
    (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "v1 header: bad IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1 header: bad IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1 header: bad IPv6 address"),
    (b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "v1 header: bad IPv4 address"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1 header: bad IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1 header: bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "v1 header: bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", "v1 header: bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa1\r\n", "v1 header: bad port"),
    (b"PROXY UNKNOWN" + b"x" * V1_MAX, "v1 header longer than 107 bytes"),
    (b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r\n", "v1 header longer"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c", "v2 header: version is not 2"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c", "v2 header: unknown command"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX - 15), "v2 header of 537 bytes"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "v2 header of 65551 bytes"),
    (v2(1, 0x11, b"\x01" * 11), "v2 header: address block too short"),
    (v2(1, 0x21, b"\x01" * 35), "v2 header: address block too short"),
    (v2(1, 0x41, b"\x01" * 12), "v2 header: unknown address family"),
    (v2(1, 0x13, b"\x01" * 12), "v2 header: unknown address family"),
]


class ParserTests(unittest.TestCase):
    def test_good_headers(self):
        for header, expected in GOOD:
            self.assertEqual(parse_header(header + b"EHLO x\r\n"), (expected, b"EHLO x\r\n"),
                             header)

    def test_every_proper_start_of_a_header_waits(self):
        for header, _ in GOOD:
            for end in range(len(header)):
                self.assertIsNone(parse_header(header[:end]), (header, end))

    def test_bad_headers(self):
        for data, reason in BAD:
            with self.assertRaises(BadHeader, msg=repr(data)) as caught:
                parse_header(data)
            self.assertTrue(str(caught.exception).startswith(reason),
                            f"{data!r}: {caught.exception}")

    def test_bad_v2_header_is_refused_as_soon_as_its_16_bytes_are_in(self):
        self.assertRaises(BadHeader, parse_header, V2_SIGNATURE + b"\x21\x11\x10\x00")

    @examples(500)
    @given(st.binary(max_size=V2_MAX + 20))
    @example(V2_SIGNATURE + b"\x21\x31\x00\x00")
    def test_any_bytes_wait_parse_or_are_refused(self, data):
        try:
            parsed = parse_header(data)
        except BadHeader:
            return
        if parsed is not None:
            header, rest = parsed
            self.assertTrue(data.endswith(rest))
            self.assertLessEqual(len(data) - len(rest), V2_MAX)


class Recorder(Protocol):
    """Greets, and keeps what it is told."""

    def __init__(self, address):
        self.built_for = address
        self.received = b""
        self.lost = False

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


class RecorderFactory(Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        self.built.append(Recorder(addr))
        return self.built[-1]


def connect(factory, peer=BALANCER):
    address = (v6 if ":" in peer else v4)(peer, 50000)
    protocol = factory.buildProtocol(address)
    transport = StringTransportWithDisconnection(peerAddress=address,
                                                 hostAddress=v4("10.0.0.1", 25))
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


class WrapperTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.inner = RecorderFactory()
        self.factory = ProxyProtocolFactory(self.inner, IPList([BALANCER, "2001:db8::/64"]),
                                            self.clock, "smtp/mx tcp:25")
        self.log = LogCapture(self)

    def connect(self, peer=BALANCER):
        return connect(self.factory, peer)

    def test_v1_nothing_starts_before_the_header(self):
        protocol, transport = self.connect()
        protocol.dataReceived(V1_TCP4[:-1])
        self.assertEqual((transport.value(), self.inner.built), (b"", []))
        protocol.dataReceived(b"\n")
        [recorder] = self.inner.built
        self.assertEqual(transport.value(), b"220 hello\r\n")
        self.assertEqual((recorder.built_for, recorder.peer, recorder.host),
                         (v4(CLIENT, 40001), v4(CLIENT, 40001), v4("198.51.100.1", 25)))
        protocol.dataReceived(b"EHLO x\r\n")
        self.assertEqual(recorder.received, b"EHLO x\r\n")
        self.assertTrue(transport.connected)

    def test_v2_ipv6_one_byte_at_a_time(self):
        protocol, transport = self.connect("2001:db8::5")
        for byte in packets(V2_TCP6, range(len(V2_TCP6)))[:-1]:
            protocol.dataReceived(byte)
        self.assertEqual((transport.value(), self.inner.built), (b"", []))
        protocol.dataReceived(V2_TCP6[-1:])
        [recorder] = self.inner.built
        self.assertEqual(recorder.peer, v6("2001:db8::9", 40001))
        self.assertEqual(transport.value(), b"220 hello\r\n")

    def test_header_and_first_command_in_one_read(self):
        for header in (V1_TCP4, V2_TCP4):
            protocol, transport = self.connect()
            protocol.dataReceived(header + b"EHLO x\r\nMAIL")
            self.assertEqual(self.inner.built[-1].received, b"EHLO x\r\nMAIL")
            self.assertEqual(self.inner.built[-1].peer, v4(CLIENT, 40001))

    def refused(self):
        return REGISTRY.get_sample_value("mailsrv_connections_refused_total",
                                         {"listener": "smtp/mx tcp:25", "reason": "proxy"}) or 0

    def test_untrusted_peer_is_closed_without_a_word(self):
        before = self.refused()
        protocol, transport = self.connect("10.0.0.6")
        self.assertEqual(self.refused(), before + 1)
        self.assertFalse(transport.connected)
        self.assertEqual((transport.value(), self.inner.built), (b"", []))
        protocol.dataReceived(V1_TCP4)  # (arriving before the close took effect)
        self.assertEqual(self.inner.built, [])
        self.assertIn("refused connection from 10.0.0.6 to smtp/mx tcp:25: not in proxy_from",
                      self.log.text())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_is_closed_at_once(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO")
        self.assertFalse(transport.connected)
        self.assertEqual((transport.value(), self.inner.built), (b"", []))
        self.assertIn("refused connection from 10.0.0.5 to smtp/mx tcp:25: "
                      "bad PROXY header: no PROXY signature", self.log.text())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_header_too_long(self):
        for data in (b"PROXY UNKNOWN" + b"x" * 200,
                     V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 600)):
            protocol, transport = self.connect()
            protocol.dataReceived(data)
            self.assertFalse(transport.connected)
        self.assertEqual(self.inner.built, [])

    def test_no_header_in_time(self):
        protocol, transport = self.connect()
        protocol.dataReceived(V1_TCP4[:10])
        self.clock.advance(HEADER_TIMEOUT - 0.1)
        self.assertTrue(transport.connected)
        self.clock.advance(0.1)
        self.assertFalse(transport.connected)
        self.assertEqual(self.inner.built, [])
        self.assertIn("refused connection from 10.0.0.5 to smtp/mx tcp:25: "
                      "no PROXY header in time", self.log.text())

    def test_the_deadline_ends_with_the_header(self):
        protocol, transport = self.connect()
        protocol.dataReceived(V2_TCP4)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(HEADER_TIMEOUT * 2)
        self.assertTrue(transport.connected)

    def test_local_and_unknown_keep_the_real_addresses(self):
        for header in (b"PROXY UNKNOWN\r\n", v2(0, 0x11, b"\x00" * 12)):
            protocol, transport = self.connect()
            protocol.dataReceived(header)
            recorder = self.inner.built[-1]
            self.assertEqual((recorder.built_for, recorder.peer, recorder.host),
                             (v4(BALANCER, 50000), v4(BALANCER, 50000), v4("10.0.0.1", 25)))

    def test_gone_before_the_header(self):
        protocol, transport = self.connect()
        protocol.dataReceived(b"PROXY")
        transport.loseConnection()
        self.assertEqual((self.inner.built, self.clock.getDelayedCalls()), ([], []))

    def test_gone_after_the_header(self):
        protocol, transport = self.connect()
        protocol.dataReceived(V1_TCP4)
        transport.loseConnection()
        self.assertTrue(self.inner.built[0].lost)

    @examples(300)
    @given(st.one_of(st.binary(max_size=200),
                     st.sampled_from([h for h, _ in GOOD]).flatmap(
                         lambda h: st.binary(max_size=40).map(lambda tail: h + tail)),
                     st.sampled_from([b for b, _ in BAD])),
           st.lists(st.integers(min_value=0), max_size=8))
    def test_any_bytes_in_any_reads_close_or_pass_on_alike(self, data, cuts):
        """Arbitrary bytes never raise; how they are cut into reads changes nothing."""
        outcomes = []
        for reads in ([data], packets(data, cuts)):
            built = len(self.inner.built)
            protocol, transport = self.connect()
            for read in reads:
                protocol.dataReceived(read)
            started = self.inner.built[built:]
            outcomes.append((transport.connected,
                             [(r.peer, r.received) for r in started]))
        self.assertEqual(outcomes[0], outcomes[1])


class ProxiedSMTPTests(unittest.TestCase):
    """The real SMTP listener stack behind the wrapper sees the header's client."""

    def setUp(self):
        run_threads_inline(self)
        self.log = LogCapture(self)

    def stack(self, max_per_ip=20, **listen):
        self.server = make_mail_server(self, listen=[{"protocol": "smtp", "endpoint": "tcp:0",
                                                     **listen}])
        listener = self.server.settings.listeners[0]
        limits = ConnectionLimits(
            build_factory(self.server, listener), BUSY_REPLIES["smtp"], max_connections=10,
            max_per_ip=max_per_ip, per_ip=Counter(), access=self.server.access_for(listener),
            denied_reply=DENIED_REPLIES["smtp"], later_reply=LATER_REPLIES["smtp"],
            name=listener.name)
        self.factory = ProxyProtocolFactory(limits, IPList([BALANCER]), self.server.clock,
                                            listener.name)

    def proxied(self, client=CLIENT):
        protocol, transport = connect(self.factory)
        protocol.dataReceived(b"PROXY TCP4 %s 198.51.100.1 40001 25\r\n" % client.encode())
        return protocol, transport

    def test_received_header_and_log_name_the_client(self):
        self.stack()
        protocol, transport = self.proxied()
        self.assertTrue(transport.value().startswith(b"220 "))
        connection = SimpleNamespace(
            send=lambda data: (protocol.dataReceived(data), transport.value())[1])
        reply = send_to_alice(connection, b"Subject: hi\r\n\r\nhello\r\n")
        self.assertIn(b"250 2.0.0", reply)
        [message] = maildir_messages(self.server, "alice@example.test")
        received = message.split(b"\r\n\r\n")[0]
        self.assertIn(b"[203.0.113.9]", received)
        self.assertNotIn(BALANCER.encode(), received)
        self.assertIn("connect from 203.0.113.9 to smtp/mx tcp:0", self.log.text())

    def test_per_ip_limit_counts_the_client(self):
        self.stack(max_per_ip=1)
        _, first = self.proxied()
        _, other = self.proxied("203.0.113.10")
        _, second = self.proxied()
        self.assertTrue(first.value().startswith(b"220 "))
        self.assertTrue(other.value().startswith(b"220 "))
        self.assertEqual(second.value(), BUSY_REPLIES["smtp"])

    def test_deny_list_is_checked_against_the_client(self):
        self.stack(deny=[CLIENT])
        _, denied = self.proxied()
        self.assertEqual(denied.value(), b"554 5.7.1 Access denied for 203.0.113.9\r\n")
        _, served = self.proxied("203.0.113.10")
        self.assertTrue(served.value().startswith(b"220 "))


class TLSAuditIPTests(unittest.TestCase):
    """tls_invalid_client_certificate names the client a PROXY header gave."""

    def test_after_starttls_the_wrapper_above_the_tls_layer_knows(self):
        # STARTTLS: the TLS layer sits on the TCP connection, under the wrappers
        tcp = SimpleNamespace(getPeer=lambda: v4(BALANCER, 50000))
        wrapper = SimpleNamespace(getPeer=lambda: v4(CLIENT, 40001))
        connection = SimpleNamespace(get_app_data=lambda: SimpleNamespace(
            transport=tcp, wrappedProtocol=wrapper))
        self.assertEqual(tls._connection_ip(connection), CLIENT)

    def test_under_a_plain_protocol_its_transport(self):
        connection = SimpleNamespace(get_app_data=lambda: SimpleNamespace(
            transport=SimpleNamespace(getPeer=lambda: v4(BALANCER, 50000)),
            wrappedProtocol=Protocol()))
        self.assertEqual(tls._connection_ip(connection), BALANCER)


class ConfigTests(unittest.TestCase):
    def test_addresses_networks_ranges_and_self_are_taken(self):
        settings = config.parse({"listen": [{
            "endpoint": "tcp:25", "proxy_protocol": True,
            "proxy_from": ["10.0.0.5", "10.1.0.0/24", "2001:db8::/64", "10.2.0.1-9", "self"]}]},
            Path("/c.toml"))
        preflight.check_settings(settings, task.Clock())
        [listener] = settings.listeners
        self.assertEqual(listener.proxy_from[1], "10.1.0.0/24")
        self.assertTrue(IPList(listener.proxy_from).contains("10.2.0.7"))
