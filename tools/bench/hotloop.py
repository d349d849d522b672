"""Per-frame costs of the daemon's pieces in hot loops, in one fresh process pinned to one core.

    python -m tools.bench.hotloop --model M.onnx --frames golden.npz [--rounds 5] [--seconds 0.4]

Bare inference of the served model (``Engine.infer`` on bound buffers, batch 1: the cost the daemon
cannot avoid), the preprocessor on 28, 40 and 64 px frames, the result encoder, and the serial
decoder (``FrameDecoder.feed`` on the wire bytes of whole frames; beside it the ``cobs`` package's
decoder when it is installed). The pieces are measured in interleaved rounds so machine drift hits
all alike; each figure is the median over rounds of CPU µs per call (process CPU time / calls), and
the inference latency percentiles are over every call of every round. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tools.bench.machine import summarise_us

__all__ = ["PRE_SIDES", "main", "measure"]

PRE_SIDES = (28, 40, 64)


def _upscaled(frames: np.ndarray, side: int) -> np.ndarray:
    """Frames resampled (nearest) to ``side`` px: the same digits, as a larger sensor sees them."""
    idx = np.arange(side) * frames.shape[1] // side
    return np.ascontiguousarray(frames[:, idx][:, :, idx])


def _timed(fn: Callable[[int], None], calls: int, lat: Optional[list[int]] = None) -> float:
    """CPU µs per call of ``fn(i)`` over ``calls`` calls (wall ns per call appended to ``lat``)."""
    c0 = time.process_time_ns()
    if lat is None:
        for i in range(calls):
            fn(i)
    else:
        for i in range(calls):
            t = time.perf_counter_ns()
            fn(i)
            lat.append(time.perf_counter_ns() - t)
    return (time.process_time_ns() - c0) / 1000 / calls


def _calibrate(fn: Callable[[int], None], seconds: float) -> int:
    """Calls that take about ``seconds`` (at least 50), after a warm-up."""
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < 0.05 or n < 20:
        fn(n)
        n += 1
    per = (time.perf_counter() - t) / n
    return max(50, int(seconds / per))


def _pieces(model_path: Path, frames: np.ndarray) -> dict[str, Callable[[int], None]]:
    from agent.inference.engine import Engine
    from agent.inference.model import LoadedModel
    from agent.inference.variants import card_for_file
    from agent.preprocess import Preprocessor
    from agent.publish.payloads import ResultEncoder
    from agent.source.codec import FrameDecoder, encode_frame

    model = LoadedModel.load(model_path, batch_max=1, card=card_for_file(model_path))  # a variant: the set's card
    engine = Engine(model, deadline_ms=5.0, watchdog_factor=20.0, stop=threading.Event())
    x, y = model.buffers(1)
    pre = Preprocessor.from_card(model.card, max_side=max(PRE_SIDES))
    n = len(frames)
    pieces: dict[str, Callable[[int], None]] = {}

    def infer(i: int) -> None:
        engine.infer(1)

    pieces["inference"] = infer
    for side in PRE_SIDES:
        big = frames if side == frames.shape[1] else _upscaled(frames, side)

        def prep(i: int, big: np.ndarray = big) -> None:
            pre(big[i % n], x[0])

        pieces[f"preprocess_{side}px"] = prep
    pre(frames[0], x[0])
    engine.infer(1)
    enc = ResultEncoder("0123456789abcdef")

    def encode(i: int) -> None:
        enc.encode(i, i, 3, 0.9876, y[0], 91, 250, False, 2, 1.7e9)

    pieces["encode"] = encode
    wire = [encode_frame(i, frames[i]) for i in range(n)]
    dec = FrameDecoder(max_side=64)

    def sink(seq: int, h: int, w: int, px: np.ndarray) -> None:
        pass

    def decode(i: int) -> None:
        dec.feed(wire[i % n], sink)

    pieces["serial_decode"] = decode
    c_decode = _cobs_package_decoder()
    if c_decode is not None:
        bodies = [w[:-1] for w in wire]

        def decode_cobs(i: int) -> None:
            c_decode(bodies[i % n])

        pieces["serial_decode_cobs_package"] = decode_cobs
    return pieces


def _cobs_package_decoder() -> Optional[Callable[[bytes], bytes]]:
    """The ``cobs`` package's decoder (its C extension when it was built), for comparison only."""
    try:
        from cobs import cobs  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return cobs.decode  # type: ignore[no-any-return]


def measure(model_path: Path, frames: np.ndarray, rounds: int, seconds: float) -> dict[str, Any]:
    pieces = _pieces(model_path, frames)
    calls = {k: _calibrate(fn, seconds) for k, fn in pieces.items()}
    cpu: dict[str, list[float]] = {k: [] for k in pieces}
    lat: list[int] = []
    for _ in range(rounds):  # interleaved: drift in the machine's load hits every piece alike
        for k, fn in pieces.items():
            cpu[k].append(_timed(fn, calls[k], lat if k == "inference" else None))
    out: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls,
                           "cpu_us": {k: round(float(np.median(v)), 2) for k, v in cpu.items()},
                           "cpu_us_rounds": {k: [round(u, 2) for u in v] for k, v in cpu.items()},
                           "inference_latency": summarise_us(lat)}
    import agent.source.codec as codec

    out["cobs_package"] = "installed" if "serial_decode_cobs_package" in pieces else "not installed"
    out["decoder"] = getattr(codec, "DECODER", "python")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.hotloop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--frames", type=Path, required=True, help="npz with uint8 'images' (N, 28, 28)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4, help="per piece per round")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = ap.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    from agent.source.replay import load_frames

    print(json.dumps(measure(args.model, load_frames(args.frames), args.rounds, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
