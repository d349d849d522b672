"""Progress beats from the daemon's loops, so the systemd watchdog is fed only while they all move.

Each loop calls ``beat("<name>")`` whenever it makes progress (the inference loop also beats when it
is idle, once per ``take()`` timeout). ``stale(max_age_s)`` names the loops whose last beat is older
than ``max_age_s``. A loop announced with ``expect()`` (or in the constructor) counts from the
moment it was announced, so a loop that never starts goes stale too instead of being forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["Liveness"]


class Liveness:
    """Last-beat times per loop name (monotonic clock); safe from any thread."""

    def __init__(self, expected: Iterable[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self.expect(*expected)

    def expect(self, *names: str) -> None:
        """Watch ``names`` from now on, even before their first beat (a beat already seen is kept)."""
        now = self._clock()
        with self._lock:
            for name in names:
                self._last.setdefault(name, now)

    def beat(self, name: str) -> None:
        """``name`` made progress just now."""
        now = self._clock()
        with self._lock:
            self._last[name] = now

    def forget(self, name: str) -> None:
        """Stop watching ``name`` (a loop that ended on purpose, e.g. a finite replay source)."""
        with self._lock:
            self._last.pop(name, None)

    def stale(self, max_age_s: float) -> list[str]:
        """Names whose last beat is more than ``max_age_s`` seconds old, sorted."""
        now = self._clock()
        with self._lock:
            return sorted(name for name, t in self._last.items() if now - t > max_age_s)

    def ages(self) -> dict[str, float]:
        """Seconds since each loop's last beat (for health messages and logs)."""
        now = self._clock()
        with self._lock:
            return {name: now - t for name, t in sorted(self._last.items())}
