"""Pipe source: raw video frames from stdin or a named FIFO (``rpicam-vid --codec yuv420 -o -``,
``ffmpeg -f rawvideo -pix_fmt gray -``), read straight into the frame ring.

Raw video has no framing: a frame is exactly ``width*height`` bytes (``gray``) or
``width*height*3/2`` bytes (``yuv420``: the Y plane, then the chroma planes, which are skipped).
Each kept frame's Y plane is ``readinto`` the ring slot itself and the slot is committed with the
region of interest, so the inference loop's ``ring.view(i)`` is the ROI; nothing is allocated per
frame. ``max_fps`` keeps at most that many frames per second; the others are read into one scratch
buffer and counted (``frames_skipped``).

A producer that exits is not an error. On a FIFO the source reports ``down``, closes it and reopens
it with :class:`~agent.source.base.Backoff`, so every new writer starts on a frame boundary; on
stdin, EOF means ``down`` for good (the daemon keeps serving MQTT until stopped); a regular file is
read once (``eof``). A stream that ends inside a frame is counted (``partial_frames``) and logged
with the byte counts, since it usually means ``width``/``height``/``pixel_format`` do not match the
producer. Every wait is a ``poll`` with a timeout, including the wait for a FIFO writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import select
import stat
import threading
import time
from typing import Optional

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.base import Backoff, StatValue

__all__ = ["PipeSource", "RateGate", "frame_layout"]

log = logging.getLogger(__name__)

_POLL_MS = 200  # bounds how long a quiet pipe delays noticing ``stop``
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; the name exists from Python 3.10
_PIPE_MAX = 1 << 20  # the default /proc/sys/fs/pipe-max-size for unprivileged processes


def frame_layout(width: int, height: int, pixel_format: str) -> tuple[int, int]:
    """(Y-plane bytes, bytes after it in each frame) for a raw pixel format."""
    y = width * height
    if pixel_format == "gray":
        return y, 0
    if pixel_format == "yuv420":  # I420/NV12/NV21: full Y plane, then chroma at quarter resolution
        return y, 2 * (width // 2) * (height // 2)
    raise ValueError(f"unsupported pixel format {pixel_format!r}")


class RateGate:
    """Keeps at most one frame per ``period_ns`` (0 = every frame); pure, so it is tested on a fake clock.

    Keep times advance by exactly one period, so the kept rate converges on ``1e9 / period_ns`` even when
    the camera's frame times jitter around the boundary; after a stall (no frame for a period or more)
    the schedule restarts from the current frame instead of bursting to catch up.
    """

    def __init__(self, period_ns: int) -> None:
        self.period_ns = period_ns
        self._next_ns = 0

    def skip(self, now_ns: int) -> bool:
        return bool(self.period_ns) and now_ns < self._next_ns

    def kept(self, now_ns: int) -> None:
        if self.period_ns:
            nxt = self._next_ns + self.period_ns
            self._next_ns = nxt if nxt > now_ns else now_ns + self.period_ns


class PipeSource:
    """A :class:`~agent.source.base.FrameSource` reading raw ``cfg.width``×``cfg.height`` frames."""

    name = "pipe"
    live = True

    def __init__(self, cfg: SourceConfig) -> None:
        self.path = cfg.path
        self.width, self.height, self.pixel_format = cfg.width, cfg.height, cfg.pixel_format
        self.y_bytes, self.tail_bytes = frame_layout(cfg.width, cfg.height, cfg.pixel_format)
        self.frame_bytes = self.y_bytes + self.tail_bytes
        self.roi = tuple(cfg.roi) if cfg.roi else (0, 0, cfg.width, cfg.height)
        self.gate = RateGate(int(1e9 / cfg.max_fps) if cfg.max_fps > 0 else 0)
        self.limit = cfg.limit
        self._reopen = (cfg.reopen_min_s, cfg.reopen_max_s)
        self._scratch = memoryview(bytearray(self.frame_bytes))  # skipped frames and chroma planes
        self._tail = self._scratch[:self.tail_bytes]
        self._slots: list[memoryview] = []
        self._poll = select.poll()
        self._blocking = False
        self.state = "down"
        self.frames_ok = 0
        self.frames_skipped = 0
        self.partial_frames = 0
        self.opens = 0
        self.reopens = 0
        self.open_failures = 0
        self.read_errors = 0
        self.bytes_in = 0
        self.last_error: Optional[str] = None

    @property
    def frames_seen(self) -> int:
        """Complete frames read (kept or skipped): the ``frame_seq`` of the next frame."""
        return self.frames_ok + self.frames_skipped

    def stats(self) -> dict[str, StatValue]:
        return {
            "state": self.state, "frames_ok": self.frames_ok, "frames_skipped": self.frames_skipped,
            "partial_frames": self.partial_frames,
            "misaligned": self.partial_frames,  # the name the daemon's ``corrupt`` counter sums
            "reopens": self.reopens, "open_failures": self.open_failures, "read_errors": self.read_errors,
            "bytes_in": self.bytes_in, "frame_bytes": self.frame_bytes, "last_error": self.last_error,
            "path": self.path,
        }

    def run(self, ring: FrameRing, stop: threading.Event) -> None:
        self._bind(ring)
        backoff = Backoff(*self._reopen)
        try:
            while not stop.is_set() and not self._done():
                fd = self._open()
                if fd is not None:
                    again = self._serve_fd(fd, ring, stop, backoff)
                    if not again:
                        break
                if not stop.is_set() and not self._done():
                    stop.wait(backoff.next_delay())
            if self.path == "-" and not self._done():
                while not stop.wait(0.5):  # stdin is gone for good; the daemon keeps serving MQTT
                    pass
        finally:
            if self.state != "eof":
                self.state = "stopped"
            log.info("pipe source %s stopped: %d frames kept, %d skipped, %d partial, %d reopens",
                     self.path, self.frames_ok, self.frames_skipped, self.partial_frames, self.reopens)

    # -- set-up ---------------------------------------------------------------------------------
    def _bind(self, ring: FrameRing) -> None:
        """One flat memoryview per slot, made once: readinto then writes the Y plane in place."""
        if ring.max_w != self.width or ring.max_h < self.height:
            raise ValueError(f"frame ring is {ring.max_h}x{ring.max_w}; the pipe source needs "
                             f"{self.height}x{self.width} (source.height x source.width)")
        self._slots = [ring.pixels[i, :self.height].data.cast("B") for i in range(ring.slots)]

    def _open(self) -> Optional[int]:
        # stdin: our own descriptor, left blocking, since O_NONBLOCK would also change the caller's
        # stdin (a dup shares it): reads on it are preceded by a poll instead. A FIFO: O_NONBLOCK, so
        # the open does not block until a writer comes (stop would go unnoticed).
        try:
            fd = os.dup(0) if self.path == "-" else os.open(
                self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.open_failures += 1
            self._went_down(f"cannot open {self.path}: {exc.strerror or exc}")
            return None
        self.opens += 1
        self.reopens = self.opens - 1
        self._grow_pipe(fd)
        log.info("pipe source: reading %s (%dx%d %s, %d bytes a frame; open #%d)", self.path,
                 self.width, self.height, self.pixel_format, self.frame_bytes, self.opens)
        return fd

    def _grow_pipe(self, fd: int) -> None:
        """Best effort: room for two frames, so the camera rarely blocks and reads are larger."""
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        with contextlib.suppress(OSError):  # EPERM above pipe-max-size: the default size still works
            fcntl.fcntl(fd, _F_SETPIPE_SZ, min(_PIPE_MAX, max(65536, 2 * self.frame_bytes)))

    # -- reading --------------------------------------------------------------------------------
    def _serve_fd(self, fd: int, ring: FrameRing, stop: threading.Event, backoff: Backoff) -> bool:
        """Read frames until EOF, stop or the limit; False when no reopen should follow."""
        reopenable = self.path != "-" and not stat.S_ISREG(os.fstat(fd).st_mode)
        self._poll.register(fd, select.POLLIN)
        self._blocking = os.get_blocking(fd)
        raw = io.FileIO(fd, "rb", closefd=False)
        session = 0  # bytes from this writer: a partial frame is reported against them
        try:
            while not stop.is_set() and not self._done():
                events = self._wait(stop)
                if not events:
                    break  # stop
                if not events & select.POLLIN:  # hang-up with nothing left to read: EOF
                    self._ended(session, 0, reopenable)
                    return reopenable
                if self.state != "up":
                    self.state = "up"
                    log.info("pipe source %s: producer connected", self.path)
                got, want = self._one_frame(raw, ring, stop)
                session += got
                if got == want:
                    backoff.reset()
                    continue
                if stop.is_set():
                    break  # an incomplete frame at shutdown is not the producer's fault
                self._ended(session, got, reopenable)
                return reopenable
            return True
        except OSError as exc:
            self.read_errors += 1
            self._went_down(f"read failed: {exc.strerror or exc}")
            return reopenable
        finally:
            self._poll.unregister(fd)
            raw.close()
            os.close(fd)

    def _wait(self, stop: threading.Event) -> int:
        """Poll until data or EOF (or ``stop``: returns 0)."""
        while not stop.is_set():
            for _, ev in self._poll.poll(_POLL_MS):
                return ev
        return 0

    def _one_frame(self, raw: io.FileIO, ring: FrameRing, stop: threading.Event) -> tuple[int, int]:
        """Read one frame (kept into a ring slot, or skipped); returns (bytes read, frame bytes)."""
        now = time.monotonic_ns()
        if self.gate.skip(now):
            got = self._fill(raw, self._scratch, self.frame_bytes, stop)
            if got == self.frame_bytes:
                self.frames_skipped += 1
            return got, self.frame_bytes
        idx = ring.acquire()
        got = self._fill(raw, self._slots[idx], self.y_bytes, stop)
        if got == self.y_bytes and self.tail_bytes:
            got += self._fill(raw, self._tail, self.tail_bytes, stop)
        if got != self.frame_bytes:
            ring.abort(idx)
            return got, self.frame_bytes
        x, y, w, h = self.roi
        ring.commit(idx, h, w, self.frames_seen, time.monotonic_ns(), top=y, left=x)
        self.frames_ok += 1
        self.gate.kept(now)
        return got, self.frame_bytes

    def _fill(self, raw: io.FileIO, buf: memoryview, n: int, stop: threading.Event) -> int:
        """Read exactly ``n == len(buf)`` bytes into ``buf``; fewer only at EOF or ``stop``."""
        got = 0
        while got < n:
            if self._blocking and not self._wait(stop):
                return got  # a blocking read only after a poll saw data, so stop is noticed
            r = raw.readinto(buf[got:] if got else buf)  # a slice only after a short read
            if r is None:  # non-blocking descriptor, no data yet
                if not self._wait(stop):
                    return got
                continue
            if not r:
                return got
            got += r
            self.bytes_in += r
        return got

    # -- end of a producer ----------------------------------------------------------------------
    def _ended(self, session: int, partial: int, reopenable: bool) -> None:
        if partial:
            self.partial_frames += 1
            log.error("pipe source %s: stream ended inside a frame: %d of %d bytes (%d bytes from this "
                      "producer, not a multiple of %d = %dx%d %s); check source.width, height and "
                      "pixel_format against the producer", self.path, partial, self.frame_bytes, session,
                      self.frame_bytes, self.width, self.height, self.pixel_format)
        if self.path != "-" and not reopenable:
            self.state = "eof"
            log.info("pipe source %s: end of file after %d frames", self.path, self.frames_seen)
            return
        what = "waiting for a new writer" if reopenable else "stdin is closed for good"
        self._went_down(f"producer closed the stream after {session} bytes; {what}")

    def _went_down(self, error: str) -> None:
        # Log each distinct error once: a FIFO retried every few seconds must not flood the journal.
        if error != self.last_error or self.state != "down":
            log.warning("pipe source %s down: %s", self.path, error)
        self.last_error = error
        self.state = "down"

    def _done(self) -> bool:
        return bool(self.limit) and self.frames_ok >= self.limit
