"""Home Assistant MQTT discovery: retained config messages that make a device appear in HA by itself.

Pure part: :func:`entity_configs` / :func:`discovery_messages` / :func:`removal_messages` turn the
:class:`~agent.config.schema.Config` into ``(topic, payload, retain)`` messages (no I/O).
:class:`Discovery` publishes them through the daemon's publisher: at start, after every new broker
connection (a broker restarted without persistence forgets retained configs) and, with a random
delay, when Home Assistant announces ``online`` on ``<ha_prefix>/status`` (its birth message).
With ``[homeassistant] discovery = false`` it publishes empty retained payloads instead, which
makes Home Assistant remove the entities.

Why the sensors read ``health`` and not ``result``: results come at the frame rate (50/s by
default) and every HA state change is written to its recorder; health comes every
``health.interval_s`` and carries the last digit and confidence too.

Availability: the device publishes ``online``/``stopped``/LWT ``offline`` on ``<prefix>/<id>/status``;
the availability template maps anything but ``online`` to ``offline``, so a cleanly stopped device
also reads as unavailable.

Update entity: installed = the model version serving (``health.model.version``), its title and
summary name the variant serving (``health.model.variant``, e.g. ``fp32``); latest = the
version of the newest OTA job (``health.ota.version``) if higher and not refused; progress from
``health.ota.state``/``progress``. Its install button publishes :data:`INSTALL_PAYLOAD` on
``<prefix>/<id>/cmd`` (see docs/fleet.md for what the OTA controller does with it).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Protocol

from agent import __version__
from agent.config.schema import Config

__all__ = [
    "INSTALL_PAYLOAD",
    "OTA_BUSY_STATES",
    "Discovery",
    "DiscoveryMessage",
    "discovery_messages",
    "entity_configs",
    "node_id",
    "removal_messages",
    "unique_id",
]

log = logging.getLogger(__name__)

INSTALL_PAYLOAD = '{"cmd":"ota_install","version":"latest"}'
OTA_BUSY_STATES = ("downloading", "verifying", "validating", "activating", "testing")
_NOT_OFFERED = ("rejected", "rolled_back", "disabled")  # a job in these states is not an update to offer
_AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"


class DiscoveryMessage(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


def node_id(device_id: str) -> str:
    """The discovery node id: the device id itself. The config schema restricts device ids to
    ``[A-Za-z0-9_-]``, the characters HA accepts in a node id, so no mapping is needed and two
    different devices never share a node (and the broker ACL's ``%u`` matches it)."""
    return device_id


def unique_id(device_id: str, key: str) -> str:
    """``digit_agent_<id>_<key>``: namespaced so it cannot meet another integration's ids."""
    return f"digit_agent_{device_id}_{key}"


def _entity_slug(device_id: str) -> str:
    """The object id part of the suggested entity id (HA entity ids are ``[a-z0-9_]``)."""
    return device_id.lower().replace("-", "_")


def _num(path: str, scale: str = "", ndigits: int = 1) -> str:
    """Template: the JSON number at ``path`` (optionally scaled), or None (HA: unknown) if absent."""
    expr = f"(v {scale}) | round({ndigits})" if scale else "v"
    return f"{{% set v = value_json.{path} | default(none) %}}{{{{ {expr} if v is number else none }}}}"


# key -> (state topic suffix, extra config). Units and classes per HA's sensor docs.
_SENSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "last_digit": ("health", {
        "name": "Last digit", "icon": "mdi:numeric",
        "value_template": _num("inference.last_digit")}),
    "confidence": ("health", {
        "name": "Confidence", "unit_of_measurement": "%", "state_class": "measurement",
        "suggested_display_precision": 1, "icon": "mdi:gauge",
        "value_template": _num("inference.last_confidence", "* 100", 2)}),
    "inference_p99": ("health", {
        "name": "Inference p99", "device_class": "duration", "unit_of_measurement": "ms",
        "state_class": "measurement", "suggested_display_precision": 2,
        "value_template": _num("inference.p99_us", "/ 1000", 3)}),
    "deadline_misses": ("health", {
        "name": "Deadline misses", "state_class": "total_increasing", "entity_category": "diagnostic",
        "icon": "mdi:timer-alert-outline", "value_template": _num("inference.deadline_misses")}),
    "frames_dropped": ("health", {
        "name": "Frames dropped", "state_class": "total_increasing", "entity_category": "diagnostic",
        "icon": "mdi:image-broken-variant", "value_template": _num("frames.dropped")}),
    "cpu_temperature": ("health", {
        "name": "CPU temperature", "device_class": "temperature", "unit_of_measurement": "°C",
        "state_class": "measurement", "entity_category": "diagnostic", "suggested_display_precision": 1,
        "value_template": _num("temperature_c")}),
    "memory_rss": ("health", {
        "name": "Memory (RSS)", "device_class": "data_size", "unit_of_measurement": "MiB",
        "state_class": "measurement", "entity_category": "diagnostic", "suggested_display_precision": 1,
        "value_template": _num("rss_bytes", "/ 1048576", 1)}),
}

_UPDATE_TEMPLATE = (
    "{%- set o = value_json.ota if value_json.ota is mapping else {} -%}"
    "{%- set inst = value_json.model.version | default(none) -%}"
    "{%- set var = value_json.model.variant | default('') -%}"
    "{%- set st = o.state | default('idle') -%}"
    "{%- set tgt = o.version | default(none) -%}"
    "{%- set busy = st in " + json.dumps(list(OTA_BUSY_STATES)) + " -%}"
    "{%- set offered = tgt is number and inst is number and tgt > inst and st not in "
    + json.dumps(list(_NOT_OFFERED)) + " -%}"
    "{%- set p = o.progress | default(0) -%}"
    "{{ {'installed_version': inst | string,"
    " 'latest_version': (tgt if offered else inst) | string,"
    " 'in_progress': busy,"
    " 'update_percentage': ((p if p is number else 0) * 100) | round(0) if busy else none,"
    " 'title': 'Digit model' ~ ((' (' ~ var ~ ')') if var else ''),"
    " 'release_summary': (('serving variant ' ~ var ~ '; ') if var else '')"
    " ~ ('last OTA: ' ~ st ~ ((': ' ~ o.reason) if o.reason else ''))[:200]"
    "} | tojson }}"
)


def _device(cfg: Config, hw_version: str) -> dict[str, Any]:
    dev: dict[str, Any] = {
        "identifiers": [f"digit_agent_{cfg.device.id}"],
        "name": cfg.homeassistant.node_name or cfg.device.id,
        "manufacturer": "digit-agent",
        "model": "digit-agent int8 digit recogniser",
        "sw_version": __version__,
    }
    if hw_version:
        dev["hw_version"] = hw_version
    return dev


def entity_configs(cfg: Config, hw_version: str = "") -> list[tuple[str, str, dict[str, Any]]]:
    """``(component, key, config)`` for every entity of this device, in a stable order."""
    dev_id, slug = cfg.device.id, _entity_slug(cfg.device.id)
    common: dict[str, Any] = {
        "availability": [{"topic": cfg.topic("status"), "value_template": _AVAILABILITY_TEMPLATE,
                          "payload_available": "online", "payload_not_available": "offline"}],
        "device": _device(cfg, hw_version),
        "origin": {"name": "digit-agent", "sw_version": __version__},
        "qos": 1,
    }
    out: list[tuple[str, str, dict[str, Any]]] = []
    for key, (suffix, extra) in _SENSORS.items():
        conf = {"unique_id": unique_id(dev_id, key), "default_entity_id": f"sensor.{slug}_{key}",
                "state_topic": cfg.topic(suffix), **extra, **common}
        out.append(("sensor", key, conf))
    out.append(("update", "model", {
        "unique_id": unique_id(dev_id, "model"), "default_entity_id": f"update.{slug}_model",
        "name": "Model", "title": "Digit model", "entity_category": "config",
        "state_topic": cfg.topic("health"), "value_template": _UPDATE_TEMPLATE,
        "command_topic": cfg.topic("cmd"), "payload_install": INSTALL_PAYLOAD, "retain": False,
        **common}))
    return out


def _config_topic(cfg: Config, component: str, key: str) -> str:
    return f"{cfg.homeassistant.prefix}/{component}/{node_id(cfg.device.id)}/{key}/config"


def discovery_messages(cfg: Config, hw_version: str = "") -> list[DiscoveryMessage]:
    """Retained config messages announcing every entity."""
    return [DiscoveryMessage(_config_topic(cfg, comp, key),
                             json.dumps(conf, separators=(",", ":"), ensure_ascii=False).encode(), True)
            for comp, key, conf in entity_configs(cfg, hw_version)]


def removal_messages(cfg: Config) -> list[DiscoveryMessage]:
    """Empty retained payloads on every config topic: HA removes the entities, the broker the configs."""
    return [DiscoveryMessage(_config_topic(cfg, comp, key), b"", True) for comp, key, _ in entity_configs(cfg)]


class _Publisher(Protocol):
    def publish(self, suffix: str, payload: bytes, qos: int, retain: bool = False) -> None: ...

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None: ...

    def stats(self) -> Any: ...


class Discovery:
    """Keeps this device's discovery configs on the broker (see the module docstring).

    ``start()`` publishes (or, when disabled, removes) the configs and, when enabled, subscribes
    to ``<ha_prefix>/status`` and starts one small thread that re-announces after a reconnect or a
    Home Assistant birth message. ``stop()`` (or the shared ``stop`` event) ends it.
    """

    _POLL_S = 1.0

    def __init__(self, cfg: Config, publisher: _Publisher, stop: threading.Event, hw_version: str = "",
                 rng: Optional[random.Random] = None) -> None:
        self._cfg = cfg
        self._pub = publisher
        self._stop = stop
        self._hw = hw_version
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._due: Optional[float] = None  # monotonic time of a pending re-announce
        self._connects = 0
        self._thread: Optional[threading.Thread] = None
        self.announced = 0  # how many times the configs went out (tests, stats)

    def start(self) -> None:
        ha = self._cfg.homeassistant
        if not ha.discovery:
            for m in removal_messages(self._cfg):
                self._pub.publish("/" + m.topic, m.payload, 1, m.retain)
            log.info("Home Assistant discovery off: removal of %s's entities published", self._cfg.device.id)
            return
        self._connects = self._connect_count()
        self.announce()
        self._pub.subscribe(f"/{ha.prefix}/status", self._on_ha_status)
        self._thread = threading.Thread(target=self._run, name="ha-discovery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def announce(self) -> None:
        for m in discovery_messages(self._cfg, self._hw):
            self._pub.publish("/" + m.topic, m.payload, 1, m.retain)
        self.announced += 1
        log.debug("Home Assistant discovery configs published (%d)", self.announced)

    def _on_ha_status(self, _topic: str, payload: bytes) -> None:
        """Dispatcher thread: only schedules; the thread publishes after a random delay."""
        if payload.strip().lower() != b"online":
            return
        delay = self._rng.uniform(0.0, self._cfg.homeassistant.rediscover_jitter_s)
        with self._lock:
            self._due = time.monotonic() + delay
        log.info("Home Assistant came online; re-announcing in %.1f s", delay)

    def _connect_count(self) -> int:
        try:
            return int(self._pub.stats().get("connects") or 0)
        except Exception:  # a stats() failure must not stop discovery
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self._POLL_S):
            connects = self._connect_count()
            with self._lock:
                due = self._due is not None and time.monotonic() >= self._due
                if due:
                    self._due = None
            # The first connect is covered by start(); later ones may follow a broker that lost them.
            if due or connects > max(self._connects, 1):
                self.announce()
            self._connects = max(self._connects, connects)
