"""The frontier's models, trained/exported/quantized with tools.model and cached by configuration.

Cache: ``<cache>/bench-models/<name>-<key>/`` (``<cache>`` = ``$DIGIT_AGENT_CACHE`` or
``~/.cache/digit-agent``), where ``key`` hashes everything that changes the weights (arch, epochs,
steps, pruning, recipe, seed, torch version). A second ``make bench`` trains nothing.

Nets are expressed in tools.model.net's layer vocabulary (conv (channels, kernel) / "M" max-pool,
GAP + 1x1 classifier) so the model pipeline's own training, BN folding, export and quantization
apply unchanged; the bench only registers two more layer lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import torch
from torch import nn

import tools.model.train as train_mod
from tools.model import data as mnist
from tools.model.compact import compact
from tools.model.export import export_onnx
from tools.model.net import ARCHS, DigitNet, Layer, count_params
from tools.model.pipeline import calibration_set
from tools.model.quantize import QuantVariant, preprocess_for_quant, quantize
from tools.model.train import Split, TrainConfig, split_train

__all__ = ["BENCH_ARCHS", "Built", "ZooSpec", "build", "cache_root", "prune", "recipe_from_card"]

log = logging.getLogger(__name__)

BENCH_ARCHS: dict[str, list[tuple[int, int] | str]] = {
    # LeNet-5-like: 5x5 convs + pools, wide (the net a user starts from); ~127 k parameters.
    "bench-lenet": [(32, 5), "M", (64, 5), "M", (128, 3)],
    # The aggressive end: ~1.5 k parameters.
    "bench-tiny": [(4, 3), (8, 3), "M", (8, 3), (8, 3)],
}
for _name, _layers in BENCH_ARCHS.items():
    ARCHS.setdefault(_name, _layers)


@dataclass(frozen=True)
class ZooSpec:
    """One trained net. ``prune_from``/``keep``: structured-prune that spec's net, then fine-tune."""

    name: str
    arch: str
    epochs: int
    max_steps: int = 0
    prune_from: Optional[ZooSpec] = None
    keep: float = 1.0
    lr: float = 4e-3
    seed: int = 1

    def key(self) -> str:
        doc = {**asdict(self), "torch": torch.__version__, "v": 1}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Built:
    fp32: Path
    int8: Optional[Path]
    meta: dict[str, Any]


def cache_root() -> Path:
    return mnist.cache_dir().parent / "bench-models"


@lru_cache(maxsize=1)
def _split(seed: int) -> tuple[Split, np.ndarray, np.ndarray]:
    x, y, _tx, _ty = mnist.load_mnist()
    return split_train(x, y, TrainConfig().val_size, seed), _tx, _ty


@contextlib.contextmanager
def _start_from(net: DigitNet) -> Iterator[None]:
    """train() builds ``DigitNet(arch)`` itself; for fine-tuning hand it the pruned net instead."""
    original = getattr(train_mod, "DigitNet")  # noqa: B009 -- not re-exported by tools.model.train
    setattr(train_mod, "DigitNet", lambda *a, **k: net)  # noqa: B010
    try:
        yield
    finally:
        setattr(train_mod, "DigitNet", original)  # noqa: B010


def _convs(net: DigitNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    seq = list(net.features)
    return [(m, seq[i + 1]) for i, m in enumerate(seq) if isinstance(m, nn.Conv2d)]  # type: ignore[misc]


def pruned_arch(arch: str, keep: float) -> list[Layer]:
    """``arch`` with each conv's channel count scaled by ``keep`` (kernel and stride kept)."""
    return [s if isinstance(s, str) else (max(1, round(s[0] * keep)), *s[1:]) for s in ARCHS[arch]]  # type: ignore[misc]


def prune(net: DigitNet, arch: str, keep: float) -> DigitNet:
    """Structured (filter) pruning: keep each conv's ``keep`` share of filters with the largest L1
    norm, slicing the next conv's input channels and the BN/classifier to match."""
    name = f"{arch}-keep{keep:g}"
    ARCHS.setdefault(name, pruned_arch(arch, keep))
    small = DigitNet(name)
    prev: Optional[torch.Tensor] = None
    with torch.no_grad():
        for (c, bn), (sc, sbn) in zip(_convs(net), _convs(small)):
            w = c.weight if prev is None else c.weight[:, prev]
            order = c.weight.abs().sum(dim=(1, 2, 3)).argsort(descending=True)
            idx = order[: sc.out_channels].sort().values
            sc.weight.copy_(w[idx])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(sbn, attr).copy_(getattr(bn, attr)[idx])
            prev = idx
        assert prev is not None
        small.head.weight.copy_(net.head.weight[:, prev])
        assert small.head.bias is not None and net.head.bias is not None
        small.head.bias.copy_(net.head.bias)
    return small


def _train(spec: ZooSpec, split: Split, start: Optional[DigitNet]) -> tuple[DigitNet, dict[str, Any]]:
    cfg = TrainConfig(arch=spec.arch if start is None else "start", epochs=spec.epochs,
                      max_steps=spec.max_steps, seed=spec.seed, lr=spec.lr,
                      threads=1)  # a second torch thread only spins on a shared 2-core machine
    t0 = time.monotonic()
    if start is None:
        result = train_mod.train(split, cfg)
    else:
        with _start_from(start):
            result = train_mod.train(split, cfg)
    hist = result.history[-1] if result.history else {}
    return result.model, {"train_minutes": round((time.monotonic() - t0) / 60, 2),
                          "val_acc": hist.get("val_acc"), "epochs_run": len(result.history),
                          "params": count_params(result.model)}


def recipe_from_card(card: dict[str, Any]) -> QuantVariant:
    """The shipped model's quantization recipe (so bench int8 models are made the same way)."""
    cal = card.get("calibration", {})
    fmt = "qdq" if str(card.get("quant_format", "")).lower() == "qdq" else "qoperator"
    act = "s8" if card.get("activation_type") == "int8" else "u8"
    if card.get("quant_recipe"):
        return QuantVariant.from_tag(str(card["quant_recipe"]))
    return QuantVariant(str(cal.get("method", "minmax")), fmt, act)


def _net(spec: ZooSpec, d: Path, split: Split) -> tuple[DigitNet, dict[str, Any]]:
    """Trained (or pruned + fine-tuned) net for ``spec``, from the cache when present."""
    pt, meta_path = d / "net.pt", d / "meta.json"
    if pt.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        ARCHS.setdefault(str(meta["arch"]), [tuple(s) if isinstance(s, list) else s for s in meta["layers"]])
        net = DigitNet(str(meta["arch"]))
        net.load_state_dict(torch.load(pt, weights_only=True))
        return net.eval(), meta
    start = None
    arch = spec.arch
    if spec.prune_from is not None:
        parent, _ = _net(spec.prune_from, _dir(spec.prune_from), split)
        start = prune(parent, spec.prune_from.arch, spec.keep)
        arch = f"{spec.prune_from.arch}-keep{spec.keep:g}"
    log.info("training %s (%s)", spec.name, arch)
    net, meta = _train(spec, split, start)
    meta.update(arch=arch, layers=[list(s) if isinstance(s, tuple) else s for s in ARCHS[arch]])
    d.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), pt)
    meta_path.write_text(json.dumps(meta, indent=1))
    return net.eval(), meta


def _dir(spec: ZooSpec) -> Path:
    return cache_root() / f"{spec.name}-{spec.key()}"


def build(spec: ZooSpec, recipe: Optional[QuantVariant], calib_images: int = 1000) -> Built:
    """fp32 ONNX (always) and int8 ONNX (when ``recipe``), cached beside the net."""
    d = _dir(spec)
    split, _, _ = _split(spec.seed)
    net, meta = _net(spec, d, split)
    fp32 = d / "fp32.onnx"
    if not fp32.exists():
        export_onnx(net, fp32)
    if recipe is None:
        return Built(fp32, None, meta)
    int8 = d / f"int8-{recipe.tag}.onnx"
    if not int8.exists():
        calib = calibration_set(split, calib_images, spec.seed)
        prepped = preprocess_for_quant(fp32, d / "fp32.pre.onnx")
        raw = quantize(prepped, d / "int8.raw.onnx", calib, recipe)
        onnx.save(compact(onnx.load(str(raw))), str(int8))
    return Built(fp32, int8, {**meta, "recipe": recipe.tag})
