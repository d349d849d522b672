"""The inference loop's policies: stale live frames are dropped and counted, replay frames never."""

from __future__ import annotations

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
def test_frames_older_than_the_deadline(tmp_path: Path, live: bool) -> None:
    model = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={"version": 3})
    engine = Engine(model, deadline_ms=1.0, watchdog_factor=100, stop=threading.Event())
    ring = FrameRing(8, 28, 28)
    out: list[bytes] = []
    loop = InferenceLoop(ring, engine, Preprocessor(max_side=28), lambda s, p, q: out.append(p), 0, 4,
                         threading.Event(), drop_stale=live)
    now = time.monotonic_ns()
    for seq, age_ms in enumerate([50, 0, 50, 0]):
        i = ring.acquire()
        ring.pixels[i, 10:18, 12:16] = 255
        ring.commit(i, 28, 28, seq, now - age_ms * 1_000_000)
    assert loop.step(0) == 4
    assert loop.stale_dropped == (2 if live else 0)
    assert len(out) == (2 if live else 4) and loop.seq == len(out)
    assert b'"model_version":3' in out[0]
