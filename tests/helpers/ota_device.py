"""An OTA test bench: the real daemon (``agent.daemon.Daemon``) on a thread of this process, a real
mosquitto, real keys, and the operator's real :class:`tools.ota.push.Pusher`.

In-process (not a subprocess) so that a test can inject a fault into one function (the simulated
disk-full) and read the engine's counters directly; the kill -9 tests use the subprocess daemon.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import load_config
from agent.control.ota.keys import keyid_of, raw_public
from agent.daemon import Daemon
from tests.helpers.broker import Broker, Collector
from tests.helpers.daemon import write_config
from tests.helpers.ota import CARD, envelope, model_bytes, write_golden, write_pub
from tools.ota.push import Connection, Pusher, read_manifest

__all__ = ["CARD", "Bench", "Device"]

TERMINAL = ("committed", "rejected", "failed", "rolled_back")


class Device:
    def __init__(self, cfg_path: Path) -> None:
        self.cfg = load_config(cfg_path)
        self.daemon = Daemon(self.cfg)
        self.rc: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120  # generous: start-up on a loaded 2-core machine
        while not (hasattr(self.daemon, "ota") and self.daemon.ota._thread is not None):
            if time.monotonic() > deadline or not self.thread.is_alive():
                # The in-process daemon logs into pytest's captured log, shown with the failure.
                why = (f"its thread ended with exit code {self.rc}, error {self.error!r}"
                       if not self.thread.is_alive() else "still starting after 120 s")
                raise RuntimeError(f"in-process daemon did not start: {why}")
            time.sleep(0.02)

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run()
        except BaseException as exc:
            self.error = exc
            raise

    @property
    def engine(self) -> Any:
        return self.daemon.engine

    def stop(self) -> None:
        self.daemon.stop.set()
        self.daemon.ring_wake()
        self.thread.join(30)


class Bench:
    """Files for one device (shipped model v1, golden set, keys) plus helpers to push updates."""

    def __init__(self, tmp: Path, broker: Broker, trusted: bool = True, **sections: dict[str, Any]) -> None:
        self.tmp, self.broker = tmp, broker
        self.key = Ed25519PrivateKey.generate()
        self.keys_dir = tmp / "keys"
        self.keys_dir.mkdir()
        if trusted:
            write_pub(self.keys_dir, self.key, "operator")
        models = tmp / "models"
        models.mkdir()
        self.golden = write_golden(tmp / "golden.npz")
        self.shipped = models / "shipped.onnx"
        self.shipped.write_bytes(model_bytes("good", tag=1))
        (models / "shipped.card.json").write_text(json.dumps({**CARD, "version": 1}))
        base: dict[str, dict[str, Any]] = {
            "source": {"path": str(self.golden), "rate_hz": 100.0, "loop": True},
            "inference": {"model": str(self.shipped), "golden": str(self.golden), "deadline_ms": 20.0,
                          "selftest_min_accuracy": 0.9, "variant_time_s": 0.05},
            "ota": {"trusted_keys": str(self.keys_dir), "state_dir": str(tmp / "state"),
                    # Deadline misses never roll back here (a busy CI core misses a 20 ms deadline
                    # now and then); the test of that policy sets its own ratio.
                    "test_window_s": 1.0, "stall_s": 0.5, "min_accuracy": 0.9, "test_max_miss_ratio": 1.0},
            "health": {"interval_s": 5.0},
        }
        for name, values in sections.items():
            base.setdefault(name, {}).update(values)
        self.cfg_path = write_config(tmp / "agent.toml", broker, **base)
        self.watch = Collector(broker, "digit-agent/dev1/ota/status", "digit-agent/dev1/result",
                               "digit-agent/dev1/ota/request", "digit-agent/dev1/ota/reply")
        self.conn = Connection(broker.host, broker.port, client_id="operator")

    @property
    def keyid(self) -> str:
        return keyid_of(raw_public(self.key.public_key()))

    def envelope(self, model: bytes, version: int, job: str = "", keys: Optional[list[Ed25519PrivateKey]] = None,
                 **spec: Any) -> bytes:
        return envelope(self.key, model, version, job, keys, **spec)

    def push(self, envelope: bytes, model: bytes,
             mutate: Optional[Callable[[int, bytes], list[tuple[Optional[str], bytes]]]] = None,
             rate: float = 2000.0) -> Pusher:
        p = Pusher(self.conn, "digit-agent", envelope, model, read_manifest(envelope), rate=rate, mutate=mutate)
        p.send_manifest(device="dev1")
        return p

    def statuses(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.watch.on("/ota/status")]

    def wait_state(self, job: Optional[str], states: tuple[str, ...] = TERMINAL,
                   timeout: float = 30.0, since: int = 0) -> dict[str, Any]:
        """The first status in ``states`` for ``job`` among those published after the ``since``-th."""
        def match() -> Optional[dict[str, Any]]:
            return next((s for s in self.statuses()[since:] if s["state"] in states and s.get("job") == job),
                        None)

        if not self.watch.wait_for(lambda _: match() is not None, timeout):
            raise AssertionError(f"no {states} for job {job}; statuses: {self.statuses()[-8:]}")
        found = match()
        assert found is not None
        return found

    def results(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.watch.on("/result")]

    def close(self) -> None:
        self.watch.close()
