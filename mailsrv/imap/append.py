"""
APPEND's arguments after the mailbox name, with MULTIAPPEND (RFC 3502),
literal8 (RFC 3516 BINARY) and CATENATE (RFC 4469), and the IMAP URLs
(RFC 5092) CATENATE refers to.

L{AppendParser} reads the messages one by one: the syntax here, the
literals through a function the server gives it (Twisted's literal
reading stays in server.py). Every limit is checked before the literal it
concerns is asked for, so a refused APPEND costs the server no data.
"""

import datetime
import re
from urllib.parse import unquote_to_bytes

from twisted.mail import imap4

from mailsrv.imap import mailbox, mime, syntax

# Messages in one APPEND (MULTIAPPEND): each costs a file, a UID and an
# index line; their data is held until the last one is read.
MAX_MESSAGES = 1000
# Parts of one CATENATE message, and URLs in one APPEND: each URL costs a
# message read and parsed (a PARTIAL of one byte too).
MAX_PARTS = 100
MAX_URLS = 100
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun",
           "jul", "aug", "sep", "oct", "nov", "dec")
_FLAGS = re.compile(rb"\(([^()]*)\)")
_FLAG = re.compile(rb"\\?[^\x00-\x20\x7f(){%*\"\\\]]+")
_DATE = re.compile(rb'"([^"\r\n]*)"')
_LITERAL = re.compile(rb"(~?)\{(\d{1,20})\}")
_CATENATE = re.compile(rb"CATENATE \(", re.I)
_TEXT = re.compile(rb"TEXT ", re.I)
_URL = re.compile(rb'URL (?:"((?:[^"\\\r\n]|\\["\\])*)"|([^\s()"{]+))', re.I)
_QUOTED_SPECIAL = re.compile(rb'\\(["\\])')


class Message:
    """
    One message of an APPEND.

    @ivar flags: L{str}s as L{syntax.client_flags} gives them.
    @ivar date: the internal date in seconds, or L{None} (now).
    @ivar parts: the message's pieces in order: C{(file, binary)} for a
        literal (C{binary}: it came as literal8, C{~{n}}), L{bytes} for
        a CATENATE URL. A plain APPEND has one literal.
    @ivar size: the bytes of its literals.
    """

    def __init__(self, flags, date):
        self.flags = flags
        self.date = date
        self.parts = []
        self.size = 0

    @property
    def plain(self):
        """Whether it is one literal, not literal8: stored as it came."""
        return len(self.parts) == 1 and isinstance(self.parts[0], tuple) and not self.parts[0][1]


class URL:
    """
    An IMAP URL (RFC 5092) naming a message or a part of one: C{mailbox}
    (L{str}), C{uidvalidity} (or L{None}), C{uid}, C{section} (as FETCH
    spells it, upper case, or C{b""} for the whole message), C{partial}
    (C{(offset, length or None)} or L{None}); C{text} is the URL as sent
    (L{bytes}).
    """

    def __init__(self, text, mailbox, uidvalidity, uid, section, partial):
        self.text = text
        self.mailbox = mailbox
        self.uidvalidity = uidvalidity
        self.uid = uid
        self.section = section
        self.partial = partial


class BadURL(ValueError):
    """An URL CATENATE cannot use (C{[BADURL]}, RFC 4469)."""

    def __init__(self, url, reason):
        super().__init__(reason)
        self.url = url


_URL_PATH = re.compile(
    rb"/(?P<mailbox>[^;/?#]+(?:/[^;/?#]+)*?)"
    rb"(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?"
    rb"/;UID=(?P<uid>[1-9]\d{0,9})"
    rb"(?:/;SECTION=(?P<section>[^/;?#]*))?"
    rb"(?:/;PARTIAL=(?P<offset>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?",
    re.I,
)
_URL_SERVER = re.compile(rb"imap://(?:(?P<user>[^;@/]*)(?:;AUTH=[^@/]*)?@)?[^/]*", re.I)
_SECTION = re.compile(
    rb"(?:\d{1,9}(?:\.\d{1,9})*(?:\.(?:MIME|HEADER|TEXT|HEADER\.FIELDS(?:\.NOT)? \([^()]*\)))?"
    rb"|HEADER|TEXT|HEADER\.FIELDS(?:\.NOT)? \([^()]*\))",
    re.I,
)
_UINT32 = 2 ** 32 - 1


def parse_url(text, user):
    """
    An IMAP URL (RFC 5092) CATENATE may use: relative to the server, as
    clients send them (C{/INBOX;UIDVALIDITY=5/;UID=3/;SECTION=1.2}), or
    absolute for C{user}'s own mailboxes (C{imap://user@host/...}).

    @raise BadURL: anything else (another user, a search URL, no UID,
        a bad section, name or number).
    """
    rest = text
    server = _URL_SERVER.match(rest)
    if server is not None:
        named = server.group("user")
        named = None if named is None else unquote_to_bytes(named).decode("utf-8", "replace")
        if named is None or named.lower() != user.lower():
            raise BadURL(text, "Only the logged-in user's mailboxes")
        rest = rest[server.end():]
    match = _URL_PATH.fullmatch(rest)
    if match is None:
        raise BadURL(text, "Not an IMAP URL of a message")
    try:
        mailbox = syntax.mailbox_name(unquote_to_bytes(match.group("mailbox")))
    except imap4.IllegalMailboxEncoding as e:
        raise BadURL(text, str(e))
    numbers = [match.group(name) for name in ("uidvalidity", "uid", "offset", "length")]
    uidvalidity, uid, offset, length = [None if n is None else int(n) for n in numbers]
    if any(n is not None and n > _UINT32 for n in (uidvalidity, uid, offset, length)):
        raise BadURL(text, "Number out of range")
    section = unquote_to_bytes(match.group("section") or b"")
    if section and _SECTION.fullmatch(section) is None:
        raise BadURL(text, "Bad section")
    partial = None if offset is None else (offset, length)
    return URL(text, mailbox, uidvalidity, uid, section.upper(), partial)


def parse_date(text):
    """IMAP date-time (C{"17-Jul-1996 02:44:25 -0700"}) -> epoch seconds."""
    value = text.decode("ascii").strip()
    day, month, rest = value.split("-", 2)
    if month.lower() not in _MONTHS:
        raise ValueError(value)
    when = datetime.datetime.strptime(
        f"{int(day):02d}-{_MONTHS.index(month.lower()) + 1:02d}-{rest}",
        "%d-%m-%Y %H:%M:%S %z",
    )
    return int(when.timestamp())


class AppendParser:
    """
    APPEND's messages (RFC 3501, 3502, 3516, 4469)::

        message  = [SP flag-list] [SP date-time] SP (literal / literal8 /
                   "CATENATE" SP "(" part *(SP part) ")")
        part     = "TEXT" SP (literal / literal8) / "URL" SP astring
        messages = message *(message)

    @ivar read_literal: C{f(size, binary, held)}: a Deferred of C{(file,
        the line after it)}; C{held} is how many bytes this APPEND holds
        already.
    @ivar largest: the most bytes of one message, and of one APPEND.
    """

    def __init__(self, read_literal, largest):
        self.read_literal = read_literal
        self.largest = largest
        self.messages = []
        self.held = 0
        self.urls = 0

    def parse(self, line):
        """
        A Deferred of C{(messages, b"")}, or the tuple at once when no
        literal is read.

        @raise imap4.IllegalClientResponse: bad syntax (BAD).
        @raise imap4.IllegalOperation: over a limit (NO).
        """
        return self._message(line.lstrip(b" "))

    def _message(self, line):
        if len(self.messages) >= MAX_MESSAGES:
            raise imap4.IllegalOperation(f"[LIMIT] At most {MAX_MESSAGES} messages in one APPEND")
        flags = []
        match = _FLAGS.match(line)
        if match is not None:
            words = match.group(1).split()
            if not all(_FLAG.fullmatch(word) for word in words):
                raise imap4.IllegalClientResponse("Malformed flag")
            flags = syntax.client_flags(words)
            line = line[match.end():].lstrip(b" ")
        date = None
        match = _DATE.match(line)
        if match is not None:
            try:
                date = parse_date(match.group(1))
            except ValueError:
                raise imap4.IllegalClientResponse("Invalid date-time")
            line = line[match.end():].lstrip(b" ")
        message = Message(flags, date)
        self.messages.append(message)
        match = _CATENATE.match(line)
        if match is not None:
            return self._parts(message, line[match.end():])
        return self._literal(message, line, self._after_message)

    def _literal(self, message, line, then):
        """Read the literal C{line} ends with into C{message}, then C{then(rest)}."""
        match = _LITERAL.fullmatch(line)
        if match is None:
            raise imap4.IllegalClientResponse("Expected a literal: {size}")
        size = int(match.group(2))
        if message.size + size > self.largest:
            raise imap4.IllegalOperation(f"[TOOBIG] Message larger than {self.largest} bytes")
        if self.held + size > self.largest:
            raise imap4.IllegalOperation(
                f"[TOOBIG] Messages larger than {self.largest} bytes in all")
        binary = bool(match.group(1))
        d = self.read_literal(size, binary, self.held)
        self.held += size
        message.size += size

        def read(result):
            data, rest = result
            message.parts.append((data, binary))
            return then(rest)
        return d.addCallback(read)

    def _after_message(self, rest):
        if not rest.strip():
            return self.messages, b""
        if not rest.startswith(b" "):
            raise imap4.IllegalClientResponse("Expected a space between messages")
        return self._message(rest[1:])

    def _parts(self, message, line):
        """The parts of a CATENATE list, from C{line} on."""
        while True:
            line = line.lstrip(b" ")
            if line.startswith(b")"):
                if not message.parts:
                    raise imap4.IllegalClientResponse("CATENATE needs a part")
                return self._after_message(line[1:])
            if len(message.parts) >= MAX_PARTS:
                raise imap4.IllegalOperation(f"[LIMIT] At most {MAX_PARTS} CATENATE parts")
            if _TEXT.match(line):
                return self._literal(message, line[5:].lstrip(b" "),
                                     lambda rest: self._parts(message, rest))
            match = _URL.match(line)
            if match is None:
                raise imap4.IllegalClientResponse("Expected TEXT or URL")
            self.urls += 1
            if self.urls > MAX_URLS:
                raise imap4.IllegalOperation(f"[LIMIT] At most {MAX_URLS} URLs in one APPEND")
            quoted, atom = match.groups()
            message.parts.append(
                _QUOTED_SPECIAL.sub(rb"\1", quoted) if quoted is not None else atom)
            line = line[match.end():]


class TooBig(ValueError):
    """CATENATE messages larger than an APPEND may be."""


_URL_SECTION = re.compile(
    rb"(?P<numbers>\d{1,9}(?:\.\d{1,9})*)?\.?"
    rb"(?:(?P<kind>MIME|HEADER|TEXT)|HEADER\.FIELDS(?P<negate>\.NOT)? \((?P<fields>[^()]*)\))?",
    re.I,
)


def url_bytes(url, message):
    """
    What C{url} names in L{mailsrv.imap.mailbox.Message} C{message}: a
    section as FETCH BODY[section]<partial> gives it. Reads and parses
    the message: run it in a thread.
    """
    data = message.mime_bytes()
    if url.section:
        match = _URL_SECTION.fullmatch(url.section)
        numbers = [int(n) for n in match.group("numbers").split(b".")] \
            if match.group("numbers") else []
        fields = match.group("fields")
        kind = (match.group("kind") or (b"HEADER" if fields is not None else b"")).lower()
        data = mime.section(data, message.mime_tree(), numbers, kind.decode(),
                            fields and fields.split(), bool(match.group("negate")))
    if url.partial is not None:
        offset, length = url.partial
        data = data[offset:] if length is None else data[offset:offset + length]
    return data


def build(messages, found, largest):
    """
    The data of each of C{messages}: a L{Message.plain} one as it came,
    the others with their literals and the sections their URLs name
    (C{found}: URL bytes -> C{(URL, stored message)}) joined, and made
    base64 where they came as literal8 with binary parts
    (L{mime.base64_binary_parts}). Reads files: run it in a thread. Each
    URL's message is read afresh and let go once used, so what is held
    is what is built.

    @raise TooBig: more than C{largest} bytes in all.
    """
    built, size = [], 0
    for message in messages:
        if message.plain:
            built.append(message.parts[0][0])
            size += message.size
            continue
        pieces, binary = [], False
        for part in message.parts:
            if isinstance(part, bytes):
                url, stored = found[part]
                piece = url_bytes(url, mailbox.Message(stored.folder, stored.info))
            else:
                data, literal8 = part
                data.seek(0)
                piece = data.read()
                binary = binary or literal8
            size += len(piece)
            if size > largest:
                raise TooBig(f"[TOOBIG] Messages larger than {largest} bytes in all")
            pieces.append(piece)
        whole = b"".join(pieces)
        built.append(mime.base64_binary_parts(whole) if binary else whole)
    return built
