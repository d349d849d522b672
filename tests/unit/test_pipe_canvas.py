"""tools/canvas_stream.py, the test camera: geometry, the digit where the ROI says, raw layouts, and
ffmpeg's conversion keeping the Y plane (ffmpeg is a Debian package in CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.canvas_stream import render, stream_frames

W, H, ROI = 160, 120, (60, 40, 40, 40)


def _digits() -> np.ndarray:
    d = np.zeros((3, 28, 28), np.uint8)
    d[0, 6:22, 12:16] = 255  # a "1"
    d[1, 6:10, 6:22] = 255
    d[2, 4:24, 4:24] = 128
    return d


def test_digit_is_centred_in_the_roi_and_clutter_stays_outside() -> None:
    rng = np.random.default_rng(0)
    digit = _digits()[0]
    frame = render(digit, W, H, ROI, rng, noise=0.0, clutter=_digits()[2])
    assert frame.shape == (H, W) and frame.dtype == np.uint8
    x, y, w, h = ROI
    top, left = y + (h - 28) // 2, x + (w - 28) // 2
    np.testing.assert_array_equal(frame[top:top + 28, left:left + 28] > 100, digit > 0)
    inside = frame[y:y + h, x:x + w].astype(int)
    assert int(inside.max()) == 220 and int(np.median(inside)) == 40  # flat paper + ink, nothing else
    outside = frame.copy()
    outside[y:y + h, x:x + w] = 0
    assert int(outside.max()) > 100  # the clutter digits and the lighting ramp


def test_roi_too_small_for_the_digit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        render(_digits()[0], W, H, (0, 0, 20, 20), np.random.default_rng(0))


@pytest.mark.parametrize("fmt,size", [("gray", W * H), ("yuv420", W * H * 3 // 2)])
def test_stream_layout_and_order(fmt: str, size: int) -> None:
    frames = list(stream_frames(_digits(), 4, 1, W, H, ROI, fmt, noise=0.0))
    assert [len(f) for f in frames] == [size] * 4
    x, y, w, h = ROI
    ys = [np.frombuffer(f[:W * H], np.uint8).reshape(H, W)[y:y + h, x:x + w] for f in frames]
    np.testing.assert_array_equal(ys[0], ys[3])  # frame k shows digit (start + k) % 3
    assert not np.array_equal(ys[0], ys[1])
    if fmt == "yuv420":
        assert set(frames[0][W * H:]) == {128}


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="ffmpeg is not installed")
def test_ffmpeg_yuv420p_keeps_the_luma(tmp_path: Path) -> None:
    images = tmp_path / "d.npz"
    np.savez(images, images=_digits(), labels=np.arange(3, dtype=np.uint8))
    out = tmp_path / "out.yuv"
    subprocess.run([sys.executable, "-m", "tools.canvas_stream", "--images", str(images), "--count", "3",
                    "--ffmpeg", "yuv420p", "--out", str(out), "--noise", "0"], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    data = out.read_bytes()
    assert len(data) == 3 * W * H * 3 // 2
    ref = np.frombuffer(next(iter(stream_frames(_digits(), 1, 0, W, H, ROI, "gray", noise=0.0))), np.uint8)
    y = np.frombuffer(data[:W * H], np.uint8)
    assert np.corrcoef(ref.astype(float), y.astype(float))[0, 1] > 0.99  # limited range, same picture
