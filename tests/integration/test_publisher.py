"""Publisher against a real mosquitto: order, status/LWT, reconnect without loss, bounded outbox,
dead broker, subscriptions and a dead network thread."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import Config, DeviceConfig, MqttConfig
from agent.publish import Publisher
from tests.helpers.broker import Broker, Collector, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def make_cfg(host: str, port: int, dev: str = "dev1", **mqtt_kw: Any) -> Config:
    m = dataclasses.replace(MqttConfig(), host=host, port=port, reconnect_min_s=0.05, reconnect_max_s=0.5,
                            **mqtt_kw)
    return Config(device=DeviceConfig(id=dev), mqtt=m)


@pytest.fixture
def stop_event() -> threading.Event:
    return threading.Event()


def _seqs(col: Collector, suffix: str = "/result") -> list[int]:
    return [int(json.loads(m.payload)["seq"]) for m in col.on(suffix)]


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto that saves sessions and queued messages across restart (restart keeps the port)."""
    db = tmp_path / "db"
    db.mkdir()
    port = free_port()
    extra = (f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n"
             f"persistence_location {db}/\nmax_queued_messages 0\n")
    b = Broker(tmp_path, port=port, extra=extra).start()
    try:
        yield b
    finally:
        b.stop()


def test_messages_arrive_in_order_and_status_goes_online_then_stopped(broker: Broker,
                                                                    stop_event: threading.Event) -> None:
    col = Collector(broker, "digit-agent/dev1/#")
    pub = Publisher(make_cfg(broker.host, broker.port), stop_event)
    try:
        pub.start()
        assert pub.wait_connected(10)
        for i in range(500):
            pub.publish("result", b'{"seq":%d}' % i, qos=1)
        for i in range(200):
            pub.publish("result", b'{"seq":%d}' % (500 + i), qos=0)
        assert col.wait_for(lambda c: len(c.on("/result")) >= 700, 30)
        got = _seqs(col)
        # MQTT orders messages per QoS level only (the broker may let QoS 0 overtake queued QoS 1).
        assert [x for x in got if x < 500] == list(range(500))
        assert [x for x in got if x >= 500] == list(range(500, 700))
        assert [m.payload for m in col.on("/status")] == [b"online"]
    finally:
        pub.stop(5)
    assert col.wait_for(lambda c: [m.payload for m in c.on("/status")] == [b"online", b"stopped"], 10)
    s = pub.stats()
    assert s["sent"] == s["produced"] == 700 and s["acked"] == 500 and s["dropped"] == 0
    assert s["connected"] is False and s["state"] == "stopped" and pub.alive() is False
    col.close()
    # Retained: a late subscriber sees the last status, "stopped".
    late = Collector(broker, "digit-agent/dev1/status")
    assert late.wait_for(lambda c: [(m.payload, m.retain) for m in c.messages] == [(b"stopped", True)], 10)
    late.close()


def test_absolute_topics_and_invalid_publishes_are_rejected_not_raised(broker: Broker,
                                                                      stop_event: threading.Event) -> None:
    col = Collector(broker, "elsewhere/#", "digit-agent/dev1/#")
    pub = Publisher(make_cfg(broker.host, broker.port), stop_event)
    pub.start()
    try:
        assert pub.wait_connected(10)
        pub.publish("/elsewhere/x", b"abs", qos=1, retain=False)
        pub.publish("bad/+/topic", b"x", qos=1)
        pub.publish("result", b"x", qos=3)
        pub.publish(["not", "a", "topic"], b"x", qos=1)  # type: ignore[arg-type]
        pub.publish("result", b"x", qos=[1])  # type: ignore[arg-type]
        assert col.wait_for(lambda c: len(c.on("elsewhere/x")) == 1, 10)
        assert pub.stats()["rejected"] == 4 and pub.stats()["produced"] == 1
    finally:
        pub.stop(3)
        col.close()


_CHILD = """
import sys, threading, time
from tests.integration.test_publisher import make_cfg
from agent.publish import Publisher
pub = Publisher(make_cfg("127.0.0.1", int(sys.argv[1]), dev="victim"), threading.Event())
pub.start()
print("ok" if pub.wait_connected(10) else "no", flush=True)
time.sleep(60)
"""


def test_last_will_offline_when_the_process_is_killed(broker: Broker) -> None:
    col = Collector(broker, "digit-agent/victim/status")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(broker.port)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ok"
        assert col.wait_for(lambda c: [m.payload for m in c.messages] == [b"online"], 10)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert col.wait_for(lambda c: [m.payload for m in c.messages] == [b"online", b"offline"], 20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        col.close()
    late = Collector(broker, "digit-agent/victim/status")
    assert late.wait_for(lambda c: [(m.payload, m.retain) for m in c.messages] == [(b"offline", True)], 10)
    late.close()


def test_broker_restart_during_qos1_stream_loses_nothing(persistent_broker: Broker,
                                                         stop_event: threading.Event) -> None:
    b = persistent_broker
    sub = Collector(b, "digit-agent/dev1/result", client_id="restart-sub", persistent=True)
    pub = Publisher(make_cfg(b.host, b.port), stop_event)
    pub.start()
    n = 4000
    try:
        assert pub.wait_connected(10)
        for i in range(n):
            pub.publish("result", b'{"seq":%d,"boot_id":"x"}' % i, qos=1)
            if i == n // 3:
                b.restart()  # while messages are in flight and queued
            elif i % 200 == 0:
                time.sleep(0.01)  # a stream, not one burst
        assert pub.flush(60), pub.stats()
        assert sub.wait_for(lambda c: len(set(_seqs(c))) >= n, 30)
    finally:
        pub.stop(3)
        sub.close()
    got = _seqs(sub)
    assert set(got) == set(range(n))  # every seq present after dedup
    firsts = list(dict.fromkeys(got))
    assert firsts == sorted(firsts)  # re-sent from the oldest un-acked: order kept, modulo duplicates
    s = pub.stats()
    assert s["reconnects"] >= 1 and s["dropped"] == 0 and s["sent"] == n
    print(f"restart: {len(got) - n} duplicate(s) re-sent, stats={s}")


def test_outage_longer_than_outbox_keeps_the_newest_and_counts_drops(persistent_broker: Broker,
                                                                     stop_event: threading.Event) -> None:
    b = persistent_broker
    sub = Collector(b, "digit-agent/dev1/result", client_id="outage-sub", persistent=True)
    cap, before, during = 100, 50, 1000
    pub = Publisher(make_cfg(b.host, b.port, outbox_max=cap), stop_event)
    pub.start()
    try:
        assert pub.wait_connected(10)
        for i in range(before):
            pub.publish("result", b'{"seq":%d}' % i, qos=1)
        assert pub.flush(10)
        b.stop()
        deadline = time.monotonic() + 10
        while pub.stats()["connected"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pub.stats()["connected"]
        for i in range(before, before + during):
            pub.publish("result", b'{"seq":%d}' % i, qos=1)
        s = pub.stats()
        assert s["queued"] == cap and s["dropped"] == during - cap
        b.start()
        assert pub.flush(30), pub.stats()
        total = before + during
        assert sub.wait_for(lambda c: len(set(_seqs(c))) >= before + cap, 20)
    finally:
        pub.stop(3)
        sub.close()
    s = pub.stats()
    assert s["sent"] + s["dropped"] == s["produced"] == total
    assert s["dropped"] == during - cap
    assert set(_seqs(sub)) == set(range(before)) | set(range(total - cap, total))


def test_unreachable_broker_never_raises_blocks_or_spins(stop_event: threading.Event) -> None:
    port = free_port()  # nothing listens here
    pub = Publisher(make_cfg("127.0.0.1", port, outbox_max=500), stop_event)
    cpu0 = time.process_time()
    pub.start()
    t0 = time.perf_counter()
    for i in range(1000):
        pub.publish("result", b"%d" % i, qos=1)
    per_call_us = (time.perf_counter() - t0) / 1000 * 1e6
    time.sleep(2.0)
    s = pub.stats()
    cpu = time.process_time() - cpu0
    print(f"unreachable: publish {per_call_us:.2f} us/call, cpu {cpu:.3f} s in 2 s, stats {s}")
    assert s["connected"] is False and s["queued"] == 500 and s["dropped"] == 500
    assert "refused" in str(s["last_error"]).lower()
    # Backoff 0.05 s doubling to 0.5 s: about 6 attempts in 2 s; a spinning loop makes thousands.
    assert 1 <= int(s["connect_failures"] or 0) < 30
    assert pub.alive()
    pub.stop(1.0)
    assert pub.stats()["state"] == "stopped"


def test_subscriptions_run_on_worker_thread_and_survive_reconnect(broker: Broker,
                                                                  stop_event: threading.Event) -> None:
    got: list[tuple[str, bytes, str]] = []

    def handler(topic: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got.append((topic, payload, threading.current_thread().name))

    pub = Publisher(make_cfg(broker.host, broker.port), stop_event)
    pub.subscribe("cmd", handler)
    pub.subscribe("/digit-agent/group/+/ota/manifest", handler)
    pub.start()
    col = Collector(broker, "unused/#")
    try:
        assert pub.wait_connected(10)
        time.sleep(0.3)  # SUBACK
        col.publish("digit-agent/dev1/cmd", b"boom")
        col.publish("digit-agent/dev1/cmd", b"one")
        col.publish("digit-agent/group/g1/ota/manifest", b"two")
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(t, p) for t, p, _ in got] == [("digit-agent/dev1/cmd", b"one"),
                                               ("digit-agent/group/g1/ota/manifest", b"two")]
        assert {name for _, _, name in got} == {"mqtt-dispatch"}
        assert pub.stats()["handler_errors"] == 1
        col.close()
        broker.restart()
        assert _wait_connects(pub, 2)
        col = Collector(broker, "unused/#")
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            col.publish("digit-agent/dev1/cmd", b"after")  # re-published until the resubscribe landed
            time.sleep(0.2)
        assert ("digit-agent/dev1/cmd", b"after") in [(t, p) for t, p, _ in got]
        pub.unsubscribe("cmd")
        time.sleep(0.5)  # UNSUBSCRIBE round trip on loopback
        got.clear()
        col.publish("digit-agent/dev1/cmd", b"gone")
        col.publish("digit-agent/group/g2/ota/manifest", b"marker")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p for _, p, _ in got] == [b"marker"]
    finally:
        pub.stop(3)
        col.close()


def _wait_connects(pub: Publisher, n: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(pub.stats()["connects"] or 0) >= n and pub.stats()["connected"]:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_network_thread_is_detected_and_restarted(broker: Broker, stop_event: threading.Event) -> None:
    col = Collector(broker, "digit-agent/dev1/result")
    pub = Publisher(make_cfg(broker.host, broker.port), stop_event)
    pub.start()
    try:
        assert pub.wait_connected(10)
        assert pub.alive()
        session = pub._session
        real_step = session._step

        def die() -> None:  # fault injection: only a BaseException escapes the loop's guard
            session._step = real_step  # type: ignore[method-assign]
            raise SystemExit("injected")

        session._step = die  # type: ignore[method-assign]
        pub._wake()
        deadline = time.monotonic() + 5
        while pub._thread is not None and pub._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.alive() is False  # detected (and restarted)
        assert pub.stats()["loop_restarts"] == 1
        assert _wait_connects(pub, 2)
        assert pub.alive()
        pub.publish("result", b'{"seq":1}', qos=1)
        assert col.wait_for(lambda c: len(c.messages) == 1, 10)
    finally:
        pub.stop(3)
        col.close()


def test_mqtt_311_protocol(broker: Broker, stop_event: threading.Event) -> None:
    col = Collector(broker, "digit-agent/dev1/#")
    pub = Publisher(make_cfg(broker.host, broker.port, protocol="3.1.1"), stop_event)
    pub.start()
    try:
        assert pub.wait_connected(10)
        for i in range(100):
            pub.publish("result", b'{"seq":%d}' % i, qos=1)
        assert col.wait_for(lambda c: len(c.on("/result")) == 100, 10)
        assert _seqs(col) == list(range(100))
    finally:
        pub.stop(3)
    assert col.wait_for(lambda c: [m.payload for m in c.on("/status")] == [b"online", b"stopped"], 10)
    col.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_message_over_the_brokers_packet_limit_is_rejected_not_retried(
        tmp_path: Path, stop_event: threading.Event, protocol: str) -> None:
    """MQTT 5: the CONNACK announces the limit; 3.1.1: the broker drops the connection each time
    and the message is given up after three connections died with it in flight."""
    b = Broker(tmp_path, extra="max_packet_size 300\n").start()
    col = Collector(b, "digit-agent/dev1/result")
    pub = Publisher(make_cfg(b.host, b.port, protocol=protocol), stop_event)
    pub.start()
    try:
        assert pub.wait_connected(10)
        pub.publish("result", b"x" * 1000, qos=1)  # a poison message must not block the outbox
        pub.publish("result", b"small", qos=1)
        assert col.wait_for(lambda c: [m.payload for m in c.messages] == [b"small"], 10)
        s = pub.stats()
        assert s["rejected"] == 1 and s["sent"] == 1
        assert s["connects"] == (1 if protocol == "5" else 4)  # 3.1.1: three died, the fourth works
    finally:
        pub.stop(3)
        col.close()
        b.stop()


def test_qos2_delivers_exactly_once_on_a_stable_connection(broker: Broker,
                                                          stop_event: threading.Event) -> None:
    col = Collector(broker, "digit-agent/dev1/result", qos=2)
    pub = Publisher(make_cfg(broker.host, broker.port), stop_event)
    pub.start()
    try:
        assert pub.wait_connected(10)
        for i in range(200):
            pub.publish("result", b'{"seq":%d}' % i, qos=2)
        assert pub.flush(20)
        assert col.wait_for(lambda c: len(c.messages) >= 200, 10)
        time.sleep(0.3)  # a duplicate would arrive right behind
        assert _seqs(col) == list(range(200))
        assert pub.stats()["acked"] == 200  # counted at PUBCOMP
    finally:
        pub.stop(3)
        col.close()


def test_concurrent_producers_account_for_every_message(tmp_path: Path, stop_event: threading.Event) -> None:
    b = Broker(tmp_path, extra="max_queued_messages 0\nuser root\n").start()
    col = Collector(b, "digit-agent/dev1/result")
    pub = Publisher(make_cfg(b.host, b.port, outbox_max=300), stop_event)
    pub.start()
    per, producers = 2000, 4
    try:
        assert pub.wait_connected(10)

        def produce(k: int) -> None:
            for i in range(per):
                pub.publish("result", b'{"seq":%d}' % (k * per + i), qos=1)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert pub.flush(60)
        s = pub.stats()
        assert s["produced"] == per * producers == int(s["sent"] or 0) + int(s["dropped"] or 0)
        assert col.wait_for(lambda c: len(c.messages) >= int(s["sent"] or 0), 30)
        got = _seqs(col)
        assert len(got) == len(set(got)) == s["sent"]  # no duplicates without a reconnect
        for k in range(producers):  # each producer's messages stay in its order
            mine = [x for x in got if k * per <= x < (k + 1) * per]
            assert mine == sorted(mine)
        print(f"concurrent: {s}")
    finally:
        pub.stop(3)
        col.close()
        b.stop()
