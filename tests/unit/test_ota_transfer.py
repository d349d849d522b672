"""Chunk codec, per-chunk verification, the persisted bitmap, requests, and the A/B store on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.ota import store as store_mod
from agent.control.ota.manifest import Limits, parse_manifest
from agent.control.ota.store import OtaState, SlotInfo, Store, atomic_write
from agent.control.ota.transfer import (
    Bitmap,
    ChunkError,
    check_chunk,
    encode_chunk,
    encode_request,
    parse_chunk,
    parse_request,
)
from tests.helpers.ota import disk_full, model_bytes
from tools.ota.package import PackageSpec, build_manifest

MODEL = model_bytes("good", tag=2)
LIMITS = Limits(4 << 20, 4096, 64 << 10, "digit-28x28")
M = parse_manifest(build_manifest(MODEL, PackageSpec(job="j1", version=2, chunk_size=4096), "0" * 16), LIMITS)


def _chunk(i: int) -> bytes:
    return MODEL[i * M.chunk_size:(i + 1) * M.chunk_size]


def test_chunk_roundtrip_and_check() -> None:
    for i in range(M.chunk_count):
        idx, count, data = parse_chunk(encode_chunk(i, M.chunk_count, _chunk(i)), 64 << 10)
        check_chunk(M, idx, count, data)
    assert b"".join(_chunk(i) for i in range(M.chunk_count)) == MODEL


@pytest.mark.parametrize("index, count, data, reason", [
    (0, M.chunk_count, b"x" + _chunk(0)[1:], "sha256 mismatch"),
    (M.chunk_count, M.chunk_count, _chunk(0), "beyond the end"),
    (0, M.chunk_count + 1, _chunk(0), "announces"),
    (0, M.chunk_count, _chunk(0)[:-1], "expected"),
])
def test_bad_chunks_refused(index: int, count: int, data: bytes, reason: str) -> None:
    with pytest.raises(ChunkError, match=reason):
        check_chunk(M, index, count, data)


def test_parse_chunk_limits() -> None:
    with pytest.raises(ChunkError, match="too short"):
        parse_chunk(b"OTC1", 100)
    with pytest.raises(ChunkError, match="magic"):
        parse_chunk(b"XXXX" + bytes(8), 100)
    with pytest.raises(ChunkError, match="exceeds"):
        parse_chunk(encode_chunk(0, 1, bytes(101)), 100)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_chunk_parser(data: bytes) -> None:
    try:
        idx, count, body = parse_chunk(data, 64)
        check_chunk(M, idx, count, body)
    except ChunkError:
        pass


@given(st.sets(st.integers(0, 99)))
def test_bitmap_roundtrip_and_missing(have: set[int]) -> None:
    bm = Bitmap(100)
    for i in have:
        assert bm.add(i)
        assert not bm.add(i)
    back = Bitmap.from_bytes(bm.to_bytes(), 100)
    assert back.have == len(have) and all((i in back) == (i in have) for i in range(100))
    missing = {i for a, b in back.missing_ranges(1000) for i in range(a, b)}
    assert missing == set(range(100)) - have
    assert back.complete == (len(have) == 100)


def test_bitmap_from_wrong_bytes_starts_over() -> None:
    bm = Bitmap(10)
    bm.add(3)
    assert Bitmap.from_bytes(bm.to_bytes(), 11).have == 0
    assert Bitmap.from_bytes(b"junk", 10).have == 0
    stray = Bitmap(3).to_bytes()[:4] + b"\xff"  # bits past the end must not count
    assert Bitmap.from_bytes(stray, 3).have == 3


def test_request_roundtrip_and_validation() -> None:
    job, ranges = parse_request(encode_request("j1", [[0, 2], [5, 6]], 3), 10)
    assert job == "j1" and [list(r) for r in ranges] == [[0, 1], [5]]
    for bad in (b"nope", b'{"job": "j1", "missing": [[3, 2]]}', b'{"job": "j1", "missing": [[0, 11]]}',
                b'{"missing": []}', json.dumps({"job": "j", "missing": [[0, 1]] * 65}).encode()):
        with pytest.raises(ChunkError):
            parse_request(bad, 10)


def test_atomic_write_keeps_old_file_on_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "f"
    atomic_write(p, b"old")

    monkeypatch.setattr(store_mod, "_write_all", disk_full(store_mod._write_all))
    with pytest.raises(OSError, match="No space"):
        atomic_write(p, b"new")
    assert p.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f"]


def test_store_state_slots_and_downloads(tmp_path: Path) -> None:
    st_ = Store(str(tmp_path / "state"))
    state = st_.read_state()
    assert state.committed is None and st_.free_slot(state) == "a"
    state.committed = SlotInfo("a", 3, "j0", "ab" * 32)
    for i in range(300):
        state.remember(f"job{i}")
    st_.write_state(state)
    back = st_.read_state()
    assert back.committed == state.committed and st_.free_slot(back) == "b"
    assert len(back.seen_jobs) == 256 and back.seen_jobs[-1] == "job299"

    src = tmp_path / "m.onnx"
    src.write_bytes(MODEL)
    st_.install("b", src, {"version": 4})
    assert st_.slot_path("b").read_bytes() == MODEL
    assert json.loads(st_.card_path("b").read_text())["version"] == 4

    st_.begin_download("j1", b"envelope", len(MODEL))
    st_.write_chunk("j1", 4096, _chunk(1))
    bm = Bitmap(M.chunk_count)
    bm.add(1)
    st_.sync_download("j1", bm.to_bytes())
    job, env, bits = st_.pending_download()  # type: ignore[misc]
    assert (job, env, Bitmap.from_bytes(bits, M.chunk_count).have) == ("j1", b"envelope", 1)
    st_.begin_download("j1", b"envelope", len(MODEL))  # resume keeps the bytes
    assert st_.download_path("j1", "part").read_bytes()[4096:8192] == _chunk(1)
    st_.begin_download("j2", b"e2", 10)  # a new job drops the old one
    assert sorted(p.name for p in st_.downloads.iterdir()) == ["j2.env", "j2.part"]


def test_corrupt_state_file_falls_back_to_empty(tmp_path: Path) -> None:
    st_ = Store(str(tmp_path))
    (tmp_path / "state.json").write_text("{garbage")
    assert st_.read_state() == OtaState()
    assert hashlib.sha256(MODEL).hexdigest() == M.sha256
