"""The fleet as seen on the broker: one row per device from its ``status``, ``health`` and ``ota/status``.

Pure: :meth:`FleetView.handle` takes ``(topic, payload, now)``; nothing here touches a socket.
Malformed messages are counted (``bad_messages``) and otherwise ignored: one broken device must
not hide the rest of the fleet.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ["DeviceRow", "FleetView", "render_table"]

_STATUSES = ("online", "stopped", "offline")


@dataclass
class DeviceRow:
    id: str
    status: str = "unknown"
    model_version: Optional[int] = None
    p99_us: Optional[float] = None
    inferences: Optional[int] = None
    deadline_misses: Optional[int] = None
    frames_dropped: Optional[int] = None
    temperature_c: Optional[float] = None
    rss_bytes: Optional[int] = None
    mqtt_dropped: Optional[int] = None
    ota_state: Optional[str] = None
    ota_job: Optional[str] = None
    ota_version: Optional[int] = None
    ota_progress: Optional[float] = None
    ota_reason: str = ""
    health_at: Optional[float] = field(default=None, repr=False)  # monotonic, for the age column

    def to_json(self, now: float) -> dict[str, Any]:
        d = asdict(self)
        d.pop("health_at")
        d["health_age_s"] = None if self.health_at is None else round(now - self.health_at, 1)
        return d


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _int(v: Any) -> Optional[int]:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _float(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class FleetView:
    """Latest known state of every device under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.devices: dict[str, DeviceRow] = {}
        self.bad_messages = 0

    def topics(self) -> list[str]:
        p = self.prefix
        return [f"{p}/+/status", f"{p}/+/health", f"{p}/+/ota/status"]

    def handle(self, topic: str, payload: bytes, now: float) -> Optional[str]:
        """Apply one message; returns the device id it concerned, or None if it was not ours/bad."""
        rest = topic[len(self.prefix) + 1:] if topic.startswith(self.prefix + "/") else ""
        parts = rest.split("/")
        if len(parts) not in (2, 3) or not parts[0] or parts[0] == "group":
            return None
        dev, kind = parts[0], "/".join(parts[1:])
        try:
            if kind == "status":
                self._status(dev, payload)
            elif kind == "health":
                self._health(dev, json.loads(payload), now)
            elif kind == "ota/status":
                self._ota(dev, json.loads(payload) if payload else {})
            else:
                return None
        except (ValueError, UnicodeDecodeError):
            self.bad_messages += 1
            return None
        return dev

    def _row(self, dev: str) -> DeviceRow:
        row = self.devices.get(dev)
        if row is None:
            row = self.devices[dev] = DeviceRow(dev)
        return row

    def _status(self, dev: str, payload: bytes) -> None:
        if not payload:  # retained status cleared: the device was decommissioned
            self.devices.pop(dev, None)
            return
        text = payload.decode().strip()
        if text not in _STATUSES:
            raise ValueError(f"unknown status {text!r}")
        self._row(dev).status = text

    def _health(self, dev: str, doc: Any, now: float) -> None:
        if not isinstance(doc, dict):
            raise ValueError("health is not an object")
        r = self._row(dev)
        r.model_version = _int(_get(doc, "model", "version"))
        r.p99_us = _float(_get(doc, "inference", "p99_us"))
        r.inferences = _int(_get(doc, "inference", "inferences"))
        r.deadline_misses = _int(_get(doc, "inference", "deadline_misses"))
        r.frames_dropped = _int(_get(doc, "frames", "dropped"))
        r.temperature_c = _float(doc.get("temperature_c"))
        r.rss_bytes = _int(doc.get("rss_bytes"))
        r.mqtt_dropped = _int(_get(doc, "mqtt", "dropped"))
        r.health_at = now
        if r.ota_state is None and isinstance(doc.get("ota"), dict):
            r.ota_state = str(doc["ota"].get("state")) if doc["ota"].get("state") else None

    def _ota(self, dev: str, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise ValueError("ota/status is not an object")
        r = self._row(dev)
        r.ota_state = str(doc["state"]) if doc.get("state") else None
        r.ota_job = str(doc["job"]) if doc.get("job") else None
        r.ota_version = _int(doc.get("version"))
        r.ota_progress = _float(doc.get("progress"))
        r.ota_reason = str(doc.get("reason") or "")

    def rows(self) -> list[DeviceRow]:
        return [self.devices[k] for k in sorted(self.devices)]

    def summary(self) -> dict[str, Any]:
        rows = self.rows()
        p99s = [r.p99_us for r in rows if r.p99_us is not None and r.status == "online"]
        return {
            "devices": len(rows),
            "status": dict(Counter(r.status for r in rows)),
            "model_versions": {str(k): v for k, v in Counter(r.model_version for r in rows).items()},
            "ota_states": dict(Counter(r.ota_state or "unknown" for r in rows)),
            "worst_p99_us": max(p99s) if p99s else None,
            "frames_dropped": sum(r.frames_dropped or 0 for r in rows),
            "bad_messages": self.bad_messages,
        }

    def to_json(self, now: float) -> dict[str, Any]:
        return {"summary": self.summary(), "devices": [r.to_json(now) for r in self.rows()]}


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


_COLUMNS = ("DEVICE", "STATUS", "MODEL", "P99 ms", "MISSES", "DROPPED", "TEMP", "OTA", "JOB", "VER", "PROG",
            "AGE s")


def render_table(view: FleetView, now: float, max_reason: int = 60) -> str:
    """A plain-text table (one line per device) with a one-line summary on top."""
    s = view.summary()
    head = (f"{s['devices']} devices: " + ", ".join(f"{v} {k}" for k, v in sorted(s["status"].items()))
            + " | models " + ", ".join(f"v{k}: {v}" for k, v in sorted(s["model_versions"].items()))
            + " | OTA " + ", ".join(f"{k}: {v}" for k, v in sorted(s["ota_states"].items())))
    lines = [[r.id, r.status, _fmt(r.model_version),
              _fmt(None if r.p99_us is None else r.p99_us / 1000, ".2f"), _fmt(r.deadline_misses),
              _fmt(r.frames_dropped), _fmt(r.temperature_c, ".1f"), _fmt(r.ota_state), _fmt(r.ota_job),
              _fmt(r.ota_version), _fmt(None if r.ota_progress is None else r.ota_progress * 100, ".0f") + "%",
              _fmt(None if r.health_at is None else now - r.health_at, ".0f")] for r in view.rows()]
    widths = [max(len(c), *(len(x[i]) for x in lines)) if lines else len(c) for i, c in enumerate(_COLUMNS)]
    out = [head, "  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths))]
    for row, r in zip(lines, view.rows()):
        text = "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        if r.ota_reason and r.ota_state in ("rejected", "failed", "rolled_back"):
            text += f"  ({r.ota_reason[:max_reason]})"
        out.append(text)
    if s["bad_messages"]:
        out.append(f"({s['bad_messages']} malformed messages ignored)")
    return "\n".join(out)
