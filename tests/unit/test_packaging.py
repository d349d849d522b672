"""pyproject's lower bounds are the versions `make test-lowest` installs (tools/lowest-deps.txt)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

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
