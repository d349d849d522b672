"""Exponential backoff with full jitter, shared by every reconnecting component (serial, pipe, MQTT).

Attempt ``k`` (from 0) waits a uniformly random time in ``[0, min(hi, lo * 2**k)]`` — "full jitter"
(AWS Architecture Blog, *Exponential Backoff And Jitter*). The bound still grows exponentially, but
every device draws anywhere below it, so after a broker restart a fleet's reconnects are spread
over the whole window instead of arriving in waves at ``lo``, ``3 lo``, ``7 lo``, ... as a small
multiplicative jitter around fixed delays would (tests/unit/test_backoff.py simulates both).
"""

from __future__ import annotations

import random
from typing import Optional

__all__ = ["Backoff"]


class Backoff:
    """Full-jitter backoff: ``next_delay()`` in ``[0, bound]``, the bound doubling from ``lo`` up to
    ``hi``; ``reset()`` after a success."""

    def __init__(self, lo: float, hi: float, rng: Optional[random.Random] = None) -> None:
        self.lo, self.hi = lo, max(lo, hi)
        self._bound = lo
        self._rng = rng or random.Random()

    @property
    def bound(self) -> float:
        """The largest delay the next call may return."""
        return self._bound

    def next_delay(self) -> float:
        delay = self._rng.uniform(0.0, self._bound)
        self._bound = min(self.hi, self._bound * 2)
        return delay

    def reset(self) -> None:
        self._bound = self.lo
