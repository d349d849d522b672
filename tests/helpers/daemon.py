"""Run the real daemon (``python -m agent run``) as a subprocess against a test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import tomli_w

from tests.helpers.broker import Broker

__all__ = ["AgentProcess", "write_config"]

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, broker: Broker, **sections: dict[str, Any]) -> Path:
    """A config for ``broker`` with the shipped model; ``sections`` override keys per table."""
    base: dict[str, dict[str, Any]] = {
        "device": {"id": "dev1"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
        "source": {"type": "replay", "path": str(REPO / "models" / "golden.npz"), "rate_hz": 0.0},
        "inference": {"model": str(REPO / "models" / "digit.card.json"),
                      "golden": str(REPO / "models" / "golden.npz"), "deadline_ms": 50.0,
                      "variant_time_s": 0.05},  # the choice itself is tested; keep start-ups short
        "health": {"interval_s": 1.0},
        "ota": {"state_dir": str(path.parent / "state"), "trusted_keys": str(path.parent / "keys")},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    if "hosts" in base["mqtt"]:  # several brokers replace the one-broker form
        del base["mqtt"]["host"], base["mqtt"]["port"]
    path.write_text(tomli_w.dumps(base))
    return path


class AgentProcess:
    def __init__(self, config: Path, env: Optional[dict[str, str]] = None, log_level: str = "INFO") -> None:
        self.log = config.with_suffix(".log")
        self._logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--log-level", log_level, "run", "--config", str(config)],
            cwd=REPO, stdout=self._logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._logf.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        """The process state and the last ``lines`` of its log: what every harness error carries."""
        rc = self.proc.poll()
        state = "still running" if rc is None else f"exit code {rc}"
        text = self.output().splitlines()[-lines:]
        body = "\n".join(text) if text else "(the log is empty)"
        return f"[daemon pid {self.proc.pid}, {state}; last {len(text)} line(s) of {self.log}]\n{body}"

    def wait_started(self, needle: str = "serving device", timeout: float = 180.0) -> None:
        """Until ``needle`` is logged; RuntimeError with :meth:`tail` if it is not. The default is
        generous: a loaded 2-core machine has taken minutes to import and self-test."""
        if not self.wait_log(needle, timeout):
            raise RuntimeError(f"daemon did not log {needle!r} within {timeout:g} s\n{self.tail()}")

    def wait_log(self, needle: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return True
            if self.proc.poll() is not None:
                return needle in self.output()
            time.sleep(0.05)
        return False
