"""Fuzz the config loader ``agent.config.parse_config`` (tools/fuzz/config_model.py is the oracle).

    python -m tools.fuzz.fuzz_config -max_total_time=60 [corpus]

Inputs are either raw text or TOML of real sections and keys with adversarial values (+ ``--set``
overrides). Allowed: ConfigError with non-empty problems, or a Config whose every field is within
the schema's limits (checked independently). Anything else is a finding.
"""

from __future__ import annotations

from typing import Any

from tools.fuzz._harness import Provider, atheris, fuzz

with atheris.instrument_imports(include=["agent"]):
    from tools.fuzz.config_model import check_text, toml_from

STATS: dict[str, Any] = {"accepted": 0, "refused": 0, "structured": 0, "raw": 0}


def one(data: bytes) -> None:
    d = Provider(data)
    if d.number(0, 1):
        STATS["structured"] += 1
        text, overrides = toml_from(d)
    else:
        STATS["raw"] += 1
        overrides = [d.fdp.ConsumeUnicodeNoSurrogates(40)] if d.number(0, 3) == 0 else []
        text = d.fdp.ConsumeUnicodeNoSurrogates(d.fdp.remaining_bytes())
    STATS["accepted" if check_text(text, overrides) else "refused"] += 1


def seeds() -> list[bytes]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    texts = [p.read_bytes() for p in sorted(root.glob("**/*.toml")) if ".venv" not in p.parts][:8]
    return [t + b"\x00" for t in texts]


if __name__ == "__main__":
    fuzz("config", one, STATS, seeds)
