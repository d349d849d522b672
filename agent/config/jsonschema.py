"""A JSON Schema of ``config.toml``, generated from the typed model in :mod:`agent.config.schema`.

Same keys, types, limits, choices, patterns, descriptions and defaults as the loader enforces, so an
editor (Taplo / "Even Better TOML": ``#:schema ./config.schema.json`` on the first line) completes
and checks the file as it is typed. Draft-07: what Taplo and most validators implement.
Rules between keys (``source.ring_slots`` > ``inference.batch_max``, ``tls_cert`` with ``tls_key``,
...) are the loader's alone: ``digit-agent check-config`` remains the final word.
``digit-agent config-schema`` prints it; ``config.schema.json`` at the top of the repository is its
output (a test keeps the two equal).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, get_args, get_origin, get_type_hints

from agent.config.schema import RESERVED_DEVICE_IDS, Config

__all__ = ["config_schema", "schema_text"]

_DRAFT = "http://json-schema.org/draft-07/schema#"
# The loader refuses control characters in every string (they would end up in topics and logs).
_NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"
_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _anchored(pattern: str) -> str:
    """The loader uses ``re.fullmatch``; JSON Schema's ``pattern`` searches, so anchor both ends."""
    return pattern if pattern.startswith("^") and pattern.endswith("$") else f"^(?:{pattern})$"


def _scalar(ftype: Any, meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": _TYPES[ftype]}
    if "min" in meta:
        out["minimum"] = meta["min"]
    if "max" in meta:
        out["maximum"] = meta["max"]
    if "choices" in meta:
        out["enum"] = list(meta["choices"])
    if ftype is str:
        out["pattern"] = _NO_CONTROL
        if "pattern" in meta:
            out["allOf"] = [{"pattern": _anchored(meta["pattern"])}]
    return out


def _field(ftype: Any, f: dataclasses.Field[Any]) -> dict[str, Any]:
    meta = dict(f.metadata)
    desc = meta.get("doc", "")
    if meta.get("rule"):
        desc += f" ({meta['rule']})"
    if meta.get("path"):
        desc += "; a relative path resolves against the config file's directory"
    if get_origin(ftype) is tuple:
        item = get_args(ftype)[0]
        out: dict[str, Any] = {"type": "array", "items": {"type": _TYPES[item]}}
        if "item_pattern" in meta:
            out["items"]["pattern"] = _anchored(meta["item_pattern"])
        if "length" in meta:
            out["minItems"], out["maxItems"] = meta["length"]
        if "lengths" in meta:
            out["oneOf"] = [{"minItems": n, "maxItems": n} for n in meta["lengths"]]
        default: Any = list(f.default)  # type: ignore[arg-type]  # tuple fields default to a tuple
    else:
        out = _scalar(ftype, meta)
        default = f.default
    return {"description": desc, **out, "default": default}


def _table(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    props = {f.name: _field(hints[f.name], f) for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    out = {"type": "object", "additionalProperties": False, "properties": props}
    return {"description": doc, **out} if doc and not doc.startswith(cls.__name__ + "(") else out


def config_schema() -> dict[str, Any]:
    """The schema as a JSON-ready dict."""
    hints = get_type_hints(Config)
    tables = {f.name: _table(hints[f.name]) for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
    device_id = tables["device"]["properties"]["id"]
    device_id["not"] = {"enum": list(RESERVED_DEVICE_IDS)}
    return {
        "$schema": _DRAFT,
        "title": "digit-agent configuration (config.toml)",
        "description": "Every key is optional; unknown keys are refused. Generated from agent/config/schema.py "
                       "by `digit-agent config-schema`; rules between keys are checked by "
                       "`digit-agent check-config` only.",
        "type": "object",
        "additionalProperties": False,
        "properties": tables,
    }


def schema_text() -> str:
    """The schema as the file ships it (stable key order, two-space indent, final newline)."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
