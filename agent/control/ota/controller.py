"""The OTA controller: MQTT wiring, the download state machine, and hand-off to activation.

MQTT handlers only put ``(kind, topic, payload)`` on a bounded queue; one worker thread (``ota``)
does everything else, so no state is shared with paho's or the dispatcher's threads. States and
transitions: docs/ota.md. Verification, the gate and the swap live in :mod:`.activation`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import re
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from agent.config.schema import Config
from agent.control.commands import CommandError, parse_command
from agent.control.ota.activation import Activation, Outcome
from agent.control.ota.download import Download, DownloadFailed, PublisherLike
from agent.control.ota.keys import load_keyring
from agent.control.ota.manifest import Limits, Manifest, ManifestError, open_envelope
from agent.control.ota.startup import TERMINAL, status_doc
from agent.control.ota.store import Store
from agent.inference import Engine

__all__ = ["OtaController", "PublisherLike"]

_log = logging.getLogger(__name__)
_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NICE = 10  # the OTA worker yields the CPU to inference
_F = TypeVar("_F", bound=Callable[..., None])


def _reports_failure(method: _F) -> _F:
    """A download's local trouble (:class:`DownloadFailed`) ends it as ``failed``, wherever it surfaces."""
    @functools.wraps(method)
    def wrapper(self: OtaController, *args: Any) -> None:
        try:
            method(self, *args)
        except DownloadFailed as exc:
            self._fail(exc)
    return wrapper  # type: ignore[return-value]


class OtaController:
    """See the module docstring. ``start()`` subscribes and starts the worker; ``stop()`` joins it."""

    def __init__(self, cfg: Config, publisher: PublisherLike, engine: Engine, stop: threading.Event) -> None:
        self._cfg, self._ota, self._pub, self._stop = cfg, cfg.ota, publisher, stop
        self._q: queue.Queue[tuple[str, str, bytes]] = queue.Queue(maxsize=max(64, cfg.ota.max_chunks // 4))
        self._store: Optional[Store] = None
        self._dl: Optional[Download] = None
        self._act: Optional[Activation] = None
        self._engine = engine
        self._state = "idle" if cfg.ota.enabled else "disabled"
        self._chunk_subs: set[str] = set()
        self._thread: Optional[threading.Thread] = None
        self._counters = {"manifests": 0, "rejected": 0, "chunks": 0, "chunks_rejected": 0,
                          "chunks_dropped": 0, "requests": 0, "committed": 0, "rolled_back": 0, "replies": 0}
        self._prefix = cfg.mqtt.topic_prefix
        self._last: dict[str, Any] = {}  # the last ota/status document (health shows it too)
        self._latest: Optional[tuple[Manifest, bytes]] = None  # newest verified manifest seen

    # -- public -------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._ota.enabled:
            _log.info("OTA disabled by configuration")
            self._publish(status_doc("disabled", reason="ota.enabled is false"))
            return
        self._pub.subscribe("ota/manifest", self._on_manifest_msg)
        self._pub.subscribe("cmd", self._on_command_msg)
        for g in self._ota.groups:
            if _GROUP.match(g):
                self._pub.subscribe(f"/{self._prefix}/group/{g}/ota/manifest", self._on_manifest_msg)
            else:
                _log.error("OTA: ignoring invalid group name %r", g)
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """The shared stop event ends the worker; this waits for it (an activation finishes first)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def state(self) -> str:
        return self._state

    def stats(self) -> dict[str, Any]:
        dl = self._dl
        last = self._last
        out: dict[str, Any] = {"job": last.get("job"), "version": last.get("version"),
                               "reason": last.get("reason", ""), "progress": last.get("progress", 0.0),
                               "state": self._state, **self._counters}
        if dl is not None:
            out.update(job=dl.m.job, version=dl.m.version, progress=round(dl.fraction, 4))
        elif self._act is not None:
            out.update(self._act.stats())
        return out

    # -- MQTT handlers (dispatcher thread): hand off, never raise ----------------------------
    def _on_manifest_msg(self, topic: str, payload: bytes) -> None:
        self._offer("manifest", topic, payload)

    def _on_chunk_msg(self, topic: str, payload: bytes) -> None:
        self._offer("chunk", topic, payload)

    def _on_command_msg(self, topic: str, payload: bytes) -> None:
        self._offer("cmd", topic, payload)

    def _offer(self, kind: str, topic: str, payload: bytes) -> None:
        try:
            self._q.put_nowait((kind, topic, payload))
        except queue.Full:  # chunks come back through a re-request; a manifest is re-sent by the tool
            self._counters["chunks_dropped"] += 1

    # -- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority()
        if not self._open_state():
            return
        while not self._stop.is_set():
            try:
                kind, topic, payload = self._q.get(timeout=0.2)
            except queue.Empty:
                kind = ""
            try:
                if kind == "manifest":
                    self._on_manifest(payload)
                elif kind == "chunk":
                    self._on_chunk(topic, payload)
                elif kind == "cmd":
                    self._on_command(payload)
                self._tick()
            except Exception:  # a bug must not kill OTA silently nor the daemon; report and go on
                _log.exception("OTA worker error")

    def _open_state(self) -> bool:
        """Open the store, set up activation and recover; False (reported) if the state is unusable."""
        try:
            self._store = Store(self._ota.state_dir)
            self._act = Activation(self._cfg, self._store, self._engine, self._stop, self._report)
            self._recover()
        except Exception as exc:
            _log.exception("OTA cannot start; updates are refused")
            self._report(status_doc("failed", reason=f"OTA state unusable: {exc}"))
            return False
        return True

    def _recover(self) -> None:
        assert self._store is not None and self._act is not None
        last = self._act.recover()
        if last is not None:
            self._report(last)
        pending = self._store.pending_download()
        if pending is not None and self._act.busy() is None:
            job, envelope, bits = pending
            try:
                m = self._open(envelope)
            except ManifestError as exc:  # e.g. expired or its key revoked while we were down
                self._store.clear_downloads()
                self._report(status_doc("rejected", job, None, f"unfinished download dropped: {exc}"))
                return
            self._begin(m, envelope, bits)
        elif last is None:
            self._report(status_doc("idle", reason=self._keys_note()))

    def _keys_note(self) -> str:
        keys = load_keyring(self._ota.trusted_keys, self._ota.state_dir)
        return "" if keys else "no trusted key configured: every update will be refused"

    def _open(self, envelope: bytes) -> Manifest:
        keys = load_keyring(self._ota.trusted_keys, self._ota.state_dir)
        limits = Limits(self._ota.max_model_bytes, self._ota.max_chunks, self._ota.max_chunk_bytes,
                        self._ota.family, self._ota.clock_skew_s)
        return open_envelope(envelope, keys, limits, time.time())

    def _report(self, doc: dict[str, Any]) -> None:
        self._state = doc["state"]
        if doc["state"] in TERMINAL and doc["job"] is not None:
            self._drop_chunks(doc["job"])
        if doc["state"] in ("committed", "rolled_back", "rejected"):
            self._counters[doc["state"]] += 1
        level = logging.WARNING if doc["state"] in ("rejected", "failed", "rolled_back") else logging.INFO
        if doc["state"] != "downloading" or doc["progress"] in (0.0, 1.0):
            _log.log(level, "OTA %s job=%s version=%s %s", doc["state"], doc["job"], doc["version"],
                     doc["reason"])
        self._publish(doc)

    def _drop_chunks(self, job: str) -> None:
        """Stop receiving ``job``'s chunks: it ended (or was replaced); a re-push subscribes again."""
        if job in self._chunk_subs:
            self._chunk_subs.discard(job)
            self._pub.unsubscribe(self._chunk_topic(job))

    def _chunk_topic(self, job: str) -> str:
        return f"/{self._prefix}/ota/chunk/{job}"

    def _floor(self, committed: int, pending: int) -> int:
        """Anti-rollback floor: the newest of the committed, the pending and the serving model
        (the shipped model's card version while nothing was ever committed)."""
        return max(committed, pending, self._engine.model.version)

    def _publish(self, doc: dict[str, Any]) -> None:
        self._last = doc
        self._pub.publish_retained("ota/status", json.dumps(doc, separators=(",", ":")).encode())

    def _reply(self, doc: dict[str, Any]) -> None:
        """A refusal that must not replace the retained status (the state of the job that serves or
        last ended): said once, not retained, on ``ota/reply``."""
        self._counters["replies"] += 1
        _log.warning("OTA %s job=%s: %s", doc["state"], doc["job"], doc["reason"])
        self._pub.publish("ota/reply", json.dumps(doc, separators=(",", ":")).encode(), 1)

    # -- manifest -----------------------------------------------------------------------------
    def _on_manifest(self, envelope: bytes) -> None:
        assert self._store is not None and self._act is not None
        self._counters["manifests"] += 1
        try:
            m = self._open(envelope)
        except ManifestError as exc:
            self._report(status_doc("rejected", reason=str(exc)))
            return
        if self._latest is None or m.version >= self._latest[0].version:
            self._latest = (m, envelope)
        busy = self._act.busy()
        if busy is not None:
            self._reply(status_doc("rejected", m.job, m.version, f"job {m.job} ignored: busy with {busy}"))
            return
        if self._dl is not None and self._dl.m.job == m.job:
            self._dl.request(force=True)  # the operator re-pushed: tell it what is missing
            return
        state = self._store.read_state()
        if m.job in state.seen_jobs:  # the retained status keeps telling what serves (or how it ended)
            self._reply(status_doc("rejected", m.job, m.version, f"replayed job {m.job} ignored"))
            return
        current = self._floor(state.committed_version, state.pending.version if state.pending else 0)
        if m.version <= current:
            state.remember(m.job)
            self._store.write_state(state)
            self._report(status_doc("rejected", m.job, m.version,
                                    f"version {m.version} is not newer than {current} (anti-rollback)"))
            return
        if self._dl is not None:
            _log.warning("OTA: job %s replaced by %s", self._dl.m.job, m.job)
            self._drop_chunks(self._dl.m.job)
        self._begin(m, envelope, b"")

    def _on_command(self, payload: bytes) -> None:
        """``ota_install``: restart the newest signed update already seen, if one can still install."""
        assert self._store is not None and self._act is not None
        try:
            cmd = parse_command(payload)
        except CommandError as exc:
            _log.warning("OTA: command refused: %s", exc)
            return
        latest = self._latest
        if self._dl is not None or self._act.busy() is not None:
            return  # an update is in progress already
        state = self._store.read_state()
        if (latest is None or latest[0].version <= self._floor(state.committed_version, 0)
                or latest[0].job in state.seen_jobs
                or (cmd.version != "latest" and cmd.version != latest[0].version)):
            self._publish(status_doc(self._state, self._last.get("job"), self._last.get("version"),
                                     "no installable update", float(self._last.get("progress", 0.0))))
            return
        self._on_manifest(latest[1])

    @_reports_failure
    def _begin(self, m: Manifest, envelope: bytes, bits: bytes) -> None:
        assert self._store is not None
        self._dl = None  # the job this replaces is over, even if this one cannot start
        self._dl = dl = Download(m, envelope, bits, store=self._store, ota=self._ota, pub=self._pub,
                                 report=self._report, counters=self._counters)
        if m.job not in self._chunk_subs:
            self._chunk_subs.add(m.job)
            self._pub.subscribe(self._chunk_topic(m.job), self._on_chunk_msg)
        dl.progress(force=True)
        dl.request(force=True)
        if dl.complete:
            self._complete(dl)

    @_reports_failure
    def _on_chunk(self, topic: str, payload: bytes) -> None:
        dl = self._dl
        if dl is None or topic.rsplit("/", 1)[-1] != dl.m.job:
            return
        dl.on_chunk(payload)
        if dl.complete:
            self._complete(dl)

    @_reports_failure
    def _tick(self) -> None:
        if self._dl is not None:
            self._dl.progress()
            self._dl.request()
        elif self._act is not None:
            self._act.tick()

    def _fail(self, exc: DownloadFailed) -> None:
        """Local trouble (disk, stalled transfer): the job is not remembered, so it can be pushed again."""
        self._dl = None
        self._report(status_doc("failed", exc.m.job, exc.m.version, str(exc)))

    def _complete(self, dl: Download) -> None:
        assert self._act is not None and self._store is not None
        dl.progress(force=True)
        self._dl = None
        outcome: Outcome = self._act.run(dl.m, dl.envelope, self._store.download_path(dl.m.job, "part"),
                                         dl.rejected_chunks)
        if outcome in TERMINAL:
            _log.info("OTA job %s ended %s", dl.m.job, outcome)


def _lower_priority() -> None:
    """Nice this thread only (Linux: a TID is a PRIO_PROCESS target): the gate's ORT runs execute on
    it (one intra-op thread = the caller), so on a 2-core Pi they yield to the inference thread."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + _NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at normal priority
        _log.debug("OTA worker priority unchanged: %s", exc)
