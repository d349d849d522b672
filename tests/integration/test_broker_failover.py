"""The device knows several brokers (``mqtt.hosts``): kill -9 the node it is connected to while it
streams QoS 1 results at 200 fps; it moves to another node, no result is lost (dedup by
``boot_id`` + ``seq``), and its retained ``status`` is ``online`` there.

Parametrised over independent mosquittos (nothing shared: the device simply moves) and a
three-node NATS cluster (:mod:`tests.helpers.nats`). Figures (reconnect time, the longest pause in
the result stream, duplicates) are printed, never asserted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import AgentProcess, write_config
from tests.helpers.nats import NatsCluster
from tests.helpers.nodes import MosquittoNodes, NodeCollector, Nodes
from tests.reliability.kit import models, record_figures

pytestmark = pytest.mark.integration

_STOPPED = re.compile(r"stopped after (\d+) results")
_CONNECTED = re.compile(r"^(\S+ \S+) INFO +agent\.publish\.session: MQTT connected to", re.M)
_TOPICS = ("digit-agent/dev1/#",)


def _start_nodes(kind: str, workdir: Path) -> Nodes:
    if kind == "mosquitto":
        return MosquittoNodes(workdir)
    cluster = NatsCluster(workdir)
    print(f"{cluster.version}: three nodes accept MQTT {cluster.ready_s:.1f} s after start")
    return cluster


@pytest.fixture(params=["mosquitto", "nats"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Nodes]:
    ns = _start_nodes(request.param, tmp_path)
    try:
        yield ns
    finally:
        ns.stop()


def _config(tmp_path: Path, ns: Nodes, frames: int) -> Path:
    model, golden, _ = models(tmp_path)
    return write_config(tmp_path / "agent.toml", ns.nodes[0],
                        source={"path": str(golden), "rate_hz": 200.0, "limit": frames, "ring_slots": 256},
                        inference={"model": str(model), "golden": str(golden), "deadline_ms": 200.0},
                        mqtt={"hosts": [n.address for n in ns.nodes], "qos": 1, "protocol": ns.protocol,
                              "session_expiry_s": 300, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0,
                              "connect_timeout_s": 10.0},  # a cluster may take seconds to CONNACK
                        health={"interval_s": 0.25},
                        ota={"enabled": False, "state_dir": str(tmp_path / "state"),
                             "trusted_keys": str(tmp_path / "keys")},
                        homeassistant={"discovery": False})


def _in_use(cols: list[NodeCollector]) -> str:
    """The node the device reports in its health (``mqtt.broker``), from the newest sample seen."""
    docs = [h for c in cols for h in [c.last_health()] if h and h["mqtt"]["connected"]]
    return str(max(docs, key=lambda d: d["uptime_s"])["mqtt"]["broker"]) if docs else ""


def test_device_moves_to_another_node_when_its_node_is_killed(tmp_path: Path, nodes: Nodes) -> None:
    frames = 3000  # 15 s at 200 fps
    cols = [NodeCollector(n, *_TOPICS, client_id=f"col{i}") for i, n in enumerate(nodes.nodes)]
    agent = AgentProcess(_config(tmp_path, nodes, frames))
    try:
        assert _wait(lambda: sum(len(c.on("/result")) for c in cols) >= 400, 300), agent.tail()
        first = _in_use(cols)
        victim = next(n for n in nodes.nodes if n.address == first)
        t_kill, wall_kill = time.monotonic(), time.time()
        victim.kill()
        alive = [c for c in cols if c.node is not victim]
        # Moved: a health sample published after the kill names another node.
        assert _wait(lambda: _in_use(alive) not in ("", first), 120), agent.tail()
        second = _in_use(alive)
        new_node = next(n for n in nodes.nodes if n.address == second)
        # The retained status, read by a fresh subscriber on the node now in use (on a cluster:
        # on every surviving node). At QoS 0: NATS backs a QoS 1 subscription with a JetStream
        # consumer, which it cannot create for seconds after a node loss (the SUBACK says so).
        readers = [n for n in nodes.nodes if n is not victim] if nodes.replicated else [new_node]
        for i, n in enumerate(readers):
            fresh = NodeCollector(n, "digit-agent/dev1/status", client_id=f"fresh{i}", qos=0)
            try:
                assert not fresh.refused, (n.address, fresh.refused)
                assert fresh.wait(lambda f: bool(f.on("/status")), 30), f"no retained status on {n.address}"
                st = fresh.on("/status")[0]
                assert (st.payload, st.retain) == (b"online", True), (n.address, st)
            finally:
                fresh.close()
        rc = agent.wait(300)
        out = agent.output()
        assert rc == 0, agent.tail()
        m = _STOPPED.search(out)
        assert m, agent.tail()
        produced = int(m.group(1))
        # Everything acknowledged has reached the surviving subscribers once the daemon has exited.
        keep = alive if nodes.replicated else cols
        _wait(lambda: all({r["seq"] for r in c.results()} >= set(range(1, produced + 1)) for c in keep)
              if nodes.replicated else {r["seq"] for c in keep for r in c.results()} >= set(range(1, produced + 1)), 60)
    finally:
        agent.stop()
        for c in cols:
            c.close()
    everything = set(range(1, produced + 1))
    # The device's promise: every result reached the broker (the union of what the surviving
    # subscribers got). Whether each subscriber got each one is the broker's, reported per subscriber.
    union = {r["seq"] for c in (alive if nodes.replicated else cols) for r in c.results()}
    missing_per_subscriber = [len(everything - {r["seq"] for r in c.results()}) for c in alive]
    results = alive[0].results() if nodes.replicated else [r for c in cols for r in c.results()]
    seqs = [r["seq"] for r in results]
    # What a consumer sees: the longest pause in the result stream from the kill on.
    arrivals = sorted(g.t for c in (alive[:1] if nodes.replicated else cols) for g in c.on("/result"))
    gap_s = max((b - a for a, b in zip(arrivals, arrivals[1:]) if b >= t_kill), default=float("nan"))
    lost = everything - union
    boots = {r["boot_id"] for r in results}
    # The device's side: from the kill to its next CONNACK (its log's wall-clock time).
    later = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t in _CONNECTED.findall(out)]
    reconnect_s = min((t - wall_kill for t in later if t > wall_kill), default=float("nan"))
    record_figures(f"failover_{type(nodes).__name__}", {"broker": getattr(nodes, "version", "mosquitto"),
        "frames": frames, "results_produced": produced, "results_received": len(seqs),
        "duplicates": len(seqs) - len(set(seqs)), "lost": len(lost),
        "reconnect_s": round(reconnect_s, 3), "stream_gap_s": round(gap_s, 3),
        "missing_per_surviving_subscriber": missing_per_subscriber if nodes.replicated else None,
        "from": first, "to": second, "session_resumed": "session resumed" in out})
    assert len(boots) == 1, boots
    assert not lost, f"{len(lost)} results lost, e.g. {sorted(lost)[:10]}"
    assert second != first


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())
