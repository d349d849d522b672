"""Runtime preprocessing: any-size grey frame -> MNIST-normalised float32 (1, 28, 28) model input.

Pure numpy and allocation-free per call (all scratch is preallocated in the constructor), because it
runs on the daemon's hot path on a Raspberry Pi. The same code feeds the training pipeline's
evaluation (tools/model), so the model sees at runtime exactly what it was validated on.

Steps, mirroring how MNIST itself was built (LeCun et al.):

1. polarity: the border is background; if the border is brighter than the frame on average the
   digit is dark-on-light and the frame is inverted, so ink is always bright;
2. the background level (border mean) is subtracted and the ink contrast stretched to 0..255
   (folded into the final scale);
3. bounding box of ink above ``ink_threshold``;
4. aspect-preserving area resampling of the box so its longer side is 20 px (separable: two small
   matmuls; long-side tables precomputed, each short-side table built on first use and kept);
5. integer translation placing the centre of mass at pixel (14, 14) of the 28x28 field
   (the measured MNIST convention);
6. final scaling ``(x / 255 - mean) / std``, the exact scaling used in training.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["BOX", "MNIST_MEAN", "MNIST_STD", "SIDE", "Preprocessor"]

SIDE = 28  # model input side
BOX = 20  # longer side of the digit's bounding box after resizing (MNIST convention)
_COM = 14.0  # centre-of-mass target (row, col); measured mean over MNIST train images
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_F32 = np.float32


class Preprocessor:
    """Callable that normalises one frame into a caller-provided float32 view, without allocating."""

    def __init__(
        self,
        max_side: int = 64,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        ink_threshold: float = 0.15,
        min_contrast: float = 8.0,
    ) -> None:
        if max_side < 1:
            raise ValueError("max_side must be >= 1")
        if std <= 0:
            raise ValueError("std must be > 0")
        self.max_side = m = int(max_side)
        self.mean = float(mean)
        self.std = float(std)
        self._thr = float(ink_threshold)  # relative to the ink peak
        self._min_contrast = float(min_contrast)  # in input grey levels
        self._bg_out = _F32(-mean / std)
        self._zero = _F32(0.0)
        self._one = _F32(1.0)
        # Flat buffers reshaped per call: contiguous views keep numpy's ufunc iterator from allocating.
        self._f = np.empty(m * m, _F32)  # frame as float ink
        # Border selectors: [1; e_0; e_last] @ f @ [1, e_0, e_last] is a 3x3 matrix holding the total,
        # the first/last row and column sums and the four corners (two matmuls). Pixel sums of
        # uint8 frames up to 255x255 are integers < 2**24: exact in float32, in any order.
        self._lsel: list[np.ndarray] = [np.zeros((3, 0), _F32)]
        self._rsel: list[np.ndarray] = [np.zeros((0, 3), _F32)]
        for n in range(1, m + 1):
            sel = np.zeros((3, n), _F32)
            sel[0], sel[1, 0], sel[2, n - 1] = 1.0, 1.0, 1.0
            self._lsel.append(sel)
            self._rsel.append(np.ascontiguousarray(sel.T))
        self._fr = np.empty(3 * m, _F32)
        self._edges = np.empty((3, 3), _F32)
        self._mask = np.empty(m * m, np.bool_)  # ink above the bounding-box threshold
        self._ones_b = np.ones(m, np.bool_)
        self._rb = np.empty(m, np.bool_)  # rows holding ink
        self._cb = np.empty(m, np.bool_)  # columns holding ink
        # G = [k, 1] @ [[step], [-j]] = k * step - j: the broadcast as a tiny matmul (no iterator buffers).
        self._ka = np.stack([np.arange(BOX + 1, dtype=_F32), np.ones(BOX + 1, _F32)], axis=1)
        self._sj = np.stack([np.zeros(m, _F32), -np.arange(m, dtype=_F32)])
        self._g = np.empty((BOX + 1) * m, _F32)  # clipped edge/pixel overlaps
        # Short-side tables (n_in -> n_out < BOX), built on first use into one preallocated arena
        # (pages never used are never touched) and kept as views: no per-call table build.
        self._short = np.empty(BOX * (BOX + 1) // 2 * m * (m + 1) // 2, _F32)
        self._short_views: list[list[Optional[np.ndarray]]] = [[None] * (BOX + 1) for _ in range(m + 1)]
        self._tmp = np.empty(BOX * m, _F32)
        self._res = np.empty(BOX * BOX, _F32)
        # Moment projections: [1, y] @ res @ [1, x] gives total mass and first moments in two matmuls.
        self._py = np.stack([np.ones(BOX, _F32), np.arange(BOX, dtype=_F32)])
        self._px = np.ascontiguousarray(self._py.T)
        self._pyres = np.empty(2 * BOX, _F32)
        self._mom = np.empty((2, 2), _F32)
        # The longer side always maps to BOX pixels: precompute those (unnormalised) tables.
        self._long = np.empty(BOX * m * (m + 1) // 2, _F32)
        self._long_off = np.zeros(m + 2, np.int64)
        for n_in in range(1, m + 1):
            self._long_off[n_in + 1] = self._long_off[n_in] + BOX * n_in
            self._weights(self._long_table(n_in), n_in)
        self._long_views = [self._long_table(n) for n in range(m + 1)]

    @classmethod
    def from_card(cls, card: dict[str, Any], max_side: int = 64) -> Preprocessor:
        """Build from a model card's ``normalisation`` section so constants always match the model."""
        norm = card["normalisation"]
        return cls(max_side=max_side, mean=float(norm["mean"]), std=float(norm["std"]))

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        """frame: 2-D uint8 (h, w) view with 1 <= h, w <= max_side; out: float32 view of shape (1, 28, 28)
        or (28, 28), written in place."""
        dst = self._check(frame, out)
        h, w = frame.shape
        f = self._f[: h * w].reshape(h, w)
        np.copyto(f, frame, casting="unsafe")
        peak = self._to_ink(f)
        if peak < self._min_contrast:
            dst.fill(self._bg_out)
            return
        y0, y1, x0, x1 = self._bbox(f, peak)
        res, norm = self._resize(f[y0:y1, x0:x1])
        nh, nw = res.shape
        top, left = self._placement(res)
        # One scale folds contrast stretch (255/peak), area normalisation and (x/255 - mean)/std.
        # Scaled in the contiguous ``res`` and then copied: a ufunc writing into the strided
        # ``dst`` window allocates iterator buffers (~5 KB per call), a copy does not.
        np.multiply(res, _F32(norm / (peak * self.std)), out=res)
        np.add(res, self._bg_out, out=res)
        dst.fill(self._bg_out)
        np.copyto(dst[top : top + nh, left : left + nw], res)

    def batch(self, frames: np.ndarray, out: np.ndarray) -> None:
        """Convenience loop for tooling: frames (N, h, w) -> out (N, 28, 28) or (N, 1, 28, 28)."""
        for i in range(frames.shape[0]):
            self(frames[i], out[i])

    def _check(self, frame: np.ndarray, out: np.ndarray) -> np.ndarray:
        h, w = frame.shape if frame.ndim == 2 else (0, 0)
        if not (1 <= h <= self.max_side and 1 <= w <= self.max_side):
            raise ValueError(f"frame must be 2-D with sides in 1..{self.max_side}, got {frame.shape}")
        if out.dtype != _F32 or out.shape[-2:] != (SIDE, SIDE) or out.size != SIDE * SIDE:
            raise ValueError(f"out must be float32 (1, 28, 28) or (28, 28), got {out.dtype} {out.shape}")
        return out[0] if out.ndim == 3 else out

    def _to_ink(self, f: np.ndarray) -> float:
        """Make ink bright on a zero background in place; return the ink peak."""
        h, w = f.shape
        fr = self._fr[: 3 * w].reshape(3, w)
        np.matmul(self._lsel[h], f, out=fr)
        np.matmul(fr, self._rsel[w], out=self._edges)
        (total, c0, c1), (r0, f00, f01), (r1, f10, f11) = self._edges.tolist()
        if h <= 2 or w <= 2:
            border = total / (h * w)
        else:
            border = (r0 + r1 + c0 + c1 - (f00 + f01 + f10 + f11)) / (2 * (h + w) - 4)
        # The border is background: brighter than the frame's average means dark ink on light paper.
        if border * (h * w) > total:
            np.subtract(_F32(border), f, out=f)
        else:
            np.subtract(f, _F32(border), out=f)
        np.maximum(f, self._zero, out=f)
        return float(np.maximum.reduce(f.reshape(-1)))  # 1-D: a 2-D reduce allocates on numpy < 2.3

    def _bbox(self, f: np.ndarray, peak: float) -> tuple[int, int, int, int]:
        """Rows and columns holding ink above the threshold: one mask, then "any" along each axis as
        boolean matmuls (a 2-D ``logical_or.reduce``, a transposed ufunc input or ``argmax`` of a
        long reversed view would allocate per call)."""
        h, w = f.shape
        mask = self._mask[: h * w].reshape(h, w)
        np.greater(f, _F32(self._thr * peak), out=mask)
        rows, cols = self._rb[:h], self._cb[:w]
        np.matmul(mask, self._ones_b[:w], out=rows)
        np.matmul(self._ones_b[:h], mask, out=cols)
        y0 = int(rows.argmax())
        y1 = h - int(rows[::-1].argmax())
        x0 = int(cols.argmax())
        x1 = w - int(cols[::-1].argmax())
        return y0, y1, x0, x1

    def _long_table(self, n_in: int) -> np.ndarray:
        a, b = self._long_off[n_in], self._long_off[n_in + 1]
        return self._long[a:b].reshape(BOX, n_in)

    def _weights(self, dst: np.ndarray, n_in: int) -> None:
        """Unnormalised box-filter (area) weights into a preallocated (n_out, n_in) view.

        W[i, j] = |[e_i, e_i+1] intersect [j, j+1]| = G[i+1, j] - G[i, j] with G[k, j] = clip(e_k - j, 0, 1)
        and edges e_k = k * n_in / n_out. Each row sums to n_in / n_out (folded into the final scale).
        Valid for down- and up-sampling alike.
        """
        n_out = dst.shape[0]
        sj = self._sj[:, :n_in]
        sj[0].fill(n_in / n_out)
        g = self._g[: (n_out + 1) * n_in].reshape(n_out + 1, n_in)
        np.matmul(self._ka[: n_out + 1], sj, out=g)
        np.minimum(g, self._one, out=g)
        np.maximum(g, self._zero, out=g)
        np.subtract(g[1:], g[:-1], out=dst)

    def _short_table(self, n_in: int, n_out: int) -> np.ndarray:
        """The (n_out, n_in) weights, built once into the arena. Block of n_in: all n_out <= BOX."""
        t: Optional[np.ndarray] = self._short_views[n_in][n_out]
        if t is None:
            base = BOX * (BOX + 1) // 2 * n_in * (n_in - 1) // 2 + n_in * n_out * (n_out - 1) // 2
            t = self._short[base:base + n_out * n_in].reshape(n_out, n_in)
            self._weights(t, n_in)
            self._short_views[n_in][n_out] = t
        return t

    def _resize(self, crop: np.ndarray) -> tuple[np.ndarray, float]:
        """Aspect-preserving area resize, longer side -> BOX; returns (unnormalised result, its scale)."""
        ch, cw = crop.shape
        n_long = max(ch, cw)
        n_short = min(BOX, max(1, round(min(ch, cw) * BOX / n_long)))
        long_t = self._long_views[n_long]
        if ch == cw:
            wy, wx = long_t, long_t
        else:
            short_t = self._short_table(min(ch, cw), n_short)
            wy, wx = (long_t, short_t) if ch > cw else (short_t, long_t)
        nh, nw = wy.shape[0], wx.shape[0]
        tmp = self._tmp[: nh * cw].reshape(nh, cw)
        res = self._res[: nh * nw].reshape(nh, nw)
        np.matmul(wy, crop, out=tmp)
        np.matmul(tmp, wx.T, out=res)
        return res, (nh * nw) / (ch * cw)

    def _placement(self, res: np.ndarray) -> tuple[int, int]:
        """Top-left corner putting the centre of mass at (14, 14), clamped inside the 28x28 field."""
        nh, nw = res.shape
        pyres = self._pyres[: 2 * nw].reshape(2, nw)
        np.matmul(self._py[:, :nh], res, out=pyres)
        np.matmul(pyres, self._px[:nw], out=self._mom)
        total = float(self._mom[0, 0])
        if total <= 0.0:
            return (SIDE - nh) // 2, (SIDE - nw) // 2
        cy = float(self._mom[1, 0]) / total
        cx = float(self._mom[0, 1]) / total
        top = min(max(round(_COM - cy), 0), SIDE - nh)
        left = min(max(round(_COM - cx), 0), SIDE - nw)
        return top, left
