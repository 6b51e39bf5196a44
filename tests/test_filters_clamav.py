"""
[antispam.clamav]: clamd's INSTREAM protocol on a StringTransport (what is
sent, a chunk each time the transport asks; OK, FOUND and ERROR replies; a
clamd that closes early or says too much), and the scanner's verdicts with
a fake endpoint and a Clock: what it found, and on_error for every way
clamd cannot say (no connection, an ERROR reply, the timeout). A real
clamd: tests/integration/test_clamav.py.
"""

import struct
from io import BytesIO
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv.policy import apply
from mailsrv.policy.actions import NONE, Action
from mailsrv.policy.checks.clamav import (
    END_OF_STREAM,
    INSTREAM,
    MAX_REPLY,
    ClamAVScanner,
    InstreamClient,
    parse_reply,
)
from mailsrv.policy.scanning import CHUNK, MessageChunks, ScanError
from mailsrv.policy.hooks import INLINE, Message
from mailsrv.policy.judgement import Judgement
from tests.fuzzing import examples, packets
from tests.helpers import log_lines

SMALL = b"From: x@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
BIG = bytes(range(256)) * (2 * CHUNK // 256) + b"tail"  # two chunks and a bit
SESSION = SimpleNamespace(ip="192.0.2.1")


class FileOf(BytesIO):
    """A message's file that tells whether it was closed, and how often it was opened."""


def message(data, files=None):
    """A L{Message} of C{data}; each file it opens is added to C{files}."""
    def open_():
        f = FileOf(data)
        if files is not None:
            files.append(f)
        return f
    return Message(len(data), open_)


def framed(data):
    """What INSTREAM sends for C{data}: the command, the chunks with their lengths, the end."""
    chunks = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    return (INSTREAM + b"".join(struct.pack(">I", len(c)) + c for c in chunks)
            + END_OF_STREAM)


def connected(data, in_thread=defer.maybeDeferred, files=None):
    """An L{InstreamClient} for C{data} on a StringTransport."""
    client = InstreamClient(MessageChunks(message(data, files), in_thread))
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport


def send_all(transport):
    """Ask the client for chunks as a transport does, until it has sent the end."""
    while transport.producer is not None:
        transport.producer.resumeProducing()


def outcome(d):
    """What C{d} has fired with (it is consumed: ask once), L{None} for nothing yet."""
    results = []
    d.addBoth(results.append)
    return results[0] if results else None


class ReplyTests(unittest.TestCase):
    def test_replies(self):
        self.assertIsNone(parse_reply(b"stream: OK"))
        self.assertEqual(parse_reply(b"stream: Eicar-Test-Signature FOUND"),
                         "Eicar-Test-Signature")
        self.assertEqual(parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\n"),
                         "Win.Test.EICAR_HDB-1")

    def test_what_is_not_an_answer(self):
        for reply in (b"INSTREAM size limit exceeded. ERROR", b"stream: FOUND",
                      b"stream:  FOUND", b"", b"PONG", b"stream: OKAY"):
            self.assertRaises(ScanError, parse_reply, reply)

    def test_a_name_cannot_carry_a_line_end(self):
        self.assertEqual(parse_reply(b"stream: A\r\nX-Evil: 1 FOUND"), "A??X-Evil: 1")

    @examples(300)
    @given(st.binary(max_size=200))
    def test_any_reply_is_an_answer_or_a_scan_error(self, reply):
        try:
            found = parse_reply(reply)
        except ScanError:
            return
        self.assertTrue(found is None or (found and found.isprintable()))

    @examples(100)
    @given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                   max_size=60))
    def test_every_name_comes_back(self, name):
        self.assertEqual(parse_reply(f"stream: {name} FOUND".encode()), name)


class InstreamTests(unittest.TestCase):
    def test_a_small_message(self):
        client, transport = connected(SMALL)
        self.assertEqual(transport.value(), INSTREAM)
        send_all(transport)
        self.assertEqual(transport.value(), framed(SMALL))
        client.dataReceived(b"stream: OK\0")
        self.assertEqual(outcome(client.result), b"stream: OK")
        self.assertTrue(transport.disconnecting)

    def test_one_chunk_each_time_the_transport_asks(self):
        client, transport = connected(BIG)
        transport.producer.resumeProducing()
        self.assertEqual(len(transport.value()), len(INSTREAM) + 4 + CHUNK)
        send_all(transport)
        self.assertEqual(transport.value(), framed(BIG))

    def test_a_big_message_is_read_in_a_thread_one_read_at_a_time(self):
        reads = []

        def in_thread(read):
            d = defer.Deferred()
            reads.append((read, d))
            return d
        self.assertGreater(len(BIG), INLINE)
        client, transport = connected(BIG, in_thread)
        transport.producer.resumeProducing()
        transport.producer.resumeProducing()  # (the transport asks again meanwhile)
        self.assertEqual(len(reads), 1)
        read, d = reads.pop()
        d.callback(read())
        self.assertEqual(transport.value(), INSTREAM + struct.pack(">I", CHUNK) + BIG[:CHUNK])

    def test_a_small_message_is_read_at_once(self):
        def in_thread(read):
            raise AssertionError("a small message is in memory: no thread")
        client, transport = connected(SMALL, in_thread)
        send_all(transport)
        self.assertEqual(transport.value(), framed(SMALL))

    @examples(50)
    @given(st.integers(0, 3 * CHUNK), st.lists(st.integers(0, 60), max_size=5))
    def test_any_size_and_any_reply_cuts(self, size, cuts):
        data = bytes(i % 251 for i in range(size))
        client, transport = connected(data)
        send_all(transport)
        self.assertEqual(transport.value(), framed(data))
        for piece in packets(b"stream: Eicar-Test-Signature FOUND\0", cuts):
            client.dataReceived(piece)
        self.assertEqual(outcome(client.result), b"stream: Eicar-Test-Signature FOUND")

    def test_found_in_pieces(self):
        client, transport = connected(SMALL)
        send_all(transport)
        client.dataReceived(b"stream: Eicar-Test-")
        self.assertFalse(client.result.called)
        client.dataReceived(b"Signature FOUND\0")
        self.assertEqual(outcome(client.result), b"stream: Eicar-Test-Signature FOUND")

    def test_a_reply_before_the_end_stops_the_stream(self):
        """clamd's StreamMaxLength: it answers ERROR while the message is still coming."""
        files = []
        client, transport = connected(BIG, files=files)
        transport.producer.resumeProducing()
        client.dataReceived(b"INSTREAM size limit exceeded. ERROR\0")
        self.assertEqual(outcome(client.result), b"INSTREAM size limit exceeded. ERROR")
        self.assertIsNone(transport.producer)
        sent = transport.value()
        client.resumeProducing()
        self.assertEqual(transport.value(), sent)
        self.assertTrue(files[0].closed)

    def test_clamd_closes_before_its_reply(self):
        files = []
        client, transport = connected(SMALL, files=files)
        transport.producer.resumeProducing()
        client.connectionLost(Failure(error.ConnectionDone()))
        failure = outcome(client.result)
        failure.trap(ScanError)
        self.assertEqual(str(failure.value), "connection closed before the reply "
                                             "(Connection was closed cleanly.)")
        self.assertTrue(files[0].closed)

    def test_a_reply_without_end(self):
        client, transport = connected(SMALL)
        send_all(transport)
        client.dataReceived(b"x" * (MAX_REPLY + 1))
        outcome(client.result).trap(ScanError)
        self.assertTrue(transport.disconnected)

    def test_the_message_cannot_be_read(self):
        def broken():
            raise OSError("gone")
        client = InstreamClient(MessageChunks(Message(10, broken)))
        transport = StringTransport()
        client.makeConnection(transport)
        transport.producer.resumeProducing()
        outcome(client.result).trap(OSError)
        self.assertTrue(transport.disconnected)

    def test_cancelled(self):
        files = []
        client, transport = connected(SMALL, files=files)
        send_all(transport)
        client.result.cancel()
        outcome(client.result).trap(defer.CancelledError)
        self.assertTrue(transport.disconnected)
        self.assertTrue(files[0].closed)


class FakeEndpoint:
    """Connects to a StringTransport at once, or gives C{connecting} (a failure, a wait)."""

    def __init__(self, connecting=None):
        self.connecting = connecting
        self.clients = []

    def connect(self, factory):
        if self.connecting is not None:
            return self.connecting
        client = factory.buildProtocol(None)
        client.makeConnection(StringTransport())
        self.clients.append(client)
        return defer.succeed(client)


class ScannerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.lines = log_lines(self)

    def scanner(self, endpoint, on_error="tempfail", subject_prefix=None):
        return ClamAVScanner(endpoint, "unix:/run/clamav/clamd.ctl", 60.0, on_error,
                             Action("reject"), subject_prefix, self.clock)

    def answered(self, reply, on_error="tempfail", subject_prefix=None):
        """The scanner's verdict on SMALL when clamd answers C{reply}."""
        endpoint = FakeEndpoint()
        d = self.scanner(endpoint, on_error, subject_prefix).check(SESSION, None,
                                                                   message(SMALL))
        [client] = endpoint.clients
        send_all(client.transport)
        client.dataReceived(reply)
        return outcome(d)

    def test_clean(self):
        verdict = self.answered(b"stream: OK\0")
        self.assertTrue(verdict.accepted)
        self.assertFalse(verdict.finding.spam)
        self.assertEqual(verdict.finding.action, NONE)
        self.assertEqual(self.lines, [])

    def test_found(self):
        verdict = self.answered(b"stream: Eicar-Test-Signature FOUND\0", subject_prefix="[V] ")
        finding = verdict.finding
        self.assertEqual((finding.spam, finding.action, finding.reasons, finding.refusal,
                          finding.subject_prefix),
                         (True, Action("reject"), ("clamav Eicar-Test-Signature",),
                          "Virus found: Eicar-Test-Signature", "[V] "))

    def assert_unscanned(self, verdict, on_error, why):
        self.assertTrue(verdict.accepted)
        finding = verdict.finding
        self.assertEqual((finding.spam, finding.action, finding.reasons),
                         (False, Action("tempfail") if on_error == "tempfail" else NONE,
                          ("clamav unscanned",)))
        outcome = ("deferred (on_error tempfail)" if on_error == "tempfail"
                   else "accepted unscanned (on_error accept)")
        self.assertEqual(self.lines, [f"clamav unix:/run/clamav/clamd.ctl: {why}; message "
                                      f"from 192.0.2.1 {outcome}"])

    def test_error_reply(self):
        for on_error in ("tempfail", "accept"):
            del self.lines[:]
            verdict = self.answered(b"INSTREAM size limit exceeded. ERROR\0", on_error)
            self.assert_unscanned(verdict, on_error,
                                  "clamd answered 'INSTREAM size limit exceeded. ERROR'")

    def test_no_connection(self):
        for on_error in ("tempfail", "accept"):
            del self.lines[:]
            refused = defer.fail(error.ConnectionRefusedError())
            d = self.scanner(FakeEndpoint(refused), on_error).check(SESSION, None,
                                                                     message(SMALL))
            self.assert_unscanned(outcome(d), on_error,
                                  "cannot connect: Connection was refused by other side.")

    def test_clamd_closes_early(self):
        endpoint = FakeEndpoint()
        d = self.scanner(endpoint, "accept").check(SESSION, None, message(SMALL))
        endpoint.clients[0].connectionLost(Failure(error.ConnectionLost()))
        self.assert_unscanned(outcome(d), "accept", "connection closed before the reply "
                              "(Connection to the other side was lost in a non-clean "
                              "fashion.)")

    def test_no_reply_in_time(self):
        endpoint = FakeEndpoint()
        d = self.scanner(endpoint).check(SESSION, None, message(SMALL))
        [client] = endpoint.clients
        send_all(client.transport)
        self.clock.advance(59.9)
        self.assertFalse(client.result.called)
        self.clock.advance(0.1)
        self.assert_unscanned(outcome(d), "tempfail", "no reply in 60s")
        self.assertTrue(client.transport.disconnected)

    def test_no_connection_in_time(self):
        d = self.scanner(FakeEndpoint(defer.Deferred()), "accept").check(SESSION, None,
                                                                         message(SMALL))
        self.clock.advance(60)
        self.assert_unscanned(outcome(d), "accept", "no reply in 60s")

    def test_a_message_that_cannot_be_read_is_no_clamd_error(self):
        """The framework's 451 4.3.0 (and traceback) for our own failure, not on_error."""
        def broken():
            raise OSError("gone")
        endpoint = FakeEndpoint()
        d = self.scanner(endpoint, "accept").check(SESSION, None, Message(10, broken))
        send_all(endpoint.clients[0].transport)
        outcome(d).trap(OSError)
        self.assertEqual(self.lines, [])


class ReplyToTheClientTests(unittest.TestCase):
    """What the framework makes of the scanner's verdicts after the final dot."""

    def at_end(self, finding):
        judgement = Judgement(checked=True, content=True).adding([finding])
        return apply.at_end(judgement, SESSION, SimpleNamespace(sender="x@remote.test"), "Q")

    def setUp(self):
        log_lines(self)
        self.clamav = ClamAVScanner(None, "unix:/x", 60.0, "tempfail", Action("reject"), None,
                                    task.Clock())

    def test_a_virus_is_refused_by_name(self):
        verdict = self.at_end(self.clamav._judge(b"stream: Eicar-Test-Signature FOUND"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (554, "5.7.1", "Virus found: Eicar-Test-Signature"))

    def test_tempfail_on_error(self):
        verdict = self.at_end(self.clamav._unscanned(Failure(ScanError("x")), SESSION))
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.7.1"))

    def test_accept_on_error(self):
        self.clamav.on_error = "accept"
        self.assertIsNone(self.at_end(self.clamav._unscanned(Failure(ScanError("x")),
                                                             SESSION)))
