"""Serial source: frames in the protocol of docs/serial-protocol.md from a UART, USB serial or a
pyserial URL (``loop://``, ``socket://host:port``), decoded straight into the frame ring.

A device that goes away (read error, EOF, unplugged USB adapter) is not fatal: the port is closed,
the state becomes ``down`` and it is reopened with :class:`~agent.source.base.Backoff` until it
comes back or ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Optional

import numpy as np
import serial

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.base import Backoff, StatValue
from agent.source.codec import FrameDecoder

__all__ = ["SerialSource"]

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.5  # a read returns as soon as a byte arrives; the timeout only bounds noticing stop (idle CPU)
_MAX_READ = 65536


class SerialSource:
    """A :class:`~agent.source.base.FrameSource` reading ``cfg.port`` at ``cfg.baudrate``."""

    name = "serial"
    live = True

    def __init__(self, cfg: SourceConfig) -> None:
        self.port = cfg.port
        self.baudrate = cfg.baudrate
        self.limit = cfg.limit
        self._reopen = (cfg.reopen_min_s, cfg.reopen_max_s)
        self.decoder = FrameDecoder(cfg.max_frame_side)
        self.state = "down"
        self.opens = 0
        self.reopens = 0
        self.open_failures = 0
        self.read_errors = 0
        self.sink_errors = 0
        self.last_error: Optional[str] = None
        self._ring: Optional[FrameRing] = None

    def stats(self) -> dict[str, StatValue]:
        out: dict[str, StatValue] = {"state": self.state}
        out.update(self.decoder.stats())
        out.update(reopens=self.reopens, open_failures=self.open_failures, read_errors=self.read_errors,
                   sink_errors=self.sink_errors, last_error=self.last_error, port=self.port)
        return out

    def run(self, ring: FrameRing, stop: threading.Event) -> None:
        side = self.decoder.max_side
        if ring.max_h < side or ring.max_w < side:
            raise ValueError(f"frame ring is {ring.max_h}x{ring.max_w}; serial needs {side}x{side} "
                             "(source.max_frame_side)")
        self._ring = ring
        backoff = Backoff(*self._reopen)
        try:
            while not stop.is_set() and not self._done():
                port = self._open()
                if port is not None:
                    self._serve(port, stop, backoff)
                if not stop.is_set() and not self._done():
                    stop.wait(backoff.next_delay())
        finally:
            self.state = "stopped"
            log.info("serial source on %s stopped: %s", self.port, self.decoder.stats())

    # -- internals ------------------------------------------------------------------------------
    def _done(self) -> bool:
        return bool(self.limit) and self.decoder.frames_ok >= self.limit

    def _open(self) -> Optional[Any]:
        try:
            port = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=_READ_TIMEOUT_S)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.open_failures += 1
            self._went_down(f"open failed: {exc}")
            return None
        self.opens += 1
        if self.opens > 1:
            self.reopens += 1
        self.state = "up"
        log.info("serial port %s open at %d baud (open #%d)", self.port, self.baudrate, self.opens)
        return port

    def _serve(self, port: Any, stop: threading.Event, backoff: Backoff) -> None:
        """Read and decode until ``stop``, the frame limit, or a read error (the device went away)."""
        try:
            while not stop.is_set() and not self._done():
                data = port.read(min(max(1, port.in_waiting), _MAX_READ))
                if data:
                    backoff.reset()
                    self.decoder.feed(data, self._sink)
        except (serial.SerialException, OSError) as exc:
            self.read_errors += 1
            self._went_down(f"read failed: {exc}")
        finally:
            with contextlib.suppress(serial.SerialException, OSError):  # already gone: nothing to free
                port.close()
            self.decoder.reset()  # a partial frame from before must not merge with new data

    def _went_down(self, error: str) -> None:
        # Log each distinct error once: a missing device retried every few seconds must not flood logs.
        if error != self.last_error or self.state != "down":
            log.warning("serial port %s down: %s", self.port, error)
        self.last_error = error
        self.state = "down"

    def _sink(self, seq: int, height: int, width: int, pixels: np.ndarray) -> None:
        """Called by the decoder for each valid frame: copy it into a ring slot and commit."""
        ring = self._ring
        if ring is None or self._done_after(1):
            return
        idx = ring.acquire()
        try:
            ring.pixels[idx, :height, :width] = pixels
        except Exception:
            ring.abort(idx)
            self.sink_errors += 1
            log.exception("could not store serial frame %d (%dx%d)", seq, height, width)
            return
        ring.commit(idx, height, width, seq, time.monotonic_ns())

    def _done_after(self, n: int) -> bool:
        # frames_ok already counts the frame being delivered; skip the ones past ``limit``.
        return bool(self.limit) and self.decoder.frames_ok - n >= self.limit
