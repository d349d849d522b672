"""Discovery templates rendered as Home Assistant renders them (Jinja2's sandbox, HA's template engine)
against real health, digit and ota/status documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.config.schema import Config, DeviceConfig
from agent.publish.discovery import entity_configs

jinja2_sandbox = pytest.importorskip("jinja2.sandbox", reason="jinja2 (installed with torch) renders HA templates")


def _cfg() -> Config:
    return Config(device=DeviceConfig(id="pi-042"))


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
        "started_at": "2026-12-06T05:00:00+00:00", "source": {"state": "up"},
        "ota": {"state": "idle", "job": None, "version": None, "reason": "", "progress": 0.0},
    }
    doc.update(over)
    return json.dumps(doc).encode()


def _templates() -> dict[str, str]:
    return {key: conf["value_template"] for _, key, conf in entity_configs(_cfg()) if "value_template" in conf}


def test_sensor_templates_read_health() -> None:
    t = _templates()
    h = _health()
    assert float(_render(t["confidence"], h)) == pytest.approx(98.77)
    assert float(_render(t["inference_p99"], h)) == pytest.approx(1.234)
    assert _render(t["deadline_misses"], h) == "1"
    assert _render(t["frames_dropped"], h) == "2"
    assert float(_render(t["cpu_temperature"], h)) == pytest.approx(51.2)
    assert float(_render(t["cpu_percent"], h)) == pytest.approx(3.1)
    assert float(_render(t["memory_rss"], h)) == pytest.approx(80.0)
    assert _render(t["started"], h) == "2026-12-06T05:00:00+00:00"
    assert _render(t["source_connected"], h) == "ON"
    assert _render(t["source_connected"], _health(source={"state": "down"})) == "OFF"


@pytest.mark.parametrize(("throttled", "state"), [("0x0", "OFF"), ("0x50000", "OFF"), ("0x50005", "ON"),
                                                  ("0x1", "ON"), ("0x4", "ON"), (None, "None")])
def test_power_problem_is_a_current_throttling_bit(throttled: Any, state: str) -> None:
    """Bits 0-3 are "now"; bits 16-19 only say it happened since boot (HA would show a stale problem)."""
    assert _render(_templates()["power_problem"], _health(throttled=throttled)) == state


def test_digit_topic_feeds_the_enum_sensor() -> None:
    doc = json.dumps({"event_type": "7", "digit": 7, "confidence": 0.99}).encode()
    assert _render(_templates()["last_digit"], doc) == "7"


def test_ota_state_sensor_reads_the_retained_ota_status() -> None:
    conf = next(c for _, k, c in entity_configs(_cfg()) if k == "ota_state")
    doc = json.dumps({"state": "rejected", "job": "j1", "version": 4, "reason": "accuracy 0.5 < 0.98",
                      "progress": 1.0, "ts": 1.0}).encode()
    assert _render(conf["value_template"], doc) == "rejected"
    assert _render(conf["value_template"], b'{"state": "bogus"}') == "None"
    attrs = json.loads(_render(conf["json_attributes_template"], doc))
    assert attrs == {"job": "j1", "version": 4, "reason": "accuracy 0.5 < 0.98", "progress": 1.0}


def test_missing_values_render_none_which_ha_shows_as_unknown() -> None:
    t = _templates()
    h = _health(temperature_c=None, inference={"last_digit": None, "last_confidence": None}, source=None)
    for key in ("cpu_temperature", "confidence", "inference_p99", "source_connected", "power_problem"):
        assert _render(t[key], h) == "None", key
    h2 = json.dumps({"ts": 1.0}).encode()  # a health document with almost nothing in it
    for key in ("started", "cpu_percent", "memory_rss", "deadline_misses"):
        assert _render(t[key], h2) == "None", key


def test_availability_maps_stopped_and_offline_to_not_available() -> None:
    item = entity_configs(_cfg())[0][2]["availability"][0]
    rendered = {p: _render(item["value_template"], p.encode()) for p in ("online", "stopped", "offline")}
    assert rendered == {"online": item["payload_available"], "stopped": item["payload_not_available"],
                        "offline": item["payload_not_available"]}


def _update(ota: Any, version: Any = 3, **model: Any) -> dict[str, Any]:
    h = _health(ota=ota, model={"version": version, "sha256": "00" * 32, "path": "x", **model})
    out: dict[str, Any] = json.loads(_render(_templates()["model"], h))
    return out


def test_update_template_up_to_date_and_without_ota_section() -> None:
    assert _update({"state": "idle", "version": None})["latest_version"] == "3"
    u = _update(None)
    assert (u["installed_version"], u["latest_version"], u["in_progress"]) == ("3", "3", False)
    assert u["update_percentage"] is None


def test_update_template_never_renders_the_string_none() -> None:
    for version in (None, "x"):
        u = _update({"state": "downloading", "version": 4, "progress": 0.5}, version=version)
        assert u["installed_version"] is None and u["latest_version"] is None, u
    assert "None" not in _render(_templates()["model"], json.dumps({"ts": 1}).encode())


def test_update_template_in_progress_with_percentage() -> None:
    u = _update({"state": "downloading", "job": "j9", "version": 4, "reason": "", "progress": 0.42})
    assert (u["installed_version"], u["latest_version"], u["in_progress"], u["update_percentage"]) \
        == ("3", "4", True, 42)


def test_update_template_offers_a_failed_job_but_not_a_refused_one() -> None:
    failed = _update({"state": "failed", "version": 4, "reason": "stalled", "progress": 0.3})
    assert (failed["latest_version"], failed["in_progress"]) == ("4", False)
    for state in ("rejected", "rolled_back"):
        u = _update({"state": state, "version": 4, "reason": "accuracy 0.5 < 0.98", "progress": 1.0})
        assert u["latest_version"] == "3", state


def test_update_template_after_commit_and_older_offer() -> None:
    assert _update({"state": "committed", "version": 4, "progress": 1.0}, version=4)["latest_version"] == "4"
    assert _update({"state": "downloading", "version": 2, "progress": 0.1})["latest_version"] == "3"


def test_update_entity_names_the_variant_serving() -> None:
    u = _update({"state": "idle", "version": None}, variant="fp32")
    assert u["title"] == "Digit model (fp32)" and "release_summary" not in u
    assert u["installed_version"] == "3"  # the variant is not part of the version HA compares
    assert _update(None)["title"] == "Digit model"  # a device that does not report it


def test_release_summary_and_url_only_from_the_model_card() -> None:
    """OTA state is its own sensor; release_summary carries release notes only (and only when the
    card has them), cut to HA's 255 characters."""
    u = _update({"state": "failed", "version": 4, "reason": "stalled", "progress": 0.3})
    assert "release_summary" not in u and "release_url" not in u
    u = _update({"state": "idle"}, release_notes="n" * 1000, release_url="https://example.org/models/v3")
    assert u["release_summary"] == "n" * 255 and u["release_url"] == "https://example.org/models/v3"
