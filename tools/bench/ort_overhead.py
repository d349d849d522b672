"""What onnxruntime's Python ``run_with_iobinding`` costs per call with and without ``gpu_graph_id``.

    python -m tools.bench.ort_overhead [--model models/digit.int8.onnx] [--out bench/results]

The daemon's RunOptions carry ``gpu_graph_id`` (see ``agent.inference.model.run_options``): without
it, onnxruntime ≥ 1.2x's wrapper takes an exception path on every call. Runs both interleaved, on
one core, and writes ``ort-overhead-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import onnxruntime as ort

from agent.inference.model import LoadedModel, run_options
from tools.bench.machine import machine_info, summarise_us

__all__ = ["main", "measure"]


def measure(model: Path, rounds: int = 10, per_round: int = 1000) -> dict[str, dict[str, float | int]]:
    lm = LoadedModel.load(model)
    variants = {"plain RunOptions": ort.RunOptions(), "with gpu_graph_id (daemon)": run_options()}
    samples: dict[str, list[int]] = {k: [] for k in variants}
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        for name, ro in variants.items():
            for _ in range(per_round):
                t = time.perf_counter_ns()
                lm.run(1, ro)
                samples[name].append(time.perf_counter_ns() - t)
    return {k: summarise_us(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/digit.int8.onnx"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    batch1 = measure(args.model)
    result = {"model": str(args.model), "machine": machine_info(), "batch1": batch1}
    for name, s in batch1.items():
        print(f"{name:28s} p50 {s['p50_us']:8.1f} µs   p99 {s['p99_us']:8.1f} µs")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ort-overhead-{date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
