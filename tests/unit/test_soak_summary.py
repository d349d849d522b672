"""tools/soak.py's miss attribution, recomputed from a recorded 1 M-frame soak's samples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tools import soak

RUN = Path(__file__).resolve().parents[2] / "bench" / "results" / "soak-20261202-054847"


def test_miss_intervals_and_steal_spread_match_the_recorded_run() -> None:
    with RUN.with_suffix(".csv").open() as f:
        samples = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    doc = json.loads(RUN.with_suffix(".json").read_text())
    intervals = soak.miss_intervals(samples)
    assert intervals == doc["miss_intervals"]
    assert sum(i["misses"] for i in intervals) == doc["deadline_misses"] == 29
    assert max(i["steal_ms"] for i in intervals) == 3420.0
    assert soak.summarise(samples, 0.2, 1.0, 20.0)["steal_ms_per_2_intervals"] == {"median": 10.0, "max": 3420.0}
