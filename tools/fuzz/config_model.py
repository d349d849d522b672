"""The config loader's fuzz oracle (``agent.config.parse_config``), shared by atheris and hypothesis.

Property: for any text and overrides, ``parse_config`` either raises :class:`ConfigError` or
returns a :class:`Config` whose every field is within the limits its schema declares — checked
here independently of the loader (``re.fullmatch`` for patterns, finite numbers, choices, lengths).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from agent.config import Config, ConfigError, parse_config
from tools.fuzz.codec_model import Draw

__all__ = ["SCHEMA", "LimitViolation", "check_limits", "check_text", "toml_from"]


class LimitViolation(AssertionError):
    """parse_config accepted a value outside the schema's limits; ``kind`` groups findings (no value)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _sections() -> dict[str, dict[str, dataclasses.Field[Any]]]:
    out = {}
    for sec in dataclasses.fields(Config):
        if sec.metadata.get("internal"):
            continue
        cls = sec.default_factory
        out[sec.name] = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return out


SCHEMA = _sections()


def _field_problem(value: Any, meta: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite number"
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"outside [{lo}, {hi}]"
    if meta.get("choices") and value not in meta["choices"]:
        return "not a choice"
    if meta.get("pattern") and not meta.get("path") and not re.fullmatch(meta["pattern"].strip("^$"), value):
        return f"does not fully match {meta['pattern']}"
    if isinstance(value, tuple):
        lo_n, hi_n = meta.get("length", (0, 1 << 30))
        if not lo_n <= len(value) <= hi_n or (meta.get("lengths") and len(value) not in meta["lengths"]):
            return "wrong length"
        item_pattern = meta.get("item_pattern")
        if item_pattern and any(not re.fullmatch(item_pattern.strip("^$"), v) for v in value):
            return f"an item does not fully match {item_pattern}"
    if isinstance(value, str) and "\x00" in value:
        return "NUL in a string"
    return None


def check_limits(cfg: Config) -> None:
    for sec, fields in SCHEMA.items():
        table = getattr(cfg, sec)
        for name, f in fields.items():
            value = getattr(table, name)
            if value == f.default:
                continue
            problem = _field_problem(value, f.metadata)
            if problem:
                raise LimitViolation(f"{sec}.{name} = {value!r} accepted: {problem}", f"{sec}.{name}: {problem}")


def check_text(text: str, overrides: list[str]) -> bool:
    """True if accepted (and within limits), False if refused with ConfigError; anything else raises."""
    try:
        cfg = parse_config(text, "/etc/digit-agent/fuzz.toml", overrides)
    except ConfigError as exc:
        if not exc.problems or not all(isinstance(p, str) and p for p in exc.problems):
            raise AssertionError(f"ConfigError without usable problems: {exc.problems!r}") from None
        return False
    check_limits(cfg)
    return True


_ATOMS = ["0", "1", "-1", "5", "0.5", "1e309", "-1e309", "nan", "inf", "-inf", "true", "false", '""',
          '"x"', '"digit-demo"', '"~nobody/x"', '"a\\nb"', '"dev\\n"', '"\\u0000"', "[]", "[1, 2, 3, 4]",
          '["a"]', "{}", "1979-05-27", "'''multi\nline'''", '"' + "x" * 300 + '"', "2147483648",
          "9223372036854775807", "0x10", '"5"', '"3.1.1"', '"serial"', '"socket://127.0.0.1:1"']


def _value(d: Draw) -> str:
    k = d.number(0, len(_ATOMS) + 1)
    if k < len(_ATOMS):
        return _ATOMS[k]
    if k == len(_ATOMS):
        return str(d.number(-(2**40), 2**40))
    raw = d.blob(d.number(0, 24)).decode("latin-1")
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_from(d: Draw) -> tuple[str, list[str]]:
    """A TOML document of real sections and keys (some misspelt) with adversarial values, + overrides."""
    lines: list[str] = []
    names = list(SCHEMA)
    for _ in range(d.number(0, 4)):
        sec = names[d.number(0, len(names) - 1)]
        lines.append(f"[{sec if d.number(0, 9) else sec + 'x'}]")
        keys = list(SCHEMA[sec])
        for _ in range(d.number(0, 5)):
            key = keys[d.number(0, len(keys) - 1)]
            lines.append(f"{key if d.number(0, 9) else key[:-1]} = {_value(d)}")
    overrides = []
    for _ in range(d.number(0, 2)):
        sec = names[d.number(0, len(names) - 1)]
        keys = list(SCHEMA[sec])
        overrides.append(f"{sec}.{keys[d.number(0, len(keys) - 1)]}={_value(d)}")
    return "\n".join(lines) + "\n", overrides
