"""
Property tests of the SMTP server's parsers and of the whole protocol on a
StringTransport (issue 13): whatever bytes a client sends, no exception
escapes, every command line gets exactly one reply (or the connection is
closed with a 421, or silently for an HTTP request), and an open
connection still answers NOOP.
"""

import base64
import re

from hypothesis import example, given, strategies as st
from twisted.trial import unittest

from mailsrv.queue.dotstuff import stuff
from mailsrv.smtp import commands
from mailsrv.smtp.data import DataReader
from tests.fuzzing import examples, lines, packets
from tests.test_smtp.support import PASSWORD, connect, make_mail_server, run_threads_inline

_PLAIN = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()

# Printable text shaped like command arguments, with the characters paths
# and parameters are made of.
ARG_TEXT = st.text(
    alphabet=st.sampled_from('abcAZ09.-_@<>:"\\ =,+[]()!#*/' + "\t"), max_size=80)


class CommandParserTests(unittest.TestCase):
    """The pure parsers answer or raise L{commands.CommandError}, nothing else."""

    @examples(300)
    @given(st.binary(max_size=600).filter(lambda b: b"\n" not in b))
    def test_split_command(self, line):
        try:
            verb, arg = commands.split_command(line)
        except commands.CommandError as e:
            self.assertEqual(e.code, 500)
        else:
            self.assertEqual(verb, verb.upper())
            self.assertEqual(arg, arg.strip())
        self.assertIsInstance(commands.is_http_request(line), bool)

    @examples(500)
    @given(st.sampled_from(["FROM:", "from:", "TO:", "To:", ""]), ARG_TEXT)
    @example("FROM:", '<"a\\"@b> SIZE=1')
    @example("TO:", "<@route,@x:a@b.c> ")
    def test_mail_and_rcpt_paths(self, prefix, text):
        for parse in (commands.parse_mail, commands.parse_rcpt, commands.parse_helo):
            try:
                parse(prefix + text)
            except commands.CommandError as e:
                self.assertTrue(500 <= e.code < 600, e)

    @examples(300)
    @given(ARG_TEXT)
    def test_mail_params(self, text):
        try:
            params = commands.parse_mail_params(text)
        except commands.CommandError as e:
            self.assertIn(e.code, (501, 555))
        else:
            self.assertTrue(params.size is None or params.size >= 0)


# Message content with every kind of line ending and stuffed dots.
DATA_PIECES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"\r\n.", b"\r\n.\r", b".\r\n",
                     b"\r\n.\r\n", b"\r\r\n", b"\x00", b"\xff\xfe"]),
)


def _read_all(chunks):
    """Feed C{chunks} to one DataReader as the server does: the message, the rest, the reader."""
    reader, out, pending = DataReader(), [], bytearray()
    for chunk in chunks:
        pending += chunk
        if reader.done:
            continue
        message, consumed = reader.feed(pending)
        out.append(message)
        del pending[:consumed]
    return b"".join(out), bytes(pending), reader


class DataReaderTests(unittest.TestCase):
    @examples(400)
    @given(st.lists(DATA_PIECES, max_size=30), st.lists(st.integers(0, 10 ** 6), max_size=8))
    def test_chunking_does_not_matter(self, pieces, cuts):
        """However the stream is cut into packets, the reader sees the same thing."""
        data = b"".join(pieces)
        whole, rest, reader = _read_all([data])
        cut, cut_rest, cut_reader = _read_all(packets(data, cuts))
        self.assertEqual((cut, cut_rest, cut_reader.done, cut_reader.bare_line_ending),
                         (whole, rest, reader.done, reader.bare_line_ending))
        self.assertEqual(reader.size, len(whole))
        if reader.done:  # it stopped right after the end marker
            read = data[:len(data) - len(rest)]
            self.assertTrue(read == b".\r\n" or read.endswith(b"\r\n.\r\n"), read)

    @examples(300)
    @given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(
        b"\n", b"")), max_size=20), st.lists(st.integers(0, 10 ** 6), max_size=8))
    def test_stuffed_message_comes_back_exactly(self, lines, cuts):
        """A message with CRLF lines, dot-stuffed as a client sends it, is read back unchanged."""
        message = b"".join(line + b"\r\n" for line in lines)
        wire = stuff(message) + b"NOOP\r\n"
        read, rest, reader = _read_all(packets(wire, cuts))
        self.assertEqual((read, rest, reader.done, reader.bare_line_ending),
                         (message, b"NOOP\r\n", True, False))


# The SMTP conversation: well-formed commands (most of the time, so that
# sessions get as far as DATA and AUTH), mangled ones, junk, DATA sections.
GOOD = [b"EHLO client.test", b"HELO client.test", b"MAIL FROM:<s@remote.test>",
        b"MAIL FROM:<>", b"MAIL FROM:<alice@example.test> SIZE=100 BODY=8BITMIME",
        b"MAIL FROM:<a@b.test> SIZE=99999999999", b"RCPT TO:<alice@example.test>",
        b"RCPT TO:<team@example.test>", b"RCPT TO:<carol@remote.test>",
        b"RCPT TO:<postmaster>", b"RCPT TO:<nobody@example.test>", b"DATA", b"RSET",
        b"NOOP", b"VRFY alice", b"EXPN team", b"HELP", b"STARTTLS", b"AUTH PLAIN",
        b"AUTH LOGIN", b"AUTH PLAIN " + _PLAIN.encode(), b"AUTH PLAIN =", b"AUTH CRAM-MD5",
        b"BDAT 10 LAST", b"XCLIENT ADDR=1.2.3.4", b"GET / HTTP/1.1", b"QUIT"]
VERBS = [line.split(b" ")[0] for line in GOOD]
JUNK = st.builds(
    lambda verb, sep, arg: verb + sep + arg,
    st.one_of(st.sampled_from(VERBS), st.sampled_from(VERBS).map(bytes.lower),
              st.binary(max_size=12)),
    st.sampled_from([b" ", b"", b"  ", b"\t"]),
    st.one_of(st.just(b""), st.binary(max_size=40), st.integers(0, 700).map(lambda n: b"x" * n)),
)
COMMAND = st.one_of(*[st.sampled_from(GOOD)] * 4, JUNK)
LINE_END = st.sampled_from([b"\r\n"] * 5 + [b"\n", b"\r\r\n", b"\x00\r\n"])
DATA_SECTION = st.builds(lambda pieces, end: b"".join(pieces) + end,
                         st.lists(DATA_PIECES, max_size=12),
                         st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\n", b".\r\n", b"\n.\n", b""]))
SASL_LINE = st.sampled_from([b"*\r\n", _PLAIN.encode() + b"\r\n", b"=\r\n", b"YWxpY2U=\r\n"])
TRANSACTION = st.builds(
    lambda mail, rcpts, body: b"".join(
        line + b"\r\n" for line in [b"RSET", b"EHLO client.test", mail, *rcpts, b"DATA"]) + body,
    st.sampled_from(GOOD[2:6]), st.lists(st.sampled_from(GOOD[6:11]), min_size=1, max_size=3),
    DATA_SECTION)
SEGMENT = st.one_of(*[st.builds(bytes.__add__, COMMAND, LINE_END)] * 3, TRANSACTION,
                    TRANSACTION, DATA_SECTION, SASL_LINE)
CONVERSATION = st.lists(SEGMENT, max_size=25).map(b"".join)

# A final reply line, and the closing ones.
_FINAL = re.compile(rb"^\d{3} ", re.M)


class ConversationTests(unittest.TestCase):
    """The whole protocol, fed any byte stream."""

    def setUp(self):
        run_threads_inline(self)

    def _connect(self):
        return connect(make_mail_server(self), ip="127.0.0.1")

    @examples(150)
    @given(CONVERSATION)
    @example(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
             b"a\nb\r\n.\r\n")
    @example(b"EHLO c\r\nAUTH LOGIN\r\n\x00\xff\r\n")
    @example(b"BDAT 100 LAST\r\n" + b"x" * 100)
    def test_one_reply_per_command_line(self, stream):
        """Fed line by line, each command line (or SASL response) gets exactly one reply."""
        c = self._connect()
        for line in lines(stream):
            in_data = c.protocol._reader is not None
            reply = c.send(line)
            finals = _FINAL.findall(reply)
            if c.closed:
                self.assertTrue(finals == [] or reply.endswith((b"421 4.7.0 Too many errors\r\n",
                                                                b"221 2.0.0 Bye\r\n")), reply)
                return
            if not line.endswith(b"\n"):
                self.assertEqual(finals, [], line)  # nothing until the line ends
            elif in_data:
                self.assertLessEqual(len(finals), 1, (line, reply))
            else:
                self.assertEqual(len(finals), 1, (line, reply))
        self._still_answers(c, stream)

    def _still_answers(self, c, stream):
        """End whatever is under way; then NOOP is answered (or the session closed for errors)."""
        if not stream.endswith(b"\n"):
            c.send(b"\r\n")
        if c.protocol._reader is not None:
            c.send(b"\r\n.\r\n")
        if c.protocol._sasl is not None:
            c.send(b"*\r\n")
        if not c.closed:
            reply = c.send(b"NOOP\r\n")
            self.assertIn(reply, (b"250 2.0.0 Ok\r\n",
                                  b"500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n"))

    @examples(100)
    @given(CONVERSATION, st.lists(st.integers(0, 10 ** 6), max_size=10))
    def test_packet_boundaries_do_not_matter(self, stream, cuts):
        """Cut into any packets, a stream gets the same replies as in one piece."""
        stream = stream.replace(b"STARTTLS", b"NOOP")  # STARTTLS drops what follows by design
        whole = self._transcript([stream])
        self.assertEqual(self._transcript(packets(stream, cuts)), whole)

    def _transcript(self, packets):
        c = self._connect()
        replies = b"".join(c.send(p) for p in packets if not c.closed)
        return re.sub(rb"queued as \w+", b"queued as ID", replies), c.closed
