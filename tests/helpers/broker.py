"""A real mosquitto on a free loopback port, and a subscriber that collects messages."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.wait import wait_until

__all__ = ["Broker", "Collector", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """mosquitto with a temporary config; ``restart()`` keeps the port. ``extra`` adds config lines."""

    def __init__(self, workdir: Path, port: Optional[int] = None, extra: str = "") -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (make test installs it)")
        self.exe = exe
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.extra = extra
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def _write_conf(self) -> None:
        body = self.extra if "listener" in self.extra else (
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{self.extra}")
        # As root, mosquitto would drop to its own user and could not write the log into pytest's
        # 0700 tmp dir; its default queue of 1000 would silently drop for a slow QoS 1 subscriber.
        defaults = {"persistence": "false", "user": "root", "max_queued_messages": "1000000"}
        given = {line.split()[0] for line in body.splitlines() if line.strip()}
        head = "".join(f"{k} {v}\n" for k, v in defaults.items() if k not in given)
        self.conf.write_text(f"{head}log_dest file {self.log}\nlog_type all\n{body}\n")

    def start(self) -> Broker:
        self._write_conf()
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # generous: a loaded machine
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with code {self.proc.returncode}:\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within 60 s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return "\n".join(text) if text else f"({self.log} is empty or missing)"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    t: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """Subscribes to ``topics`` and keeps every message; ``wait_for`` polls with a timeout."""

    def __init__(self, broker: Broker, *topics: str, client_id: str = "", qos: int = 1,
                 persistent: bool = False, **connect: Any) -> None:
        """``persistent``: an MQTT 3.1.1 session with clean_session=False, which survives a broker
        restart when the broker persists sessions (nothing published meanwhile is lost to it)."""
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        if persistent:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                      clean_session=False)
            self.client.reconnect_delay_set(1, 2)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if connect.get("username"):
            self.client.username_pw_set(connect["username"], connect.get("password"))
        self._topics = topics
        self._qos = qos
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector could not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([(t, self._qos) for t in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, pred: Callable[[Collector], bool], timeout: float = 30.0) -> bool:
        return wait_until(lambda: pred(self), timeout, interval=0.05)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
