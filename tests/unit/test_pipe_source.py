"""PipeSource on real pipes and FIFOs: layout, ROI, chroma skipping, EOF/partial frames, reopen, stdin,
rate gate (on a fake clock) and stop-awareness."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.factory import make_source
from agent.source.pipe import PipeSource, RateGate, frame_layout
from tests.helpers.wait import wait_until


def _cfg(path: str, w: int = 16, h: int = 8, fmt: str = "gray", **kw: Any) -> SourceConfig:
    return SourceConfig(type="pipe", path=path, width=w, height=h, pixel_format=fmt,
                        reopen_min_s=0.01, reopen_max_s=0.05, **kw)


def _frame(k: int, w: int, h: int, fmt: str) -> bytes:
    """Y plane = a ramp offset by k (so frames and rows are distinguishable); chroma = 0xEE."""
    y = ((np.arange(w * h) + 7 * k) % 200).astype(np.uint8).tobytes()
    return y + (b"\xee" * (w * h // 2) if fmt == "yuv420" else b"")


@contextmanager
def _running(src: PipeSource, ring: FrameRing) -> Iterator[threading.Event]:
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(ring, stop), daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(5)
        assert not t.is_alive(), "the pipe source did not notice stop"


def _drain(ring: FrameRing) -> list[tuple[int, np.ndarray]]:
    out = np.zeros(ring.slots, np.int64)
    n = ring.take(out, ring.slots, 0.0)
    got = [(int(ring.frame_seq[i]), ring.view(int(i)).copy()) for i in out[:n]]
    ring.release(out, n)
    return got


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    p = tmp_path / "camera.fifo"
    os.mkfifo(p)
    return str(p)


def test_factory_builds_pipe_source(fifo: str) -> None:
    assert isinstance(make_source(_cfg(fifo)), PipeSource)


def test_frame_layout() -> None:
    assert frame_layout(160, 120, "gray") == (19200, 0)
    assert frame_layout(160, 120, "yuv420") == (19200, 9600)
    with pytest.raises(ValueError, match="unsupported"):
        frame_layout(4, 4, "rgb24")


@pytest.mark.parametrize("fmt", ["gray", "yuv420"])
def test_frames_land_in_ring_with_roi_and_chroma_skipped(fifo: str, fmt: str) -> None:
    w, h, n = 16, 8, 6
    src = PipeSource(_cfg(fifo, w, h, fmt, roi=(3, 2, 10, 5)))
    ring = FrameRing(8, h, w)
    data = b"".join(_frame(k, w, h, fmt) for k in range(n))
    with _running(src, ring):
        with open(fifo, "wb", buffering=0) as f:
            for i in range(0, len(data), 37):  # chunks that straddle rows, planes and frames
                f.write(data[i:i + 37])
        assert wait_until(lambda: src.stats()["bytes_in"] == len(data) and src.stats()["state"] == "down")
        frames = _drain(ring)
    assert [seq for seq, _ in frames] == list(range(n))
    for k, (_, view) in enumerate(frames):
        full = np.frombuffer(_frame(k, w, h, fmt)[:w * h], np.uint8).reshape(h, w)
        np.testing.assert_array_equal(view, full[2:7, 3:13])
    st = src.stats()
    assert st["frames_ok"] == n and st["partial_frames"] == 0 and st["frames_skipped"] == 0
    assert st["bytes_in"] == len(data) and st["frame_bytes"] == len(_frame(0, w, h, fmt))


def test_partial_frame_is_reported_and_next_writer_starts_aligned(fifo: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    w, h = 16, 8
    src = PipeSource(_cfg(fifo, w, h, "yuv420"))
    ring = FrameRing(8, h, w)
    fb = len(_frame(0, w, h, "yuv420"))
    with _running(src, ring):
        with open(fifo, "wb") as f:
            f.write(_frame(0, w, h, "yuv420") + _frame(1, w, h, "yuv420")[:100])
        assert wait_until(lambda: src.stats()["partial_frames"] == 1)
        assert src.stats()["state"] == "down"
        with open(fifo, "wb") as f:  # a new producer: frame boundary again
            f.write(_frame(2, w, h, "yuv420"))
        assert wait_until(lambda: src.stats()["frames_ok"] == 2)
        assert wait_until(lambda: src.reopens == 2)  # reopened after each producer
        frames = _drain(ring)
    assert [seq for seq, _ in frames] == [0, 1]
    np.testing.assert_array_equal(frames[1][1].ravel(), np.frombuffer(_frame(2, w, h, "yuv420")[:w * h],
                                                                       np.uint8))
    st = src.stats()
    assert (st["partial_frames"], st["misaligned"], st["bytes_in"]) == (1, 1, 2 * fb + 100)
    msg = next(r.getMessage() for r in caplog.records if "inside a frame" in r.getMessage())
    assert f"100 of {fb} bytes" in msg and f"{fb + 100} bytes from this producer" in msg


def test_missing_fifo_is_retried_until_it_appears(tmp_path: Path) -> None:
    path = str(tmp_path / "later.fifo")
    src = PipeSource(_cfg(path))
    ring = FrameRing(4, 8, 16)
    with _running(src, ring):
        assert wait_until(lambda: src.open_failures >= 2)
        assert src.stats()["state"] == "down" and "cannot open" in str(src.stats()["last_error"])
        os.mkfifo(path)
        with open(path, "wb") as f:
            f.write(_frame(0, 16, 8, "gray"))
        assert wait_until(lambda: src.stats()["frames_ok"] == 1)


def test_stop_while_waiting_for_a_writer(fifo: str) -> None:
    src = PipeSource(_cfg(fifo))
    with _running(src, FrameRing(4, 8, 16)):
        assert wait_until(lambda: src.opens == 1)
        time.sleep(0.05)
    assert src.stats()["state"] == "stopped"


def test_stop_mid_frame_is_not_a_partial_frame(fifo: str) -> None:
    src = PipeSource(_cfg(fifo))
    ring = FrameRing(4, 8, 16)
    # The writer is opened after the source holds the read end and stays open: no EOF, only stop.
    with _running(src, ring) as stop, open(fifo, "wb", buffering=0) as f:
        f.write(_frame(0, 16, 8, "gray")[:50])
        assert wait_until(lambda: src.stats()["bytes_in"] == 50)
        stop.set()
    assert src.stats()["partial_frames"] == 0 and ring.pending() == 0


def test_stdin_eof_is_down_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    saved = os.dup(0)
    os.dup2(r, 0)
    os.close(r)
    try:
        src = PipeSource(_cfg("-"))
        ring = FrameRing(4, 8, 16)
        with _running(src, ring):
            os.write(w, _frame(0, 16, 8, "gray") * 3)
            os.close(w)
            assert wait_until(lambda: src.stats()["bytes_in"] == 3 * 128 and src.stats()["state"] == "down")
            time.sleep(0.1)  # no reopen of stdin
            st = src.stats()
        assert (st["frames_ok"], st["reopens"], st["partial_frames"]) == (3, 0, 0)
        assert "stdin is closed for good" in str(st["last_error"])
        assert os.get_blocking(0), "the caller's stdin must stay blocking"
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_regular_file_is_read_once(tmp_path: Path) -> None:
    p = tmp_path / "rec.gray"
    p.write_bytes(_frame(0, 16, 8, "gray") * 4 + b"\x01" * 5)
    src = PipeSource(_cfg(str(p)))
    ring = FrameRing(8, 8, 16)
    stop = threading.Event()
    src.run(ring, stop)  # returns by itself: a file is finite
    st = src.stats()
    assert (st["state"], st["frames_ok"], st["partial_frames"], st["reopens"]) == ("eof", 4, 1, 0)


def test_limit_stops_the_source(tmp_path: Path) -> None:
    p = tmp_path / "rec.gray"
    p.write_bytes(_frame(0, 16, 8, "gray") * 10)
    src = PipeSource(_cfg(str(p), limit=3))
    src.run(FrameRing(8, 8, 16), threading.Event())
    assert src.stats()["frames_ok"] == 3


def test_ring_of_the_wrong_shape_is_refused(fifo: str) -> None:
    with pytest.raises(ValueError, match="needs 8x16"):
        PipeSource(_cfg(fifo)).run(FrameRing(4, 28, 28), threading.Event())


def test_max_fps_skips_and_counts_every_frame(fifo: str) -> None:
    n = 50
    src = PipeSource(_cfg(fifo, max_fps=0.5))  # one frame per 2 s: a burst of 50 keeps very few
    ring = FrameRing(8, 8, 16)
    with _running(src, ring):
        with open(fifo, "wb") as f:
            f.write(b"".join(_frame(k, 16, 8, "gray") for k in range(n)))
        assert wait_until(lambda: src.stats()["bytes_in"] == n * 128 and src.stats()["state"] == "down")
        frames = _drain(ring)
    assert src.frames_ok + src.frames_skipped == n
    assert 1 <= src.frames_ok < n and frames[0][0] == 0
    # frame_seq counts skipped frames too, and a kept frame holds exactly the frame of that number
    for seq, view in frames:
        np.testing.assert_array_equal(view.ravel(), np.frombuffer(_frame(seq, 16, 8, "gray"), np.uint8))


def test_rate_gate_on_a_fake_clock() -> None:
    gate = RateGate(100_000_000)  # 10 fps from a jittery 30 fps camera over 10 s
    rng = np.random.default_rng(1)
    kept = 0
    for k in range(300):
        now = int(k * 33_333_333 + rng.integers(-2_000_000, 2_000_000))
        if not gate.skip(now):
            gate.kept(now)
            kept += 1
    assert 99 <= kept <= 101
    every = RateGate(0)
    assert not every.skip(0) and not every.skip(1)


def test_rate_gate_restarts_after_a_stall() -> None:
    gate = RateGate(100)
    gate.kept(0)
    assert gate.skip(50) and not gate.skip(100)
    gate.kept(10_000)  # long gap: no burst of catch-up frames afterwards
    assert gate.skip(10_050) and not gate.skip(10_100)
