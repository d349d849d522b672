"""Four real agents on one mosquitto: discovery, ``fleet status``, a staged rollout stopped by a failing
canary (with the good canary rolled back), then a clean rollout to the healthy devices."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.publish.discovery import discovery_messages
from tests.helpers.broker import Broker, Collector
from tests.helpers.ota import model_bytes, write_golden
from tools.fleet.plan import make_stages
from tools.fleet.simulate import REPO, Fleet, rollout_ns

pytestmark = pytest.mark.integration

_CARD = {"version": 1, "normalisation": {"mean": 0.1307, "std": 0.3081}}
JOB = "ci-rollout-1"


def _model(path: Path, tag: int) -> Path:
    path.write_bytes(model_bytes("good", tag=tag))
    path.with_suffix(".card.json").write_text(json.dumps(_CARD))
    return path


@pytest.fixture
def fleet(tmp_path: Path, broker: Broker) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "fleet", broker.host, broker.port, _model(tmp_path / "v1.onnx", 1),
              write_golden(tmp_path / "golden.npz"), n=4, rate_hz=5.0, test_window_s=1.5)
    f.bad = {make_stages(f.ids, JOB, 0.5, 1)[0][0]}  # one of the two canaries fails its gate
    f.write()
    f.start()
    try:
        yield f
    finally:
        codes = f.stop()
        assert all(c == 0 for c in codes.values()), {d: f.log(d)[-2000:] for d, c in codes.items() if c != 0}


def _status(broker: Broker, expect: int) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "tools.fleet", "status", "--host", broker.host, "--port",
                          str(broker.port), "--once", "--json", "--expect", str(expect), "--timeout", "30"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def _rollout(fleet: Fleet, broker: Broker, devices: list[str], model: Path, version: int, job: str,
             state: Path, rollback: Path) -> int:
    return rollout_ns_run([
        "--host", broker.host, "--port", str(broker.port), "--devices", ",".join(devices),
        "--model", str(model), "--key", str(fleet.key), "--version", str(version), "--job", job,
        "--canary-fraction", "0.5", "--max-failures", "0", "--timeout", "30", "--state", str(state),
        "--rollback-model", str(rollback), "--min-accuracy", "0.9", "--max-p99-ms", "200", "--json"])


def rollout_ns_run(argv: list[str]) -> int:
    from tools.fleet import rollout

    return rollout.run(rollout_ns(argv))


def test_fleet_discovery_status_and_staged_rollout(fleet: Fleet, broker: Broker, tmp_path: Path) -> None:
    ha = Collector(broker, "homeassistant/#")
    try:  # the daemon announces its Home Assistant entities (agent.publish.discovery.Discovery)
        want = {m.topic for d in fleet.ids for m in discovery_messages(_cfg_for(d))}
        announced = ha.wait_for(lambda c: want <= {m.topic for m in c.on("/config") if m.payload}, 20)
    finally:
        ha.close()

    before = _status(broker, expect=4)
    rows = {r["id"]: r for r in before["devices"]}  # type: ignore[attr-defined]
    assert set(rows) == set(fleet.ids)
    assert all(r["status"] == "online" and r["model_version"] == 1 for r in rows.values())

    v1, v2 = fleet.model, _model(tmp_path / "v2.onnx", 2)
    state = tmp_path / "rollout.json"
    assert _rollout(fleet, broker, fleet.ids, v2, 2, JOB, state, v1) == 1
    s = json.loads(state.read_text())
    canaries, rest = s["stages"]
    (bad,) = fleet.bad
    good_canary = next(d for d in canaries if d != bad)
    assert s["result"] == "aborted" and s["stage"] == 0
    assert s["outcome"][bad] == "rejected" and "accuracy" in s["reason"][bad]
    assert s["outcome"][good_canary] == "committed"
    assert not set(rest) & set(s["sent"])  # the rest never saw the manifest
    assert s["rollback"]["outcome"] == {good_canary: "committed"} and s["rollback"]["version"] == 3

    after = {r["id"]: r for r in _status(broker, expect=4)["devices"]}  # type: ignore[attr-defined]
    assert after[good_canary]["model_version"] == 3  # v1's weights, served under version 3
    assert after[good_canary]["ota_job"] == f"{JOB}-rb"
    assert all(after[d]["model_version"] == 1 for d in rest)

    healthy = [d for d in fleet.ids if d != bad]
    state2 = tmp_path / "rollout2.json"
    assert _rollout(fleet, broker, healthy, _model(tmp_path / "v4.onnx", 4), 4, "ci-rollout-2", state2, v1) == 0
    s2 = json.loads(state2.read_text())
    assert s2["result"] == "done" and set(s2["outcome"].values()) == {"committed"}
    assert _rollout(fleet, broker, healthy, tmp_path / "v4.onnx", 4, "ci-rollout-2", state2, v1) == 0  # resumed: done
    assert announced, "the daemon did not publish Home Assistant discovery configs"


def _cfg_for(dev: str):  # type: ignore[no-untyped-def]
    from agent.config.schema import Config, DeviceConfig

    return Config(device=DeviceConfig(id=dev))
