"""docs/examples for the camera: the drop-in's overrides load through the real config loader, and the
camera unit, tmpfiles entry, drop-in and docs/camera.md agree on the FIFO and the geometry."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"
FIFO = "/run/digit-agent-camera/frames.fifo"


def _dropin_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (EXAMPLES / "camera-dropin.conf").read_text().splitlines():
        if line.startswith("Environment="):
            for item in shlex.split(line[len("Environment="):]):  # systemd's quoting is shell-like
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dropin_overrides_load_with_the_example_config() -> None:
    cfg = load_config(REPO / "systemd" / "config.example.toml", environ=_dropin_env())
    s = cfg.source
    assert (s.type, s.path, s.width, s.height, s.pixel_format) == ("pipe", FIFO, 640, 480, "yuv420")
    assert s.roi == (240, 160, 160, 160) and s.max_fps == 5.0


def test_camera_unit_writes_what_the_agent_reads() -> None:
    unit = (EXAMPLES / "digit-agent-camera.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    args = shlex.split(exec_start[len("ExecStart="):])
    opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--") or a in ("-o", "-t")}
    env = _dropin_env()
    assert opt["-o"] == env["DIGIT_AGENT__SOURCE__PATH"] == FIFO
    assert (opt["--width"], opt["--height"]) == (env["DIGIT_AGENT__SOURCE__WIDTH"],
                                                 env["DIGIT_AGENT__SOURCE__HEIGHT"])
    assert opt["--codec"] == env["DIGIT_AGENT__SOURCE__PIXEL_FORMAT"] == "yuv420"
    assert int(opt["--width"]) % 64 == 0  # no ISP row padding (docs/camera.md)
    assert f"ConditionPathExists={FIFO}" in unit
    tmpfiles = (EXAMPLES / "digit-agent-camera.tmpfiles.conf").read_text()
    entry = next(line.split() for line in tmpfiles.splitlines() if line.startswith("p "))
    assert entry[1:5] == [FIFO, "0620", "digit-agent", "video"]
    assert "SupplementaryGroups=video" in unit


def test_camera_doc_links_and_names_exist() -> None:
    doc = (REPO / "docs" / "camera.md").read_text()
    for link in re.findall(r"\]\((examples/[^)]+)\)", doc):
        assert (REPO / "docs" / link).exists(), link
    for needle in ("rpicam-vid -t 0", "--codec yuv420", "-f v4l2", "-pix_fmt gray", "NV12", "yuyv422",
                   "partial_frames", "frames_skipped", "NotifyAccess=all"):
        assert needle in doc, needle


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_parse_with_systemd_analyze(tmp_path: Path) -> None:
    """The real unit plus the drop-in, and the camera unit: only the absent executables may be reported."""
    (tmp_path / "digit-agent.service.d").mkdir()
    shutil.copy(REPO / "systemd" / "digit-agent.service", tmp_path)
    shutil.copy(EXAMPLES / "digit-agent-camera.service", tmp_path)
    shutil.copy(EXAMPLES / "camera-dropin.conf", tmp_path / "digit-agent.service.d" / "camera.conf")
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "digit-agent.service"),
                          str(tmp_path / "digit-agent-camera.service")], capture_output=True, text=True,
                         timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert not problems, problems
