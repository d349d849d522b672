"""The shipped secured broker (deploy/mosquitto/) on a free loopback port, and TLS test clients.

The broker runs the *shipped* mosquitto.conf and acl: only the install directory and the listener
line are rewritten for the test, so a change to the shipped files is what the tests exercise.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.helpers.broker import Broker, free_port

__all__ = ["DEPLOY", "USERS", "MqttResult", "Pki", "TlsClient", "make_pki", "secured_broker"]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "mosquitto"
_INSTALL_DIR = "/etc/mosquitto/digit-agent"
# Every user the shipped ACL names (operator, dashboards, Home Assistant) plus two devices.
USERS = ("operator", "monitor", "homeassistant", "dev1", "dev2")


@dataclass(frozen=True)
class Pki:
    """Material made by deploy/mosquitto/mkpki.sh in ``dir``."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def password_file(self, name: str) -> Path:
        return self.dir / f"{name}.password"

    def password(self, name: str) -> str:
        return self.password_file(name).read_text().strip()


def make_pki(directory: Path, *clients: str) -> Pki:
    """Certificates and passwords for ``clients`` (default :data:`USERS`)."""
    subprocess.run([str(DEPLOY / "mkpki.sh"), str(directory), *(clients or USERS)], check=True, timeout=60,
                   capture_output=True)
    return Pki(directory)


def secured_broker(workdir: Path, pki: Pki) -> Broker:
    """A :class:`Broker` running the shipped config with ``pki`` as its install directory."""
    conf = (DEPLOY / "mosquitto.conf").read_text()
    port = free_port()
    assert "listener 8883\n" in conf and _INSTALL_DIR in conf
    conf = conf.replace(_INSTALL_DIR, str(pki.dir)).replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    return Broker(workdir, port=port, extra=conf).start()


@dataclass
class MqttResult:
    connect_rc: Optional[ReasonCode] = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    puback: dict[int, int] = field(default_factory=dict)  # mid -> reason code value
    suback: list[int] = field(default_factory=list)


class TlsClient:
    """A paho MQTT 5 client with TLS (+ client certificate) that records what happens to it."""

    def __init__(self, broker: Broker, pki: Pki, user: Optional[str], password: Optional[str],
                 cert: Optional[str] = None, client_id: str = "") -> None:
        self.r = MqttResult()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or (user or "anon"),
                             protocol=mqtt.MQTTv5)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        if cert:
            ctx.load_cert_chain(str(pki.cert(cert)), str(pki.key(cert)))
        self.c.tls_set_context(ctx)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self._broker = broker

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.r.connect_rc = rc
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.r.messages.append((msg.topic, bytes(msg.payload)))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self.r.puback[mid] = rc.value

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self.r.suback.extend(rc.value for rc in rcs)
        self._subscribed.set()

    def connect(self, timeout: float = 10.0) -> Optional[ReasonCode]:
        """Connect; the CONNACK reason code, or None if TLS or TCP failed (no CONNACK)."""
        try:
            self.c.connect(self._broker.host, self._broker.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return None
        self.c.loop_start()
        self._connected.wait(timeout)
        return self.r.connect_rc

    def subscribe(self, topic: str, timeout: float = 10.0) -> list[int]:
        """Subscribe at QoS 1; the SUBACK reason codes of this request."""
        self._subscribed.clear()
        before = len(self.r.suback)
        self.c.subscribe(topic, qos=1)
        self._subscribed.wait(timeout)
        return self.r.suback[before:]

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its reason code (0 = accepted)."""
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        return self.r.puback.get(info.mid, -1)

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.r.messages if t == topic]

    def wait_received(self, topic: str, n: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received(topic)) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received(topic)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
