"""
The pure parts of the comparison: percentiles, result rows, the table.

Nothing here touches the network or the disk, so tests/test_bench.py can
check it exactly.
"""

import math
from dataclasses import dataclass, field


def percentile(values, p):
    """
    The C{p}-th percentile (0..100) of C{values} by linear interpolation
    between the two nearest ranks (what numpy calls "linear"): the 50th of
    [1, 2, 3, 4] is 2.5, the 0th the minimum, the 100th the maximum.

    @return: a float, or L{None} for no values.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not within 0..100")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Row:
    """
    One line of the table: one system under one workload.

    @ivar rate: messages/s or operations/s (C{unit} says which), or L{None}.
    @ivar latencies: seconds, one per operation (a message's DATA..250, an
        IMAP command's round trip), for p50/p99.
    @ivar rss: the peak resident memory of the server's processes, bytes.
    @ivar durable: what a "250" (or OK) means on disk, in a few words.
    @ivar skipped: the reason, when the system could not run this workload.
    """

    system: str
    workload: str
    count: int = 0
    rate: float | None = None
    unit: str = "msg/s"
    latencies: list = field(default_factory=list)
    rss: int | None = None
    durable: str = ""
    notes: str = ""
    skipped: str = ""
    errors: int = 0

    def p(self, q):
        value = percentile(self.latencies, q)
        return None if value is None else value * 1000


def ratios(rows, baseline="mailsrv"):
    """
    Each row's rate divided by the rate of the C{baseline} system's row
    with the same workload: {id(row): ratio or None}.
    """
    base = {r.workload: r.rate for r in rows
            if r.system == baseline and not r.skipped and r.rate}
    return {id(r): (r.rate / base[r.workload]
                    if r.rate is not None and not r.skipped and base.get(r.workload)
                    else None)
            for r in rows}


def _number(value, digits=1):
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _megabytes(value):
    return "-" if value is None else f"{value / (1 << 20):.0f}"


COLUMNS = ("workload", "system", "count", "rate", "p50 ms", "p99 ms", "peak mem MB",
           "x mailsrv", "250/OK means", "notes")


def table_cells(rows, baseline="mailsrv"):
    """The table as lists of strings, header first."""
    ratio = ratios(rows, baseline)
    cells = [list(COLUMNS)]
    for row in rows:
        if row.skipped:
            cells.append([row.workload, row.system, "-", "skipped", "-", "-", "-", "-",
                          "-", row.skipped])
            continue
        notes = row.notes
        if row.errors:
            notes = f"{row.errors} errors; {notes}" if notes else f"{row.errors} errors"
        cells.append([
            row.workload,
            row.system,
            str(row.count),
            "-" if row.rate is None else f"{_number(row.rate)} {row.unit}",
            _number(row.p(50), 2),
            _number(row.p(99), 2),
            _megabytes(row.rss),
            "-" if ratio[id(row)] is None else f"{ratio[id(row)]:.2f}",
            row.durable or "-",
            notes,
        ])
    return cells


def format_table(rows, baseline="mailsrv", markdown=False):
    """
    The results as aligned text (or a Markdown table), one row per
    (workload, system), in the order given.
    """
    cells = table_cells(rows, baseline)
    if markdown:
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                 for line in cells]
        lines.insert(1, "|" + "|".join(" --- " for _ in COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS) - 1)]
    out = []
    for n, line in enumerate(cells):
        text = "  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
        out.append(text.rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    return "\n".join(out)
