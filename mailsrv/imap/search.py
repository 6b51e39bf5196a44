"""
IMAP SEARCH criteria (RFC 3501 6.4.4) compiled into one predicate.

Compiling happens on the reactor thread, so a syntax error is answered BAD
at once; the predicate may run in a thread because criteria on headers and
text read message files, or the folder's header cache for the fields it
keeps (the predicate asks C{message.header_values}, which answers from
either, the same). Dates compare by UTC calendar day.
"""

import datetime
import email.utils

from twisted.mail import imap4

from mailsrv.imap import sequence
from mailsrv.store import headercache, headerfields
from mailsrv.store.sortkeys import decode_words

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun",
     "jul", "aug", "sep", "oct", "nov", "dec"), 1)}

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = ("BCC", "CC", "FROM", "SUBJECT", "TO")
_ADDRESS_FIELDS = frozenset(("from", "to", "cc", "bcc", "sender", "reply-to"))
# Levels of parentheses, NOT and OR (the server refuses deeper lines first).
MAX_DEPTH = 100


class _Matcher:
    def __init__(self, test, state, everything):
        self.test = test
        self.needs_text = state["text"]
        self.reads_body = state["body"]
        self.uses_fields = state["fields"]
        self.uses_modseq = state["modseq"]
        self.narrow = tuple(state["narrow"])
        self.everything = everything

    def __call__(self, seq, message):
        return self.test(seq, message)


def compile_search(query, last_seq, last_uid, saved=frozenset()):
    """
    @param query: the parsed criteria: a list of L{bytes} and nested lists.
    @param saved: the UIDs of the saved result, which C{$} stands for in
        place of a sequence set, alone or after C{UID} (RFC 5182).
    @return: a callable C{(seq, message) -> bool} with attributes
        C{needs_text} (whether it reads message files), C{reads_body}
        (whether it reads them whole), C{uses_fields}
        (whether it reads fields of the header cache), C{narrow} (what a
        message's record must hold to match, for
        L{headercache.HeaderCache.lookup}), C{uses_modseq} (the criteria
        have MODSEQ: RFC 7162 wants the highest in the reply) and
        C{everything} (the criteria are only C{ALL}: every message
        matches, none need be tried).
    @raise imap4.IllegalQueryError: the criteria are malformed.
    """
    state = {"text": False, "body": False, "fields": False, "modseq": False, "depth": 0,
             "negated": 0, "narrow": [], "saved": saved}
    tokens = list(query)
    if not tokens:
        raise imap4.IllegalQueryError("missing search criteria")
    everything = all(isinstance(t, bytes) and t.upper() == b"ALL" for t in tokens)
    tests = []
    while tokens:
        tests.append(_one(tokens, last_seq, last_uid, state))
    if len(tests) == 1:  # (the usual case: SEARCH tests every message)
        return _Matcher(tests[0], state, everything)
    return _Matcher(lambda s, m: all(t(s, m) for t in tests), state, everything)


def _pop(tokens, what):
    if not tokens:
        raise imap4.IllegalQueryError(f"missing {what}")
    value = tokens.pop(0)
    if value is None:
        return b"NIL"
    if isinstance(value, list):
        raise imap4.IllegalQueryError(f"expected {what}, not a list")
    return value


def _string(tokens):
    return _pop(tokens, "string").decode("utf-8", "replace").lower()


def _one(tokens, last_seq, last_uid, state):
    """
    The test of the search key at the start of C{tokens}, which it takes.
    Lists, NOT and OR nest: at most L{MAX_DEPTH} levels, as compiling and
    matching recurse once per level.
    """
    if state["depth"] > MAX_DEPTH:  # lists, NOT and OR around this key
        raise imap4.IllegalQueryError(f"criteria nested over {MAX_DEPTH} levels")
    state["depth"] += 1
    try:
        return _key(tokens, last_seq, last_uid, state)
    finally:
        state["depth"] -= 1


def _key(tokens, last_seq, last_uid, state):
    token = tokens.pop(0)
    if token is None:  # Twisted's parser reads the atom NIL so
        token = b"NIL"
    if isinstance(token, list):
        inner = []
        while token:
            inner.append(_one(token, last_seq, last_uid, state))
        return lambda s, m: all(t(s, m) for t in inner)
    if token == b"$":
        return _in_saved(state)
    if token[:1].isdigit() or token[:1] == b"*":
        seqs = _set(token, last_seq)
        return lambda s, m: s in seqs
    key = token.decode("ascii", "replace").upper()
    if key in ("KEYWORD", "UNKEYWORD"):
        keyword = _pop(tokens, "keyword").decode("ascii", "replace")
        present = key == "KEYWORD"
        return lambda s, m: (keyword in m.info.flags) == present
    if key == "MODSEQ":
        value = _pop(tokens, "mod-sequence")
        if not value.isdigit():  # an entry name and type: all entries count
            _pop(tokens, "entry type")
            value = _pop(tokens, "mod-sequence")
        modseq = _number(value)
        state["modseq"] = True
        return lambda s, m: m.info.modseq >= modseq
    if key == "ALL":
        return lambda s, m: True
    if key == "RECENT":  # \Recent for this session (RFC 3501 2.3.2)
        return lambda s, m: m.recent
    if key == "OLD":
        return lambda s, m: not m.recent
    if key == "NEW":
        return lambda s, m: m.recent and "\\Seen" not in m.info.flags
    if key in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[key]
        return lambda s, m: (flag in m.info.flags) == present
    if key == "UID":
        token = _pop(tokens, "UID set")
        if token == b"$":
            return _in_saved(state)
        uids = _set(token, last_uid)
        return lambda s, m: m.info.uid in uids
    if key == "NOT":
        state["negated"] += 1  # what a message must hold inside is not a must
        inner = _one(tokens, last_seq, last_uid, state)
        state["negated"] -= 1
        return lambda s, m: not inner(s, m)
    if key == "OR":
        state["negated"] += 1
        left = _one(tokens, last_seq, last_uid, state)
        right = _one(tokens, last_seq, last_uid, state)
        state["negated"] -= 1
        return lambda s, m: left(s, m) or right(s, m)
    if key in ("LARGER", "SMALLER"):
        size = _number(_pop(tokens, "size"))
        if key == "LARGER":
            return lambda s, m: m.info.size > size
        return lambda s, m: m.info.size < size
    if key in ("BEFORE", "ON", "SINCE"):
        day = _date(_pop(tokens, "date"))
        return _compare(key, day, _internal_day)
    if key in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        day = _date(_pop(tokens, "date"))
        state["fields"] = True
        return _compare(key[4:], day, _sent_day)
    if key in _HEADER_KEYS or key == "HEADER":
        name = key.lower() if key in _HEADER_KEYS else _string(tokens)
        return _header_contains(name, _string(tokens), state)
    if key in ("BODY", "TEXT"):
        text = _string(tokens).encode("utf-8")
        state["text"] = state["body"] = True
        if key == "BODY":
            return lambda s, m: text in m.body_bytes().lower()
        return lambda s, m: text in (m.header_bytes() + m.body_bytes()).lower()
    raise imap4.IllegalQueryError(f"unknown search key {key}")


def _in_saved(state):
    saved = state["saved"]
    return lambda s, m: m.info.uid in saved


def _set(token, last):
    """A sequence set's membership test, by bisecting its ranges (never expanded)."""
    try:
        return sequence.parse(token).matcher(last)
    except sequence.BadSequenceSet:
        raise imap4.IllegalQueryError(f"bad message set {token!r}")


def _number(token):
    if not token.isdigit():
        raise imap4.IllegalQueryError(f"not a number: {token!r}")
    return int(token)


def _date(token):
    """C{1-Feb-1994} -> a date."""
    try:
        day, month, year = token.decode("ascii").split("-")
        return datetime.date(int(year), _MONTHS[month.lower()], int(day))
    except (ValueError, KeyError, UnicodeDecodeError):
        raise imap4.IllegalQueryError(f"bad date {token!r}")


def _compare(kind, day, day_of):
    if kind == "BEFORE":
        return lambda s, m: (d := day_of(m)) is not None and d < day
    if kind == "ON":
        return lambda s, m: day_of(m) == day
    return lambda s, m: (d := day_of(m)) is not None and d >= day


def _internal_day(message):
    return datetime.datetime.fromtimestamp(
        message.info.internaldate, datetime.timezone.utc
    ).date()


def _sent_day(message):
    value = message.header("date")
    try:
        return email.utils.parsedate_to_datetime(value).date()
    except (TypeError, ValueError, IndexError):
        return None


def _header_contains(name, text, state):
    """
    A test for C{text} in any C{name} field (there may be several); a
    message without the field does not match, even C{""} (RFC 3501: the
    header is present). Address fields also match their addresses as
    parsed, without comments and spaces (C{<a (c)@ b.org>} is
    C{a@b.org}). Most fields hold neither the text nor encoded words
    that could hide it: those are ruled out with a search of the raw
    values, before any parsing (and, for a field the header cache
    keeps, of the raw cache file: L{headercache.needle_pieces}).
    """
    addresses = name in _ADDRESS_FIELDS
    # comments and spaces only come between an address's tokens
    pieces = text.split("@") if addresses else [text]
    if name in headerfields.CACHED:
        state["fields"] = True
        needed = headercache.needle_pieces(text, pieces)
        if needed is not None and not state["negated"]:
            state["narrow"].append(needed)
    else:
        state["text"] = True

    def test(seq, message):
        raws = message.header_values(name)
        joined = "\n".join(raws)
        if "=?" not in joined and not all(p in joined.lower() for p in pieces):
            return False
        values = [_decoded(raw) for raw in raws]
        if addresses and values:
            values += [f"{real} <{address}>"
                       for real, address in email.utils.getaddresses(values)]
        return any(text in value for value in values)

    return test


def _decoded(raw):
    """A header's value, RFC 2047 words decoded, lower case."""
    return decode_words(raw).lower()

