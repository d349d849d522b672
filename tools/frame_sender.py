"""Send digit frames in the serial protocol (docs/serial-protocol.md) to a port, a pty or stdout.

For bringing up hardware and for tests: it plays the microcontroller's part, optionally with
injected faults (bit flips, noise bursts, truncated frames) to exercise the receiver's recovery.

    python -m tools.frame_sender --port /dev/pts/5 --source models/golden.npz --rate 100 --count 1000
    python -m tools.frame_sender --port - --source synthetic:50 --corrupt-every 10 | xxd | head

A summary (frames, bytes, injected faults) is printed to stderr as JSON at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Optional

import numpy as np

from agent.source.codec import FrameDecoder, encode_frame
from agent.source.replay import load_frames

__all__ = ["frame_stream", "load_source", "main", "synthetic_frames"]

_SEQ_MOD = 1 << 32
_DESCRIPTION = "Send digit frames in the serial protocol to a port, a pty or stdout."


def synthetic_frames(n: int, side: int = 28, seed: int = 0) -> np.ndarray:
    """``n`` MNIST-like uint8 frames: dark background with a few random bright strokes."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, side, side), dtype=np.uint8)
    for frame in frames:
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, max(1, side - 4), 2)
            h, w = rng.integers(1, max(2, side // 2), 2)
            frame[y:y + h, x:x + w] = rng.integers(1, 256, (min(h, side - y), min(w, side - x)))
    return frames


def load_source(spec: str, seed: int = 0) -> np.ndarray:
    """``synthetic[:N]`` or an NPZ (``images``), NPY or IDX file: uint8 (N, H, W)."""
    if spec == "synthetic" or spec.startswith("synthetic:"):
        n = int(spec.partition(":")[2] or 100)
        return synthetic_frames(n, seed=seed)
    return load_frames(spec)


def frame_stream(frames: np.ndarray, count: int, *, start_seq: int = 0, corrupt_every: int = 0,
                 noise: float = 0.0, truncate_every: int = 0, seed: int = 0,
                 tally: Optional[dict[str, int]] = None) -> Iterator[bytes]:
    """The bytes to send, one chunk per frame (frames repeat cyclically), after a leading 0x00.

    Faults: every ``corrupt_every``-th frame gets one bit flipped; every ``truncate_every``-th frame
    is cut short and closed with 0x00 (a sender reset mid-frame); with probability ``noise`` a
    burst of 1-32 random bytes and a 0x00 precedes a frame. ``tally`` receives what was done.
    """
    rng = np.random.default_rng(seed)
    t = tally if tally is not None else {}
    for key in ("frames", "bytes", "corrupted", "truncated", "noise_bursts"):
        t[key] = 0
    yield b"\0"  # flush whatever partial frame the receiver holds from before
    t["bytes"] += 1
    for k in range(count):
        wire = bytearray(encode_frame((start_seq + k) % _SEQ_MOD, frames[k % len(frames)]))
        if truncate_every and (k + 1) % truncate_every == 0:
            cut = int(rng.integers(1, len(wire) - 1))
            wire[cut:] = b"\0"
            t["truncated"] += 1
        elif corrupt_every and (k + 1) % corrupt_every == 0:
            wire[int(rng.integers(0, len(wire)))] ^= 1 << int(rng.integers(0, 8))
            t["corrupted"] += 1
        if noise and rng.random() < noise:
            # Delimited garbage (e.g. a boot banner): the receiver drops it and loses no frame.
            wire[:0] = rng.integers(0, 256, int(rng.integers(1, 33)), dtype=np.uint8).tobytes() + b"\0"
            t["noise_bursts"] += 1
        t["frames"] += 1
        t["bytes"] += len(wire)
        yield bytes(wire)


def _open_output(port: str, baud: int) -> tuple[Callable[[bytes], Any], Callable[[], None]]:
    """A (write, close) pair for stdout (``-``), a device path or a pyserial URL."""
    if port == "-":
        out: BinaryIO = sys.stdout.buffer
        return out.write, out.flush
    import serial  # only when a port is used: ``--port -`` works without pyserial

    dev = serial.serial_for_url(port, baudrate=baud, write_timeout=10.0)

    def close() -> None:
        dev.flush()
        dev.close()

    return dev.write, close


def _bench(data: bytes, side: int, tally: dict[str, int]) -> int:
    """Decode ``data`` in 4 KiB reads, as the serial source does, into a ring-slot-sized buffer."""
    slot = np.zeros((side, side), np.uint8)

    def sink(seq: int, h: int, w: int, px: np.ndarray) -> None:
        slot[:h, :w] = px

    dec = FrameDecoder(side)
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    t0 = time.perf_counter()
    for chunk in chunks:
        dec.feed(chunk, sink)
    dt = time.perf_counter() - t0
    print(json.dumps({"frames": dec.frames_ok, "bytes": len(data), "seconds": round(dt, 4),
                      "frames_per_s": round(dec.frames_ok / dt), "mb_per_s": round(len(data) / dt / 1e6, 1),
                      "sent": tally, "decoder": dec.stats()}))
    return 0


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.frame_sender", description=_DESCRIPTION)
    ap.add_argument("--port", required=True, help="device path, pyserial URL (loop://, socket://h:p) or -")
    ap.add_argument("--baud", type=int, default=921600, help="line speed (ignored for - and ptys)")
    ap.add_argument("--source", default="models/golden.npz",
                    help="NPZ (images), NPY or IDX file, or synthetic[:N] (default: %(default)s)")
    ap.add_argument("--rate", type=float, default=100.0, help="frames per second; 0 = as fast as possible")
    ap.add_argument("--count", type=int, default=0, help="frames to send (cycling); 0 = each frame once")
    ap.add_argument("--start-seq", type=int, default=0, help="sequence number of the first frame")
    ap.add_argument("--corrupt-every", type=int, default=0, metavar="K",
                    help="flip one bit in every K-th frame")
    ap.add_argument("--truncate-every", type=int, default=0, metavar="K", help="cut every K-th frame short")
    ap.add_argument("--noise", type=float, default=0.0, metavar="P",
                    help="probability of a random byte burst before a frame")
    ap.add_argument("--seed", type=int, default=0, help="seed for synthetic frames and injected faults")
    ap.add_argument("--bench", action="store_true",
                    help="send nothing: decode the stream in-process and print the decoder's frames/s")
    args = ap.parse_args(argv)
    if args.rate < 0 or args.count < 0 or not 0 <= args.noise <= 1 or not 0 <= args.start_seq < _SEQ_MOD:
        ap.error("--rate and --count must be >= 0, --noise in [0, 1], --start-seq in [0, 2**32)")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse(argv)
    try:
        frames = load_source(args.source, args.seed)
    except (OSError, ValueError, KeyError) as exc:
        print(f"frame_sender: cannot load {args.source}: {exc}", file=sys.stderr)
        return 2
    tally: dict[str, int] = {}
    stream = frame_stream(frames, args.count or len(frames), start_seq=args.start_seq,
                          corrupt_every=args.corrupt_every, noise=args.noise,
                          truncate_every=args.truncate_every, seed=args.seed, tally=tally)
    if args.bench:
        return _bench(b"".join(stream), frames.shape[1], tally)
    try:
        write, close = _open_output(args.port, args.baud)
    except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
        print(f"frame_sender: cannot open {args.port}: {exc}", file=sys.stderr)
        return 2
    period = 1.0 / args.rate if args.rate else 0.0
    next_t = time.monotonic()
    try:
        for chunk in stream:
            write(chunk)
            if period:
                next_t += period
                time.sleep(max(0.0, next_t - time.monotonic()))
        close()
    except (BrokenPipeError, OSError) as exc:
        print(f"frame_sender: output closed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        print(json.dumps(tally), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
