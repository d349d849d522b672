"""What every frame source provides, and the pieces they share (reopen backoff, counters)."""

from __future__ import annotations

import random
import threading
from typing import Protocol, Union

from agent.ring import FrameRing

__all__ = ["Backoff", "FrameSource", "StatValue"]

StatValue = Union[int, float, str, None]


class FrameSource(Protocol):
    """A producer thread body: writes frames into the ring until ``stop`` is set.

    Every blocking call inside ``run`` has a timeout so ``stop`` is noticed within ~0.5 s.
    A device that goes away is not an error: the source reopens it with :class:`Backoff`
    and reports ``state`` (``up``/``down``/``eof``) in :meth:`stats`.
    """

    name: str

    def run(self, ring: FrameRing, stop: threading.Event) -> None: ...

    def stats(self) -> dict[str, StatValue]: ...


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
