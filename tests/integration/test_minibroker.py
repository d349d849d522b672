"""tools/minibroker.py, the demo's embedded broker, against real paho clients over TCP: what the
daemon relies on (QoS 0/1/2, retained status, last will, wildcards) and what it refuses (MQTT 5)."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tools.localbroker import free_port, stop_process, wait_port
from tools.minibroker import topic_matches

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("filt", "topic", "match"), [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/+", "a/b", True), ("+", "a/b", False),
    ("a/b", "a/c", False), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True),
])
def test_topic_filters(filt: str, topic: str, match: bool) -> None:
    assert topic_matches(filt, topic) is match


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    p = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.minibroker", "--port", str(p)], cwd=REPO,
                            stderr=subprocess.PIPE)
    try:
        if not wait_port(p, 15):
            stop_process(proc, 5)
            pytest.fail(f"minibroker did not listen: {proc.stderr.read().decode() if proc.stderr else ''}")
        yield p
    finally:
        stop_process(proc, 5)
        assert proc.returncode == 0  # SIGTERM is a clean stop


class Sub:
    def __init__(self, port: int, filt: str, qos: int = 2, client_id: str = "") -> None:
        self.q: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        self.c.on_message = lambda c, u, m: self.q.put(m)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        self.c.subscribe(filt, qos)
        assert subscribed.wait(5), "no SUBACK"

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        return self.q.get(timeout=timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _publisher(port: int, will: tuple[str, bytes] | None = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if will:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    return c


def test_qos_levels_wildcards_and_retained(port: int) -> None:
    pub = _publisher(port)
    pub.publish("dev/1/status", b"online", qos=1, retain=True).wait_for_publish(5)
    sub = Sub(port, "dev/+/#")
    try:
        first = sub.get()
        assert (first.topic, first.payload, first.retain) == ("dev/1/status", b"online", True)
        for qos in (0, 1, 2):
            info = pub.publish(f"dev/1/result/q{qos}", f"r{qos}".encode(), qos=qos)
            info.wait_for_publish(5)
            assert info.is_published()  # QoS 1 got its PUBACK, QoS 2 its PUBREC/PUBCOMP
            m = sub.get()
            assert (m.topic, m.payload, m.qos, m.retain) == (f"dev/1/result/q{qos}", f"r{qos}".encode(), qos, False)
        pub.publish("other/1", b"x", qos=1).wait_for_publish(5)
        pub.publish("dev/1/status", b"", qos=1, retain=True).wait_for_publish(5)  # clears the retained
        assert sub.get().payload == b""  # live delivery of the clearing message
        with pytest.raises(queue.Empty):
            sub.get(0.5)  # "other/1" does not match
    finally:
        sub.close()
        pub.loop_stop()
    late = Sub(port, "dev/#")
    try:
        with pytest.raises(queue.Empty):
            late.get(0.5)  # nothing retained any more
    finally:
        late.close()


def test_last_will_on_a_lost_connection_not_on_disconnect(port: int) -> None:
    sub = Sub(port, "w/+/status")
    try:
        clean = _publisher(port, will=("w/clean/status", b"offline"))
        clean.disconnect()
        clean.loop_stop()
        lost = _publisher(port, will=("w/lost/status", b"offline"))
        lost.publish("w/lost/status", b"online", qos=1).wait_for_publish(5)
        assert sub.get().payload == b"online"
        lost.loop_stop()
        lost.socket().close()  # no DISCONNECT: the broker publishes the will
        m = sub.get()
        assert (m.topic, m.payload) == ("w/lost/status", b"offline")
        with pytest.raises(queue.Empty):
            sub.get(0.5)  # and none for the clean disconnect
    finally:
        sub.close()


def test_mqtt5_is_refused_with_a_clear_return_code(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        # CONNECT, protocol "MQTT" level 5, clean start, keepalive 10, no properties, client id "x"
        body = b"\x00\x04MQTT\x05\x02\x00\x0a\x00\x00\x01x"
        s.sendall(bytes([0x10, len(body)]) + body)
        assert s.recv(4) == b"\x20\x02\x00\x01"  # CONNACK: unacceptable protocol version


def test_a_port_in_use_is_an_error_on_stderr_not_silence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "tools.minibroker", "--port", str(p)], cwd=REPO,
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"minibroker: cannot listen on 127.0.0.1:{p}:" in r.stderr, r.stderr
