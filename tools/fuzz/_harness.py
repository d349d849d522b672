"""Shared atheris plumbing: libFuzzer set-up, input counting and periodic stats files.

A target is ``python -m tools.fuzz.<name> [libFuzzer flags] [corpus dir]``. libFuzzer ends the
process with C ``exit()`` (no Python atexit), so the per-target figures (inputs run, frames
checked, ...) are written to ``$FUZZ_STATS_DIR/<name>.json`` every ``_EVERY`` inputs instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Provider", "fuzz"]

_EVERY = 10_000

try:
    import atheris
except ImportError:  # pragma: no cover - reported by the runner
    atheris = None


class Provider:
    """Adapts atheris' FuzzedDataProvider to the ``Draw`` protocol of :mod:`tools.fuzz.codec_model`."""

    def __init__(self, data: bytes) -> None:
        self.fdp = atheris.FuzzedDataProvider(data)

    def number(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def blob(self, n: int) -> bytes:
        return bytes(self.fdp.ConsumeBytes(n))

    def rest(self) -> bytes:
        return bytes(self.fdp.ConsumeBytes(self.fdp.remaining_bytes()))


def _record(stats: dict[str, Any], exc: AssertionError, data: bytes) -> None:
    """Count a finding by its first words (values stripped), keeping the first example input."""
    text = str(exc) or type(exc).__name__
    kind = getattr(exc, "kind", None) or " ".join(w for w in text.split()[:8] if not any(c.isdigit() for c in w))
    kind = f"{type(exc).__name__}: {kind}"
    entry = stats["findings"].setdefault(kind, {"count": 0, "example": text[:300], "input_hex": data[:200].hex()})
    entry["count"] += 1


def fuzz(name: str, one: Callable[[bytes], None], stats: dict[str, Any],
         seeds: Callable[[], list[bytes]] | None = None) -> None:
    """Run ``one`` under libFuzzer; ``stats`` (mutated by ``one``) is saved with the input count.
    ``--write-seeds DIR`` (first arguments) writes the target's seed inputs into DIR and exits."""
    if sys.argv[1:2] == ["--write-seeds"]:
        corpus = Path(sys.argv[2])
        corpus.mkdir(parents=True, exist_ok=True)
        for k, seed in enumerate(seeds() if seeds else []):
            (corpus / f"seed-{k}").write_bytes(seed)
        return
    if atheris is None:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris")
    out_dir = os.environ.get("FUZZ_STATS_DIR")
    out = Path(out_dir) / f"{name}.json" if out_dir else None
    stats["inputs"] = 0
    stats["findings"] = {}
    # FUZZ_KEEP_GOING=1: a broken property (AssertionError) is recorded and the run goes on, so one
    # known finding does not hide others; any other exception still stops the run as a crash.
    keep_going = os.environ.get("FUZZ_KEEP_GOING") == "1"
    t0 = time.monotonic()

    def save() -> None:
        if out is not None:
            stats["seconds"] = round(time.monotonic() - t0, 1)
            out.write_text(json.dumps(stats, indent=1, sort_keys=True))

    def counted(data: bytes) -> None:
        stats["inputs"] += 1
        if stats["inputs"] % _EVERY == 0:
            save()
        try:
            one(data)
        except AssertionError as exc:
            if not keep_going:
                stats["failed_at_input"] = stats["inputs"]
                save()
                raise
            _record(stats, exc, data)
        except BaseException:
            stats["failed_at_input"] = stats["inputs"]
            save()  # the figures up to the finding; libFuzzer then writes the crash-* artifact
            raise

    save()
    atheris.Setup(sys.argv, counted)
    atheris.Fuzz()
