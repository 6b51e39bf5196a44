"""
SORT (RFC 5256) and SORT=DISPLAY (RFC 5957) over per-message records.

The keys are computed when a message's header fields are parsed
(L{mailsrv.store.sortkeys}, columns of L{headerfields.Fields}), already
casemapped, so a sort is a few stable Python sorts over ready values.
"""

from typing import NamedTuple

from mailsrv.store.headerfields import Fields


class Record(NamedTuple):
    """What SORT and THREAD know of one message that matched the criteria."""

    seq: int
    uid: int
    size: int  # RFC822.SIZE
    arrival: int  # INTERNALDATE, seconds since the epoch
    fields: Fields

    @property
    def sent(self):
        """The sent date (RFC 5256 2.2): the Date field, else INTERNALDATE."""
        date = self.fields.date
        return self.arrival if date is None else date


_KEYS = {
    "ARRIVAL": lambda r: r.arrival,
    "CC": lambda r: r.fields.sort_cc or "",
    "DATE": lambda r: r.sent,
    "FROM": lambda r: r.fields.sort_from or "",
    "SIZE": lambda r: r.size,
    "SUBJECT": lambda r: r.fields.sort_subject or "",
    "TO": lambda r: r.fields.sort_to or "",
    "DISPLAYFROM": lambda r: r.fields.display_from or "",
    "DISPLAYTO": lambda r: r.fields.display_to or "",
}


# The Fields attributes each key reads.
_COLUMNS = {"ARRIVAL": (), "CC": ("sort_cc",), "DATE": ("date",), "FROM": ("sort_from",),
            "SIZE": (), "SUBJECT": ("sort_subject",), "TO": ("sort_to",),
            "DISPLAYFROM": ("display_from",), "DISPLAYTO": ("display_to",)}


def columns(criteria):
    """The L{Fields} attributes a sort by C{criteria} reads."""
    return {column for name, _ in criteria for column in _COLUMNS[name]}


class BadCriteria(ValueError):
    """Not a list of sort criteria."""


def parse_criteria(words):
    """
    C{[b"REVERSE", b"DATE", b"SUBJECT"]} -> C{[("DATE", True), ("SUBJECT", False)]}.

    @raise BadCriteria: empty, an unknown key, or REVERSE with no key after it.
    """
    criteria = []
    reverse = False
    for word in words:
        if not isinstance(word, bytes):
            raise BadCriteria("sort criteria are atoms")
        name = word.decode("ascii", "replace").upper()
        if name == "REVERSE" and not reverse:
            reverse = True
            continue
        if name not in _KEYS:
            raise BadCriteria(f"unknown sort key {name}")
        criteria.append((name, reverse))
        reverse = False
    if reverse or not criteria:
        raise BadCriteria("missing sort key")
    return criteria


def sort(records, criteria):
    """
    C{records} (in sequence order) sorted by C{criteria} (L{parse_criteria}):
    messages equal on every key keep their order (RFC 5256: by sequence
    number), REVERSE or not.
    """
    ordered = list(records)
    for name, reverse in reversed(criteria):
        ordered.sort(key=_KEYS[name], reverse=reverse)  # stable, even reversed
    return ordered
