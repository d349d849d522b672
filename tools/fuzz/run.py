"""Run the atheris fuzz targets for a set time (or input count) and record the figures.

    python -m tools.fuzz.run                       # every target, 60 s each
    python -m tools.fuzz.run --time 600 --runs 1000000 codec
    python -m tools.fuzz.run --strict              # stop each target at its first finding

Each target runs as ``python -m tools.fuzz.fuzz_<name>`` with its corpus in ``build/fuzz/<name>/``
(seeded by the target, kept between runs) and crash artifacts beside it. The summary — inputs run,
seconds, findings with an example input, the target's own tallies — goes to
``bench/results/fuzz-<date>.json`` and is printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.bench.machine import git_revision

__all__ = ["TARGETS", "main", "run_target"]

TARGETS = ("codec", "config", "ota")
_REPO = Path(__file__).resolve().parents[2]
_UNITS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def run_target(name: str, seconds: int, runs: int, work: Path, strict: bool) -> dict[str, Any]:
    base = work / name
    corpus, stats_dir = base / "corpus", base / "stats"
    corpus.mkdir(parents=True, exist_ok=True)
    stats_dir.mkdir(parents=True, exist_ok=True)
    module = f"tools.fuzz.fuzz_{name}"
    subprocess.run([sys.executable, "-m", module, "--write-seeds", str(corpus)], cwd=_REPO, check=True,
                   timeout=120, capture_output=True)
    cmd = [sys.executable, "-m", module, f"-max_total_time={seconds}", "-print_final_stats=1",
           f"-artifact_prefix={base}/", "-rss_limit_mb=2048", "-timeout=20",
           "-max_len=4096"]
    if runs:
        cmd.append(f"-runs={runs}")
    env = {**os.environ, "FUZZ_STATS_DIR": str(stats_dir), "FUZZ_KEEP_GOING": "0" if strict else "1"}
    t0 = time.monotonic()
    proc = subprocess.run([*cmd, str(corpus)], cwd=_REPO, env=env, capture_output=True, text=True,
                          timeout=seconds + 300)
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    (base / "last-run.log").write_text(log)
    units = _UNITS.findall(log)
    stats_file = stats_dir / f"{name}.json"
    tallies = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    crash = _ARTIFACT.findall(log)
    return {
        "target": name, "inputs": int(units[-1]) if units else tallies.get("inputs"),
        "seconds": round(wall, 1), "exit_code": proc.returncode,
        "crashed": proc.returncode != 0, "crash_artifact": crash[-1] if crash else None,
        "crash_excerpt": _excerpt(log) if proc.returncode != 0 else None,
        "findings": tallies.pop("findings", {}), "tallies": tallies,
    }


def _excerpt(log: str) -> str:
    """The Python traceback libFuzzer printed (the last 25 lines before the artifact line)."""
    lines = log.splitlines()
    end = next((i for i, ln in enumerate(lines) if "Uncaught Python exception" in ln), len(lines))
    return "\n".join(lines[end:end + 25])


def _table(results: list[dict[str, Any]]) -> str:
    rows = [f"{'target':8} {'inputs':>10} {'seconds':>8} {'crashed':>8} {'findings':>9}"]
    for r in results:
        nfind = sum(f["count"] for f in r["findings"].values())
        rows.append(f"{r['target']:8} {r['inputs'] or 0:>10} {r['seconds']:>8} {r['crashed']!s:>8} {nfind:>9}")
        rows += [f"    {n} x {k}" for k, n in ((k, f["count"]) for k, f in r["findings"].items())]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fuzz.run", description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", choices=[*TARGETS, []], help="default: all")
    ap.add_argument("--time", type=int, default=60, help="seconds per target (default %(default)s)")
    ap.add_argument("--runs", type=int, default=0, help="stop a target after this many inputs (0 = time only)")
    ap.add_argument("--work", type=Path, default=_REPO / "build" / "fuzz", help="corpus/artifact directory")
    ap.add_argument("--out", type=Path, default=_REPO / "bench" / "results", help="where the JSON summary goes")
    ap.add_argument("--strict", action="store_true", help="stop a target at its first finding")
    args = ap.parse_args(argv)
    results = [run_target(t, args.time, args.runs, args.work, args.strict) for t in (args.targets or TARGETS)]
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"commit": git_revision(), "results": results}, indent=1))
    print(_table(results))
    print(f"summary: {out}")
    return 1 if any(r["crashed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
