"""tools/demo.py (`make demo`) end to end: broker, daemon on the demo config, live subscriber.

It prints live results on the config's own topics and exits 0 after ``--seconds``; when the daemon
dies (a model that cannot load, or SIGKILL) it exits 1 at once with the daemon's last log lines
instead of waiting forever. Each run gets its own OTA state directory so the repo's ``state/`` is
left alone; every demo runs in its own session so a hang can be killed with its broker and daemon.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = re.compile(r"^seq +\d+  digit \d ", re.MULTILINE)

pytestmark = pytest.mark.integration


def _have_broker() -> bool:
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        return True
    return importlib.util.find_spec("amqtt") is not None


@pytest.fixture(autouse=True)
def _broker_available() -> None:
    if not _have_broker():  # the demo would pip-install amqtt: no package index in a test
        pytest.skip("neither mosquitto nor amqtt is installed")


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Exit code; a demo still running after ``timeout`` is killed (with its children) and fails."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"the demo hung for {timeout} s\n--- stdout\n{self.stdout()[-3000:]}\n"
                        f"--- stderr\n{self.stderr()[-3000:]}")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stdout(), re.MULTILINE)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} in the demo's output\n--- stdout\n{self.stdout()[-3000:]}\n"
                    f"--- stderr\n{self.stderr()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def start(*args: str) -> Demo:
        n = len(started)
        out, err = tmp_path / f"demo{n}.out", tmp_path / f"demo{n}.err"
        cmd = [sys.executable, "-m", "tools.demo", "--set", f'ota.state_dir="{tmp_path / f"state{n}"}"', *args]
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=o, stderr=e, start_new_session=True,
                                    env={k: v for k, v in os.environ.items() if not k.startswith("DIGIT_AGENT__")})
        d = Demo(proc, out, err)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def test_demo_prints_live_results_on_the_configured_topics_and_exits_0(demo: Callable[..., Demo]) -> None:
    """A topic prefix and device id other than the defaults: results arrive only if the subscriber's
    filter comes from the config (the old fixed ``digit-agent/+/+`` would see nothing)."""
    d = demo("--seconds", "12", "--set", 'mqtt.topic_prefix="lab/demo"', "--set", 'device.id="bench-7"')
    rc = d.wait(120)
    out = d.stdout()
    assert rc == 0, f"{out}\n--- stderr\n{d.stderr()[-3000:]}"
    assert re.search(r"^broker: (mosquitto \(\S+\)|embedded amqtt) on 127\.0\.0\.1:\d+ \(MQTT (5|3\.1\.1)\)",
                     out, re.MULTILINE), out
    assert "subscribed to lab/demo/bench-7/+" in out
    results = RESULT.findall(out)
    m = re.search(r"^(\d+) results, (\d+) correct$", out, re.MULTILINE)
    assert m and int(m.group(1)) == len(results) >= 20, out  # 20 digits/s replayed
    assert int(m.group(2)) >= 0.9 * len(results)  # labels of the replayed golden set: the model is right


def test_demo_exits_1_with_the_daemons_log_when_the_model_cannot_load(demo: Callable[..., Demo],
                                                                      tmp_path: Path) -> None:
    """No --seconds: without noticing the daemon's exit the demo would run until the timeout."""
    d = demo("--set", f'inference.model="{tmp_path / "missing.onnx"}"')
    rc = d.wait(90)
    err = d.stderr()
    assert rc == 1, err
    assert "the daemon exited with code 1; its last log lines:" in err
    tail = err[err.index("its last log lines:"):]
    assert "cannot start" in tail and "missing.onnx" in tail, tail
    assert not RESULT.search(d.stdout())


def test_demo_exits_1_promptly_when_the_daemon_is_killed(demo: Callable[..., Demo]) -> None:
    d = demo()  # runs until Ctrl-C
    pid = int(d.wait_for(r"^daemon pid (\d+)$", 60).group(1))
    d.wait_for(RESULT.pattern, 90)  # serving
    os.kill(pid, signal.SIGKILL)
    rc = d.wait(15)  # bounded: without noticing the exit the demo would run until its Ctrl-C
    assert rc == 1
    err = d.stderr()
    assert "the daemon was killed by signal 9; its last log lines:" in err, err[-3000:]
    assert re.search(r"^  \| ", err[err.index("its last log lines:"):], re.MULTILINE)  # the tail follows
