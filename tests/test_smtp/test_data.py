"""
The DATA reader (end marker, dot-unstuffing, bare CR/LF: SMTP smuggling)
and the trace headers.
"""

from email.utils import formatdate

from twisted.trial import unittest

from mailsrv.directory import Route
from mailsrv.smtp.data import DataReader
from mailsrv.smtp.state import Recipient, Session, Transaction
from mailsrv.smtp.trace import ip_literal, trace_headers


def read_all(data, chunk=None):
    """Feed C{data} whole or in chunks; return (message, rest, reader)."""
    reader = DataReader()
    chunk = chunk or len(data) or 1
    out, position = [], 0
    while position < len(data) and not reader.done:
        piece = data[position:position + chunk]
        message, consumed = reader.feed(piece)
        out.append(message)
        position += consumed
    return b"".join(out), data[position:], reader


# (data after 354, message, rest after the end marker, bare CR/LF seen)
TABLE = [
    (b".\r\n", b"", b"", False),
    (b"a\r\n.\r\n", b"a\r\n", b"", False),
    (b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
     b"Subject: x\r\n\r\nbody\r\n", b"QUIT\r\n", False),
    # dot-stuffing: the first dot of a line goes
    (b"..\r\n.\r\n", b".\r\n", b"", False),
    (b"...x\r\n.\r\n", b"..x\r\n", b"", False),
    (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n", b"", False),
    (b".x\r\n.\r\n", b"x\r\n", b"", False),
    (b"a.\r\n.b.\r\n.\r\n", b"a.\r\nb.\r\n", b"", False),
    # 8-bit and binary bytes pass unchanged
    (b"caf\xc3\xa9 \x00\xff\r\n.\r\n", b"caf\xc3\xa9 \x00\xff\r\n", b"", False),
    # smuggling tricks: none of these ends the data
    (b"a\n.\n", b"a\n.\n", None, True),
    (b"a\r\n.\rb", b"a\r\n\rb", None, True),
    (b"a\r.\rb", b"a\r.\rb", None, True),
    (b"a\n.\r\nb", b"a\n.\r\nb", None, True),
    (b"a\r.\r\n", b"a\r.\r\n", None, True),
    (b"a\n.\nMAIL FROM:<x@evil.test>\r\n", b"a\n.\nMAIL FROM:<x@evil.test>\r\n", None, True),
    # ... and the real end marker after them still ends it
    (b"a\n.\nb\r\n.\r\nQUIT\r\n", b"a\n.\nb\r\n", b"QUIT\r\n", True),
    (b"a\r\n.\rX\r\n.\r\n", b"a\r\n\rX\r\n", b"", True),
    (b"bare\rcr\r\n.\r\n", b"bare\rcr\r\n", b"", True),
    (b"a\r\r\n.\r\n", b"a\r\r\n", b"", True),
]


class DataReaderTests(unittest.TestCase):
    def test_table_whole(self):
        for data, message, rest, bare in TABLE:
            got, got_rest, reader = read_all(data)
            self.assertEqual(got, message, data)
            self.assertEqual(reader.done, rest is not None, data)
            if rest is not None:
                self.assertEqual(got_rest, rest, data)
            self.assertEqual(reader.bare_line_ending, bare, data)
            self.assertEqual(reader.size, len(message), data)

    def test_table_byte_by_byte(self):
        """A chunk boundary anywhere gives the same result."""
        for data, message, rest, bare in TABLE:
            for chunk in (1, 2, 3):
                got, got_rest, reader = read_all(data, chunk)
                self.assertEqual(got, message, (data, chunk))
                self.assertEqual(reader.done, rest is not None, (data, chunk))
                self.assertEqual(reader.bare_line_ending, bare, (data, chunk))

    def test_long_line_is_produced_as_it_arrives(self):
        reader = DataReader()
        for _ in range(10):
            message, consumed = reader.feed(b"x" * 65536)
            self.assertEqual((len(message), consumed), (65536, 65536))
        self.assertEqual(reader.feed(b"\r\n.\r\n"), (b"\r\n", 5))
        self.assertTrue(reader.done)
        self.assertEqual(reader.size, 655362)

    def test_many_bare_lf_lines_stay_fast(self):
        """A chunk of bare LFs is scanned once, not once per line."""
        data = b"x\n" * 500000
        message, consumed = DataReader().feed(data)
        self.assertEqual((message, consumed), (data, len(data)))


class TraceTests(unittest.TestCase):
    def test_ip_literal(self):
        for ip, literal in [
            ("192.0.2.1", "[192.0.2.1]"),
            ("::ffff:192.0.2.1", "[192.0.2.1]"),
            ("2001:DB8:0::1", "[IPv6:2001:db8::1]"),
        ]:
            self.assertEqual(ip_literal(ip), literal)

    def test_headers(self):
        session = Session(ip="192.0.2.1", tls=True, helo="client.test", esmtp=True,
                          user="alice@example.test")
        route = Route(local=("bob@example.test",))
        transaction = Transaction("alice@example.test",
                                  recipients=[Recipient("Bob@example.test", route)])
        when = 1700000000
        self.assertEqual(
            trace_headers(session, transaction, "Q1", "mx.example.test", when),
            b"Return-Path: <alice@example.test>\r\n"
            b"Received: from client.test ([192.0.2.1])\r\n"
            b"\tby mx.example.test (mailsrv) with ESMTPSA id Q1\r\n"
            b"\tfor <Bob@example.test>;\r\n"
            b"\t" + formatdate(when, localtime=True).encode() + b"\r\n",
        )

    def test_no_for_with_several_recipients(self):
        session = Session(ip="2001:db8::5", helo="c.test")
        route = Route(local=("bob@example.test",))
        transaction = Transaction("", recipients=[Recipient("a@example.test", route),
                                                  Recipient("b@example.test", route)])
        headers = trace_headers(session, transaction, "Q2", "mx.example.test", 0)
        self.assertTrue(headers.startswith(
            b"Return-Path: <>\r\nReceived: from c.test ([IPv6:2001:db8::5])\r\n"
            b"\tby mx.example.test (mailsrv) with SMTP id Q2;\r\n\t"))
        self.assertNotIn(b"for <", headers)

    def test_protocol_names(self):
        for esmtp, tls, user, name in [
            (False, False, None, "SMTP"),
            (True, False, None, "ESMTP"),
            (True, True, None, "ESMTPS"),
            (True, False, "a@b.test", "ESMTPA"),
            (True, True, "a@b.test", "ESMTPSA"),
        ]:
            session = Session(ip="192.0.2.1", esmtp=esmtp, tls=tls, user=user)
            self.assertEqual(session.protocol, name)
