"""Fuzz oracles for the OTA parsers (agent/control/ota/manifest.py, transfer.py, keys.py).

Each ``check_*`` takes outside bytes and allows exactly one exception type (the parser's refusal);
anything else is a crash. What is accepted must also be self-consistent (sizes within the device's
limits, chunk lengths adding up to the file size, ranges inside the job, re-encoding round-trips).
Structured inputs are *signed* with a fixed test key so the fuzzer gets past the signature check.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.control.ota.keys import KeyRing, keyid_of, parse_public_key, raw_public
from agent.control.ota.manifest import (
    Limits,
    Manifest,
    ManifestError,
    Signature,
    encode_envelope,
    max_envelope_bytes,
    open_envelope,
    parse_envelope,
)
from agent.control.ota.transfer import Bitmap, ChunkError, check_chunk, encode_chunk, parse_chunk, parse_request

__all__ = [
    "LIMITS",
    "NOW",
    "OtaViolation",
    "check_bitmap",
    "check_chunk_bytes",
    "check_envelope_bytes",
    "check_key_bytes",
    "check_request_bytes",
    "check_signed_manifest",
    "mutate_doc",
    "signed",
    "valid_manifest_doc",
]

LIMITS = Limits(max_model_bytes=1 << 20, max_chunks=256, max_chunk_bytes=8192, family="digit-28x28")
NOW = 1_800_000_000
_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed: a test key, never trusted on a device
_KEYID = keyid_of(raw_public(_KEY.public_key()))
_RING = KeyRing.of(_KEY.public_key())


class OtaViolation(AssertionError):
    """A parser accepted something inconsistent."""


def valid_manifest_doc(size: int = 3000, chunk: int = 1024) -> dict[str, Any]:
    n = math.ceil(size / chunk)
    spec = {"name": "input", "shape": ["N", 1, 28, 28], "dtype": "float32"}
    return {
        "format": 1, "job": "job-1", "version": 2, "family": "digit-28x28", "keyid": _KEYID,
        "requires": {"onnxruntime": "1.17", "opset": 13, "input": spec,
                     "output": {"name": "probs", "shape": ["N", 10], "dtype": "float32"}},
        "file": {"size": size, "sha256": "0" * 64},
        "chunks": {"size": chunk, "sha256": [f"{i:064x}" for i in range(n)]},
        "gate": {"min_accuracy": 0.9, "max_p99_ms": 5.0},
        "created": NOW - 10, "expires": NOW + 3600, "card": {"version": 2},
    }


def signed(body: bytes) -> bytes:
    return encode_envelope(body, [Signature(_KEYID, _KEY.sign(body))])


def _consistent(m: Manifest) -> None:
    if not (1 <= m.size <= LIMITS.max_model_bytes and m.chunk_size <= LIMITS.max_chunk_bytes
            and 1 <= m.chunk_count <= LIMITS.max_chunks):
        raise OtaViolation(f"accepted out-of-limit manifest: size={m.size} chunk={m.chunk_size} n={m.chunk_count}")
    lens = [m.chunk_len(i) for i in range(m.chunk_count)]
    if sum(lens) != m.size or min(lens) < 1:
        raise OtaViolation(f"chunk lengths {lens[:4]}... do not add up to {m.size}")
    if not m.created < m.expires or m.expires <= NOW:
        raise OtaViolation("accepted a manifest outside its time window")


def check_envelope_bytes(data: bytes) -> bool:
    """Raw bytes as a manifest envelope (from the broker): ManifestError or a verified manifest."""
    try:
        parse_envelope(data, max_envelope_bytes(LIMITS.max_chunks))
        m = open_envelope(data, _RING, LIMITS, NOW)
    except ManifestError:
        return False
    _consistent(m)
    return True


def check_signed_manifest(body: bytes) -> bool:
    """Arbitrary manifest bytes, correctly signed: only field validation stands between them and use."""
    try:
        m = open_envelope(signed(body), _RING, LIMITS, NOW)
    except ManifestError:
        return False
    _consistent(m)
    # Every chunk of the announced length with the wrong hash is refused with ChunkError only.
    last = m.chunk_count - 1
    with contextlib.suppress(ChunkError):
        check_chunk(m, last, m.chunk_count, bytes(m.chunk_len(last)))
    return True


def mutate_doc(doc: dict[str, Any], path: list[str], value: Any) -> bytes:
    """``doc`` with the field at ``path`` replaced by ``value`` (or deleted if value is ...)."""
    d = json.loads(json.dumps(doc))
    node = d
    for p in path[:-1]:
        node = node.setdefault(p, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        if value is Ellipsis:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return json.dumps(d).encode()


def check_chunk_bytes(data: bytes, max_bytes: int) -> bool:
    try:
        index, count, payload = parse_chunk(data, max_bytes)
    except ChunkError:
        return False
    if len(payload) > max_bytes or encode_chunk(index, count, payload) != data:
        raise OtaViolation("accepted chunk does not re-encode to its input")
    return True


def check_request_bytes(data: bytes, count: int) -> bool:
    try:
        job, ranges = parse_request(data, count)
    except ChunkError:
        return False
    if not job or any(not 0 <= r.start < r.stop <= count for r in ranges):
        raise OtaViolation(f"accepted request with ranges outside [0, {count}): {ranges[:4]}")
    return True


def check_bitmap(data: bytes, count: int) -> None:
    bm = Bitmap.from_bytes(data, count)
    have = sum(1 for i in range(count) if i in bm)
    if have != bm.have or bm.complete != (have == count):
        raise OtaViolation(f"bitmap counts {bm.have} but holds {have} of {count}")
    missing = sum(r[1] - r[0] for r in bm.missing_ranges(limit=count + 1))
    if missing != count - have:
        raise OtaViolation(f"missing ranges cover {missing}, expected {count - have}")


def check_key_bytes(data: bytes) -> bool:
    """A trusted-key file's content: ValueError or a usable Ed25519 key."""
    try:
        key = parse_public_key(data)
    except ValueError:
        return False
    if len(raw_public(key)) != 32:
        raise OtaViolation("parsed key is not 32 raw bytes")
    return True
