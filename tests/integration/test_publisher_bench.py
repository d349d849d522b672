"""Measurements (printed, not asserted): publish() cost on the caller's thread, result encoding,
and end-to-end throughput to a local mosquitto at QoS 0 and 1.

Run: ``.venv/bin/python -m pytest tests/integration/test_publisher_bench.py -q -s``
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.publish import Publisher, ResultEncoder
from tests.helpers.broker import Broker, free_port
from tests.integration.test_publisher import make_cfg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_PROBS = np.array([0.001, 0.002, 0.9, 0.01, 0.02, 0.03, 0.004, 0.005, 0.006, 0.022], dtype=np.float32)


def _payloads(n: int) -> list[bytes]:
    enc = ResultEncoder("0123456789abcdef")
    return [enc.encode(i, i, 2, 0.9, _PROBS, 800, 1500, False, 1, time.time()) for i in range(n)]


def test_encode_cost() -> None:
    enc = ResultEncoder("0123456789abcdef")
    n = 20000
    t0 = time.perf_counter()
    for i in range(n):
        enc.encode(i, i, 2, 0.9, _PROBS, 800, 1500, False, 1, 1.7e9)
    fmt_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for i in range(n):
        json.dumps({"seq": i, "boot_id": "0123456789abcdef", "frame_seq": i, "digit": 2,
                    "confidence": round(0.9, 4), "probs": [round(p, 4) for p in _PROBS.tolist()],
                    "latency_us": 800, "frame_age_us": 1500, "deadline_missed": False,
                    "model_version": 1, "ts": round(1.7e9, 3)}, separators=(",", ":")).encode()
    dumps_us = (time.perf_counter() - t0) / n * 1e6
    size = len(enc.encode(1, 1, 2, 0.9, _PROBS, 800, 1500, False, 1, 1.7e9))
    print(f"\nResultEncoder.encode: {fmt_us:.2f} us/result ({size} bytes); dict+json.dumps: {dumps_us:.2f} us")
    assert json.loads(enc.encode(1, 1, 2, 0.9, _PROBS, 800, 1500, False, 1, 1.7e9))["digit"] == 2


def test_publish_call_cost() -> None:
    payload = _payloads(1)[0]
    n = 100_000
    pub = Publisher(make_cfg("127.0.0.1", free_port(), outbox_max=n), threading.Event())
    pub.start()  # nothing listens: measures the enqueue alone
    t0 = time.perf_counter()
    for _ in range(n):
        pub.publish("result", payload, 1)
    per = (time.perf_counter() - t0) / n * 1e6
    pub.stop(0.2)
    print(f"\npublish() with the broker down: {per:.2f} us/call over {n} calls")
    assert pub.stats()["produced"] == n


@pytest.fixture
def roomy_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto that queues without limit for a slow subscriber (default: drops beyond 1000)."""
    b = Broker(tmp_path, extra="max_queued_messages 0\nuser root\n").start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("qos", [0, 1])
def test_end_to_end_throughput(roomy_broker: Broker, qos: int) -> None:
    """The subscriber is mosquitto_sub (C, another process) so it does not compete for our GIL."""
    broker = roomy_broker
    n = 20_000
    payloads = _payloads(n)
    sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
                            "-t", "digit-agent/dev1/result", "-C", str(n)], stdout=subprocess.PIPE)
    pub = Publisher(make_cfg(broker.host, broker.port, outbox_max=n), threading.Event())
    pub.start()
    try:
        assert pub.wait_connected(10)
        assert _wait_subscribed(broker)
        t0 = time.monotonic()
        for p in payloads:
            pub.publish("result", p, qos)
        t_pub = time.monotonic() - t0
        assert pub.flush(120), pub.stats()
        t_sent = time.monotonic() - t0
        try:
            out, _ = sub.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # QoS 0 may lose some: count what came
            sub.kill()
            out, _ = sub.communicate(timeout=10)
        t_recv = time.monotonic() - t0
    finally:
        pub.stop(3)
        if sub.poll() is None:
            sub.kill()
            sub.wait(5)
    got = out.count(b"\n")
    print(f"\nQoS {qos}: {n} msgs; publish() {t_pub / n * 1e6:.2f} us/call while connected; "
          f"publisher done {n / t_sent:.0f} msg/s; mosquitto_sub got {got} at {got / t_recv:.0f} msg/s")
    s = pub.stats()
    assert s["sent"] == s["produced"] and s["dropped"] == 0
    if qos:
        assert got == n


def _wait_subscribed(broker: Broker, timeout: float = 10) -> bool:
    """mosquitto logs every SUBSCRIBE (log_type all): wait for mosquitto_sub's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "digit-agent/dev1/result (QoS" in broker.log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False
