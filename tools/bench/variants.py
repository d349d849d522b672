"""Every variant of a model set side by side on this host, and whether the device serves the fastest.

    python -m tools.bench.variants [--card models/digit.card.json] [--seconds 3] [--json out.json]

For each variant: golden-set accuracy through the daemon's preprocessing, then batch-1 latency
p50/p99/p99.9 and CPU time per inference, all variants timed in one interleaved run with the
daemon's own session options and io-binding (:func:`agent.inference.timing.time_models`). Then
the device's own choice runs separately (:func:`agent.inference.serving.choose_variant`, no cache,
the configured default timing), and *served ÷ fastest* is the served variant's p50 over the lowest
p50 of this run — goal 1.00: the device picks what is fastest here. Used by ``make bench``
(:func:`measure_variants`, :func:`variants_table`, :func:`variants_target`); other benchmarks that
need "the model the daemon serves here" as one file call :func:`served_variant`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

from agent.inference import LoadedModel, evaluate_golden, load_golden
from agent.inference.choice import Choice, Refused
from agent.inference.golden import GoldenResult, GoldenSet
from agent.inference.serving import choose_variant, timing_frame
from agent.inference.timing import cpu_identity, time_models
from agent.inference.variants import ModelSet, read_model_set
from agent.preprocess import Preprocessor
from tools.bench.machine import machine_info

__all__ = ["SERVED_OVER_FASTEST_LIMIT", "default_card", "measure_variants", "served_in", "served_variant",
           "variants_table", "variants_target"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# Goal 1.00; two variants within timing noise of each other may swap places between two runs, so the
# verdict allows 3 % (the ratio itself is always reported as measured).
SERVED_OVER_FASTEST_LIMIT = 1.03


def default_card(models: Path) -> Path:
    """The model set ``make bench`` measures: the model-version card listing the variants."""
    return models / "digit.card.json"


def _device_choice(models: ModelSet, golden: GoldenSet, pre: Preprocessor, floor: float, seconds_each: float) -> Choice:
    """What the daemon's start-up does (self-test floor, interleaved timing), without its cache."""
    def judge(m: LoadedModel) -> GoldenResult:
        r = evaluate_golden(m, golden, pre)
        if not r.finite or r.accuracy < floor:
            raise Refused(f"golden accuracy {r.accuracy:.4f} < {floor}", r.accuracy)
        return r

    return choose_variant(models, judge, timing_frame(golden, pre), 1, seconds_each=seconds_each)


def served_variant(card: Path, golden_path: Optional[Path] = None, seconds_each: float = 1.0,
                   floor: float = 0.97) -> tuple[str, Path]:
    """``(name, file)`` of the variant the device's own choice serves on this host (gated and timed
    now, not cached): for benchmarks that run one model file outside the daemon and compare it with
    what the daemon serves. A single-file model is its own answer."""
    models = read_model_set(card)
    if len(models.variants) == 1:
        return models.variants[0].name, models.variants[0].path
    golden = load_golden(golden_path or card.parent / "golden.npz")
    choice = _device_choice(models, golden, Preprocessor.from_card(models.card, 64), floor, seconds_each)
    return choice.model.variant, choice.model.path


@functools.lru_cache(maxsize=4)
def served_in(models_dir: Path) -> tuple[Path, str, Path]:
    """``(card, variant name, file)`` for a benchmark run: :func:`served_variant` of the model set in
    ``models_dir``, decided once per process so every daemon and every bare-model loop of one
    ``make bench`` runs the same file (daemons get it pinned with ``inference.variant``)."""
    card = default_card(models_dir)
    name, path = served_variant(card, models_dir / "golden.npz")
    return card, name, path


def measure_variants(card: Path, golden_path: Optional[Path] = None, seconds_each: float = 3.0,
                     choice_seconds: float = 1.0, floor: float = 0.97) -> dict[str, Any]:
    """See the module docstring; returns a JSON-ready dict."""
    models = read_model_set(card)
    golden = load_golden(golden_path or card.parent / "golden.npz")
    pre = Preprocessor.from_card(models.card, 64)
    frame = timing_frame(golden, pre)
    loaded: dict[str, LoadedModel] = {}
    rows: list[dict[str, Any]] = []
    for v in models.variants:
        m = LoadedModel.load(v.path, 1, v.card)
        g = evaluate_golden(m, golden, pre)
        loaded[v.name] = m
        rows.append({"name": v.name, "file": v.path.name, "quant_format": v.card.get("quant_format"),
                     "size_bytes": v.path.stat().st_size, "macs": v.card.get("macs"),
                     "golden_accuracy": round(g.accuracy, 4), "passes": g.finite and g.accuracy >= floor})
    log.info("timing %d variants side by side, %.1f s each", len(loaded), seconds_each)
    timings = time_models(loaded, frame, seconds_each)
    for r in rows:
        t = timings[r["name"]]
        r.update(p50_us=round(t.p50_us, 2), p99_us=round(t.p99_us, 2), p999_us=round(t.percentile_us(99.9), 2),
                 cpu_us=round(t.cpu_us, 2), runs=t.runs)

    t0 = time.monotonic()
    choice = _device_choice(models, golden, pre, floor, choice_seconds)
    choice_s = time.monotonic() - t0
    passing = [r for r in rows if r["passes"]]
    fastest = min(passing, key=lambda r: r["p50_us"]) if passing else None
    served = next(r for r in rows if r["name"] == choice.model.variant)
    for r in rows:
        r["served"] = r is served
    ratio = round(served["p50_us"] / fastest["p50_us"], 3) if fastest else None
    return {"card": str(card.relative_to(REPO) if card.is_relative_to(REPO) else card), "cpu": cpu_identity(),
            "simd_flags": machine_info().get("simd_flags"), "seconds_each": seconds_each, "rows": rows,
            "served": served["name"], "served_how": choice.how, "choice_s": round(choice_s, 2),
            "fastest": fastest["name"] if fastest else None, "served_over_fastest": ratio}


def variants_table(doc: dict[str, Any]) -> str:
    """Markdown: one row per variant, then the served ÷ fastest line."""
    head = "| variant | format | bytes | golden | p50 µs | p99 µs | p99.9 µs | CPU µs/inf | runs | |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|\n"
    lines = [f"| {r['name']} | {r['quant_format']} | {r['size_bytes']} | {r['golden_accuracy'] * 100:.2f} % | "
             f"{r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['cpu_us']} | {r['runs']} | "
             f"{'**served**' if r['served'] else ('' if r['passes'] else 'refused')} |" for r in doc["rows"]]
    tail = (f"\nServed by the device's choice ({doc['served_how']}, {doc['choice_s']} s): **{doc['served']}**; "
            f"fastest in this run: {doc['fastest']}; served ÷ fastest = **{doc['served_over_fastest']}** "
            f"(goal 1.00). Interleaved, {doc['seconds_each']} s per variant; CPU {doc['cpu']}; "
            f"SIMD {', '.join(doc.get('simd_flags') or [])}.\n")
    return head + "\n".join(lines) + "\n" + tail


def variants_target(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``make bench`` target row (same shape as tools.bench.report's)."""
    value = doc.get("served_over_fastest")
    met = None if value is None else value <= SERVED_OVER_FASTEST_LIMIT
    return {"target": "served variant p50 ÷ fastest variant p50", "value": value,
            "limit": SERVED_OVER_FASTEST_LIMIT, "unit": "×", "met": met}


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m tools.bench.variants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card", type=Path, default=default_card(REPO / "models"))
    p.add_argument("--golden", type=Path, default=None)
    p.add_argument("--seconds", type=float, default=3.0, help="timing per variant (interleaved)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    doc = measure_variants(a.card, a.golden, a.seconds)
    print(variants_table(doc))
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
