"""Fuzz the OTA parsers: manifest envelopes (raw and correctly signed), chunk and request messages,
the saved chunk bitmap and trusted-key files (tools/fuzz/ota_model.py is the oracle). These are the
payloads of every MQTT topic the device subscribes to (``ota/manifest``, group manifests, chunks).

    python -m tools.fuzz.fuzz_ota -max_total_time=60 [corpus]
"""

from __future__ import annotations

import json
from typing import Any

from tools.fuzz._harness import Provider, atheris, fuzz

with atheris.instrument_imports(include=["agent"]):
    from tools.fuzz import ota_model as om

STATS: dict[str, Any] = {k: 0 for k in ("envelope", "signed_raw", "signed_mutated", "chunk", "request",
                                        "bitmap", "key", "accepted")}

_PATHS = [["format"], ["job"], ["version"], ["family"], ["keyid"], ["requires", "opset"],
          ["requires", "onnxruntime"], ["requires", "input", "shape"], ["requires", "output", "dtype"],
          ["file", "size"], ["file", "sha256"], ["chunks", "size"], ["chunks", "sha256"],
          ["gate", "min_accuracy"], ["gate", "max_p99_ms"], ["created"], ["expires"], ["card"],
          ["keys_add"], ["keys_revoke"], ["requires"], ["file"]]


def _value(d: Provider) -> Any:
    k = d.number(0, 9)
    if k < 8:
        return [None, True, -1, 0, 2**63, 1e308, float("nan"), ...][k]
    if k == 8:
        return d.number(-(2**33), 2**33)
    try:
        return json.loads(d.blob(d.number(0, 40)).decode("utf-8", "replace"))
    except ValueError:
        return "x" * d.number(0, 70)


def one(data: bytes) -> None:
    d = Provider(data)
    mode = d.number(0, 6)
    if mode == 0:
        STATS["envelope"] += 1
        ok = om.check_envelope_bytes(d.rest())
    elif mode == 1:
        STATS["signed_raw"] += 1
        ok = om.check_signed_manifest(d.rest())
    elif mode == 2:
        STATS["signed_mutated"] += 1
        doc = om.valid_manifest_doc(d.number(1, 1 << 20), d.number(256, 8192))
        for _ in range(d.number(1, 3)):
            doc = json.loads(om.mutate_doc(doc, _PATHS[d.number(0, len(_PATHS) - 1)], _value(d)))
        ok = om.check_signed_manifest(json.dumps(doc).encode())
    elif mode == 3:
        STATS["chunk"] += 1
        limit = d.number(0, 64)
        ok = om.check_chunk_bytes(d.rest(), limit)
    elif mode == 4:
        STATS["request"] += 1
        count = d.number(0, 300)
        ok = om.check_request_bytes(d.rest(), count)
    elif mode == 5:
        STATS["bitmap"] += 1
        count = d.number(0, 300)
        om.check_bitmap(d.rest(), count)
        ok = True
    else:
        STATS["key"] += 1
        ok = om.check_key_bytes(d.rest())
    STATS["accepted"] += ok


def seeds() -> list[bytes]:
    """A valid signed envelope, its manifest, a chunk, a request (the last bytes pick the mode)."""
    body = json.dumps(om.valid_manifest_doc()).encode()
    from agent.control.ota.transfer import encode_chunk, encode_request

    return [om.signed(body) + b"\x00", body + b"\x01", encode_chunk(1, 3, b"abc") + b"\x40\x03",
            encode_request("job-1", [[0, 2], [5, 9]], 3) + b"\xff\xff\x04"]


if __name__ == "__main__":
    fuzz("ota", one, STATS, seeds)
