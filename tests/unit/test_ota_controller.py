"""The OTA controller without a broker: a recording publisher and a stand-in engine, the real store,
manifests, signatures, gate (ONNX Runtime) and activation. The worker's steps are called directly
(``_open_state``, ``_on_manifest``, ``_on_chunk``, ``_tick``) on this thread, so nothing races.

Covers the anti-rollback floor set by the model being served (the shipped one included) and the
chunk subscription ending with its job."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Optional, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import parse_config
from agent.control.ota import OtaController
from agent.control.ota import store as store_mod
from agent.control.ota.keys import keyid_of, load_keyring, raw_public
from agent.control.ota.transfer import encode_chunk
from agent.inference import Engine, LoadedModel
from tests.helpers.ota import CARD, disk_full, envelope, model_bytes, no_space, write_golden, write_pub

CHUNK = 4096  # the envelope helper's chunk size
CHUNK_TOPIC = "/digit-agent/ota/chunk/{}"


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.subs: dict[str, Any] = {}
        self.unsubscribed: list[str] = []

    def publish(self, suffix: str, payload: bytes, qos: int, retain: bool = False) -> None:
        self.published.append((suffix, payload))

    def publish_retained(self, suffix: str, payload: bytes, qos: int = 1, sticky: bool = True) -> None:
        self.published.append((suffix, payload))

    def subscribe(self, topic: str, handler: Any) -> None:
        self.subs[topic] = handler

    def unsubscribe(self, topic: str) -> None:
        self.subs.pop(topic, None)
        self.unsubscribed.append(topic)

    def statuses(self) -> list[dict[str, Any]]:
        return [json.loads(p) for s, p in self.published if s == "ota/status"]


class FakeEngine:
    """What the controller and activation use of :class:`Engine`; a swap is taken at once."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inferences = self.deadline_misses = self.errors = 0

    def request_swap(self, model: LoadedModel) -> None:
        self.model = model


class Rig:
    def __init__(self, tmp: Path, serving: Any) -> None:
        golden = write_golden(tmp / "golden.npz")
        self.key = Ed25519PrivateKey.generate()
        write_pub(tmp / "keys", self.key, "operator")
        self.cfg = parse_config(
            f'[inference]\nmodel = "{tmp}/shipped.onnx"\ngolden = "{golden}"\ndeadline_ms = 20.0\n'
            f'[ota]\nstate_dir = "{tmp}/state"\ntrusted_keys = "{tmp}/keys"\nmin_accuracy = 0.9\n'
            f'test_window_s = 0.0\n')
        self.pub = FakePublisher()
        self.engine = FakeEngine(serving)
        self.ota = OtaController(self.cfg, self.pub, cast(Engine, self.engine), threading.Event())
        assert self.ota._open_state()

    def envelope(self, model: bytes, version: int, job: str = "", **spec: Any) -> bytes:
        return envelope(self.key, model, version, job, **spec)

    def send_chunks(self, job: str, model: bytes) -> None:
        count = -(-len(model) // CHUNK)
        for i in range(count):
            self.ota._on_chunk(CHUNK_TOPIC.format(job), encode_chunk(i, count, model[i * CHUNK:(i + 1) * CHUNK]))

    def last(self, job: Optional[str] = None) -> dict[str, Any]:
        return [s for s in self.pub.statuses() if job is None or s["job"] == job][-1]


def _serving(version: int) -> Any:
    """The stand-in for the engine's LoadedModel (version from its card, as the daemon loads it)."""
    return type("Serving", (), {"version": version, "card": CARD, "batch_max": 4, "sha256": "0" * 64})()


# 1. anti-rollback counts the model being served, not only OTA-installed versions -----------------
@pytest.mark.parametrize("serving, version, refused", [(1, 1, True), (3, 2, True), (3, 3, True), (3, 4, False)])
def test_manifest_not_newer_than_the_serving_model_is_refused(tmp_path: Path, serving: int, version: int,
                                                              refused: bool) -> None:
    rig = Rig(tmp_path, _serving(serving))
    rig.ota._on_manifest(rig.envelope(model_bytes("good", tag=version), version))
    doc = rig.last(f"job-v{version}")
    if refused:
        assert doc["state"] == "rejected", doc
        assert doc["reason"] == f"version {version} is not newer than {serving} (anti-rollback)"
        assert f"job-v{version}" in rig.ota._store.read_state().seen_jobs  # type: ignore[union-attr]
        assert not rig.pub.subs.get(CHUNK_TOPIC.format(f"job-v{version}"))
    else:
        assert doc["state"] == "downloading", doc


def test_shipped_model_card_version_is_the_floor(tmp_path: Path) -> None:
    """The real shipped model's card version is the floor: a signed manifest of that version is refused."""
    repo = Path(__file__).resolve().parents[2]
    card = json.loads((repo / "models" / "digit.card.json").read_text())
    shipped = LoadedModel.load(repo / "models" / card["file"], 4, card)
    v = card["version"]
    assert shipped.version == v >= 1
    rig = Rig(tmp_path, shipped)
    rig.ota._on_manifest(rig.envelope(model_bytes("good", tag=1), v))
    doc = rig.last(f"job-v{v}")
    assert doc["state"] == "rejected" and f"not newer than {v} (anti-rollback)" in doc["reason"], doc


def test_install_command_does_not_offer_a_version_not_newer_than_the_serving_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path, _serving(3))
    rig.ota._latest = (rig.ota._open(env := rig.envelope(model_bytes("good", tag=2), 2)), env)
    rig.ota._on_command(b'{"cmd":"ota_install","version":"latest"}')
    assert rig.last()["reason"] == "no installable update"
    assert rig.ota._store.read_state().seen_jobs == []  # type: ignore[union-attr]


# 4. a job's chunk topic is unsubscribed when the job ends ------------------------------------------
def test_chunk_topic_unsubscribed_after_commit(tmp_path: Path) -> None:
    v2 = model_bytes("good", tag=2)
    rig = Rig(tmp_path, _serving(1))
    rig.ota._on_manifest(rig.envelope(v2, 2))
    topic = CHUNK_TOPIC.format("job-v2")
    assert topic in rig.pub.subs and rig.pub.unsubscribed == []
    rig.send_chunks("job-v2", v2)
    assert rig.last("job-v2")["state"] == "testing"
    assert topic in rig.pub.subs  # still subscribed while not terminal
    rig.ota._tick()  # test window 0 s: commits
    assert rig.last("job-v2")["state"] == "committed", rig.last()
    assert rig.pub.unsubscribed == [topic] and topic not in rig.pub.subs
    assert rig.engine.model.version == 2


def test_chunk_topic_unsubscribed_after_rejection(tmp_path: Path) -> None:
    v2 = model_bytes("good", tag=2)
    flipped = bytearray(v2)
    flipped[len(flipped) // 2] ^= 0x01  # chunk hashes match, the whole-file hash does not
    rig = Rig(tmp_path, _serving(1))
    rig.ota._on_manifest(rig.envelope(bytes(flipped), 2, overrides={
        "file": {"size": len(v2), "sha256": hashlib.sha256(v2).hexdigest()}}))
    rig.send_chunks("job-v2", bytes(flipped))
    doc = rig.last("job-v2")
    assert doc["state"] == "rejected" and "sha256 mismatch" in doc["reason"], doc
    assert rig.pub.unsubscribed == [CHUNK_TOPIC.format("job-v2")] and not rig.pub.subs.get(
        CHUNK_TOPIC.format("job-v2"))


def test_chunk_topic_unsubscribed_after_failure_and_resubscribed_on_repush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = model_bytes("good", tag=2)
    rig = Rig(tmp_path, _serving(1))
    env = rig.envelope(v2, 2)
    real = store_mod._write_all
    rig.ota._on_manifest(env)
    monkeypatch.setattr(store_mod, "_write_all", disk_full(real))  # SIMULATED disk full at the first chunk
    rig.send_chunks("job-v2", v2)
    assert rig.last("job-v2")["state"] == "failed" and "No space left" in rig.last("job-v2")["reason"]
    topic = CHUNK_TOPIC.format("job-v2")
    assert rig.pub.unsubscribed == [topic] and topic not in rig.pub.subs
    monkeypatch.setattr(store_mod, "_write_all", real)
    rig.ota._on_manifest(env)  # a failed job may be pushed again: it subscribes again
    assert topic in rig.pub.subs and rig.last("job-v2")["state"] == "downloading"


def test_replaced_job_is_unsubscribed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, _serving(1))
    rig.ota._on_manifest(rig.envelope(model_bytes("good", tag=2), 2))
    rig.ota._on_manifest(rig.envelope(model_bytes("good", tag=3), 3))
    assert rig.pub.unsubscribed == [CHUNK_TOPIC.format("job-v2")]
    assert CHUNK_TOPIC.format("job-v3") in rig.pub.subs and CHUNK_TOPIC.format("job-v2") not in rig.pub.subs


def test_progress_save_failing_on_the_last_chunk_fails_once_and_installs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = model_bytes("good", tag=2)
    rig = Rig(tmp_path, _serving(1))
    rig.ota._on_manifest(rig.envelope(v2, 2))

    def full(self: Any, job: str, bits: bytes) -> None:
        raise no_space()

    monkeypatch.setattr(store_mod.Store, "sync_download", full)  # SIMULATED disk full on the bitmap
    rig.send_chunks("job-v2", v2)
    states = [d["state"] for d in rig.pub.statuses() if d["job"] == "job-v2"]
    assert states.count("failed") == 1 and states[-1] == "failed", states
    assert "saving download progress failed" in rig.last("job-v2")["reason"]
    assert not {"verifying", "testing", "committed"} & set(states), states  # activation never ran
    assert rig.engine.model.version == 1 and rig.ota._dl is None


# OTA status tells the truth ----------------------------------------------------------------------
def _commit(rig: Rig, model: bytes, version: int, **spec: Any) -> dict[str, Any]:
    rig.ota._on_manifest(env := rig.envelope(model, version, **spec))
    rig.send_chunks(f"job-v{version}", model)
    rig.ota._tick()  # test_window_s = 0: the window has passed
    rig.env = env  # type: ignore[attr-defined]
    return rig.last(f"job-v{version}")


def test_replayed_envelope_leaves_the_serving_jobs_status_and_replies_apart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, _serving(1))
    done = _commit(rig, model_bytes("good", tag=2), 2)
    assert done["state"] == "committed", done
    rig.ota._on_manifest(rig.env)  # type: ignore[attr-defined]  # the very same envelope again
    assert rig.last() == done  # ota/status (retained) still says job-v2 committed
    (reply,) = [json.loads(p) for s, p in rig.pub.published if s == "ota/reply"]
    assert (reply["state"], reply["job"], reply["reason"]) == ("rejected", "job-v2", "replayed job job-v2 ignored")


def test_after_commit_health_names_the_installed_file(tmp_path: Path) -> None:
    """health.model.path once pointed at the deleted state/download/<job>.part."""
    rig = Rig(tmp_path, _serving(1))
    assert _commit(rig, model_bytes("good", tag=2), 2)["state"] == "committed"
    path = Path(rig.engine.model.path)
    assert path.is_file() and path.parent == tmp_path / "state" / "slots", path
    assert not list((tmp_path / "state").rglob("*.part"))


def test_revoking_the_only_trusted_key_is_refused_and_said(tmp_path: Path) -> None:
    rig = Rig(tmp_path, _serving(1))
    kid = keyid_of(raw_public(rig.key.public_key()))
    done = _commit(rig, model_bytes("good", tag=2), 2, keys_revoke=[kid])
    assert done["state"] == "committed", done
    assert f"refused revoking {kid} (it would leave no trusted key)" in done["reason"], done
    assert kid in load_keyring(str(tmp_path / "keys"), str(tmp_path / "state"))  # still trusted


def test_chunks_dropped_in_a_full_queue_are_named_in_the_reason(tmp_path: Path) -> None:
    v2 = model_bytes("good", tag=2)
    rig = Rig(tmp_path, _serving(1))
    rig.ota._on_manifest(rig.envelope(v2, 2))
    while not rig.ota._q.full():  # the worker is not running: the queue fills as on a busy device
        rig.ota._q.put_nowait(("cmd", "x", b""))
    rig.ota._on_chunk_msg(CHUNK_TOPIC.format("job-v2"), encode_chunk(0, 1, v2[:CHUNK]))
    rig.ota._on_chunk_msg(CHUNK_TOPIC.format("job-v2"), encode_chunk(0, 1, v2[:CHUNK]))
    assert rig.ota._dl is not None
    rig.ota._dl.progress(force=True)
    doc = rig.last("job-v2")
    assert doc["state"] == "downloading" and doc["dropped_chunks"] == 2, doc
    assert doc["reason"] == "2 chunk(s) dropped (the device's OTA queue was full); asked for again", doc
