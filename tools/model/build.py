"""`make model`: rebuild models/digit_int8.onnx, its card and golden set from scratch.

    python -m tools.model.build --out models --docs docs

Every figure written to the card/report is measured here; choices (calibration method, format)
are made on the validation split carved from the training set, never on test.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.preprocess import BOX, MNIST_MEAN, MNIST_STD
from tools.model import pipeline
from tools.model.card import write_card, write_golden
from tools.model.data import load_mnist
from tools.model.export import DEFAULT_OPSET, export_onnx
from tools.model.net import count_params
from tools.model.report import plot_history, write_report
from tools.model.train import TrainConfig, split_train, train

__all__ = ["main", "parse_args"]

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models"), help="where the shipped artefacts go")
    p.add_argument("--docs", type=Path, default=None, help="write model-report.md + plot here")
    p.add_argument("--work", type=Path, default=None, help="keep intermediates here (default: temp dir)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=0, help="stop training early (smoke runs)")
    p.add_argument("--train-subset", type=int, default=0, help="use only N training images (smoke runs)")
    p.add_argument("--test-subset", type=int, default=0, help="evaluate on the first N test images")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch intra-op threads for training")
    p.add_argument("--calib-images", type=int, default=2000)
    p.add_argument("--methods", default="minmax,entropy,percentile")
    p.add_argument("--latency-runs", type=int, default=3000)
    p.add_argument("--max-bytes", type=int, default=16 * 1024, help="size budget for the shipped model")
    p.add_argument("--golden", type=int, default=400)
    p.add_argument("--ort-versions", default="", help="comma list for tools.model.ort_compat (slow)")
    p.add_argument("--no-sensitivity", action="store_true")
    return p.parse_args(argv)


def _train(args: argparse.Namespace, data: tuple[np.ndarray, ...]) -> tuple[Any, Any, TrainConfig]:
    x, y = data[0], data[1]
    if args.train_subset:
        x, y = x[: args.train_subset], y[: args.train_subset]
    cfg = TrainConfig(
        arch=args.arch,
        epochs=args.epochs,
        seed=args.seed,
        max_steps=args.max_steps,
        threads=args.threads,
        val_size=min(TrainConfig().val_size, len(x) // 6),
    )
    split = split_train(x, y, cfg.val_size, cfg.seed)
    return split, train(split, cfg), cfg


def _command(argv: list[str] | None) -> str:
    args = argv if argv is not None else sys.argv[1:]
    return shlex.join(["python", "-m", "tools.model.build", *args])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = load_mnist()
    test_x, test_y = data[2], data[3]
    if args.test_subset:
        test_x, test_y = test_x[: args.test_subset], test_y[: args.test_subset]
    split, result, cfg = _train(args, data)
    tmp_ctx = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(tmp_ctx.name) if tmp_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        fp32 = export_onnx(result.model, work / "digit_fp32.onnx", args.opset)
        ev = pipeline.Evaluation.build(split, test_x, test_y, args.seed)
        calib = pipeline.calibration_set(split, args.calib_images, args.seed)
        best, variants, prepped = pipeline.choose_variant(fp32, work, calib, ev, args)
        shipped = args.out / "digit_int8.onnx"
        shutil.copyfile(best.path, shipped)
        metrics = pipeline.final_metrics(fp32, shipped, ev, variants, args.latency_runs)
        golden_idx = write_golden(args.out / "golden.npz", test_x, test_y, args.golden, args.seed)
        metrics["accuracy"]["golden_int8"] = pipeline.golden_accuracy(shipped, args.out / "golden.npz")
        min_ort = pipeline.min_ort(shipped, args.out / "golden.npz", args.ort_versions)
        fields = {
            "normalisation": {
                "mean": MNIST_MEAN,
                "std": MNIST_STD,
                "scale": "(x/255 - mean)/std",
                "polarity": "auto: border mean vs frame mean; ink made bright on dark",
                "box": BOX,
                "centre_of_mass": [14, 14],
                "preprocessor": "agent.preprocess.Preprocessor",
            },
            **metrics,
            "calibration": {
                "method": best.variant.method,
                "images": len(calib),
                "source": "training split (75% plain, 25% synthetic frames via Preprocessor)",
            },
            "quant_format": best.variant.fmt.upper() if best.variant.fmt == "qdq" else "QOperator",
            "activation_type": "uint8" if best.variant.activations == "u8" else "int8",
            "weight_type": "int8 per-channel",
            "training": {
                "seed": cfg.seed,
                "command": _command(argv),
                "epochs": len(result.history),
                "minutes": round(result.minutes, 2),
                "arch": cfg.arch,
                "params": count_params(result.model),
                "config": asdict(cfg),
                "val_acc_final": result.history[-1]["val_acc"],
                "train_images": len(split.x_train),
            },
            "golden": {"file": "golden.npz", "n": len(golden_idx), "source": "test set, seeded draw"},
            "min_onnxruntime": min_ort,
        }
        card = write_card(args.out / "digit_int8.card.json", shipped, fields)
        if args.docs is not None and not args.no_sensitivity:
            args.docs.mkdir(parents=True, exist_ok=True)
            plot_history(result.history, args.docs / "model-training.png")
            sqnr, one = pipeline.sensitivity(fp32, prepped, work, calib, ev, best.variant)
            write_report(args.docs / "model-report.md", card, variants, sqnr, one, "model-training.png")
        print(f"wrote {shipped} ({card['size_bytes']} bytes), int8 test acc {card['accuracy']['int8_test']:.4f}")
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
