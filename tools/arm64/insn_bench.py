"""Instructions per inference and per daemon frame, counted exactly: aarch64 under QEMU, x86-64 here.

    python -m tools.arm64.insn_bench --root DIR --qemu /opt/qemu-host/run --plugin /opt/qemu-host/insn_count.so

aarch64: the guest runs under the dynamic ``qemu-aarch64`` with the ``insn_count`` plugin
(tools/arm64/insn_count.c) as a Cortex-A72 (Pi 4) and a Cortex-A76 (Pi 5); x86-64: the same commands
on this host under ``valgrind --tool=callgrind`` (``perf stat`` has no counters in this VM). Counts
are taken as differences of two runs that differ only in the amount of work, so start-up, imports and
model loading cancel:

- per inference, for every ``*.onnx`` the install put in /opt/digit-agent/models:
  (count(N) - count(0)) / N with tools/arm64/count_infer.py (``LoadedModel.run(1)``, batch 1)
- per daemon frame: the installed daemon replaying frames to a mosquitto on this host, QoS 0,
  as fast as it can, batch_max 1 (micro-batches would depend on thread timing), health every hour,
  pinned to one variant (``--variant int8``; left to itself it picks one by timing):
  (count(F2) - count(F1)) / (F2 - F1)

Writes ``<out>/arm64-insns.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from agent.config import parse_config
from tools.localbroker import free_port, start_mosquitto, stop_process

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[2]
GUEST_CONFIG = "/etc/digit-agent/config.toml"
GUEST_VENV = "/opt/digit-agent/venv"
Counter = Callable[[list[str], str], int]  # (argv, cwd) -> instructions of that process
# A fixed string-hash seed: with a random one, dict layouts (and instruction counts) differ run to run.
ENV = {**os.environ, "PYTHONHASHSEED": "0"}


def say(msg: str) -> None:
    print(f"\033[1m[arm64 {time.strftime('%H:%M:%S', time.gmtime())}]\033[0m {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], timeout: float, what: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{what} exited {p.returncode}: {(p.stdout + p.stderr)[-2000:]}")


def qemu_counter(root: Path, qemu: str, plugin: str, cpu: str, timeout: float) -> Counter:
    def count(argv: list[str], cwd: str) -> int:
        out = f"/tmp/insn-{time.monotonic_ns()}.txt"
        inner = f"cd {shlex.quote(cwd)} && exec {qemu} -cpu {cpu} -plugin {plugin},out={out} {shlex.join(argv)}"
        proc = subprocess.Popen(["chroot", str(root), "/bin/sh", "-c", inner], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=ENV)
        text, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} ({cpu}) exited {proc.returncode}: {text[-2000:]}")
        path = root / out.lstrip("/")
        lines = dict(line.split() for line in path.read_text().splitlines())
        path.unlink()
        return int(lines[str(proc.pid)])  # a forked child's line has another pid
    return count


def callgrind_counter(python: str, timeout: float) -> Counter:
    def count(argv: list[str], cwd: str) -> int:
        with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
            out = Path(tmp) / "cg.out"
            cmd = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--compress-strings=no",
                   f"--callgrind-out-file={out}", python, *argv[1:]]
            p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=ENV)
            if p.returncode != 0:
                raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}: {(p.stdout + p.stderr)[-2000:]}")
            for line in out.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        raise RuntimeError("callgrind wrote no summary")
    return count


def per_inference(count: Counter, python: str, model: str, golden: str, cwd: str, n: int) -> dict[str, Any]:
    base = count([python, "-m", "tools.arm64.count_infer", model, golden, "0"], cwd)
    c1 = count([python, "-m", "tools.arm64.count_infer", model, golden, str(n)], cwd)
    c2 = count([python, "-m", "tools.arm64.count_infer", model, golden, str(2 * n)], cwd)
    a, b = (c1 - base) / n, (c2 - c1) / n
    return {"per_inference": round((c2 - base) / (2 * n)), "first_half": round(a), "second_half": round(b),
            "spread": round(abs(a - b) / max(a, b), 5), "startup": base, "runs": [0, n, 2 * n]}


def per_frame(count: Counter, python: str, config: str, cwd: str, frames: tuple[int, int],
              golden: str, port: int, variant: str) -> dict[str, Any]:
    sets = {"device.id": "insn-bench", "mqtt.host": "127.0.0.1", "mqtt.port": port, "mqtt.username": "",
            "mqtt.password_file": "", "mqtt.qos": 0, "source.type": "replay", "source.path": golden,
            "source.rate_hz": 0, "source.loop": "true", "inference.deadline_ms": 500,
            "inference.batch_max": 1, "inference.variant": variant, "health.interval_s": 3600,
            "ota.enabled": "false"}
    counts = []
    for n in frames:
        argv = [python, "-m", "agent", "--log-level", "WARNING", "run", "--config", config]
        for k, v in {**sets, "source.limit": n}.items():
            argv += ["--set", f"{k}={v}"]
        counts.append(count(argv, cwd))
    f1, f2 = frames
    return {"per_frame": round((counts[1] - counts[0]) / (f2 - f1)), "frames": list(frames), "counts": counts}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    root: Path = args.root
    gcfg = parse_config((root / GUEST_CONFIG.lstrip("/")).read_text(encoding="utf-8"), GUEST_CONFIG)
    golden_g = str(gcfg.inference.golden)
    # The daemon picks a variant by timing; pinned here, so the count is of one known model file.
    shipped = next((m for m in sorted(p.name for p in (root / "opt/digit-agent/models").glob("*.onnx"))
                    if f".{args.variant}." in m or m.endswith(f"_{args.variant}.onnx")), "")
    models = sorted(p.name for p in (root / "opt/digit-agent/models").glob("*.onnx"))
    broker = start_mosquitto(work, port := free_port())
    res: dict[str, Any] = {"shipped_model": shipped, "models": models, "n": args.n, "frames": args.frames,
                           "targets": {}}
    try:
        targets: list[tuple[str, Counter, str, str, str, str]] = []
        for cpu in args.cpus:
            targets.append((f"aarch64 {cpu}", qemu_counter(root, args.qemu, args.plugin, cpu, args.timeout),
                            f"{GUEST_VENV}/bin/python", "/opt/digit-agent/models", GUEST_CONFIG, "/src"))
        if not args.no_x86:
            targets.append(("x86-64 (this host)", callgrind_counter(sys.executable, args.timeout * 4),
                            sys.executable, str(REPO / "models"), str(REPO / "config.toml"), str(REPO)))
        for name, count, python, mdir, config, cwd in targets:
            t: dict[str, Any] = {"models": {}}
            gold = golden_g if name.startswith("aarch64") else str(REPO / "models" / Path(golden_g).name)
            for m in models:
                say(f"{name}: {m}, {args.n} and {2 * args.n} inferences net of 0")
                t["models"][m] = per_inference(count, python, f"{mdir}/{m}", gold, cwd, args.n)
                say(f"{name}: {m}: {t['models'][m]['per_inference']:,} instructions per inference "
                    f"(halves differ by {t['models'][m]['spread']:.2%})")
            say(f"{name}: daemon, {args.frames[0]} and {args.frames[1]} frames")
            t["daemon"] = per_frame(count, python, config, cwd, args.frames, gold, port, args.variant)
            if shipped in t["models"]:
                model_n = t["models"][shipped]["per_inference"]
                t["daemon"]["ratio_to_model"] = round(t["daemon"]["per_frame"] / model_n, 3)
            say(f"{name}: daemon {t['daemon']['per_frame']:,} instructions per frame, "
                f"{t['daemon'].get('ratio_to_model', float('nan')):.2f}x the shipped model's inference")
            res["targets"][name] = t
    finally:
        stop_process(broker, 5)
    return res


def write_md(res: dict[str, Any], path: Path) -> None:
    names = list(res["targets"])
    lines = ["| instructions | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in res["models"]:
        lines.append(f"| per inference, {m} (batch 1) | "
                     + " | ".join(f"{res['targets'][n]['models'][m]['per_inference']:,}" for n in names) + " |")
    lines.append(f"| per daemon frame, {res['shipped_model']} (replay → result published, QoS 0) | "
                 + " | ".join(f"{res['targets'][n]['daemon']['per_frame']:,}" for n in names) + " |")
    lines.append("| daemon per frame ÷ model per inference | "
                 + " | ".join(f"{res['targets'][n]['daemon'].get('ratio_to_model', float('nan')):.2f}" for n in names)
                 + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm64.insn_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--qemu", required=True, help="guest path of the command that runs the dynamic qemu-aarch64")
    ap.add_argument("--plugin", required=True, help="guest path of insn_count.so")
    ap.add_argument("--cpus", nargs="*", default=["cortex-a72", "cortex-a76"], help="none: x86-64 only")
    ap.add_argument("--n", type=int, default=1000, help="inferences (and twice that) per count")
    ap.add_argument("--frames", type=int, nargs=2, default=(1000, 3000), help="daemon frame counts F1 F2")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--variant", default="int8", help="the model-card variant the daemon is pinned to")
    ap.add_argument("--no-x86", action="store_true", help="skip the callgrind counts on this host")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    args.frames = tuple(args.frames)
    with tempfile.TemporaryDirectory(prefix="insn-bench-") as tmp:
        res = measure(args, Path(tmp))
    res["host"] = {"machine": platform.machine(), "flags": sorted({f for f in ("avx2", "avx512_vnni") if f in
                   Path("/proc/cpuinfo").read_text()})}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "arm64-insns.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    write_md(res, args.out / "arm64-insns.md")
    say(f"wrote {args.out / 'arm64-insns.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
