"""CPU per frame side by side: the daemon, the naive script and the bare model, one core, one run.

The daemon (QoS 0, replay flat out) and the naive peer (:mod:`tools.bench.naive_peer`) are both
started pinned to the same core against the same broker, then take turns: only one of them runs
at a time (the other is held with SIGSTOP), each for ``window_s`` seconds per round, and after them
one round of :mod:`tools.bench.hotloop` (bare inference, preprocessing, encoder, serial decoder)
on the same core. CPU per frame = the process's CPU time over the window / results the subscriber
received in it. Figures are medians over the rounds.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from tests.helpers.broker import Broker, Collector
from tools.bench.e2e import E2EOptions, _cpu_s, _daemon, _one_core
from tools.bench.machine import load_average

__all__ = ["run_perframe"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
_DAEMON_TOPIC = "digit-agent/dev1/result"
_NAIVE_TOPIC = "digit-agent/naive/result"


class _Count(Collector):
    def __init__(self, broker: Broker, topic: str) -> None:
        self.count = 0
        super().__init__(broker, topic, qos=0)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1


def _thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def _window(proc: psutil.Process, tap: _Count, seconds: float) -> dict[str, float]:
    """Let ``proc`` run alone for ``seconds`` (after a settle); CPU µs per result it delivered, split
    into its main thread and the others, with the involuntary context switches per frame (other
    processes taking the core: the main source of noise on a shared host)."""
    proc.send_signal(signal.SIGCONT)
    time.sleep(0.4)  # back on the core, connection and caches warm again
    t0, c0, cpu0, th0, sw0 = time.monotonic(), tap.count, _cpu_s(proc), _thread_cpu(proc), proc.num_ctx_switches()
    time.sleep(seconds)
    t1, c1, cpu1, th1, sw1 = time.monotonic(), tap.count, _cpu_s(proc), _thread_cpu(proc), proc.num_ctx_switches()
    proc.send_signal(signal.SIGSTOP)
    frames = max(c1 - c0, 1)
    main = th1.get(proc.pid, 0.0) - th0.get(proc.pid, 0.0)
    return {"frames": c1 - c0, "frames_per_s": round(frames / (t1 - t0), 1),
            "cpu_us_per_frame": round((cpu1 - cpu0) * 1e6 / frames, 2),
            "main_thread_us_per_frame": round(main * 1e6 / frames, 2),
            "other_threads_us_per_frame": round((cpu1 - cpu0 - main) * 1e6 / frames, 2),
            "preempted_per_frame": round((sw1.involuntary - sw0.involuntary) / frames, 3)}


def served_file(opts: E2EOptions) -> Path:
    """The model file the daemon serves on this host (its own choice when the model is a set of
    variants): the naive script and the hot loops run that same file."""
    from tools.bench.variants import served_in

    return served_in(opts.models_dir)[2].resolve()  # the same choice the daemons are pinned to


def _naive(opts: E2EOptions, model: Path, broker: Broker, cpus: Optional[set[int]]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tools.bench.naive_peer", str(model),
           str(opts.models_dir / "golden.npz"), broker.host, str(broker.port), _NAIVE_TOPIC]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if cpus:
        psutil.Process(p.pid).cpu_affinity(sorted(cpus))
    return p


def _hotloop(opts: E2EOptions, model: Path, cpu: Optional[int], seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.bench.hotloop", "--model", str(model),
           "--frames", str(opts.models_dir / "golden.npz"), "--rounds", "1", "--seconds", str(seconds)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"hotloop failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(np.median([float(r[key]) for r in rows])), 2)


def run_perframe(opts: E2EOptions, broker: Broker, rounds: int, window_s: float,
                 piece_s: float) -> dict[str, Any]:
    cpus = _one_core()
    cpu = min(cpus) if cpus else None
    model = served_file(opts)
    d_tap, n_tap = _Count(broker, _DAEMON_TOPIC), _Count(broker, _NAIVE_TOPIC)
    naive: Optional[subprocess.Popen[bytes]] = None
    daemon_rows: list[dict[str, Any]] = []
    naive_rows: list[dict[str, Any]] = []
    hot: list[dict[str, Any]] = []
    try:
        src = {"type": "replay", "rate_hz": 0.0, "loop": True}
        with _daemon(opts, broker, "perframe", cpus, source=src, mqtt={"qos": 0},
                     health={"interval_s": 10.0}) as agent:
            dproc = psutil.Process(agent.proc.pid)
            dproc.send_signal(signal.SIGSTOP)
            naive = _naive(opts, model, broker, cpus)
            nproc = psutil.Process(naive.pid)
            deadline = time.monotonic() + 60
            while not n_tap.count and time.monotonic() < deadline and naive.poll() is None:
                time.sleep(0.05)
            if not n_tap.count:
                err = naive.stderr.read().decode(errors="replace") if naive.stderr else ""
                raise RuntimeError(f"the naive peer published nothing: {err[-2000:]}")
            nproc.send_signal(signal.SIGSTOP)
            for r in range(rounds):
                log.info("per frame: round %d/%d (daemon, naive script, hot loops)", r + 1, rounds)
                daemon_rows.append(_window(dproc, d_tap, window_s))
                naive_rows.append(_window(nproc, n_tap, window_s))
                hot.append(_hotloop(opts, model, cpu, piece_s))
            dproc.send_signal(signal.SIGCONT)
    finally:
        if naive is not None:
            naive.kill()
            naive.wait(10)
        d_tap.close()
        n_tap.close()
    pieces = {k: round(float(np.median([h["cpu_us"][k] for h in hot])), 2) for k in hot[0]["cpu_us"]}
    # Each round's daemon, naive and hot-loop figures are seconds apart: their ratios drift less
    # with the host's load than ratios of medians taken over the whole run.
    over_inf = [d["cpu_us_per_frame"] / h["cpu_us"]["inference"] for d, h in zip(daemon_rows, hot)]
    over_naive = [d["cpu_us_per_frame"] / n["cpu_us_per_frame"] for d, n in zip(daemon_rows, naive_rows)]
    lat = [h["inference_latency"] for h in hot]
    return {
        "rounds": rounds, "window_s": window_s, "pinned_cpus": sorted(cpus) if cpus else None,
        "model": model.name,
        "daemon": {"cpu_us_per_frame": _median(daemon_rows, "cpu_us_per_frame"),
                   "frames_per_s": _median(daemon_rows, "frames_per_s"),
                   "main_thread_us_per_frame": _median(daemon_rows, "main_thread_us_per_frame"),
                   "other_threads_us_per_frame": _median(daemon_rows, "other_threads_us_per_frame"),
                   "least_preempted_round": min(daemon_rows, key=lambda r: r["preempted_per_frame"]),
                   "rounds": daemon_rows},
        "naive": {"cpu_us_per_frame": _median(naive_rows, "cpu_us_per_frame"),
                  "frames_per_s": _median(naive_rows, "frames_per_s"),
                  "least_preempted_round": min(naive_rows, key=lambda r: r["preempted_per_frame"]),
                  "rounds": naive_rows},
        "pieces_cpu_us": pieces,
        "ratios": {"daemon_over_inference": round(float(np.median(over_inf)), 3),
                   "daemon_over_naive": round(float(np.median(over_naive)), 3),
                   "daemon_over_inference_rounds": [round(r, 3) for r in over_inf],
                   "daemon_over_naive_rounds": [round(r, 3) for r in over_naive]},
        "inference_p50_us": round(float(np.median([x["p50_us"] for x in lat])), 2),
        "inference_p99_us": round(float(np.median([x["p99_us"] for x in lat])), 2),
        "hotloop_rounds": [h["cpu_us"] for h in hot], "cobs_package": hot[0]["cobs_package"],
        "load_average": load_average(),
    }
