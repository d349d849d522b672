"""The Home Assistant entities of one device: platform, object id and platform options (pure).

Which topic feeds what, and why:

* ``health`` (every ``health.interval_s``, and right after every discovery announce so nothing
  reads *unknown* after Home Assistant restarts): the measurements and diagnostics.
* ``digit`` (retained, published by the inference loop when a new digit has been seen for
  ``mqtt.digit_debounce_frames`` frames in a row): the ``event`` entity (types "0"…"9"; HA ignores
  the retained copy it receives on subscribing, so a restart fires nothing) and the ``enum``
  sensor *Last digit* (which does take the retained copy: its state survives an HA restart).
* ``ota/status`` (retained): the *OTA state* sensor, with job, version, reason and progress as
  attributes.

Templates render ``None`` (HA: *unknown*) for every missing value, never a made-up one.
"""

from __future__ import annotations

import json
from typing import Any

from agent.config.schema import Config
from agent.control.ota.startup import STATES as OTA_STATES

__all__ = ["DIGIT_EVENT_TYPES", "INSTALL_PAYLOAD", "OTA_BUSY_STATES", "entities"]

INSTALL_PAYLOAD = '{"cmd":"ota_install","version":"latest"}'
OTA_BUSY_STATES = ("downloading", "verifying", "validating", "activating", "testing")
_NOT_OFFERED = ("rejected", "rolled_back", "disabled")  # a job in these states is not an update to offer
DIGIT_EVENT_TYPES = [str(d) for d in range(10)]
# Raspberry Pi firmware get_throttled bits 0-3: under-voltage, frequency capped, throttled, soft
# temperature limit — *now* (bits 16-19 say "has happened since boot" and are not a current problem).
_THROTTLED_NOW_MASK = 0xF


def _get(path: str) -> str:
    """Jinja expression for the value at dotted ``path`` of the JSON payload, undefined when any part
    is missing (``(x or {}).y``: reading through a missing section is a template error in HA)."""
    expr = "value_json"
    for part in path.split("."):
        expr = f"({expr} or {{}}).{part}"
    return f"{expr} | default(none)"


def _num(path: str, scale: str = "", ndigits: int = 1) -> str:
    """Template: the JSON number at ``path`` (optionally scaled), or None (HA: unknown) if absent."""
    expr = f"(v {scale}) | round({ndigits})" if scale else "v"
    return f"{{% set v = {_get(path)} %}}{{{{ {expr} if v is number else none }}}}"


def _binary(path: str, is_on: str, kind: str = "string") -> str:
    """Template for a binary sensor: ON/OFF from the value at ``path``, None (unknown) if absent."""
    return (f"{{% set v = {_get(path)} %}}"
            f"{{{{ ('ON' if {is_on} else 'OFF') if v is {kind} else none }}}}")


_UPDATE_TEMPLATE = (
    "{%- set o = value_json.ota if value_json.ota is mapping else {} -%}"
    "{%- set m = value_json.model if value_json.model is mapping else {} -%}"
    "{%- set inst = m.version | default(none) -%}"
    "{%- set var = m.variant if m.variant is string else '' -%}"
    "{%- set st = o.state | default('idle') -%}"
    "{%- set tgt = o.version | default(none) -%}"
    "{%- set busy = st in " + json.dumps(OTA_BUSY_STATES) + " -%}"
    "{%- set offered = tgt is number and inst is number and tgt > inst and st not in "
    + json.dumps(_NOT_OFFERED) + " -%}"
    "{%- set p = o.progress | default(0) -%}"
    "{%- set doc = {'installed_version': (inst | string) if inst is number else none,"
    " 'latest_version': ((tgt if offered else inst) | string) if inst is number else none,"
    " 'in_progress': busy,"
    " 'update_percentage': ((p if p is number else 0) * 100) | round(0) if busy else none,"
    # The variant serving (e.g. fp32) is named in the title, not in the version HA compares.
    " 'title': 'Digit model' ~ ((' (' ~ var ~ ')') if var else '')} -%}"
    # Release notes and link of the serving model's card, only when the card has them.
    "{%- if m.release_notes is string -%}{%- set doc = dict(doc, release_summary=m.release_notes[:255]) -%}"
    "{%- endif -%}"
    "{%- if m.release_url is string -%}{%- set doc = dict(doc, release_url=m.release_url) -%}{%- endif -%}"
    "{{ doc | tojson }}"
)

_OTA_ATTRIBUTES = ("{{ {'job': value_json.job | default(none), 'version': value_json.version | default(none),"
                   " 'reason': value_json.reason | default(''), 'progress': value_json.progress | default(none)}"
                   " | tojson }}")


def entities(cfg: Config) -> list[tuple[str, str, dict[str, Any]]]:
    """``(platform, object id, options)`` for every entity, in a stable order; ``state_topic`` etc.
    absolute. Device, origin, availability, ``unique_id`` are added by :mod:`.discovery`."""
    health, digit, ota = cfg.topic("health"), cfg.topic("digit"), cfg.topic("ota/status")
    diag = {"entity_category": "diagnostic"}
    return [
        ("event", "digit", {
            "name": "Digit", "icon": "mdi:numeric", "state_topic": digit, "event_types": DIGIT_EVENT_TYPES}),
        ("sensor", "last_digit", {
            "name": "Last digit", "icon": "mdi:numeric", "device_class": "enum", "options": DIGIT_EVENT_TYPES,
            "state_topic": digit, "value_template": "{{ " + _get("event_type") + " }}"}),
        ("sensor", "confidence", {
            "name": "Confidence", "unit_of_measurement": "%", "state_class": "measurement",
            "suggested_display_precision": 1, "icon": "mdi:gauge", "state_topic": health,
            "value_template": _num("inference.last_confidence", "* 100", 2)}),
        ("sensor", "inference_p99", {
            "name": "Inference p99", "device_class": "duration", "unit_of_measurement": "ms",
            "state_class": "measurement", "suggested_display_precision": 2, "state_topic": health,
            "value_template": _num("inference.p99_us", "/ 1000", 3)}),
        ("sensor", "deadline_misses", {
            "name": "Deadline misses", "state_class": "total_increasing", "icon": "mdi:timer-alert-outline",
            "state_topic": health, "value_template": _num("inference.deadline_misses"), **diag}),
        ("sensor", "frames_dropped", {
            "name": "Frames dropped", "state_class": "total_increasing", "icon": "mdi:image-broken-variant",
            "state_topic": health, "value_template": _num("frames.dropped"), **diag}),
        ("sensor", "cpu_temperature", {
            "name": "CPU temperature", "device_class": "temperature", "unit_of_measurement": "°C",
            "state_class": "measurement", "suggested_display_precision": 1, "state_topic": health,
            "value_template": _num("temperature_c"), **diag}),
        ("sensor", "cpu_percent", {
            "name": "CPU", "unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:cpu-64-bit",
            "suggested_display_precision": 0, "state_topic": health, "value_template": _num("cpu_percent"),
            **diag}),
        ("sensor", "memory_rss", {
            "name": "Memory (RSS)", "device_class": "data_size", "unit_of_measurement": "MiB",
            "state_class": "measurement", "suggested_display_precision": 1, "state_topic": health,
            "value_template": _num("rss_bytes", "/ 1048576", 1), **diag}),
        ("sensor", "started", {
            "name": "Started", "device_class": "timestamp", "state_topic": health,
            "value_template": "{% set v = " + _get("started_at") + " %}{{ v if v is string else none }}",
            **diag}),
        ("sensor", "ota_state", {
            "name": "OTA state", "device_class": "enum", "options": list(OTA_STATES), "icon": "mdi:update",
            "state_topic": ota, "value_template": "{% set v = " + _get("state") + " %}"
            "{{ v if v in " + json.dumps(list(OTA_STATES)) + " else none }}",
            "json_attributes_topic": ota, "json_attributes_template": _OTA_ATTRIBUTES, **diag}),
        ("binary_sensor", "source_connected", {
            "name": "Frame source", "device_class": "connectivity", "state_topic": health,
            "value_template": _binary("source.state", "v == 'up'"), **diag}),
        ("binary_sensor", "power_problem", {
            "name": "Under-voltage or throttling", "device_class": "problem", "state_topic": health,
            "value_template": _binary("throttled", f"(v | int(0, 16)) % {_THROTTLED_NOW_MASK + 1} > 0"),
            **diag}),
        ("update", "model", {
            "name": "Model", "title": "Digit model", "entity_category": "config", "state_topic": health,
            "value_template": _UPDATE_TEMPLATE, "command_topic": cfg.topic("cmd"),
            "payload_install": INSTALL_PAYLOAD, "retain": False}),
    ]
