"""A/B model slots, the OTA state file and in-progress downloads under ``ota.state_dir``.

Layout::

    state.json            committed/pending slot, seen jobs, last status (atomic rewrite)
    keys.json             key rotations (see keys.py)
    slots/a.onnx, a.card.json, a.env (its signed envelope), and the same for b;
    a multi-variant version: slots/a.<variant>.onnx for each, listed by a.card.json
    download/<job>.env    the signed envelope (so a restart resumes without the operator)
    download/<job>.part   model bytes, written in place at index * chunk_size
    download/<job>.bits   received-chunk bitmap, rewritten only after the part file is fsynced

Every small file is replaced atomically: temp file, fsync, ``os.replace``, fsync the directory.
So after a power cut each file is either the old or the new version, and the bitmap never claims
bytes that are not on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = ["MAX_SEEN_JOBS", "OtaState", "SlotInfo", "Store", "atomic_write", "file_sha256"]

_log = logging.getLogger(__name__)
MAX_SEEN_JOBS = 256
_SLOTS = ("a", "b")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the whole new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a half-written temp (ENOSPC) must not linger
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class SlotInfo:
    slot: str
    version: int
    job: str
    sha256: str
    attempts: int = 0
    variants: dict[str, str] = field(default_factory=dict)  # name -> sha256; empty: one file (<slot>.onnx)

    def holds(self, sha256: str) -> bool:
        """Whether a model with this sha256 is (one variant of) this slot's version."""
        return sha256 == self.sha256 or sha256 in self.variants.values()


@dataclass
class OtaState:
    committed: Optional[SlotInfo] = None
    pending: Optional[SlotInfo] = None
    seen_jobs: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    def remember(self, job: str) -> None:
        if job not in self.seen_jobs:
            self.seen_jobs.append(job)
            del self.seen_jobs[:-MAX_SEEN_JOBS]

    @property
    def committed_version(self) -> int:
        return self.committed.version if self.committed else 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> OtaState:
        doc = json.loads(data.decode("utf-8"))
        def slot(d: Any) -> Optional[SlotInfo]:
            return SlotInfo(**d) if isinstance(d, dict) else None

        seen = [str(j) for j in doc.get("seen_jobs", [])][-MAX_SEEN_JOBS:]
        status = doc.get("status") if isinstance(doc.get("status"), dict) else {}
        return cls(slot(doc.get("committed")), slot(doc.get("pending")), seen, status)


class Store:
    """Filesystem side of OTA; all methods may raise ``OSError`` (the caller reports it)."""

    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir)
        self.slots = self.root / "slots"
        self.downloads = self.root / "download"
        for d in (self.root, self.slots, self.downloads):
            d.mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"

    # --- state ---------------------------------------------------------------------------------
    def read_state(self) -> OtaState:
        try:
            return OtaState.from_json(self._state_path.read_bytes())
        except FileNotFoundError:
            return OtaState()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # Cannot happen through atomic_write; if the medium corrupted it, serve the shipped model.
            _log.error("OTA state file %s unreadable (%s); starting from the shipped model",
                       self._state_path, exc)
            return OtaState()

    def write_state(self, state: OtaState) -> None:
        atomic_write(self._state_path, state.to_json())

    # --- slots ---------------------------------------------------------------------------------
    def slot_path(self, slot: str) -> Path:
        return self.slots / f"{slot}.onnx"

    def card_path(self, slot: str) -> Path:
        return self.slots / f"{slot}.card.json"

    def variant_path(self, slot: str, name: str) -> Path:
        return self.slots / f"{slot}.{name}.onnx"

    def model_path(self, info: SlotInfo) -> Path:
        """What the daemon loads for this slot: its card (listing the variants) or its one model file."""
        return self.card_path(info.slot) if info.variants else self.slot_path(info.slot)

    def intact(self, info: SlotInfo) -> bool:
        """Every file of the slot is there with the sha256 recorded when it was installed."""
        files = ({self.variant_path(info.slot, n): sha for n, sha in info.variants.items()} if info.variants
                 else {self.slot_path(info.slot): info.sha256})
        try:
            return all(p.is_file() and file_sha256(p) == sha for p, sha in files.items())
        except OSError:
            return False

    def free_slot(self, state: OtaState) -> str:
        """The slot not holding the committed model (the one an update may overwrite)."""
        used = state.committed.slot if state.committed else None
        return next(s for s in _SLOTS if s != used)

    def envelope_path(self, slot: str) -> Path:
        return self.slots / f"{slot}.env"

    def install(self, slot: str, model: Path, card: dict[str, Any], envelope: bytes = b"") -> None:
        """Copy a validated model, its card and its signed envelope into ``slot``, each atomically.
        The model goes last: the slot is only referenced from state.json after this returns."""
        atomic_write(self.card_path(slot), json.dumps(card, indent=1).encode("utf-8"))
        atomic_write(self.envelope_path(slot), envelope)
        atomic_write(self.slot_path(slot), model.read_bytes())

    def install_set(self, slot: str, files: dict[str, Path], card: dict[str, Any], envelope: bytes) -> None:
        """Copy validated variants (name -> file) into ``slot`` as ``<slot>.<name>.onnx``, then the
        card that lists them (its ``variants[].file`` rewritten to those names) and the envelope.
        Files of an earlier version in this (free) slot go first."""
        for old in self.slots.glob(f"{slot}.*.onnx"):
            old.unlink()
        for name, path in files.items():
            atomic_write(self.variant_path(slot, name), path.read_bytes())
        atomic_write(self.envelope_path(slot), envelope)
        atomic_write(self.card_path(slot), json.dumps(card, indent=1).encode("utf-8"))

    # --- downloads -----------------------------------------------------------------------------
    def download_path(self, job: str, ext: str) -> Path:
        return self.downloads / f"{job}.{ext}"

    def begin_download(self, job: str, envelope: bytes, size: int) -> None:
        self.clear_downloads(keep=job)
        atomic_write(self.download_path(job, "env"), envelope)
        part = self.download_path(job, "part")
        with open(part, "ab") as f:  # keep bytes already there (resume); fix the length
            f.truncate(size)

    def write_chunk(self, job: str, offset: int, data: bytes) -> None:
        fd = os.open(self.download_path(job, "part"), os.O_WRONLY)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, data)
        finally:
            os.close(fd)

    def sync_download(self, job: str, bitmap: bytes) -> None:
        """fsync the part file, then persist the bitmap that describes it."""
        fd = os.open(self.download_path(job, "part"), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        atomic_write(self.download_path(job, "bits"), bitmap)

    def pending_download(self) -> Optional[tuple[str, bytes, bytes]]:
        """``(job, envelope, bitmap bytes)`` of an unfinished download, if any."""
        for env in sorted(self.downloads.glob("*.env")):
            job = env.name[:-4]
            try:
                bits = self.download_path(job, "bits")
                return job, env.read_bytes(), bits.read_bytes() if bits.exists() else b""
            except OSError as exc:
                _log.warning("cannot resume download %s: %s", job, exc)
        return None

    def clear_downloads(self, keep: str = "") -> None:
        for p in self.downloads.iterdir():
            if p.name not in {f"{keep}.env", f"{keep}.part", f"{keep}.bits"}:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
