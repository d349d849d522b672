"""Discovery through the real Publisher (and the real daemon) and a real mosquitto: announce on every
connection, HA birth, broker restart, removal, an outbox overflow before the first connection."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.schema import Config, DeviceConfig, HomeAssistantConfig, MqttConfig
from agent.publish import Publisher
from agent.publish.discovery import Discovery, discovery_messages
from tests.helpers.broker import Broker, Collector, free_port
from tests.helpers.daemon import AgentProcess, write_config

pytestmark = pytest.mark.integration


def _cfg(broker: Broker, **ha: object) -> Config:
    return Config(device=DeviceConfig(id="ha-dev"),
                  mqtt=MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5),
                  homeassistant=HomeAssistantConfig(rediscover_jitter_s=0.0, **ha))  # type: ignore[arg-type]


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()


def _announce_once(cfg: Config) -> None:
    """A device with ``cfg`` starts, delivers what discovery publishes, and stops."""
    stop = threading.Event()
    pub = Publisher(cfg, stop)
    pub.start()
    Discovery(cfg, pub, stop).start()
    try:
        assert pub.wait_connected(10) and pub.flush(10)
    finally:
        stop.set()
        pub.stop(2.0)


def _configs(c: Collector) -> list[str]:
    return [m.topic for m in c.on("/config") if m.payload]


def test_announce_rebirth_and_broker_restart(broker: Broker, stop: threading.Event) -> None:
    cfg = _cfg(broker)
    expected = {m.topic for m in discovery_messages(cfg)}
    assert expected == {"homeassistant/device/ha-dev/config"}
    announced: list[float] = []
    pub = Publisher(cfg, stop)
    pub.start()
    disc = Discovery(cfg, pub, stop, after_announce=lambda: announced.append(time.monotonic()))
    disc.start()
    try:
        assert pub.wait_connected(10) and pub.flush(10)  # delivered before we look: must come back retained
        col = Collector(broker, "homeassistant/#")
        assert col.wait_for(lambda c: set(_configs(c)) == expected, 15), _configs(col)
        assert all(m.retain for m in col.on("/config"))  # they were retained before we subscribed
        device = json.loads(col.on("/config")[0].payload)
        assert device["cmps"]["confidence"]["state_topic"] == "digit-agent/ha-dev/health"
        assert col.wait_for(lambda c: len(announced) == 1, 5) and len(announced) == 1  # first connection, once

        n = len(_configs(col))
        col.publish("homeassistant/status", "online")  # HA's birth message
        assert col.wait_for(lambda c: len(_configs(c)) >= n + len(expected), 15)
        col.publish("homeassistant/status", "offline")  # HA's will: nothing to do
        col.close()

        broker.restart()  # persistence off: retained configs are gone until the device re-announces
        assert pub.wait_connected(15)
        col2 = Collector(broker, "homeassistant/device/ha-dev/config")
        assert col2.wait_for(lambda c: set(_configs(c)) == expected, 20), _configs(col2)
        assert col2.wait_for(lambda c: disc.announced >= 3, 5) and len(announced) == disc.announced
        col2.close()
    finally:
        disc.stop()
        pub.stop(2.0)


def test_disabled_discovery_removes_the_entities(broker: Broker, stop: threading.Event) -> None:
    cfg = _cfg(broker)
    seed = Collector(broker, "unused/#")
    for m in discovery_messages(cfg):  # what an earlier, enabled run left on the broker
        seed.publish(m.topic, m.payload, retain=True)
    seed.close()
    watch = Collector(broker, "homeassistant/#")

    _announce_once(dataclasses.replace(cfg, homeassistant=dataclasses.replace(cfg.homeassistant, discovery=False)))
    # The whole device goes with ONE empty retained message.
    assert [(m.topic, m.payload) for m in watch.on("/config") if not m.retain] == \
        [("homeassistant/device/ha-dev/config", b"")]
    watch.close()
    col = Collector(broker, "homeassistant/#")
    try:
        # Retained configs would arrive at once on subscribe; the empty payloads deleted them.
        assert not col.wait_for(lambda c: bool(c.on("/config")), 1.5)
    finally:
        col.close()


def test_single_component_layout_and_switching_back_leaves_no_duplicates(broker: Broker) -> None:
    comp = _cfg(broker, discovery_mode="component")
    _announce_once(comp)
    col = Collector(broker, "homeassistant/#")
    assert col.wait_for(lambda c: set(_configs(c)) == {m.topic for m in discovery_messages(comp)}, 10)
    col.close()
    _announce_once(_cfg(broker))  # back to the device layout: the per-entity configs are cleared
    col2 = Collector(broker, "homeassistant/#")
    try:
        assert col2.wait_for(lambda c: _configs(c) == ["homeassistant/device/ha-dev/config"], 10)
        time.sleep(0.5)
        assert _configs(col2) == ["homeassistant/device/ha-dev/config"], _configs(col2)
    finally:
        col2.close()


def test_overflow_before_the_first_connection_keeps_discovery_and_health_follows(tmp_path: Path) -> None:
    """The finding: outbox_max=50 and the broker up only 12 s after the daemon: the broker held
    nothing but `status online`. Now the retained state has its own lane: the device config and
    ota/status arrive, then one health message right after the announce, and digits as retained
    events for Home Assistant's event and last-digit entities."""
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", Broker(tmp_path, port=port),
                       device={"id": "pi-042"},
                       mqtt={"outbox_max": 50, "reconnect_max_s": 0.5, "digit_debounce_frames": 1},
                       source={"rate_hz": 200.0}, health={"interval_s": 3600.0},
                       homeassistant={"rediscover_jitter_s": 0.0})
    agent = AgentProcess(cfg)
    broker = Broker(tmp_path / "late", port=port)
    (tmp_path / "late").mkdir()
    try:
        assert agent.wait_log("serving device pi-042", 60), agent.output()[-3000:]
        time.sleep(12.0)  # ~2400 results for an outbox of 50 while the broker is away
        broker.start()
        assert agent.wait_log("MQTT connected", 30), agent.output()[-3000:]
        live = Collector(broker, "digit-agent/pi-042/#")  # health is not retained: catch it live
        assert live.wait_for(lambda c: bool(c.on("/health")), 15), agent.output()[-3000:]
        retained = Collector(broker, "homeassistant/#", "digit-agent/pi-042/+", "digit-agent/pi-042/ota/status")
        try:
            assert retained.wait_for(lambda c: {m.topic for m in c.messages if m.retain} >= {
                "homeassistant/device/pi-042/config", "digit-agent/pi-042/ota/status",
                "digit-agent/pi-042/status", "digit-agent/pi-042/digit"}, 15), \
                sorted({m.topic for m in retained.messages if m.retain})
            config = json.loads(retained.on("homeassistant/device/pi-042/config")[0].payload)
            assert config["dev"]["identifiers"] == ["digit_agent_pi-042"]
            digit = retained.on("digit-agent/pi-042/digit")[0].json()
            assert digit["event_type"] == str(digit["digit"]) and 0 <= digit["digit"] <= 9
        finally:
            retained.close()
            live.close()
    finally:
        agent.stop()
        broker.stop()
