"""Progress of a long run: a bar on a terminal, a log line now and then otherwise.

    with Progress("soak", total=1_000_000, unit="frames") as p:
        while ...:
            p.set(count, note=f"RSS {rss:.1f} MiB")

On a terminal (stderr is a tty) it draws a tqdm bar when tqdm is installed, else rewrites one line
about every 2 s. Not on a terminal (CI, a systemd unit, a pipe) it stays quiet on the console and
logs one INFO line every ``log_every_s`` seconds (and at the end), so a log still shows how far a
run got. Updates are cheap (a float compare) so they may come from a tight loop.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any, Optional, TextIO

__all__ = ["Progress"]

_log = logging.getLogger("progress")


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.1f}"


class Progress:
    """What a run is doing and how far it is (``total`` may be unknown: 0)."""

    def __init__(self, what: str, total: float = 0, unit: str = "", *, stream: Optional[TextIO] = None,
                 tty: Optional[bool] = None, line_every_s: float = 2.0, log_every_s: float = 30.0) -> None:
        self.what, self.total, self.unit = what, float(total), unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.done = 0.0
        self.note = ""
        self._t0 = time.monotonic()
        self._every = line_every_s if self.tty else log_every_s
        self._next = self._t0 + self._every
        self._bar: Any = None
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:  # the plain line below does the job
                pass
            else:
                self._bar = tqdm(total=self.total or None, desc=what, unit=f" {unit}" if unit else "it",
                                 file=self.stream, dynamic_ncols=True, unit_scale=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: Optional[type[BaseException]], ev: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def update(self, n: float = 1, note: Optional[str] = None) -> None:
        self.set(self.done + n, note)

    def set(self, done: float, note: Optional[str] = None) -> None:
        """``done`` so far (absolute); ``note``: what it is doing now (shown beside the count)."""
        if self._bar is not None:
            self._bar.update(done - self.done)
            if note is not None and note != self.note:
                self._bar.set_postfix_str(note, refresh=False)
        self.done = done
        if note is not None:
            self.note = note
        now = time.monotonic()
        if self._bar is None and now >= self._next:
            self._next = now + self._every
            self._emit(now)

    def line(self, now: Optional[float] = None) -> str:
        """``what: done/total unit (pct), elapsed, ETA — note``."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._t0
        text = f"{self.what}: {_fmt(self.done)}"
        if self.total > 0:
            frac = min(1.0, self.done / self.total)
            text += f"/{_fmt(self.total)}"
        text += f" {self.unit}".rstrip()
        if self.total > 0:
            text += f" ({frac:.0%})"
        text += f", {elapsed:.0f} s"
        if self.total > 0 and 0 < self.done < self.total:
            text += f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left"
        return text + (f" — {self.note}" if self.note else "")

    def _emit(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(now))
            self.stream.flush()
        else:
            _log.info("%s", self.line(now))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(now) + "\n")
            self.stream.flush()
        elif now - self._t0 >= self._every:  # a run long enough to have logged: log where it ended
            _log.info("%s (end)", self.line(now))
