"""The daemon end to end: real mosquitto, the real ``python -m agent run``, a real subscriber.

Figures come from two sides: the subscriber (receive time on this machine's monotonic clock, which
the sender shares) and the daemon's own timestamps in each result (``frame_age_us`` = frame
complete → result built, ``latency_us`` = inference). Runs use the shipped deadline (5 ms).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from tests.helpers.broker import Broker, Collector
from tests.helpers.daemon import AgentProcess, write_config
from tests.helpers.pty_pair import PtyPair
from tools.bench.machine import load_average, summarise_us
from tools.bench.variants import served_in
from tools.frame_sender import frame_stream
from tools.progress import Progress

__all__ = ["E2EOptions", "run_e2e"]

log = logging.getLogger(__name__)

_DEADLINE_MS = 5.0  # the shipped default (agent.config.schema.InferenceConfig.deadline_ms)


@dataclass
class E2EOptions:
    quick: bool
    models_dir: Path
    work: Path
    throughput_s: float = 20.0
    rate_s: float = 30.0
    idle_s: float = 10.0
    long_frames: int = 1_000_000
    profile_dir: Optional[Path] = None  # set: py-spy profile of a flat-out run written here
    baud: int = 921600
    min_accuracy: Optional[float] = None  # self-test floor override (dev models only)
    perframe_rounds: int = 5  # daemon / naive script / hot loops, side by side (tools.bench.perframe)
    perframe_window_s: float = 5.0
    perframe_piece_s: float = 0.8


class _Tap(Collector):
    """Subscriber keeping (receive ns, payload) per result, or only counting (long runs)."""

    def __init__(self, broker: Broker, qos: int, keep: bool) -> None:
        self.keep = keep
        self.count = 0
        self.results: list[tuple[int, bytes]] = []
        self.health: list[dict[str, Any]] = []
        super().__init__(broker, "digit-agent/dev1/result", "digit-agent/dev1/health", qos=qos)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.monotonic_ns()
        if msg.topic.endswith("/result"):
            self.count += 1
            if self.keep:
                self.results.append((t, bytes(msg.payload)))
        elif msg.topic.endswith("/health"):
            with contextlib.suppress(ValueError):
                self.health.append(json.loads(msg.payload))

    def last_health(self) -> dict[str, Any]:
        return self.health[-1] if self.health else {}


@contextlib.contextmanager
def _pinned(cpus: Optional[set[int]]) -> Iterator[None]:
    """Processes started inside inherit ``cpus`` as their affinity ("one core" figures)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def _daemon(opts: E2EOptions, broker: Broker, name: str, cpus: Optional[set[int]] = None,
            **sections: dict[str, Any]) -> Iterator[AgentProcess]:
    d = opts.work / name
    d.mkdir(parents=True, exist_ok=True)
    inference = {"model": str(daemon_model(opts)), "golden": str(opts.models_dir / "golden.npz"),
                 "variant": served_in(opts.models_dir)[1],  # one choice for every daemon and bare loop
                 "deadline_ms": _DEADLINE_MS, **sections.pop("inference", {})}
    if opts.min_accuracy is not None:
        inference["selftest_min_accuracy"] = opts.min_accuracy
    sections.setdefault("homeassistant", {"discovery": False})
    if sections.get("source", {}).get("type") == "replay":
        sections["source"].setdefault("path", str(opts.models_dir / "golden.npz"))
    cfg = write_config(d / "agent.toml", broker, inference=inference, **sections)
    with _pinned(cpus):
        agent = AgentProcess(cfg, log_level="INFO")
    try:
        try:
            agent.wait_started(timeout=300)  # pinned to one core of a loaded machine: minutes, not seconds
        except RuntimeError as exc:
            raise RuntimeError(f"daemon {name}: {exc}") from None
        yield agent
    finally:
        agent.stop(30)


def daemon_model(opts: E2EOptions) -> Path:
    """What ``inference.model`` names in every daemon this benchmark starts."""
    return opts.models_dir / "digit.card.json"


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _one_core() -> Optional[set[int]]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {cpus[-1]} if len(cpus) > 1 else None


def _wait_quiet(tap: _Tap, n: int, timeout: float, quiet_s: float = 1.0) -> None:
    """Until ``n`` results arrived, or none arrived for ``quiet_s`` (some were dropped), or timeout."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while tap.count < n and time.monotonic() < deadline:
        if tap.count != last:
            last, since = tap.count, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return
        time.sleep(0.05)


def _wait_count(tap: _Tap, n: int, timeout: float, progress: Optional[Progress] = None) -> bool:
    deadline = time.monotonic() + timeout
    while tap.count < n and time.monotonic() < deadline:
        if progress is not None:
            progress.set(tap.count)
        time.sleep(0.02)
    return tap.count >= n


def throughput(opts: E2EOptions, broker: Broker, qos: int, rss_marks: tuple[int, ...] = ()) -> dict[str, Any]:
    """Replay flat out (lossless source), daemon pinned to one core; rate as the subscriber sees it."""
    tap = _Tap(broker, qos, keep=False)
    cpus = _one_core()
    src = {"type": "replay", "rate_hz": 0.0, "loop": True}
    try:
        with _daemon(opts, broker, f"tput-q{qos}", cpus, source=src, mqtt={"qos": qos},
                     health={"interval_s": 1.0}) as agent:
            proc = psutil.Process(agent.proc.pid)
            if not _wait_count(tap, 1000, 180):
                raise RuntimeError(f"no results from the daemon: {agent.tail()}")
            rss: dict[str, int] = {"start": proc.memory_info().rss}
            t0, c0, cpu0 = time.monotonic(), tap.count, _cpu_s(proc)
            with Progress(f"e2e flat out, QoS {qos}", total=max(rss_marks, default=0), unit="results") as prog:
                for mark in rss_marks:
                    if not _wait_count(tap, mark, max(60.0, mark / 500), prog):
                        break
                    rss[str(mark)] = proc.memory_info().rss
            if not rss_marks:
                time.sleep(opts.throughput_s)
            t1, c1, cpu1 = time.monotonic(), tap.count, _cpu_s(proc)
            time.sleep(1.2)  # one more health message with the final counters
            health = tap.last_health()
    finally:
        tap.close()
    frames = max(c1 - c0, 1)
    return {"qos": qos, "pinned_cpus": sorted(cpus) if cpus else None, "window_s": round(t1 - t0, 2),
            "frames": c1 - c0, "frames_per_s": round(frames / (t1 - t0), 1),
            "cpu_us_per_frame": round((cpu1 - cpu0) * 1e6 / frames, 2),
            "cpu_percent_of_one_core": round((cpu1 - cpu0) / (t1 - t0) * 100, 1),
            "rss_bytes": rss, "health_last": _health_brief(health), "load_average": load_average()}


def profile(opts: E2EOptions, broker: Broker, seconds: float) -> dict[str, Any]:
    """py-spy over a flat-out QoS 0 run on one core: which threads and frames take the time."""
    from tools.bench.profile import spy

    assert opts.profile_dir is not None
    tap = _Tap(broker, 0, keep=False)
    try:
        with _daemon(opts, broker, "profile", _one_core(), source={"type": "replay", "rate_hz": 0.0, "loop": True},
                     mqtt={"qos": 0}) as agent:
            _wait_count(tap, 1000, 60)
            c0, t0 = tap.count, time.monotonic()
            out = spy(agent.proc.pid, seconds, opts.profile_dir / "profile-qos0.txt")
            out["frames_per_s_while_sampled"] = round((tap.count - c0) / (time.monotonic() - t0), 1)
    finally:
        tap.close()
    return out


def _health_brief(h: dict[str, Any]) -> dict[str, Any]:
    keys = ("rss_bytes", "cpu_percent", "threads", "frames", "inference", "mqtt")
    return {k: h.get(k) for k in keys}


def _decode(results: list[tuple[int, bytes]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    docs = [json.loads(p) for _, p in results]
    return np.array([t for t, _ in results], dtype=np.int64), docs


def _daemon_side(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"frame_age": summarise_us(np.array([d["frame_age_us"] for d in docs], np.int64) * 1000),
            "inference": summarise_us(np.array([d["latency_us"] for d in docs], np.int64) * 1000),
            "deadline_missed": sum(1 for d in docs if d["deadline_missed"]), "results": len(docs)}


def fixed_rate(opts: E2EOptions, broker: Broker, rate: float) -> dict[str, Any]:
    """Replay paced at ``rate`` for ``rate_s`` seconds (QoS 1, the default); the daemon's timestamps."""
    n = int(rate * opts.rate_s)
    tap = _Tap(broker, 1, keep=True)
    src = {"type": "replay", "rate_hz": rate, "loop": True, "limit": n}
    try:
        with _daemon(opts, broker, f"rate{int(rate)}", source=src, mqtt={"qos": 1},
                     health={"interval_s": 1.0}) as agent:
            try:  # a finite replay stops the daemon when it is served
                agent.proc.wait(opts.rate_s + 120)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"daemon rate{int(rate)} still serving {n} frames after "
                                   f"{opts.rate_s + 120:g} s\n{agent.tail()}") from None
            _wait_quiet(tap, n, 10.0)
    finally:
        tap.close()
    _, docs = _decode(tap.results)
    out = {"rate_hz": rate, "sent": n, **_daemon_side(docs), "health_last": _health_brief(tap.last_health()),
           "load_average": load_average()}
    out["frame_age_us_samples"] = [d["frame_age_us"] for d in docs]
    return out


def _send_paced(pty: PtyPair, frames: np.ndarray, n: int, rate: float, baud: int,
                sent: np.ndarray, stop: threading.Event) -> None:
    """Write frames in 64-byte pieces spaced at the line rate (10 bits/byte), one frame per period;
    ``sent[seq]`` = monotonic ns when the frame's last byte was written (the frame is complete)."""
    piece_s = 64 * 10 / baud
    period = 1.0 / rate
    start = time.monotonic()
    for k, wire in enumerate(frame_stream(frames, n)):
        if stop.is_set():
            return
        if k == 0:  # the leading 0x00 flush
            pty.write(wire)
            continue
        t = start + (k - 1) * period
        for off in range(0, len(wire), 64):
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pty.write(wire[off:off + 64])
            t += piece_s
        sent[k - 1] = time.monotonic_ns()


def serial(opts: E2EOptions, broker: Broker, rate: float) -> dict[str, Any]:
    """frame_sender's wire format → pty at ``opts.baud`` pacing → daemon (serial source) → subscriber."""
    from agent.source.replay import load_frames

    frames = load_frames(opts.models_dir / "golden.npz")
    n = int(rate * opts.rate_s)
    sent = np.zeros(n, dtype=np.int64)
    tap = _Tap(broker, 1, keep=True)
    pty, stop = PtyPair(), threading.Event()
    src = {"type": "serial", "port": pty.slave_path, "baudrate": opts.baud}
    try:
        with _daemon(opts, broker, f"serial{int(rate)}", source=src, mqtt={"qos": 1},
                     health={"interval_s": 1.0}):
            time.sleep(0.5)  # the port is opened after the threads start
            sender = threading.Thread(target=_send_paced, args=(pty, frames, n, rate, opts.baud, sent, stop),
                                      daemon=True)
            sender.start()
            sender.join(opts.rate_s * 3 + 30)
            stop.set()
            _wait_quiet(tap, n, 10.0)
    finally:
        tap.close()
        pty.close()
    recv, docs = _decode(tap.results)
    seqs = np.array([d["frame_seq"] for d in docs], np.int64)
    ok = (seqs < n) & (sent[np.clip(seqs, 0, n - 1)] > 0)
    e2e = recv[ok] - sent[seqs[ok]]
    return {"rate_hz": rate, "baud": opts.baud, "sent": int((sent > 0).sum()), **_daemon_side(docs),
            "frame_to_subscriber": summarise_us(e2e), "health_last": _health_brief(tap.last_health()),
            "load_average": load_average(),
            "e2e_us_samples": (e2e // 1000).tolist()}


def idle(opts: E2EOptions, broker: Broker) -> dict[str, Any]:
    """Serial source on a pty with nothing sent: the daemon's CPU over ``idle_s`` (default health)."""
    pty = PtyPair()
    try:
        with _daemon(opts, broker, "idle", source={"type": "serial", "port": pty.slave_path},
                     health={"interval_s": 10.0}) as agent:
            proc = psutil.Process(agent.proc.pid)
            time.sleep(2.0)  # start-up work (self-test, connect) is over
            t0, c0 = time.monotonic(), _cpu_s(proc)
            time.sleep(opts.idle_s)
            t1, c1 = time.monotonic(), _cpu_s(proc)
            rss = proc.memory_info().rss
    finally:
        pty.close()
    return {"window_s": round(t1 - t0, 2), "cpu_percent": round((c1 - c0) / (t1 - t0) * 100, 3),
            "cpu_s": round(c1 - c0, 4), "rss_bytes": rss, "load_average": load_average()}


def run_e2e(opts: E2EOptions) -> dict[str, Any]:
    broker = Broker(opts.work).start()
    try:
        out: dict[str, Any] = {"deadline_ms": _DEADLINE_MS, "broker": "mosquitto " + _mosquitto_version()}
        log.info("e2e: throughput QoS 0 / 1")
        marks = () if opts.quick else (100_000, opts.long_frames)
        out["throughput_qos0"] = throughput(opts, broker, 0, marks)
        out["throughput_qos1"] = throughput(opts, broker, 1)
        from tools.bench.perframe import run_perframe

        log.info("e2e: CPU per frame side by side: daemon, naive script, bare model")
        out["per_frame"] = run_perframe(opts, broker, opts.perframe_rounds, opts.perframe_window_s,
                                        opts.perframe_piece_s)
        for rate in (100.0, 500.0):
            log.info("e2e: replay at %g fps", rate)
            out[f"replay_{int(rate)}fps"] = fixed_rate(opts, broker, rate)
        log.info("e2e: serial over a pty at 100 fps")
        out["serial_100fps"] = serial(opts, broker, 100.0)
        log.info("e2e: idle")
        out["idle"] = idle(opts, broker)
        if opts.profile_dir is not None:
            log.info("e2e: py-spy profile")
            out["profile_qos0"] = profile(opts, broker, 5.0 if opts.quick else 20.0)
        return out
    finally:
        broker.stop()


def _mosquitto_version() -> str:
    try:
        r = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = (r.stdout or r.stderr).splitlines()
    return first[0].split("version")[-1].strip() if first else "unknown"
