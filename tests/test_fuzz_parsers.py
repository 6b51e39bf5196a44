"""
Property tests of the parsers outside the protocols (issue 13): SASL
exchanges, the MIME walker behind BODYSTRUCTURE and numbered parts, and the
list files admins edit. Each either gives a result or raises its documented
error; nothing else escapes.
"""

import base64
import io
from types import SimpleNamespace

from hypothesis import example, given, strategies as st
from twisted.trial import unittest

from mailsrv import netaddr, sasl
from mailsrv.directory.listfile import ListFileError
from mailsrv.directory.senderlist import parse_kill_list, parse_whitelist
from mailsrv.imap import mailbox, mime
from tests.fuzzing import examples

RESPONSE = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()),
    st.lists(st.sampled_from([b"", b"alice", b"\0", b"\xff", b"pw"]), max_size=6)
    .map(lambda parts: base64.b64encode(b"".join(parts)).decode()),
    st.sampled_from(["*", "=", "", " ", "====", "a" * 3000]),
)


class SASLTests(unittest.TestCase):
    @examples(300)
    @given(st.sampled_from(sorted(sasl.mechanisms(certificate=True))),
           st.one_of(st.none(), RESPONSE), st.lists(RESPONSE, max_size=3))
    def test_exchange_ends_in_credentials_or_sasl_error(self, name, initial, responses):
        exchange = sasl.mechanisms(certificate=True)[name]()
        step = exchange.start
        for value in [initial, *responses]:
            try:
                result = step(value)
            except sasl.SASLError as e:
                self.assertTrue(str(e))
                return
            if isinstance(result, sasl.Credentials):
                self.assertIsInstance(result.username, bytes)
                self.assertIsInstance(result.password, bytes)
                return
            if isinstance(result, sasl.Authorization):
                self.assertIsInstance(result.authzid, bytes)
                return
            self.assertIsInstance(result, sasl.Challenge)
            step = exchange.respond


class _FakeFolder:
    """What L{mailbox.Message} reads a stored message through."""

    def __init__(self, data):
        self.data = data

    def read_start(self, uid, size):
        return self.data[:size]

    def open(self, uid):
        return io.BytesIO(self.data)


def stored(data):
    return mailbox.Message(_FakeFolder(data), SimpleNamespace(
        uid=1, size=len(data), flags=frozenset(), internaldate=0, modseq=1))


def nested_multipart(depth, boundary=b"b"):
    """A message of C{depth} multiparts, each inside the one before."""
    head = tail = b""
    for level in range(depth):
        head += b"Content-Type: multipart/mixed; boundary=%s%d\r\n\r\n--%s%d\r\n" % (
            boundary, level, boundary, level)
        tail = b"\r\n--%s%d--\r\n" % (boundary, level) + tail
    return head + b"Content-Type: text/plain\r\n\r\ninnermost\r\n" + tail


HEADER_VALUE = st.one_of(
    st.sampled_from([b"text/plain", b"multipart/mixed; boundary=x", b"multipart/alternative;"
                     b" boundary=\"x\"", b"message/rfc822", b"multipart/mixed", b"text/",
                     b"/", b"multipart/mixed; boundary=", b"application/octet-stream;"
                     b" name*0=a; name*1=b", b"text/plain; charset=\"\xff\""]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
)


@st.composite
def mime_entity(draw, depth=0):
    """A MIME entity: headers (Content-Type often multipart) and parts or a body."""
    ctype = draw(HEADER_VALUE)
    headers = b"Content-Type: " + ctype + b"\r\n"
    if draw(st.booleans()):
        headers += b"Content-Transfer-Encoding: " + draw(
            st.sampled_from([b"base64", b"quoted-printable", b"8bit", b"x-\xff"])) + b"\r\n"
    if depth < 4 and draw(st.booleans()):
        parts = draw(st.lists(mime_entity(depth + 1), max_size=3))
        delimiter = b"\r\n--" + draw(st.sampled_from([b"x", b"", b"xx", b"y"]))
        body = b"".join(delimiter + b"\r\n" + part for part in parts)
        body += draw(st.sampled_from([delimiter + b"--\r\n", b"", b"\r\n--x"]))
    else:
        body = draw(st.binary(max_size=60))
    return headers + draw(st.sampled_from([b"\r\n", b"\n", b""])) + body


class MIMEWalkerTests(unittest.TestCase):
    """BODYSTRUCTURE, ENVELOPE and numbered sections (L{mime}), as FETCH computes them."""

    def _walk(self, data):
        """Every entity's offsets nest; down the first parts, as BODY[1.1.1] does."""
        data = mime.crlf(data)
        root = stored(data).mime_tree()
        for extended in (False, True):
            self.assertTrue(mime.body_structure(data, root, extended).startswith(b"("))
        mime.envelope(root.fields)
        pending = [(root, 0, len(data))]
        while pending:
            entity, low, high = pending.pop()
            self.assertTrue(low <= entity.start <= entity.header_end <= entity.body_start
                            <= entity.end <= high, (entity.start, entity.end, low, high))
            children = (entity.parts or []) + [entity.message] * (entity.message is not None)
            pending += [(child, entity.body_start, entity.end) for child in children]
        numbers, path, entity = [], [], root
        while entity.parts:
            numbers.append(1)
            entity = entity.parts[0]
            path.append(entity)
            for kind in ("", "mime", "header", "text"):
                mime.section(data, root, numbers, kind)
        return path

    @examples(200)
    @given(mime_entity())
    def test_any_structure_is_walked(self, data):
        self._walk(data)

    def test_multipart_without_its_boundary_has_no_parts(self):
        """It used to give each character of the body as a "part" (AttributeError)."""
        self.assertEqual(self._walk(b"Content-Type: multipart/mixed; boundary=x\r\n\r\n\0"), [])

    def test_8bit_body_of_an_attached_message(self):
        """Its part body used to raise UnicodeEncodeError (U+FFFD is not ASCII)."""
        self._walk(b"Content-Type: message/rfc822\r\n\r\n\x80")

    def test_content_type_parameters_without_value(self):
        """
        C{text/plain;} (a trailing semicolon), C{boundary=} or a C{;} inside
        quotes used to raise ValueError or IndexError out of Twisted's
        BODYSTRUCTURE code, and the IMAP connection was dropped.
        """
        for ctype in (b"text/plain;", b"text/plain; charset", b"multipart/mixed; boundary=",
                      b'text/plain; name="a;b"', b"text/plain; =x"):
            self._walk(b"Content-Type: " + ctype + b"\r\n\r\nbody\r\n")
        data = b'Content-Type: text/plain; charset="utf-8";\r\n\r\nbody\r\n'
        self.assertTrue(mime.body_structure(data, mime.parse(data), False).startswith(
            b'("text" "plain" ("charset" "utf-8")'))

    def test_deep_nesting_is_cut(self):
        """
        A multipart nested a thousand deep (30 KB) used to raise
        RecursionError out of the email parser; now the walk stops at
        L{mime.MAX_DEPTH}, where the multipart has no parts.
        """
        for depth in (mime.MAX_DEPTH + 1, 1000, 5000):
            path = self._walk(nested_multipart(depth))
            self.assertEqual(len(path), mime.MAX_DEPTH)
            self.assertEqual(path[-1].maintype, b"multipart")

    def test_nesting_up_to_the_limit_is_kept(self):
        data = nested_multipart(mime.MAX_DEPTH)
        path = self._walk(data)
        self.assertEqual(len(path), mime.MAX_DEPTH)
        self.assertEqual(path[-1].body(data), b"innermost\r\n")


LIST_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["10.0.0.0/8", "192.168.1.0 255.255.255.0", "192.168.0.1-50",
                         "::1", "2001:db8::/32", "*.example.com", ".example.com", "host.test",
                         "@example.test", "user@example.test", "# comment", "1-2", "/", "-",
                         "1.2.3.4/255.0.255.0", "fe80::1%eth0", "a..b", "é.test", "0x7f.1"]),
        st.text(max_size=30),
    ), max_size=8,
).map("\n".join)


class ListFileTests(unittest.TestCase):
    """Any file gives entries or a L{ListFileError} naming the file and line."""

    def setUp(self):
        self.path = self.mktemp()

    def test_bytes_that_are_not_utf8(self):
        """They raised UnicodeDecodeError, which names neither file nor line."""
        with open(self.path, "wb") as f:
            f.write(b"10.0.0.1\n\xff\xfe\n")
        with self.assertRaises(ListFileError) as caught:
            netaddr.read_entries(self.path)
        # the line's own parser refuses it (bytes that are not UTF-8 reach
        # it as lone surrogates): the users file can then skip just that line
        self.assertTrue(str(caught.exception).startswith(f"{self.path}:2: "),
                        caught.exception)

    @examples(300)
    @given(st.one_of(LIST_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.binary(max_size=200)))
    @example(b"10.0.0.1\n\xff\xfe\n")
    def test_any_file(self, content):
        with open(self.path, "wb") as f:
            f.write(content)
        for parse in (netaddr.read_entries, parse_kill_list, parse_whitelist):
            try:
                parse(self.path)
            except ListFileError as e:
                self.assertTrue(str(e).startswith(f"{self.path}:{e.lineno}: "), e)
                self.assertGreaterEqual(e.lineno, 1)
