"""README's run command: a broker, the daemon on the demo config, and a live subscriber.

Uses a local mosquitto when installed; otherwise an embedded Python broker (amqtt, installed into
the venv on demand, MQTT 3.1.1 only), and says which. Subscribes to the config's own topics
(<mqtt.topic_prefix>/<device.id>/+). Ctrl-C stops everything; so does the daemon exiting, which
ends the demo with exit code 1 and the daemon's last log lines.
"""

from __future__ import annotations

import argparse
import collections
import json
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
from tools.localbroker import free_port, mosquitto_exe, start_mosquitto, stop_process, wait_port

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent


def _start_broker(port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """(process, MQTT protocol, which broker) for a broker listening on 127.0.0.1:``port``."""
    exe = mosquitto_exe()
    if exe:
        return start_mosquitto(workdir, port), "5", f"mosquitto ({exe})"
    print("mosquitto is not installed: using the embedded Python broker (amqtt, MQTT 3.1.1)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "amqtt"], check=True)
    conf = workdir / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n")
    amqtt = Path(sys.executable).with_name("amqtt")
    return (subprocess.Popen([str(amqtt), "-c", str(conf)], stderr=subprocess.DEVNULL), "3.1.1",
            "embedded amqtt (mosquitto is not installed)")


class _Printer:
    """Prints each result as it arrives, with the true label of the replayed digit."""

    def __init__(self, labels: Optional[np.ndarray]) -> None:
        self.labels = labels
        self.count = 0
        self.correct = 0

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic.rsplit("/", 1)[-1]
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


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(REPO / "config.toml"))
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config key for the daemon (repeatable), as `digit-agent run --set`")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="digit-demo-") as tmp:
        port = free_port()
        broker, protocol, which = _start_broker(port, Path(tmp))
        try:
            overrides = [*args.set, 'mqtt.host="127.0.0.1"', f"mqtt.port={port}",
                         f'mqtt.protocol="{protocol}"', "health.interval_s=5"]
            try:
                cfg = load_config(args.config, overrides)  # what the daemon will read (same environment)
            except ConfigError as exc:
                print("\n".join(f"error: {line}" for line in exc.problems), file=sys.stderr)
                return 2
            if not wait_port(port, 15):
                raise SystemExit(f"broker did not start on port {port}")
            print(f"broker: {which} on 127.0.0.1:{port} (MQTT {protocol}); starting the daemon…", flush=True)
            cmd = [sys.executable, "-m", "agent", "run", "--config", args.config]
            for item in overrides:
                cmd += ["--set", item]
            daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            print(f"daemon pid {daemon.pid}", flush=True)
            log = _DaemonLog(daemon)
            try:
                return _subscribe(port, protocol, cfg, args, daemon, broker, log)
            finally:
                stop_process(daemon, 15)
                log.tail()  # let its last (shutdown) lines through before we exit
        finally:
            stop_process(broker, 10)


def _labels(cfg: Config) -> Optional[np.ndarray]:
    """True labels of the replayed frames, when the replay file carries them."""
    path = Path(cfg.source.path)
    if cfg.source.type != "replay" or path.suffix != ".npz" or not path.is_file():
        return None
    with np.load(path) as data:
        return np.asarray(data["labels"]) if "labels" in data.files else None


def _subscribe(port: int, protocol: str, cfg: Config, args: argparse.Namespace,
               daemon: subprocess.Popen[bytes], broker: subprocess.Popen[bytes], log: _DaemonLog) -> int:
    printer = _Printer(_labels(cfg))
    topics = cfg.topic("+")  # <topic_prefix>/<device.id>/+ : result, health, ...
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="digit-demo-viewer",
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    client.on_message = printer.on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topics)
    client.loop_start()
    print(f"subscribed to {topics}", flush=True)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    code = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            if daemon.poll() is not None:
                if daemon.returncode == 0:  # a finite replay (source.loop = false) ended
                    print("the daemon finished (exit code 0)", flush=True)
                    time.sleep(0.5)  # its last messages are already at the broker
                    break
                rc = daemon.returncode
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                print(f"the daemon {how}; its last log lines:", file=sys.stderr, flush=True)
                for line in log.tail():
                    print(f"  | {line}", file=sys.stderr, flush=True)
                code = 1
                break
            if broker.poll() is not None:
                print(f"the broker exited with code {broker.returncode}", file=sys.stderr, flush=True)
                code = 1
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    client.loop_stop()
    if printer.count:
        print(f"{printer.count} results, {printer.correct} correct", flush=True)
    return code or (0 if printer.count else 1)


if __name__ == "__main__":
    raise SystemExit(main())
