"""The unit file: `systemd-analyze verify` prints nothing, `security` exposure <= 1.5, directives hold.

`systemd-analyze verify` exits 0 on many mistakes (unknown keys, bad values are "ignoring" warnings),
so its *output* must be empty. It also checks that ExecStart= binaries exist; the venv binary is not
installed here, so a copy of the unit with /opt/digit-agent/venv/bin/digit-agent pointed at a stub
executable is verified (`--root=` would need a whole unit tree with sysinit.target under the root).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "digit-agent.service"
BINARY = "/opt/digit-agent/venv/bin/digit-agent"
MAX_EXPOSURE = 1.5

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                       reason="systemd-analyze is not installed (CI installs package 'systemd')"),
]


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    section, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


def values(key: str, text: str = "") -> list[str]:
    return [v for _, k, v in unit_entries(text or UNIT.read_text()) if k == key]


def verify(unit_text: str, tmp_path: Path, stub: bool = True) -> str:
    """Output of `systemd-analyze verify` on ``unit_text``, with the venv binary stubbed if ``stub``."""
    if stub:
        exe = tmp_path / "bin" / "digit-agent"
        exe.parent.mkdir(exist_ok=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
        unit_text = unit_text.replace(f"={BINARY} ", f"={exe} ")
    unit = tmp_path / "digit-agent.service"
    unit.write_text(unit_text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    return (proc.stdout + proc.stderr).strip()


def test_verify_prints_nothing(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == ""


@pytest.mark.parametrize("mistake", ["WatchdogSecs=30", "RestrictAddressFamilies=AF_BOGUS",
                                     "ProtectSystem=sometimes"])
def test_verify_does_report_mistakes(tmp_path: Path, mistake: str) -> None:
    """The check above can fail: an injected mistake makes verify talk (while it still exits 0)."""
    text = UNIT.read_text().replace("NoNewPrivileges=yes", f"NoNewPrivileges=yes\n{mistake}", 1)
    assert verify(text, tmp_path) != ""


def exposure(unit: Path) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, timeout=120, cwd=unit.parent)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, f"no exposure line in:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return float(m.group(1))


def test_security_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    shutil.copy(UNIT, unit)
    level = exposure(unit)
    print(f"systemd-analyze security exposure: {level}")
    assert level <= MAX_EXPOSURE


def test_security_check_can_fail(tmp_path: Path) -> None:
    """Without the hardening block the same parser sees a high exposure."""
    text = UNIT.read_text()
    unit = tmp_path / UNIT.name
    unit.write_text(text[: text.index("NoNewPrivileges=")] + "\n[Install]\nWantedBy=multi-user.target\n")
    assert exposure(unit) > MAX_EXPOSURE


def test_directives_the_daemon_relies_on() -> None:
    one = {k: v for _, k, v in unit_entries(UNIT.read_text())}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert int(one["WatchdogSec"]) >= 10 and one["WatchdogSignal"] == "SIGABRT"
    assert one["Restart"] == "on-failure" and "2" in one["RestartPreventExitStatus"].split()
    assert int(one["StartLimitBurst"]) >= 1 and int(one["StartLimitIntervalSec"]) > 0
    assert one["User"] == one["Group"] == "digit-agent"
    assert one["ExecStart"] == f"{BINARY} run --config /etc/digit-agent/config.toml"
    assert one["ExecStartPre"] == f"{BINARY} check-config --config /etc/digit-agent/config.toml"
    assert "PYTHONFAULTHANDLER=1" in one["Environment"].split()
    assert one["StateDirectory"] == one["ConfigurationDirectory"] == "digit-agent"
    assert one["CapabilityBoundingSet"] == "" and one["NoNewPrivileges"] == "yes"
    assert one["DevicePolicy"] == "closed"
    assert {v.split()[0] for v in values("DeviceAllow")} == {"char-ttyS", "char-ttyAMA", "char-ttyUSB",
                                                             "char-ttyACM"}
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    creds = dict(v.split(":", 1) for v in values("LoadCredential"))
    assert creds == {"mqtt-password": "/etc/digit-agent/credentials/mqtt-password",
                     "mqtt-tls.key": "/etc/digit-agent/credentials/mqtt-tls.key"}


def test_example_config_is_valid_and_fits_the_unit() -> None:
    cfg = load_config(REPO / "systemd" / "config.example.toml", environ={})
    assert cfg.ota.state_dir == "/var/lib/digit-agent"  # StateDirectory=: the only writable place
    assert cfg.ota.trusted_keys == "/etc/digit-agent/keys"
    assert Path(cfg.inference.model).parent == Path("/opt/digit-agent/models")
    assert Path(cfg.inference.golden).parent == Path("/opt/digit-agent/models")
    assert Path(cfg.mqtt.password_file).name in values("LoadCredential")[0]
