"""
The header fields IMAP clients search, sort and thread on, taken from a
message's header block once so that SEARCH, SORT and THREAD need not read
the message file again (the folder's header cache keeps one L{Fields} per
message, docs/store.md).

Values are kept as the message has them, unfolded, RFC 2047 words not
decoded: a search decodes what it compares, and the cache must never say
something the file does not.
"""

import email.utils
import re
from typing import NamedTuple, Optional

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

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


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
    In-Reply-To), space-separated (L{None} when there are none).
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
    return _FOLD.sub(b"", raw).strip().decode("utf-8", "surrogateescape")


def parse(header):
    """The L{Fields} of a header block (bytes, CRLF or bare LF, with or without its empty line)."""
    found = {}
    for match in _FIELD.finditer(header):
        attribute = CACHED.get(match.group(1).decode("ascii").lower())
        if attribute is not None:
            found.setdefault(attribute, []).append(field_value(match.group(2)))
    values = {attribute: "\n".join(v) for attribute, v in found.items()}
    date_text = found.get("date_text")
    values["date"] = _epoch(date_text[0]) if date_text else None
    values.update(_sort_keys({attribute: v[0] for attribute, v in found.items()}))
    return Fields(**values)


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
