"""Staged-rollout planning and bookkeeping. Pure: no MQTT, no clock reads (``now`` is passed in).

A rollout is a list of stages: the canaries, then the rest in ``waves``. Each device of a stage is
*sent* the manifest and then reaches an *outcome* from its ``ota/status``: ``committed`` (success),
``rejected``/``failed``/``rolled_back`` (failure) or ``timeout`` (nothing terminal in time).
The whole state is one JSON document, rewritten after every change, so an operator whose process
dies can run the same command again and it resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ["FAILED", "RolloutState", "classify", "make_stages"]

FAILED = ("rejected", "failed", "rolled_back")
_CLOCK_SLACK_S = 5.0  # a refusal without a job must be newer than our send (minus this skew)


def make_stages(devices: list[str], job: str, canary_fraction: float, waves: int) -> list[list[str]]:
    """Canaries first (at least one), then the rest in ``waves`` batches.

    Canaries are chosen by a hash of job and device id: spread over the fleet, different for each
    job, yet the same when the command is run again (resume).
    """
    if not devices:
        raise ValueError("no target devices")
    if len(set(devices)) != len(devices):
        raise ValueError("duplicate device ids in the target list")
    if not 0.0 < canary_fraction <= 1.0:
        raise ValueError("canary fraction must be in (0, 1]")
    order = sorted(devices, key=lambda d: hashlib.sha256(f"{job}/{d}".encode()).hexdigest())
    n_canary = min(len(order), max(1, math.ceil(canary_fraction * len(order))))
    canary, rest = sorted(order[:n_canary]), sorted(order[n_canary:])
    stages = [canary]
    waves = max(1, waves)
    size = math.ceil(len(rest) / waves) if rest else 0
    stages += [rest[i:i + size] for i in range(0, len(rest), size)] if size else []
    return stages


def classify(doc: dict[str, Any], job: str, sent_ts: float) -> Optional[str]:
    """The outcome a status document gives for our ``job`` sent at ``sent_ts`` (wall clock), or None.

    A status naming our job counts. A refusal naming no job (the envelope did not even open: bad
    signature, unknown key) counts only if it is newer than our send: the retained status of an
    older push must not be taken for this one.
    """
    state = doc.get("state")
    if doc.get("job") == job:
        if state == "committed":
            return "committed"
        return str(state) if state in FAILED else None
    ts = doc.get("ts")
    if doc.get("job") is None and state == "rejected" and isinstance(ts, (int, float)) \
            and ts >= sent_ts - _CLOCK_SLACK_S:
        return "rejected"
    return None


@dataclass
class RolloutState:
    job: str
    version: int
    model_sha256: str
    stages: list[list[str]]
    max_failures: int
    stage: int = 0  # index of the stage in progress (== len(stages) when all are done)
    sent: dict[str, float] = field(default_factory=dict)  # device -> wall-clock send time
    stage_started: dict[str, float] = field(default_factory=dict)  # str(stage) -> wall-clock start
    outcome: dict[str, str] = field(default_factory=dict)  # device -> committed / failure state / timeout
    reason: dict[str, str] = field(default_factory=dict)
    result: str = "running"  # running | done | aborted
    abort_reason: str = ""
    rollback: dict[str, Any] = field(default_factory=dict)  # job, version, devices, outcome

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloutState:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("rollout state is not a JSON object")
        try:
            return cls(**doc)
        except TypeError as exc:
            raise ValueError(f"rollout state has unexpected fields: {exc}") from None

    # -- bookkeeping ----------------------------------------------------------------------------
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s]

    def current(self) -> list[str]:
        return self.stages[self.stage] if self.stage < len(self.stages) else []

    def record(self, device: str, doc: dict[str, Any]) -> Optional[str]:
        """Apply a status document; returns the new outcome if it settled the device just now."""
        if device in self.outcome or device not in self.sent:
            return None
        out = classify(doc, self.job, self.sent[device])
        if out is not None:
            self.outcome[device] = out
            self.reason[device] = str(doc.get("reason") or "")
        return out

    def pending(self) -> list[str]:
        return [d for d in self.current() if d not in self.outcome]

    def failures(self) -> list[str]:
        return [d for d in self.devices() if self.outcome.get(d, "committed") != "committed"]

    def committed(self) -> list[str]:
        return [d for d in self.devices() if self.outcome.get(d) == "committed"]

    def time_out(self, now: float, timeout_s: float) -> list[str]:
        """Mark the current stage's unsettled devices as timed out once the stage is too old."""
        started = self.stage_started.get(str(self.stage))
        if started is None or now - started < timeout_s:
            return []
        late = self.pending()
        for d in late:
            self.outcome[d] = "timeout"
            self.reason[d] = f"no terminal OTA status within {timeout_s:g} s"
        return late

    def over_threshold(self) -> bool:
        return len(self.failures()) > self.max_failures

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for d in self.devices():
            k = self.outcome.get(d, "pending")
            counts[k] = counts.get(k, 0) + 1
        return {"job": self.job, "version": self.version, "result": self.result, "stage": self.stage,
                "stages": [len(s) for s in self.stages], "outcomes": counts,
                "failures": {d: f"{self.outcome[d]}: {self.reason.get(d, '')}" for d in self.failures()},
                "abort_reason": self.abort_reason, "rollback": self.rollback}
