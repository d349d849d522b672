"""tools/demo.py (`make demo`) end to end: broker, daemon on the demo config, live subscriber.

It prints live results on the config's own topics and exits 0 after ``--seconds``; when the daemon
dies (a model that cannot load, or SIGKILL) it exits 1 at once with the daemon's last log lines
instead of waiting forever. Ctrl-C — in a terminal, under make — stops the daemon first (the
subscriber prints the retained ``stopped``), then the broker, and make exits 0. Without mosquitto
(hidden in a mount namespace) it runs on its embedded broker. Each run gets its own OTA state
directory so the repo's ``state/`` is left alone; its broker and daemon die with it (PDEATHSIG).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = re.compile(r"^seq +\d+  digit \d ", re.MULTILINE)
MISLEADING = ("connection lost", "undelivered", "broker stopped", "broker exited", "replay finished",
              "Traceback", "Interrupt", "Error")

pytestmark = pytest.mark.integration


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

    def start(*args: str, prefix: Sequence[str] = ()) -> Demo:
        n = len(started)
        out, err = tmp_path / f"demo{n}.out", tmp_path / f"demo{n}.err"
        cmd = [*prefix, sys.executable, "-m", "tools.demo", "--set", f'ota.state_dir="{tmp_path / f"state{n}"}"',
               *args]
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
    assert re.search(r"^broker: (mosquitto \(\S+\)|embedded Python broker, \S+ \([^)]*\)) "
                     r"on 127\.0\.0\.1:\d+ \(MQTT (5|3\.1\.1)\)", out, re.MULTILINE), out
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


def _hide_mosquitto(tmp_path: Path) -> list[str]:
    """A command prefix that runs its command in a mount namespace where mosquitto does not exist
    (an empty, non-executable file bound over the binary): the demo then finds no mosquitto at all,
    as on a machine without it. Skips where unprivileged mount namespaces are not allowed."""
    from tools.localbroker import mosquitto_exe

    exe = mosquitto_exe()
    if exe is None:
        return []  # not installed here: nothing to hide
    empty = tmp_path / "no-mosquitto"
    empty.write_bytes(b"")
    script = f'mount --bind "{empty}" "{os.path.realpath(exe)}" && exec "$@"'
    for flags in (["-rm"], ["-m"]):
        cmd = ["unshare", *flags, "sh", "-c", script, "hide"]
        try:
            ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return cmd
    pytest.skip("cannot hide mosquitto: no mount namespace (unshare -rm / -m) allowed here")


def test_demo_without_mosquitto_runs_on_the_embedded_broker_and_stops_cleanly_on_sigint(
        demo: Callable[..., Demo], tmp_path: Path) -> None:
    """SIGINT to the demo's process group, as a terminal's Ctrl-C: the broker and the daemon are in
    their own groups, so the demo alone gets it and stops them in order."""
    d = demo(prefix=_hide_mosquitto(tmp_path))
    d.wait_for(r"^broker: embedded Python broker, tools/minibroker\.py \(mosquitto is not installed\) "
               r"on 127\.0\.0\.1:\d+ \(MQTT 3\.1\.1\)", 60)
    d.wait_for(r"^status: online$", 90)
    for _ in range(3):  # a few live results, not only the first
        d.wait_for(r"^seq +3  digit \d ", 30)
    os.killpg(d.proc.pid, signal.SIGINT)
    rc = d.wait(60)
    out, err = d.stdout(), d.stderr()
    assert rc == 0, f"{out[-2000:]}\n--- stderr\n{err[-3000:]}"
    after = out[out.index("stopping the daemon"):]
    assert re.search(r"^status: stopped$", after, re.MULTILINE), out[-2000:]  # not "offline"
    assert re.search(r"^\d+ results, \d+ correct$", out, re.MULTILINE), out[-2000:]
    assert "minibroker: listening on 127.0.0.1:" in err  # the broker's own log is shown
    for word in MISLEADING:
        assert word not in err, f"{word!r} in the demo's log:\n{err[-3000:]}"


def _run_in_terminal(cmd: list[str], cwd: Path, env: dict[str, str], ready: str, timeout: float) -> tuple[int, str]:
    """Run ``cmd`` as a terminal's foreground job (a pty as controlling terminal), type Ctrl-C once
    ``ready`` has appeared on the screen; (exit code, screen text)."""
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=controlling_tty)
    os.close(slave)
    screen, typed = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process on the terminal has closed it
                    chunk = b""
                if not chunk:
                    break
                screen += chunk
            if not typed and re.search(ready, screen.decode("utf-8", "replace"), re.MULTILINE):
                os.write(master, b"\x03")  # the terminal turns it into SIGINT for its foreground group
                typed = True
        else:
            pytest.fail(f"no exit within {timeout} s:\n{screen.decode('utf-8', 'replace')[-3000:]}")
        return proc.wait(30), screen.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


def test_ctrl_c_under_make_stops_the_daemon_first_and_make_exits_0(tmp_path: Path) -> None:
    """As a user runs it: make's recipe starts the demo in a terminal; Ctrl-C goes to the terminal's
    foreground process group. Without the demo taking that group, make and the broker would get it
    too: the broker would die first (subscribers see ``offline``), make would report an interrupt."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    state = tmp_path / "state"
    (tmp_path / "Makefile").write_text(f"demo:\n\t{sys.executable} -m tools.demo --set 'ota.state_dir=\"{state}\"'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGIT_AGENT__")}
    rc, screen = _run_in_terminal(["make", "--no-print-directory", "-f", str(tmp_path / "Makefile"), "demo"],
                                  REPO, env, r"^seq +3  digit \d ", 120)
    assert rc == 0, screen[-3000:]
    assert "^C" in screen  # the terminal echoed the keystroke: it was a real Ctrl-C
    after = screen[screen.index("^C"):]
    assert "stopping the daemon" in after and re.search(r"^status: stopped\r?$", after, re.MULTILINE), after
    assert "status: offline" not in screen
    for word in MISLEADING:
        assert word not in after, f"{word!r} after Ctrl-C:\n{after}"
