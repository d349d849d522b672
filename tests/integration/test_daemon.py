"""The whole daemon against a real mosquitto: results, health, status, signals, dead brokers."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers.broker import Broker, Collector
from tests.helpers.daemon import REPO, AgentProcess, write_config

pytestmark = pytest.mark.integration

HEALTH_KEYS = {"ts", "uptime_s", "cpu_percent", "rss_bytes", "temperature_c", "throttled", "frames",
               "inference", "source", "mqtt", "model", "ota"}


def _labels() -> np.ndarray:
    with np.load(REPO / "models" / "golden.npz") as data:
        return np.asarray(data["labels"])


def test_replay_2000_frames_to_2000_results(tmp_path: Path, broker: Broker) -> None:
    sub = Collector(broker, "digit-agent/dev1/#")
    cfg = write_config(tmp_path / "c.toml", broker, source={"limit": 2000})
    agent = AgentProcess(cfg)
    assert agent.wait(120) == 0, agent.tail()
    assert sub.wait_for(lambda c: len(c.on("/result")) >= 2000, 20)
    results = [m.json() for m in sub.on("/result")]
    assert [r["seq"] for r in results] == list(range(1, 2001))
    assert len({r["boot_id"] for r in results}) == 1
    labels = _labels()
    acc = np.mean([r["digit"] == labels[r["frame_seq"] % len(labels)] for r in results])
    first = results[0]
    assert set(first) == {"seq", "boot_id", "frame_seq", "digit", "confidence", "probs", "latency_us",
                          "frame_age_us", "deadline_missed", "model_version", "ts"}
    assert len(first["probs"]) == 10 and abs(sum(first["probs"]) - 1) < 0.01
    health = [m.json() for m in sub.on("/health")]
    assert health and set(health[-1]) >= HEALTH_KEYS
    last = health[-1]
    # the same digits through the selftest path: the daemon must agree with the golden accuracy
    # of the variant it served
    from agent.inference import LoadedModel, evaluate_golden, load_golden
    from agent.inference.variants import find, read_model_set
    from agent.preprocess import Preprocessor
    served = find(read_model_set(REPO / "models" / "digit.card.json"), last["model"]["variant"])
    assert served is not None and str(served.path) == last["model"]["path"]
    model = LoadedModel.load(served.path, card=served.card)
    golden = evaluate_golden(model, load_golden(REPO / "models" / "golden.npz"),
                             Preprocessor.from_card(model.card))
    assert acc == pytest.approx(golden.accuracy, abs=0.01)
    assert last["frames"]["in"] == 2000 and last["frames"]["ok"] == 2000
    assert {"p50_us", "p99_us", "max_us", "inferences", "deadline_misses"} <= set(last["inference"])
    assert {"connected", "reconnects", "queued", "dropped"} <= set(last["mqtt"])
    assert last["model"]["version"] == model.version and len(last["model"]["sha256"]) == 64
    statuses = [m.payload for m in sub.on("/status")]
    assert statuses[0] == b"online" and statuses[-1] == b"stopped"
    sub.close()


def test_sigterm_publishes_stopped_and_kill9_leaves_offline(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path / "c.toml", broker, source={"rate_hz": 50.0},
                       mqtt={"keepalive_s": 5})
    agent = AgentProcess(cfg)
    sub = Collector(broker, "digit-agent/dev1/status", "digit-agent/dev1/result")
    assert sub.wait_for(lambda c: len(c.on("/result")) >= 10, 60), agent.tail()
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert sub.wait_for(lambda c: c.on("/status")[-1].payload == b"stopped", 10)
    sub.close()

    agent = AgentProcess(cfg)
    late = Collector(broker, "digit-agent/dev1/status", "digit-agent/dev1/result")
    assert late.wait_for(lambda c: len(c.on("/result")) >= 5, 60), agent.tail()
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    # the broker publishes the will once it notices the dead socket (immediately on RST)
    assert late.wait_for(lambda c: c.on("/status")[-1].payload == b"offline", 20)
    late.close()
    fresh = Collector(broker, "digit-agent/dev1/status")  # a late subscriber sees it retained
    assert fresh.wait_for(lambda c: bool(c.on("/status")) and c.on("/status")[-1].payload == b"offline", 10)
    fresh.close()


def test_unreachable_broker_keeps_inferring_without_spinning(tmp_path: Path, broker: Broker) -> None:
    broker.stop()  # nothing listens on this port now
    cfg = write_config(tmp_path / "c.toml", broker, source={"rate_hz": 20.0})
    agent = AgentProcess(cfg)
    try:
        agent.wait_started()
        proc = psutil.Process(agent.proc.pid)
        proc.cpu_percent(None)
        time.sleep(3.0)
        cpu = proc.cpu_percent(None)
        assert agent.proc.poll() is None
        assert cpu < 50.0, cpu  # a reconnect loop without backoff would hold a whole core
        out = agent.output().lower()
        assert "connect" in out and ("refused" in out or "unreachable" in out or "error" in out)
    finally:
        assert agent.stop() == 0
