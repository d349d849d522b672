"""Start-up side of OTA: which model the daemon serves, and the status document.

:func:`startup_model` runs before the engine loads. A model still *pending* (activated, not yet
committed) gets ``ota.max_attempts`` starts in total; a restart beyond that (a crash loop, a kill
during its test window) rolls back to the committed slot, or to the shipped model.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from agent.config.schema import Config
from agent.control.ota.store import OtaState, Store

__all__ = ["STATES", "TERMINAL", "ModelChoice", "startup_model", "status_doc"]

_log = logging.getLogger(__name__)

STATES = ("idle", "downloading", "verifying", "validating", "activating", "testing", "committed",
          "rejected", "failed", "rolled_back", "disabled")
TERMINAL = frozenset(("committed", "rejected", "failed", "rolled_back"))

ModelChoice = tuple[str, dict[str, Any]]


def status_doc(state: str, job: Optional[str] = None, version: Optional[int] = None, reason: str = "",
               progress: float = 0.0, **extra: Any) -> dict[str, Any]:
    """The retained ``<prefix>/<id>/ota/status`` document."""
    return {"state": state, "job": job, "version": version, "reason": reason,
            "progress": round(min(max(progress, 0.0), 1.0), 4), "ts": round(time.time(), 3), **extra}


def _roll_back_pending(store: Store, state: OtaState, reason: str) -> None:
    assert state.pending is not None
    p = state.pending
    _log.error("OTA: rolling back version %d (job %s): %s", p.version, p.job, reason)
    state.status = status_doc("rolled_back", p.job, p.version, reason, 1.0)
    state.remember(p.job)
    state.pending = None
    store.write_state(state)


def _choose(cfg: Config, store: Store) -> ModelChoice:
    state = store.read_state()
    p = state.pending
    if p is not None:
        if p.attempts >= cfg.ota.max_attempts:
            _roll_back_pending(store, state, f"restarted {p.attempts} time(s) while version {p.version} "
                                             f"was on test (max_attempts {cfg.ota.max_attempts})")
        elif not store.intact(p):
            _roll_back_pending(store, state, f"slot {p.slot} of version {p.version} is missing or corrupt")
        else:
            p.attempts += 1
            store.write_state(state)  # counted before loading: a crash while loading counts too
            _log.warning("OTA: version %d still on test (start %d of %d)", p.version, p.attempts,
                         cfg.ota.max_attempts)
            return str(store.model_path(p)), {"source": "pending", "version": p.version, "slot": p.slot,
                                                  "attempt": p.attempts}
    c = state.committed
    if c is not None:
        if store.intact(c):
            return str(store.model_path(c)), {"source": "committed", "version": c.version, "slot": c.slot}
        _log.error("OTA: committed slot %s (version %d) is missing or corrupt; serving the shipped model",
                   c.slot, c.version)
        return cfg.inference.model, {"source": "shipped", "note": f"committed slot {c.slot} corrupt"}
    return cfg.inference.model, {"source": "shipped"}


def startup_model(cfg: Config) -> ModelChoice:
    """``(model path, info)`` to serve now: pending (on test), committed slot, or the shipped model."""
    if not cfg.ota.enabled:
        return cfg.inference.model, {"source": "shipped", "note": "ota disabled"}
    try:
        return _choose(cfg, Store(cfg.ota.state_dir))
    except OSError as exc:  # an unwritable state dir must not keep the device from serving
        _log.error("OTA state unusable (%s); serving the shipped model", exc)
        return cfg.inference.model, {"source": "shipped", "note": f"state dir unusable: {exc}"}

