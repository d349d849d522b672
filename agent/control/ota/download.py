"""One OTA job's transfer: chunks into the store, the bitmap persisted, progress reported, and what
is missing asked for again when the sender stalls.

Owned by the controller's worker thread (no locking). Local trouble — a disk error, a chunk that
keeps arriving corrupted, a transfer stalled for good — raises :class:`DownloadFailed`; the
controller reports it as ``failed`` so that the job can be pushed again.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from agent.config.schema import OtaConfig
from agent.control.ota.manifest import Manifest
from agent.control.ota.startup import status_doc
from agent.control.ota.store import Store
from agent.control.ota.transfer import Bitmap, ChunkCorrupt, ChunkError, check_chunk, encode_request, parse_chunk

__all__ = ["Download", "DownloadFailed", "PublisherLike"]

_log = logging.getLogger(__name__)
_SYNC_EVERY_S = 0.5  # persist the bitmap at most this often (each sync is an fsync)
_PROGRESS_EVERY_S = 0.5
_MAX_BAD_COPIES = 5  # the same chunk arriving corrupted this often fails the job
_MAX_STALL_ROUNDS = 100


class PublisherLike(Protocol):
    def publish(self, suffix: str, payload: bytes, qos: int, retain: bool = False) -> None: ...

    def publish_retained(self, suffix: str, payload: bytes, qos: int = 1, sticky: bool = True) -> None: ...

    def subscribe(self, topic: str, handler: Any) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...


class DownloadFailed(Exception):
    """The transfer of ``m`` cannot go on; the message is the reason reported in ``ota/status``."""

    def __init__(self, m: Manifest, reason: str) -> None:
        super().__init__(reason)
        self.m = m


class Download:
    """The transfer of ``m``'s payload; ``bits`` is a saved bitmap to resume from (or empty)."""

    def __init__(self, m: Manifest, envelope: bytes, bits: bytes, *, store: Store, ota: OtaConfig,
                 pub: PublisherLike, report: Callable[[dict[str, Any]], None],
                 counters: dict[str, int]) -> None:
        self.m, self.envelope = m, envelope
        self.bitmap = Bitmap.from_bytes(bits, m.chunk_count)
        self.rejected_chunks = 0
        self._dropped0 = counters["chunks_dropped"]  # chunks lost in the device's full OTA queue before this job
        self._store, self._ota, self._pub, self._report, self._counters = store, ota, pub, report, counters
        now = time.monotonic()
        self._last_chunk, self._last_sync = now, now
        self._last_request = self._last_progress = 0.0
        self._unsynced = 0
        self._stall_rounds = 0
        self._bad: dict[int, int] = {}
        try:
            store.begin_download(m.job, envelope, m.size)
        except OSError as exc:
            raise DownloadFailed(self.m, f"cannot store the download: {exc}") from None

    @property
    def complete(self) -> bool:
        return self.bitmap.complete

    @property
    def fraction(self) -> float:
        return self.bitmap.have / self.bitmap.count

    def on_chunk(self, payload: bytes) -> None:
        """Check one chunk message against the manifest and store it; duplicates are ignored."""
        try:
            index, count, data = parse_chunk(payload, self._ota.max_chunk_bytes)
            if index in self.bitmap:
                return
            check_chunk(self.m, index, count, data)
        except ChunkError as exc:
            self._refused(exc)
            return
        try:
            self._store.write_chunk(self.m.job, index * self.m.chunk_size, data)
        except OSError as exc:
            raise DownloadFailed(self.m, f"writing the download failed: {exc}") from None
        self._counters["chunks"] += 1
        self.bitmap.add(index)
        self._unsynced += 1
        self._last_chunk, self._stall_rounds = time.monotonic(), 0
        self.progress()

    def progress(self, force: bool = False) -> None:
        """Persist the bitmap and report progress, each at most every half second unless forced."""
        now = time.monotonic()
        if self._unsynced and (force or self.complete or now - self._last_sync >= _SYNC_EVERY_S):
            try:
                self._store.sync_download(self.m.job, self.bitmap.to_bytes())
            except OSError as exc:
                raise DownloadFailed(self.m, f"saving download progress failed: {exc}") from None
            self._unsynced, self._last_sync = 0, now
        if force or now - self._last_progress >= _PROGRESS_EVERY_S:
            self._last_progress = now
            dropped = self._counters["chunks_dropped"] - self._dropped0
            notes = [f"{self.rejected_chunks} bad chunk(s) refused"] if self.rejected_chunks else []
            notes += [f"{dropped} chunk(s) dropped (the device's OTA queue was full)"] if dropped else []
            reason = "; ".join(notes) + ("; asked for again" if notes else "")
            self._report(status_doc("downloading", self.m.job, self.m.version, reason, self.fraction,
                                    rejected_chunks=self.rejected_chunks, dropped_chunks=dropped))

    def request(self, force: bool = False) -> None:
        """Ask for the missing chunks: at once if forced, else after ``stall_s`` without progress."""
        now = time.monotonic()
        stall_s = self._ota.stall_s
        if not force and (now - self._last_chunk < stall_s or now - self._last_request < stall_s):
            return
        if not force:
            self._stall_rounds += 1
            if self._stall_rounds > _MAX_STALL_ROUNDS:
                raise DownloadFailed(self.m, f"transfer stalled ({self.bitmap.have}/{self.bitmap.count} chunks); "
                                     f"push the job again to resume")
        self._last_request = now
        self._counters["requests"] += 1
        self._pub.publish("ota/request", encode_request(self.m.job, self.bitmap.missing_ranges(),
                                                        self.bitmap.have), 1)

    def _refused(self, exc: ChunkError) -> None:
        self._counters["chunks_rejected"] += 1
        self.rejected_chunks += 1
        _log.warning("OTA job %s: chunk refused: %s", self.m.job, exc)
        if isinstance(exc, ChunkCorrupt):  # the same chunk bad again and again: the source is broken
            self._bad[exc.index] = self._bad.get(exc.index, 0) + 1
            if self._bad[exc.index] >= _MAX_BAD_COPIES:
                raise DownloadFailed(self.m, f"chunk {exc.index} arrived corrupted {_MAX_BAD_COPIES} times; giving up")
