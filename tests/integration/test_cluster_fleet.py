"""Three agents on a three-node NATS cluster: ``tools.fleet status`` (wildcard subscriptions,
retained ``status``) read through every node shows the whole fleet, before and after the node
one agent uses is killed. The operator tools speak MQTT 3.1.1 there (``--protocol 3.1.1``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.daemon import REPO, AgentProcess, write_config
from tests.helpers.nats import NatsCluster, NatsNode
from tests.reliability.kit import models

pytestmark = pytest.mark.integration

DEVICES = ("dev1", "dev2", "dev3")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats")
    try:
        yield c
    finally:
        c.stop()


def _online(node: NatsNode) -> dict[str, str]:
    """``tools.fleet status`` through ``node``: device id -> status ({"error": ...} when it failed)."""
    out = subprocess.run([sys.executable, "-m", "tools.fleet", "status", "--host", node.host, "--port",
                          str(node.port), "--protocol", "3.1.1", "--once", "--json", "--expect", str(len(DEVICES)),
                          "--timeout", "30"], cwd=REPO, capture_output=True, text=True, timeout=90)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:]}
    return {r["id"]: r["status"] for r in json.loads(out.stdout)["devices"]}


def test_fleet_status_through_every_node_before_and_after_a_node_loss(tmp_path: Path,
                                                                     cluster: NatsCluster) -> None:
    model, golden, _ = models(tmp_path)
    agents: dict[str, AgentProcess] = {}
    try:
        for d in DEVICES:
            (tmp_path / d).mkdir()
            cfg = write_config(tmp_path / d / "agent.toml", cluster.nodes[0], device={"id": d},
                               source={"path": str(golden), "rate_hz": 10.0},
                               inference={"model": str(model), "golden": str(golden), "deadline_ms": 200.0},
                               mqtt={"hosts": [n.address for n in cluster.nodes], "protocol": "3.1.1",
                                     "session_expiry_s": 300, "connect_timeout_s": 10.0},
                               health={"interval_s": 1.0},
                               ota={"enabled": False, "state_dir": str(tmp_path / d / "state"),
                                    "trusted_keys": str(tmp_path / d / "keys")},
                               homeassistant={"discovery": False})
            agents[d] = AgentProcess(cfg)
        for a in agents.values():
            assert a.wait_log("MQTT connected", timeout=120), a.tail()
        for node in cluster.nodes:
            assert _online(node) == dict.fromkeys(DEVICES, "online"), node.address
        # Kill the node dev1 is on; every device ends up online on the survivors, seen from each.
        victim = next(n for n in cluster.nodes if f"MQTT connected to {n.address}" in agents["dev1"].output())
        victim.kill()
        t0 = time.monotonic()
        survivors = [n for n in cluster.nodes if n is not victim]
        for node in survivors:
            deadline = time.monotonic() + 120
            seen: dict[str, str] = {}
            while time.monotonic() < deadline:
                seen = _online(node)
                if seen == dict.fromkeys(DEVICES, "online"):
                    break
                time.sleep(1)
            assert seen == dict.fromkeys(DEVICES, "online"), (node.address, seen)
        print(f"fleet status complete through both surviving nodes {time.monotonic() - t0:.1f} s after the kill")
    finally:
        for a in agents.values():
            a.stop()
