"""
The UIDs a folder expunged, each with the MODSEQ of its expunge: what a
QRESYNC client (RFC 7162) coming back with the MODSEQ it last saw is told
has vanished since.

Kept as runs of consecutive UIDs in three arrays (8 + 4 + 4 bytes a run,
no Python object each), in MODSEQ order, so "expunged after MODSEQ m" is
a bisection and the runs after it. An expunge of 50,000 consecutive UIDs
is one run. Past L{MAX_RUNS} runs, runs next to each other in UID order
are merged (taking the later MODSEQ: a client may then hear again of a UID
it saw vanish, which RFC 7162 allows) and the oldest are forgotten:
L{known_since} then says from which MODSEQ on the history is complete, and
an older question gets no answer here (the caller answers it from the UIDs
that exist, as RFC 7162 3.2.5.1 allows).
"""

import bisect
from array import array

from mailsrv.ranges import merged

# Runs kept at most; compaction leaves at most half as many.
MAX_RUNS = 4096


class ExpungeHistory:
    """
    @ivar known_since: every expunge after this MODSEQ is here; those at
        or before it may not be (forgotten, or made before the history was
        kept: an index written by an older mailsrv).
    """

    def __init__(self, known_since=0):
        self.known_since = known_since
        self._modseqs = array("Q")
        self._lows = array("L")
        self._highs = array("L")

    def __len__(self):
        return len(self._modseqs)

    def add(self, modseq, ranges):
        """
        UIDs expunged at C{modseq}, as C{(low, high)} ranges; C{modseq} is
        not below any added before (MODSEQs only grow).
        """
        for low, high in ranges:
            self._modseqs.append(modseq)
            self._lows.append(low)
            self._highs.append(high)
        if len(self._modseqs) > MAX_RUNS:
            self._compact()

    def since(self, modseq):
        """
        The UIDs expunged after C{modseq}, as merged ranges, or L{None}
        when the history does not reach back that far.
        """
        if modseq < self.known_since:
            return None
        start = bisect.bisect_right(self._modseqs, modseq)
        return merged(zip(self._lows[start:], self._highs[start:]))

    def groups(self):
        """C{(modseq, [(low, high)])} in MODSEQ order, one per MODSEQ (for the index)."""
        out = []
        for modseq, low, high in zip(self._modseqs, self._lows, self._highs):
            if out and out[-1][0] == modseq:
                out[-1][1].append((low, high))
            else:
                out.append((modseq, [(low, high)]))
        return out

    def _compact(self):
        """
        Merge runs that touch in UID order (at the later MODSEQ), then
        forget the oldest until at most half of L{MAX_RUNS} are left.
        """
        joined = []
        for low, high, modseq in sorted(zip(self._lows, self._highs, self._modseqs)):
            if joined and low <= joined[-1][1] + 1:
                last_low, last_high, last_modseq = joined[-1]
                joined[-1] = (last_low, max(high, last_high), max(modseq, last_modseq))
            else:
                joined.append((low, high, modseq))
        joined.sort(key=lambda run: run[2])
        keep = MAX_RUNS // 2
        if len(joined) > keep:
            self.known_since = max(self.known_since, joined[-keep - 1][2])
            joined = joined[-keep:]
        self._modseqs = array("Q", [modseq for _, _, modseq in joined])
        self._lows = array("L", [low for low, _, _ in joined])
        self._highs = array("L", [high for _, high, _ in joined])
