"""Replay: frames from an IDX, NPY or NPZ file (or the shipped golden set), paced or flat out.

A file is not a live sensor, so replay is lossless: when the ring is full it waits for the
inference loop instead of dropping (live sources drop the oldest).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.base import StatValue

__all__ = ["ReplaySource", "load_frames"]

log = logging.getLogger(__name__)


def load_frames(path: Path | str) -> np.ndarray:
    """uint8 (N, H, W) from ``.npz`` (``images``), ``.npy`` or an IDX ``*-ubyte`` file."""
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p) as data:
            arr = np.asarray(data["images"])
    elif p.suffix == ".npy":
        arr = np.load(p)
    else:
        arr = _read_idx_images(p.read_bytes(), p)
    if arr.ndim != 3 or arr.dtype != np.uint8 or not len(arr):
        raise ValueError(f"{p}: expected uint8 frames of shape (N, H, W), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _read_idx_images(data: bytes, p: Path) -> np.ndarray:
    if len(data) < 16 or data[:4] != b"\x00\x00\x08\x03":
        raise ValueError(f"{p}: not an IDX uint8 image file (magic {data[:4].hex()})")
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + n * h * w:
        raise ValueError(f"{p}: IDX size mismatch: header says {n}x{h}x{w}")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)


class ReplaySource:
    name = "replay"
    live = False

    def __init__(self, cfg: SourceConfig) -> None:
        self.frames = load_frames(cfg.path)
        self.rate_hz = cfg.rate_hz
        self.loop = cfg.loop
        self.limit = cfg.limit
        self.sent = 0
        self.state = "idle"

    def run(self, ring: FrameRing, stop: threading.Event) -> None:
        n, h, w = self.frames.shape
        if h > ring.max_h or w > ring.max_w:
            raise ValueError(f"replay frames are {h}x{w}; source.max_frame_side is {ring.max_h}")
        period_ns = int(1e9 / self.rate_hz) if self.rate_hz > 0 else 0
        next_ns = time.monotonic_ns()
        self.state = "up"
        while not stop.is_set() and (not self.limit or self.sent < self.limit):
            k = self.sent % n
            if k == 0 and self.sent and not self.loop:
                break
            if period_ns:
                next_ns += period_ns
                wait_ns = next_ns - time.monotonic_ns()
                if wait_ns > 0 and stop.wait(wait_ns / 1e9):
                    break
            idx = ring.acquire_wait(stop)
            if idx is None:
                break
            ring.pixels[idx, :h, :w] = self.frames[k]
            ring.commit(idx, h, w, self.sent, time.monotonic_ns())
            self.sent += 1
        if stop.is_set():  # a looping replay only ever ends here
            self.state = "stopped"
            log.info("replay stopped after %d frames", self.sent)
        else:
            self.state = "eof"
            log.info("replay finished after %d frames (%s)", self.sent,
                     f"source.limit = {self.limit}" if self.limit and self.sent >= self.limit else "end of file")

    def stats(self) -> dict[str, StatValue]:
        return {"state": self.state, "frames_ok": self.sent}
