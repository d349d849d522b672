"""The CI-sized soak: tools/soak.py runs the real daemon on replay for 100,000 frames.

Judged here: the daemon exits cleanly, open fds and threads are constant after warm-up, RSS
drifts by at most 1 MB, and no result is dropped by the publisher. Deadline misses are recorded
but not asserted in CI (they depend on how busy the shared machine is: a timing figure); the
release soak (``make soak``, 1 M frames) judges them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.reliability.kit import FULL, models, record_figures
from tools import soak

pytestmark = pytest.mark.integration


def test_soak_is_flat(tmp_path: Path) -> None:
    # CI: the small synthetic model (resource stability does not depend on the model, and the
    # shipped one makes the run inference-bound: ~2.5 min here). The full run uses the shipped one.
    model, golden, which = models(tmp_path, shipped_ok=FULL)
    frames = 1_000_000 if FULL else 100_000
    # Sized by time, not frames: 100,000 frames at 4 kHz is 25 s of replay, so the steady phase
    # (after 10 s of warm-up, sampled every 0.5 s) has ~30 samples even on a fast machine. (At
    # 8 kHz with 15 s of warm-up a fast CI machine ended the replay with only 3 steady samples.)
    soak.main(["--frames", str(frames), "--rate", "4000", "--interval", "0.5", "--model", str(model),
               "--golden", str(golden), "--out", str(tmp_path), "--name", "soak", "--warmup-s", "10"])
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert (tmp_path / "soak.png").stat().st_size > 0 and (tmp_path / "soak.csv").exists()
    record_figures("soak", {"model": which, **{k: doc.get(k) for k in (
        "frames", "health_frames", "wall_s", "inferences", "results_received", "deadline_misses", "rss_drift_mb",
        "rss_steady_range_mb", "fds", "threads", "steady_samples", "host_steal_s", "mqtt")}})
    assert doc["exit_code"] == 0, doc.get("log_tail")
    assert doc["health_frames"]["in"] == frames
    assert doc.get("steady_samples", 0) >= 10, doc.get("reason")
    # No leak: the same fds and threads at the end of the steady phase as at its start. (The tool's
    # own verdict is stricter and also flags a transient extra thread seen in one sample; that is
    # recorded in the figures and reported in docs/reliability.md rather than failing CI.)
    with (tmp_path / "soak.csv").open() as f:
        steady = [r for r in csv.DictReader(f)
                  if float(r["stopping"]) == 0 and float(r["t_s"]) >= doc["warmup_end_s"]]
    for key in ("fds", "threads"):
        assert steady[0][key] == steady[-1][key], f"{key}: {steady[0][key]} -> {steady[-1][key]}"
    assert len(doc["fds"]) == 1, f"open fds changed after warm-up: {doc['fds']}"
    assert doc["rss_drift_mb"] <= 1.0, f"RSS drift {doc['rss_drift_mb']} MB"
    assert doc["mqtt"]["dropped"] == 0
