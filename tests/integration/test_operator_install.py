"""The operator's commands installed from the wheel into a fresh virtual environment (no checkout on the
path): each command and subcommand answers --help, and every option there has a description."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.wheel import build_wheel
from tools.fleet.__main__ import parser as fleet_parser
from tools.ota.__main__ import parser as ota_parser

pytestmark = pytest.mark.integration

_COMMANDS = {"digit-agent-ota": ["keygen", "package", "push", "watch"],
             "digit-agent-fleet": ["status", "rollout", "retire", "simulate"]}


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("make", [ota_parser, fleet_parser])
def test_every_option_is_described(make: Callable[[], argparse.ArgumentParser]) -> None:
    top = make()
    for name, sp in [("", top), *_subparsers(top).items()]:
        fmt = sp._get_formatter()
        for action in sp._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{sp.prog} {name} {action.option_strings[0]} has no help text"
            if action.default not in (None, "", False, []):
                assert "%(default)s" in fmt._get_help_string(action), (sp.prog, action.option_strings[0])
        sp.format_help()  # every %-placeholder resolves


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from this interpreter's site-packages
    through a .pth line (appended after the venv's own site-packages, and without running that
    directory's .pth files, so the checkout's editable install is not what answers)."""
    work = tmp_path_factory.mktemp("operator")
    wheel = build_wheel(work)
    env_dir = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def _run(venv: Path, *argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                       cwd=venv, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_installed_commands_answer_help(venv: Path, command: str) -> None:
    top = _run(venv, command, "--help")
    assert top.startswith(f"usage: {command} ")
    for sub in _COMMANDS[command]:
        assert sub in top
        text = _run(venv, command, sub, "--help")
        assert text.startswith(f"usage: {command} {sub} ")
        assert "(default: " in text or sub == "keygen"
    where = _run(venv, "python", "-c", "import digit_agent_tools.ota as m; print(m.__file__)")
    assert where.startswith(str(venv))
