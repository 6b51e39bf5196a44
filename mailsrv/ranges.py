"""
Sets of numbers (UIDs) kept as sorted C{(low, high)} ranges, so that what
they cost follows the number of ranges, never the numbers in them: IMAP
sequence sets, a folder's expunged UIDs, QRESYNC's VANISHED replies.
"""

import bisect


def runs(numbers):
    """Numbers -> C{(low, high)} runs of consecutive ascending ones, in the order given."""
    found = []
    for n in numbers:
        if found and n == found[-1][1] + 1:
            found[-1] = (found[-1][0], n)
        else:
            found.append((n, n))
    return found


def merged(ranges):
    """C{(low, high)} ranges (low first), sorted and merged where they touch or overlap."""
    out = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            if high > out[-1][1]:
                out[-1] = (out[-1][0], high)
        else:
            out.append((low, high))
    return out


def intersect(a, b):
    """The ranges in both C{a} and C{b} (each sorted and merged)."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        low, high = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if low <= high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def above(ranges, floor):
    """C{ranges} without the numbers up to C{floor}."""
    return [(max(low, floor + 1), high) for low, high in ranges if high > floor]


def count(ranges):
    """How many numbers sorted, merged C{ranges} hold."""
    return sum(high - low + 1 for low, high in ranges)


def missing(ranges, present):
    """
    The numbers of C{ranges} not in C{present} (ascending numbers), as
    ranges: the cost follows the members of C{present} inside C{ranges}.
    """
    out = []
    for low, high in ranges:
        start = bisect.bisect_left(present, low)
        end = bisect.bisect_right(present, high)
        for n in present[start:end]:
            if n > low:
                out.append((low, n - 1))
            low = n + 1
        if low <= high:
            out.append((low, high))
    return out
