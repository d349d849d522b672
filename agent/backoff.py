"""Exponential backoff with jitter, shared by every reconnecting component (serial, pipe, MQTT)."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with jitter between ``lo`` and ``hi`` seconds; ``reset()`` on success."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi
        self._next = lo

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.hi, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.lo
