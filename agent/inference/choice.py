"""Which variant of a model set serves: the fastest on this CPU among those that pass the gate.

Every variant is gated (golden set; the caller says how: start-up self-test or the OTA gate). The
ones that pass are timed side by side (:func:`agent.inference.timing.time_models`) and the lowest
median serves. ``inference.variant`` pins one by name instead (it is still gated). The timing result
is cached in ``<ota.state_dir>/variant-choice.json`` per (sha256 of every variant, this CPU,
onnxruntime version), so a restart does not measure again unless one of those changed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnxruntime as ort

from agent.inference.golden import GoldenResult
from agent.inference.model import LoadedModel
from agent.inference.timing import cpu_identity, time_models

__all__ = ["AUTO", "Candidate", "Choice", "ChoiceCache", "NoVariant", "Refused", "Row", "cache_key", "choose"]

log = logging.getLogger(__name__)

AUTO = "auto"
_CACHE_ENTRIES = 8  # a device alternates between few sets (shipped, committed, the one on test)


class Refused(Exception):
    """A variant failed the gate; ``str(exc)`` says why. ``accuracy`` when the golden run got that far."""

    def __init__(self, reason: str, accuracy: Optional[float] = None) -> None:
        super().__init__(reason)
        self.accuracy = accuracy


class NoVariant(Exception):
    """Nothing may serve: every variant refused, or the pinned one refused or missing.
    ``reasons``: each refused variant's reason."""

    def __init__(self, message: str, reasons: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.reasons = reasons or {}


@dataclass(frozen=True)
class Candidate:
    name: str
    sha256: str  # of the file as it is on disk
    gate: Callable[[], tuple[LoadedModel, GoldenResult]]  # load + gate; raises Refused


@dataclass
class Row:
    name: str
    accuracy: Optional[float]
    verdict: str  # "passes" or "refused: <why>"
    p50_us: Optional[float] = None
    p99_us: Optional[float] = None
    served: bool = False


@dataclass
class Choice:
    model: LoadedModel
    rows: list[Row]
    how: str  # fastest | cached | pinned | only
    timing: str = ""  # where p50/p99 come from

    def table(self) -> str:
        lines = [f"{'variant':<10} {'golden':>8} {'p50 µs':>9} {'p99 µs':>9}  verdict"]
        for r in self.rows:
            acc = f"{r.accuracy * 100:.2f} %" if r.accuracy is not None else "-"
            p50 = f"{r.p50_us:.1f}" if r.p50_us is not None else "-"
            p99 = f"{r.p99_us:.1f}" if r.p99_us is not None else "-"
            mark = "  <- serves" if r.served else ""
            lines.append(f"{r.name:<10} {acc:>8} {p50:>9} {p99:>9}  {r.verdict}{mark}")
        lines.append(f"serving variant {self.model.variant} ({_HOW[self.how]}; latency {self.timing})")
        return "\n".join(lines)

    def info(self) -> dict[str, Any]:
        """For health and the model's ``choice``: what serves, how chosen, the median of each."""
        return {"variant": self.model.variant, "how": self.how,
                "p50_us": {r.name: r.p50_us for r in self.rows if r.p50_us is not None},
                "refused": {r.name: r.verdict for r in self.rows if r.verdict != "passes"}}


_HOW = {"fastest": "fastest on this CPU, measured now", "cached": "fastest on this CPU, cached measurement",
        "pinned": "pinned by inference.variant", "only": "the only variant that passes"}


def cache_key(shas: dict[str, str]) -> dict[str, Any]:
    return {"variants": dict(sorted(shas.items())), "cpu": cpu_identity(), "onnxruntime": ort.__version__}


@dataclass
class ChoiceCache:
    """``variant-choice.json``: the last few measured choices with their key. Unwritable: log, go on."""

    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _read(self) -> list[dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("variant choice cache %s unreadable (%s); measuring again", self.path, exc)
            return []
        entries = doc.get("entries") if isinstance(doc, dict) else None
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def lookup(self, key: dict[str, Any]) -> Optional[dict[str, Any]]:
        with self._lock:
            return next((e for e in self._read() if e.get("key") == key), None)

    def store(self, key: dict[str, Any], choice: str, p50: dict[str, float], p99: dict[str, float]) -> None:
        from agent.control.ota.store import atomic_write  # (no onnxruntime there: light)

        with self._lock:
            entries = [e for e in self._read() if e.get("key") != key]
            entries.append({"key": key, "choice": choice, "p50_us": p50, "p99_us": p99,
                            "measured": round(time.time())})
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                doc = {"entries": entries[-_CACHE_ENTRIES:]}
                atomic_write(self.path, json.dumps(doc, indent=1).encode("utf-8"))
            except OSError as exc:
                log.warning("cannot write the variant choice cache %s: %s", self.path, exc)


def _gate_all(candidates: list[Candidate]) -> tuple[dict[str, LoadedModel], list[Row], dict[str, str]]:
    passed: dict[str, LoadedModel] = {}
    rows = []
    reasons = {}
    for c in candidates:
        try:
            model, golden = c.gate()
        except Refused as exc:
            reasons[c.name] = str(exc)
            rows.append(Row(c.name, exc.accuracy, f"refused: {exc}"))
            log.warning("variant %s refused: %s", c.name, exc)
            continue
        model.variant = c.name
        passed[c.name] = model
        rows.append(Row(c.name, golden.accuracy, "passes", golden.p50_us, golden.p99_us))
    return passed, rows, reasons


def choose(candidates: list[Candidate], frame: np.ndarray, pin: str = AUTO, seconds_each: float = 1.0,
           cache: Optional[ChoiceCache] = None, stop: Optional[threading.Event] = None) -> Choice:
    """Gate every candidate, then pick (see the module docstring). Raises :class:`NoVariant`."""
    names = [c.name for c in candidates]
    if pin != AUTO and pin not in names:
        raise NoVariant(f"inference.variant = {pin!r}: the model has no such variant (it has "
                        f"{', '.join(names)})")
    passed, rows, reasons = _gate_all(candidates)
    by_name = {r.name: r for r in rows}
    if pin != AUTO:
        if pin not in passed:
            raise NoVariant(f"inference.variant = {pin!r}: that variant {by_name[pin].verdict}", reasons)
        return _done(passed[pin], rows, "pinned", "of the golden run")
    if not passed:
        raise NoVariant("no variant passes: " + "; ".join(f"{r.name} {r.verdict}" for r in rows), reasons)
    if len(passed) == 1:
        return _done(next(iter(passed.values())), rows, "only", "of the golden run")
    key = cache_key({c.name: c.sha256 for c in candidates})
    hit = cache.lookup(key) if cache is not None else None
    if hit is not None and hit.get("choice") in passed:
        for r in rows:
            r.p50_us, r.p99_us = hit.get("p50_us", {}).get(r.name), hit.get("p99_us", {}).get(r.name)
        log.info("variant choice cached for this CPU and model set: %s", hit["choice"])
        return _done(passed[hit["choice"]], rows, "cached", f"measured {_ago(hit.get('measured'))}")
    log.info("timing %d variants side by side, %.2f s each", len(passed), seconds_each)
    timings = time_models(passed, frame, seconds_each, stop)
    for name, t in timings.items():
        by_name[name].p50_us, by_name[name].p99_us = round(t.p50_us, 1), round(t.p99_us, 1)
    best = min(timings.values(), key=lambda t: t.p50_us).name
    if cache is not None:
        cache.store(key, best, {n: round(t.p50_us, 1) for n, t in timings.items()},
                    {n: round(t.p99_us, 1) for n, t in timings.items()})
    runs = min(t.runs for t in timings.values())
    return _done(passed[best], rows, "fastest", f"interleaved, >= {runs} runs each")


def _ago(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "earlier"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _done(model: LoadedModel, rows: list[Row], how: str, timing: str) -> Choice:
    for r in rows:
        r.served = r.name == model.variant
    choice = Choice(model, rows, how, timing)
    model.choice = choice.info()
    return choice
