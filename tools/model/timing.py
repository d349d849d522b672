"""Side-by-side batch-1 latency of model files on this host, the daemon's way.

    python -m tools.model.timing new-fp32=models/digit.fp32.onnx new-int8=models/digit.int8.onnx \\
        old-int8=models/digit_int8.onnx --runs 2000 --repeats 3 [--json out.json]

Each pass interleaves every model in blocks of 50 calls (one thread, no spinning, io-binding:
:func:`tools.model.evaluate.bench_latency`); the figure per model is the median of the per-pass
medians, and the ratio is to the first model named. Prints a markdown table with the CPU, its
instruction-set flags, onnxruntime's version and the load average before/after.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tools.model.evaluate import latency_passes

__all__ = ["main", "side_by_side"]

def side_by_side(paths: dict[str, Path], x: np.ndarray, runs: int, repeats: int) -> dict[str, Any]:
    from tools.bench.machine import cpu_model, load_average, machine_info

    load_before = load_average()
    passes = latency_passes(paths, x, runs, repeats=repeats)
    first = next(iter(paths))
    med = {name: statistics.median(p[name] for p in passes) for name in paths}
    rows = [{"model": name, "file": str(path), "p50_us": round(med[name], 2),
             "passes_us": [round(p[name], 2) for p in passes], f"vs {first}": round(med[name] / med[first], 3)}
            for name, path in paths.items()]
    info = machine_info()
    return {"rows": rows, "runs_per_pass": runs, "repeats": repeats, "cpu_model": cpu_model(),
            "simd_flags": info["simd_flags"], "onnxruntime": info["onnxruntime"],
            "load_average": [load_before, load_average()]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="name=path.onnx (the first is the reference)")
    p.add_argument("--runs", type=int, default=2000, help="calls per model per pass")
    p.add_argument("--repeats", type=int, default=3, help="interleaved passes")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    paths = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"{item!r}: expected name=path to an existing .onnx file")
        paths[name] = Path(path)
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    res = side_by_side(paths, x, args.runs, args.repeats)
    first = next(iter(paths))
    print(f"host: {res['cpu_model']}, flags {' '.join(res['simd_flags'])}; onnxruntime {res['onnxruntime']}; "
          f"load {res['load_average']}; {args.repeats} interleaved passes x {args.runs} calls, "
          "batch 1, 1 thread, io-binding")
    print(f"| model | p50 µs (median of passes) | passes | vs {first} |\n|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['model']} | {r['p50_us']:.1f} | {', '.join(f'{v:.1f}' for v in r['passes_us'])} "
              f"| {r[f'vs {first}']:.2f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
