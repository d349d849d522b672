"""What every frame source provides, and the pieces they share (reopen backoff, counters)."""

from __future__ import annotations

import threading
from typing import Protocol, Union

from agent.backoff import Backoff
from agent.ring import FrameRing

__all__ = ["Backoff", "FrameSource", "StatValue"]  # Backoff re-exported for sources

StatValue = Union[int, float, str, None]


class FrameSource(Protocol):
    """A producer thread body: writes frames into the ring until ``stop`` is set.

    Every blocking call inside ``run`` has a timeout so ``stop`` is noticed within ~0.5 s.
    A device that goes away is not an error: the source reopens it with :class:`Backoff`
    and reports ``state`` (``up``/``down``/``eof``) in :meth:`stats`.
    """

    name: str
    # A live source (sensor) drops frames older than source.max_frame_age_ms; a file replay is lossless.
    live: bool

    def run(self, ring: FrameRing, stop: threading.Event) -> None: ...

    def stats(self) -> dict[str, StatValue]: ...
