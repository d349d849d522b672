"""README's run command: a broker, the daemon on the demo config, and a live subscriber.

Uses a local mosquitto when installed; otherwise an embedded Python broker (amqtt, installed into
the venv on demand, MQTT 3.1.1 only), and says which. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_broker(port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        return subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL), "5"
    print("mosquitto is not installed: using the embedded Python broker (amqtt, MQTT 3.1.1)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "amqtt"], check=True)
    conf = workdir / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                    "    allow_anonymous: true\n")
    amqtt = Path(sys.executable).with_name("amqtt")
    return subprocess.Popen([str(amqtt), "-c", str(conf)], stderr=subprocess.DEVNULL), "3.1.1"


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"broker did not start on port {port}")


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


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(REPO / "config.toml"))
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until Ctrl-C)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="digit-demo-") as tmp:
        port = _free_port()
        broker, protocol = _start_broker(port, Path(tmp))
        _wait_port(port, 15)
        print(f"broker on 127.0.0.1:{port} (MQTT {protocol}); starting the daemon…", flush=True)
        daemon = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", args.config,
                                   "--set", f"mqtt.port={port}", "--set", f'mqtt.protocol="{protocol}"',
                                   "--set", "health.interval_s=5"])
        try:
            return _subscribe(port, protocol, args)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(15)
            broker.terminate()
            broker.wait(10)


def _subscribe(port: int, protocol: str, args: argparse.Namespace) -> int:
    labels = None
    golden = REPO / "models" / "golden.npz"
    if golden.exists():
        with np.load(golden) as data:
            labels = np.asarray(data["labels"])
    printer = _Printer(labels)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="digit-demo-viewer",
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    client.on_message = printer.on_message
    client.connect("127.0.0.1", port)
    client.subscribe("digit-agent/+/+")
    client.loop_start()
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    client.loop_stop()
    if printer.count:
        print(f"{printer.count} results, {printer.correct} correct", flush=True)
    return 0 if printer.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
