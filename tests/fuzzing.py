"""
Hypothesis settings shared by the property tests (tests/test_fuzz_*.py).

Trial has no conftest: a test module imports L{examples} from here, which
registers and loads the profiles once. The default profile, C{ci}, is
deterministic (derandomized, no example database) and bounded, so
C{trial tests} gives the same result on every run and machine. Set
C{MAILSRV_HYPOTHESIS=soak} for a longer, randomized search (20 times the
examples); a failure it finds prints the C{@example} to add.
"""

import os
import re

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", deadline=None, derandomize=True, database=None,
                          suppress_health_check=_QUIET)
settings.register_profile("soak", deadline=None, derandomize=False, database=None,
                          suppress_health_check=_QUIET)
PROFILE = os.environ.get("MAILSRV_HYPOTHESIS", "ci")
settings.load_profile(PROFILE)
_SCALE = 20 if PROFILE == "soak" else 1


def examples(count):
    """Settings for a property tried C{count} times in CI (more in a soak)."""
    return settings(max_examples=count * _SCALE)


def packets(data, cuts):
    """C{data} cut at the offsets C{cuts} (taken modulo its length, any order)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def lines(data):
    """C{data} cut after each LF (the last piece may have none)."""
    return [line for line in re.split(rb"(?<=\n)", data) if line]
