"""A wheel of this tree, built from a copy so no build/ or egg-info lands in the work tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["build_wheel"]

REPO = Path(__file__).resolve().parents[2]


def build_wheel(work: Path) -> Path:
    """Build into ``work`` (offline: no build isolation, no dependencies) and return the wheel's path."""
    src = work / "src"
    for pkg in ("agent", "tools"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    readme = REPO / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "digit-agent\n")
    out = work / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, timeout=300, capture_output=True)
    return next(out.glob("digit_agent-*.whl"))
