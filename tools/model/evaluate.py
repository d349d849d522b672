"""ONNX Runtime evaluation: accuracy, agreement, transformed test set and single-sample latency."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from agent.preprocess import Preprocessor
from tools.model.augment import preprocess_frames, synth_frames

__all__ = [
    "bench_latency",
    "latency_passes",
    "predict_onnx",
    "probs_onnx",
    "session",
    "transformed_test_frames",
]

log = logging.getLogger(__name__)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def probs_onnx(sess: ort.InferenceSession, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Softmax probabilities (N, 10) for normalised inputs (N, 1, 28, 28)."""
    outs = [sess.run(["probs"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32, copy=False)


def predict_onnx(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.asarray(probs_onnx(sess, x).argmax(1))


def transformed_test_frames(images: np.ndarray, seed: int, side: int = 40, hard: bool = False) -> np.ndarray:
    """The 'transformed test set': each test digit scaled 0.6-1.4 and shifted up to +-6 px in a
    40x40 canvas, inverted background for a random half, as uint8 frames. ``hard`` adds +-10 deg
    rotation, stroke-width changes, random grey levels and sensor noise."""
    gen = torch.Generator().manual_seed(seed)
    x01 = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    kw = {} if hard else {"rot_deg": 0.0, "stroke_p": 0.0, "levels": False}
    chunks = [synth_frames(x01[i : i + 1000], side, gen, **kw) for i in range(0, len(x01), 1000)]  # type: ignore[arg-type]
    return np.concatenate(chunks)


def preprocess_test(frames: np.ndarray, pre: Preprocessor) -> np.ndarray:
    return preprocess_frames(frames, pre)


def bench_latency(
    paths: dict[str, Path], x: np.ndarray, runs: int = 3000, block: int = 50, repeats: int = 1
) -> dict[str, float]:
    """Median batch-1 latency (µs) per model, served the daemon's way: its session options (one
    thread, no spinning, full optimisation) and io-binding on preallocated buffers
    (:class:`agent.inference.model.LoadedModel`), so a figure here is what the device pays per frame.

    Models are interleaved in blocks of ``block`` calls so that load from other processes on this
    shared machine hits every model alike; inputs are cycled from ``x``. With ``repeats`` > 1 the
    whole interleaved pass runs that many times and the median of the per-pass medians is returned
    (see :func:`latency_passes` for the passes themselves).
    """
    passes = latency_passes(paths, x, runs, block, repeats)
    return {name: statistics.median(p[name] for p in passes) for name in paths}


def latency_passes(
    paths: dict[str, Path], x: np.ndarray, runs: int, block: int = 50, repeats: int = 1
) -> list[dict[str, float]]:
    """Per-pass median latency (µs) of each model; see :func:`bench_latency`."""
    from agent.inference.model import LoadedModel

    models = {name: LoadedModel.load(p, batch_max=1, card={}) for name, p in paths.items()}
    pool = x[: min(len(x), 64)]
    for m in models.values():
        for i in range(100):  # warm-up: first runs allocate and page in
            m.buffers(1)[0][0] = pool[i % len(pool)]
            m.run(1)
    passes = []
    for rep in range(repeats):
        times: dict[str, list[int]] = {name: [] for name in models}
        for start in range(0, runs, block):
            for name, m in models.items():
                xin = m.buffers(1)[0]
                for i in range(start, min(start + block, runs)):
                    xin[0] = pool[i % len(pool)]
                    t0 = time.perf_counter_ns()
                    m.run(1)
                    times[name].append(time.perf_counter_ns() - t0)
        passes.append({name: statistics.median(t) / 1000.0 for name, t in times.items()})
        log.info("latency pass %d/%d: %s", rep + 1, repeats,
                 ", ".join(f"{k} {v:.1f} µs" for k, v in passes[-1].items()))
    return passes
