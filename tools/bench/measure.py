"""One model, measured in a fresh process: RSS after load, then batch-1 and batch-4 latency and CPU.

    python -m tools.bench.measure --model M.onnx --inputs X.npy --mode engine|naive --runs 20000

``engine`` serves through the daemon's own code (``LoadedModel`` + ``Engine.infer``: tuned session,
bound preallocated buffers). ``naive`` is what a user writes without this project:
``ort.InferenceSession(path)`` with default options and ``session.run`` on a fresh array per call.
Prints one JSON object on stdout. CPU is the process's (all threads) CPU time over the loop.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from tools.bench.machine import load_average, summarise_us

__all__ = ["main", "measure"]

Runner = Callable[[int, int], int]  # (batch n, input index) -> latency ns


def _engine_runner(path: Path, inputs: np.ndarray) -> Runner:
    from agent.inference.engine import Engine
    from agent.inference.model import LoadedModel

    model = LoadedModel.load(path, batch_max=4, card={})
    engine = Engine(model, deadline_ms=5.0, watchdog_factor=20.0, stop=threading.Event())

    def run(n: int, i: int) -> int:
        x, _ = engine.model.buffers(n)
        x[:n] = inputs[i:i + n]
        return engine.infer(n)

    return run


def _naive_runner(path: Path, inputs: np.ndarray) -> Runner:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))  # defaults: all cores, spinning thread pool
    name = sess.get_inputs()[0].name

    def run(n: int, i: int) -> int:
        x = np.array(inputs[i:i + n])  # a user's fresh input array per call
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        return time.perf_counter_ns() - t0

    return run


def _loop(run: Runner, n: int, runs: int, pool: int) -> dict[str, Any]:
    for i in range(min(200, runs)):  # warm-up: arena, caches, branch predictors
        run(n, (i * n) % pool)
    lat = np.zeros(runs, dtype=np.int64)
    proc = psutil.Process()
    c0, w0 = proc.cpu_times(), time.perf_counter_ns()
    for i in range(runs):
        lat[i] = run(n, (i * n) % pool)
    c1, w1 = proc.cpu_times(), time.perf_counter_ns()
    cpu_us = ((c1.user - c0.user) + (c1.system - c0.system)) * 1e6
    frames = runs * n
    out: dict[str, Any] = {"batch": n, "runs": runs, **summarise_us(lat)}
    out["per_frame"] = summarise_us(lat // n) if n > 1 else None
    out["cpu_us_per_frame"] = round(cpu_us / frames, 2)
    out["wall_us_per_frame"] = round((w1 - w0) / 1000 / frames, 2)
    out["frames_per_cpu_s"] = round(frames / (cpu_us / 1e6)) if cpu_us > 0 else None
    return out


def measure(path: Path, inputs: np.ndarray, mode: str, runs: int) -> dict[str, Any]:
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    make = _engine_runner if mode == "engine" else _naive_runner
    run = make(path, inputs)
    gc.collect()
    rss_loaded = proc.memory_info().rss
    pool = len(inputs) - 4
    b1 = _loop(run, 1, runs, pool)
    b4 = _loop(run, 4, max(runs // 4, 50), pool)
    return {"mode": mode, "rss_before_load_bytes": rss_before, "rss_after_load_bytes": rss_loaded,
            "rss_model_delta_bytes": rss_loaded - rss_before, "rss_after_runs_bytes": proc.memory_info().rss,
            "threads": proc.num_threads(), "batch1": b1, "batch4": b4, "load_average": load_average()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.measure", description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--inputs", type=Path, required=True, help=".npy of normalised (N,1,28,28) float32")
    ap.add_argument("--mode", choices=("engine", "naive"), default="engine")
    ap.add_argument("--runs", type=int, default=20000)
    args = ap.parse_args(argv)
    inputs = np.load(args.inputs).astype(np.float32, copy=False)
    import onnxruntime  # noqa: F401  -- imported before the 'before load' RSS, in both modes

    import agent.inference  # noqa: F401
    print(json.dumps(measure(args.model, inputs, args.mode, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
