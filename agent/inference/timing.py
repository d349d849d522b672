"""Side-by-side timing of loaded models on this CPU, as the daemon runs them.

Each model runs single-sample inferences through its own io-binding with the daemon's session and
run options (:mod:`agent.inference.model`), so the figures are what serving would see. Models are
timed in interleaved rounds (a batch of each in turn, the order rotating every round), so a noisy
neighbour or a frequency change hits all of them alike; the choice is made on the median.
Used by the variant choice (:mod:`agent.inference.choice`) and by ``make bench``.
"""

from __future__ import annotations

import hashlib
import platform
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from agent.inference.model import LoadedModel

__all__ = ["Timing", "cpu_identity", "time_models"]

_BATCH = 16  # runs of one model before the next one's turn
_WARMUP = 20


@dataclass(frozen=True)
class Timing:
    name: str
    wall_ns: np.ndarray  # int64, one per inference
    cpu_ns: int  # thread CPU time over all of them (one intra-op thread: ORT computes on this one)

    @property
    def runs(self) -> int:
        return len(self.wall_ns)

    def percentile_us(self, q: float) -> float:
        return float(np.percentile(self.wall_ns, q)) / 1000.0

    @property
    def p50_us(self) -> float:
        return self.percentile_us(50)

    @property
    def p99_us(self) -> float:
        return self.percentile_us(99)

    @property
    def cpu_us(self) -> float:
        """CPU time per inference."""
        return self.cpu_ns / max(1, self.runs) / 1000.0


def time_models(models: dict[str, LoadedModel], frame: np.ndarray, seconds_each: float,
                stop: Optional[threading.Event] = None, min_rounds: int = 3) -> dict[str, Timing]:
    """Time every model for about ``seconds_each`` (interleaved; see the module docstring).

    ``frame``: one preprocessed input (1, 28, 28) float32, written into each model's batch-1 buffer."""
    names = list(models)
    for m in models.values():
        m.buffers(1)[0][0] = frame
        for _ in range(_WARMUP):
            m.run(1)
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    cpu = dict.fromkeys(names, 0)
    t_end = time.monotonic() + seconds_each * len(names)
    rounds = 0
    while rounds < min_rounds or time.monotonic() < t_end:
        if stop is not None and stop.is_set() and rounds >= 1:
            break
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            run = models[name].run
            buf = np.empty(_BATCH, dtype=np.int64)
            c0 = time.thread_time_ns()
            for i in range(_BATCH):
                t0 = time.perf_counter_ns()
                run(1)
                buf[i] = time.perf_counter_ns() - t0
            cpu[name] += time.thread_time_ns() - c0
            chunks[name].append(buf)
        rounds += 1
    return {n: Timing(n, np.concatenate(chunks[n]), cpu[n]) for n in names}


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    out.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return out


def cpu_identity() -> str:
    """This CPU as a string: model name (ARM: core part too), architecture and a hash of its flags.

    The flags count because a virtual machine can hide instructions (e.g. AVX-512 VNNI) from a CPU
    whose model name is unchanged, and that is exactly what changes which variant is fastest."""
    info = _cpuinfo()
    name = info.get("model name") or info.get("hardware") or info.get("model") or platform.processor()
    part = info.get("cpu part", "")
    flags = " ".join(sorted((info.get("flags") or info.get("features") or "").split()))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{name or 'unknown'}{f' part {part}' if part else ''}; {platform.machine()}; flags {digest}"
