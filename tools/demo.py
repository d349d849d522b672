"""README's run command: a broker, the daemon on the demo config, and a live subscriber.

Uses a local mosquitto when installed; otherwise the embedded Python broker of tools/minibroker.py
(MQTT 3.1.1, nothing to install), and says which. Subscribes to the config's own topics
(<mqtt.topic_prefix>/<device.id>/+) and prints results, health and status.

Ctrl-C (or SIGTERM, or --seconds) stops the daemon first, while still subscribed, so the retained
status `stopped` is printed; then the broker; exit code 0. The daemon or the broker ending by
itself ends the demo with exit code 1 and the daemon's last log lines (0 when a finite replay,
source.loop = false, ended).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
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

from agent.config import Config, ConfigError, load_config
from tools.localbroker import free_port, mosquitto_exe, own_group, start_mosquitto, stop_process, wait_port

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent


def _start_broker(port: int, workdir: Path, kind: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """(process, MQTT protocol, which broker) for a broker listening on 127.0.0.1:``port``."""
    exe = mosquitto_exe() if kind != "embedded" else None
    if exe:
        return start_mosquitto(workdir, port, preexec_fn=own_group), "5", f"mosquitto ({exe})"
    if kind == "mosquitto":
        raise SystemExit("error: mosquitto is not installed (apt-get install mosquitto, or --broker embedded)")
    why = "--broker embedded" if kind == "embedded" else "mosquitto is not installed"
    # Its log (errors included) goes to our stderr; it is in its own process group like the daemon.
    proc = subprocess.Popen([sys.executable, "-m", "tools.minibroker", "--port", str(port)],
                            cwd=REPO, preexec_fn=own_group)
    return proc, "3.1.1", f"embedded Python broker, tools/minibroker.py ({why})"


class _Printer:
    """Prints each result as it arrives, with the true label of the replayed digit."""

    def __init__(self, labels: Optional[np.ndarray]) -> None:
        self.labels = labels
        self.count = 0
        self.correct = 0
        self.status = ""
        self._cond = threading.Condition()

    def wait_status(self, status: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.status == status, timeout)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic.rsplit("/", 1)[-1]
        if topic == "status":  # online / stopped / offline, plain text
            with self._cond:
                self.status = msg.payload.decode("utf-8", "replace")
                self._cond.notify_all()
            print(f"status: {self.status}", flush=True)
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            print(f"{msg.topic}: {msg.payload!r}", flush=True)
            return
        if topic != "result":
            if topic == "health":
                inf = doc.get("inference") or {}
                print(f"  health: {inf.get('inferences')} inferences, p99 {inf.get('p99_us')} µs, "
                      f"rss {doc.get('rss_bytes', 0) / 1e6:.1f} MB, cpu {doc.get('cpu_percent')} %", flush=True)
            return
        self.count += 1
        mark = ""
        if self.labels is not None:
            truth = int(self.labels[doc["frame_seq"] % len(self.labels)])
            self.correct += truth == doc["digit"]
            mark = "✓" if truth == doc["digit"] else f"✗ (was {truth})"
        print(f"seq {doc['seq']:>6}  digit {doc['digit']}  {doc['confidence'] * 100:5.1f} %  "
              f"{doc['latency_us']:>5} µs  model v{doc['model_version']}  {mark}", flush=True)


class _DaemonLog:
    """Forwards the daemon's output to our stderr as it comes and keeps the last lines."""

    def __init__(self, proc: subprocess.Popen[bytes], keep: int = 20) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._proc = proc
        self._thread = threading.Thread(target=self._pump, name="daemon-log", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            print(line, file=sys.stderr, flush=True)

    def tail(self) -> list[str]:
        self._thread.join(2.0)  # the pipe reaches EOF once the daemon has exited
        return list(self.lines)


class _Foreground:
    """Run from a terminal (under make), become the terminal's foreground process group for the
    demo's lifetime: Ctrl-C then reaches the demo alone — not make above it, which would report an
    interrupted recipe, nor the broker and daemon below it, which the demo stops itself, daemon
    first. Restored on exit; a no-op without a terminal."""

    def __enter__(self) -> _Foreground:
        self.fd: Optional[int] = None
        try:
            fd = sys.stdin.fileno()
            if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
                return self
        except (OSError, ValueError):
            return self
        self.old = os.getpgrp()
        if os.getpid() != self.old:
            os.setpgid(0, 0)
        self._set(fd, os.getpgrp())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self._set(self.fd, self.old)

    @staticmethod
    def _set(fd: int, pgrp: int) -> None:
        # A process outside the foreground group that sets it gets SIGTTOU unless blocked.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(fd, pgrp)
        except OSError:
            pass  # the terminal went away
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM/SIGHUP: the same orderly stop as Ctrl-C


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config.toml"))
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")
    ap.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                    help="auto: mosquitto when installed, else the embedded Python broker (tools/minibroker.py)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config key for the daemon (repeatable), as digit-agent run --set")
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    with tempfile.TemporaryDirectory(prefix="digit-demo-") as tmp, _Foreground():
        try:
            return _run(args, Path(tmp))
        except KeyboardInterrupt:  # before the daemon ran: nothing to report
            print("interrupted", file=sys.stderr, flush=True)
            return 0


def _run(args: argparse.Namespace, tmp: Path) -> int:
    port = free_port()
    broker, protocol, which = _start_broker(port, tmp, args.broker)
    try:
        overrides = [*args.set, 'mqtt.host="127.0.0.1"', f"mqtt.port={port}",
                     f'mqtt.protocol="{protocol}"', "health.interval_s=5"]
        try:
            cfg = load_config(args.config, overrides)  # what the daemon will read (same environment)
        except ConfigError as exc:
            print("\n".join(f"error: {line}" for line in exc.problems), file=sys.stderr)
            return 2
        if not wait_port(port, 15):
            print(f"error: the broker did not start on port {port}", file=sys.stderr)
            return 1
        print(f"broker: {which} on 127.0.0.1:{port} (MQTT {protocol}); starting the daemon…", flush=True)
        cmd = [sys.executable, "-m", "agent", "run", "--config", args.config]
        for item in overrides:
            cmd += ["--set", item]
        daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=own_group)
        print(f"daemon pid {daemon.pid}", flush=True)
        log = _DaemonLog(daemon)
        try:
            return _subscribe(port, protocol, cfg, args, daemon, broker, log)
        finally:
            _stopping()
            stop_process(daemon, 15)  # no-op when _subscribe stopped it already
            log.tail()
    finally:
        _stopping()
        stop_process(broker, 10)


def _stopping() -> None:
    """From here on the demo is stopping (bounded: SIGKILL after 15 s): a second Ctrl-C must not cut
    that short and leave the daemon or the broker behind."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _labels(cfg: Config) -> Optional[np.ndarray]:
    """True labels of the replayed frames, when the replay file carries them."""
    path = Path(cfg.source.path)
    if cfg.source.type != "replay" or path.suffix != ".npz" or not path.is_file():
        return None
    with np.load(path) as data:
        return np.asarray(data["labels"]) if "labels" in data.files else None


def _subscribe(port: int, protocol: str, cfg: Config, args: argparse.Namespace,
               daemon: subprocess.Popen[bytes], broker: subprocess.Popen[bytes], log: _DaemonLog) -> int:
    """Print what the daemon publishes until ``--seconds``, Ctrl-C or a process exits; on the first
    two, stop the daemon while still subscribed, so its retained ``stopped`` is seen."""
    printer = _Printer(_labels(cfg))
    topics = cfg.topic("+")  # <topic_prefix>/<device.id>/+ : result, health, status, ...
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="digit-demo-viewer",
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    client.on_message = printer.on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topics)
    client.loop_start()
    try:
        print(f"subscribed to {topics} (Ctrl-C stops the daemon, then the broker)", flush=True)
        code = _watch(args, daemon, broker, log)
        if code is None:  # our stop, not theirs
            _stopping()
            print("stopping the daemon…", flush=True)
            stop_process(daemon, 15)
            log.tail()
            code = 0 if daemon.returncode == 0 else 1
            if code:
                print(f"the daemon exited with code {daemon.returncode} when stopped", file=sys.stderr, flush=True)
            printer.wait_status("stopped", 3.0)
    finally:
        client.disconnect()
        client.loop_stop()
    if printer.count:
        print(f"{printer.count} results, {printer.correct} correct", flush=True)
    return code or (0 if printer.count else 1)


def _watch(args: argparse.Namespace, daemon: subprocess.Popen[bytes], broker: subprocess.Popen[bytes],
           log: _DaemonLog) -> Optional[int]:
    """None once ``--seconds`` passed or on Ctrl-C; the demo's exit code when the daemon or the
    broker ended by itself."""
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            if daemon.poll() is not None:
                if daemon.returncode == 0:  # a finite replay (source.loop = false) ended
                    print("the daemon finished (exit code 0)", flush=True)
                    return 0
                rc = daemon.returncode
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                print(f"the daemon {how}; its last log lines:", file=sys.stderr, flush=True)
                for line in log.tail():
                    print(f"  | {line}", file=sys.stderr, flush=True)
                return 1
            if broker.poll() is not None:
                print(f"the broker stopped unexpectedly (exit code {broker.returncode})", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    return None


if __name__ == "__main__":
    raise SystemExit(main())
