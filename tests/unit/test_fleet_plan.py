"""Pure parts of the fleet tools: rollout planning/bookkeeping and the fleet view."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest

from tools.fleet.plan import RolloutState, classify, make_stages
from tools.fleet.rollout import _Runner
from tools.fleet.view import FleetView, render_table

IDS = [f"d{i:02d}" for i in range(20)]


def test_stages_cover_every_device_once_with_canaries_first() -> None:
    stages = make_stages(IDS, "job1", 0.1, 3)
    assert len(stages[0]) == 2 and len(stages) == 4
    assert sorted(d for s in stages for d in s) == IDS
    assert make_stages(IDS, "job1", 0.1, 3) == stages  # deterministic: a resumed run plans the same
    assert make_stages(["a"], "j", 0.01, 1) == [["a"]]  # at least one canary


@pytest.mark.parametrize("bad", [[], ["a", "a"]])
def test_bad_target_lists_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        make_stages(bad, "j", 0.5, 1)


def test_classify_ignores_other_jobs_and_old_refusals() -> None:
    assert classify({"state": "committed", "job": "j"}, "j", 100.0) == "committed"
    assert classify({"state": "testing", "job": "j"}, "j", 100.0) is None
    assert classify({"state": "rolled_back", "job": "j"}, "j", 100.0) == "rolled_back"
    assert classify({"state": "committed", "job": "old"}, "j", 100.0) is None
    assert classify({"state": "rejected", "job": None, "ts": 50.0}, "j", 100.0) is None  # retained, older
    assert classify({"state": "rejected", "job": None, "ts": 101.0}, "j", 100.0) == "rejected"


def _state() -> RolloutState:
    return RolloutState(job="j", version=2, model_sha256="0" * 64, stages=[["a", "b"], ["c"]], max_failures=0)


def test_state_records_times_out_and_survives_a_round_trip() -> None:
    s = _state()
    s.sent = {"a": 10.0, "b": 10.0}
    s.stage_started["0"] = 10.0
    assert s.record("c", {"state": "committed", "job": "j"}) is None  # not sent yet
    assert s.record("a", {"state": "committed", "job": "j"}) == "committed"
    assert s.record("a", {"state": "rejected", "job": "j"}) is None  # settled outcomes stay
    assert s.time_out(20.0, 30.0) == [] and s.time_out(41.0, 30.0) == ["b"]
    assert s.over_threshold() and s.failures() == ["b"] and s.committed() == ["a"]
    again = RolloutState.from_json(s.to_json())
    assert again == s
    assert again.summary()["outcomes"] == {"committed": 1, "timeout": 1, "pending": 1}


def test_state_file_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="unexpected fields"):
        RolloutState.from_json(json.dumps({"job": "j", "bogus": 1}).encode())
    with pytest.raises(ValueError):
        RolloutState.from_json(b"[]")


def _health(version: int, p99: int) -> bytes:
    return json.dumps({"model": {"version": version}, "inference": {"p99_us": p99, "deadline_misses": 0},
                       "frames": {"dropped": 3}, "temperature_c": None, "rss_bytes": 1 << 26,
                       "ota": {"state": "idle"}}).encode()


def test_view_builds_rows_and_summary() -> None:
    v = FleetView("p")
    assert v.handle("p/a/status", b"online", 1.0) == "a"
    v.handle("p/a/health", _health(3, 1500), 1.0)
    v.handle("p/b/status", b"stopped", 1.0)
    v.handle("p/b/ota/status", json.dumps({"state": "rejected", "job": "j", "version": 4,
                                           "reason": "bad signature", "progress": 0}).encode(), 1.0)
    v.handle("p/c/status", b"offline", 1.0)
    v.handle("p/c/status", b"", 1.0)  # retained status cleared: decommissioned
    assert v.handle("p/group/g/ota/manifest", b"{}", 1.0) is None
    assert v.handle("other/a/status", b"online", 1.0) is None
    s = v.summary()
    assert s["devices"] == 2 and s["status"] == {"online": 1, "stopped": 1}
    assert s["model_versions"] == {"3": 1, "None": 1} and s["worst_p99_us"] == 1500
    table = render_table(v, 5.0)
    assert "bad signature" in table and "1.50" in table
    row = v.to_json(5.0)["devices"][0]
    assert row["id"] == "a" and row["health_age_s"] == 4.0


def test_view_counts_malformed_messages_and_keeps_going() -> None:
    v = FleetView("p")
    assert v.handle("p/a/health", b"{not json", 1.0) is None
    assert v.handle("p/a/status", b"sleeping", 1.0) is None
    assert v.handle("p/a/ota/status", b"[1]", 1.0) is None
    assert v.bad_messages == 3
    assert v.handle("p/a/status", b"online", 1.0) == "a"


def test_stage_timeout_fires_while_devices_keep_reporting_progress() -> None:
    # A device stuck downloading reports progress every 0.5 s: the stage must still time out.
    st = RolloutState(job="j", version=2, model_sha256="x", stages=[["a", "b"]], max_failures=0)
    st.sent = {"a": time.time(), "b": time.time()}
    st.stage_started = {"0": time.time()}
    runner = object.__new__(_Runner)  # no broker: feed its event queue directly
    runner.state, runner.events = st, queue.Queue()
    runner.save = lambda: None  # type: ignore[method-assign]
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            runner.events.put(("a", {"state": "downloading", "job": "j", "progress": 0.3}))
            time.sleep(0.1)

    feeder = threading.Thread(target=chatter, daemon=True)
    waiter = threading.Thread(target=runner.wait_stage, args=(1.0,), daemon=True)
    feeder.start()
    waiter.start()
    waiter.join(10)
    stop.set()
    feeder.join(2)
    assert not waiter.is_alive()
    assert st.outcome == {"a": "timeout", "b": "timeout"}
