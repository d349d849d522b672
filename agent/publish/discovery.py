"""Home Assistant MQTT discovery: retained config messages that make a device appear in HA by itself.

Pure part: :func:`discovery_messages` / :func:`removal_messages` turn the
:class:`~agent.config.schema.Config` into ``(topic, payload, retain)`` messages (no I/O); the
entities themselves are in :mod:`agent.publish.ha_entities`.

Two layouts (``[homeassistant] discovery_mode``):

* ``device`` (default; HA >= 2024.11): ONE retained message on ``<ha_prefix>/device/<id>/config``
  with the device block, origin, availability and every entity under ``cmps``. An empty retained
  payload there removes the whole device. Announcing in this layout also clears (once) the
  per-entity topics of the other layout, so switching does not leave duplicates behind.
* ``component`` (older HA): one retained message per entity on
  ``<ha_prefix>/<platform>/<id>/<object id>/config``.

The node id is the device id itself (the config schema restricts it to ``[A-Za-z0-9_-]``, what HA
accepts, so the broker ACL's ``%u`` pattern matches it); ``unique_id`` = ``digit_agent_<id>_<key>``.

:class:`Discovery` publishes through the publisher's retained lane
(:meth:`~agent.publish.client.Publisher.publish_retained`): never dropped by a result overflow and
sent again after every new connection, the first included. After each announce (every connection,
and a random delay after Home Assistant's birth message ``online`` on ``<ha_prefix>/status``) it
calls ``after_announce`` — the daemon publishes one health message then, so the sensors do not
read *unknown* until the next health interval. With ``[homeassistant] discovery = false`` it
publishes the removal instead.

Availability: ``<prefix>/<id>/status`` (``online``/``stopped``/LWT ``offline``); the template maps
anything but ``online`` to ``offline``, so a cleanly stopped device also reads as unavailable.
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
from agent.publish.ha_entities import INSTALL_PAYLOAD, OTA_BUSY_STATES, entities

__all__ = [
    "INSTALL_PAYLOAD",
    "OTA_BUSY_STATES",
    "Discovery",
    "DiscoveryMessage",
    "device_block",
    "discovery_messages",
    "entity_configs",
    "removal_messages",
    "unique_id",
]

log = logging.getLogger(__name__)

_AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"


class DiscoveryMessage(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


def unique_id(device_id: str, key: str) -> str:
    """``digit_agent_<id>_<key>``: namespaced so it cannot meet another integration's ids."""
    return f"digit_agent_{device_id}_{key}"


def _entity_slug(device_id: str) -> str:
    """The object id part of the suggested entity id (HA entity ids are ``[a-z0-9_]``)."""
    return device_id.lower().replace("-", "_")


def device_block(cfg: Config, board: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """HA's device block; ``board`` = :func:`agent.publish.board.board_info` (model, serial, mac)."""
    b = board or {}
    dev: dict[str, Any] = {
        "identifiers": [f"digit_agent_{cfg.device.id}"],
        "name": cfg.homeassistant.node_name or cfg.device.id,
        "manufacturer": "digit-agent",
        "model": "digit-agent int8 digit recogniser",
        "sw_version": __version__,
    }
    if b.get("model"):
        dev["hw_version"] = b["model"]
    if b.get("serial"):
        dev["serial_number"] = b["serial"]
    if b.get("mac"):
        dev["connections"] = [["mac", b["mac"]]]
    return dev


def _shared(cfg: Config) -> dict[str, Any]:
    return {"availability": [{"topic": cfg.topic("status"), "value_template": _AVAILABILITY_TEMPLATE,
                              "payload_available": "online", "payload_not_available": "offline"}],
            "qos": 1}


def _origin() -> dict[str, Any]:
    return {"name": "digit-agent", "sw_version": __version__}


def _with_ids(cfg: Config, platform: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    slug = _entity_slug(cfg.device.id)
    return {"unique_id": unique_id(cfg.device.id, key), "default_entity_id": f"{platform}.{slug}_{key}",
            **options}


def entity_configs(cfg: Config, board: Optional[dict[str, str]] = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(platform, key, config)`` of every entity as single-component discovery publishes it."""
    common = {**_shared(cfg), "device": device_block(cfg, board), "origin": _origin()}
    return [(p, key, {**_with_ids(cfg, p, key, opts), **common}) for p, key, opts in entities(cfg)]


def device_config(cfg: Config, board: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The one device-discovery payload: device, origin, shared availability/qos, ``cmps``."""
    cmps = {key: {"p": p, **_with_ids(cfg, p, key, opts)} for p, key, opts in entities(cfg)}
    return {"dev": device_block(cfg, board), "o": _origin(), **_shared(cfg), "cmps": cmps}


def _device_topic(cfg: Config) -> str:
    return f"{cfg.homeassistant.prefix}/device/{cfg.device.id}/config"


def _component_topic(cfg: Config, platform: str, key: str) -> str:
    return f"{cfg.homeassistant.prefix}/{platform}/{cfg.device.id}/{key}/config"


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def discovery_messages(cfg: Config, board: Optional[dict[str, str]] = None) -> list[DiscoveryMessage]:
    """Retained config messages announcing every entity in the configured layout."""
    if cfg.homeassistant.discovery_mode == "device":
        return [DiscoveryMessage(_device_topic(cfg), _json(device_config(cfg, board)), True)]
    return [DiscoveryMessage(_component_topic(cfg, p, key), _json(conf), True)
            for p, key, conf in entity_configs(cfg, board)]


def _component_removals(cfg: Config) -> list[DiscoveryMessage]:
    return [DiscoveryMessage(_component_topic(cfg, p, key), b"", True) for p, key, _ in entities(cfg)]


def removal_messages(cfg: Config) -> list[DiscoveryMessage]:
    """Empty retained payloads that make HA remove the device (device layout: ONE message)."""
    if cfg.homeassistant.discovery_mode == "device":
        return [DiscoveryMessage(_device_topic(cfg), b"", True)]
    return _component_removals(cfg)


class _Publisher(Protocol):
    def publish_retained(self, suffix: str, payload: bytes, qos: int = 1, sticky: bool = True) -> None: ...

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None: ...

    def stats(self) -> Any: ...


class Discovery:
    """Keeps this device's discovery configs on the broker (see the module docstring).

    ``start()`` publishes (or, when disabled, removes) the configs and, when enabled, subscribes
    to ``<ha_prefix>/status`` and starts one small thread that notices new connections (the
    retained lane has re-sent the configs) and Home Assistant's birth message (re-announce after
    a random delay), calling ``after_announce`` each time. ``stop()`` (or the shared ``stop``
    event) ends it.
    """

    _POLL_S = 0.25

    def __init__(self, cfg: Config, publisher: _Publisher, stop: threading.Event,
                 board: Optional[dict[str, str]] = None, after_announce: Callable[[], None] = lambda: None,
                 rng: Optional[random.Random] = None) -> None:
        self._cfg = cfg
        self._pub = publisher
        self._stop = stop
        self._board = board
        self._after = after_announce
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
                self._pub.publish_retained("/" + m.topic, m.payload, 1, sticky=False)
            log.info("Home Assistant discovery off: removal of %s published", self._cfg.device.id)
            return
        if ha.discovery_mode == "device":  # leave no per-entity configs of the other layout behind
            for m in _component_removals(self._cfg):
                self._pub.publish_retained("/" + m.topic, m.payload, 1, sticky=False)
        self._connects = self._connect_count()
        self._put_configs()
        if self._connects:  # already connected: the configs go out now, not at a later connect
            self._announced()
        self._pub.subscribe(f"/{ha.prefix}/status", self._on_ha_status)
        self._thread = threading.Thread(target=self._run, name="ha-discovery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def announce(self) -> None:
        """Send the configs again now (they are sticky: every new connection sends them anyway)."""
        self._put_configs()
        self._announced()

    def _put_configs(self) -> None:
        for m in discovery_messages(self._cfg, self._board):
            self._pub.publish_retained("/" + m.topic, m.payload, 1, sticky=True)

    def _announced(self) -> None:
        self.announced += 1
        log.debug("Home Assistant discovery announced (%d)", self.announced)
        try:
            self._after()
        except Exception:  # the health hook must not end discovery
            log.exception("after-announce hook failed")

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
            if due:
                self.announce()
            elif connects > self._connects:  # the retained lane re-sent the configs on connecting
                self._announced()
            self._connects = max(self._connects, connects)
