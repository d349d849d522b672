"""make bench / make bench-quick: run the benchmarks and write JSON, Markdown and PNG results.

    python -m tools.bench --out bench/results                  # make bench
    python -m tools.bench --quick --out build/bench            # make bench-quick
    python -m tools.bench --only frontier --out bench/results  # or --only e2e

Files: <out>/<date>-<host>[-quick].json (machine info + every figure), .md (tables and target
verdicts), -frontier.png and -latency.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from tools.bench import plots, report
from tools.bench.machine import load_average, machine_info

__all__ = ["main", "parse_args"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: shipped model only, short daemon runs")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--models", type=Path, default=REPO / "models",
                   help="the model set (digit.card.json and its variants) and golden.npz")
    p.add_argument("--only", choices=("frontier", "e2e", "variants"), default=None)
    p.add_argument("--runs", type=int, default=None, help="batch-1 inferences per model (default 20000/2000)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the frontier models")
    p.add_argument("--max-steps", type=int, default=0, help="cap training steps (smoke; accuracy meaningless)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the daemon")
    p.add_argument("--report", type=Path, default=None, metavar="JSON",
                   help="only rebuild the Markdown of an earlier result file (plots are kept)")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON",
                   help="only redraw the frontier and latency PNGs of an earlier result file")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="override the daemon's self-test floor (only for a dev model)")
    args = p.parse_args(argv)
    if args.report is not None or args.replot is not None:
        return args
    if args.runs is None:
        args.runs = 2000 if args.quick else 20000
    if args.runs < 100:
        p.error("--runs must be >= 100")
    if not (args.models / "digit.card.json").exists():
        p.error(f"{args.models}/digit.card.json not found (make model builds it)")
    return args


def _strip_samples(e2e: dict[str, Any]) -> None:
    """Raw latency samples out of the result file; their quantiles stay so the plots can be redrawn."""
    for v in e2e.values():
        if isinstance(v, dict):
            for stem in ("frame_age_us", "e2e_us"):
                samples = v.pop(f"{stem}_samples", None)
                if samples:
                    v[f"{stem}_quantiles"] = plots.quantiles(samples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tools.bench.e2e import E2EOptions, run_e2e
    from tools.bench.frontier import FrontierOptions, run_frontier

    t0 = time.monotonic()
    doc: dict[str, Any] = {"date": datetime.date.today().isoformat(), "quick": args.quick,
                           "machine": machine_info(), "command": " ".join(["python", "-m", "tools.bench",
                                                                           *sys.argv[1:]])}
    if args.only in (None, "frontier"):
        doc["frontier"] = run_frontier(FrontierOptions(args.quick, args.runs, args.models, args.epochs,
                                                       args.max_steps))
    if args.only in (None, "e2e"):
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            opts = E2EOptions(args.quick, args.models, Path(tmp), min_accuracy=args.min_accuracy,
                              profile_dir=None if args.no_profile or args.quick else args.out)
            if args.quick:
                opts.throughput_s, opts.rate_s, opts.idle_s = 3.0, 3.0, 3.0
                opts.perframe_rounds, opts.perframe_window_s, opts.perframe_piece_s = 3, 1.5, 0.3
            doc["e2e"] = run_e2e(opts)
    if args.only in (None, "variants"):  # every variant side by side; does the device serve the fastest?
        from tools.bench.variants import default_card, measure_variants
        doc["variants"] = measure_variants(default_card(args.models), args.models / "golden.npz",
                                           seconds_each=1.0 if args.quick else 3.0)
    doc["load_average_end"] = load_average()
    doc["minutes"] = round((time.monotonic() - t0) / 60, 2)
    doc["targets"] = report.targets(doc)
    return doc


def write(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """Plots, Markdown and JSON into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{doc['date']}-{doc['machine']['host'] or socket.gethostname()}" + ("-quick" if doc["quick"] else "")
    files = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    images: dict[str, str] = {}
    if "frontier" in doc:
        files["frontier_png"] = out / f"{stem}-frontier.png"
        report.plot_frontier(doc["frontier"], files["frontier_png"])
        images["frontier"] = files["frontier_png"].name
    if "e2e" in doc:
        files["latency_png"] = out / f"{stem}-latency.png"
        report.plot_histogram(doc["e2e"], files["latency_png"])
        images["latency histogram"] = files["latency_png"].name
        _strip_samples(doc["e2e"])
    report.write_markdown(doc, files["md"], images)
    files["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return files


def replot(path: Path) -> list[Path]:
    """The frontier and latency PNGs of a result JSON, drawn again (no benchmark runs)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    out = []
    if "frontier" in doc:
        out.append(path.parent / f"{path.stem}-frontier.png")
        report.plot_frontier(doc["frontier"], out[-1])
    if "e2e" in doc:
        out.append(path.parent / f"{path.stem}-latency.png")
        report.plot_histogram(doc["e2e"], out[-1])
    return out


def rebuild_markdown(path: Path) -> Path:
    """Markdown (and target verdicts) again from a result JSON, e.g. after the report code changed."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["targets"] = report.targets(doc)
    images = {k: f"{path.stem}-{suffix}.png" for k, suffix in (("frontier", "frontier"),
                                                               ("latency histogram", "latency"))
              if (path.parent / f"{path.stem}-{suffix}.png").exists()}
    report.write_markdown(doc, path.with_suffix(".md"), images)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return path.with_suffix(".md")


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.replot is not None:
        for png in replot(args.replot):
            print(f"wrote {png}")
        return 0
    if args.report is not None:
        print(f"wrote {rebuild_markdown(args.report)}")
        return 0
    doc = run(args)
    files = write(doc, args.out)
    if args.quick:
        print("quick mode: smoke figures only (short runs; frontier = shipped model; not a benchmark)")
    for t in doc["targets"]:
        state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"  {t['target']}: {t['value']} {t['unit']} (limit {t['limit']}) {state}")
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
