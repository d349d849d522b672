"""The golden set: the labelled digits that decide whether a model may serve.

Used by ``digit-agent selftest``, by start-up readiness and by the OTA validation gate, so that one
definition of "good enough" holds everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.inference.model import LoadedModel, ModelError
from agent.preprocess import Preprocessor

__all__ = ["GoldenResult", "GoldenSet", "evaluate_golden", "load_golden"]


@dataclass(frozen=True)
class GoldenSet:
    images: np.ndarray  # uint8 (N, H, W)
    labels: np.ndarray  # uint8 (N,)


@dataclass(frozen=True)
class GoldenResult:
    accuracy: float
    count: int
    p50_us: float
    p99_us: float
    finite: bool

    def summary(self) -> str:
        return (f"golden accuracy {self.accuracy * 100:.2f} % on {self.count} digits, "
                f"latency p50 {self.p50_us:.1f} µs p99 {self.p99_us:.1f} µs, "
                f"outputs {'finite' if self.finite else 'NOT FINITE'}")


def load_golden(path: Path | str) -> GoldenSet:
    try:
        with np.load(path) as data:
            images, labels = np.asarray(data["images"], np.uint8), np.asarray(data["labels"], np.uint8)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable golden set: {exc}") from None
    if images.ndim != 3 or len(images) != len(labels) or not len(images):
        raise ModelError(f"{path}: golden set needs images (N,H,W) and N labels")
    return GoldenSet(images, labels)


def evaluate_golden(model: LoadedModel, golden: GoldenSet, pre: Preprocessor) -> GoldenResult:
    """Single-sample runs through the runtime preprocessing, as the daemon serves frames."""
    x, y = model.buffers(1)
    times = np.empty(len(golden.images), dtype=np.float64)
    correct, finite = 0, True
    for k, img in enumerate(golden.images):
        pre(img, x[0])
        t0 = time.perf_counter_ns()
        model.run(1)
        times[k] = (time.perf_counter_ns() - t0) / 1000.0
        finite = finite and bool(np.isfinite(y).all())
        correct += int(np.argmax(y[0]) == golden.labels[k])
    p50, p99 = np.percentile(times, [50, 99])
    return GoldenResult(correct / len(golden.images), len(golden.images), float(p50), float(p99), finite)
