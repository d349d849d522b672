"""Where the daemon's time goes: a py-spy sampling profile of a running process, summarised.

py-spy is optional (``pip install py-spy`` into .venv); without it the profile is skipped and says so.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = ["py_spy", "spy", "summarise_raw"]


def py_spy() -> Optional[str]:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def summarise_raw(text: str, top: int = 15) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks ``thread;frame;frame count``) → shares in %.

    ``threads``: samples per thread; ``self``: innermost frames; ``inclusive``: frames anywhere on
    the stack. Shares are of all samples (py-spy samples threads that are not idle).
    """
    total = 0
    threads: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0].split(":")[-1].strip()] += n
        leaf[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n

    def pct(c: collections.Counter[str]) -> list[list[Any]]:
        return [[k, round(v * 100 / total, 1)] for k, v in c.most_common(top)] if total else []

    return {"samples": total, "threads": pct(threads), "self": pct(leaf), "inclusive": pct(incl)}


def spy(pid: int, seconds: float, out: Path, rate: int = 250) -> dict[str, Any]:
    """Sample ``pid`` for ``seconds`` (all threads, native frames off); raw stacks kept in ``out``."""
    exe = py_spy()
    if exe is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    cmd = [exe, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate), "-f", "raw",
           "-o", str(out), "--threads", "--nonblocking"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if r.returncode != 0 or not out.exists():
        return {"skipped": f"py-spy failed: {(r.stderr or r.stdout)[-500:]}"}
    return {**summarise_raw(out.read_text(errors="replace")), "raw": out.name, "seconds": seconds}
