"""Discovery through the real Publisher and a real mosquitto: announce, HA birth, broker restart, removal."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator

import pytest

from agent.config.schema import Config, DeviceConfig, HomeAssistantConfig, MqttConfig
from agent.publish import Publisher
from agent.publish.discovery import Discovery, discovery_messages
from tests.helpers.broker import Broker, Collector

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


def _configs(c: Collector) -> list[str]:
    return [m.topic for m in c.on("/config") if m.payload]


def test_announce_rebirth_and_broker_restart(broker: Broker, stop: threading.Event) -> None:
    cfg = _cfg(broker)
    expected = {m.topic for m in discovery_messages(cfg)}
    pub = Publisher(cfg, stop)
    pub.start()
    disc = Discovery(cfg, pub, stop)
    disc.start()
    try:
        assert pub.wait_connected(10) and pub.flush(10)  # delivered before we look: must come back retained
        col = Collector(broker, "homeassistant/#")
        assert col.wait_for(lambda c: set(_configs(c)) == expected, 15), _configs(col)
        assert all(m.retain for m in col.on("/config"))  # they were retained before we subscribed
        sensor = json.loads(col.on("/last_digit/config")[0].payload)
        assert sensor["state_topic"] == "digit-agent/ha-dev/health"

        n = len(_configs(col))
        col.publish("homeassistant/status", "online")  # HA's birth message
        assert col.wait_for(lambda c: len(_configs(c)) >= n + len(expected), 15)
        col.publish("homeassistant/status", "offline")  # HA's will: nothing to do
        col.close()

        broker.restart()  # persistence off: retained configs are gone until the device re-announces
        assert pub.wait_connected(15)
        col2 = Collector(broker, "homeassistant/+/ha-dev/+/config")
        assert col2.wait_for(lambda c: set(_configs(c)) == expected, 20), _configs(col2)
        col2.close()
        assert disc.announced >= 3
    finally:
        disc.stop()
        pub.stop(2.0)


def test_disabled_discovery_removes_the_entities(broker: Broker, stop: threading.Event) -> None:
    cfg = _cfg(broker)
    seed = Collector(broker, "unused/#")
    for m in discovery_messages(cfg):  # what an earlier, enabled run left on the broker
        seed.publish(m.topic, m.payload, retain=True)
    seed.close()

    off = dataclasses.replace(cfg, homeassistant=dataclasses.replace(cfg.homeassistant, discovery=False))
    pub = Publisher(off, stop)
    pub.start()
    Discovery(off, pub, stop).start()
    try:
        assert pub.wait_connected(10) and pub.flush(10)
    finally:
        pub.stop(2.0)
    col = Collector(broker, "homeassistant/#")
    try:
        # Retained configs would arrive at once on subscribe; the empty payloads deleted them.
        assert not col.wait_for(lambda c: bool(c.on("/config")), 1.5)
    finally:
        col.close()
