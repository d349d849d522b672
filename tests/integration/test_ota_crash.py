"""kill -9 of the real daemon process (``python -m agent run``) in every OTA state: the next start
serves a valid model, the OTA state on disk and on the status topic is consistent, and the update
either completes (resumed where it was) or is rolled back for a stated reason."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import Broker
from tests.helpers.daemon import AgentProcess
from tests.helpers.ota import model_bytes
from tests.helpers.ota_device import Bench
from tools.ota.package import bundle

pytestmark = pytest.mark.integration

V2 = model_bytes("good", tag=2)
CHUNK = 1024
MULTI = [("int8", V2), ("fp32", model_bytes("good", tag=3))]  # a multi-variant job: one transfer, one manifest


def _job(multi: bool) -> tuple[bytes, dict[str, Any]]:
    """(bytes transferred, envelope spec) of version 2 as one file or as two variants."""
    return (bundle(MULTI), {"variants": MULTI}) if multi else (V2, {})


@pytest.fixture
def bench(tmp_path: Path, broker: Broker) -> Iterator[Bench]:
    b = Bench(tmp_path, broker, ota={"test_window_s": 2.0})
    yield b
    b.close()


def _start(bench: Bench, env: dict[str, str] | None = None) -> AgentProcess:
    agent = AgentProcess(bench.cfg_path, env=env)
    n0 = len(bench.results())
    assert bench.watch.wait_for(lambda c: len(bench.results()) > n0 + 5, 60), agent.tail()
    return agent


def _kill(agent: AgentProcess) -> None:
    agent.signal(signal.SIGKILL)
    agent.wait(10)


def _serving(bench: Bench, version: int) -> None:
    n0 = len(bench.results())
    assert bench.watch.wait_for(lambda c: len(bench.results()) > n0 + 10, 30), "not serving"
    assert bench.results()[-1]["model_version"] == version


def _disk(bench: Bench) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((bench.tmp / "state" / "state.json").read_text())
    return doc


@pytest.mark.parametrize("multi", [False, True], ids=["one-file", "multi-variant"])
@pytest.mark.parametrize("point", ["downloading", "verifying", "validating", "activating", "installed",
                                   "testing"])
def test_kill9_then_restart_completes_the_update(bench: Bench, point: str, multi: bool) -> None:
    hook = {} if point in ("downloading", "testing") else {"DIGIT_AGENT_TEST_OTA_PAUSE": f"{point}:60"}
    agent = _start(bench, hook)
    data, spec = _job(multi)
    pusher = bench.push(bench.envelope(data, 2, chunk_size=CHUNK, **spec), data, rate=40.0)
    try:
        shown = "downloading" if point == "installed" else point
        bench.wait_state("job-v2", (shown,), 30)
        if point == "downloading":
            bench.watch.wait_for(lambda c: any(s["state"] == "downloading" and s["progress"] >= 0.2
                                               for s in bench.statuses()), 20)
        if point == "installed":
            assert agent.wait_log("holding at installed", 30), agent.tail()
        _kill(agent)
        since = len(bench.statuses())
        agent = _start(bench)  # no hook: the same job goes on from where it was
        done = bench.wait_state("job-v2", timeout=40, since=since)
        assert done["state"] == "committed", (done, agent.tail())
        _serving(bench, 2)
        disk = _disk(bench)
        assert disk["committed"]["version"] == 2 and disk["pending"] is None
        after = [s for s in bench.statuses()[since:] if s.get("job") == "job-v2"]
        if point == "downloading":  # picked up from the persisted bitmap, not from zero
            assert after[0]["state"] == "downloading" and after[0]["progress"] > 0, after[:3]
        if point in ("installed", "testing"):  # the pending model served again, its window restarted
            assert any("resumed after a restart" in s["reason"] for s in after), after
        if multi:  # every variant installed and recorded; the one serving is one of them
            assert set(disk["committed"]["variants"]) == {"int8", "fp32"}
            for name, blob in MULTI:
                assert (bench.tmp / "state" / "slots" / f"{disk['committed']['slot']}.{name}.onnx").read_bytes() \
                    == blob
        count = -(-len(data) // CHUNK)
        assert pusher.sent < 2 * count, f"resumed, not restarted: {pusher.sent} chunks for {count}"
    finally:
        pusher.close()
        agent.stop()


@pytest.mark.parametrize("multi", [False, True], ids=["one-file", "multi-variant"])
def test_kill9_in_testing_with_one_attempt_rolls_back(tmp_path: Path, broker: Broker, multi: bool) -> None:
    bench = Bench(tmp_path, broker, ota={"test_window_s": 20.0, "max_attempts": 1})
    agent = _start(bench)
    data, spec = _job(multi)
    pusher = bench.push(bench.envelope(data, 2, **spec), data)
    try:
        bench.wait_state("job-v2", ("testing",), 30)
        _serving(bench, 2)
        _kill(agent)
        since = len(bench.statuses())
        agent = _start(bench)
        done = bench.wait_state("job-v2", timeout=30, since=since)
        assert done["state"] == "rolled_back" and "restarted 1 time(s)" in done["reason"], done
        _serving(bench, 1)
        disk = _disk(bench)
        assert disk["pending"] is None and disk["committed"] is None and "job-v2" in disk["seen_jobs"]
    finally:
        pusher.close()
        agent.stop()
        bench.close()
