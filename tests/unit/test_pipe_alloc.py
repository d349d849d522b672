"""Zero allocation per frame: the pipe source alone feeding a ring from an os.pipe(), traced with
tracemalloc over 10,000 frames after a warm-up (kept frames, and skipped frames under max_fps)."""

from __future__ import annotations

import os
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

import agent.ring
import agent.source.pipe
from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.pipe import PipeSource
from tests.helpers.isolated import in_fork
from tests.helpers.wait import wait_until

WARMUP, TRACED = 500, 10_000
W, H = 160, 120


def _write_all(fd: int, frame: memoryview) -> None:
    off = 0
    while off < len(frame):
        off += os.write(fd, frame[off:])


def _pipe_allocation(fmt: str, max_fps: float) -> dict[str, Any]:
    r, w = os.pipe()
    cfg = SourceConfig(type="pipe", path=f"/proc/self/fd/{r}", width=W, height=H, pixel_format=fmt,
                       roi=(60, 40, 40, 40), max_fps=max_fps)
    src = PipeSource(cfg)
    ring = FrameRing(8, H, W)
    frame = memoryview(np.random.default_rng(0).integers(0, 256, src.frame_bytes, np.uint8).tobytes())
    go, stop_writer, stop = threading.Event(), threading.Event(), threading.Event()
    done = [0]

    def write() -> None:
        for n in (WARMUP, TRACED):
            for _ in range(n):
                _write_all(w, frame)
            done[0] += n
            if not go.wait(60) or stop_writer.is_set():
                return

    writer = threading.Thread(target=write, daemon=True)
    reader = threading.Thread(target=src.run, args=(ring, stop), daemon=True)
    reader.start()
    writer.start()
    try:
        assert wait_until(lambda: src.frames_seen == WARMUP, 60), src.stats()
        files = [tracemalloc.Filter(True, agent.source.pipe.__file__),
                 tracemalloc.Filter(True, agent.ring.__file__)]
        tracemalloc.start()
        before = tracemalloc.take_snapshot().filter_traces(files)
        base, _ = tracemalloc.get_traced_memory()
        go.set()
        assert wait_until(lambda: src.frames_seen == WARMUP + TRACED, 60), src.stats()
        after = tracemalloc.take_snapshot().filter_traces(files)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        stop_writer.set()
        go.set()
        stop.set()
        reader.join(5)
        os.close(w)
        os.close(r)
    diffs = after.compare_to(before, "lineno")
    return {"growth": sum(d.size_diff for d in diffs), "top": [str(d) for d in diffs[:5]],
            "current": current - base, "peak": peak - base, "frame_bytes": src.frame_bytes,
            "stats": src.stats(), "frames_skipped": src.frames_skipped}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt,max_fps", [("gray", 0.0), ("yuv420", 1000.0)])
def test_no_memory_growth_per_frame(fmt: str, max_fps: float) -> None:
    # In a forked child: threads other tests left running cannot allocate inside the window.
    m = in_fork(lambda: _pipe_allocation(fmt, max_fps))
    print(f"\n{fmt} max_fps={max_fps}: {m['stats']}; growth in source+ring {m['growth']} B, "
          f"whole process {m['current']} B (peak {m['peak']} B) over {TRACED} frames")
    # A few live int counters (replaced, not accumulated) remain; one byte per frame would be 10 kB.
    assert m["growth"] < 1024, m["top"]
    assert m["current"] < 64 * 1024  # the test's own polling and thread bookkeeping, not per frame
    # A frame-sized temporary (e.g. read() instead of readinto) would lift the peak by frame_bytes.
    assert m["peak"] < m["frame_bytes"] // 2, f"transient peak {m['peak']} B"
    assert m["stats"]["partial_frames"] == 0
    if max_fps:
        assert m["frames_skipped"] > 0  # the skip path was traced too


def test_proc_fd_path_is_a_real_pipe_reader() -> None:
    """The test above reads through /proc/self/fd/N: check that this is the pipe itself."""
    r, w = os.pipe()
    try:
        os.write(w, b"\x05" * 16)
        os.close(w)
        src = PipeSource(SourceConfig(type="pipe", path=f"/proc/self/fd/{r}", width=4, height=4))
        ring = FrameRing(2, 4, 4)
        stop = threading.Event()
        t = threading.Thread(target=src.run, args=(ring, stop), daemon=True)
        t.start()
        assert wait_until(lambda: src.frames_ok == 1, 10)
        stop.set()
        t.join(5)
        assert int(ring.pixels[0].sum()) == 5 * 16
    finally:
        os.close(r)
