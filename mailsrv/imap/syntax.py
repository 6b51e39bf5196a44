"""
IMAP syntax Twisted's parser lacks, as pure functions: what CONDSTORE and
QRESYNC (RFC 7162) add to commands (the MODSEQ fetch item, the CHANGEDSINCE
and VANISHED fetch modifiers, the UNCHANGEDSINCE store modifier, SELECT's
CONDSTORE and QRESYNC parameters), which the server takes off before
handing the rest to Twisted; the sequence sets of UIDPLUS
response codes (RFC 4315); flags as clients send them; mailbox names and
LIST patterns in modified UTF-7; the parenthesised lists of extended LIST
(RFC 5258).
"""

import base64
import re
from typing import NamedTuple

from twisted.mail import imap4

from mailsrv.imap import sequence
from mailsrv.ranges import count, runs
from mailsrv.store.names import PERMANENT_FLAGS

# system flags by their upper-case spelling; \\Recent only the server sets
_SYSTEM_FLAGS = {flag.upper(): flag for flag in PERMANENT_FLAGS}
_RECENT = "\\RECENT"
_FETCH_MODIFIER = rb"(?:CHANGEDSINCE\s+\d{1,19}|VANISHED)"
_FETCH_MODIFIERS = re.compile(
    rb"\s*\(\s*(" + _FETCH_MODIFIER + rb"(?:\s+" + _FETCH_MODIFIER + rb")*)\s*\)\s*$", re.I)
# RFC 7162: a positive 63-bit number (0 taken too: HIGHESTMODSEQ of a new folder)
MODSEQ_MAX = 2**63 - 1
_UNCHANGEDSINCE = re.compile(rb"\(\s*UNCHANGEDSINCE\s+(\d{1,19})\s*\)\s*", re.I)
_MODSEQ_ITEM = re.compile(rb"(?<![^\s(])MODSEQ(?![^\s)])", re.I)
_BINARY_ITEM = re.compile(
    rb"(?<![^\s(])BINARY(\.PEEK|\.SIZE)?\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?(?![^\s)])", re.I)
_SECTION_PART = re.compile(rb"[1-9]\d{0,9}(?:\.[1-9]\d{0,9})*")


class ModSeqItem:
    """The MODSEQ fetch item, in a FETCH query beside Twisted's parts."""

    type = "modseq"

    def __bytes__(self):
        return b"MODSEQ"


class BinaryItem:
    """
    A BINARY, BINARY.PEEK or BINARY.SIZE fetch item (RFC 3516), in a FETCH
    query beside Twisted's parts. Its type is Twisted's "body": Twisted's
    FETCH hands the item itself only to C{spew_body}, which the server
    makes send it on.

    @ivar numbers: the section part, 1-based (empty: the whole message).
    """

    type = "body"
    header = None
    text = mime = empty = False

    def __init__(self, numbers, peek, size, partial):
        self.numbers = numbers
        self.peek = peek
        self.size = size
        self.partialBegin, self.partialLength = partial or (None, None)

    def __bytes__(self):
        name = b"BINARY.SIZE" if self.size else b"BINARY"
        label = name + b"[" + b".".join(b"%d" % n for n in self.numbers) + b"]"
        if self.partialBegin is not None:
            label += b"<%d.%d>" % (self.partialBegin, self.partialLength)
        return label


def take_binary_items(atts):
    """
    Remove the BINARY items (RFC 3516) from a fetch attribute list.

    @return: C{(rest, items)} as L{take_modseq_item} gives the rest.
    @raise imap4.IllegalClientResponse: a section that is not a part
        number, or BINARY.SIZE with a partial.
    """
    items = []

    def take(match):
        kind, section, offset, length = match.groups()
        if section and not _SECTION_PART.fullmatch(section):
            raise imap4.IllegalClientResponse("BINARY takes a part number only")
        kind = (kind or b"").upper()
        if kind == b".SIZE" and offset is not None:
            raise imap4.IllegalClientResponse("BINARY.SIZE takes no partial")
        partial = None if offset is None else (int(offset), int(length))
        numbers = [int(n) for n in section.split(b".")] if section else []
        items.append(BinaryItem(numbers, kind == b".PEEK", kind == b".SIZE", partial))
        return b""

    rest = _BINARY_ITEM.sub(take, atts)
    if not items:
        return atts, items
    return _tidy(rest), items


def split_fetch_modifiers(line):
    """
    C{b"1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)"}'s attribute part and
    modifiers: C{(b"(FLAGS)", 5, True)}; CHANGEDSINCE is L{None} when
    absent.

    @raise imap4.IllegalClientResponse: a modifier twice, VANISHED without
        CHANGEDSINCE (RFC 7162 3.2.6), a MODSEQ too big.
    """
    match = _FETCH_MODIFIERS.search(line)
    if match is None:
        return line, None, False
    words = match.group(1).upper().split()
    if len(words) != len(set(words)):
        raise imap4.IllegalClientResponse("FETCH modifier given twice")
    changedsince = None
    if b"CHANGEDSINCE" in words:
        changedsince = _modseq(words[words.index(b"CHANGEDSINCE") + 1])
    vanished = b"VANISHED" in words
    if vanished and changedsince is None:
        raise imap4.IllegalClientResponse("VANISHED needs CHANGEDSINCE")
    return line[:match.start()], changedsince, vanished


def _modseq(text):
    value = int(text)
    if value > MODSEQ_MAX:
        raise imap4.IllegalClientResponse("MODSEQ out of range")
    return value


class QResync(NamedTuple):
    """
    SELECT's QRESYNC parameter (RFC 7162 3.2.5).

    @ivar known_uids: sorted, merged C{(low, high)} UID ranges, L{None}
        when not given.
    @ivar seq_match: C{(sequence numbers, UIDs)} as such ranges, the
        same count of each, or L{None}.
    """

    uidvalidity: int
    modseq: int
    known_uids: list = None
    seq_match: tuple = None


_NUMBER = re.compile(rb"[0-9]{1,20}")


def select_params(params):
    """
    SELECT's or EXAMINE's parameter list as Twisted parses it (bytes and
    nested lists, L{None} for none) -> C{(condstore, qresync)}: whether
    CONDSTORE was given, and a L{QResync} or L{None}.

    @raise imap4.IllegalClientResponse: an unknown or repeated parameter,
        or a QRESYNC parameter that is not C{(uidvalidity modseq
        [known-uids] [(known-sequence-set known-uid-set)])}.
    """
    condstore, qresync = False, None
    rest = list(params or ())
    while rest:
        name = rest.pop(0)
        upper = name.upper() if isinstance(name, bytes) else None
        if upper == b"CONDSTORE" and not condstore:
            condstore = True
        elif upper == b"QRESYNC" and qresync is None:
            if not (rest and isinstance(rest[0], list)):
                raise imap4.IllegalClientResponse("QRESYNC needs (uidvalidity modseq ...)")
            qresync = _qresync(rest.pop(0))
        else:
            raise imap4.IllegalClientResponse("Unknown SELECT parameter")
    return condstore, qresync


def _qresync(args):
    if len(args) < 2 or not all(isinstance(a, bytes) and _NUMBER.fullmatch(a)
                                for a in args[:2]):
        raise imap4.IllegalClientResponse("QRESYNC needs (uidvalidity modseq ...)")
    uidvalidity = int(args[0])
    if not 0 < uidvalidity <= sequence.NUMBER_MAX:
        raise imap4.IllegalClientResponse("QRESYNC UIDVALIDITY out of range")
    modseq = _modseq(args[1])
    rest = args[2:]
    known = None
    if rest and isinstance(rest[0], bytes):
        known = _uid_ranges(rest.pop(0))
    seq_match = None
    if rest and isinstance(rest[0], list):
        pair = rest.pop(0)
        if len(pair) != 2 or not all(isinstance(p, bytes) for p in pair):
            raise imap4.IllegalClientResponse(
                "QRESYNC sequence match data is (sequence-set uid-set)")
        seq_match = (_uid_ranges(pair[0]), _uid_ranges(pair[1]))
        if count(seq_match[0]) != count(seq_match[1]):
            raise imap4.IllegalClientResponse(
                "QRESYNC sequence match data: the two sets differ in size")
    if rest:
        raise imap4.IllegalClientResponse("QRESYNC has too many arguments")
    return QResync(uidvalidity, modseq, known, seq_match)


def _uid_ranges(text):
    """A sequence set without C{*} (RFC 7162 known-uids) -> merged ranges."""
    try:
        numbers = sequence.parse(text)
    except sequence.BadSequenceSet as e:
        raise imap4.IllegalClientResponse("Bad message number " + str(e))
    if any(sequence.STAR in pair for pair in numbers.ranges):
        raise imap4.IllegalClientResponse("QRESYNC sets may not hold *")
    return numbers.resolve(None)


def take_modseq_item(atts):
    """
    Remove the MODSEQ item from a fetch attribute list.

    @return: C{(rest, found)}; C{rest} is L{None} when nothing else is
        asked for.
    """
    rest, count = _MODSEQ_ITEM.subn(b"", atts)
    if not count:
        return atts, False
    return _tidy(rest), True


def _tidy(atts):
    """A fetch attribute list some items were taken from, or L{None} when empty."""
    rest = b" ".join(atts.split()).replace(b"( ", b"(").replace(b" )", b")")
    return None if rest in (b"", b"()") else rest


def split_store_modifier(line):
    """
    C{b"(UNCHANGEDSINCE 7) +FLAGS (x)"} -> C{(7, b"+FLAGS (x)")}; without
    the modifier C{(None, line)}.

    @raise imap4.IllegalClientResponse: another modifier.
    """
    if not line.startswith(b"("):
        return None, line
    match = _UNCHANGEDSINCE.match(line)
    if match is None:
        raise imap4.IllegalClientResponse("Unknown STORE modifier")
    return int(match.group(1)), line[match.end():]


def sequence_set(numbers):
    """C{[1, 2, 3, 5]} -> C{b"1:3,5"}, in the order given (RFC 4315 sets)."""
    return ranges_text(runs(numbers))


def ranges_text(ranges):
    """C{[(1, 3), (5, 5)]} -> C{b"1:3,5"}."""
    return b",".join(
        b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in ranges
    )


def client_flags(flags):
    """
    The flags of a STORE or APPEND (C{bytes}) -> C{str}s as the store
    keeps them. System flags are case-insensitive (RFC 3501 2.3.2: a
    client's C{\\seen} is C{\\Seen}; the store knew only the latter and
    dropped the rest silently); C{\\Recent} is left out (only the server
    sets it; Dovecot refuses it, but clients send it back unchanged);
    keywords are kept as spelt.

    @raise imap4.IllegalClientResponse: a system flag RFC 3501 does not
        define (Dovecot answers BAD too).
    """
    names = []
    for flag in flags:
        name = flag.decode("ascii", "replace")
        if name.startswith("\\"):
            upper = name.upper()
            if upper == _RECENT:
                continue
            if upper not in _SYSTEM_FLAGS:
                raise imap4.IllegalClientResponse(f"Invalid system flag {name}")
            name = _SYSTEM_FLAGS[upper]
        names.append(name)
    return names


def mailbox_name(raw):
    """
    A mailbox name as sent, in modified UTF-7 (RFC 3501 5.1.3) -> C{str}.
    Strict, as Dovecot is: raw 8-bit or control bytes, an unterminated
    C{&...}, bad base64, UTF-16 that is not, and printable ASCII spelt in
    base64 are refused. (Twisted's decoder takes most of these, and its
    encoder spells CR and LF as C{&-}, so it cannot check a round trip.)

    @raise imap4.IllegalMailboxEncoding: not valid modified UTF-7.
    """
    return _mutf7(raw, lenient=False)


def _mutf7(raw, lenient):
    """
    Decode modified UTF-7; C{lenient}: an C{&} that starts no valid
    base64 run is itself (raw 8-bit and control bytes are refused still).
    """
    if isinstance(raw, str):
        return raw
    text = []
    pos = 0
    while pos < len(raw):
        match = _MUTF7_TOKEN.match(raw, pos)
        if match is None:
            if not (lenient and raw[pos:pos + 1] == b"&"):
                raise imap4.IllegalMailboxEncoding(_NOT_MUTF7)
            text.append("&")
            pos += 1
            continue
        token = match.group()
        if token == b"&-":
            text.append("&")
        elif token[:1] == b"&":
            try:
                text.append(_unbase64(token[1:-1]))
            except imap4.IllegalMailboxEncoding:
                if not lenient:
                    raise
                text.append(token.decode("ascii"))
        else:
            text.append(token.decode("ascii"))
        pos = match.end()
    return "".join(text)


_NOT_MUTF7 = "Mailbox name is not valid mUTF-7"
# printable ASCII but "&" | "&-" | "&" modified base64 "-"
_MUTF7_TOKEN = re.compile(rb"[\x20-\x25\x27-\x7e]+|&-|&[A-Za-z0-9+,]+-")


def _unbase64(shifted):
    data = shifted.replace(b",", b"/")
    try:
        utf16 = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
        text = utf16.decode("utf-16-be")
    except (ValueError, UnicodeDecodeError):
        raise imap4.IllegalMailboxEncoding(_NOT_MUTF7)
    if any(" " <= c <= "~" for c in text):
        raise imap4.IllegalMailboxEncoding(_NOT_MUTF7)
    return text


def list_pattern(raw):
    """
    A LIST or LSUB reference or pattern -> C{str}, decoded leniently: a
    pattern is no name, and Dovecot answers OK to one with a bare C{&}
    (imaptest's atoms), which is taken as itself; raw 8-bit is refused.

    @raise imap4.IllegalMailboxEncoding: raw 8-bit or control bytes.
    """
    return _mutf7(raw, lenient=True)


def _unquoted(line):
    """C{(index, byte)} of the bytes of C{line} outside quoted strings."""
    quoted = escaped = False
    for i, byte in enumerate(line):
        if quoted:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                quoted = False
        elif byte == 0x22:
            quoted = True
        else:
            yield i, byte


def parenthesized(line):
    """
    C{b'(a (b) "c)") rest'} -> C{(b'a (b) "c)"', b"rest")}: what the
    parentheses that open C{line} hold (quoted strings may hold
    parentheses), and what follows them.

    @raise imap4.IllegalClientResponse: they are not closed.
    """
    depth = 0
    for i, byte in _unquoted(line):
        if byte == 0x28:
            depth += 1
        elif byte == 0x29:
            depth -= 1
            if depth == 0:
                return line[1:i], line[i + 1:].lstrip(b" ")
    raise imap4.IllegalClientResponse("Mismatched parenthesis")


def too_deep(line, limit):
    """
    Whether C{line}'s parentheses and brackets nest more than C{limit}
    levels outside quoted strings (Twisted's parser and SEARCH recurse
    once per level).
    """
    if line.count(b"(") + line.count(b"[") <= limit:
        return False
    depth = 0
    for _, byte in _unquoted(line):
        if byte in (0x28, 0x5B):  # ( [
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x29, 0x5D):
            depth -= 1
    return False


def check_partials(query, limit):
    """
    Refuse FETCH partials C{<offset.length>} RFC 3501 does not allow: an
    offset or length over C{limit} (2**32 - 1, a number's maximum), a
    negative one, or a zero length.

    @raise imap4.IllegalClientResponse: with the reason.
    """
    for part in query:
        begin = getattr(part, "partialBegin", None)
        if begin is None:
            continue
        if not (0 <= begin <= limit and 0 < part.partialLength <= limit):
            raise imap4.IllegalClientResponse(
                f"Partial <offset.length> must be numbers up to {limit}, length not 0")
