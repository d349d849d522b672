"""The daemon inside the arm64 chroot replays frames to a mosquitto on this host; every result is checked.

    python -m tools.arm64.replay_check --root DIR --cpu cortex-a72 [--venv /opt/digit-agent/venv] [--frames 1000]

Runs ``digit-agent run`` as installed by ``tools/install.sh`` (its ``/etc/digit-agent/config.toml``),
with the source switched to a replay of the installed golden set and the broker to a throw-away
mosquitto here. Each result's digit must equal its frame's label, or, for a frame the model itself gets
wrong, the digit this host's onnxruntime computes from one of the same model files (the daemon picks
a variant by timing, so any of them): the answers must be the same, not only the accuracy.
Exit 0 when all ``frames`` results arrived and passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import parse_config
from agent.inference import LoadedModel, load_golden
from agent.inference.variants import read_model_set
from agent.preprocess import Preprocessor
from tools.localbroker import free_port, start_mosquitto, stop_process

__all__ = ["expected_digits", "main", "verify"]

GUEST_CONFIG = "/etc/digit-agent/config.toml"  # what tools/install.sh installs
# Emulation runs the daemon ~10-100x slower than a Pi: a 5 ms deadline would flag every frame. The
# results must still be right; timing is not what this run checks.
DEADLINE_MS = 500.0


def say(msg: str) -> None:
    print(f"\033[1m[arm64 {time.strftime('%H:%M:%S', time.gmtime())}]\033[0m {msg}", file=sys.stderr, flush=True)


def expected_digits(model_path: Path, golden_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, this host's prediction per variant and golden image) through the daemon's own
    preprocessing; ``model_path`` is a model-set card or one .onnx, as ``inference.model`` takes."""
    golden = load_golden(golden_path)
    models = read_model_set(model_path)
    preds = np.empty((len(models.variants), len(golden.images)), dtype=np.int64)
    for j, v in enumerate(models.variants):
        model = LoadedModel.load(v.path, batch_max=1, card=v.card)
        pre = Preprocessor.from_card(model.card)
        x, y = model.buffers(1)
        for k, img in enumerate(golden.images):
            pre(img, x[0])
            model.run(1)
            preds[j, k] = int(np.argmax(y[0]))
    return np.asarray(golden.labels, dtype=np.int64), preds


def verify(results: list[dict[str, Any]], frames: int, labels: np.ndarray, host_preds: np.ndarray) -> list[str]:
    """Problems with the results (empty list: all ``frames`` arrived once each and every digit is right).
    ``host_preds`` is (variants, golden images): a digit the label does not match must be one of them."""
    problems: list[str] = []
    if len(results) != frames:
        problems.append(f"{len(results)} results for {frames} frames")
    seqs = sorted(int(r["frame_seq"]) for r in results)
    if len(set(seqs)) != len(seqs):
        problems.append("duplicate frame_seq values")
    wrong = 0
    for r in results:
        i = int(r["frame_seq"]) % len(labels)
        digit = int(r["digit"])
        if digit != labels[i] and digit not in host_preds[:, i]:
            wrong += 1
            if wrong <= 5:
                problems.append(f"frame_seq {r['frame_seq']}: digit {digit}, label {labels[i]}, "
                                f"this host's variants say {sorted(set(host_preds[:, i].tolist()))}")
    if wrong:
        problems.append(f"{wrong} of {len(results)} results wrong")
    return problems


class _Results:
    def __init__(self, port: int, topic: str) -> None:
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"arm64-check-{os.getpid()}")
        self.c.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self._lock:
            self.items.append(doc)

    def count(self) -> int:
        with self._lock:
            return len(self.items)

    def close(self) -> list[dict[str, Any]]:
        self.c.loop_stop()
        self.c.disconnect()
        with self._lock:
            return list(self.items)


def run(args: argparse.Namespace, work: Path) -> list[str]:
    root: Path = args.root
    cfg = parse_config((root / GUEST_CONFIG.lstrip("/")).read_text(encoding="utf-8"), GUEST_CONFIG)
    model_g, golden_g = str(cfg.inference.model), str(cfg.inference.golden)
    labels, host_preds = expected_digits(root / model_g.lstrip("/"), root / golden_g.lstrip("/"))
    broker = start_mosquitto(work, port := free_port())
    device = f"arm64-{args.cpu}"
    sub = _Results(port, f"digit-agent/{device}/result")
    sets = {"device.id": device, "mqtt.host": "127.0.0.1", "mqtt.port": port, "mqtt.username": "",
            "mqtt.password_file": "", "mqtt.qos": 1, "source.type": "replay", "source.path": golden_g,
            "source.rate_hz": 0, "source.loop": "true", "source.limit": args.frames,
            "inference.deadline_ms": DEADLINE_MS, "health.interval_s": 5}
    cmd = ["chroot", str(root), f"{args.venv}/bin/digit-agent", "--log-level", "WARNING", "run",
           "--config", GUEST_CONFIG]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": args.cpu}
    log = (work / "daemon.log").open("w+b")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        last = -1
        while proc.poll() is None:
            if time.monotonic() - t0 > args.timeout:
                proc.kill()
                proc.wait(10)
                return [f"daemon still running after {args.timeout:.0f} s"]
            n = sub.count()
            if n != last and (n == 0 or n - last >= 250):
                say(f"{args.cpu} {args.venv}: {n}/{args.frames} results ({time.monotonic() - t0:.0f} s)")
                last = n
            time.sleep(2)
        deadline = time.monotonic() + 30  # QoS 1: the daemon flushed before exiting; allow delivery
        while sub.count() < args.frames and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        results = sub.close()
        stop_process(broker, 5)
    if proc.returncode != 0:
        log.seek(0)
        return [f"daemon exited {proc.returncode}: {log.read().decode(errors='replace')[-2000:]}"]
    problems = verify(results, args.frames, labels, host_preds)
    right = sum(int(r["digit"]) == labels[int(r["frame_seq"]) % len(labels)] for r in results)
    say(f"{args.cpu} {args.venv}: {len(results)}/{args.frames} results in {time.monotonic() - t0:.0f} s, "
        f"{right} equal to the label{', the rest to a variant run here' if right < len(results) else ''}: "
        f"{'OK' if not problems else 'FAILED'}")
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm64.replay_check", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="the arm64 root (mounted by tools/arm64/chroot.sh)")
    ap.add_argument("--cpu", required=True, help="QEMU_CPU: cortex-a72 (Pi 4) or cortex-a76 (Pi 5)")
    ap.add_argument("--venv", default="/opt/digit-agent/venv", help="guest virtual environment")
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds the daemon may take")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="arm64-replay-") as tmp:
        problems = run(args, Path(tmp))
    for p in problems:
        say(f"error: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
