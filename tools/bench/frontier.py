"""The model frontier: accuracy on the full MNIST test set, sizes, and latency/CPU/RSS per model.

Each model is measured in its own fresh process (``tools.bench.measure``) so RSS after load is that
model's alone. Accuracy uses the daemon's input path: test images through ``agent.preprocess``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tools.bench.graph import graph_sizes
from tools.bench.machine import load_average

__all__ = ["SEED_FRONTIER", "FrontierOptions", "ModelEntry", "run_frontier", "specs", "test_inputs", "variant_entries"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

# The figures the seed published, shown beside ours for comparison (not measured here).
SEED_FRONTIER: list[dict[str, Any]] = [
    {"name": "seed: FP32", "accuracy": 0.985, "p50_us": 45000.0, "file_kb": 3200},
    {"name": "seed: pruned FP32", "accuracy": 0.978, "p50_us": 32000.0, "file_kb": 1600},
    {"name": "seed: INT8", "accuracy": 0.973, "p50_us": 12000.0, "file_kb": 800},
    {"name": "seed: aggressive INT8", "accuracy": 0.951, "p50_us": 8000.0, "file_kb": 400},
]


@dataclass
class ModelEntry:
    name: str
    path: Path
    mode: str  # "engine" (the daemon's code) or "naive" (default ORT session + session.run)
    precision: str
    note: str = ""
    meta: Optional[dict[str, Any]] = None


@dataclass
class FrontierOptions:
    quick: bool
    runs: int
    models_dir: Path
    epochs: int = 2
    max_steps: int = 0


def test_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST test set through the daemon's Preprocessor: (N,1,28,28) float32, labels."""
    from agent.preprocess import Preprocessor
    from tools.model.augment import preprocess_frames
    from tools.model.data import load_mnist

    _, _, tx, ty = load_mnist()
    return preprocess_frames(tx, Preprocessor(max_side=28)), ty.astype(np.int64)


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from tools.model.evaluate import predict_onnx, session

    return float((predict_onnx(session(path), x) == y).mean())


def _measure(entry: ModelEntry, inputs: Path, runs: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.bench.measure", "--model", str(entry.path), "--inputs", str(inputs),
           "--mode", entry.mode, "--runs", str(runs)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measuring {entry.name} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def variant_entries(models_dir: Path) -> list[ModelEntry]:
    """Every variant listed by the model-version card (models/digit.card.json), served by the engine."""
    card_path = models_dir / "digit.card.json"
    if not card_path.exists():
        return []
    from agent.inference.model import read_card

    card = read_card(card_path, str(card_path))
    arch = str(card.get("training", {}).get("arch", "?"))
    return [ModelEntry(f"{v['name']} variant ({arch})", models_dir / v["file"], "engine",
                       "fp32" if v["quant_format"] == "float" else "int8",
                       f"model version {card['version']}, {v['macs']:,} conv MACs",
                       {"arch": arch, "macs": v["macs"], "macs_float": v.get("macs_float")})
            for v in card["variants"]]


def _entries(opts: FrontierOptions) -> list[ModelEntry]:
    shipped = opts.models_dir / "digit.int8.onnx"
    rows = [ModelEntry("int8 deployed", shipped, "engine", "int8", "the shipped model")]
    if opts.quick:
        rows.append(ModelEntry("int8 deployed, naive ORT", shipped, "naive", "int8",
                               "quick mode: the shipped model run the naive way (no FP32 training)"))
        return rows
    from agent.inference.model import read_card
    from tools.bench import zoo

    card = read_card(shipped)
    recipe = zoo.recipe_from_card(card)
    arch = str(card.get("training", {}).get("arch", "t12"))
    sp = specs(opts.epochs, opts.max_steps, arch)
    lenet, pruned, same, tiny = sp["lenet"], sp["pruned"], sp["same"], sp["tiny"]
    b_lenet, b_pruned = zoo.build(lenet, recipe), zoo.build(pruned, None)
    b_same, b_tiny = zoo.build(same, None), zoo.build(tiny, recipe)
    assert b_lenet.int8 is not None and b_tiny.int8 is not None
    return [
        *rows,
        *variant_entries(opts.models_dir),
        ModelEntry("fp32 baseline (LeNet-style)", b_lenet.fp32, "engine", "fp32", "", b_lenet.meta),
        ModelEntry("fp32 baseline, naive ORT", b_lenet.fp32, "naive", "fp32",
                   "default SessionOptions + session.run", b_lenet.meta),
        ModelEntry("fp32 pruned (50 % filters)", b_pruned.fp32, "engine", "fp32",
                   "L1 filter pruning + fine-tune", b_pruned.meta),
        ModelEntry("int8 baseline (LeNet-style)", b_lenet.int8, "engine", "int8", "", b_lenet.meta),
        ModelEntry(f"fp32 deployed arch ({arch})", b_same.fp32, "engine", "fp32",
                   "same net as the shipped int8, retrained by the bench", b_same.meta),
        ModelEntry("int8 aggressive (tiny)", b_tiny.int8, "engine", "int8", "", b_tiny.meta),
        ModelEntry("fp32 aggressive arch (tiny)", b_tiny.fp32, "engine", "fp32", "", b_tiny.meta),
    ]


def specs(epochs: int, max_steps: int, deployed_arch: str) -> dict[str, Any]:
    """The trained frontier nets (cached by tools.bench.zoo): baseline, pruned, deployed arch, tiny."""
    from tools.bench.zoo import ZooSpec

    lenet = ZooSpec("lenet", "bench-lenet", epochs, max_steps)
    return {
        "lenet": lenet,
        "pruned": ZooSpec("lenet-pruned", "bench-lenet", max(1, epochs // 2), max_steps, prune_from=lenet,
                          keep=0.5, lr=1e-3),
        "same": ZooSpec(f"deployed-arch-{deployed_arch}", deployed_arch, epochs, max_steps),
        "tiny": ZooSpec("tiny", "bench-tiny", epochs, max_steps),
    }


def _row(entry: ModelEntry, acc: float, sizes: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    b1, b4 = m["batch1"], m["batch4"]
    return {
        "name": entry.name, "mode": entry.mode, "precision": entry.precision, "note": entry.note,
        "model": str(entry.path), "accuracy": round(acc, 4), **sizes,
        "b1_p50_us": b1["p50_us"], "b1_p99_us": b1["p99_us"], "b1_p999_us": b1["p999_us"],
        "b1_max_us": b1["max_us"], "b1_cpu_us": b1["cpu_us_per_frame"],
        "b4_frame_p50_us": b4["per_frame"]["p50_us"], "b4_frame_p99_us": b4["per_frame"]["p99_us"],
        "b4_frame_p999_us": b4["per_frame"]["p999_us"], "b4_frame_max_us": b4["per_frame"]["max_us"],
        "b4_cpu_us_per_frame": b4["cpu_us_per_frame"],
        "rss_after_load_bytes": m["rss_after_load_bytes"], "rss_model_delta_bytes": m["rss_model_delta_bytes"],
        "training": entry.meta, "raw": m,
    }


def run_frontier(opts: FrontierOptions) -> dict[str, Any]:
    x, y = test_inputs()
    entries = _entries(opts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, x[:512])
        for entry in entries:
            log.info("frontier: %s (%s) load %s", entry.name, entry.mode, load_average())
            acc = _accuracy(entry.path, x, y)
            rows.append(_row(entry, acc, graph_sizes(entry.path), _measure(entry, inputs, opts.runs)))
    note = ("quick mode: only the shipped model (engine vs naive ORT); nothing was trained"
            if opts.quick else f"frontier models trained {opts.epochs} epoch(s)"
            + (f", at most {opts.max_steps} steps (accuracy not meaningful)" if opts.max_steps else ""))
    return {"rows": rows, "seed_published": SEED_FRONTIER, "test_images": len(y), "note": note,
            "runs_batch1": opts.runs}
