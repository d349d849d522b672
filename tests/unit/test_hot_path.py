"""After warm-up the hot path (ring → preprocess → bound ORT run → result) allocates nothing per frame.

tracemalloc sees every Python-level allocation (numpy arrays included). Over 10,000 frames the traced
memory must not grow and its peak must stay far below one frame-sized buffer per frame; the result
payload bytes handed to the sink are the one transient allocation, freed at once.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

from agent.inference import Engine, LoadedModel
from agent.pipeline import InferenceLoop
from agent.preprocess import Preprocessor
from agent.ring import FrameRing
from tests.helpers.isolated import in_fork
from tests.helpers.models import make_model


def _hot_path_allocation(tmp_path: Path) -> tuple[int, int, int]:
    model = LoadedModel.load(make_model(tmp_path / "m.onnx"), batch_max=4, card={"version": 1})
    ring = FrameRing(16, 64, 64)
    engine = Engine(model, deadline_ms=10_000, watchdog_factor=10, stop=threading.Event())
    sent = [0]

    def sink(suffix: str, payload: bytes, qos: int) -> None:
        sent[0] += 1

    loop = InferenceLoop(ring, engine, Preprocessor(max_side=64), sink, 1, 4, threading.Event())
    frames = np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8)

    def feed(count: int, batch: int) -> None:
        for k in range(0, count, batch):
            for j in range(batch):
                i = ring.acquire()
                ring.pixels[i, :28, :28] = frames[(k + j) % 64]
                ring.commit(i, 28, 28, k + j, time.monotonic_ns())
            while loop.step(0.0):
                pass

    feed(2000, 1)
    feed(2000, 4)  # warm-up: every batch size, every code path
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        feed(5000, 1)
        feed(5000, 4)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sent[0], after - before, peak - before


def test_hot_path_allocates_nothing_per_frame(tmp_path: Path) -> None:
    sent, growth, peak = in_fork(lambda: _hot_path_allocation(tmp_path))
    assert sent == 14000
    assert growth < 4096, f"traced memory grew by {growth} bytes over 10,000 frames"
    # ~2 KB: ufunc iterator scratch and one batch's result payloads. Any frame-sized float32
    # temporary (a 20x20 box: 1.6 KB; the 28x28 input: 3.1 KB) would cross this.
    assert peak < 3072, f"peak rose {peak} bytes above the steady state"

