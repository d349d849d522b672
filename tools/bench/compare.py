"""Before/after of two commits on this host: their end-to-end benchmarks run interleaved (A B A B ...).

    python -m tools.bench.compare BEFORE AFTER [--runs 2] [--out build/compare]

Each commit is exported with ``git archive`` into a temporary directory and its own
``python -m tools.bench --quick --only e2e --no-profile`` runs there (its daemon, its harness), the
two alternating so drift in the machine's load hits both alike. Prints a Markdown table of the
figures (median over the runs of each commit) and writes it with every result file under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["FIGURES", "main", "table"]

REPO = Path(__file__).resolve().parents[2]


def _pf(key: str) -> Callable[[dict[str, Any]], Optional[float]]:
    def get(e2e: dict[str, Any]) -> Optional[float]:
        pf = e2e.get("per_frame") or {}
        if key in ("daemon", "naive"):
            return (pf.get(key) or {}).get("cpu_us_per_frame")
        return (pf.get("pieces_cpu_us") or {}).get(key)
    return get


def _lat(run: str, key: str) -> Callable[[dict[str, Any]], Optional[float]]:
    def get(e2e: dict[str, Any]) -> Optional[float]:
        return ((e2e.get(run) or {}).get(key) or {}).get("p99_us")
    return get


FIGURES: list[tuple[str, Callable[[dict[str, Any]], Optional[float]]]] = [
    ("daemon CPU µs/frame, QoS 0 flat out (side by side)", _pf("daemon")),
    ("naive script CPU µs/frame (same run)", _pf("naive")),
    ("bare inference CPU µs (hot loop)", _pf("inference")),
    ("preprocessing 28 px µs", _pf("preprocess_28px")),
    ("preprocessing 64 px µs", _pf("preprocess_64px")),
    ("result encoder µs", _pf("encode")),
    ("serial decoder µs/frame", _pf("serial_decode")),
    ("throughput QoS 0: CPU µs/frame", lambda e: (e.get("throughput_qos0") or {}).get("cpu_us_per_frame")),
    ("throughput QoS 0: frames/s", lambda e: (e.get("throughput_qos0") or {}).get("frames_per_s")),
    ("throughput QoS 1: CPU µs/frame", lambda e: (e.get("throughput_qos1") or {}).get("cpu_us_per_frame")),
    ("frame→result p99 µs at 100 fps", _lat("replay_100fps", "frame_age")),
    ("frame→result p99 µs at 500 fps", _lat("replay_500fps", "frame_age")),
    ("frame→subscriber p99 µs, pty 100 fps", _lat("serial_100fps", "frame_to_subscriber")),
]


def _export(commit: str, dest: Path) -> str:
    rev = subprocess.run(["git", "rev-parse", "--short=12", commit], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return rev


def _run(tree: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "tools.bench", "--quick", "--only", "e2e", "--no-profile", "--out", str(out)]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"bench in {tree} failed: {r.stderr[-3000:]}")
    (js,) = out.glob("*-quick.json")
    return dict(json.loads(js.read_text())["e2e"])


def table(labels: tuple[str, str], runs: dict[str, list[dict[str, Any]]]) -> str:
    a, b = labels
    lines = [f"| figure (median of {len(runs[a])} runs each) | {a} | {b} | after ÷ before |", "|---|---|---|---|"]
    for name, get in FIGURES:
        vals = []
        for label in labels:
            xs = [v for v in (get(e) for e in runs[label]) if v is not None]
            vals.append(float(np.median(xs)) if xs else None)
        ratio = f"{vals[1] / vals[0]:.2f}" if vals[0] and vals[1] is not None else "–"
        cells = [f"{v:,.1f}" if v is not None else "–" for v in vals]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "build" / "compare")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = {}
        for commit in (args.before, args.after):
            tree = Path(tmp) / commit.replace("/", "_")
            trees[_export(commit, tree)] = tree
        labels = tuple(trees)
        assert len(labels) == 2, "BEFORE and AFTER are the same commit"
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in labels}
        for k in range(args.runs):
            for label, tree in trees.items():
                print(f"run {k + 1}/{args.runs}: {label}", flush=True)
                runs[label].append(_run(tree, args.out / f"{label}-{k + 1}"))
    text = table((labels[0], labels[1]), runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(text, encoding="utf-8")
    (args.out / "compare.json").write_text(json.dumps(runs, indent=1, default=str) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
