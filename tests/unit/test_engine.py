"""Model loading and the engine: signature checks, bound buffers, deadlines, watchdog, swaps."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from agent.inference import Engine, InferenceAborted, LoadedModel, ModelError
from agent.inference.model import run_options
from tests.helpers.models import make_model


def test_load_binds_every_batch_size(tmp_path: Path) -> None:
    m = LoadedModel.load(make_model(tmp_path / "m.onnx"), batch_max=4, card={"version": 7})
    assert (m.version, m.input_name, m.output_name, m.batch_max) == (7, "input", "probs", 4)
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    ref = m.predict(x)
    for n in (1, 2, 3, 4):
        xin, yout = m.buffers(n)
        xin[...] = x[:n]
        m.run(n)
        np.testing.assert_allclose(yout, ref[:n], rtol=1e-5)
        np.testing.assert_allclose(yout.sum(axis=1), 1.0, rtol=1e-5)


def test_fixed_batch_model_serves_one_at_a_time(tmp_path: Path) -> None:
    m = LoadedModel.load(make_model(tmp_path / "m.onnx", "fixed_batch"), batch_max=4, card={})
    assert m.batch_max == 1


@pytest.mark.parametrize(("kind", "needle"), [("wrong_shape", "expected [N, 1, 28, 28]")])
def test_bad_signature_is_refused(tmp_path: Path, kind: str, needle: str) -> None:
    with pytest.raises(ModelError, match=needle.replace("[", r"\[")):
        LoadedModel.load(make_model(tmp_path / "m.onnx", kind), card={})


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="onnxruntime refused"):
        LoadedModel.load(bad, card={})
    with pytest.raises(ModelError, match="cannot read"):
        LoadedModel.load(tmp_path / "missing.onnx", card={})


def test_deadline_misses_are_counted(tmp_path: Path) -> None:
    # 800 chained MatMuls take far longer than a 1 µs deadline on any machine (no watchdog runs).
    slow_model = LoadedModel.load(make_model(tmp_path / "slow.onnx", "slow", slow_steps=400), card={})
    eng = Engine(slow_model, deadline_ms=0.001, watchdog_factor=1000, stop=threading.Event())
    assert eng.infer(1) > eng.deadline_ns
    assert eng.deadline_misses == 1 and eng.inferences == 1
    eng.infer(2)
    assert eng.deadline_misses == 3 and eng.inferences == 3  # a late batch counts each of its frames
    assert eng.latency.drain()["count"] == 2
    m = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={})
    relaxed = Engine(m, deadline_ms=10_000, watchdog_factor=2, stop=threading.Event())
    relaxed.infer(2)
    assert relaxed.deadline_misses == 0 and relaxed.inferences == 2


def test_watchdog_terminates_a_stuck_run(tmp_path: Path) -> None:
    m = LoadedModel.load(make_model(tmp_path / "slow.onnx", "slow", slow_steps=3000), card={})
    stop = threading.Event()
    eng = Engine(m, deadline_ms=0.1, watchdog_factor=20, stop=stop)  # abort after 2 ms
    t = threading.Thread(target=eng.watchdog, daemon=True)
    t.start()
    try:
        # Back to back: a run (~40 ms here) may start while the watchdog sleeps its idle 0.25 s and
        # end before it looks; once batches flow it polls every 0.5 ms and must catch one. (A single
        # run raced the thread's start: the main thread delayed 0.5 ms on a busy core lost.)
        completed = 0
        for _ in range(100):
            try:
                eng.infer(1)
            except InferenceAborted:
                break
            completed += 1
        else:
            pytest.fail("the watchdog terminated none of 100 back-to-back runs")
        assert eng.aborted == 1 and eng.errors == 1 and eng.inferences == completed
    finally:
        stop.set()
        t.join(2)


def test_a_stale_terminate_does_not_kill_the_next_run(tmp_path: Path) -> None:
    # The watchdog's terminate can land just after the run it judged stuck returned on its own;
    # the flag then still stands when the next batch starts, and ORT refuses to run that batch.
    m = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={})
    eng = Engine(m, 5.0, 20.0, threading.Event())
    eng._run_options.terminate = True
    eng.infer(1)
    assert (eng.errors, eng.batches) == (0, 1)


class _ReturnsWhileJudged(Engine):
    """The watchdog's first look finds a run started long ago; it has returned by the next look."""

    looks = 0

    @property  # type: ignore[override]
    def _started_ns(self) -> int:
        self.looks += 1
        return 1 if self.looks == 1 else 0

    @_started_ns.setter
    def _started_ns(self, value: int) -> None:
        pass


def test_watchdog_rechecks_the_run_before_terminating(tmp_path: Path) -> None:
    m = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={})
    stop = threading.Event()
    eng = _ReturnsWhileJudged(m, deadline_ms=1.0, watchdog_factor=2, stop=stop)
    t = threading.Thread(target=eng.watchdog, daemon=True)
    t.start()
    try:
        for _ in range(2000):  # ≤ 2 s: the watchdog polls every 1 ms, idle every 0.25 s
            if eng.looks >= 4:
                break
            stop.wait(0.001)
    finally:
        stop.set()
        t.join(2)
    assert eng.looks >= 4
    assert eng.aborted == 0 and not eng._run_options.terminate


def test_swap_applies_between_batches(tmp_path: Path) -> None:
    a = LoadedModel.load(make_model(tmp_path / "a.onnx"), card={"version": 1})
    b = LoadedModel.load(make_model(tmp_path / "b.onnx"), card={"version": 2})
    eng = Engine(a, 5.0, 20.0, threading.Event())
    eng.request_swap(b)
    assert eng.model is a  # not before the inference thread says so
    assert eng.apply_swap() is a and eng.model is b and eng.swaps == 1
    assert eng.apply_swap() is None


def test_hot_path_run_options_name_the_graph_id(tmp_path: Path) -> None:
    # Without the entry, onnxruntime's Python run_with_iobinding takes an exception path per call
    # (~28 µs); the engine and LoadedModel.run must both use options that carry it.
    m = LoadedModel.load(make_model(tmp_path / "m.onnx"), card={})
    eng = Engine(m, 5.0, 20.0, threading.Event())
    for ro in (run_options(), m._run_options, eng._run_options):
        assert ro.get_run_config_entry("gpu_graph_id") == "0"
