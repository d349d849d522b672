"""Shared pieces of the reliability suite: model choice, a durable subscriber, figures, run size.

``DIGIT_AGENT_FULL=1`` selects the full-size runs (``make reliability``); CI runs the short ones.
``DIGIT_AGENT_FIGURES=<file.json>`` appends each scenario's measured figures to that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.broker import Broker
from tests.helpers.daemon import REPO
from tests.helpers.wait import wait_until

__all__ = ["FULL", "CuttableLink", "DurableSubscriber", "NotifyListener", "models", "persistent_broker",
           "record_figures", "wait_until"]

FULL = os.environ.get("DIGIT_AGENT_FULL") == "1"
_CARD = {"version": 1, "normalisation": {"mean": 0.1307, "std": 0.3081}}


def models(workdir: Path, shipped_ok: bool = True) -> tuple[Path, Path, str]:
    """(model, golden, which): the shipped model when models/ has it, else a synthetic one built
    here (tests/helpers/ota.py: a nearest-centroid ONNX model with its own golden set). Broker and
    serial faults do not depend on which model answers; the soak records which one it ran."""
    shipped, golden = REPO / "models" / "digit.card.json", REPO / "models" / "golden.npz"
    if shipped_ok and shipped.exists() and golden.exists():
        return shipped, golden, "shipped"
    from tests.helpers.ota import model_bytes, write_golden

    model = workdir / "synthetic.onnx"
    model.write_bytes(model_bytes("good"))
    model.with_suffix(".card.json").write_text(json.dumps(_CARD))
    return model, write_golden(workdir / "golden.npz", per_class=20), "synthetic"


def persistent_broker(workdir: Path) -> Broker:
    """A broker that keeps sessions and queued QoS 1 messages across a (graceful) restart, so the
    test's subscriber misses nothing while it reconnects: every loss seen is the daemon's."""
    store = workdir / "mosq-db"
    store.mkdir(exist_ok=True)
    extra = (f"persistence true\npersistence_location {store}/\nmax_queued_messages 0\n"
             "max_inflight_messages 0\nautosave_interval 3600\n")
    return Broker(workdir, extra=extra).start()


def record_figures(scenario: str, figures: dict[str, Any]) -> None:
    """Print the figures (visible with -s / in the report) and append them to $DIGIT_AGENT_FIGURES."""
    doc = {"scenario": scenario, "full": FULL, "ts": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    print(f"FIGURES {json.dumps(doc)}")
    target = os.environ.get("DIGIT_AGENT_FIGURES")
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(doc) + "\n")


class DurableSubscriber:
    """MQTT 5 subscriber with a persistent session (clean_start off, 1 h expiry) that reconnects
    quickly: with :func:`persistent_broker` it receives everything published while it was away."""

    def __init__(self, broker: Broker, *topics: str, client_id: str = "reliability-sub") -> None:
        self.broker = broker
        self.lock = threading.Lock()
        self.payloads: dict[str, list[bytes]] = {}
        self.connects = 0
        self._subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.reconnect_delay_set(1, 2)
        self._topics = topics
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.c.connect(broker.host, broker.port, keepalive=10, clean_start=False, properties=props)
        self.c.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        self.connects += 1
        # Subscribe only when the broker kept no session: a repeated SUBSCRIBE would replay
        # retained messages and make the counts ambiguous.
        if not rc.is_failure and not flags.session_present:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.payloads.setdefault(msg.topic, []).append(bytes(msg.payload))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, ps in self.payloads.items() if t.endswith(suffix) for p in ps]

    def count(self, suffix: str) -> int:
        with self.lock:
            return sum(len(ps) for t, ps in self.payloads.items() if t.endswith(suffix))

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        return wait_until(pred, timeout)

    def result_seqs(self) -> list[int]:
        return [json.loads(p)["seq"] for p in self.on("/result")]

    def last_health(self) -> Optional[dict[str, Any]]:
        hs = self.on("/health")
        return json.loads(hs[-1]) if hs else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class NotifyListener:
    """Plays systemd's part for ``NOTIFY_SOCKET``: the daemon's STATUS lines report its inference
    count even while no broker takes its health messages."""

    _INFERENCES = re.compile(r"(\d+) inferences")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.statuses: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Drained all the time: a full socket would make the daemon's notifications fail.
        self._thread = threading.Thread(target=self._pump, name="notify-listener", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def _pump(self) -> None:
        self.sock.settimeout(0.2)
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self.statuses += [ln[7:] for ln in data.decode(errors="replace").splitlines()
                                  if ln.startswith("STATUS=")]

    def inferences(self) -> int:
        """The latest reported inference count (0 before the first STATUS)."""
        with self._lock:
            for status in reversed(self.statuses):
                m = self._INFERENCES.search(status)
                if m:
                    return int(m.group(1))
        return 0

    def last(self) -> str:
        with self._lock:
            return self.statuses[-1] if self.statuses else ""

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
        self.sock.close()


class CuttableLink:
    """A TCP relay between the daemon and the broker that can be cut (both directions dropped, new
    connections refused) and restored: a network outage that leaves the broker and the test's
    subscriber untouched, so messages the broker acknowledged are never lost behind the daemon."""

    def __init__(self, broker: Broker) -> None:
        self.target = (broker.host, broker.port)
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.srv.settimeout(0.2)
        self.port = int(self.srv.getsockname()[1])
        self.up = threading.Event()
        self.up.set()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, name="link-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                a, _ = self.srv.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not self.up.is_set():
                a.close()  # the network is down: connection refused (reset)
                continue
            b = socket.create_connection(self.target, timeout=5)
            self._socks += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._socks.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self.srv.close()
