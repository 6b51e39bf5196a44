"""
IMAP sequence sets (RFC 3501 9, C{sequence-set}) kept as ranges.

C{UID SEARCH UID 1:4294967295} once built a Python set of four billion
numbers and the kernel killed the server. Here a set is a list of
C{(low, high)} ranges from parsing to use: C{*} is resolved against the
mailbox when the set is used, and members are found by intersecting the
sorted, merged ranges with the mailbox's sorted UIDs or its sequence
numbers (bisect). The cost follows the mailbox's size and the length of
the command line (64 KiB), never the numbers in it. Parsing is linear
(Twisted's C{parseIdList} re-sorts the whole set after each range).
"""

import bisect
import re

from mailsrv.ranges import merged, runs

# The largest number RFC 3501 allows (nz-number is a 32-bit number).
NUMBER_MAX = 2**32 - 1
STAR = None  # "*": the largest number in use, known only at use
_NUMBER = re.compile(rb"\*|[0-9]{1,10}")


class BadSequenceSet(ValueError):
    """
    Not a sequence set.

    @ivar part: the range (as sent) that is wrong.
    """

    def __init__(self, part):
        super().__init__(repr(part))
        self.part = part


class SequenceSet:
    """
    A parsed sequence set: what FETCH, STORE, COPY, MOVE, UID EXPUNGE and
    SEARCH's sequence-set and UID keys get.

    @ivar ranges: C{(low, high)} pairs as sent, L{STAR} for C{*}.
    """

    def __init__(self, ranges):
        self.ranges = ranges

    def resolve(self, star):
        """
        The ranges with C{*} as C{star}, each low first, sorted, and
        overlapping or adjacent ones merged: C{[(low, high)]}.
        """
        return merged(
            (min(a, b), max(a, b))
            for a, b in ((star if low is STAR else low, star if high is STAR else high)
                         for low, high in self.ranges)
        )

    def indexes(self, ids):
        """
        The positions in C{ids} (ascending numbers: a mailbox's UIDs) of
        the numbers in this set, ascending; C{*} is the last of C{ids}.
        """
        if not ids:
            return
        for low, high in self.resolve(ids[-1]):
            yield from range(bisect.bisect_left(ids, low), bisect.bisect_right(ids, high))

    def numbers(self, count):
        """The numbers from 1 to C{count} in this set (sequence numbers), ascending."""
        for low, high in self.resolve(count):
            yield from range(max(low, 1), min(high, count) + 1)

    def matcher(self, star):
        """A membership test for this set with C{*} as C{star}: O(log ranges) each."""
        return _Membership(self.resolve(star))

    def __repr__(self):
        return f"SequenceSet({self.ranges!r})"


class _Membership:
    def __init__(self, ranges):
        self.lows = [low for low, _ in ranges]
        self.highs = [high for _, high in ranges]

    def __contains__(self, number):
        i = bisect.bisect_right(self.lows, number) - 1
        return i >= 0 and number <= self.highs[i]


def parse(text):
    """
    C{b"1:3,5,7:*"} -> a L{SequenceSet}.

    @raise BadSequenceSet: not a sequence set: numbers are 1 to
        L{NUMBER_MAX} or C{*}, ranges C{a:b} in either order.
    """
    ranges = []
    for part in text.split(b","):
        low, colon, high = part.partition(b":")
        first = _number(low, part)
        ranges.append((first, _number(high, part) if colon else first))
    return SequenceSet(ranges)


def of_numbers(numbers):
    """
    A L{SequenceSet} of C{numbers} (a saved search result, a response's
    set), one range per ascending run, in the order given.
    """
    return SequenceSet(runs(numbers))


def _number(token, part):
    if not _NUMBER.fullmatch(token):
        raise BadSequenceSet(part)
    if token == b"*":
        return STAR
    value = int(token)
    if not 1 <= value <= NUMBER_MAX:
        raise BadSequenceSet(part)
    return value
