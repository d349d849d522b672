"""Training-time augmentation (torch, batched) and the raw-frame synthesiser shared with evaluation.

Two paths, both ending in the runtime's normalisation (mean/std of agent.preprocess):

* ``augment_canonical``: residual variation the runtime normaliser cannot remove -- small rotation,
  scale, shear and shift, stroke width (dilate/erode) -- applied to already-normalised 28x28 digits.
* ``synth_frames`` + ``agent.preprocess.Preprocessor``: digits pasted into larger canvases at random
  position/scale/rotation with random polarity, background level, contrast and noise, then passed
  through the daemon's own Preprocessor, so training sees exactly what the runtime produces.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from agent.preprocess import MNIST_MEAN, MNIST_STD, Preprocessor

__all__ = ["augment_canonical", "normalise", "preprocess_frames", "stroke_width", "synth_frames"]


def normalise(x01: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """The runtime's final scaling, (x - mean) / std on [0, 1] pixels."""
    return (x01 - mean) / std


def _affine(
    x: torch.Tensor, rot_deg: float, scale: tuple[float, float], shift: float, out_side: int, gen: torch.Generator
) -> torch.Tensor:
    """Random similarity+shear warp of (N,1,28,28) [0,1] images into (N,1,S,S); shift in output pixels."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rot_deg)
    s = scale[0] + torch.rand(n, generator=gen) * (scale[1] - scale[0])
    shear = (torch.rand(n, generator=gen) * 2 - 1) * 0.15
    # affine_grid maps output coords to input coords in [-1, 1]: input = k * output, so the 28 px digit
    # image appears s * 28 px wide in the out_side canvas when k = (out_side / 28) / s.
    k = (out_side / x.shape[-1]) / s
    cos, sin = torch.cos(ang) * k, torch.sin(ang) * k
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin + shear * cos
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * shift / out_side) * k.unsqueeze(1)
    grid = F.affine_grid(theta, [n, 1, out_side, out_side], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def stroke_width(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Per-sample partial dilation or erosion (grey-scale 3x3 max/min filter, blended by a random weight)."""
    n = x.shape[0]
    dil = F.max_pool2d(x, 3, stride=1, padding=1)
    ero = -F.max_pool2d(-x, 3, stride=1, padding=1)
    u = torch.rand(n, 1, 1, 1, generator=gen)
    w = 0.3 + 0.7 * torch.rand(n, 1, 1, 1, generator=gen)
    out = torch.where(u < p / 2, x + w * (dil - x), x)
    return torch.where((u >= p / 2) & (u < p), out + w * (ero - out), out)


def augment_canonical(x01: torch.Tensor, gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Mild geometric + stroke augmentation of a random share ``p`` of normalised digits (a tiny net
    underfits when every sample is distorted); returns [0,1] images (N,1,28,28)."""
    y = _affine(x01, rot_deg=12.0, scale=(0.9, 1.1), shift=2.0, out_side=28, gen=gen)
    y = stroke_width(y, p=0.3, gen=gen).clamp_(0.0, 1.0)
    if p >= 1.0:
        return y
    keep = torch.rand(x01.shape[0], 1, 1, 1, generator=gen) >= p
    return torch.where(keep, x01, y)


def synth_frames(
    x01: torch.Tensor,
    side: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.6, 1.4),
    shift: float = 6.0,
    rot_deg: float = 10.0,
    stroke_p: float = 0.3,
    noise: float = 6.0,
    levels: bool = True,
) -> np.ndarray:
    """Camera-like uint8 frames (N, side, side): digit warped into a canvas, random polarity (50 %);
    with ``levels`` also random background/ink grey levels and Gaussian noise up to ``noise``."""
    n = x01.shape[0]
    ink = _affine(x01, rot_deg, scale, shift, side, gen)
    if stroke_p > 0:
        ink = stroke_width(ink, p=stroke_p, gen=gen)
    if levels:
        bg = torch.rand(n, 1, 1, 1, generator=gen) * 60
        fg = 255 - torch.rand(n, 1, 1, 1, generator=gen) * 100
        sigma = noise * torch.rand(n, 1, 1, 1, generator=gen)
        img = bg + ink * (fg - bg) + torch.randn(ink.shape, generator=gen) * sigma
    else:
        img = ink * 255
    inverted = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    img = torch.where(inverted, 255 - img, img)
    return img.clamp_(0, 255).round_().to(torch.uint8)[:, 0].numpy()


def preprocess_frames(frames: np.ndarray, pre: Preprocessor) -> np.ndarray:
    """Run the daemon's Preprocessor over a stack of frames -> float32 (N, 1, 28, 28)."""
    out = np.empty((frames.shape[0], 1, 28, 28), np.float32)
    pre.batch(frames, out)
    return out
