"""Soak test: the full daemon on replay at a high rate for many frames, sampled with psutil.

    python -m tools.soak --frames 1000000                 # the release soak (bench/results/soak-<date>.*)
    python -m tools.soak --frames 100000 --interval 1     # the CI-sized one

It starts its own mosquitto on a free loopback port (or uses ``--broker host:port``), a QoS 0
subscriber that counts results and keeps the last health message, and ``python -m agent run`` with
a replay source. Every ``--interval`` seconds it records the daemon's RSS, open fds, threads and
CPU time, and the host's CPU steal (a VM's vCPU taken away: deadline misses the daemon cannot
help). Written: ``soak-<date>.csv`` (samples), ``.json`` (summary, verdict), ``.png`` (plot).

Samples taken after the replay ended (the daemon shutting down) are plotted but not judged.
Pass: RSS drift <= ``--max-drift-mb`` (mean of the last tenth of the samples after warm-up minus
the mean of the first tenth), fds and threads constant after warm-up, 0 deadline misses at the
configured deadline, daemon exit code 0. Exit status 0 = pass, 1 = fail, 2 = could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from tools.localbroker import free_port, start_mosquitto
from tools.progress import Progress

__all__ = ["Sample", "main", "summarise"]

REPO = Path(__file__).resolve().parents[1]
Sample = dict[str, float]
_FIELDS = ("t_s", "rss_mb", "fds", "threads", "cpu_s", "results", "misses", "p99_us", "steal_s", "stopping")


def _start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    return start_mosquitto(work, port), port


class _Counter:
    """Counts results and keeps the newest health document (QoS 0: cheap, never back-pressures)."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.results = 0
        self.health: Optional[dict[str, Any]] = None
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-counter")
        self.c.on_connect = lambda c, *_: c.subscribe([(f"{prefix}/result", 0), (f"{prefix}/health", 0)])
        self.c.on_message = self._on_message
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/result"):
            self.results += 1  # only this thread writes it
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if self.health is None or doc.get("uptime_s", 0) >= self.health.get("uptime_s", 0):
                self.health = doc

    @property
    def misses(self) -> int:
        """Deadline misses in the newest health document (0 before the first)."""
        with self._lock:
            return int(((self.health or {}).get("inference") or {}).get("deadline_misses") or 0)

    @property
    def p99_us(self) -> float:
        """p99 inference latency of the newest health interval (NaN before the first or in an idle one)."""
        with self._lock:
            v = ((self.health or {}).get("inference") or {}).get("p99_us")
        return float(v) if v is not None else float("nan")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _write_config(path: Path, args: argparse.Namespace, port: int) -> None:
    import tomli_w

    host, _, bport = (args.broker or f"127.0.0.1:{port}").partition(":")
    doc = {
        "device": {"id": args.device},
        "mqtt": {"host": host, "port": int(bport), "qos": args.qos},
        "source": {"type": "replay", "path": str(args.golden), "rate_hz": float(args.rate), "limit": args.frames,
                   "loop": True},
        "inference": {"model": str(args.model), "golden": str(args.golden), "deadline_ms": args.deadline_ms},
        "health": {"interval_s": args.interval},
        "ota": {"enabled": False, "state_dir": str(path.parent / "state"), "trusted_keys": str(path.parent / "keys")},
        "homeassistant": {"discovery": False},
    }
    path.write_text(tomli_w.dumps(doc))


def _sample(proc: psutil.Process, t0: float, counter: _Counter) -> Optional[Sample]:
    try:
        with proc.oneshot():
            cpu = proc.cpu_times()
            return {"t_s": round(time.monotonic() - t0, 2), "rss_mb": proc.memory_info().rss / 2**20,
                    "fds": _held_fds(proc), "threads": proc.num_threads(), "cpu_s": cpu.user + cpu.system,
                    "results": counter.results, "misses": counter.misses, "p99_us": counter.p99_us,
                    "steal_s": host_steal_s()}
    except psutil.Error:
        return None  # the daemon just exited


def _held_fds(proc: psutil.Process, reads: int = 3) -> int:
    """Open fds, without those on /proc and /sys files: the health thread opens and closes a few at
    the same period as these samples, and on a busy machine one can stay open for milliseconds while
    the thread is descheduled (the CI soak saw [9, 10], also with the fewest of three reads 2 ms
    apart). Those reads are the same every interval, so a leak among them would show in threads/RSS;
    a leaked socket, pipe or file elsewhere stays open and raises every read. The fewest of a few."""
    fewest = _fds_not_proc_sys(proc.pid)
    for _ in range(reads - 1):
        time.sleep(0.002)
        fewest = min(fewest, _fds_not_proc_sys(proc.pid))
    return fewest


def _fds_not_proc_sys(pid: int) -> int:
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    n = 0
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            continue  # closed since the listing: transient
        n += not target.startswith(("/proc/", "/sys/"))
    return n


def host_steal_s() -> float:
    """CPU seconds the hypervisor ran something else while this VM wanted its vCPUs (``steal`` in
    /proc/stat, summed over CPUs; 0 on bare metal or where unreadable). A deadline miss during
    steal is the host's, not the daemon's; the summary reports both so a reader can tell."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _steal_ms(samples: list[Sample], i: int) -> float:
    """Host steal (ms) in the two sampling intervals ending at sample ``i`` (health, and so the
    miss count, lags a sample by up to one interval)."""
    return (samples[i].get("steal_s", 0.0) - samples[max(0, i - 2)].get("steal_s", 0.0)) * 1000


def miss_intervals(samples: list[Sample]) -> list[dict[str, float]]:
    """The sampling intervals in which the deadline-miss count rose, with the steal around them."""
    return [{"t_s": samples[i]["t_s"], "misses": rose, "steal_ms": round(_steal_ms(samples, i), 1)}
            for i in range(1, len(samples))
            if (rose := samples[i].get("misses", 0) - samples[i - 1].get("misses", 0)) > 0]


def _steal_spread(samples: list[Sample]) -> dict[str, float]:
    """Median and max of the same two-interval steal over the whole run: the yardstick for the
    steal seen around the misses."""
    w = sorted(_steal_ms(samples, i) for i in range(2, len(samples)))
    return {"median": round(w[len(w) // 2], 1), "max": round(w[-1], 1)} if w else {}


def summarise(samples: list[Sample], warmup_frac: float, max_drift_mb: float,
              warmup_s: float = 0.0) -> dict[str, Any]:
    """Drift and constancy after warm-up: the first ``warmup_frac`` of the samples or the first
    ``warmup_s`` seconds, whichever is longer (buffers and caches settle in the first seconds)."""
    running = [s for s in samples if not s.get("stopping")]
    skip = max(int(len(running) * warmup_frac), sum(1 for s in running if s["t_s"] < warmup_s))
    steady = running[skip:]
    if len(steady) < 4:
        return {"ok": False, "reason": f"only {len(steady)} samples after warm-up; run longer"}
    tenth = max(1, len(steady) // 10)
    first = sum(s["rss_mb"] for s in steady[:tenth]) / tenth
    last = sum(s["rss_mb"] for s in steady[-tenth:]) / tenth
    fds, threads = {s["fds"] for s in steady}, {s["threads"] for s in steady}
    out = {"samples": len(samples), "steady_samples": len(steady), "warmup_end_s": steady[0]["t_s"],
           "host_steal_s": round(samples[-1].get("steal_s", 0.0) - samples[0].get("steal_s", 0.0), 2),
           "miss_intervals": miss_intervals(samples),
           "steal_ms_per_2_intervals": _steal_spread(samples),
           "rss_start_mb": round(first, 3), "rss_end_mb": round(last, 3), "rss_drift_mb": round(last - first, 3),
           "rss_steady_range_mb": round(max(s["rss_mb"] for s in steady) - min(s["rss_mb"] for s in steady), 3),
           "fds": sorted(fds), "threads": sorted(threads)}
    problems = []
    if last - first > max_drift_mb:
        problems.append(f"RSS drift {last - first:.2f} MB > {max_drift_mb} MB")
    if len(fds) > 1:
        problems.append(f"open fds vary after warm-up: {sorted(fds)}")
    if len(threads) > 1:
        problems.append(f"threads vary after warm-up: {sorted(threads)}")
    out.update(ok=not problems, reason="; ".join(problems))
    return out


def _plot(samples: list[Sample], path: Path, title: str, warmup_t: float, deadline_ms: float) -> None:
    from tools.bench.plots import plot_soak

    plot_soak(samples, path, title, warmup_t, deadline_ms)


def replot(stem: Path) -> Path:
    """``<stem>.png`` drawn again from ``<stem>.csv`` and ``.json`` (no daemon runs)."""
    with stem.with_suffix(".csv").open(newline="") as f:
        samples = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    summary = json.loads(stem.with_suffix(".json").read_text())
    _plot(samples, stem.with_suffix(".png"), f"soak: {summary['frames']} frames, {Path(summary['model']).name}",
          float(summary.get("warmup_end_s") or 0.0), float(summary["deadline_ms"]))
    return stem.with_suffix(".png")


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames to replay (default %(default)s)")
    ap.add_argument("--rate", type=float, default=2000.0,
                    help="replay rate in Hz; 0 = as fast as possible (default %(default)s)")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "digit.card.json")
    ap.add_argument("--golden", type=Path, default=REPO / "models" / "golden.npz")
    ap.add_argument("--deadline-ms", type=float, default=5.0, help="inference deadline (default %(default)s)")
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default %(default)s)")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of samples that is warm-up")
    ap.add_argument("--warmup-s", type=float, default=20.0, help="at least this many seconds of warm-up")
    ap.add_argument("--max-drift-mb", type=float, default=1.0)
    ap.add_argument("--broker", default="", help="host:port of an existing broker (default: start one)")
    ap.add_argument("--device", default="soak")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--name", default="", help="file name stem (default soak-<date>)")
    ap.add_argument("--replot", type=Path, default=None, metavar="STEM",
                    help="only redraw STEM.png from an earlier run's STEM.csv and STEM.json")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    broker, port = (None, 0) if args.broker else _start_broker(work)
    cfg = work / "soak.toml"
    _write_config(cfg, args, port)
    host, _, bport = (args.broker or f"127.0.0.1:{port}").partition(":")
    counter = _Counter(host, int(bport), f"digit-agent/{args.device}")
    log = (work / "agent.log").open("wb")
    t0 = time.monotonic()
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT)
    samples: list[Sample] = []
    progress = Progress("soak", total=args.frames, unit="results")
    try:
        proc = psutil.Process(agent.pid)
        agent_log = work / "agent.log"
        while agent.poll() is None:
            s = _sample(proc, t0, counter)
            # Once the replay has ended the daemon shuts down (threads end, sockets close): those
            # samples are plotted but are not part of the steady state.
            if s is not None:
                s["stopping"] = float("source finished" in agent_log.read_text(errors="replace"))
                samples.append(s)
                progress.set(s["results"], note=f"RSS {s['rss_mb']:.1f} MiB, {s['misses']:.0f} misses")
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(args.interval)
    finally:
        progress.close()
        if agent.poll() is None:
            agent.terminate()
            agent.wait(30)
        log.close()
        time.sleep(1.0)  # the final health message
        counter.close()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    health = counter.health or {}
    inf = health.get("inference") or {}
    return {"exit_code": agent.returncode, "wall_s": round(time.monotonic() - t0, 1), "samples": samples,
            "results_received": counter.results, "deadline_misses": inf.get("deadline_misses"),
            "inferences": inf.get("inferences"), "health_frames": health.get("frames"),
            "mqtt": {k: (health.get("mqtt") or {}).get(k) for k in ("produced", "dropped", "acked")},
            "log_tail": (work / "agent.log").read_text(errors="replace")[-2000:]}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.replot is not None:
        print(f"wrote {replot(args.replot)}")
        return 0
    for p in (args.model, args.golden):
        if not p.exists():
            print(f"soak: {p} does not exist (build the model with `make model`, or pass --model/--golden)",
                  file=sys.stderr)
            return 2
    args.model, args.golden = args.model.resolve(), args.golden.resolve()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        r = run(args, Path(tmp))
    samples = r.pop("samples")
    verdict = summarise(samples, args.warmup, args.max_drift_mb, args.warmup_s)
    problems = [verdict["reason"]] if verdict["reason"] else []
    if r["exit_code"] != 0:
        problems.append(f"daemon exit code {r['exit_code']}")
    if r["deadline_misses"] != 0:
        problems.append(f"{r['deadline_misses']} deadline misses at {args.deadline_ms} ms")
    summary = {"frames": args.frames, "rate_hz": args.rate, "deadline_ms": args.deadline_ms,
               "model": str(args.model), "interval_s": args.interval, **r, **verdict,
               "pass": not problems, "problems": problems}
    if not problems:
        summary.pop("log_tail")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (args.name or f"soak-{time.strftime('%Y%m%d-%H%M%S')}")
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_FIELDS)
        w.writeheader()
        w.writerows({k: round(v, 3) for k, v in s.items()} for s in samples)
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    if samples:
        _plot(samples, stem.with_suffix(".png"), f"soak: {args.frames} frames, {args.model.name}",
              verdict.get("warmup_end_s", 0.0), args.deadline_ms)
    print(json.dumps({k: v for k, v in summary.items() if k != "log_tail"}, indent=1))
    print(f"soak: {'PASS' if not problems else 'FAIL: ' + '; '.join(problems)} ({stem}.*)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
