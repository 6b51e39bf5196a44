"""
What the content filters read of a message (issue 17), worked out once per
message for all of them (L{mailsrv.policy.hooks.Message.judged}): the
raw header block of each part, its content type, boundary and
file name, the decoded text of text/plain and text/html parts, and the
names inside zip attachments.

A sender controls the shape, so everything that grows is capped: bytes
read (L{MAX_READ}), parts (L{MAX_PARTS}), nesting (L{MAX_DEPTH}), each
header block (L{MAX_HEADER}), decoded bytes in all (L{MAX_DECODED}), zip
members listed (L{MAX_MEMBERS}). What a cap cut is named in
L{Content.limits}, so a filter may count it. Nothing raised by hostile
input escapes (tests/test_policy_content.py feeds it random MIME).

The part structure is found here, on the bytes (delimiter lines at line
starts, each byte scanned about once per level), not by C{email}'s
parser: that one keeps neither a part's raw header block (the broken-MIME
checks read exactly those bytes) nor any limit on parts or depth (it
recurses once per level). The MIME fields of each header block
(L{mailsrv.headerblock}) are then read by the stdlib C{email} package
(compat32): its parameter parsing knows RFC 2231 values and
continuations, and C{email.header} decodes RFC 2047 encoded words in
file names; no need for a parser of our own there. The decoding of
bodies is the stdlib's C{binascii} (base64, quoted-printable) and codecs.
"""

import binascii
import codecs
import email.message
import io
import re
import zipfile
from dataclasses import dataclass
from email import errors as email_errors
from email.header import decode_header
from email.policy import compat32
from typing import Optional

from mailsrv.headerblock import FIELD, compat32_value

MAX_READ = 32 << 20      # bytes of the message analysed (the rest is not read)
MAX_PARTS = 1000         # parts, attached messages included
MAX_DEPTH = 20           # multipart and message/rfc822 levels
MAX_HEADER = 64 << 10    # bytes of one part's header block kept and parsed
MAX_FIELD = 4096         # characters of a Content-Type/-Disposition value parsed
MAX_DECODED = 16 << 20   # decoded bytes (text and zip attachments), all parts together
MAX_MEMBERS = 1000       # names listed of one zip file

TEXT_TYPES = ("text/plain", "text/html")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")

_HEADER_END = re.compile(rb"\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_ZIP_END = b"PK\x05\x06"  # the end of central directory record
_IDENTITY = ("", "7bit", "8bit", "binary")
# Codecs whose decoding takes time quadratic in the input, or that are no
# mail charset: their text is read as UTF-8.
_SLOW_CODECS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape"})


@dataclass(frozen=True)
class Part:
    """
    One part of a message (the message itself is the first).

    @ivar header: its raw header block (at most L{MAX_HEADER} bytes).
    @ivar content_type: C{"type/subtype"}, lower case (text/plain when
        missing or unreadable, RFC 2045 5.2).
    @ivar depth: 0 for the message, 1 for its parts, ...
    @ivar boundary: a multipart's boundary parameter, L{None} when missing.
    @ivar filename: the file name (Content-Disposition filename, else
        Content-Type name), RFC 2231 and RFC 2047 decoded; "" for none.
    @ivar text: the decoded text of a text/plain or text/html part, else
        L{None}.
    @ivar members: the names inside a zip attachment.
    """

    header: bytes
    content_type: str
    depth: int
    boundary: Optional[str] = None
    filename: str = ""
    text: Optional[str] = None
    members: tuple = ()


@dataclass(frozen=True)
class Content:
    """
    @ivar parts: the L{Part}s, in the order they come.
    @ivar limits: names of the caps that cut something (C{"size"},
        C{"parts"}, C{"depth"}, C{"header"}, C{"decoded"}, C{"zip"}).
    """

    parts: tuple
    limits: frozenset = frozenset()

    def texts(self, content_type):
        """The decoded texts of the parts of C{content_type} (text/plain, text/html)."""
        return [p.text for p in self.parts if p.content_type == content_type
                and p.text is not None]


def analyse(open_message):
    """
    In a thread: the L{Content} of the message C{open_message()} gives.
    """
    with open_message() as f:
        data = f.read(MAX_READ + 1)
    return parse(data)


def parse(data):
    """The L{Content} of C{data}, a whole message."""
    walk = _Walk()
    if len(data) > MAX_READ:
        data = data[:MAX_READ]
        walk.limits.add("size")
    walk.entity(data, 0, len(data), 0)
    return Content(tuple(walk.parts), frozenset(walk.limits))


class _Walk:
    """The parts found so far, and the budgets left."""

    def __init__(self):
        self.parts = []
        self.limits = set()
        self.decoded = MAX_DECODED

    def entity(self, data, start, end, depth):
        """Add the part C{data[start:end]} and the parts inside it."""
        if len(self.parts) >= MAX_PARTS:
            self.limits.add("parts")
            return
        header_end, body = _header_bounds(data, start, end)
        header = data[start:header_end]
        if len(header) > MAX_HEADER:
            header = header[:MAX_HEADER]
            self.limits.add("header")
        fields = _fields(header)
        content_type = _printable(fields.get_content_type(), "")  # (folded: CRLF inside)
        if content_type.startswith("multipart/"):
            boundary = _boundary(fields)
            self.parts.append(Part(header, content_type, depth, boundary))
            if boundary and self._deeper(depth):
                delimiter = b"--" + raw_bytes(boundary)
                # An opening delimiter in the header block (the mime filter's
                # boundary-in-header) starts the parts there, as mail readers do.
                hidden = next(_lines_starting(data, delimiter, start, header_end), -1)
                for part_start, part_end in _parts(data, body if hidden < 0 else hidden, end,
                                                   delimiter):
                    if len(self.parts) >= MAX_PARTS:  # (stop looking for more)
                        self.limits.add("parts")
                        break
                    self.entity(data, part_start, part_end, depth + 1)
            return
        encoding = str(fields.get("content-transfer-encoding", "")).strip().lower()
        if content_type == "message/rfc822" and encoding in _IDENTITY:
            self.parts.append(Part(header, content_type, depth))
            if self._deeper(depth):
                self.entity(data, body, end, depth + 1)
            return
        self.parts.append(self._leaf(fields, header, content_type, depth, encoding,
                                     data, body, end))

    def _deeper(self, depth):
        if depth + 1 < MAX_DEPTH:
            return True
        self.limits.add("depth")
        return False

    def _leaf(self, fields, header, content_type, depth, encoding, data, start, end):
        filename = _filename(fields)
        text, members = None, ()
        if content_type in TEXT_TYPES:
            payload = self._decoded(data, start, end, encoding)
            text = _text(payload, fields.get_content_charset())
        elif content_type in ZIP_TYPES or filename.lower().endswith(".zip"):
            members = self._members(self._decoded(data, start, end, encoding))
        return Part(header, content_type, depth, None, filename, text, members)

    def _decoded(self, data, start, end, encoding):
        """The body C{data[start:end]} with its transfer encoding undone, within the budget."""
        budget = self.decoded
        if encoding == "base64":  # 4 characters for 3 bytes, and line ends
            limit, decode = budget // 3 * 4 + budget // 20 + 8, _unbase64
        elif encoding == "quoted-printable":
            limit, decode = budget * 3, binascii.a2b_qp
        else:
            limit, decode = budget, bytes
        decoded = decode(memoryview(data)[start:min(end, start + limit)])  # (not copied)
        if len(decoded) > budget or end - start > limit:
            self.limits.add("decoded")
            decoded = decoded[:budget]
        self.decoded -= len(decoded)
        return decoded

    def _members(self, payload):
        """The names in a zip file; none when it is not one, or lists too many."""
        found = payload.rfind(_ZIP_END, max(0, len(payload) - (1 << 16) - 22))
        if found < 0:
            return ()
        count = int.from_bytes(payload[found + 10:found + 12], "little")
        if count > MAX_MEMBERS:  # (0xFFFF: a ZIP64 count, more than that too)
            self.limits.add("zip")
            return ()
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                return tuple(_printable(info.filename)
                             for info in archive.infolist()[:MAX_MEMBERS])
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError,
                NotImplementedError):
            return ()


def _header_bounds(data, start, end):
    """Where the header block from C{start} ends, and its body begins."""
    if data.startswith(b"\r\n", start, end):
        return start, start + 2
    if data.startswith(b"\n", start, end):
        return start, start + 1
    match = _HEADER_END.search(data, start, end)
    if match is None:
        return end, end
    return match.start() + 1, match.end()


def _fields(header):
    """
    The MIME fields of a header block (the first of each) as a compat32
    message, whose methods read their parameters; long values cut (their
    parsing takes quadratic time).
    """
    fields = email.message.Message(policy=compat32)
    for name, raw in FIELD.findall(header):
        name = name.lower()
        if name in _MIME_FIELDS and name.decode() not in fields:
            fields[name.decode()] = compat32_value(raw)[:MAX_FIELD]
    return fields


_MIME_FIELDS = frozenset({b"content-type", b"content-transfer-encoding", b"content-disposition"})


def _boundary(fields):
    boundary = fields.get_boundary()
    return boundary if boundary else None


def raw_bytes(text):
    """The bytes a header value came from (compat32 keeps 8-bit bytes as surrogates)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # an RFC 2231 value decoded to other surrogates
        return text.encode("utf-8", "replace")


def _parts(data, start, end, delimiter):
    """
    C{(start, end)} of each part of a multipart whose body is
    C{data[start:end]}: between C{delimiter} lines (C{--boundary}), until
    the closing one (C{--boundary--}) or the end.
    """
    part_start = None
    for found in _lines_starting(data, delimiter, start, end):
        if part_start is not None:
            yield part_start, _before_line_end(data, part_start, found)
        pos = found + len(delimiter)
        line_end = data.find(b"\n", pos, end)
        part_start = end if line_end < 0 else line_end + 1
        if data.startswith(b"--", pos, end):
            return  # the closing delimiter
    if part_start is not None and part_start < end:
        yield part_start, end  # no closing delimiter: the last part runs to the end


def _lines_starting(data, prefix, start, end):
    """The positions of the lines of C{data[start:end]} that begin with C{prefix}."""
    pos = start
    while (found := data.find(prefix, pos, end)) >= 0:
        pos = found + len(prefix)
        if found == start or data[found - 1] == 0x0a:
            yield found


def _before_line_end(data, start, delimiter):
    """The end of a part: the line end before its next delimiter belongs to the delimiter."""
    end = delimiter
    if end > start and data[end - 1] == 0x0a:
        end -= 1
        if end > start and data[end - 1] == 0x0d:
            end -= 1
    return end


def _unbase64(raw):
    """Base64 with white space and junk skipped; a broken tail dropped."""
    try:
        return binascii.a2b_base64(raw)
    except binascii.Error:
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", bytes(raw).split(b"=", 1)[0])
        return binascii.a2b_base64(clean[:len(clean) // 4 * 4])


def _text(payload, charset):
    """C{payload} as text: its charset, else UTF-8; bytes that do not decode replaced."""
    if charset:
        try:
            if codecs.lookup(charset).name not in _SLOW_CODECS:
                return payload.decode(charset, "replace")
        except (LookupError, UnicodeError, ValueError, TypeError):
            pass  # unknown, or not a text encoding (rot13, base64...)
    return payload.decode("utf-8", "replace")


def _filename(fields):
    """The decoded file name of a part, "" for none."""
    name = fields.get_filename() or ""  # (RFC 2231 values collapsed)
    if "=?" not in name:
        return _printable(name)
    try:
        words = decode_header(name)
    except (email_errors.HeaderParseError, ValueError, binascii.Error):
        return _printable(name)
    return _printable("".join(
        word if isinstance(word, str) else _text(word, charset) for word, charset in words))


def _printable(name, unprintable="?"):
    """
    A name as a reason (a header, a reply) may show it: surrogates (8-bit
    bytes) and controls, CR and LF included, replaced.
    """
    return "".join(c if c.isprintable() and not "\ud800" <= c <= "\udfff" else unprintable
                   for c in name).strip()
