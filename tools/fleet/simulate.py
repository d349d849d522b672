"""``python -m tools.fleet simulate``: N real agent processes, one mosquitto, one staged rollout.

Every agent is the real daemon (``python -m agent run``) with the replay source at a low frame
rate, its own state directory and the same trusted key. The rollout is the real
``tools.fleet rollout`` code. Recorded: time until every device committed, failures, and the
broker's CPU time and peak RSS (psutil), plus the agents' total RSS.

"Bad" devices (``--bad-fraction``) get a golden set whose labels are shifted, so any new model
fails their OTA accuracy gate, while their own start-up self-test is relaxed (floor 0) so they
still serve. The rollout must stop at the canaries; the bad devices are therefore chosen among
the canaries of the plan (at least one), the rest at random.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import psutil

from ..localbroker import start_mosquitto
from ..ota.package import generate_key
from ..progress import Progress
from .plan import make_stages

__all__ = ["Fleet", "add_args", "run", "start_broker", "verdict"]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Fleet:
    """Configs, keys and processes of ``n`` agents under ``workdir`` (see the module docstring)."""

    workdir: Path
    host: str
    port: int
    model: Path
    golden: Path
    n: int = 3
    prefix: str = "digit-agent"
    rate_hz: float = 2.0
    test_window_s: float = 2.0
    deadline_ms: float = 200.0
    bad: set[str] = field(default_factory=set)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [f"sim-{i:03d}" for i in range(self.n)]

    @property
    def key(self) -> Path:
        return self.workdir / "operator.key"

    def write(self) -> None:
        """Key pair, the shared config and the bad golden set."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "keys").mkdir(exist_ok=True)
        if not self.key.exists():
            _, pub = generate_key(self.key)
            shutil.copy(pub, self.workdir / "keys" / "operator.pub")
        with np.load(self.golden) as z:
            np.savez(self.workdir / "bad_golden.npz", images=z["images"], labels=(z["labels"] + 1) % 10)
        tables: dict[str, dict[str, Any]] = {
            "mqtt": {"host": self.host, "port": self.port, "topic_prefix": self.prefix,
                     "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
            "source": {"type": "replay", "path": str(self.golden), "rate_hz": self.rate_hz},
            "inference": {"model": str(self.model), "golden": str(self.golden), "deadline_ms": self.deadline_ms},
            "health": {"interval_s": 2.0},
            "ota": {"trusted_keys": str(self.workdir / "keys"), "test_window_s": self.test_window_s,
                    "stall_s": 1.0},
        }
        for name, values in self.extra.items():
            tables.setdefault(name, {}).update(values)
        import tomli_w  # the operator extra's, not the device's

        (self.workdir / "agent.toml").write_text(tomli_w.dumps(tables))

    def _cmd(self, dev: str) -> list[str]:
        sets = [f"device.id={dev}", f"ota.state_dir={self.workdir / 'state' / dev}"]
        if dev in self.bad:
            sets += [f"inference.golden={self.workdir / 'bad_golden.npz'}", "inference.selftest_min_accuracy=0.0"]
        args = [sys.executable, "-m", "agent", "--log-level", "INFO", "run", "--config",
                str(self.workdir / "agent.toml")]
        for s in sets:
            args += ["--set", s]
        return args

    def start(self) -> None:
        (self.workdir / "logs").mkdir(exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for dev in self.ids:
            with (self.workdir / "logs" / f"{dev}.log").open("wb") as log:
                self.procs[dev] = subprocess.Popen(self._cmd(dev), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                   env=env)

    def rss_bytes(self) -> int:
        total = 0
        for p in self.procs.values():
            with contextlib.suppress(psutil.Error):  # an agent that already exited
                total += psutil.Process(p.pid).memory_info().rss
        return total

    def stop(self, timeout: float = 20.0) -> dict[str, Optional[int]]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, Optional[int]] = {}
        for dev, p in self.procs.items():
            try:
                codes[dev] = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                codes[dev] = p.wait(5)
        return codes

    def log(self, dev: str) -> str:
        return (self.workdir / "logs" / f"{dev}.log").read_text(errors="replace")


def start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    return start_mosquitto(workdir, port, "max_queued_messages 10000\n")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", type=int, default=100, help="agent processes to start")
    p.add_argument("--model", default=str(REPO / "models" / "digit.int8.onnx"),
                   help="one ONNX file every agent serves; its re-release is rolled out; its card: beside it, "
                        "else --model-card")
    p.add_argument("--model-card", default=str(REPO / "models" / "digit.card.json"),
                   help="card of --model when none is beside it (the model set's card)")
    p.add_argument("--golden", default=str(REPO / "models" / "golden.npz"), help="golden set (replay source too)")
    p.add_argument("--bad-fraction", type=float, default=0.0, help="devices whose OTA gate must fail")
    p.add_argument("--canary-fraction", type=float, default=0.1, help="share of the agents in the canary stage")
    p.add_argument("--waves", type=int, default=3, help="batches after the canaries (bounds simultaneous gates)")
    p.add_argument("--gate-p99-ms", type=float, default=1000.0,
                   help="latency gate and deadline: N agents share this machine's cores, a device has its own")
    p.add_argument("--rate-hz", type=float, default=2.0, help="frames per second each agent replays")
    p.add_argument("--test-window-s", type=float, default=2.0, help="each agent's OTA test window")
    p.add_argument("--port", type=int, default=18830, help="port of the simulation's own mosquitto")
    p.add_argument("--workdir", default="", help="keep everything here (empty: a temporary directory)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per rollout stage")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="wait this long for all agents' health")


def _new_model(src: Path, dst: Path) -> None:
    """Same weights, different bytes (a new doc string): what a re-released model looks like."""
    import onnx

    m = onnx.load(str(src))
    m.doc_string = f"{m.doc_string} (fleet simulation re-release {time.time():.0f})"
    onnx.save(m, str(dst))
    card = src.with_suffix(".card.json")
    if card.exists():
        shutil.copy(card, dst.with_suffix(".card.json"))


def _rollout_args(ns: argparse.Namespace, fleet: Fleet, model: Path, state: Path) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(ns.port), "--prefix", fleet.prefix,
            "--devices", ",".join(fleet.ids), "--model", str(model), "--key", str(fleet.key),
            "--version", str(ns.version), "--job", ns.job, "--canary-fraction", str(ns.canary_fraction),
            "--waves", str(ns.waves), "--max-failures", "0", "--timeout", str(ns.timeout), "--state", str(state),
            "--rollback-model", str(Path(ns.model).resolve()), "--min-accuracy", "0.5",
            "--max-p99-ms", str(ns.gate_p99_ms), "--json"]


def run(ns: argparse.Namespace) -> int:
    from . import rollout, status

    work = Path(ns.workdir or tempfile.mkdtemp(prefix="fleet-sim-"))
    work.mkdir(parents=True, exist_ok=True)
    ns.version, ns.job = int(time.time()) % 100000 + 1000, f"sim-{int(time.time())}"
    fleet = Fleet(work, "127.0.0.1", ns.port, Path(ns.model).resolve(), Path(ns.golden).resolve(), n=ns.agents,
                  rate_hz=ns.rate_hz, test_window_s=ns.test_window_s, deadline_ms=ns.gate_p99_ms)
    if not Path(ns.model).with_suffix(".card.json").exists():  # one variant of a set: the set's card
        fleet.extra.setdefault("inference", {})["model_card"] = str(Path(ns.model_card).resolve())
    if ns.bad_fraction > 0:
        canaries = make_stages(fleet.ids, ns.job, ns.canary_fraction, 1)[0]
        n_bad = max(1, round(ns.bad_fraction * ns.agents))
        rng = random.Random(ns.job)
        bad = {rng.choice(canaries)}
        bad |= set(rng.sample([d for d in fleet.ids if d not in bad], n_bad - 1))
        fleet.bad = bad
    broker = start_broker(work, ns.port)
    bproc = psutil.Process(broker.pid)
    fleet.write()
    new_model = work / "new_model.onnx"
    _new_model(fleet.model, new_model)
    report: dict[str, Any] = {"agents": ns.agents, "bad_devices": sorted(fleet.bad)}
    t0 = time.monotonic()
    fleet.start()
    try:
        sargs = argparse.Namespace(host="127.0.0.1", port=ns.port, prefix=fleet.prefix, username="",
                                   password_file="", tls_ca="")
        with Progress("agents up (health received)", total=ns.agents, unit="agents") as up:
            view = status.collect(sargs, ns.ready_timeout, expect=ns.agents, progress=up)
        healthy = sum(1 for r in view.rows() if r.health_at is not None)
        report["startup_s"] = round(time.monotonic() - t0, 1)
        report["healthy_before"] = healthy
        report["agents_rss_mb"] = round(fleet.rss_bytes() / 2**20)
        cpu0 = bproc.cpu_times()
        t1 = time.monotonic()
        code = rollout.run(rollout_ns(_rollout_args(ns, fleet, new_model, work / "rollout.json")))
        report["rollout_s"] = round(time.monotonic() - t1, 1)
        cpu1 = bproc.cpu_times()
        report["rollout_exit"] = code
        report["rollout"] = json.loads((work / "rollout.json").read_text())
        report["broker_cpu_s"] = round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2)
        report["broker_rss_mb"] = round(bproc.memory_info().rss / 2**20, 1)
        busy = report["broker_cpu_s"] / max(report["rollout_s"], 0.1)
        report["broker_cpu_percent_of_one_core"] = round(100 * busy, 1)
    finally:
        fleet.stop()
        broker.terminate()
        broker.wait(10)
    summary = {k: v for k, v in report.items() if k != "rollout"}
    summary["outcomes"] = _count(report.get("rollout", {}).get("outcome", {}))
    summary["result"] = report.get("rollout", {}).get("result")
    ok, why = verdict(report)
    summary["expected"], summary["verdict"] = ok, why
    print(json.dumps(summary, indent=1))
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(f"workdir: {work}\nsimulate: {'PASS' if ok else 'FAIL'}: {why}", file=sys.stderr)
    return 0 if ok else 1


def verdict(report: dict[str, Any]) -> tuple[bool, str]:
    """Did the rollout do what this fleet calls for? All good: every agent committed. Any bad
    device (one is always a canary): stopped in the canary stage, the rest never sent the job."""
    r = report.get("rollout") or {}
    outcomes = _count(r.get("outcome", {}))
    if not report.get("bad_devices"):
        done = r.get("result") == "done" and outcomes.get("committed", 0) == report["agents"]
        return done, f"result {r.get('result')}, outcomes {outcomes} of {report['agents']} agents"
    canaries = set((r.get("stages") or [[]])[0])
    beyond = sorted(set(r.get("sent", {})) - canaries)
    stopped = r.get("result") == "aborted" and r.get("stage") == 0 and not beyond
    return stopped, (f"result {r.get('result')} in stage {r.get('stage')} ({r.get('abort_reason', '')}); "
                     f"sent beyond the canaries: {beyond[:5] or 'none'}")


def _count(outcome: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in outcome.values():
        out[v] = out.get(v, 0) + 1
    return out


def rollout_ns(argv: list[str]) -> argparse.Namespace:
    from . import rollout

    p = argparse.ArgumentParser()
    rollout.add_args(p)
    return p.parse_args(argv)

