"""The device knows several brokers (``mqtt.hosts``): kill -9 the node it is connected to while it
streams QoS 1 results at 200 fps; it moves to another node, no result is lost (dedup by
``boot_id`` + ``seq``), and its retained ``status`` is ``online`` there.

Parametrised over independent mosquittos (nothing shared: the device simply moves) and, where
it is installed, a three-node NATS cluster (:mod:`tests.helpers.nats`). Figures (reconnect time,
duplicates) are printed, never asserted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import AgentProcess, write_config
from tests.helpers.nodes import MosquittoNodes, NodeCollector, Nodes
from tests.reliability.kit import models, record_figures

pytestmark = pytest.mark.integration

_STOPPED = re.compile(r"stopped after (\d+) results")
_TOPICS = ("digit-agent/dev1/#",)


def _start_nodes(kind: str, workdir: Path) -> Nodes:
    if kind == "mosquitto":
        return MosquittoNodes(workdir)
    raise AssertionError(kind)


@pytest.fixture(params=["mosquitto"])
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
                              "session_expiry_s": 300, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
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
        before = max(r["seq"] for c in cols for r in c.results())
        t_kill = time.monotonic()
        victim.kill()
        alive = [c for c in cols if c.node is not victim]
        # Moved: a health sample published after the kill names another node.
        assert _wait(lambda: _in_use(alive) not in ("", first), 120), agent.tail()
        second = _in_use(alive)
        new_node = next(n for n in nodes.nodes if n.address == second)
        reconnect_s = _first_new_result(alive, before, t_kill) - t_kill
        # The retained status, read by a fresh subscriber on the node now in use (on a cluster:
        # on every surviving node).
        readers = [n for n in nodes.nodes if n is not victim] if nodes.replicated else [new_node]
        for i, n in enumerate(readers):
            fresh = NodeCollector(n, "digit-agent/dev1/status", client_id=f"fresh{i}")
            try:
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
        assert _wait(lambda: {r["seq"] for c in keep for r in c.results()} >= set(range(1, produced + 1)), 60)
    finally:
        agent.stop()
        for c in cols:
            c.close()
    results = [r for c in (alive if nodes.replicated else cols) for r in c.results()]
    if nodes.replicated:  # every surviving node delivers everything: count one node's copies
        results = alive[0].results()
    seqs = [r["seq"] for r in results]
    lost = set(range(1, produced + 1)) - set(seqs)
    boots = {r["boot_id"] for r in results}
    record_figures(f"failover_{type(nodes).__name__}", {
        "frames": frames, "results_produced": produced, "results_received": len(seqs),
        "duplicates": len(seqs) - len(set(seqs)), "lost": len(lost), "reconnect_s": round(reconnect_s, 3),
        "from": first, "to": second, "session_resumed": "session resumed" in out})
    assert len(boots) == 1, boots
    assert not lost, f"{len(lost)} results lost, e.g. {sorted(lost)[:10]}"
    assert second != first


def _first_new_result(cols: list[NodeCollector], before: int, since: float) -> float:
    """When the first result newer than ``before`` arrived on a surviving node after ``since``."""
    assert _wait(lambda: bool([g for c in cols for g in c.on("/result", since) if _seq(g.payload) > before]), 60)
    ts = [g.t for c in cols for g in c.on("/result", since) if _seq(g.payload) > before]
    return min(ts)


def _seq(payload: bytes) -> int:
    m = re.search(rb'"seq":(\d+)', payload)
    return int(m.group(1)) if m else -1


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())
