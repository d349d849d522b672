"""``fleet retire`` against a real mosquitto: a stopped device's retained status, OTA status and every
form of Home Assistant discovery config are cleared; a neighbour's and unrelated configs are kept."""

from __future__ import annotations

import json
import threading

import pytest

from agent.config.schema import Config, DeviceConfig, MqttConfig
from agent.publish import Publisher
from agent.publish.discovery import Discovery, discovery_messages
from tests.helpers.broker import Broker, Collector
from tools.fleet.__main__ import main as fleet

pytestmark = pytest.mark.integration

# The agent publishes the device-based form; these are what the per-entity layout (discovery_mode =
# "component", or an older release) and a hand-made config leave behind.
_PER_ENTITY = ("homeassistant/sensor/ha-dev/last_digit/config",
               {"device": {"identifiers": ["digit_agent_ha-dev"]}, "unique_id": "digit_agent_ha-dev_last_digit",
                "state_topic": "digit-agent/ha-dev/health"})
_NO_NODE = ("homeassistant/sensor/ha_dev_extra/config",
            {"~": "digit-agent/ha-dev", "stat_t": "~/health", "unique_id": "ha_dev_extra"})
_NEIGHBOUR = ("homeassistant/sensor/other/last_digit/config",
              {"device": {"identifiers": ["digit_agent_other"]}, "state_topic": "digit-agent/other/health"})
_UNRELATED = ("homeassistant/light/kitchen/config", {"unique_id": "kitchen", "command_topic": "zigbee/kitchen/set"})


def _retained(broker: Broker, *topics: str) -> dict[str, bytes]:
    col = Collector(broker, *topics)
    try:
        col.wait_for(lambda c: False, 1.0)  # retained messages come right after SUBACK
        with col._lock:
            return {m.topic: m.payload for m in col.messages if m.retain and m.payload}
    finally:
        col.close()


def _args(broker: Broker, *extra: str) -> list[str]:
    return ["retire", "--host", broker.host, "--port", str(broker.port), "--device", "ha-dev",
            "--settle", "0.5", *extra]


def test_retire_clears_every_retained_message_of_the_device(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    cfg = Config(device=DeviceConfig(id="ha-dev"), mqtt=MqttConfig(host=broker.host, port=broker.port))
    pub = Publisher(cfg, stop)
    pub.start()
    Discovery(cfg, pub, stop).start()
    pub.publish("ota/status", json.dumps({"job": "j1", "state": "committed"}).encode(), 1, retain=True)
    assert pub.wait_connected(10) and pub.flush(10)
    col = Collector(broker, "unused/ack")  # a publisher; the collector needs a subscription
    for topic, doc in (_PER_ENTITY, _NO_NODE, _NEIGHBOUR, _UNRELATED):
        col.publish(topic, json.dumps(doc), retain=True)
    col.publish("digit-agent/other/status", "online", retain=True)
    col.close()
    own = {"digit-agent/ha-dev/status", "digit-agent/ha-dev/ota/status", _PER_ENTITY[0], _NO_NODE[0]}
    own |= {m.topic for m in discovery_messages(cfg)}

    # Still running: refused, nothing removed.
    assert fleet(_args(broker)) == 1
    assert "still reports online" in capsys.readouterr().err
    before = _retained(broker, "#")
    assert own <= set(before)

    stop.set()
    pub.stop(10)  # publishes retained "stopped"
    before["digit-agent/ha-dev/status"] = b"stopped"
    assert _retained(broker, "#") == before

    assert fleet(_args(broker, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert f"would remove {len(own)} retained message(s)" in out
    assert _retained(broker, "#") == before  # nothing removed

    assert fleet(_args(broker)) == 0
    out = capsys.readouterr().out
    for topic in own:
        assert f"  {topic}\n" in out
    assert f"removed {len(own)} retained message(s); checked: none left" in out
    after = _retained(broker, "#")
    assert set(after) == set(before) - own
    assert {_NEIGHBOUR[0], _UNRELATED[0], "digit-agent/other/status"} <= set(after)

    # Again: nothing left to remove.
    assert fleet(_args(broker)) == 0
    assert "removing 0 retained message(s) (none found)" in capsys.readouterr().out
