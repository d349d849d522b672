"""pyproject's lower bounds are the versions `make test-lowest` installs (tools/lowest-deps.txt); the wheel
carries the operator's commands while the device's install pulls no operator dependency."""

from __future__ import annotations

import configparser
import email.parser
import re
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.wheel import build_wheel

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
_REQ = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9][0-9.]*)\s*(;.*)?$")


def _parse(lines: list[str], op: str) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = _REQ.match(line)
        assert m and m.group(2) == op, f"expected 'name {op} version[; marker]': {line!r}"
        parts = tuple(int(p) for p in m.group(3).split("."))
        while len(parts) < 3:
            parts += (0,)
        out[m.group(1).lower()] = (parts, (m.group(4) or "").replace(" ", "").replace("'", '"'))
    return out


def test_every_runtime_floor_is_the_tested_version() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = _parse(deps, ">=")
    pinned = _parse((REPO / "tools" / "lowest-deps.txt").read_text().splitlines(), "==")
    assert floors == pinned


# --- the wheel: the device's install and the operator's extra ----------------------------------------

_OPERATOR_COMMANDS = {"digit-agent-ota": "digit_agent_tools.ota.__main__:main",
                      "digit-agent-fleet": "digit_agent_tools.fleet.__main__:main"}


def _name(req: str) -> str:
    return re.split(r"[<>=;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    return zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("build")))


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    path = next(n for n in wheel.namelist() if n.endswith(".dist-info/" + name))
    return wheel.read(path).decode()


def test_wheel_has_the_operator_commands(wheel: zipfile.ZipFile) -> None:
    ep = configparser.ConfigParser()
    ep.read_string(_dist_info(wheel, "entry_points.txt"))
    scripts = dict(ep["console_scripts"])
    assert scripts == {"digit-agent": "agent.cli:main", **_OPERATOR_COMMANDS}
    names = set(wheel.namelist())
    for target in _OPERATOR_COMMANDS.values():
        assert target.split(":")[0].replace(".", "/") + ".py" in names


def test_wheel_holds_every_agent_package(wheel: zipfile.ZipFile) -> None:
    """pyproject lists the packages by hand (tools/ is renamed): a new agent package must be added there."""
    on_disk = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "agent").rglob("__init__.py")
               if "__pycache__" not in p.parts}
    in_wheel = {n.rsplit("/", 1)[0] for n in wheel.namelist() if n.endswith("/__init__.py")}
    assert on_disk <= in_wheel
    assert not any(n.startswith(("tools/", "tests/")) for n in wheel.namelist())


def test_device_install_has_no_operator_dependencies(wheel: zipfile.ZipFile) -> None:
    meta = email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))
    requires = meta.get_all("Requires-Dist") or []
    runtime = {_name(r) for r in requires if "extra ==" not in r}
    operator = {_name(r) for r in requires if 'extra == "operator"' in r}
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert operator == {_name(r) for r in declared["operator"]} and operator
    assert not runtime & operator, "the device would install the operator's tools' dependencies"
    assert not runtime & {_name(r) for r in declared["bench"] + declared["dev"]}
