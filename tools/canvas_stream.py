"""Test/demo camera: MNIST digits on a larger noisy canvas as a raw video stream.

Frame k shows digit (start + k) % N of the images file (an images/labels NPZ, default the shipped
golden set), centred in the region of interest, on a noisy background with clutter (a gradient and
other digits) outside the ROI -- so the pipe source's ROI and the runtime preprocessing are what
make it readable. Output is raw gray or yuv420 (I420, chroma 128) frames, or gray frames converted
by ffmpeg to any -pix_fmt. The daemon must be told the stream's geometry, format and ROI (the
defaults here: 160x120 gray, ROI 60,40,40,40):

    python -m tools.canvas_stream --fps 20 --out - | digit-agent run --config config.toml \\
        --set source.type=pipe --set source.path=- --set source.width=160 --set source.height=120 \\
        --set source.pixel_format=gray --set 'source.roi=[60, 40, 40, 40]'

    python -m tools.canvas_stream --fps 20 --format yuv420 --out - | digit-agent run --config config.toml \\
        --set source.type=pipe --set source.path=- --set source.width=160 --set source.height=120 \\
        --set source.pixel_format=yuv420 --set 'source.roi=[60, 40, 40, 40]'

--out PATH writes to a FIFO (mkfifo PATH) that the daemon reads with source.path=PATH; --ffmpeg
yuv420p sends the frames through ffmpeg. --partial BYTES then writes the first bytes of one more
frame (a producer dying mid-frame) and --hold keeps the stream open afterwards until the process
is killed (tests of restarts).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Optional

import numpy as np

__all__ = ["main", "render", "stream_frames"]

REPO = Path(__file__).resolve().parent.parent


def render(digit: np.ndarray, width: int, height: int, roi: tuple[int, int, int, int],
           rng: np.random.Generator, noise: float = 6.0, bg: int = 40, ink: int = 220,
           clutter: Optional[np.ndarray] = None, invert: bool = False) -> np.ndarray:
    """One (height, width) uint8 canvas with ``digit`` (uint8, bright ink on 0) centred in ``roi``."""
    x, y, w, h = roi
    dh, dw = digit.shape
    if dh > h or dw > w:
        raise ValueError(f"a {dw}x{dh} digit does not fit the {w}x{h} ROI")
    ramp = np.linspace(0.0, 60.0, width, dtype=np.float32)  # uneven lighting outside the ROI
    canvas = np.broadcast_to(ramp, (height, width)).astype(np.float32) + bg
    if clutter is not None:  # other digits around the ROI: whatever the ROI excludes must not matter
        ch, cw = clutter.shape
        for cy in range(0, height - ch + 1, ch):
            for cx in range(0, width - cw + 1, cw):
                if cx + cw <= x or cx >= x + w or cy + ch <= y or cy >= y + h:
                    canvas[cy:cy + ch, cx:cx + cw] += clutter.astype(np.float32) * (ink - bg) / 255.0
    canvas[y:y + h, x:x + w] = bg  # flat paper inside the ROI
    top, left = y + (h - dh) // 2, x + (w - dw) // 2
    canvas[top:top + dh, left:left + dw] += digit.astype(np.float32) * (ink - bg) / 255.0
    canvas += rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    if invert:
        canvas = 255.0 - canvas
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def stream_frames(images: np.ndarray, count: int, start: int, width: int, height: int,
                  roi: tuple[int, int, int, int], fmt: str, seed: int = 0, noise: float = 6.0,
                  invert: bool = False) -> Iterator[bytes]:
    """Raw frames: frame k shows ``images[(start + k) % len(images)]``."""
    rng = np.random.default_rng(seed)
    chroma = b"\x80" * (2 * (width // 2) * (height // 2)) if fmt == "yuv420" else b""
    n = len(images)
    for k in range(count):
        clutter = images[(start + k + n // 2) % n]
        frame = render(images[(start + k) % n], width, height, roi, rng, noise, clutter=clutter,
                       invert=invert)
        yield frame.tobytes() + chroma


def _ffmpeg(pix_fmt: str, width: int, height: int, fps: float, out: str) -> subprocess.Popen[bytes]:
    """ffmpeg reading raw gray frames on stdin and writing raw ``pix_fmt`` frames to ``out``."""
    rate = ["-framerate", f"{fps:g}"] if fps > 0 else []
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "gray",
           "-s", f"{width}x{height}", *rate, "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", pix_fmt,
           "-y", "pipe:1" if out == "-" else out]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE)


@contextlib.contextmanager
def _sink(args: argparse.Namespace) -> Iterator[IO[bytes]]:
    if args.ffmpeg:
        proc = _ffmpeg(args.ffmpeg, args.width, args.height, args.fps, args.out)
        assert proc.stdin is not None
        try:
            yield proc.stdin
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            proc.wait()
    elif args.out == "-":
        yield sys.stdout.buffer
    else:
        with open(args.out, "wb") as f:  # a FIFO: blocks until the reader (the agent) opens it
            yield f


def _parse_roi(text: str) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in text.split(","))
    return x, y, w, h


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="canvas_stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(REPO / "models" / "golden.npz"), help="NPZ with images")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--roi", type=_parse_roi, default=(60, 40, 40, 40), help="x,y,w,h (default 60,40,40,40)")
    p.add_argument("--count", type=int, default=300, help="frames to write (default 300)")
    p.add_argument("--start", type=int, default=0, help="index of the first digit")
    p.add_argument("--fps", type=float, default=0.0, help="frames per second; 0 = as fast as read")
    p.add_argument("--format", choices=("gray", "yuv420"), default="gray", help="raw output format")
    p.add_argument("--ffmpeg", metavar="PIX_FMT", default="",
                   help="write gray frames to ffmpeg, which converts them to PIX_FMT (e.g. yuv420p)")
    p.add_argument("--noise", type=float, default=6.0, help="Gaussian noise sigma in grey levels")
    p.add_argument("--invert", action="store_true", help="dark ink on light paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partial", type=int, default=0, help="then write this many bytes of one more frame")
    p.add_argument("--hold", action="store_true", help="keep the stream open at the end until killed")
    p.add_argument("--out", default="-", help="output path (a FIFO) or - for stdout")
    args = p.parse_args(argv)
    with np.load(args.images) as data:
        images = np.asarray(data["images"], np.uint8)
    fmt = "gray" if args.ffmpeg else args.format
    period = 1.0 / args.fps if args.fps > 0 else 0.0
    frames = stream_frames(images, args.count + (1 if args.partial else 0), args.start, args.width,
                           args.height, args.roi, fmt, args.seed, args.noise, args.invert)
    try:
        with _sink(args) as out:
            next_t = time.monotonic()
            for k, frame in enumerate(frames):
                if k == args.count:
                    frame = frame[:args.partial]
                out.write(frame)
                out.flush()
                next_t += period
                time.sleep(max(0.0, next_t - time.monotonic()))
            while args.hold:
                time.sleep(3600)
    except BrokenPipeError:  # the reader went away: not an error for a test camera
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
