"""Health telemetry: process and board figures plus every component's counters, as one dict.

Temperature and throttling come from files a Raspberry Pi has (thermal zone, the firmware's
``get_throttled`` via debugfs or ``vcgencmd``); elsewhere they are ``null``, never invented.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

__all__ = ["HealthSampler", "read_temperature_c", "read_throttled"]

log = logging.getLogger(__name__)

Provider = Callable[[], dict[str, Any]]


def read_temperature_c(path: str) -> Optional[float]:
    try:
        return round(int(Path(path).read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def read_throttled() -> Optional[str]:
    """The firmware's throttling bit field as hex (``0x0`` = fine), or ``None`` off a Pi."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().partition("=")[2] or None


class HealthSampler:
    """Samples the process and merges each component's ``stats()`` under its own key."""

    def __init__(self, thermal_zone: str, providers: dict[str, Provider]) -> None:
        self._thermal_zone = thermal_zone
        self._providers = providers
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)  # first call primes the counter
        self._t0 = time.monotonic()
        # When this process started, as HA's timestamp sensors want it (fixed, so it never churns).
        self._started_at = datetime.fromtimestamp(time.time(), timezone.utc).isoformat(timespec="seconds")
        self._has_vcgencmd = shutil.which("vcgencmd") is not None

    def sample(self) -> dict[str, Any]:
        with self._proc.oneshot():
            doc: dict[str, Any] = {
                "ts": round(time.time(), 3),
                "uptime_s": round(time.monotonic() - self._t0, 1),
                "started_at": self._started_at,
                "cpu_percent": self._proc.cpu_percent(None),
                "rss_bytes": self._proc.memory_info().rss,
                "threads": self._proc.num_threads(),
                "fds": self._proc.num_fds() if hasattr(self._proc, "num_fds") else None,
            }
        doc["temperature_c"] = read_temperature_c(self._thermal_zone)
        doc["throttled"] = read_throttled() if self._has_vcgencmd else None
        for name, provider in self._providers.items():
            try:
                doc[name] = provider()
            except Exception:  # a broken provider must not silence health
                log.exception("health provider %s failed", name)
                doc[name] = None
        return doc
