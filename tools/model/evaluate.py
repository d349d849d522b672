"""ONNX Runtime evaluation: accuracy, agreement, transformed test set and single-sample latency."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from agent.inference.model import session_options
from agent.preprocess import Preprocessor
from tools.model.augment import preprocess_frames, synth_frames

__all__ = [
    "bench_latency",
    "latency_session",
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


def latency_session(path: Path) -> ort.InferenceSession:
    """The daemon's own session configuration, so measured latency is what the device sees."""
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


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


def bench_latency(paths: dict[str, Path], x: np.ndarray, runs: int = 3000, block: int = 50) -> dict[str, float]:
    """Median single-sample latency (us) per model over ``runs`` calls each.

    Models are interleaved in blocks of ``block`` calls so that load from other processes on this
    shared machine hits every model alike; inputs are cycled from ``x``.
    """
    sessions = {name: latency_session(p) for name, p in paths.items()}
    feeds = [{"input": x[i : i + 1]} for i in range(min(len(x), 64))]
    times: dict[str, list[int]] = {name: [] for name in sessions}
    for sess in sessions.values():
        for i in range(100):  # warm-up: first runs allocate and page in
            sess.run(["probs"], feeds[i % len(feeds)])
    for start in range(0, runs, block):
        for name, sess in sessions.items():
            for i in range(start, min(start + block, runs)):
                t0 = time.perf_counter_ns()
                sess.run(["probs"], feeds[i % len(feeds)])
                times[name].append(time.perf_counter_ns() - t0)
    return {name: statistics.median(t) / 1000.0 for name, t in times.items()}
