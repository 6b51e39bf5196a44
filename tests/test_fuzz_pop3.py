"""
Property tests of the POP3 server on a StringTransport (issue 13): any
command lines, before and after login, pipelined or one by one, get one
response each (C{+OK}, C{-ERR} or a SASL C{+} continuation), nothing
escapes C{dataReceived} and nothing is logged as a failure, and an open
session still answers NOOP (or CAPA before login).
"""

import base64
import re

from hypothesis import example, given, strategies as st
from twisted.trial import unittest

from tests.fuzzing import examples, lines, packets
from tests.test_pop3 import PASSWORD, USER, Harness

_PLAIN = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD)

GOOD = [b"USER " + USER.encode(), b"PASS " + PASSWORD, b"PASS wrong", b"CAPA", b"STAT",
        b"LIST", b"LIST 2", b"UIDL", b"UIDL 1", b"RETR 1", b"RETR 3", b"TOP 2 1", b"TOP 1 0",
        b"DELE 1", b"RSET", b"NOOP", b"AUTH", b"AUTH PLAIN", b"AUTH PLAIN " + _PLAIN,
        b"AUTH PLAIN =", b"AUTH LOGIN", b"STLS", b"APOP alice 0123", b"LAST", b"QUIT",
        b"RETR 99999999999999999999", b"TOP 1 -1", b"LIST 0", b"DELE x", b"GET / HTTP/1.0"]
VERBS = [line.split(b" ")[0] for line in GOOD]
JUNK = st.builds(
    lambda verb, sep, arg: verb + sep + arg,
    st.one_of(st.sampled_from(VERBS), st.sampled_from(VERBS).map(bytes.lower),
              st.binary(max_size=12)),
    st.sampled_from([b" ", b"", b"  ", b"\t"]),
    st.one_of(st.just(b""), st.binary(max_size=40), st.integers(0, 1100).map(lambda n: b"9" * n),
              st.lists(st.integers(-3, 2 ** 70).map(lambda n: str(n).encode()), max_size=3)
              .map(b" ".join)),
)
LINE = st.builds(bytes.__add__, st.one_of(*[st.sampled_from(GOOD)] * 3, JUNK),
                 st.sampled_from([b"\r\n"] * 4 + [b"\n", b"\r\r\n", b"\x00\r\n"]))
SASL = st.sampled_from([b"*\r\n", _PLAIN + b"\r\n", b"=\r\n", b"\xff\r\n"])
LOGIN = st.just(b"USER " + USER.encode() + b"\r\nPASS " + PASSWORD + b"\r\n")
CONVERSATION = st.lists(st.one_of(LINE, LINE, LINE, SASL, LOGIN), max_size=25).map(b"".join)

# The first line of a response: one per command line.
_RESPONSE = re.compile(rb"^(?:\+OK|-ERR|\+ )", re.M)


class ConversationTests(unittest.TestCase):
    @examples(150)
    @given(CONVERSATION)
    @example(b"USER a\r\nAUTH PLAIN\r\n\xff\r\nNOOP\r\n")
    @example(b"AUTH PLAIN " + base64.b64encode(b"\xff\0\xfe\0x") + b"\r\n")
    def test_one_response_per_command_line(self, stream):
        """Fed line by line, each line gets exactly one response (message bodies aside)."""
        h = Harness(self, root=self.mktemp())
        for line in lines(stream):
            reply = h.send(line)
            if h.transport.disconnecting:
                return
            if line.endswith(b"\n"):
                # RETR/TOP bodies are the test messages, which have no such lines
                self.assertEqual(len(_RESPONSE.findall(reply)), 1, (line, reply))
            else:
                self.assertEqual(reply, b"")
        self._still_answers(h, stream)

    def _still_answers(self, h, stream):
        if not stream.endswith(b"\n"):
            h.send(b"\r\n")
        if h.proto._sasl is not None:
            h.send(b"*\r\n")
        if not h.transport.disconnecting:
            reply = h.cmd(b"NOOP" if h.proto.mbox is not None else b"CAPA")
            self.assertTrue(reply.startswith(b"+OK"), reply)

    @examples(100)
    @given(CONVERSATION, st.lists(st.integers(0, 10 ** 6), max_size=10))
    def test_packet_boundaries_do_not_matter(self, stream, cuts):
        """Pipelined in any packets, a stream gets the same responses as line by line."""
        stream = stream.replace(b"STLS", b"NOOP")  # STLS drops what follows by design
        self.assertEqual(self._transcript(packets(stream, cuts)), self._transcript(lines(stream)))

    def _transcript(self, packets):
        h = Harness(self, root=self.mktemp())
        return b"".join(h.send(p) for p in packets if not h.transport.disconnecting)
