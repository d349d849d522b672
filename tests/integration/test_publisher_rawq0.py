"""QoS 0 messages written as raw PUBLISH packets (agent.publish.rawq0) reach a real mosquitto intact:
both protocol versions, every remaining-length size, the retain flag, order among QoS 1 messages,
and batches queued with ``enqueue`` then sent with one ``kick``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.publish import Publisher
from tests.helpers.broker import Broker, Collector
from tests.integration.test_publisher import make_cfg

pytestmark = pytest.mark.integration


def _payload(k: int) -> bytes:
    size = (5, 126, 127, 128, 300, 16383, 16384, 70000)[k % 8]  # 1-, 2- and 3-byte remaining lengths
    return (f"{k:06d}".encode() * (size // 6 + 1))[:size]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_qos0_raw_packets_arrive_intact_and_in_order(tmp_path: Path, protocol: str) -> None:
    broker = Broker(tmp_path).start()
    stop = threading.Event()
    col = Collector(broker, "digit-agent/dev1/#", qos=0)  # all delivered as they arrive (no QoS 1 queue)
    pub = Publisher(make_cfg(broker.host, broker.port, protocol=protocol), stop)
    try:
        pub.start()
        assert pub.wait_connected(10)
        sent: list[tuple[str, bytes]] = []
        for k in range(240):
            qos = 1 if k % 5 == 4 else 0  # QoS 1 among them: one stream, the outbox's order
            if k % 3:
                pub.enqueue("result", _payload(k), qos)
                if k % 3 == 2:
                    pub.kick()
            else:
                pub.publish("result", _payload(k), qos)
            sent.append(("digit-agent/dev1/result", _payload(k)))
        pub.kick()
        assert pub.flush(20)
        assert col.wait_for(lambda c: len(c.on("/result")) >= len(sent), 20)
        got = [(m.topic, m.payload) for m in col.on("/result")]
        assert got == sent
        stats = pub.stats()
        assert stats["sent"] == stats["produced"] == len(sent) and stats["dropped"] == 0
    finally:
        pub.stop(5)
        col.close()
        broker.stop()


def test_qos0_raw_retain_flag_reaches_a_late_subscriber(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    stop = threading.Event()
    pub = Publisher(make_cfg(broker.host, broker.port), stop)
    try:
        pub.start()
        assert pub.wait_connected(10)
        pub.publish("kept", b"retained-raw", 0, retain=True)
        pub.publish("not-kept", b"plain-raw", 0)
        assert pub.flush(10)
        time.sleep(0.2)
        late = Collector(broker, "digit-agent/dev1/kept", "digit-agent/dev1/not-kept", qos=0)
        try:
            assert late.wait_for(lambda c: bool(c.on("/kept")), 10)
            (m,) = late.on("/kept")
            assert m.payload == b"retained-raw" and m.retain
            assert not late.on("/not-kept")
        finally:
            late.close()
    finally:
        pub.stop(5)
        broker.stop()
