"""Home Assistant discovery payloads, checked against a schema derived from HA's MQTT docs.

The schema below follows Home Assistant's MQTT discovery documentation and the voluptuous schemas
of its MQTT integration (``schemas.py``: common entity + availability + device + origin options;
``sensor.py`` and ``update.py``: platform options). HA drops unknown keys silently
(``extra=REMOVE_EXTRA``), so a typo would go unnoticed there: this test is where it fails.
Templates are rendered with Jinja2's sandbox (HA's template engine) against real health documents.
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
    discovery_messages,
    entity_configs,
    node_id,
    removal_messages,
)

jinja2_sandbox = pytest.importorskip("jinja2.sandbox", reason="jinja2 (installed with torch) renders HA templates")

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


DEVICE: dict[str, Check] = {
    "identifiers": _list_of(_str), "connections": _list_of(_list_of(_str)), "manufacturer": _str,
    "model": _str, "model_id": _str, "name": _str, "hw_version": _str, "serial_number": _str,
    "sw_version": _str, "via_device": _str, "suggested_area": _str, "configuration_url": _str}
ORIGIN: dict[str, Check] = {"name": _str, "sw_version": _str, "support_url": _str}
AVAILABILITY_ITEM: dict[str, Check] = {"topic": _topic, "payload_available": _str, "payload_not_available": _str,
                     "value_template": _template}
COMMON: dict[str, Check] = {
    "availability": _list_of(_obj(AVAILABILITY_ITEM, required=("topic",))),
    "availability_mode": _one_of("all", "any", "latest"), "availability_template": _template,
    "availability_topic": _topic, "payload_available": _str, "payload_not_available": _str,
    "device": _obj(DEVICE), "origin": _obj(ORIGIN, required=("name",)),
    "enabled_by_default": _bool, "entity_category": _one_of("config", "diagnostic"),
    "entity_picture": _str, "icon": lambda v: _str(v) and re.match(r"^[a-z0-9-]+:[a-z0-9-]+$", v) is not None,
    "json_attributes_topic": _topic, "json_attributes_template": _template,
    "default_entity_id": _str, "object_id": _str, "unique_id": _str,
    "qos": _one_of(0, 1, 2), "encoding": lambda v: isinstance(v, str), "name": _str,
    "state_topic": _topic, "value_template": _template,
}
SENSOR = {**COMMON, "device_class": _str, "expire_after": _uint, "force_update": _bool,
          "last_reset_value_template": _template, "options": _list_of(_str),
          "suggested_display_precision": _uint, "unit_of_measurement": _str,
          "state_class": _one_of("measurement", "measurement_angle", "total", "total_increasing")}
UPDATE = {**COMMON, "command_topic": _topic, "device_class": _one_of("firmware"),
          "latest_version_template": _template, "latest_version_topic": _topic, "payload_install": _str,
          "release_summary": _str, "release_url": _str, "retain": _bool, "title": _str,
          "display_precision": _uint}
SCHEMAS = {"sensor": (SENSOR, ("state_topic", "unique_id", "device")),
           "update": (UPDATE, ("state_topic", "unique_id", "device"))}
# HA's DEVICE_CLASS_UNITS for the classes used here.
UNITS = {"duration": {"d", "h", "min", "s", "ms", "µs"}, "temperature": {"°C", "°F", "K"},
         "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"}}


def _cfg(**ha: Any) -> Config:
    return Config(device=DeviceConfig(id="Kitchen_Sensor-2"), homeassistant=HomeAssistantConfig(**ha))


def _problems(component: str, conf: dict[str, Any]) -> list[str]:
    schema, required = SCHEMAS[component]
    out = [f"unknown key {k!r}" for k in conf if k not in schema]
    out += [f"missing {k!r}" for k in required if k not in conf]
    out += [f"bad value for {k!r}: {v!r}" for k, v in conf.items() if k in schema and not schema[k](v)]
    dc = conf.get("device_class")
    if component == "sensor" and dc in UNITS and conf.get("unit_of_measurement") not in UNITS[dc]:
        out.append(f"unit {conf.get('unit_of_measurement')!r} not valid for device_class {dc}")
    if not conf.get("device", {}).get("identifiers"):
        out.append("device needs identifiers")
    if not str(conf.get("default_entity_id", f"{component}.")).startswith(f"{component}."):
        out.append("default_entity_id must start with the component domain")
    return out


def test_every_payload_matches_the_documented_schema() -> None:
    confs = entity_configs(_cfg(), hw_version="aarch64")
    assert {c for c, _, _ in confs} == {"sensor", "update"}
    for component, key, conf in confs:
        assert _problems(component, conf) == [], key


def test_the_schema_check_can_fail() -> None:
    _, _, conf = entity_configs(_cfg())[1]
    assert _problems("sensor", {**conf, "unit_of_measurment": "%"}) == ["unknown key 'unit_of_measurment'"]
    assert _problems("sensor", {**conf, "device_class": "duration", "unit_of_measurement": "%"})
    assert _problems("sensor", {k: v for k, v in conf.items() if k != "state_topic"}) == ["missing 'state_topic'"]
    assert _problems("sensor", {**conf, "state_class": "average"})


def test_topics_ids_and_device_block() -> None:
    msgs = discovery_messages(_cfg(prefix="ha"))
    assert len(msgs) == 8
    for m in msgs:
        assert re.match(r"^ha/(sensor|update)/Kitchen_Sensor-2/[a-zA-Z0-9_-]+/config$", m.topic), m.topic
        assert m.retain
    confs = [json.loads(m.payload) for m in msgs]
    assert len({c["unique_id"] for c in confs}) == len(confs)
    assert {c["device"]["identifiers"][0] for c in confs} == {"digit_agent_Kitchen_Sensor-2"}
    assert all(c["unique_id"].startswith("digit_agent_Kitchen_Sensor-2_") for c in confs)
    assert confs[0]["device"]["name"] == "Kitchen_Sensor-2"
    assert json.loads(discovery_messages(_cfg(node_name="Kitchen counter"))[0].payload)["device"]["name"] \
        == "Kitchen counter"
    assert all(c["availability"][0]["topic"] == "digit-agent/Kitchen_Sensor-2/status" for c in confs)
    update = next(c for c in confs if c["unique_id"].endswith("_model"))
    assert update["command_topic"] == "digit-agent/Kitchen_Sensor-2/cmd"
    assert json.loads(update["payload_install"]) == json.loads(INSTALL_PAYLOAD)


def test_removal_targets_the_same_topics_with_empty_retained_payloads() -> None:
    cfg = _cfg()
    removal = removal_messages(cfg)
    assert [m.topic for m in removal] == [m.topic for m in discovery_messages(cfg)]
    assert all(m.payload == b"" and m.retain for m in removal)


# Home Assistant's discovery topic matcher (homeassistant/components/mqtt/discovery.py).
_HA_TOPIC = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")


@pytest.mark.parametrize("dev", ["pi-042", "Kitchen_Sensor-2", "abcdefghij-_0123", "x" * 64, "7"])
def test_every_valid_device_id_is_its_own_node(dev: str) -> None:
    cfg = parse_config(f"[device]\nid = '{dev}'\n")
    for m in discovery_messages(cfg):
        match = _HA_TOPIC.fullmatch(m.topic.removeprefix("homeassistant/"))
        assert match and match["node_id"] == dev, m.topic
    assert node_id(dev) == dev


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
    ids = ["Pi-7", "pi-7", "pi_7", "PI_7", "pi7"]
    seen: dict[str, set[str]] = {"topics": set(), "unique_ids": set(), "identifiers": set()}
    for dev in ids:
        msgs = discovery_messages(parse_config(f"[device]\nid = '{dev}'\n"))
        confs = [json.loads(m.payload) for m in msgs]
        for kind, values in (("topics", {m.topic for m in msgs}), ("unique_ids", {c["unique_id"] for c in confs}),
                             ("identifiers", {i for c in confs for i in c["device"]["identifiers"]})):
            assert not values & seen[kind], (dev, kind, values & seen[kind])
            seen[kind] |= values


# --- templates, rendered as Home Assistant would -------------------------------------------------
def _render(template: str, payload: bytes) -> str:
    env = jinja2_sandbox.ImmutableSandboxedEnvironment()
    value = payload.decode()
    try:
        value_json = json.loads(value)
    except ValueError:
        value_json = None
    return str(env.from_string(template).render(value=value, value_json=value_json))


def _health(**over: Any) -> bytes:
    doc: dict[str, Any] = {
        "uptime_s": 12.5, "cpu_percent": 3.1, "rss_bytes": 83_886_080, "temperature_c": 51.2,
        "throttled": None, "frames": {"in": 120, "ok": 118, "corrupt": 0, "dropped": 2},
        "inference": {"inferences": 118, "deadline_misses": 1, "p50_us": 410, "p99_us": 1234,
                      "max_us": 2000, "last_digit": 7, "last_confidence": 0.98765},
        "model": {"version": 3, "sha256": "ab" * 32, "path": "/var/lib/digit-agent/slots/a.onnx"},
        "ota": {"state": "idle", "job": None, "version": None, "reason": "", "progress": 0.0},
    }
    doc.update(over)
    return json.dumps(doc).encode()


def _templates() -> dict[str, str]:
    return {key: conf["value_template"] for _, key, conf in entity_configs(_cfg())}


def test_sensor_templates_read_health() -> None:
    t = _templates()
    h = _health()
    assert _render(t["last_digit"], h) == "7"
    assert float(_render(t["confidence"], h)) == pytest.approx(98.77)
    assert float(_render(t["inference_p99"], h)) == pytest.approx(1.234)
    assert _render(t["deadline_misses"], h) == "1"
    assert _render(t["frames_dropped"], h) == "2"
    assert float(_render(t["cpu_temperature"], h)) == pytest.approx(51.2)
    assert float(_render(t["memory_rss"], h)) == pytest.approx(80.0)


def test_missing_values_render_none_which_ha_shows_as_unknown() -> None:
    t = _templates()
    h = _health(temperature_c=None, inference={"last_digit": None, "last_confidence": None})
    assert _render(t["cpu_temperature"], h) == "None"
    assert _render(t["last_digit"], h) == "None"
    assert _render(t["confidence"], h) == "None"
    assert _render(t["inference_p99"], h) == "None"  # key absent altogether


def test_availability_maps_stopped_and_offline_to_not_available() -> None:
    item = entity_configs(_cfg())[0][2]["availability"][0]
    rendered = {p: _render(item["value_template"], p.encode()) for p in ("online", "stopped", "offline")}
    assert rendered == {"online": item["payload_available"], "stopped": item["payload_not_available"],
                        "offline": item["payload_not_available"]}


def _update(ota: Any, version: int = 3) -> dict[str, Any]:
    h = _health(ota=ota, model={"version": version, "sha256": "00" * 32, "path": "x"})
    out: dict[str, Any] = json.loads(_render(_templates()["model"], h))
    return out


def test_update_template_up_to_date_and_without_ota_section() -> None:
    assert _update({"state": "idle", "version": None})["latest_version"] == "3"
    u = _update(None)
    assert (u["installed_version"], u["latest_version"], u["in_progress"]) == ("3", "3", False)
    assert u["update_percentage"] is None


def test_update_template_in_progress_with_percentage() -> None:
    u = _update({"state": "downloading", "job": "j9", "version": 4, "reason": "", "progress": 0.42})
    assert (u["installed_version"], u["latest_version"], u["in_progress"], u["update_percentage"]) \
        == ("3", "4", True, 42)


def test_update_template_offers_a_failed_job_but_not_a_refused_one() -> None:
    failed = _update({"state": "failed", "version": 4, "reason": "stalled", "progress": 0.3})
    assert (failed["latest_version"], failed["in_progress"]) == ("4", False)
    assert "stalled" in failed["release_summary"]
    for state in ("rejected", "rolled_back"):
        u = _update({"state": state, "version": 4, "reason": "accuracy 0.5 < 0.98", "progress": 1.0})
        assert u["latest_version"] == "3", state
        assert "accuracy" in u["release_summary"]


def test_update_template_after_commit_and_older_offer() -> None:
    assert _update({"state": "committed", "version": 4, "progress": 1.0}, version=4)["latest_version"] == "4"
    assert _update({"state": "downloading", "version": 2, "progress": 0.1})["latest_version"] == "3"


def test_update_entity_names_the_variant_serving() -> None:
    h = _health(ota={"state": "idle", "version": None},
                model={"version": 3, "sha256": "00" * 32, "path": "x", "variant": "fp32"})
    u = json.loads(_render(_templates()["model"], h))
    assert u["title"] == "Digit model (fp32)" and u["release_summary"].startswith("serving variant fp32; ")
    assert u["installed_version"] == "3"  # the variant is not part of the version HA compares
    assert _update(None)["title"] == "Digit model"  # a device that does not report it


def test_long_reasons_are_cut_to_ha_limits() -> None:
    u = _update({"state": "failed", "version": 4, "reason": "x" * 1000})
    assert len(u["release_summary"]) <= 255

