"""tools/install.sh into a throw-away root: every path the unit and its companions name is laid out,
running it twice changes nothing and keeps the admin's config and secrets, uninstall keeps state
unless --purge.

The project is installed from a wheel built here, with ``--pip-args "--no-deps --no-index"`` so no
package index is needed (dependencies are the venv's business on a real device, not this test's).
systemd-sysusers, systemd-tmpfiles and ``systemctl enable`` really run, offline, on the root (--root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from tests.helpers.wheel import build_wheel
from tests.integration.test_systemd_unit import BINARY, UNIT, require_tools, unit_entries, values, verify

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "install.sh"
SYSTEMD = REPO / "systemd"

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _systemd_tools() -> None:
    """Skipped without the tools on a developer machine; a failure when CI is set (see require_tools)."""
    require_tools("systemd-sysusers", "systemd-tmpfiles", "systemctl", "systemd-analyze")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    for name in ("digit.int8.onnx", "digit.fp32.onnx", "golden.npz"):
        (d / name).write_bytes(b"stand-in " + name.encode())  # the installer only copies them
    (d / "digit.card.json").write_text(json.dumps({"variants": [{"name": "int8", "file": "digit.int8.onnx"},
                                                                {"name": "fp32", "file": "digit.fp32.onnx"}]}))
    return d


def install(root: Path, wheel: Path, models: Path, *extra: str) -> str:
    cmd = ["bash", str(SCRIPT), "install", "--prefix", str(root), "--from", str(wheel), "--models",
           str(models), "--python", sys.executable, "--pip-args", "--no-deps --no-index", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def uninstall(root: Path, *extra: str) -> str:
    proc = subprocess.run(["bash", str(SCRIPT), "uninstall", "--prefix", str(root), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mode, sha256 or link target) for everything but the venv's insides."""
    out: dict[str, tuple[int, str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("opt/digit-agent/venv/") or "__pycache__" in rel:
            continue
        st = p.lstat()
        if p.is_symlink():
            out[rel] = (st.st_mode, os.readlink(p))
        elif p.is_file():
            out[rel] = (st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[rel] = (st.st_mode, "")
    return out


def passwd_ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"user {name} not in {root}/etc/passwd")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path, models: Path) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("root")
    out = install(root, wheel, models)
    assert "would run: systemctl daemon-reload" in out  # not a live system: printed, not run
    yield root


def test_every_path_the_unit_names_exists(installed: Path) -> None:
    r = installed
    one = {k: v for _, k, v in unit_entries(UNIT.read_text())}
    for key in ("ExecStart", "ExecStartPre"):
        argv = one[key].split()
        assert os.access(r / argv[0].lstrip("/"), os.X_OK), argv[0]
        assert (r / argv[argv.index("--config") + 1].lstrip("/")).is_file()
    for source in (v.split(":", 1)[1] for v in values("LoadCredential")):
        assert (r / source.lstrip("/")).stat().st_mode & 0o777 == 0o600, source
    assert (r / "etc" / one["ConfigurationDirectory"]).is_dir()
    uid, gid = passwd_ids(r, one["User"])
    state = (r / "var/lib" / one["StateDirectory"]).stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (uid, gid, 0o750)
    assert f"{one['Group']}:x:{gid}:" in (r / "etc/group").read_text()
    assert (r / one["Documentation"].removeprefix("file:").lstrip("/")).is_file()
    link = r / "etc/systemd/system/multi-user.target.wants/digit-agent.service"
    assert os.readlink(link) == "/etc/systemd/system/digit-agent.service"


def test_companions_are_installed_and_their_paths_exist(installed: Path) -> None:
    r = installed
    for rel, src in [("etc/systemd/system/digit-agent.service", UNIT),
                     ("etc/sysusers.d/digit-agent.conf", SYSTEMD / "sysusers.d/digit-agent.conf"),
                     ("etc/tmpfiles.d/digit-agent.conf", SYSTEMD / "tmpfiles.d/digit-agent.conf"),
                     ("etc/udev/rules.d/99-digit-agent-serial.rules",
                      SYSTEMD / "udev/99-digit-agent-serial.rules")]:
        assert (r / rel).read_bytes() == src.read_bytes(), rel
    for line in (SYSTEMD / "tmpfiles.d/digit-agent.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            assert (r / line.split()[1].lstrip("/")).exists(), line
    assert 'GROUP="digit-agent"' in (SYSTEMD / "udev/99-digit-agent-serial.rules").read_text()


def test_installed_config_points_at_installed_files(installed: Path) -> None:
    r = installed
    cfg = load_config(r / "etc/digit-agent/config.toml", environ={})
    for path in (cfg.inference.model, cfg.inference.golden, cfg.ota.state_dir, cfg.ota.trusted_keys):
        assert Path(path).is_absolute() and (r / path.lstrip("/")).exists(), path
    card = json.loads((r / cfg.inference.model.lstrip("/")).read_text())  # the card lists the variants
    assert card["variants"] and all((r / "opt/digit-agent/models" / v["file"]).exists() for v in card["variants"])


def test_installed_venv_runs_and_unit_verifies_against_it(installed: Path, tmp_path: Path) -> None:
    venv_python = installed / "opt/digit-agent/venv/bin/python"
    proc = subprocess.run([str(venv_python), "-c", "import agent, agent.service; print(agent.__version__)"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    # The installed unit, with /opt pointed into the root: verify finds the real venv binary.
    text = (installed / "etc/systemd/system/digit-agent.service").read_text()
    prefixed = text.replace("/opt/digit-agent/", f"{installed}/opt/digit-agent/")
    assert f"={BINARY}" not in prefixed
    assert verify(prefixed, tmp_path, stub=False) == ""


def test_second_run_changes_nothing_and_keeps_admin_files(tmp_path: Path, wheel: Path,
                                                          models: Path) -> None:
    root = tmp_path / "root"
    install(root, wheel, models, "--no-start")
    conf = root / "etc/digit-agent/config.toml"
    conf.write_text(conf.read_text().replace('id = "digit-0001"', 'id = "kitchen-7"'))
    secret = root / "etc/digit-agent/credentials/mqtt-password"
    secret.write_text("s3cret\n")
    before = snapshot(root)
    out = install(root, wheel, models, "--no-start")
    assert "keeping existing" in out
    assert snapshot(root) == before
    assert 'id = "kitchen-7"' in conf.read_text() and secret.read_text() == "s3cret\n"

    out = uninstall(root)
    assert not (root / "opt/digit-agent").exists()
    assert not (root / "etc/systemd/system/digit-agent.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/digit-agent.service").exists()
    assert secret.read_text() == "s3cret\n" and conf.exists() and (root / "var/lib/digit-agent").is_dir()
    uninstall(root)  # again: nothing left to remove, still fine
    uninstall(root, "--purge")
    assert not (root / "etc/digit-agent").exists() and not (root / "var/lib/digit-agent").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    for args in (["--bogus"], ["install", "--purge"], ["install", "--from", str(tmp_path / "missing")]):
        proc = subprocess.run(["bash", str(SCRIPT), *args, "--prefix", str(tmp_path / "r")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("install.sh:"), (args, proc.stderr)


# -- start/restart on a live system (install.sh sourced, systemctl stubbed) ---------------------------

def start_service_calls(tmp_path: Path, state: str, start: bool) -> tuple[list[str], str]:
    """The systemctl calls ``start_service`` makes when the unit is in ``state``, and its output."""
    log = tmp_path / "systemctl.log"
    log.unlink(missing_ok=True)
    script = f"""
        source {shlex.quote(str(SCRIPT))}
        systemctl() {{ echo "$*" >> {shlex.quote(str(log))}; if [[ $1 == show ]]; then echo {state}; fi; }}
        UNIT=digit-agent.service START={int(start)}
        start_service
        echo done
    """
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.endswith("done\n"), proc.stdout + proc.stderr
    return log.read_text().splitlines(), proc.stdout


@pytest.mark.parametrize("start", [True, False])
@pytest.mark.parametrize("state", ["active", "activating", "reloading"])
def test_reinstall_restarts_a_running_service(tmp_path: Path, state: str, start: bool) -> None:
    """`enable --now` would leave the old process running on replaced code: a running unit is restarted
    (with or without --no-start), every time the installer runs."""
    calls, _ = start_service_calls(tmp_path, state, start)
    assert calls == ["show --property=ActiveState --value digit-agent.service",
                     "enable digit-agent.service", "try-restart digit-agent.service"]
    assert start_service_calls(tmp_path, state, start)[0] == calls  # again: the same


@pytest.mark.parametrize(("state", "start", "expected"), [
    ("inactive", True, ["enable digit-agent.service", "start digit-agent.service"]),
    ("inactive", False, ["enable digit-agent.service"]),
    ("failed", True, ["enable digit-agent.service", "reset-failed digit-agent.service",
                      "start digit-agent.service"]),
    ("failed", False, ["enable digit-agent.service", "reset-failed digit-agent.service"]),
])
def test_install_starts_a_stopped_service_unless_no_start(tmp_path: Path, state: str, start: bool,
                                                         expected: list[str]) -> None:
    calls, out = start_service_calls(tmp_path, state, start)
    assert calls[1:] == expected
    assert ("not started (--no-start)" in out) == (not start)


def test_sourcing_install_sh_runs_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "-c", f"source {shlex.quote(str(SCRIPT))} --prefix {tmp_path}/r; echo ok"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == "ok\n" and not (tmp_path / "r").exists(), proc.stdout + proc.stderr


# -- tools/bootstrap.sh: the dev setup fails when a system package is missing -------------------------

BOOTSTRAP = REPO / "tools" / "bootstrap.sh"
DEV_COMMANDS = ("mosquitto", "mosquitto_sub", "ffmpeg", "systemd-analyze", "npm", "openssl")


def bootstrap(tmp_path: Path, want: str, apt_rc: int, present: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run bootstrap.sh as root with apt, on a PATH of stubs only: ``present`` commands exist, apt-get
    exits ``apt_rc`` and installs nothing, the venv's python and pip are stubs that log their arguments.
    A command in /usr/sbin still counts as present (as in the script)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"

    def stub(path: Path, body: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\necho \"${{0##*/}} $*\" >> {shlex.quote(str(log))}\n{body}\n")
        path.chmod(0o755)

    (bin_ / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    stub(bin_ / "id", "echo 0")
    stub(bin_ / "apt-get", f"exit {apt_rc}")
    for name in present:
        stub(bin_ / name, "exit 0")
    venv = tmp_path / "venv"
    stub(venv / "bin" / "python", "exit 0")
    stub(venv / "bin" / "pip", "exit 0")
    proc = subprocess.run([shutil.which("bash") or "/bin/bash", str(BOOTSTRAP), want], capture_output=True,
                          text=True, timeout=60, env={"PATH": str(bin_), "VENV": str(venv)})
    return proc.returncode, proc.stderr, log.read_text() if log.exists() else ""


@pytest.mark.parametrize("apt_rc", [100, 0])
def test_bootstrap_dev_fails_when_packages_cannot_be_installed(tmp_path: Path, apt_rc: int) -> None:
    """apt-get failing, or succeeding without providing the commands: exit 1, packages named, no venv work."""
    rc, err, calls = bootstrap(tmp_path, "dev", apt_rc)
    assert rc == 1, err
    line = next(x for x in err.splitlines() if "error: the dev setup needs system packages" in x)
    assert "npm" in line and "systemd" in line and "openssl" in line
    assert ("apt-get install -y -qq" in calls) == (apt_rc == 0)  # after a failed update: not tried
    assert "apt-get update" in calls and "pip " not in calls


def test_bootstrap_dev_goes_on_when_everything_is_there(tmp_path: Path) -> None:
    rc, err, calls = bootstrap(tmp_path, "dev", 100, present=DEV_COMMANDS)
    assert rc == 0 and "ready" in err, err
    assert "apt-get" not in calls
    assert "pip install --disable-pip-version-check -e .[dev,train,bench,operator,cluster]" in calls


def test_bootstrap_runtime_stays_lenient(tmp_path: Path) -> None:
    rc, err, calls = bootstrap(tmp_path, "runtime", 100)  # mosquitto_sub is never in /usr/sbin
    assert rc == 0 and "continuing without" in err and "ready" in err, err
    assert "pip install --disable-pip-version-check -e ." in calls
