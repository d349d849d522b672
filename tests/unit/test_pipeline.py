"""The inference loop's policies: live frames older than their age limit are dropped and counted,
replay frames never; the inference deadline only flags late results."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from agent.inference import Engine, LoadedModel
from agent.pipeline import InferenceLoop
from agent.preprocess import Preprocessor
from agent.ring import FrameRing
from tests.helpers.models import make_model


@pytest.mark.parametrize("live", [True, False])
def test_frames_older_than_their_age_limit(tmp_path: Path, live: bool) -> None:
    model = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={"version": 3})
    # The deadline (1 ms) is far below the frames' ages: it must not decide what is dropped.
    engine = Engine(model, deadline_ms=1.0, watchdog_factor=100, stop=threading.Event())
    ring = FrameRing(8, 28, 28)
    out: list[bytes] = []
    loop = InferenceLoop(ring, engine, Preprocessor(max_side=28), lambda s, p, q: out.append(p), 0, 4,
                         threading.Event(), max_frame_age_ms=500.0 if live else 0.0)
    now = time.monotonic_ns()
    for seq, age_ms in enumerate([5000, 50, 5000, 0]):
        i = ring.acquire()
        ring.pixels[i, 10:18, 12:16] = 255
        ring.commit(i, 28, 28, seq, now - age_ms * 1_000_000)
    assert loop.step(0) == 4
    assert loop.stale_dropped == (2 if live else 0)
    assert len(out) == (2 if live else 4) and loop.seq == len(out)
    assert b'"model_version":3' in out[0]


def test_waiting_frames_run_as_one_batch_and_late_results_say_so(tmp_path: Path) -> None:
    # The slow model takes far longer than a 1 µs deadline, so the batch certainly misses it;
    # no age limit (replay), or every frame would be dropped as too old before inference.
    model = LoadedModel.load(make_model(tmp_path / "slow.onnx", "slow", slow_steps=400), batch_max=4,
                             card={"version": 1})
    engine = Engine(model, deadline_ms=0.001, watchdog_factor=1000, stop=threading.Event())
    ring = FrameRing(8, 28, 28)
    out: list[bytes] = []
    loop = InferenceLoop(ring, engine, Preprocessor(max_side=28), lambda s, p, q: out.append(p), 0, 4,
                         threading.Event(), max_frame_age_ms=0.0)
    for seq in range(4):
        i = ring.acquire()
        ring.pixels[i, 10:18, 12:16] = 255
        ring.commit(i, 28, 28, seq, time.monotonic_ns())
    assert loop.step(0) == 4
    assert (engine.batches, engine.inferences) == (1, 4)
    assert engine.deadline_misses == 4 and len(out) == 4
    for payload in out:
        assert json.loads(payload)["deadline_missed"] is True
    assert ring.pending() == 0 and loop.step(0) == 0 and engine.batches == 1


@pytest.mark.parametrize(("frames", "digits", "reported"), [
    (3, [7, 7, 7, 3, 7, 7, 7, 7, 1, 1, 1, 1], [7, 1]),  # a one-frame 3 is noise; 7 again is no change
    (1, [7, 7, 3, 3, 7], [7, 3, 7]),
    (3, [2, 2, 5, 2, 2, 5, 5], []),  # never stable for 3 frames
    (0, [1, 1, 1, 1], []),  # 0 = off
])
def test_digit_reported_on_change_after_debounce(tmp_path: Path, frames: int, digits: list[int],
                                                 reported: list[int]) -> None:
    model = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={"version": 1})
    engine = Engine(model, deadline_ms=1000.0, watchdog_factor=100, stop=threading.Event())
    got: list[tuple[int, int]] = []
    loop = InferenceLoop(FrameRing(4, 28, 28), engine, Preprocessor(max_side=28), lambda s, p, q: None, 0, 1,
                         threading.Event(), on_digit=lambda d, c, seq: got.append((d, seq)), digit_frames=frames)
    for n, d in enumerate(digits, 1):
        loop.seq, loop.last_confidence = n, 0.9
        loop._debounce(d)
    assert [d for d, _ in got] == reported
    if reported and frames:  # reported at the frame that completed the run
        assert digits[got[0][1] - frames:got[0][1]] == [reported[0]] * frames
