"""
IMAP syntax Twisted's parser lacks, as pure functions: what CONDSTORE (RFC
7162) adds to commands (the MODSEQ fetch item, the CHANGEDSINCE fetch
modifier, the UNCHANGEDSINCE store modifier), which the server takes off
before handing the rest to Twisted; and the sequence sets of UIDPLUS
response codes (RFC 4315).
"""

import re

from twisted.mail import imap4

_CHANGEDSINCE = re.compile(rb"\s*\(\s*CHANGEDSINCE\s+(\d{1,19})\s*\)\s*$", re.I)
_UNCHANGEDSINCE = re.compile(rb"\(\s*UNCHANGEDSINCE\s+(\d{1,19})\s*\)\s*", re.I)
_MODSEQ_ITEM = re.compile(rb"(?<![^\s(])MODSEQ(?![^\s)])", re.I)


class ModSeqItem:
    """The MODSEQ fetch item, in a FETCH query beside Twisted's parts."""

    type = "modseq"

    def __bytes__(self):
        return b"MODSEQ"


def split_fetch_modifiers(line):
    """
    C{b"1:* (FLAGS) (CHANGEDSINCE 5)"}'s attribute part and modifier:
    C{(b"(FLAGS)", 5)}; the modifier is L{None} when absent.
    """
    match = _CHANGEDSINCE.search(line)
    if match is None:
        return line, None
    return line[:match.start()], int(match.group(1))


def take_modseq_item(atts):
    """
    Remove the MODSEQ item from a fetch attribute list.

    @return: C{(rest, found)}; C{rest} is L{None} when nothing else is
        asked for.
    """
    rest, count = _MODSEQ_ITEM.subn(b"", atts)
    if not count:
        return atts, False
    rest = b" ".join(rest.split()).replace(b"( ", b"(").replace(b" )", b")")
    return (None if rest in (b"", b"()") else rest), True


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
    runs = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return b",".join(
        b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in runs
    )
