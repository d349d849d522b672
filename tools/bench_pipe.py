"""CPU cost of the pipe source per kept and per skipped frame (``max_fps`` rate limiting).

A writer process streams the same raw frame into a FIFO as fast as the reader takes it; the pipe
source runs in a thread of this process, keeping every frame (``max_fps = 0``: read the Y plane into
a ring slot, skip the chroma, commit the ROI) or skipping nearly all of them (``max_fps = 0.001``:
read the whole frame into the scratch buffer). The figure is the reader thread's CPU time
(``time.thread_time_ns``) per frame, so the writer's cost and idle waits are not counted::

    python -m tools.bench_pipe                      # 160x120 gray, 640x480 and 1280x720 yuv420
    python -m tools.bench_pipe --sizes 640x480:yuv420 --frames 5000
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.pipe import PipeSource

__all__ = ["main", "measure"]

_WRITER = """
import os, sys
path, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
frame = memoryview(bytes(range(256)) * (size // 256) + bytes(size % 256))
fd = os.open(path, os.O_WRONLY)
for _ in range(n):
    off = 0
    while off < size:
        off += os.write(fd, frame[off:])
os.close(fd)
"""


def measure(width: int, height: int, fmt: str, frames: int, skip: bool) -> dict[str, float]:
    """Stream ``frames`` frames through a FIFO into a PipeSource; CPU ns per frame of the reader."""
    with tempfile.TemporaryDirectory() as tmp:
        fifo = Path(tmp) / "bench.fifo"
        os.mkfifo(fifo)
        roi = (0, 0, min(width, 64), min(height, 64))
        cfg = SourceConfig(type="pipe", path=str(fifo), width=width, height=height, pixel_format=fmt,
                           roi=roi, max_fps=0.001 if skip else 0.0)
        src = PipeSource(cfg)
        ring = FrameRing(8, height, width)
        stop = threading.Event()
        cpu = [0]

        def run() -> None:
            t0 = time.thread_time_ns()
            src.run(ring, stop)
            cpu[0] = time.thread_time_ns() - t0

        reader = threading.Thread(target=run, name="bench-reader")
        reader.start()
        t0 = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", _WRITER, str(fifo), str(src.frame_bytes), str(frames)],
                                check=True)
        while src.frames_seen < frames and reader.is_alive():
            time.sleep(0.001)
        wall = time.perf_counter_ns() - t0
        stop.set()
        reader.join(10)
    return {"frame_bytes": src.frame_bytes, "kept": src.frames_ok, "skipped": src.frames_skipped,
            "cpu_ns_per_frame": cpu[0] / max(1, src.frames_seen), "wall_ns_per_frame": wall / frames,
            "memcpy_ns_per_frame": _memcpy_ns(src.frame_bytes)}


def _memcpy_ns(n: int, reps: int = 200) -> float:
    """A user-space copy of one frame, for scale: reading a pipe is at least one kernel copy."""
    a, b = np.zeros(n, np.uint8), np.ones(n, np.uint8)
    t0 = time.perf_counter_ns()
    for _ in range(reps):
        np.copyto(a, b)
    return (time.perf_counter_ns() - t0) / reps


def _size(text: str) -> tuple[int, int, str]:
    dims, _, fmt = text.partition(":")
    w, h = (int(v) for v in dims.split("x"))
    return w, h, fmt or "gray"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="bench_pipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_size, nargs="+",
                   default=[(160, 120, "gray"), (640, 480, "yuv420"), (1280, 720, "yuv420")],
                   help="WxH[:gray|yuv420] ...")
    p.add_argument("--frames", type=int, default=3000, help="frames per measurement (default 3000)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # each run's producer EOF is expected: no warnings
    print(f"{'size':>16} {'frame B':>9} {'mode':>5} {'frames':>7} {'CPU ns/frame':>13} "
          f"{'wall ns/frame':>14} {'memcpy ns':>10}")
    for w, h, fmt in args.sizes:
        for skip in (False, True):
            r = measure(w, h, fmt, args.frames, skip)
            print(f"{f'{w}x{h} {fmt}':>16} {r['frame_bytes']:>9} {'skip' if skip else 'keep':>5} "
                  f"{r['skipped'] if skip else r['kept']:>7} {r['cpu_ns_per_frame']:>13,.0f} "
                  f"{r['wall_ns_per_frame']:>14,.0f} {r['memcpy_ns_per_frame']:>10,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
