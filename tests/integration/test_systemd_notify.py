"""The real daemon (`python -m agent run`) under a fake service manager: NOTIFY_SOCKET + WATCHDOG_USEC.

READY=1 comes only after the model self-test passed (a model failing it never sends READY=1),
WATCHDOG=1 flows while the loops move and stops when inference hangs (``DIGIT_AGENT_TEST_HANG_AFTER``
test hook in the inference loop), STOPPING=1 follows SIGTERM.

The model is a tiny generated ONNX classifier with a generated golden set and an accuracy floor of
0: this tests the service protocol, not accuracy (tests/integration/test_daemon.py serves the
shipped model).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.broker import Broker
from tests.helpers.daemon import AgentProcess, write_config
from tests.helpers.models import make_model
from tests.helpers.notify import NotifyListener

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 2_000_000  # pings every 1 s; the daemon calls loops stale after max(2 s, 2 s)


def _config(tmp_path: Path, broker: Broker, kind: str = "ok") -> Path:
    model = make_model(tmp_path / f"{kind}.onnx", kind)
    model.with_suffix(".card.json").write_text(
        json.dumps({"version": 1, "normalisation": {"mean": 0.1307, "std": 0.3081}}))
    golden = tmp_path / "golden.npz"
    rng = np.random.default_rng(7)
    np.savez(golden, images=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
             labels=np.zeros(64, dtype=np.uint8))
    return write_config(tmp_path / "c.toml", broker,
                        source={"path": str(golden), "rate_hz": 200.0},
                        inference={"model": str(model), "golden": str(golden), "selftest_min_accuracy": 0.0},
                        health={"interval_s": 0.5})


def _start(cfg: Path, listener: NotifyListener, **env: str) -> AgentProcess:
    return AgentProcess(cfg, env={"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": str(WATCHDOG_USEC), **env})


def _wait_for(listener: NotifyListener, agent: AgentProcess, field: str, timeout: float) -> list[str]:
    """Datagrams until one holding ``field``; fails early (with the daemon's log) if the daemon died."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = listener.recv(0.2)
        if msg is not None:
            seen.append(msg)
            if field in msg.split("\n"):
                return seen
        elif agent.proc.poll() is not None:
            seen += listener.drain()
            if any(field in m.split("\n") for m in seen):
                return seen
            break
    raise AssertionError(f"{field} not received (got {seen[-5:]}); daemon log:\n{agent.tail()}")


def _stop_and_expect_stopping(agent: AgentProcess, listener: NotifyListener) -> None:
    agent.signal(signal.SIGTERM)
    _wait_for(listener, agent, "STOPPING=1", 60)
    assert agent.wait(60) == 0, agent.tail()


def test_ready_after_selftest_then_pings_then_stopping(tmp_path: Path, broker: Broker,
                                                       listener: NotifyListener) -> None:
    agent = _start(_config(tmp_path, broker), listener)
    try:
        before_ready = _wait_for(listener, agent, "READY=1", 120)
        # The self-test result is logged before ready() is called, so it is in the log by now.
        assert agent.wait_log("ready:", 5), agent.tail()
        got = _wait_for(listener, agent, "WATCHDOG=1", 30)
        got += _wait_for(listener, agent, "WATCHDOG=1", 30)
        assert got.count("WATCHDOG=1") >= 2
        assert any(m.startswith("STATUS=") for m in before_ready + got)
        _stop_and_expect_stopping(agent, listener)
    finally:
        agent.stop()


def test_pings_stop_when_inference_hangs(tmp_path: Path, broker: Broker, listener: NotifyListener) -> None:
    agent = _start(_config(tmp_path, broker), listener, DIGIT_AGENT_TEST_HANG_AFTER="100")
    try:
        _wait_for(listener, agent, "READY=1", 120)
        assert agent.wait_log("TEST_HANG_AFTER reached", 60), agent.tail()
        assert agent.wait_log("watchdog pings withheld", 30), agent.tail()
        seen = listener.drain()
        assert any(m.startswith("STATUS=stalled: inference") for m in seen), seen
        # Several ping periods (1 s each) pass: nothing is sent while inference stays hung.
        after = [m for m in (listener.recv(1.0) for _ in range(4)) if m is not None]
        assert "WATCHDOG=1" not in after, after
        _stop_and_expect_stopping(agent, listener)  # the hang is stop-aware
    finally:
        agent.stop()


def test_failed_selftest_never_sends_ready(tmp_path: Path, broker: Broker, listener: NotifyListener) -> None:
    agent = _start(_config(tmp_path, broker, kind="nan"), listener)  # NaN outputs fail the self-test
    try:
        code = agent.wait(120)
    finally:
        agent.stop()
    assert code not in (0, None), agent.tail()
    assert "self-test failed" in agent.output()
    assert not any("READY=1" in m.split("\n") for m in listener.drain())
