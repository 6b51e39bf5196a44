"""
The MIME structure of a stored message, for FETCH BODYSTRUCTURE, BODY,
BODY[section] and ENVELOPE (RFC 3501 6.4.5, 7.4.2).

L{parse} reads a message once, in one loop (no recursion, whatever a
sender nests), into a tree of L{Entity} objects holding byte offsets into
the message: each part's header, body and children. Sections are slices
of the message's own bytes, so sizes are exact and nothing is re-encoded.

A sender controls the shape, so the tree is capped as Dovecot caps it
(CVE-2020-12100): multiparts and attached messages nest at most
L{MAX_DEPTH} levels (a multipart at the limit is shown with one empty
text part) and a message has at most L{MAX_PARTS} parts (the rest of the
message is the body of the last one). L{costly} says when parsing belongs
in a thread.
"""

import base64
import binascii
import functools
import re

from mailsrv.addresslist import addresses
from mailsrv.store.headerfields import FOLD

# Multipart and message/rfc822 levels opened (Dovecot: 100 in total).
MAX_DEPTH = 100
# Parts of one message, attached messages included (Dovecot: 10,000).
MAX_PARTS = 10_000
# Above this size, or with more boundary-looking lines than
# L{MANY_BOUNDARIES}, a message is parsed in a thread (L{costly}).
LARGE_MESSAGE = 256 << 10
MANY_BOUNDARIES = 500
# What a multipart without parsed parts shows as its one part (Dovecot's).
EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'

_BARE_LF = re.compile(rb"(?<!\r)\n")
_DASH_LINE = re.compile(rb"^--[^\n]*", re.MULTILINE)
# An empty line (the end of a header) or a line that may be a boundary.
_HEADER_STOP = re.compile(rb"^(?:\r?\n|--[^\n]*)", re.MULTILINE)
_FIELD = re.compile(rb"^([^:\s]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_PARAM = re.compile(rb';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;\s]*)')
_QUOTED_PAIR = re.compile(rb"\\(.)")
_CONTINUATION = re.compile(rb"(.+?)\*(\d{1,3})(\*?)")


def crlf(data):
    """C{data} with every bare LF made CRLF (mail copied from other servers)."""
    if _BARE_LF.search(data) is None:
        return data
    return _BARE_LF.sub(b"\r\n", data)


def costly(data):
    """Whether parsing C{data} would stall the reactor (tens of ms)."""
    return len(data) > LARGE_MESSAGE or data.count(b"\n--") > MANY_BOUNDARIES


class Entity:
    """
    A message or body part: C{data[start:header_end]} is its header,
    C{data[body_start:end]} its body. A multipart has C{parts} (empty when
    capped or when its boundary never occurs); a message/rfc822 part has
    the attached message as C{message}.
    """

    __slots__ = ("start", "header_end", "body_start", "end", "depth",
                 "maintype", "subtype", "fields", "parts", "message")

    def __init__(self, data, start, delimiters, depth, default_type):
        self.start = start
        self.header_end, self.body_start = _header_bounds(data, start, delimiters)
        self.end = len(data)
        self.depth = depth
        self.fields = header_fields(data[start:self.header_end])
        ctype = self.fields.get(b"content-type")
        self.maintype, self.subtype = _media_type(ctype) if ctype else default_type
        self.parts = None
        self.message = None

    def header(self, data):
        return data[self.start:self.body_start]

    def body(self, data):
        return data[self.body_start:self.end]

    def attached(self):
        """The message a HEADER or TEXT section refers to (RFC 3501 6.4.5)."""
        return self.message if self.message is not None else self


def parse(data):
    """
    The tree of C{data} (a whole message), capped at L{MAX_DEPTH} and
    L{MAX_PARTS}. Each byte is scanned about once: a header up to its
    empty line (or a boundary), a body up to the next boundary line.
    """
    boundaries = _Boundaries()
    opened = []  # entities whose end is not known yet, outermost first
    count = 0
    pos = 0
    parent = None
    while True:
        # a new entity begins at pos: the root, a part, or an attached message
        count += 1
        default = (b"message", b"rfc822") if parent and parent.subtype == b"digest" \
            else (b"text", b"plain")
        depth = len(opened)
        entity = Entity(data, pos, boundaries.index, depth, default)
        if parent is None:
            root = entity
        elif parent.parts is not None:
            parent.parts.append(entity)
        else:
            parent.message = entity
        opened.append(entity)
        parent = None
        last = entity
        if entity.maintype == b"multipart":
            entity.parts = []  # none when capped or without a boundary
            boundary = _boundary(entity.fields.get(b"content-type"))
            if boundary and depth < MAX_DEPTH and count < MAX_PARTS:
                boundaries.push(b"--" + boundary, entity)
        elif (entity.maintype, entity.subtype) == (b"message", b"rfc822") and count < MAX_PARTS:
            if depth < MAX_DEPTH:
                pos, parent = entity.body_start, entity
                continue
            # capped: shown with its envelope, nothing inside it is parsed
            count += 1
            last = entity.message = Entity(
                data, entity.body_start, boundaries.index, depth + 1, (b"text", b"plain"))
            opened.append(last)
        found = boundaries.next(data, last.body_start)
        # close what ends before the next part begins
        while True:
            if found is None:
                return root
            line_start, line_end, multipart, closing = found
            if count >= MAX_PARTS and not closing:
                return root  # the rest of the message is the body of the last part
            end = line_start - (2 if data[line_start - 2:line_start] == b"\r\n" else 1)
            while opened[-1] is not multipart:
                closed = opened.pop()
                closed.end = max(closed.body_start, end)
            boundaries.pop_to(multipart, closing)
            pos = line_end
            if not closing:
                parent = multipart
                break
            found = boundaries.next(data, pos)


class _Boundaries:
    """The delimiters (C{--boundary}) of the multiparts open, innermost last."""

    def __init__(self):
        self.stack = []  # (delimiter, multipart Entity)
        self.index = {}  # delimiter -> position in stack, the innermost one

    def push(self, delimiter, multipart):
        self.index[delimiter] = len(self.stack)
        self.stack.append((delimiter, multipart))

    def pop_to(self, multipart, inclusive):
        """Forget the delimiters inside C{multipart} (and its own if C{inclusive})."""
        while self.stack[-1][1] is not multipart:
            self.stack.pop()
        if inclusive:
            self.stack.pop()
        self.index = {delimiter: i for i, (delimiter, _) in enumerate(self.stack)}

    def next(self, data, pos):
        """
        The next line from C{pos} that is a delimiter, then C{--} if it
        closes its multipart, then only white space: C{(line start, next
        line start, multipart, closing)}, or L{None}.
        """
        if not self.stack:
            return None
        while True:
            match = _DASH_LINE.search(data, pos)
            if match is None:
                return None
            pos = match.end() + 1
            found = _delimiter(match.group(), self.index)
            if found is not None:
                index, closing = found
                return match.start(), min(pos, len(data)), self.stack[index][1], closing


def _delimiter(line, index):
    """C{(position in index, closing)} if C{line} is one of C{index}'s delimiters, or L{None}."""
    line = line.rstrip(b" \t\r")
    opening = index.get(line, -1)
    closing = index.get(line[:-2], -1) if line.endswith(b"--") else -1
    if opening < 0 and closing < 0:
        return None
    return max(opening, closing), closing > opening


def _header_bounds(data, start, delimiters):
    """
    Where the header from C{start} ends, and its body begins: after its
    empty line, or at a line that is one of C{delimiters} (a part without
    a body), or at the end.
    """
    pos = start
    while True:
        match = _HEADER_STOP.search(data, pos)
        if match is None:
            return len(data), len(data)
        if not match.group().startswith(b"-"):
            return match.start(), match.end()
        if _delimiter(match.group(), delimiters) is not None:
            return match.start(), match.start()
        pos = match.end() + 1


def header_fields(block):
    """Lower-case field name -> the first such field's value, unfolded and stripped."""
    fields = {}
    for match in _FIELD.finditer(block):
        name = match.group(1).lower()
        if name not in fields:
            fields[name] = FOLD.sub(b"", match.group(2)).strip()
    return fields


def _media_type(value):
    kind, _, sub = _params(value)[0].partition(b"/")
    if not (kind.strip() and sub.strip()):
        return b"text", b"plain"  # RFC 2045 5.2: an unreadable type is text/plain
    return kind.strip(), sub.strip()


def _boundary(value):
    for name, param in _params(value)[1:]:
        if name == b"boundary" and param:
            return param
    return None


@functools.lru_cache(maxsize=256)
def _params(value):
    """
    C{(b"type/subtype", (name, value), ...)} of a Content-Type or
    Content-Disposition value: names lower-cased, quoted values unquoted,
    parameters without a value left out, RFC 2231 continuations
    (C{name*0}, C{name*1}) joined into one C{name} (or C{name*} when
    encoded), as Dovecot shows them. Cached: thousands of parts often
    share one value.
    """
    first, _, rest = value.partition(b";")
    joined = {}  # name -> [(index, value)]
    for match in _PARAM.finditer(b";" + rest):
        name, text = match.group(1).lower(), match.group(2)
        if text.startswith(b'"'):
            text = _QUOTED_PAIR.sub(rb"\1", text[1:-1] if text.endswith(b'"') else text[1:])
        continued = _CONTINUATION.fullmatch(name)
        index = 0
        if continued:
            name, index = continued.group(1) + continued.group(3), int(continued.group(2))
        joined.setdefault(name, []).append((index, text))
    params = tuple((name, b"".join(text for _, text in sorted(pieces)))
                   for name, pieces in joined.items())
    return (first.strip().lower(), *params)


def find(root, numbers):
    """
    The entity of section C{numbers} (1-based), or L{None}. Inside a
    message/rfc822 part the numbers count the attached message's parts,
    and part 1 of a message that is not multipart is that message
    (RFC 3501 6.4.5).
    """
    entity = root
    for position, number in enumerate(numbers):
        if position and entity.message is not None:
            entity = entity.message
        if entity.parts is not None:
            if not 0 < number <= len(entity.parts):
                return None
            entity = entity.parts[number - 1]
        elif number != 1:
            return None
        elif position + 1 < len(numbers) and entity.message is None:
            return None
    return entity


def section(data, root, numbers, kind, fields=None, negate=False):
    """
    The bytes of BODY[numbers.kind]: C{kind} is C{"header"}, C{"text"},
    C{"mime"} or C{""} (the part's body; the whole message without
    numbers). A part that does not exist is empty, as in Dovecot.
    """
    entity = find(root, numbers)
    if entity is None:
        return b""
    if kind == "mime":
        return entity.header(data) if numbers else b""
    if kind in ("header", "text"):
        if numbers:
            entity = entity.attached()
        if kind == "text":
            return entity.body(data)
        return select_fields(entity.header(data), fields, negate)
    if not numbers:
        return data
    return entity.body(data)


def select_fields(block, fields, negate):
    """
    The fields of header C{block} (with continuation lines) named in
    C{fields}, or all others when C{negate}; all without C{fields}. Ends
    with the empty line, as RFC 3501 wants.
    """
    if not fields:
        return block
    wanted = {f.lower() if isinstance(f, bytes) else f.lower().encode() for f in fields}
    out, keep = [], False
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] not in (b" ", b"\t"):
            keep = (line.split(b":", 1)[0].strip().lower() in wanted) != bool(negate)
        if keep:
            out.append(line)
    out.append(b"\r\n")
    return b"".join(out)


def body_structure(data, entity, extended):
    """
    BODYSTRUCTURE (C{extended}) or BODY of C{entity}, as bytes (RFC 3501
    7.4.2). Recursive, but L{parse} keeps the tree under L{MAX_DEPTH} + 1
    levels.
    """
    fields = entity.fields
    if entity.parts is not None:
        inner = b"".join(body_structure(data, p, extended) for p in entity.parts)
        out = [inner or EMPTY_BODY, _string(entity.subtype)]
        if extended:
            out += [_param_list(fields.get(b"content-type")), _disposition(fields),
                    _nstring(fields.get(b"content-language")),
                    _nstring(fields.get(b"content-location"))]
        return b"(" + b" ".join(out) + b")"
    params = _param_list(fields.get(b"content-type"))
    if params == b"NIL" and entity.maintype == b"text":
        params = b'("charset" "us-ascii")'
    size = entity.end - entity.body_start
    out = [_string(entity.maintype), _string(entity.subtype), params,
           _nstring(fields.get(b"content-id")), _nstring(fields.get(b"content-description")),
           _string(fields.get(b"content-transfer-encoding") or b"7bit"), b"%d" % size]
    if entity.message is not None:
        out += [envelope(entity.message.fields),
                body_structure(data, entity.message, extended)]
    if entity.maintype == b"text" or entity.message is not None:
        out.append(b"%d" % _lines(data, entity.body_start, entity.end))
    if extended:
        out += [_nstring(fields.get(b"content-md5")), _disposition(fields),
                _nstring(fields.get(b"content-language")),
                _nstring(fields.get(b"content-location"))]
    return b"(" + b" ".join(out) + b")"


def envelope(fields):
    """ENVELOPE (RFC 3501 7.4.2) of a message with header C{fields} (L{header_fields})."""
    sender = _address_list(fields.get(b"from"))
    to, cc, bcc = (_address_list(fields.get(name)) for name in (b"to", b"cc", b"bcc"))
    out = [_nstring(fields.get(b"date")), _nstring(fields.get(b"subject")), sender,
           _address_list(fields.get(b"sender")) or sender,
           _address_list(fields.get(b"reply-to")) or sender,
           to, cc, bcc, _nstring(fields.get(b"in-reply-to")),
           _nstring(fields.get(b"message-id"))]
    return b"(" + b" ".join(item or b"NIL" for item in out) + b")"


def _address_list(value):
    """
    The IMAP address list of an RFC 5322 address list (L{addresses}), or
    C{b""} when it has none. An address without a domain gets Dovecot's
    C{MISSING_DOMAIN} (a NIL host would mean a group).
    """
    out = []
    for name, route, mailbox, host in addresses(value):
        if host is not None:
            out.append(b"(%b %b %b %b)" % (
                _nstring(name), _nstring(route), _string(mailbox or b"MISSING_MAILBOX"),
                _string(host or b"MISSING_DOMAIN")))
        else:  # the start of a group, or its end
            out.append(b"(NIL NIL " + _nstring(mailbox) + b" NIL)")
    return b"(" + b"".join(out) + b")" if out else b""


def _lines(data, start, end):
    """Lines of C{data[start:end]}, a last one without its line end included."""
    if start >= end:
        return 0
    return data.count(b"\n", start, end) + (data[end - 1:end] != b"\n")


def _param_list(value):
    if not value:
        return b"NIL"
    params = _params(value)[1:]
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_string(name) + b" " + _string(text)
                            for name, text in params) + b")"


def _disposition(fields):
    value = fields.get(b"content-disposition")
    if not value:
        return b"NIL"
    return b"(" + _string(_params(value)[0]) + b" " + _param_list(value) + b")"


def _nstring(value):
    return b"NIL" if value is None else _string(value)


def _string(value):
    """An IMAP string: quoted, or a literal for 8-bit bytes and controls."""
    if any(b < 0x20 or b > 0x7e for b in value):
        return b"{%d}\r\n%b" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_IDENTITY_ENCODINGS = (b"", b"7bit", b"8bit", b"binary")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE_END = re.compile(rb"\r?\n")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def encoding(entity):
    """C{entity}'s Content-Transfer-Encoding, lower case (C{b""} when none)."""
    return (entity.fields.get(b"content-transfer-encoding") or b"").strip().lower()


def decodable(entity):
    """Whether L{binary_section} can undo C{entity}'s Content-Transfer-Encoding."""
    return encoding(entity) in _IDENTITY_ENCODINGS + (b"base64", b"quoted-printable")


def binary_section(data, root, numbers):
    """
    FETCH BINARY[numbers] (RFC 3516): the part's body with its
    Content-Transfer-Encoding undone (base64 and quoted-printable
    decoded, 7bit, 8bit and binary as they are); the whole message
    without numbers; empty for a part that does not exist, as BODY.
    Check L{decodable} first: any other encoding is returned as it is.
    """
    if not numbers:
        return data
    entity = find(root, numbers)
    if entity is None:
        return b""
    body = entity.body(data)
    kind = encoding(entity)
    if kind == b"base64":
        return _unbase64(body)
    if kind == b"quoted-printable":
        return _unquote_printable(body)
    return body


def _unbase64(body):
    """Base64 with white space and other junk skipped, a broken tail dropped."""
    try:
        return binascii.a2b_base64(body)
    except binascii.Error:
        clean = _NOT_BASE64.sub(b"", body.split(b"=", 1)[0])
        return binascii.a2b_base64(clean[:len(clean) // 4 * 4])


def _unquote_printable(body):
    """
    RFC 2045 6.7: white space at line ends dropped, C{=} at a line end
    joins the lines, C{=XX} is byte XX; a C{=} without hex digits stays.
    """
    lines = _LINE_END.split(body)
    out = []
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t")
        if line.endswith(b"="):
            out.append(line[:-1])
        else:
            out.append(line)
            if i + 1 < len(lines):
                out.append(b"\r\n")
    return _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), b"".join(out))


_ENCODING_FIELD = re.compile(rb"^(content-transfer-encoding[ \t]*:)[^\n]*\n(?:[ \t][^\n]*\n)*",
                             re.I | re.M)


def base64_binary_parts(data):
    """
    C{data} (a message APPENDed as literal8) with each part whose
    Content-Transfer-Encoding is C{binary} made base64, so that it holds
    no NUL or bare line end (every other program reads it as mail) and
    FETCH BINARY gives its bytes back (RFC 3516 4.1).
    """
    root = parse(data)
    out, pos = [], 0
    stack = [root]
    while stack:
        entity = stack.pop()
        if entity.parts is not None:
            stack.extend(reversed(entity.parts))
        elif entity.message is not None:
            stack.append(entity.message)
        elif encoding(entity) == b"binary":
            header = _ENCODING_FIELD.sub(rb"\1 base64\r\n", entity.header(data))
            body = base64.encodebytes(entity.body(data)).replace(b"\n", b"\r\n")
            out += [data[pos:entity.start], header, body]
            pos = entity.end
    out.append(data[pos:])
    return b"".join(out)
