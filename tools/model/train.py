"""Seeded, reproducible training of DigitNet on MNIST with a validation split carved from train."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from agent.preprocess import MNIST_MEAN, MNIST_STD, Preprocessor
from tools.model.augment import augment_canonical, normalise, preprocess_frames, synth_frames
from tools.model.net import DigitNet

__all__ = [
    "Split",
    "TrainConfig",
    "TrainResult",
    "canonicalise",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
    "split_train",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "p8"  # chosen on the validation split by tools.model.search (docs/model-report.md)
    epochs: int = 20  # the chosen net gains 0.12 pt of int8 validation accuracy over 12 epochs
    batch_size: int = 256
    lr: float = 4e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    synth_fraction: float = 0.2  # share of each batch rebuilt as raw frames -> Preprocessor
    aug_p: float = 0.6  # share of the remaining samples given geometric/stroke augmentation
    dropout: float = 0.0
    ema: float = 0.999  # weight EMA decay (0 disables); the EMA model is the one exported
    synth_side: int = 40
    seed: int = 1
    val_size: int = 5000
    max_steps: int = 0  # > 0: stop early (smoke tests)
    threads: int = 1  # bit-reproducible; on a shared 2-core box a second thread barely helps


@dataclass
class Split:
    """Training data after the runtime normalisation, as [0,1] pixels (N,1,28,28) + int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    raw_train: np.ndarray  # uint8 originals of x_train (for the raw-frame synthesiser)


@dataclass
class TrainResult:
    model: DigitNet
    history: list[dict[str, float]] = field(default_factory=list)
    minutes: float = 0.0


def canonicalise(images: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """uint8 (N,28,28) -> normalised float32 (N,1,28,28) through the daemon's Preprocessor."""
    return preprocess_frames(images, pre)


def split_train(images: np.ndarray, labels: np.ndarray, val_size: int, seed: int) -> Split:
    """Seeded train/validation split of the 60k training set; both run through the Preprocessor."""
    perm = np.random.default_rng(seed).permutation(len(images))
    tr, va = perm[val_size:], perm[:val_size]
    pre = Preprocessor(max_side=28)

    def to01(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(canonicalise(a, pre) * MNIST_STD + MNIST_MEAN)

    return Split(
        x_train=to01(images[tr]),
        y_train=torch.from_numpy(labels[tr].astype(np.int64)),
        x_val=to01(images[va]),
        y_val=torch.from_numpy(labels[va].astype(np.int64)),
        raw_train=images[tr],
    )


def predict(model: torch.nn.Module, x_norm: torch.Tensor, batch: int = 2000) -> torch.Tensor:
    """Argmax predictions for already-normalised inputs."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x_norm[i : i + batch]).argmax(1) for i in range(0, len(x_norm), batch)])


def _batch(split: Split, idx: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, pre: Preprocessor) -> torch.Tensor:
    x = normalise(augment_canonical(split.x_train[idx], gen, cfg.aug_p))
    k = round(cfg.synth_fraction * len(idx))
    if k:
        raw = torch.from_numpy(split.raw_train[idx[:k].numpy()]).float().div_(255).unsqueeze(1)
        x[:k] = torch.from_numpy(preprocess_frames(synth_frames(raw, cfg.synth_side, gen), pre))
    return x


class _Ema:
    """Exponential moving average of weights and BN statistics (smoother than the last iterate).

    The decay ramps up as (1 + n) / (10 + n) so short runs are not dominated by the initial weights.
    """

    def __init__(self, model: DigitNet, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: DigitNet) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.module.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1.0 - d)
            else:
                avg.copy_(cur)


def _epoch(
    model: DigitNet,
    split: Split,
    cfg: TrainConfig,
    parts: tuple[torch.optim.Optimizer, Any, torch.Generator, _Ema | None],
    pre: Preprocessor,
    budget: int,
    bar: Any,
) -> tuple[float, float, int]:
    """One pass over the shuffled training split; returns (mean loss, train accuracy, steps run)."""
    opt, sched, gen, ema = parts
    model.train()
    perm = torch.randperm(len(split.x_train), generator=gen)
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    for b in range(min(budget, len(split.x_train) // cfg.batch_size)):
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        x, y = _batch(split, idx, cfg, gen, pre), split.y_train[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        steps += 1
        bar.update(1)
    return loss_sum / max(seen, 1), correct / max(seen, 1), steps


def _final(model: DigitNet, ema: _Ema | None) -> DigitNet:
    return model if ema is None else ema.module


def train(split: Split, cfg: TrainConfig) -> TrainResult:
    """Train with AdamW + one-cycle LR; per-epoch validation accuracy logged (choices are made on it)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DigitNet(cfg.arch, dropout=cfg.dropout)
    steps_per_epoch = len(split.x_train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.2)
    ema = _Ema(model, cfg.ema) if cfg.ema > 0 else None
    result = TrainResult(model=model)
    pre = Preprocessor(max_side=cfg.synth_side)
    x_val = normalise(split.x_val)
    t0, step = time.monotonic(), 0
    with tqdm(total=total, desc=f"train {cfg.arch}", unit="step", leave=False) as bar:
        for epoch in range(1, cfg.epochs + 1):
            loss, acc, steps = _epoch(model, split, cfg, (opt, sched, gen, ema), pre, total - step, bar)
            step += steps
            val_acc = float((predict(_final(model, ema), x_val) == split.y_val).float().mean())
            result.history.append({"epoch": epoch, "loss": loss, "train_acc": acc, "val_acc": val_acc})
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{val_acc:.4f}")
            log.info("epoch %d loss %.4f train %.4f val %.4f", epoch, loss, acc, val_acc)
            if step >= total:
                break
    result.model = _final(model, ema)
    result.minutes = (time.monotonic() - t0) / 60
    return result


def save_checkpoint(result: TrainResult, cfg: TrainConfig, path: Path, command: str) -> None:
    """Weights + a JSON sidecar (config, history, minutes, command) so a build can resume from them."""
    torch.save(result.model.state_dict(), path)
    meta = {"config": asdict(cfg), "history": result.history, "minutes": result.minutes, "command": command}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def load_checkpoint(path: Path) -> tuple[TrainResult, TrainConfig, str]:
    """Inverse of save_checkpoint: the trained model, its recorded config and training command."""
    meta = json.loads(path.with_suffix(".json").read_text())
    cfg = TrainConfig(**meta["config"])
    model = DigitNet(cfg.arch, dropout=cfg.dropout)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    return TrainResult(model=model, history=meta["history"], minutes=float(meta["minutes"])), cfg, str(meta["command"])
