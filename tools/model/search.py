"""Choose the architecture on the validation split: train each candidate, export, quantize, compare.

    python -m tools.model.search --archs s16,s16k5,s8 --work build/search [--epochs 12]

Per candidate: conv MACs, parameters, fp32 and int8 validation accuracy (the daemon's input path),
int8 file size. Test data is never loaded. Each candidate's weights are left in
``<work>/<arch>/digit.pt`` with the build command that reproduces them bit for bit (seeded,
one thread), so ``tools.model.build --checkpoint`` can ship the winner without retraining.
Rows are appended to ``<work>/search.jsonl`` as each candidate finishes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tools.model.compact import compact
from tools.model.data import load_mnist
from tools.model.evaluate import predict_onnx, session
from tools.model.export import export_onnx
from tools.model.net import conv_macs, count_params
from tools.model.pipeline import calibration_set
from tools.model.quantize import QuantVariant, preprocess_for_quant, quantize
from tools.model.train import Split, TrainConfig, save_checkpoint, split_train, train

__all__ = ["MAX_MACS", "choose_arch", "evaluate_candidate", "load_search", "main"]

MAX_MACS = 400_000  # the device-class budget (conv multiply-accumulates per frame)
MAX_BYTES = 16 * 1024  # int8 file budget
ACC_TOLERANCE = 0.0005  # 2.5 of 5,000 validation images: closer than this counts as equal

log = logging.getLogger(__name__)


def evaluate_candidate(
    arch: str, split: Split, cfg: TrainConfig, recipe: QuantVariant, work: Path, build_argv: list[str]
) -> dict[str, Any]:
    """Train ``arch`` with ``cfg``, then measure it on the validation split (fp32 and int8)."""
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result = train(split, cfg)
    command = shlex.join(["python", "-m", "tools.model.build", *build_argv])
    save_checkpoint(result, cfg, work / "digit.pt", command)
    fp32 = export_onnx(result.model, work / "digit_fp32.onnx")
    prepped = preprocess_for_quant(fp32, work / "digit_fp32.pre.onnx")
    raw = quantize(prepped, work / "int8.raw.onnx", calibration_set(split, 2000, cfg.seed), recipe)
    int8 = work / "digit_int8.onnx"
    onnx.save(compact(onnx.load(str(raw))), str(int8))
    x_val = ((split.x_val.numpy() - 0.1307) / 0.3081).astype(np.float32)
    y_val = split.y_val.numpy()
    pf, pq = predict_onnx(session(fp32), x_val), predict_onnx(session(int8), x_val)
    return {
        "arch": arch, "conv_macs": conv_macs(arch), "params": count_params(result.model),
        "epochs": len(result.history), "train_minutes": round(result.minutes, 2),
        "fp32_val_acc": float((pf == y_val).mean()), "int8_val_acc": float((pq == y_val).mean()),
        "agreement_val": float((pf == pq).mean()), "recipe": recipe.tag,
        "int8_size_bytes": int8.stat().st_size, "fp32_size_bytes": fp32.stat().st_size,
        "minutes_total": round((time.monotonic() - t0) / 60, 2), "command": command,
    }


def load_search(*paths: Path) -> list[dict[str, Any]]:
    """Rows of search.jsonl files (the last row per arch and epoch count wins: a re-run replaces
    its candidate)."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        _read_rows(path, rows)
    return list(rows.values())


def _read_rows(path: Path, rows: dict[tuple[str, int], dict[str, Any]]) -> None:
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                rows[(str(row["arch"]), int(row["epochs"]))] = row
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a search row: {exc}") from None


def choose_arch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Among candidates within the MAC and size budgets, the best int8 validation accuracy; those
    within ACC_TOLERANCE of it count as equal and the one with the fewest MACs (then the fewest
    training epochs) wins."""
    ok = [r for r in rows if r["conv_macs"] <= MAX_MACS and r["int8_size_bytes"] <= MAX_BYTES]
    if not ok:
        raise ValueError(f"no candidate within {MAX_MACS} MACs and {MAX_BYTES} bytes: {rows}")
    top = max(float(r["int8_val_acc"]) for r in ok)
    return min((r for r in ok if float(r["int8_val_acc"]) >= top - ACC_TOLERANCE),
               key=lambda r: (int(r["conv_macs"]), int(r["epochs"]), -float(r["int8_val_acc"])))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", required=True, help="comma list of tools.model.net.ARCHS names")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--recipe", default="entropy-qoperator-u8s8-r7-f1", help="int8 recipe tag for the int8 column")
    args = p.parse_args(argv)
    recipe = QuantVariant.from_tag(args.recipe)
    x, y, _, _ = load_mnist()  # test images are returned but never used here
    split = split_train(x, y, d.val_size, args.seed)
    for arch in args.archs.split(","):
        cfg = TrainConfig(arch=arch, epochs=args.epochs, seed=args.seed, threads=args.threads)
        build_argv = ["--arch", arch, "--epochs", str(args.epochs), "--seed", str(args.seed)]
        row = evaluate_candidate(arch, split, cfg, recipe, args.work / arch, build_argv)
        log.info("candidate %s", row)
        with (args.work / "search.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
    best = choose_arch(load_search(args.work / "search.jsonl"))
    print(f"chosen on validation: {best['arch']} (int8 val {best['int8_val_acc']:.4f}, "
          f"{best['conv_macs']} MACs, {best['int8_size_bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
