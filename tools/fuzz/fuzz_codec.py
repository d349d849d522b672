"""Fuzz the serial frame codec (agent/source/codec.py) with the oracle of tools/fuzz/codec_model.py.

    python -m tools.fuzz.fuzz_codec -runs=1000000 [corpus]

Half the inputs describe frames + corruptions (checked: no corrupt or duplicate frame delivered,
<= 2 frames lost per corrupted byte, counters exact); the other half are raw bytes (checked: no
exception, only CRC-valid segments delivered). Also COBS round trips of the raw bytes.
"""

from __future__ import annotations

from typing import Any

from tools.fuzz._harness import Provider, atheris, fuzz

with atheris.instrument_imports(include=["agent"]):
    from agent.source.codec import cobs_decode, cobs_encode
    from tools.fuzz.codec_model import RandomDraw, Violation, check_corrupted, check_raw

STATS: dict[str, Any] = {"frames_sent": 0, "frames_delivered": 0, "frames_lost": 0, "corrupted_bytes": 0,
                         "corrupted_inputs": 0, "worst_lost_per_corrupted_byte": 0.0, "raw_inputs": 0,
                         "raw_frames_delivered": 0, "violations": 0}


def one(data: bytes) -> None:
    d = Provider(data)
    if d.number(0, 1):
        o = check_corrupted(d)
        STATS["frames_sent"] += o.sent
        STATS["frames_delivered"] += o.delivered
        STATS["frames_lost"] += o.lost
        STATS["corrupted_bytes"] += o.corrupted_bytes
        STATS["corrupted_inputs"] += o.corrupted_bytes > 0
        STATS["worst_lost_per_corrupted_byte"] = max(STATS["worst_lost_per_corrupted_byte"], o.worst_ratio)
        return
    max_side, pieces = d.number(1, 64), RandomDraw(d.number(0, 2**32 - 1))
    raw = d.rest()
    STATS["raw_inputs"] += 1
    STATS["raw_frames_delivered"] += check_raw(raw, max_side, pieces)
    if cobs_decode(cobs_encode(raw)) != raw:
        raise Violation("COBS round trip changed the data")


def seeds() -> list[bytes]:
    """Valid streams in raw mode (the suffix picks raw, max_side 64), so mutation starts from frames."""
    import numpy as np

    from agent.source.codec import encode_frame

    out = []
    for k, (h, w) in enumerate(((28, 28), (3, 4), (1, 1), (16, 40))):
        px = np.arange(h * w, dtype=np.uint32).reshape(h, w).astype(np.uint8) * (k % 2)
        out.append(b"".join(encode_frame(k + j, px) for j in range(3)) + bytes(4) + bytes([63, 0]))
    return out


if __name__ == "__main__":
    fuzz("codec", one, STATS, seeds)
