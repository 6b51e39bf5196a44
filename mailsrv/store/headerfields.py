"""
The header fields IMAP clients search, sort and thread on, taken from a
message's header block once so that SEARCH, SORT and THREAD need not read
the message file again (the folder's header cache keeps one L{Fields} per
message, docs/store.md).

Values are kept as the message has them, unfolded, RFC 2047 words not
decoded: a search decodes what it compares, and the cache must never say
something the file does not.
"""

import calendar
import email.utils
import functools
import re
from typing import NamedTuple, Optional

from mailsrv.headerblock import FIELD, FOLD
from mailsrv.store import sortkeys

# Field name -> attribute of Fields holding its raw value.
CACHED = {
    "from": "from_",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "subject": "subject",
    "date": "date_text",
    "message-id": "message_id",
    "references": "references",
    "in-reply-to": "in_reply_to",
}



class Fields(NamedTuple):
    """
    One message's cached fields. A raw value is L{None} when the message
    has no such field, and holds every occurrence joined by C{"\\n"} when it
    has several (SEARCH matches any of them). C{date} is the Date field as
    seconds since the epoch (UTC), or L{None} when absent or unparseable.

    The rest are SORT and THREAD keys (L{sortkeys}), casemapped:
    C{sort_subject} the base subject (C{""} without Subject) and
    C{subject_reply} 1 when the subject marked a reply or forward;
    C{sort_from}, C{sort_to}, C{sort_cc} the first address's mailbox and
    C{display_from}, C{display_to} its display name (L{None} without an
    address); C{thread_id} the Message-ID's message ID and
    C{thread_refs} the message IDs of References (or else the first of
    In-Reply-To), space-separated (L{None} when there are none). They
    derive from the raw values alone; a search does not need them, so
    they may be left out (all L{None}: L{has_keys} false) and added when
    SORT or THREAD first needs them (L{with_keys}).
    """

    from_: Optional[str] = None
    to: Optional[str] = None
    cc: Optional[str] = None
    bcc: Optional[str] = None
    subject: Optional[str] = None
    date_text: Optional[str] = None
    message_id: Optional[str] = None
    references: Optional[str] = None
    in_reply_to: Optional[str] = None
    date: Optional[int] = None
    sort_subject: Optional[str] = None
    subject_reply: Optional[int] = None
    sort_from: Optional[str] = None
    sort_to: Optional[str] = None
    sort_cc: Optional[str] = None
    display_from: Optional[str] = None
    display_to: Optional[str] = None
    thread_id: Optional[str] = None
    thread_refs: Optional[str] = None

    def values(self, name):
        """Every C{name} field's raw value (a list, maybe empty); C{name} must be in L{CACHED}."""
        value = getattr(self, CACHED[name.lower()])
        return [] if value is None else value.split("\n")


def field_value(raw):
    """A field's value as bytes after the colon -> unfolded, stripped text (Latin-1 kept as is)."""
    if b"\n" in raw:
        raw = FOLD.sub(b"", raw)
    return raw.strip().decode("utf-8", "surrogateescape")


def parse(header, keys=True):
    """
    The L{Fields} of a header block (bytes, CRLF or bare LF, with or
    without its empty line); without the SORT and THREAD keys unless
    C{keys} (they double the cost).
    """
    values = [None] * len(Fields._fields)
    spellings = _SPELLINGS
    for name, raw in FIELD.findall(header):
        at = spellings.get(name, _UNSEEN)
        if at is _UNSEEN:
            at = _column_of(name)
        if at is not None:
            if b"\n" in raw:  # (field_value, inlined: a folder's first search parses every header)
                raw = FOLD.sub(b"", raw)
            value = raw.strip().decode("utf-8", "surrogateescape")
            values[at] = value if values[at] is None else values[at] + "\n" + value
    date_text = values[_DATE_TEXT]
    if date_text is not None:  # the first Date field's
        values[_DATE] = _epoch(date_text.partition("\n")[0])
    fields = Fields._make(values)
    return with_keys(fields) if keys else fields


_COLUMN = {name.encode("ascii"): Fields._fields.index(attribute)
           for name, attribute in CACHED.items()}
_DATE_TEXT, _DATE = Fields._fields.index("date_text"), Fields._fields.index("date")
# Field names as messages spell them -> their Fields column (None: not
# cached): a few spellings per name, and no lower() of every field's name.
_SPELLINGS = {}
_UNSEEN = object()


def _column_of(name):
    """The Fields column of field C{name} (any case), or L{None}; remembered."""
    at = _COLUMN.get(name.lower())
    if len(_SPELLINGS) < 10000:
        _SPELLINGS[name] = at
    return at


# The raw columns and date (the rest of Fields are SORT and THREAD keys).
RAW = Fields._fields.index("sort_subject")


def has_keys(fields):
    """Whether C{fields} holds the SORT and THREAD keys (a base subject is never L{None})."""
    return fields.sort_subject is not None


def with_keys(fields):
    """C{fields} with its SORT and THREAD keys (as L{parse} with C{keys} gives them)."""
    if has_keys(fields):
        return fields
    first = {attribute: value.partition("\n")[0] for attribute in CACHED.values()
             if (value := getattr(fields, attribute)) is not None}
    return fields._replace(**_sort_keys(first))


def header_end(data):
    """Where the header block in C{data} ends (after its empty line), or L{None}."""
    if data.startswith(b"\n"):
        return 1
    if data.startswith(b"\r\n"):
        return 2
    crlf = data.find(b"\n\r\n")
    # a bare LF empty line counts if it comes first: look no further (the
    # whole of a CRLF message otherwise)
    lf = data.find(b"\n\n", 0, len(data) if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    return None if crlf < 0 else crlf + 3


# Date as nearly every message writes it (RFC 5322 3.3), with a numeric
# zone or GMT/UT/UTC (RFC 5322 4.3, still common) and maybe a comment
# after: read without the general parser, which costs a third of parse().
_USUAL_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4}|GMT|UTC?)(?: \([^()\\]*\))?")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def _sort_keys(first):
    """The SORT and THREAD columns of L{Fields}, from the first value of each field."""
    keys = {}
    keys["sort_subject"], keys["subject_reply"] = sortkeys.subject_key(first.get("subject"))
    keys["sort_from"], keys["display_from"] = sortkeys.address_keys(first.get("from_"))
    keys["sort_to"], keys["display_to"] = sortkeys.address_keys(first.get("to"))
    keys["sort_cc"], _ = sortkeys.address_keys(first.get("cc"))
    ids = sortkeys.message_ids(first.get("message_id"))
    keys["thread_id"] = ids[0] if ids else None
    refs = sortkeys.message_ids(first.get("references"))
    if not refs:
        refs = sortkeys.message_ids(first.get("in_reply_to"))[:1]
    keys["thread_refs"] = " ".join(refs) or None
    return keys


def _epoch(text):
    """
    What L{_parsed_epoch} gives, faster for the usual form: the same
    arithmetic (C{calendar.timegm} less the zone's offset) without the
    general parser.
    """
    usual = _USUAL_DATE.fullmatch(text)
    if usual is None or usual.group(7) == "-0000" or usual.group(3) < "1000":
        return _parsed_epoch(text)  # -0000: no zone, local time (as email.utils reads it)
    day, month, year, hour, minute, second, zone = usual.groups()
    offset = int(zone[1:3]) * 3600 + int(zone[3:]) * 60 if zone[0] in "+-" else 0
    return (_month_start(year, month) + (int(day) - 1) * 86400 + int(hour) * 3600
            + int(minute) * 60 + int(second) - (offset if zone[0] == "+" else -offset))


@functools.lru_cache(maxsize=1024)
def _month_start(year, month):
    """C{calendar.timegm} of the month's first second (its sum for a day is linear, unchecked)."""
    return calendar.timegm((int(year), _MONTHS[month], 1, 0, 0, 0))


def _parsed_epoch(text):
    try:
        parsed = email.utils.parsedate_tz(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed[0] < 1000:
        return None
    try:
        return int(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None
