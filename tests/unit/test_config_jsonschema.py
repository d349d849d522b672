"""The JSON Schema of config.toml: generated from the typed model, shipped as config.schema.json, accepts
the shipped configs and every limit value, and refuses what ``check-config`` refuses key by key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from agent.config import ConfigError, parse_config
from agent.config.jsonschema import config_schema, schema_text
from agent.config.schema import RESERVED_DEVICE_IDS, Config

jsonschema = pytest.importorskip("jsonschema")
tomli_w = pytest.importorskip("tomli_w")

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
_VALIDATOR = jsonschema.Draft7Validator(config_schema())


def _fields() -> list[tuple[str, str, Any, dataclasses.Field[Any]]]:
    out = []
    for table in dataclasses.fields(Config):
        if table.metadata.get("internal"):
            continue
        cls = get_type_hints(Config)[table.name]
        hints = get_type_hints(cls)
        out += [(table.name, f.name, hints[f.name], f) for f in dataclasses.fields(cls)]
    return out


def _check_config_accepts(doc: dict[str, Any]) -> bool:
    try:
        parse_config(tomli_w.dumps(doc), "/tmp/config.toml")
    except ConfigError:
        return False
    return True


def test_shipped_schema_is_the_generated_one() -> None:
    assert (REPO / "config.schema.json").read_text(encoding="utf-8") == schema_text(), \
        "regenerate: digit-agent config-schema > config.schema.json"
    out = subprocess.run([sys.executable, "-m", "agent", "config-schema"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out == schema_text()
    jsonschema.Draft7Validator.check_schema(config_schema())


@pytest.mark.parametrize("path", ["config.toml", "systemd/config.example.toml"])
def test_shipped_configs_are_valid(path: str) -> None:
    text = (REPO / path).read_text(encoding="utf-8")
    errors = [e.message for e in _VALIDATOR.iter_errors(tomllib.loads(text))]
    assert errors == []


def test_config_toml_names_the_schema_for_editors() -> None:
    assert (REPO / "config.toml").read_text(encoding="utf-8").startswith("#:schema ./config.schema.json\n")


def test_every_key_has_its_description_and_default() -> None:
    props = config_schema()["properties"]
    for table, key, _, f in _fields():
        entry = props[table]["properties"][key]
        assert entry["description"].startswith(f.metadata["doc"])
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        assert entry["default"] == default
        assert set(props[table]["properties"]) == {g.name for g in dataclasses.fields(type(getattr(Config(), table)))}


def _good_values(ftype: Any, f: dataclasses.Field[Any]) -> list[Any]:
    meta = f.metadata
    vals = [list(f.default) if isinstance(f.default, tuple) else f.default]
    if "min" in meta:
        vals += [meta["min"], meta["max"]]
    vals += list(meta.get("choices", ()))
    return vals


_STRINGS = ["", "a b", "#", "+", "a/b", "é", "x" * 300, "ok-1", "group"]


def _bad_values(ftype: Any, f: dataclasses.Field[Any]) -> list[Any]:
    meta = f.metadata
    if get_origin(ftype) is tuple:
        item = get_args(ftype)[0]
        bad: list[Any] = ["x", [True], [1.5]] if item is int else ["x", [1], [True]]
        if "lengths" in meta:
            bad += [[0] * n for n in range(6) if n not in meta["lengths"]]
        if "length" in meta:
            bad.append(["g"] * (meta["length"][1] + 1))
        if "item_pattern" in meta:
            bad += [[s] for s in _STRINGS if not re.fullmatch(meta["item_pattern"], s)]
        return bad
    if ftype is bool:
        return [1, "true"]
    if ftype in (int, float):
        bad = ["1", True]
        if ftype is int:
            bad.append(1.5)  # (an integral float such as 2.0 is the one thing JSON cannot tell from 2)
        if "min" in meta:
            bad += [meta["min"] - 1, meta["max"] + 1]
        return bad
    bad = [5, True, "a\x01b", "line\nbreak"]
    if "choices" in meta:
        bad.append("nope")
    if "pattern" in meta:
        bad += [s for s in _STRINGS if not re.fullmatch(meta["pattern"], s)]
    return bad


_CASES = [(t, k, v, True) for t, k, ft, f in _fields() for v in _good_values(ft, f)]
_CASES += [(t, k, v, False) for t, k, ft, f in _fields() for v in _bad_values(ft, f)]


# Rules between keys are check-config's alone; a key at its limit gets a partner that satisfies them.
_PARTNERS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("mqtt", "reconnect_min_s"): {"mqtt": {"reconnect_max_s": 3600.0}},
    ("mqtt", "reconnect_max_s"): {"mqtt": {"reconnect_min_s": 0.05}},
    ("source", "reopen_min_s"): {"source": {"reopen_max_s": 600.0}},
    ("source", "reopen_max_s"): {"source": {"reopen_min_s": 0.01}},
    ("source", "ring_slots"): {"inference": {"batch_max": 1}},
    ("inference", "batch_max"): {"source": {"ring_slots": 4096}},
}


@pytest.mark.parametrize(("table", "key", "value", "valid"), _CASES,
                         ids=[f"{t}.{k}={v!r:.20}" for t, k, v, _ in _CASES])
def test_schema_and_check_config_agree_key_by_key(table: str, key: str, value: Any, valid: bool) -> None:
    doc: dict[str, dict[str, Any]] = {t: dict(v) for t, v in _PARTNERS.get((table, key), {}).items()}
    doc.setdefault(table, {})[key] = value
    assert _check_config_accepts(doc) is valid  # the case is what we think it is
    assert _VALIDATOR.is_valid(doc) is valid


def test_unknown_keys_tables_and_reserved_ids_are_refused_by_both() -> None:
    for doc in ({"mqtt": {"hots": "x"}}, {"mqt": {}}, {"mqtt": 5},
                *({"device": {"id": r}} for r in RESERVED_DEVICE_IDS)):
        assert not _check_config_accepts(doc), doc
        assert not _VALIDATOR.is_valid(doc), doc
