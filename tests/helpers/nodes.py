"""Several broker nodes for the failover tests: independent mosquittos (no replication, the device
just moves) or a clustered broker (:mod:`tests.helpers.nats`), behind one small interface, and a
collector that records what one node delivers."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.broker import Broker
from tests.helpers.wait import wait_until

__all__ = ["Got", "MosquittoNodes", "Node", "NodeCollector", "Nodes"]


class Node(Protocol):
    host: str
    port: int

    @property
    def address(self) -> str: ...

    def kill(self) -> None: ...


class Nodes(Protocol):
    nodes: list[Any]  # Node
    replicated: bool  # retained messages, sessions and subscriptions are shared by every node
    protocol: str  # the MQTT version the device uses with them

    def stop(self) -> None: ...


class _MosquittoNode(Broker):
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


class MosquittoNodes:
    """``n`` independent mosquittos: nothing is shared, a device that moves starts afresh there."""

    replicated = False
    protocol = "5"

    def __init__(self, workdir: Path, n: int = 3) -> None:
        self.nodes: list[Any] = []
        for i in range(n):
            d = workdir / f"mosquitto{i}"
            d.mkdir()
            self.nodes.append(_MosquittoNode(d).start())

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@dataclass
class Got:
    topic: str
    payload: bytes
    retain: bool
    t: float = field(default_factory=time.monotonic)


class NodeCollector:
    """An MQTT 3.1.1 clean-session subscriber on one node (both brokers speak it); keeps every message."""

    def __init__(self, node: Node, *topics: str, client_id: str, qos: int = 1, timeout: float = 30.0) -> None:
        self.node = node
        self.got: list[Got] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topics = topics
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=True)
        self.c.on_connect = lambda c, *_a: c.subscribe([(t, qos) for t in self._topics])
        self.refused: list[str] = []  # SUBACK failures
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect(node.host, node.port, keepalive=10)
        self.c.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"could not subscribe on {node.address} within {timeout:g} s")

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        self.refused += [str(rc) for rc in rcs if rc.is_failure]
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append(Got(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str, since: float = 0.0) -> list[Got]:
        with self._lock:
            return [g for g in self.got if g.topic.endswith(suffix) and g.t >= since]

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(g.payload) for g in self.on("/result")]

    def last_health(self) -> Optional[dict[str, Any]]:
        hs = self.on("/health")
        return json.loads(hs[-1].payload) if hs else None

    def wait(self, pred: Callable[[NodeCollector], bool], timeout: float) -> bool:
        return wait_until(lambda: pred(self), timeout, interval=0.05)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
