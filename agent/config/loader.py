"""TOML text (+ overrides) in, a validated :class:`Config` out. Pure: no I/O beyond reading the file.

Errors name the file, the line where the key stands, the dotted key and the reason, with a
"did you mean" for near misses, e.g.::

    config.toml:12: mqtt.hots: unknown key (did you mean 'host'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from agent.config.schema import RESERVED_DEVICE_IDS, Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = ["ENV_PREFIX", "ConfigError", "load_config", "parse_config"]

ENV_PREFIX = "DIGIT_AGENT__"


class ConfigError(ValueError):
    """One or more configuration problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def load_config(path: Union[str, Path], overrides: Iterable[str] = (),
                environ: Optional[Mapping[str, str]] = None) -> Config:
    """Read and validate ``path``; ``overrides`` are ``key.path=value`` strings (CLI ``--set``);
    ``environ`` (default ``os.environ``) may hold ``DIGIT_AGENT__SECTION__KEY=value`` overrides."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    env = os.environ if environ is None else environ
    return parse_config(text, str(p), overrides,
                        env_overrides=[(k, v) for k, v in sorted(env.items()) if k.startswith(ENV_PREFIX)])


def parse_config(text: str, filename: str = "<config>", overrides: Iterable[str] = (),
                 env_overrides: Iterable[tuple[str, str]] = ()) -> Config:
    """Validate TOML ``text``; relative paths resolve against ``filename``'s directory.
    ``env_overrides`` are ``(DIGIT_AGENT__SECTION__KEY, value)`` pairs, applied before ``overrides``
    and named by their variable in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{filename}: invalid TOML: {exc}"]) from None
    problems: list[str] = []
    overridden: dict[tuple[str, ...], str] = {}
    for name, value in env_overrides:
        item = f"{name[len(ENV_PREFIX):].lower().replace('__', '.')}={value}"
        _apply_override(raw, item, problems, overridden, f"environment variable {name}={value!r}")
    for item in overrides:
        _apply_override(raw, item, problems, overridden, f"override {item!r}")
    lines = _KeyLines(text)
    base = Path(filename).resolve().parent if not filename.startswith("<") else Path.cwd()
    ctx = _Ctx(filename, lines, base, problems, overridden)
    sections = _build(Config, raw, (), ctx, top=True)
    if problems:
        raise ConfigError(problems)
    cfg = Config(**sections, source_file=filename)
    mqtt_raw = raw.get("mqtt")
    _cross_checks(cfg, ctx, set(mqtt_raw) if isinstance(mqtt_raw, dict) else set())
    if problems:
        raise ConfigError(problems)
    return cfg


@dataclasses.dataclass
class _Ctx:
    filename: str
    lines: _KeyLines
    base: Path
    problems: list[str]
    overridden: dict[tuple[str, ...], str] = dataclasses.field(default_factory=dict)

    def error(self, keypath: tuple[str, ...], reason: str) -> None:
        origin = self.overridden.get(keypath[:2])
        if origin is not None:  # the value came from --set / the environment, not from the file
            where = origin
        else:
            line = self.lines.find(keypath)
            where = f"{self.filename}:{line}" if line else self.filename
        self.problems.append(f"{where}: {'.'.join(keypath)}: {reason}")


class _KeyLines:
    """Finds the line of ``table.key`` in TOML text (tomllib keeps no positions)."""

    _TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\- ]+?)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")

    def __init__(self, text: str) -> None:
        self._where: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for n, line in enumerate(text.splitlines(), start=1):
            if m := self._TABLE.match(line):
                table = tuple(part.strip() for part in m.group(1).split("."))
                self._where.setdefault(table, n)
            elif m := self._KEY.match(line):
                self._where.setdefault((*table, m.group(1)), n)

    def find(self, keypath: tuple[str, ...]) -> Optional[int]:
        if keypath:  # an array item (``ota.groups[1]``) stands on its array's line
            keypath = (*keypath[:-1], keypath[-1].partition("[")[0])
        for i in range(len(keypath), 0, -1):
            if keypath[:i] in self._where:
                return self._where[keypath[:i]]
        return None


def _apply_override(raw: dict[str, Any], item: str, problems: list[str],
                    overridden: dict[tuple[str, ...], str], origin: str) -> None:
    """``origin`` names the override in errors: ``override 'k=v'`` or the environment variable."""
    key, sep, value = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not sep or len(parts) != 2:
        problems.append(f"{origin}: expected section.key=value")
        return
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare string such as host=broker.local
    if not isinstance(parsed, str) and _is_str_field(parts[0], parts[1]):
        parsed = value.strip()  # mqtt.username=1234 or host=inf mean the text, not a number
    section = raw.setdefault(parts[0], {})
    if isinstance(section, dict):
        section[parts[1]] = parsed
        overridden[(parts[0], parts[1])] = origin
    else:
        problems.append(f"{origin}: {parts[0]} is not a table")


def _is_str_field(section: str, key: str) -> bool:
    table = get_type_hints(Config).get(section)
    return table is not None and dataclasses.is_dataclass(table) and get_type_hints(table).get(key) is str


def _build(cls: type, raw: Any, keypath: tuple[str, ...], ctx: _Ctx, top: bool = False) -> dict[str, Any]:
    if not isinstance(raw, dict):
        ctx.error(keypath, f"expected a table, got {_tname(raw)}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        kp = (*keypath, key)
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
            ctx.error(kp, f"unknown {'table' if top else 'key'}{hint}")
            continue
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):
            out[key] = ftype(**_build(ftype, value, kp, ctx))  # type: ignore[arg-type,operator]
        else:
            checked = _check_value(ftype, value, fields[key].metadata, kp, ctx)
            if checked is not _INVALID:
                out[key] = checked
    return out


_INVALID = object()
_MAX_PREPROCESS_SIDE = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_value(ftype: Any, value: Any, meta: Mapping[str, Any], kp: tuple[str, ...], ctx: _Ctx) -> Any:
    origin = get_origin(ftype)
    if origin is tuple:
        return _check_tuple(get_args(ftype)[0], value, meta, kp, ctx)
    if ftype is bool:
        ok = isinstance(value, bool)
    elif ftype is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ftype is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str) and not _CONTROL.search(value)
    if not ok:
        what = "a finite float" if ftype is float else ftype.__name__
        if ftype is str and isinstance(value, str):
            what = "a string without control characters"
        ctx.error(kp, f"expected {what}, got {_tname(value)} {value!r}")
        return _INVALID
    reason = _limit_problem(value, meta)
    if reason:
        ctx.error(kp, reason)
        return _INVALID
    if meta.get("path") and value:
        value = _resolve_path(value, ctx.base)
    return value


def _check_tuple(item_type: Any, value: Any, meta: Mapping[str, Any], kp: tuple[str, ...], ctx: _Ctx) -> Any:
    if not isinstance(value, list):
        ctx.error(kp, f"expected an array, got {_tname(value)}")
        return _INVALID
    lo, hi = meta.get("length", (0, 1 << 30))
    allowed = meta.get("lengths")
    if allowed and len(value) not in allowed:
        ctx.error(kp, f"expected {' or '.join(map(str, allowed))} items, got {len(value)}")
        return _INVALID
    if not lo <= len(value) <= hi:
        ctx.error(kp, f"expected {lo} to {hi} items, got {len(value)}")
        return _INVALID
    items = []
    item_pattern = meta.get("item_pattern")
    for i, v in enumerate(value):
        if not isinstance(v, item_type) or isinstance(v, bool):
            ctx.error((*kp[:-1], f"{kp[-1]}[{i}]"), f"expected {item_type.__name__}, got {_tname(v)}")
            return _INVALID
        if item_pattern and not re.fullmatch(item_pattern, v):
            rule = meta.get("rule")
            ctx.error((*kp[:-1], f"{kp[-1]}[{i}]"),
                      f"{v!r} is not allowed: {rule}" if rule else f"{v!r} does not match {item_pattern}")
            return _INVALID
        items.append(v)
    return tuple(items)


def _limit_problem(value: Any, meta: Mapping[str, Any]) -> Optional[str]:
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"{value!r} is out of range: must be between {lo} and {hi}"
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{value!r} is not one of {', '.join(map(repr, choices))}{hint}"
    pattern = meta.get("pattern")
    if pattern and not re.fullmatch(pattern, value):
        rule = meta.get("rule")
        return f"{value!r} is not allowed: {rule}" if rule else f"{value!r} does not match {pattern}"
    return None


def _resolve_path(value: str, base: Path) -> str:
    if value == "-" or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _cross_checks(cfg: Config, ctx: _Ctx, mqtt_keys: set[str]) -> None:
    """``mqtt_keys``: the keys the file and the overrides set in [mqtt] (defaults are not mixing)."""
    m, s = cfg.mqtt, cfg.source
    _broker_checks(cfg, ctx, mqtt_keys)
    if cfg.device.id in RESERVED_DEVICE_IDS:
        ctx.error(("device", "id"), f"{cfg.device.id!r} is reserved: {', '.join(RESERVED_DEVICE_IDS)} are "
                  "fleet-wide topic levels or broker user names")
    if s.ring_slots <= cfg.inference.batch_max:
        # The inference loop holds up to batch_max slots while it serves a batch and the source
        # needs one more to write into: with fewer, FrameRing.acquire fails and the daemon stops.
        ctx.error(("source", "ring_slots"), f"{s.ring_slots} must exceed inference.batch_max "
                  f"({cfg.inference.batch_max}): the inference loop holds up to batch_max slots "
                  "and the source needs one more")
    if m.reconnect_min_s > m.reconnect_max_s:
        ctx.error(("mqtt", "reconnect_min_s"), "must not exceed mqtt.reconnect_max_s")
    if bool(m.tls_cert) != bool(m.tls_key):
        ctx.error(("mqtt", "tls_cert"), "tls_cert and tls_key go together")
    if m.tls_cert and not m.tls_ca:
        ctx.error(("mqtt", "tls_ca"), "a client certificate needs tls_ca (TLS)")
    if m.password_file and not m.username:
        ctx.error(("mqtt", "username"), "password_file is set but username is empty")
    if s.reopen_min_s > s.reopen_max_s:
        ctx.error(("source", "reopen_min_s"), "must not exceed source.reopen_max_s")
    if s.type == "replay" and s.path == "-":
        ctx.error(("source", "path"), "'-' (standard input) is for type = \"pipe\"; a replay reads a file "
                  "(for a raw video stream set source.type = \"pipe\" with the stream's width, height "
                  "and pixel_format, see docs/camera.md)")
    if s.type == "pipe":
        if s.pixel_format == "yuv420" and (s.width % 2 or s.height % 2):
            ctx.error(("source", "width"), "yuv420 needs an even width and height")
        side = max(s.roi[2:]) if s.roi else max(s.width, s.height)
        if side > _MAX_PREPROCESS_SIDE:
            ctx.error(("source", "roi"), f"the digit region is {side} px on a side; set a roi of at most "
                      f"{_MAX_PREPROCESS_SIDE} px around the digit (preprocessing cost grows with its size)")
        if s.roi:
            x, y, w, h = s.roi
            if w < 1 or h < 1 or x < 0 or y < 0 or x + w > s.width or y + h > s.height:
                ctx.error(("source", "roi"), f"{list(s.roi)} does not fit a {s.width}x{s.height} frame")


def _broker_checks(cfg: Config, ctx: _Ctx, mqtt_keys: set[str]) -> None:
    m = cfg.mqtt
    single = sorted(mqtt_keys & {"host", "port"})
    if m.hosts and single:
        ctx.error(("mqtt", "hosts"), f"mqtt.hosts and mqtt.{' and mqtt.'.join(single)} cannot be mixed: list "
                  "every broker in mqtt.hosts, or give one broker with mqtt.host and mqtt.port")
    if m.hosts:
        seen: set[tuple[str, int]] = set()
        for i, (host, port) in enumerate(m.brokers):
            if not 1 <= port <= 65535:
                ctx.error(("mqtt", f"hosts[{i}]"), f"port {port} is out of range: must be between 1 and 65535")
            elif (host, port) in seen:
                ctx.error(("mqtt", f"hosts[{i}]"), f"{host}:{port} is listed twice")
            seen.add((host, port))
    if m.session_expiry_s and m.qos == 2:
        # A fresh client per connection numbers its packets from 1 again; a resumed session may still
        # hold an unreleased QoS 2 packet id, and the broker would take a new message for its duplicate.
        ctx.error(("mqtt", "session_expiry_s"), "a kept session (session_expiry_s > 0) needs mqtt.qos 0 or 1: "
                  "a resumed session could swallow a QoS 2 message as a duplicate of an old packet id")


def _tname(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "float"}.get(type(value), type(value).__name__)
