"""Home Assistant discovery payloads, checked against a schema table written from HA's MQTT docs.

The table follows Home Assistant's MQTT discovery documentation and the voluptuous schemas of its
MQTT integration: ``schemas.py`` (common entity, availability, device, origin options; the device
discovery payload: ``dev``, ``o`` required, ``cmps`` with a ``p``latform and a ``unique_id`` each, the
shared options it passes down), and the platform modules ``sensor.py``, ``binary_sensor.py``,
``event.py``, ``update.py``, ``button.py``. HA drops unknown keys silently (``extra=REMOVE_EXTRA``),
so a typo would go unnoticed there: this test is where it fails.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import pytest

from agent.config import ConfigError, parse_config
from agent.config.schema import Config, DeviceConfig, HomeAssistantConfig
from agent.publish.discovery import (
    INSTALL_PAYLOAD,
    device_block,
    discovery_messages,
    entity_configs,
    removal_messages,
    unique_id,
)

Check = Callable[[Any], bool]


def _str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _one_of(*choices: Any) -> Check:
    return lambda v: v in choices


def _topic(v: Any) -> bool:  # a publish/subscribe topic without wildcards
    return _str(v) and not any(c in v for c in "+#\x00") and len(v.encode()) <= 65535


def _template(v: Any) -> bool:
    return _str(v) and "{{" in v


def _list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and bool(v) and all(check(x) for x in v)


def _obj(schema: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(v: Any) -> bool:
        return (isinstance(v, dict) and set(v) <= set(schema) and all(k in v for k in required)
                and all(schema[k](x) for k, x in v.items()))
    return check


def _mac_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_str(x) for x in v)


DEVICE: dict[str, Check] = {
    "identifiers": _list_of(_str), "connections": _list_of(_mac_pair), "manufacturer": _str,
    "model": _str, "model_id": _str, "name": _str, "hw_version": _str, "serial_number": _str,
    "sw_version": _str, "via_device": _str, "suggested_area": _str, "configuration_url": _str}
ORIGIN: dict[str, Check] = {"name": _str, "sw_version": _str, "support_url": _str}
AVAILABILITY_ITEM: dict[str, Check] = {"topic": _topic, "payload_available": _str, "payload_not_available": _str,
                                       "value_template": _template}
AVAILABILITY: dict[str, Check] = {
    "availability": _list_of(_obj(AVAILABILITY_ITEM, required=("topic",))),
    "availability_mode": _one_of("all", "any", "latest"), "availability_template": _template,
    "availability_topic": _topic, "payload_available": _str, "payload_not_available": _str}
COMMON: dict[str, Check] = {
    **AVAILABILITY, "device": _obj(DEVICE), "origin": _obj(ORIGIN, required=("name",)),
    "enabled_by_default": _bool, "entity_category": _one_of("config", "diagnostic"),
    "entity_picture": _str, "icon": lambda v: _str(v) and re.match(r"^[a-z0-9-]+:[a-z0-9-]+$", v) is not None,
    "json_attributes_topic": _topic, "json_attributes_template": _template,
    "default_entity_id": _str, "object_id": _str, "unique_id": _str, "message_expiry_interval": _uint,
    "qos": _one_of(0, 1, 2), "encoding": lambda v: isinstance(v, str), "name": _str,
    "state_topic": _topic, "value_template": _template,  # MQTT_RO_SCHEMA
}
SENSOR = {**COMMON, "device_class": _str, "expire_after": _uint, "force_update": _bool,
          "last_reset_value_template": _template, "options": _list_of(_str),
          "suggested_display_precision": _uint, "unit_of_measurement": _str,
          "state_class": _one_of("measurement", "measurement_angle", "total", "total_increasing")}
BINARY_SENSOR = {**COMMON, "device_class": _one_of("connectivity", "problem", "running", "update", "power"),
                 "expire_after": _uint, "force_update": _bool, "off_delay": _uint, "payload_on": _str,
                 "payload_off": _str}
EVENT = {**COMMON, "device_class": _one_of("button", "doorbell", "motion"), "event_types": _list_of(_str)}
UPDATE = {**COMMON, "command_topic": _topic, "device_class": _one_of("firmware"),
          "latest_version_template": _template, "latest_version_topic": _topic, "payload_install": _str,
          "release_summary": _str, "release_url": _str, "retain": _bool, "title": _str,
          "display_precision": _uint}
BUTTON = {**{k: v for k, v in COMMON.items() if k not in ("state_topic", "value_template")},
          "command_topic": _topic, "command_template": _template, "payload_press": _str, "retain": _bool,
          "device_class": _one_of("identify", "restart", "update")}
_ENTITY = ("unique_id", "device")
SCHEMAS: dict[str, tuple[dict[str, Check], tuple[str, ...]]] = {
    "sensor": (SENSOR, ("state_topic", *_ENTITY)), "binary_sensor": (BINARY_SENSOR, ("state_topic", *_ENTITY)),
    "event": (EVENT, ("state_topic", "event_types", *_ENTITY)), "update": (UPDATE, ("state_topic", *_ENTITY)),
    "button": (BUTTON, ("command_topic", *_ENTITY))}
# The device discovery payload (schemas.DEVICE_DISCOVERY_SCHEMA) and what it hands to every component.
DEVICE_PAYLOAD: dict[str, Check] = {
    **AVAILABILITY, "device": _obj(DEVICE), "origin": _obj(ORIGIN, required=("name",)), "components": lambda v:
    isinstance(v, dict) and bool(v), "state_topic": _topic, "command_topic": _topic,
    "message_expiry_interval": _uint, "qos": _one_of(0, 1, 2), "encoding": lambda v: isinstance(v, str)}
SHARED_OPTIONS = ("availability", "availability_mode", "availability_template", "availability_topic",
                  "command_topic", "encoding", "message_expiry_interval", "payload_available",
                  "payload_not_available", "state_topic", "qos")
_ABBREVIATIONS = {"dev": "device", "o": "origin", "cmps": "components", "p": "platform"}
# HA's DEVICE_CLASS_UNITS for the classes used here.
UNITS = {"duration": {"d", "h", "min", "s", "ms", "µs"}, "temperature": {"°C", "°F", "K"},
         "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"}}


def _cfg(**ha: Any) -> Config:
    return Config(device=DeviceConfig(id="Kitchen_Sensor-2"), homeassistant=HomeAssistantConfig(**ha))


BOARD = {"model": "Raspberry Pi 4 Model B Rev 1.4", "serial": "10000000abcdef01", "mac": "dc:a6:32:01:02:03"}


def _problems(component: str, conf: dict[str, Any]) -> list[str]:
    schema, required = SCHEMAS[component]
    out = [f"unknown key {k!r}" for k in conf if k not in schema]
    out += [f"missing {k!r}" for k in required if k not in conf]
    out += [f"bad value for {k!r}: {v!r}" for k, v in conf.items() if k in schema and not schema[k](v)]
    dc = conf.get("device_class")
    if component == "sensor":
        if dc in UNITS and conf.get("unit_of_measurement") not in UNITS[dc]:
            out.append(f"unit {conf.get('unit_of_measurement')!r} not valid for device_class {dc}")
        if (dc == "enum") != ("options" in conf):
            out.append("options go with device_class enum, and only with it")
        if dc in ("enum", "timestamp") and ({"unit_of_measurement", "state_class"} & set(conf)):
            out.append(f"a {dc} sensor has no unit and no state_class")
    if not conf.get("device", {}).get("identifiers"):
        out.append("device needs identifiers")
    if not str(conf.get("default_entity_id", f"{component}.")).startswith(f"{component}."):
        out.append("default_entity_id must start with the component domain")
    return out


def _expand(d: dict[str, Any]) -> dict[str, Any]:
    return {_ABBREVIATIONS.get(k, k): v for k, v in d.items()}


def _device_problems(payload: dict[str, Any]) -> list[str]:
    """The device discovery payload as HA processes it: schema, then each component merged with the
    device, origin and shared options and checked against its platform's schema."""
    doc = _expand(payload)
    out = [f"unknown key {k!r}" for k in doc if k not in DEVICE_PAYLOAD]
    out += [f"missing {k!r}" for k in ("device", "origin", "components") if k not in doc]
    out += [f"bad value for {k!r}" for k, v in doc.items() if k in DEVICE_PAYLOAD and not DEVICE_PAYLOAD[k](v)]
    for key, comp in doc.get("components", {}).items():
        comp = _expand(comp)
        platform = comp.pop("platform", None)
        if platform not in SCHEMAS:
            out.append(f"{key}: unsupported platform {platform!r}")
            continue
        merged = {**{o: doc[o] for o in SHARED_OPTIONS if o in doc}, **comp,
                  **{k: doc[k] for k in ("device", "origin") if k in doc}}
        out += [f"{key}: {p}" for p in _problems(platform, merged)]
    return out


def test_device_discovery_is_one_message_matching_the_documented_schema() -> None:
    (msg,) = discovery_messages(_cfg(), BOARD)
    assert msg.topic == "homeassistant/device/Kitchen_Sensor-2/config" and msg.retain
    payload = json.loads(msg.payload)
    assert _device_problems(payload) == []
    platforms = {c["p"] for c in payload["cmps"].values()}
    assert platforms == {"sensor", "binary_sensor", "event", "update"}, platforms
    assert set(payload["cmps"]) == {key for _, key, _ in entity_configs(_cfg())}


def test_single_component_discovery_matches_the_documented_schema() -> None:
    confs = entity_configs(_cfg(), BOARD)
    for component, key, conf in confs:
        assert _problems(component, conf) == [], key
    msgs = discovery_messages(_cfg(discovery_mode="component"), BOARD)
    assert [m.topic for m in msgs] == [f"homeassistant/{c}/Kitchen_Sensor-2/{k}/config" for c, k, _ in confs]
    assert [json.loads(m.payload) for m in msgs] == [c for _, _, c in confs]


def test_the_schema_check_can_fail() -> None:
    conf = next(c for p, k, c in entity_configs(_cfg()) if k == "confidence")
    assert _problems("sensor", {**conf, "unit_of_measurment": "%"}) == ["unknown key 'unit_of_measurment'"]
    assert _problems("sensor", {**conf, "device_class": "duration", "unit_of_measurement": "%"})
    assert _problems("sensor", {k: v for k, v in conf.items() if k != "state_topic"}) == ["missing 'state_topic'"]
    assert _problems("sensor", {**conf, "state_class": "average"})
    assert _problems("sensor", {**conf, "options": ["1"]})  # options without enum
    ev = next(c for p, k, c in entity_configs(_cfg()) if p == "event")
    assert _problems("event", {k: v for k, v in ev.items() if k != "event_types"}) == ["missing 'event_types'"]
    payload = json.loads(discovery_messages(_cfg())[0].payload)
    assert _device_problems({k: v for k, v in payload.items() if k != "o"}) == ["missing 'origin'"]
    bad = {**payload, "cmps": {**payload["cmps"], "x": {"p": "sensor", "unique_id": "u"}}}
    assert _device_problems(bad) == ["x: missing 'state_topic'"]


def test_device_block_ids_and_topics() -> None:
    payload = json.loads(discovery_messages(_cfg(prefix="ha"), BOARD)[0].payload)
    dev = payload["dev"]
    assert dev["identifiers"] == ["digit_agent_Kitchen_Sensor-2"] and dev["name"] == "Kitchen_Sensor-2"
    assert (dev["hw_version"], dev["serial_number"], dev["connections"]) == \
        (BOARD["model"], BOARD["serial"], [["mac", BOARD["mac"]]])
    assert "hw_version" not in device_block(_cfg(), {}) and "connections" not in device_block(_cfg(), {})
    assert device_block(_cfg(node_name="Kitchen counter"))["name"] == "Kitchen counter"
    assert payload["availability"][0]["topic"] == "digit-agent/Kitchen_Sensor-2/status"
    cmps = payload["cmps"]
    assert {k: c["unique_id"] for k, c in cmps.items()} == {k: unique_id("Kitchen_Sensor-2", k) for k in cmps}
    assert all(c["unique_id"].startswith("digit_agent_Kitchen_Sensor-2_") for c in cmps.values())
    assert len({c["unique_id"] for c in cmps.values()}) == len(cmps)
    assert cmps["model"]["command_topic"] == "digit-agent/Kitchen_Sensor-2/cmd"
    assert json.loads(cmps["model"]["payload_install"]) == json.loads(INSTALL_PAYLOAD)
    assert cmps["digit"]["event_types"] == [str(d) for d in range(10)]
    assert cmps["digit"]["state_topic"] == cmps["last_digit"]["state_topic"] == "digit-agent/Kitchen_Sensor-2/digit"
    assert cmps["ota_state"]["state_topic"] == "digit-agent/Kitchen_Sensor-2/ota/status"


def test_removal_is_one_empty_retained_message_per_device() -> None:
    assert [(m.topic, m.payload, m.retain) for m in removal_messages(_cfg())] == \
        [("homeassistant/device/Kitchen_Sensor-2/config", b"", True)]
    comp = _cfg(discovery_mode="component")
    assert [m.topic for m in removal_messages(comp)] == [m.topic for m in discovery_messages(comp)]
    assert all(m.payload == b"" and m.retain for m in removal_messages(comp))


# Home Assistant's discovery topic matcher (homeassistant/components/mqtt/discovery.py).
_HA_TOPIC = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")


@pytest.mark.parametrize("dev", ["pi-042", "Kitchen_Sensor-2", "abcdefghij-_0123", "x" * 64, "7"])
@pytest.mark.parametrize("mode", ["device", "component"])
def test_every_valid_device_id_is_its_own_node(dev: str, mode: str) -> None:
    cfg = parse_config(f"[device]\nid = '{dev}'\n[homeassistant]\ndiscovery_mode = '{mode}'\n")
    for m in discovery_messages(cfg):
        match = _HA_TOPIC.fullmatch(m.topic.removeprefix("homeassistant/"))
        assert match, m.topic
        # Device discovery: homeassistant/device/<object_id = id>/config; components: node_id = id.
        assert (match["object_id"] if mode == "device" else match["node_id"]) == dev, m.topic


def test_ids_that_would_collide_are_refused_and_valid_ids_never_collide() -> None:
    """'Pi-7', 'pi.7' and 'pi_7' once mapped to one node, unique_id and device: now '.' is refused
    by the config and the valid ids are used verbatim, so each keeps its own."""
    with pytest.raises(ConfigError, match=r"device\.id: 'pi\.7' is not allowed: 1 to 64 characters"):
        parse_config("[device]\nid = 'pi.7'\n")
    for bad in ("a b", "a/b", "a+b", "a#b", "", "é", "x" * 65):
        with pytest.raises(ConfigError, match=r"device\.id"):
            parse_config("[device]\nid = " + json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match=r"device\.id: 'group' is reserved"):
        parse_config("[device]\nid = 'group'\n")
    seen: dict[str, set[str]] = {"topics": set(), "unique_ids": set(), "identifiers": set()}
    for dev in ["Pi-7", "pi-7", "pi_7", "PI_7", "pi7"]:
        cfg = parse_config(f"[device]\nid = '{dev}'\n[homeassistant]\ndiscovery_mode = 'component'\n")
        msgs = discovery_messages(cfg) + discovery_messages(parse_config(f"[device]\nid = '{dev}'\n"))
        confs = [c for _, _, c in entity_configs(cfg)]
        for kind, values in (("topics", {m.topic for m in msgs}), ("unique_ids", {c["unique_id"] for c in confs}),
                             ("identifiers", {i for c in confs for i in c["device"]["identifiers"]})):
            assert not values & seen[kind], (dev, kind, values & seen[kind])
            seen[kind] |= values
