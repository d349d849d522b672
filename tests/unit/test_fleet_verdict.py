"""`tools.fleet simulate` exits 0 only when the rollout did what the fleet calls for; judged here on
the two 100-agent reports recorded in bench/results and on altered copies of them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tools.fleet.simulate import verdict

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _report(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((RESULTS / f"fleet-sim-20261202-100-{name}.json").read_text())
    return doc


def test_recorded_runs_pass() -> None:
    assert verdict(_report("good"))[0]
    ok, why = verdict(_report("bad5"))
    assert ok, why
    assert "stage 0" in why and "none" in why


@pytest.mark.parametrize("change", ["one_rejected", "not_done"])
def test_all_good_fleet_fails_unless_every_agent_committed(change: str) -> None:
    r = copy.deepcopy(_report("good"))
    if change == "one_rejected":
        r["rollout"]["outcome"]["sim-000"] = "rejected"
    else:
        r["rollout"]["result"] = "aborted"
    assert not verdict(r)[0]


@pytest.mark.parametrize("change", ["completed", "later_stage", "sent_beyond"])
def test_bad_fleet_fails_unless_stopped_at_the_canaries(change: str) -> None:
    r = copy.deepcopy(_report("bad5"))
    if change == "completed":
        r["rollout"]["result"] = "done"
    elif change == "later_stage":
        r["rollout"]["stage"] = 1
    else:
        r["rollout"]["sent"]["sim-099"] = 0.0
    ok, why = verdict(r)
    assert not ok, why
