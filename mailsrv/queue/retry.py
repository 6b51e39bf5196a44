"""
When to try a deferred recipient again: a pure function of how many attempts
failed, over the [delivery] retry schedule, with jitter so that recipients
deferred together (a destination that was down) do not all come back in the
same second.
"""

import random as _random


def retry_delay(attempts, schedule, jitter=0.1, random=_random.random):
    """
    Seconds to wait after the C{attempts}-th failed attempt.

    @param attempts: failed attempts so far, at least 1.
    @param schedule: the [delivery] retry list; its last entry repeats.
    @param jitter: the delay varies by up to this fraction either way.
    @param random: a function returning a float in [0, 1) (tests pass a
        constant).
    """
    base = schedule[min(max(attempts, 1), len(schedule)) - 1]
    return base * (1 + jitter * (2 * random() - 1))
