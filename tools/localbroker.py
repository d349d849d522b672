"""A throw-away mosquitto on a free loopback port, for the demo, the soak and the fleet simulation.

(The test suite's own fixture is ``tests/helpers/broker.py``; this one has no test dependencies.)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

__all__ = ["free_port", "mosquitto_exe", "own_group", "start_mosquitto", "stop_process", "wait_port"]

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_exe() -> Optional[str]:
    """The mosquitto binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("mosquitto", path=os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN_DIRS]))


def own_group() -> None:
    """``preexec_fn`` for a helper process: its own process group, so a terminal's Ctrl-C reaches only
    the parent, which then stops its children in order; and (Linux) SIGTERM when the parent dies,
    so a killed parent leaves nothing behind."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_port(port: int, timeout: float) -> bool:
    """True once something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start_mosquitto(workdir: Path, port: int, extra_conf: str = "", timeout: float = 10.0,
                    preexec_fn: Optional[Callable[[], None]] = None) -> subprocess.Popen[bytes]:
    """Anonymous, non-persistent mosquitto on 127.0.0.1:``port``, logging to ``workdir/mosquitto.log``;
    returns once it accepts connections (RuntimeError with the log's tail if it does not)."""
    exe = mosquitto_exe()
    if exe is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    log = workdir / "mosquitto.log"
    user = "user root\n" if os.geteuid() == 0 else ""  # as "mosquitto" it could not write the log here
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"persistence false\n{user}log_dest file {log}\nlistener {port} 127.0.0.1\n"
                    f"allow_anonymous true\n{extra_conf}")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=preexec_fn)
    if not wait_port(port, timeout):
        stop_process(proc, 2)
        tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
        raise RuntimeError(f"mosquitto did not start on port {port}: {tail}")
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
