"""startup_model: committed slot, pending-on-test with the attempt counter, corrupt slots, no state."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.config.schema import Config
from agent.control.ota import startup_model
from agent.control.ota.store import SlotInfo, Store


def _cfg(tmp: Path, **ota: object) -> Config:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in ota.items())
    return parse_config(f'[inference]\nmodel = "{tmp}/shipped.onnx"\n[ota]\nstate_dir = "{tmp}/state"\n{extra}')


def _slot(store: Store, slot: str, data: bytes, version: int, job: str) -> SlotInfo:
    store.slot_path(slot).write_bytes(data)
    return SlotInfo(slot, version, job, hashlib.sha256(data).hexdigest())


def test_nothing_committed_serves_shipped(tmp_path: Path) -> None:
    path, info = startup_model(_cfg(tmp_path))
    assert path == f"{tmp_path}/shipped.onnx" and info["source"] == "shipped"


def test_committed_slot_served_and_corrupt_slot_falls_back(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    store = Store(cfg.ota.state_dir)
    state = store.read_state()
    state.committed = _slot(store, "a", b"model-v2", 2, "j2")
    store.write_state(state)
    path, info = startup_model(cfg)
    assert path == str(store.slot_path("a")) and info == {"source": "committed", "version": 2, "slot": "a"}
    store.slot_path("a").write_bytes(b"bit rot")
    path, info = startup_model(cfg)
    assert path == cfg.inference.model and "corrupt" in info["note"]


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_pending_gets_max_attempts_starts_then_rolls_back(tmp_path: Path, max_attempts: int) -> None:
    cfg = _cfg(tmp_path, max_attempts=max_attempts)
    store = Store(cfg.ota.state_dir)
    state = store.read_state()
    state.committed = _slot(store, "a", b"model-v2", 2, "j2")
    state.pending = _slot(store, "b", b"model-v3", 3, "j3")
    state.pending.attempts = 1  # activation itself was the first start
    store.write_state(state)
    for attempt in range(2, max_attempts + 1):
        path, info = startup_model(cfg)
        assert path == str(store.slot_path("b")) and info["attempt"] == attempt
    path, info = startup_model(cfg)  # one start too many: back to the committed slot
    assert path == str(store.slot_path("a")) and info["source"] == "committed"
    after = store.read_state()
    assert after.pending is None and after.committed is not None and after.committed.version == 2
    assert after.status["state"] == "rolled_back" and "restarted" in after.status["reason"]
    assert "j3" in after.seen_jobs


def test_pending_with_corrupt_slot_rolls_back_to_shipped(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    store = Store(cfg.ota.state_dir)
    state = store.read_state()
    state.pending = _slot(store, "a", b"model-v3", 3, "j3")
    state.pending.attempts = 1
    store.write_state(state)
    store.slot_path("a").write_bytes(b"torn")
    path, info = startup_model(cfg)
    assert path == cfg.inference.model and info["source"] == "shipped"
    assert "missing or corrupt" in store.read_state().status["reason"]


def test_unusable_state_dir_serves_shipped(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where a directory should be")
    path, info = startup_model(_cfg(tmp_path))
    assert path.endswith("shipped.onnx") and "unusable" in info["note"]


def _set_slot(store: Store, slot: str, files: dict[str, bytes], version: int, job: str) -> SlotInfo:
    import json
    for name, data in files.items():
        store.variant_path(slot, name).write_bytes(data)
    store.card_path(slot).write_text(json.dumps({"version": version, "variants": [
        {"name": n, "file": store.variant_path(slot, n).name} for n in files]}))
    shas = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    return SlotInfo(slot, version, job, hashlib.sha256(b"".join(files.values())).hexdigest(), variants=shas)


def _one_set(tmp: Path, which: str) -> tuple[Config, Store]:
    """A state dir whose ``which`` ("committed" in slot a, or "pending" in slot b) is an int8+fp32 set."""
    cfg = _cfg(tmp)
    store = Store(cfg.ota.state_dir)
    state = store.read_state()
    slot, version = ("a", 2) if which == "committed" else ("b", 3)
    files = {"int8": f"v{version}-int8".encode(), "fp32": f"v{version}-fp32".encode()}
    setattr(state, which, _set_slot(store, slot, files, version, f"j{version}"))
    store.write_state(state)
    return cfg, store


def test_multi_variant_slot_is_served_by_its_card_and_needs_every_variant_intact(tmp_path: Path) -> None:
    cfg, store = _one_set(tmp_path, "committed")
    path, info = startup_model(cfg)
    assert path == str(store.card_path("a")) and info["source"] == "committed"
    assert store.read_state().committed.holds(hashlib.sha256(b"v2-fp32").hexdigest())  # type: ignore[union-attr]
    store.variant_path("a", "fp32").write_bytes(b"bit rot")  # one variant rotten: the version is not served
    path, info = startup_model(cfg)
    assert path == cfg.inference.model and "corrupt" in info["note"]


def test_pending_multi_variant_slot_missing_a_variant_rolls_back(tmp_path: Path) -> None:
    cfg, store = _one_set(tmp_path, "pending")
    store.variant_path("b", "int8").unlink()
    path, _ = startup_model(cfg)
    assert path == cfg.inference.model and store.read_state().status["state"] == "rolled_back"
