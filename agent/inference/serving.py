"""Load a model set and pick the variant that serves: shared by start-up (self-test) and the OTA gate.

The caller says how one loaded variant is judged (``judge``: raise :class:`Refused` to refuse it);
this module loads each variant with the daemon's session options, checks its sha256 against the
card, and hands the survivors to :func:`agent.inference.choice.choose`.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from agent.inference.choice import AUTO, Candidate, Choice, ChoiceCache, Refused, cache_key, choose
from agent.inference.golden import GoldenResult, GoldenSet
from agent.inference.model import INPUT_SHAPE, LoadedModel, ModelError
from agent.inference.variants import ModelSet, Variant
from agent.preprocess import Preprocessor

__all__ = ["CACHE_FILE", "Judge", "choose_variant", "file_sha256_or_empty", "load_preferred", "timing_frame"]

CACHE_FILE = "variant-choice.json"
Judge = Callable[[LoadedModel], GoldenResult]  # raises Refused


def file_sha256_or_empty(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def timing_frame(golden: GoldenSet, pre: Preprocessor) -> np.ndarray:
    """A real digit as the pipeline feeds it (the timing input; some kernels care about zeros)."""
    frame = np.zeros(INPUT_SHAPE, dtype=np.float32)
    pre(golden.images[0], frame)
    return frame


def _candidate(v: Variant, batch_max: int, version: Optional[int], judge: Judge) -> Candidate:
    sha = file_sha256_or_empty(v.path)

    def gate() -> tuple[LoadedModel, GoldenResult]:
        if v.sha256 and sha != v.sha256:
            raise Refused(f"{v.path.name}: sha256 differs from the card's" if sha else
                          f"{v.path}: file missing or unreadable")
        try:
            model = LoadedModel.load(v.path, batch_max, v.card, version=version)
        except ModelError as exc:
            raise Refused(f"model refused: {str(exc).replace(str(v.path) + ': ', '')}") from None
        model.variant = v.name
        return model, judge(model)

    return Candidate(v.name, sha, gate)


def choose_variant(models: ModelSet, judge: Judge, frame: np.ndarray, batch_max: int, pin: str = AUTO,
                   seconds_each: float = 1.0, state_dir: str = "", version: Optional[int] = None,
                   stop: Optional[threading.Event] = None) -> Choice:
    """Load, judge and time the variants of ``models``; raises :class:`~agent.inference.choice.NoVariant`."""
    cache = ChoiceCache(Path(state_dir) / CACHE_FILE) if state_dir else None
    candidates = [_candidate(v, batch_max, version, judge) for v in models.variants]
    return choose(candidates, frame, pin, seconds_each, cache, stop)


def load_preferred(models: ModelSet, batch_max: int, pin: str = AUTO, state_dir: str = "") -> LoadedModel:
    """The variant to fall back to without gating or timing (a version that served before, e.g. the
    one an OTA rollback returns to): the pinned one, else the cached choice for this CPU, else the first."""
    name = pin if pin != AUTO else ""
    if not name and state_dir and len(models.variants) > 1:
        key = cache_key({v.name: file_sha256_or_empty(v.path) for v in models.variants})
        hit = ChoiceCache(Path(state_dir) / CACHE_FILE).lookup(key)
        name = str(hit.get("choice", "")) if hit else ""
    v = next((v for v in models.variants if v.name == name), models.variants[0])
    model = LoadedModel.load(v.path, batch_max, v.card)
    model.variant = v.name
    how = "pinned" if pin != AUTO else ("cached" if v.name == name else "first listed (no measurement here)")
    model.choice = {"variant": v.name, "how": how, "p50_us": {}, "refused": {}}
    return model
