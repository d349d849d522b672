"""Operator side of the transfer: publish a signed manifest, then answer the devices' chunk requests.

One chunk stream per job (``<prefix>/ota/chunk/<job>``) serves every device of a push: requests
from many devices are merged into one set of wanted chunks, each sent once per round at a bounded
rate. The device decides what it is missing (its persisted bitmap); this side holds no per-device
state, so a device that restarts or loses the broker simply asks again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.control.ota.manifest import Limits, Manifest, parse_envelope, parse_manifest
from agent.control.ota.transfer import ChunkError, encode_chunk, parse_request

__all__ = ["Connection", "Pusher", "StatusWatch", "connect", "manifest_of", "read_manifest"]

_log = logging.getLogger(__name__)
_CHUNK_OVERHEAD = 64 + 12  # fixed header, topic length, properties: generous


@dataclass
class Connection:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    tls_ca: str = ""
    client_id: str = ""
    protocol: str = "5"  # or "3.1.1" (a broker without MQTT 5, e.g. a NATS cluster)


def connect(conn: Connection, on_message: Callable[[str, bytes, bool], None],
            topics: list[str], timeout: float = 10.0, qos: int = 1) -> tuple[mqtt.Client, Optional[int]]:
    """A connected client subscribed to ``topics`` at ``qos``; also the broker's maximum packet size
    (MQTT 5 only)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=conn.client_id,
                         protocol=mqtt.MQTTv311 if conn.protocol == "3.1.1" else mqtt.MQTTv5)
    if conn.username:
        client.username_pw_set(conn.username, conn.password or None)
    if conn.tls_ca:
        client.tls_set(ca_certs=conn.tls_ca)
    ready = threading.Event()
    info: dict[str, Optional[int]] = {"max_packet": None}

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        info["max_packet"] = getattr(props, "MaximumPacketSize", None) if props is not None else None
        if topics:
            c.subscribe([(t, qos) for t in topics])
        else:
            ready.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, msg: on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
    client.max_inflight_messages_set(64)
    client.connect(conn.host, conn.port, keepalive=30)
    client.loop_start()
    if not ready.wait(timeout):
        client.loop_stop()
        raise TimeoutError(f"could not connect/subscribe to {conn.host}:{conn.port} within {timeout:g} s")
    return client, info["max_packet"]


@dataclass
class StatusWatch:
    """Latest ``ota/status`` document per device (thread-safe)."""

    job: str
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offer(self, device: str, payload: bytes) -> Optional[dict[str, Any]]:
        try:
            doc = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        with self.lock:
            self.docs[device] = doc
        return doc

    def done(self, device: str) -> Optional[dict[str, Any]]:
        """The terminal status of ``device`` for this job (a refusal without a job counts too)."""
        with self.lock:
            d = self.docs.get(device)
        terminal = d is not None and d.get("state") in ("committed", "rejected", "failed", "rolled_back")
        return d if terminal and d is not None and d.get("job") in (self.job, None) else None


class Pusher:
    """Publishes ``envelope`` to the target topics and serves chunks until :meth:`close`.

    ``mutate(index, payload) -> list of (topic suffix or None, payload)`` lets tests corrupt,
    duplicate or add chunks (``None`` = this job's chunk topic).
    """

    def __init__(self, conn: Connection, prefix: str, envelope: bytes, model: bytes, manifest: Manifest,
                 rate: float = 500.0,
                 mutate: Optional[Callable[[int, bytes], list[tuple[Optional[str], bytes]]]] = None) -> None:
        self.prefix, self.envelope, self.model, self.m = prefix, envelope, model, manifest
        self.rate, self.mutate = max(1.0, rate), mutate
        self.watch = StatusWatch(manifest.job)
        self.on_status: Optional[Callable[[str, dict[str, Any]], None]] = None
        self._wanted: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.sent = 0
        self.requests = 0
        self.client, max_packet = connect(conn, self._on_message,
                                          [f"{prefix}/+/ota/request", f"{prefix}/+/ota/status"])
        need = manifest.chunk_size + _CHUNK_OVERHEAD + len(self.chunk_topic)
        if max_packet is not None and need > max_packet:
            self.close()
            raise ValueError(f"chunk size {manifest.chunk_size} does not fit the broker's maximum packet "
                             f"size {max_packet}; package with a smaller --chunk-size")
        self._thread = threading.Thread(target=self._serve, name="ota-push", daemon=True)
        self._thread.start()

    @property
    def chunk_topic(self) -> str:
        return f"{self.prefix}/ota/chunk/{self.m.job}"

    def send_manifest(self, device: str = "", group: str = "", timeout: float = 10.0) -> None:
        """Publish the envelope (not retained: devices keep it themselves, and a retained manifest would
        be replayed to every device on every connect). Waits up to ``timeout`` for a (re)connection."""
        topic = (f"{self.prefix}/group/{group}/ota/manifest" if group else f"{self.prefix}/{device}/ota/manifest")
        deadline = time.monotonic() + timeout
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError("not connected to the broker")
            time.sleep(0.05)
        self.client.publish(topic, self.envelope, qos=1).wait_for_publish(max(1.0, deadline - time.monotonic()))

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parts = topic.split("/")
        device = parts[-3] if len(parts) >= 3 else ""
        if topic.endswith("/ota/status"):
            if retained:  # from before this push: a stale refusal (job None) must not end it
                return
            doc = self.watch.offer(device, payload)
            if doc is not None and self.on_status is not None:
                self.on_status(device, doc)
            return
        try:
            job, ranges = parse_request(payload, self.m.chunk_count)
        except ChunkError as exc:
            _log.warning("ignoring request from %s: %s", device, exc)
            return
        if job != self.m.job:
            return
        with self._lock:
            self.requests += 1
            for r in ranges:
                self._wanted.update(r)
        self._wake.set()

    def _next(self) -> Optional[int]:
        with self._lock:
            if not self._wanted:
                self._wake.clear()
                return None
            i = min(self._wanted)
            self._wanted.discard(i)
            return i

    def _serve(self) -> None:
        interval = 1.0 / self.rate
        next_t = time.monotonic()
        while not self._closed.is_set():
            i = self._next()
            if i is None:
                self._wake.wait(0.2)
                continue
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_t = max(next_t + interval, time.monotonic() - 1.0)
            data = self.model[i * self.m.chunk_size:(i + 1) * self.m.chunk_size]
            payload = encode_chunk(i, self.m.chunk_count, data)
            out = self.mutate(i, payload) if self.mutate else [(None, payload)]
            for topic, body in out:
                self.client.publish(topic or self.chunk_topic, body, qos=1)
                self.sent += 1

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self.client.loop_stop()
        self.client.disconnect()


def manifest_of(envelope: bytes) -> dict[str, Any]:
    """The (unverified) manifest inside an envelope, for the operator's own display."""
    body, _ = parse_envelope(envelope, len(envelope))
    doc: dict[str, Any] = json.loads(body)
    return doc


def read_manifest(envelope: bytes) -> Manifest:
    """Parse (not verify: the operator signed it) an envelope's manifest with permissive limits."""
    body, _ = parse_envelope(envelope, 1 << 30)
    family = str(json.loads(body).get("family", ""))
    return parse_manifest(body, Limits(1 << 31, 1 << 20, 16 << 20, family, 1e9))
