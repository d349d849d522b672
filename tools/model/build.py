"""`make model`: rebuild the model variants (models/digit.int8.onnx, models/digit.fp32.onnx), their
card (models/digit.card.json) and the golden set from scratch.

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
import onnx
import torch

from agent.inference.model import read_card
from agent.preprocess import BOX, MNIST_MEAN, MNIST_STD
from tools.bench.graph import conv_macs
from tools.model import pipeline
from tools.model.card import CARD_NAME, variant_entry, write_card, write_golden
from tools.model.compact import compact
from tools.model.data import load_mnist
from tools.model.evaluate import probs_onnx, session
from tools.model.export import DEFAULT_OPSET, export_onnx
from tools.model.net import count_params
from tools.model.report import plot_history, write_report
from tools.model.search import load_search
from tools.model.train import Split, TrainConfig, TrainResult, load_checkpoint, save_checkpoint, split_train, train

__all__ = ["main", "parse_args"]

log = logging.getLogger(__name__)

INT8_FILE, FP32_FILE = "digit.int8.onnx", "digit.fp32.onnx"
LEGACY_CARD = "digit_int8.card.json"  # the single-file card of builds before variants


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
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--aug-p", type=float, default=d.aug_p, help="share of samples with geometric/stroke aug")
    p.add_argument("--synth-fraction", type=float, default=d.synth_fraction, help="share of raw synthetic frames")
    p.add_argument("--ema", type=float, default=d.ema, help="weight EMA decay, 0 = off")
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="skip training: weights from a previous build's work dir"
    )
    p.add_argument("--calib-images", type=int, default=2000)
    p.add_argument("--methods", default="minmax,entropy,percentile")
    p.add_argument("--recipes", default=pipeline.ALL_RECIPES, help="format:activations[:r7] list to compare")
    p.add_argument("--latency-runs", type=int, default=3000)
    p.add_argument("--max-bytes", type=int, default=16 * 1024, help="size budget for the shipped model")
    p.add_argument("--golden", type=int, default=400)
    p.add_argument("--ort-versions", default="", help="comma list for tools.model.ort_compat (slow)")
    p.add_argument("--model-version", type=int, default=0,
                   help="the card's version (OTA anti-rollback compares it); default: the card in --out + 1")
    p.add_argument("--no-sensitivity", action="store_true")
    p.add_argument("--search-results", type=Path, nargs="*", default=[],
                   help="search.jsonl files of tools.model.search (the architecture choice) for the report")
    return p.parse_args(argv)


def _train(
    args: argparse.Namespace, data: tuple[np.ndarray, ...], work: Path
) -> tuple[Split, TrainResult, TrainConfig, str]:
    """Train (or resume from --checkpoint); the checkpoint + sidecar are always left in ``work``."""
    x, y = data[0], data[1]
    if args.train_subset:
        x, y = x[: args.train_subset], y[: args.train_subset]
    if args.checkpoint is not None:
        result, cfg, command = load_checkpoint(args.checkpoint)
    else:
        cfg = TrainConfig(
            arch=args.arch,
            epochs=args.epochs,
            seed=args.seed,
            max_steps=args.max_steps,
            threads=args.threads,
            dropout=args.dropout,
            aug_p=args.aug_p,
            synth_fraction=args.synth_fraction,
            ema=args.ema,
            val_size=min(TrainConfig().val_size, len(x) // 6),
        )
        command = _command(args.argv)
    split = split_train(x, y, cfg.val_size, cfg.seed)
    if args.checkpoint is None:
        result = train(split, cfg)
    save_checkpoint(result, cfg, work / "digit.pt", command)
    return split, result, cfg, command


def _command(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "tools.model.build", *argv])


def _card_fields(
    cfg: TrainConfig, result: TrainResult, split: Split, command: str, build_cmd: str, best: pipeline.Candidate
) -> dict[str, Any]:
    return {
        "normalisation": {
            "mean": MNIST_MEAN,
            "std": MNIST_STD,
            "scale": "(x/255 - mean)/std",
            "polarity": "auto: border mean vs frame mean; ink made bright on dark",
            "box": BOX,
            "centre_of_mass": [14, 14],
            "preprocessor": "agent.preprocess.Preprocessor",
        },
        "quant_format": "QDQ" if best.variant.fmt == "qdq" else "QOperator",
        "activation_type": "uint8" if best.variant.activations == "u8" else "int8",
        "weight_type": "int8 per-channel" + (" (7-bit range)" if best.variant.reduce_range else "")
        + ("; first conv float32" if best.variant.float_first else ""),
        "quant_recipe": best.variant.tag,
        "training": {
            "seed": cfg.seed,
            "command": command,
            "build_command": build_cmd,
            "epochs": len(result.history),
            "minutes": round(result.minutes, 2),
            "arch": cfg.arch,
            "params": count_params(result.model),
            "config": asdict(cfg),
            "val_acc_final": result.history[-1]["val_acc"],
            "train_images": len(split.x_train),
        },
    }


def _previous_version(out: Path) -> int:
    """Version of the card being replaced (0 if none): a rebuilt model is a new version. An
    unreadable card stops the build (ModelError) rather than restart at 1, which a fleet's
    anti-rollback would refuse. The single-file card of earlier builds counts too."""
    cards = [out / CARD_NAME, out / LEGACY_CARD]
    return max((int(read_card(c, str(c)).get("version", 0)) for c in cards if c.exists()), default=0)


def _ship_fp32(fp32: Path, dest: Path, ev: pipeline.Evaluation) -> Path:
    """The fp32 variant: the exported graph, compacted like the int8 one (checked output-exact)."""
    onnx.save(compact(onnx.load(str(fp32))), str(dest))
    if not np.array_equal(probs_onnx(session(dest), ev.x_val), probs_onnx(session(fp32), ev.x_val)):
        raise RuntimeError(f"compaction changed the outputs of {fp32}")
    return dest


def _variants(paths: dict[str, Path], acc: dict[str, float], best: pipeline.Candidate) -> list[dict[str, Any]]:
    """The card's ``variants``: int8 first (the default file), then fp32 — the same trained net.
    MACs are counted in each file's own graph (tools.bench.graph.conv_macs)."""
    q_fmt = "QDQ" if best.variant.fmt == "qdq" else "QOperator"
    return [
        variant_entry("int8", paths["int8"], q_fmt,
                      {"golden": acc["golden_int8"], "test": acc["int8_test"],
                       "transformed": acc["int8_transformed_test"]}, conv_macs(paths["int8"])),
        variant_entry("fp32", paths["fp32"], "float",
                      {"golden": acc["golden_fp32"], "test": acc["fp32_test"],
                       "transformed": acc["fp32_transformed_test"]}, conv_macs(paths["fp32"])),
    ]


def _build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = load_mnist()
    test_x, test_y = data[2], data[3]
    if args.test_subset:
        test_x, test_y = test_x[: args.test_subset], test_y[: args.test_subset]
    split, result, cfg, command = _train(args, data, work)
    fp32 = export_onnx(result.model, work / "digit_fp32.onnx", args.opset)
    ev = pipeline.Evaluation.build(split, test_x, test_y, args.seed)
    calib = pipeline.calibration_set(split, args.calib_images, args.seed)
    best, variants, prepped = pipeline.choose_variant(fp32, work, calib, ev, args)
    paths = {"int8": args.out / INT8_FILE, "fp32": args.out / FP32_FILE}
    golden = args.out / "golden.npz"
    version = args.model_version or _previous_version(args.out) + 1
    shutil.copyfile(best.path, paths["int8"])
    _ship_fp32(fp32, paths["fp32"], ev)
    metrics = pipeline.final_metrics(paths["fp32"], paths["int8"], ev, variants, args.latency_runs,
                                     best.variant.tag)
    golden_idx = write_golden(golden, test_x, test_y, args.golden, args.seed)
    for name, path in paths.items():
        metrics["accuracy"][f"golden_{name}"] = pipeline.golden_accuracy(path, golden)
    fields = {
        "version": version,
        **_card_fields(cfg, result, split, command, _command(args.argv), best),
        **metrics,
        "calibration": {
            "method": best.variant.method,
            "images": len(calib),
            "source": "training split (75% plain, 25% synthetic frames via Preprocessor)",
        },
        "golden": {"file": golden.name, "n": len(golden_idx), "source": "test set, seeded draw"},
        "min_onnxruntime": pipeline.min_ort(paths["int8"], golden, args.ort_versions),
    }
    card = write_card(args.out / CARD_NAME, paths["int8"], fields,
                      _variants(paths, metrics["accuracy"], best))
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        plot_history(result.history, args.docs / "model-training.png")
        sqnr, one = (
            ({}, []) if args.no_sensitivity else pipeline.sensitivity(fp32, prepped, work, calib, ev, best.variant)
        )
        search = load_search(*args.search_results)
        write_report(args.docs / "model-report.md", card, variants, sqnr, one, "model-training.png", search)
    return card


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work if args.work is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        card = _build(args, work)
    for v in card["variants"]:
        print(f"wrote {args.out / v['file']} ({v['size_bytes']} bytes), test acc {v['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
