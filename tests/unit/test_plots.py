"""tools.bench.plots: which latency data a result file offers is what is drawn (samples, then recorded
quantiles, then the p50/p99 summary); every figure renders; a soak figure is redrawn from its CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from tools.bench.plots import (
    QUANTILE_PROBS,
    latency_series,
    plot_frontier,
    plot_histogram,
    quantiles,
)

_PNG = b"\x89PNG\r\n\x1a\n"
_SUMMARY = {"n": 3000, "p50_us": 500.0, "p99_us": 800.0, "p999_us": 1700.0, "max_us": 2200.0, "mean_us": 520.0}


def _e2e() -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(3)
    samples = list(rng.lognormal(6.5, 0.5, 2000))
    return {"deadline_ms": 5.0,
            "replay_100fps": {"frame_age_us_samples": samples, "frame_age": _SUMMARY},
            "replay_500fps": {"frame_age_us_quantiles": quantiles(samples), "frame_age": _SUMMARY},
            "serial_100fps": {"frame_to_subscriber": _SUMMARY}}


def test_latency_series_takes_the_richest_data_each_run_has() -> None:
    kinds = [next(k for k in ("samples", "quantiles", "summary") if k in s) for s in latency_series(_e2e())]
    assert kinds == ["samples", "quantiles", "summary"]


def test_recorded_quantiles_match_the_samples() -> None:
    samples = np.arange(1, 10001, dtype=np.float64)
    q = quantiles(samples)
    assert len(q) == len(QUANTILE_PROBS)
    assert q[QUANTILE_PROBS.index(0.5)] == pytest.approx(np.median(samples), abs=0.1)
    assert q[QUANTILE_PROBS.index(0.99)] == pytest.approx(np.quantile(samples, 0.99), abs=0.1)
    assert q[0] == 1.0 and q[-1] == 10000.0 and q == sorted(q)


def test_figures_render(tmp_path: Path) -> None:
    plot_histogram(_e2e(), tmp_path / "latency.png")
    rows = [{"name": f"m{i}", "mode": "engine" if i else "naive", "accuracy": 0.99 + i / 1000, "b1_p50_us": 20.0 + i,
             "file_bytes": 1000 * (i + 1)} for i in range(5)]
    rows.append({"name": "tiny", "mode": "engine", "accuracy": 0.92, "b1_p50_us": 15.0, "file_bytes": 3000})
    seeds = [{"name": "seed: INT8", "accuracy": 0.973, "p50_us": 12000.0, "file_kb": 800}]
    plot_frontier({"rows": rows, "seed_published": seeds}, tmp_path / "frontier.png")
    for name in ("latency.png", "frontier.png"):
        assert (tmp_path / name).read_bytes().startswith(_PNG)


def test_soak_figure_is_redrawn_from_its_files(tmp_path: Path) -> None:
    from tools import soak

    stem = tmp_path / "soak-x"
    fields = ["t_s", "rss_mb", "fds", "threads", "cpu_s", "results", "misses", "p99_us", "steal_s", "stopping"]
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for i in range(40):
            w.writerow({"t_s": i * 5.0, "rss_mb": 80 + i * 0.001, "fds": 9, "threads": 8, "cpu_s": i,
                        "results": i * 100, "misses": i // 10, "p99_us": "nan" if i == 0 else 900 + i,
                        "steal_s": 0, "stopping": 0})
    stem.with_suffix(".json").write_text(json.dumps({"frames": 4000, "model": "/m/digit_int8.onnx",
                                                     "warmup_end_s": 20.0, "deadline_ms": 5.0}))
    assert soak.main(["--replot", str(stem)]) == 0
    assert stem.with_suffix(".png").read_bytes().startswith(_PNG)
