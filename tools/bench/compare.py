"""Before/after of two commits on this host, interleaved.

    python -m tools.bench.compare BEFORE AFTER [--runs 2] [--rounds 12] [--window 3] [--out build/compare]

Each commit is exported with ``git archive`` into a temporary directory. Two measurements:

1. *CPU per frame, alternating*: both commits' daemons (QoS 0, replay flat out) and the naive script
   run pinned to one core against one broker and take turns of ``--window`` seconds (the others held
   with SIGSTOP), ``--rounds`` times; CPU per frame = process CPU / results received, median over
   rounds. This is the figure to compare: seconds apart, same core, same broker.
2. *Everything else*: each commit's own ``python -m tools.bench --quick --only e2e --no-profile``
   (its daemon, its harness), A B A B ... ``--runs`` times; medians per commit.

Prints Markdown tables and writes them with every result file under ``--out``.
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


def _model_of(tree: Path) -> Path:
    """What that checkout ships: the model-version card, or (older trees) the single int8 file."""
    card = tree / "models" / "digit.card.json"
    return card if card.exists() else tree / "models" / "digit_int8.onnx"


def _start_daemon(tree: Path, work: Path, broker: Any, dev: str, cpus: Optional[set[int]]) -> Any:
    import psutil

    from tests.helpers.daemon import write_config

    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(work / "agent.toml", broker, device={"id": dev}, mqtt={"qos": 0},
                       source={"type": "replay", "path": str(tree / "models" / "golden.npz"), "rate_hz": 0.0,
                               "loop": True},
                       inference={"model": str(_model_of(tree)),
                                  "golden": str(tree / "models" / "golden.npz"), "deadline_ms": 5.0},
                       health={"interval_s": 10.0}, homeassistant={"discovery": False})
    log = (work / "agent.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)], cwd=tree,
                            env={**os.environ, "PYTHONPATH": str(tree)}, stdout=log, stderr=subprocess.STDOUT)
    if cpus:
        psutil.Process(proc.pid).cpu_affinity(sorted(cpus))
    return proc


def alternate(trees: dict[str, Path], work: Path, rounds: int, window: float) -> dict[str, list[dict[str, Any]]]:
    """Measurement 1 of the module docstring: ``{label or "naive": [window results]}``."""
    import signal
    import time

    import psutil

    from tests.helpers.broker import Broker
    from tools.bench.e2e import E2EOptions, _one_core
    from tools.bench.perframe import _Count, _naive, _window
    from tools.bench.variants import served_in

    cpus = _one_core()
    work.mkdir(parents=True, exist_ok=True)
    broker = Broker(work).start()
    procs: dict[str, Any] = {}
    taps: dict[str, Any] = {}
    try:
        for k, (label, tree) in enumerate(trees.items()):
            dev = f"cmp{k}"
            taps[label] = _Count(broker, f"digit-agent/{dev}/result")
            procs[label] = _start_daemon(tree, work / label, broker, dev, cpus)
        opts = E2EOptions(True, REPO / "models", work)
        taps["naive"] = _Count(broker, "digit-agent/naive/result")
        procs["naive"] = _naive(opts, served_in(REPO / "models")[2], broker, cpus)
        deadline = time.monotonic() + 120
        while not all(t.count for t in taps.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not all(t.count for t in taps.values()):
            raise RuntimeError(f"not every process published: { {k: t.count for k, t in taps.items()} }")
        ps = {k: psutil.Process(p.pid) for k, p in procs.items()}
        for p in ps.values():
            p.send_signal(signal.SIGSTOP)
        out: dict[str, list[dict[str, Any]]] = {k: [] for k in procs}
        for r in range(rounds):
            print(f"alternating round {r + 1}/{rounds}", flush=True)
            order = list(ps) if r % 2 == 0 else list(reversed(ps))
            for name in order:
                out[name].append(_window(ps[name], taps[name], window))
        for p in ps.values():
            p.send_signal(signal.SIGCONT)
        return out
    finally:
        for p in procs.values():
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for t in taps.values():
            t.close()
        broker.stop()


def alternate_table(windows: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| process | CPU µs/frame (median) | frames/s (median) | rounds | CPU µs/frame per round |",
             "|---|---|---|---|---|"]
    for k, rows in windows.items():
        cpu = [r["cpu_us_per_frame"] for r in rows]
        fps = [r["frames_per_s"] for r in rows]
        lines.append(f"| {k} | {float(np.median(cpu)):,.1f} | {float(np.median(fps)):,.0f} | {len(rows)} | "
                     + ", ".join(f"{c:.0f}" for c in cpu) + " |")
    return "\n".join(lines) + "\n"


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
    p.add_argument("--runs", type=int, default=2, help="end-to-end bench runs per commit (0: skip)")
    p.add_argument("--rounds", type=int, default=12, help="alternating CPU-per-frame rounds (0: skip)")
    p.add_argument("--window", type=float, default=3.0, help="seconds per process per round")
    p.add_argument("--out", type=Path, default=REPO / "build" / "compare")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        trees = {}
        for commit in (args.before, args.after):
            tree = Path(tmp) / commit.replace("/", "_")
            trees[_export(commit, tree)] = tree
        labels = tuple(trees)
        assert len(labels) == 2, "BEFORE and AFTER are the same commit"
        text = ""
        if args.rounds:
            windows = alternate(trees, Path(tmp) / "alternate", args.rounds, args.window)
            text += alternate_table(windows) + "\n"
            (args.out).mkdir(parents=True, exist_ok=True)
            (args.out / "alternate.json").write_text(json.dumps(windows, indent=1) + "\n", encoding="utf-8")
            print(text, flush=True)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in labels}
        for k in range(args.runs):
            for label, tree in trees.items():
                print(f"run {k + 1}/{args.runs}: {label}", flush=True)
                runs[label].append(_run(tree, args.out / f"{label}-{k + 1}"))
    if args.runs:
        text += table((labels[0], labels[1]), runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(text, encoding="utf-8")
    (args.out / "compare.json").write_text(json.dumps(runs, indent=1, default=str) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
