"""Machine facts for a result file, and the percentile summary every benchmark uses."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cpu_model", "load_average", "machine_info", "summarise_us"]

_INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "sse4_2", "neon",
                      "asimd", "asimddp", "i8mm")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(set(value.split()))
    return []


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the figures: CPU, flags, cores, versions, load."""
    import onnxruntime as ort

    flags = _cpu_flags()
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "simd_flags": [f for f in _INTERESTING_FLAGS if f in flags],
        "cpu_flags": flags,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "load_average_start": load_average(),
        "git": git_revision(),
    }


def git_revision() -> str | None:
    """The commit the figures were measured on, ``+dirty`` when the tree had uncommitted changes."""
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def summarise_us(ns: Sequence[int] | np.ndarray) -> dict[str, float | int]:
    """p50/p99/p99.9/max/mean in µs of a sample of nanosecond durations."""
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    if not len(a):
        return {"n": 0}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"n": len(a), "p50_us": round(float(p50), 2), "p99_us": round(float(p99), 2),
            "p999_us": round(float(p999), 2), "max_us": round(float(a.max()), 2),
            "mean_us": round(float(a.mean()), 2)}
