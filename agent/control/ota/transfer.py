"""Chunk transfer codecs and the received-chunk bitmap. Pure: bytes in, values out.

Chunk message (on ``<prefix>/ota/chunk/<job>``, shared by every device doing that job)::

    b"OTC1" | index: u32 BE | count: u32 BE | data

Request message (device → operator, ``<prefix>/<id>/ota/request``), JSON::

    {"job": "<job>", "missing": [[first, end_exclusive], ...], "have": <received count>}
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable
from typing import Any

from agent.control.ota.manifest import Manifest

__all__ = [
    "CHUNK_MAGIC",
    "MAX_REQUEST_RANGES",
    "Bitmap",
    "ChunkCorrupt",
    "ChunkError",
    "check_chunk",
    "encode_chunk",
    "encode_request",
    "parse_chunk",
    "parse_request",
]

CHUNK_MAGIC = b"OTC1"
_HEADER = struct.Struct(">4sII")
MAX_REQUEST_RANGES = 64
_JOB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ChunkError(ValueError):
    """A chunk (or request) that is refused; the transfer goes on without it."""


class ChunkCorrupt(ChunkError):
    """A chunk whose bytes do not match the signed hash (corrupted in transit or at the source)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"chunk {index} sha256 mismatch (corrupted in transit)")
        self.index = index


def encode_chunk(index: int, count: int, data: bytes) -> bytes:
    return _HEADER.pack(CHUNK_MAGIC, index, count) + data


def parse_chunk(payload: bytes, max_chunk_bytes: int) -> tuple[int, int, bytes]:
    """``(index, count, data)``; shape only — :func:`check_chunk` compares with the manifest."""
    if len(payload) < _HEADER.size:
        raise ChunkError(f"chunk too short ({len(payload)} bytes)")
    magic, index, count = _HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC:
        raise ChunkError("not a chunk (bad magic)")
    data = payload[_HEADER.size:]
    if len(data) > max_chunk_bytes:
        raise ChunkError(f"chunk of {len(data)} bytes exceeds {max_chunk_bytes}")
    return index, count, bytes(data)


def check_chunk(m: Manifest, index: int, count: int, data: bytes) -> None:
    """Reject anything that does not match the signed manifest exactly."""
    if count != m.chunk_count:
        raise ChunkError(f"chunk claims {count} chunks, manifest announces {m.chunk_count}")
    if index >= m.chunk_count:
        raise ChunkError(f"chunk {index} beyond the end ({m.chunk_count} chunks)")
    if len(data) != m.chunk_len(index):
        raise ChunkError(f"chunk {index} has {len(data)} bytes, expected {m.chunk_len(index)}")
    if hashlib.sha256(data).hexdigest() != m.chunk_sha256[index]:
        raise ChunkCorrupt(index)


class Bitmap:
    """One bit per chunk; serialised as ``count: u32 BE`` + the bits, little-endian within a byte."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._bits = bytearray((count + 7) // 8)
        self.have = 0

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.count and bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> bool:
        """Mark ``index``; ``True`` if it was new."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        if index in self:
            return False
        self._bits[index >> 3] |= 1 << (index & 7)
        self.have += 1
        return True

    @property
    def complete(self) -> bool:
        return self.have == self.count

    def missing_ranges(self, limit: int = MAX_REQUEST_RANGES) -> list[list[int]]:
        """Up to ``limit`` ``[first, end)`` ranges of missing chunks, in order."""
        out: list[list[int]] = []
        i = 0
        while i < self.count and len(out) < limit:
            if i in self:
                i += 1
                continue
            j = i
            while j < self.count and j not in self:
                j += 1
            out.append([i, j])
            i = j
        return out

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.count) + bytes(self._bits)

    @classmethod
    def from_bytes(cls, data: bytes, count: int) -> Bitmap:
        """Restore a saved bitmap; anything that does not fit ``count`` gives an empty one (start over)."""
        bm = cls(count)
        if len(data) != 4 + len(bm._bits) or struct.unpack_from(">I", data)[0] != count:
            return bm
        bm._bits[:] = data[4:]
        if count % 8:
            bm._bits[-1] &= (1 << (count % 8)) - 1  # stray high bits would overcount
        bm.have = sum(bin(b).count("1") for b in bm._bits)
        return bm


def encode_request(job: str, missing: Iterable[list[int]], have: int) -> bytes:
    return json.dumps({"job": job, "missing": list(missing), "have": have},
                      separators=(",", ":")).encode("utf-8")


def parse_request(payload: bytes, count: int) -> tuple[str, list[range]]:
    """Operator side: validate a device's request against the job's chunk ``count``."""
    try:
        doc: Any = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChunkError(f"request is not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("job"), str) or not _JOB.match(doc["job"]):
        raise ChunkError("request needs a job id")
    missing = doc.get("missing")
    if not isinstance(missing, list) or len(missing) > MAX_REQUEST_RANGES:
        raise ChunkError(f"request needs a list of at most {MAX_REQUEST_RANGES} ranges")
    out = []
    for r in missing:
        ok = (isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in r))
        if not ok or not 0 <= r[0] < r[1] <= count:
            raise ChunkError(f"bad range {r!r} for {count} chunks")
        out.append(range(r[0], r[1]))
    return doc["job"], out
