"""
SORT (RFC 5256) and SORT=DISPLAY (RFC 5957) over per-message records.

The keys are computed when a message's header fields are parsed
(L{mailsrv.store.sortkeys}, columns of L{headerfields.Fields}), already
casemapped, so a sort is a few stable Python sorts over ready values,
one column at a time (L{Rows}).
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


class Rows:
    """
    The messages a SORT or THREAD works on (those that matched, in
    sequence order), column by column: a SORT by date of 50,000 messages
    sorts a list of 50,000 numbers, without an object per message.

    @ivar seqs: their sequence numbers.
    @ivar uids: their UIDs, in the same order.
    """

    def __init__(self, seqs, uids, column, records):
        """
        @param column: C{column(name)} -> the values of C{"sent"} (the
            sent date, L{Record.sent}), C{"size"}, C{"arrival"} or a
            L{Fields} attribute, one per message, in order.
        @param records: C{records()} -> the L{Record}s, in order (THREAD).
        """
        self.seqs = seqs
        self.uids = uids
        self.column = column
        self.records = records

    def __len__(self):
        return len(self.uids)

    @classmethod
    def of(cls, records):
        """The rows of a list of L{Record}s."""
        records = list(records)

        def column(name):
            if name in ("sent", "size", "arrival"):
                return [getattr(r, name) for r in records]
            return [getattr(r.fields, name) for r in records]

        return cls([r.seq for r in records], [r.uid for r in records], column,
                   lambda: records)


# The column each key sorts on; text columns are L{None} without such a field.
_COLUMN = {"ARRIVAL": "arrival", "CC": "sort_cc", "DATE": "sent", "FROM": "sort_from",
           "SIZE": "size", "SUBJECT": "sort_subject", "TO": "sort_to",
           "DISPLAYFROM": "display_from", "DISPLAYTO": "display_to"}
_NUMBERS = ("arrival", "sent", "size")
# The Fields attributes each key reads (sent: the Date field's, else INTERNALDATE).
_COLUMNS = {name: (("date",) if column == "sent" else () if column in _NUMBERS else (column,))
            for name, column in _COLUMN.items()}


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
        if name not in _COLUMN:
            raise BadCriteria(f"unknown sort key {name}")
        criteria.append((name, reverse))
        reverse = False
    if reverse or not criteria:
        raise BadCriteria("missing sort key")
    return criteria


def sort(rows, criteria):
    """
    The indexes of C{rows} (L{Rows}) sorted by C{criteria}
    (L{parse_criteria}): messages equal on every key keep their order
    (RFC 5256: by sequence number), REVERSE or not.
    """
    order = list(range(len(rows)))
    for name, reverse in reversed(criteria):
        column = _COLUMN[name]
        keys = rows.column(column)
        if column not in _NUMBERS:
            keys = [key or "" for key in keys]
        order.sort(key=keys.__getitem__, reverse=reverse)  # stable, even reversed
    return order
