"""After the download: verify → validate → activate (A/B slot + live swap) → test window → commit
or roll back. Runs on the OTA worker thread; the inference thread only ever sees
``Engine.request_swap`` of a model that is already loaded and warmed up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config.schema import Config
from agent.control.ota.gate import GateError, GatePolicy, GateResult, validate, verify_file
from agent.control.ota.keys import keyid_of, load_keyring, save_rotation
from agent.control.ota.manifest import Limits, Manifest, ManifestError, parse_envelope, parse_manifest
from agent.control.ota.startup import status_doc
from agent.control.ota.store import SlotInfo, Store
from agent.inference import Engine, LoadedModel, ModelError, load_golden
from agent.inference.serving import load_preferred
from agent.inference.variants import read_model_set
from agent.preprocess import Preprocessor

__all__ = ["Activation", "Outcome"]

_log = logging.getLogger(__name__)
Outcome = str
Report = Callable[[dict[str, Any]], None]
_SWAP_TIMEOUT_S = 5.0
_MIN_EARLY_SAMPLES = 20  # inferences in the window before an early rollback is allowed
_REPORT_EVERY_S = 1.0


@dataclass
class _Test:
    m: Manifest
    envelope: bytes
    slot: str
    previous: Optional[LoadedModel]
    counters0: tuple[int, int, int]
    t0: float = field(default_factory=time.monotonic)
    last_report: float = 0.0


class Activation:
    def __init__(self, cfg: Config, store: Store, engine: Engine, stop: threading.Event,
                 report: Report) -> None:
        self._cfg, self._store, self._engine, self._stop, self._report = cfg, store, engine, stop, report
        self._phase: Optional[tuple[str, str]] = None  # (state, job) while not idle
        self._test: Optional[_Test] = None

    def busy(self) -> Optional[str]:
        return self._phase[1] if self._phase else None

    def stats(self) -> dict[str, Any]:
        t = self._test
        if t is None:
            return {}
        left = max(0.0, self._cfg.ota.test_window_s - (time.monotonic() - t.t0))
        return {"job": t.m.job, "version": t.m.version, "window_left_s": round(left, 1)}

    # -- the pipeline of checks ----------------------------------------------------------------
    def run(self, m: Manifest, envelope: bytes, part: Path, rejected_chunks: int) -> Outcome:
        note = f"{rejected_chunks} bad chunk(s) refused and re-requested" if rejected_chunks else ""
        self._enter("verifying", m, note)
        keys = load_keyring(self._cfg.ota.trusted_keys, self._cfg.ota.state_dir)
        try:
            verify_file(part, m, envelope, keys)
            self._enter("validating", m, note)
            result = validate(part, m, self._policy(), stop=self._stop)
        except GateError as exc:
            return self._end("rejected", m, str(exc), remember=True)
        except (ModelError, OSError) as exc:  # golden set unreadable: a device problem, not the model's
            return self._end("failed", m, f"cannot validate: {exc}")
        _log.info("OTA job %s passed the gate: %s\n%s", m.job, result.golden.summary(), result.choice.table())
        return self._activate(m, envelope, part, result, note)

    def _policy(self) -> GatePolicy:
        golden = load_golden(self._cfg.inference.golden)
        card = self._engine.model.card
        side = max(golden.images.shape[1:])
        pre = Preprocessor.from_card(card, side) if "normalisation" in card else Preprocessor(side)
        i = self._cfg.inference
        return GatePolicy(self._cfg.ota.min_accuracy, i.deadline_ms, self._engine.model.batch_max, golden, pre,
                          card.get("normalisation"), i.variant, i.variant_time_s, self._cfg.ota.state_dir)

    def _activate(self, m: Manifest, envelope: bytes, part: Path, result: GateResult, note: str) -> Outcome:
        self._enter("activating", m, note)
        model = result.model
        state = self._store.read_state()
        slot = self._store.free_slot(state)
        try:
            if m.variants:
                self._store.install_set(slot, result.files, _slot_card(m, slot), envelope)
            else:
                self._store.install(slot, part, {**m.card, "version": m.version}, envelope)
            state.pending = _slot_info(slot, m, attempts=1)
            self._store.write_state(state)
        except OSError as exc:
            return self._end("failed", m, f"installing into slot {slot} failed: {exc}")
        # The gate loaded it from the download (deleted below): name the installed file it serves from.
        model.path = self._store.variant_path(slot, model.variant) if m.variants else self._store.slot_path(slot)
        self._test_pause("installed")
        previous = self._engine.model
        if not self._swap(model):
            self._engine.request_swap(previous)  # withdraw it (the loop has not taken it)
            return self._close(m, "failed", "the inference loop did not take the new model in time")
        self._store.clear_downloads()
        self._start_test(m, envelope, slot, previous)
        return "testing"

    def _swap(self, model: LoadedModel) -> bool:
        self._engine.request_swap(model)
        deadline = time.monotonic() + _SWAP_TIMEOUT_S
        while self._engine.model is not model:
            if time.monotonic() >= deadline or self._stop.wait(0.005):
                return self._engine.model is model
        return True

    # -- the test window -----------------------------------------------------------------------
    def _counters(self) -> tuple[int, int, int]:
        e = self._engine
        return e.inferences, e.deadline_misses, e.errors

    def _start_test(self, m: Manifest, envelope: bytes, slot: str, previous: Optional[LoadedModel],
                    note: str = "") -> None:
        self._test = _Test(m, envelope, slot, previous, self._counters())
        self._phase = ("testing", m.job)
        self._report(status_doc("testing", m.job, m.version, note, 0.0))

    def tick(self) -> None:
        t = self._test
        if t is None:
            return
        inf0, miss0, err0 = t.counters0
        inf, miss, err = self._counters()
        n, bad = inf - inf0, (miss - miss0) + (err - err0)
        ratio, limit = (bad / n if n else 0.0), self._cfg.ota.test_max_miss_ratio
        window = self._cfg.ota.test_window_s
        elapsed = time.monotonic() - t.t0
        why = (f"{bad} deadline miss(es)/error(s) in {n} inferences ({ratio * 100:.1f} %) over the "
               f"limit {limit * 100:.1f} %")
        if ratio > limit and (n >= _MIN_EARLY_SAMPLES or elapsed >= window):
            self._roll_back(t, why)
        elif elapsed >= window:
            self._commit(t, n)
        elif time.monotonic() - t.last_report >= _REPORT_EVERY_S:
            t.last_report = time.monotonic()
            self._report(status_doc("testing", t.m.job, t.m.version, f"{n} inferences, {bad} bad",
                                    elapsed / window if window else 1.0))

    def _commit(self, t: _Test, n: int) -> None:
        changes = self._rotate_keys(t)
        state = self._store.read_state()
        state.committed = _slot_info(t.slot, t.m)
        state.pending = None
        self._test = None
        reason = f"served {n} inferences in the {self._cfg.ota.test_window_s:g} s test window"
        reason += f"; keys {', '.join(changes)}" if changes else ""
        self._close(t.m, "committed", reason, state_obj=state)

    def _roll_back(self, t: _Test, why: str) -> None:
        self._test = None
        if t.previous is not None and self._swap(t.previous):
            self._close(t.m, "rolled_back", why)
        else:
            self._close(t.m, "rolled_back", f"{why}; the previous model serves from the next start")

    def _rotate_keys(self, t: _Test) -> list[str]:
        """Apply the manifest's key changes; an added key counts only if it signed this manifest too."""
        if not (t.m.keys_add or t.m.keys_revoke):
            return []
        try:
            body, sigs = parse_envelope(t.envelope, len(t.envelope))
            proven, refused = {}, []
            for kid, raw in t.m.keys_add:
                pub = Ed25519PublicKey.from_public_bytes(raw)
                if keyid_of(raw) == kid and any(s.keyid == kid and _verifies(pub, s.sig, body) for s in sigs):
                    proven[kid] = raw
                else:
                    refused.append(f"not added {kid} (it did not sign the manifest)")
            return save_rotation(self._cfg.ota.trusted_keys, self._cfg.ota.state_dir, proven,
                                 t.m.keys_revoke) + refused
        except (ManifestError, ValueError, OSError) as exc:
            _log.error("OTA: key rotation not applied: %s", exc)
            return [f"rotation not applied ({exc})"]

    # -- bookkeeping ---------------------------------------------------------------------------
    def _enter(self, phase: str, m: Manifest, note: str = "") -> None:
        self._phase = (phase, m.job)
        self._report(status_doc(phase, m.job, m.version, note, 1.0 if phase != "testing" else 0.0))
        self._test_pause(phase)

    def _test_pause(self, point: str) -> None:
        """Test hook (kill -9 tests): ``DIGIT_AGENT_TEST_OTA_PAUSE=<point>:<seconds>`` holds here."""
        hook = os.environ.get("DIGIT_AGENT_TEST_OTA_PAUSE", "")
        if hook.partition(":")[0] == point:
            _log.warning("DIGIT_AGENT_TEST_OTA_PAUSE: holding at %s (test hook)", point)
            self._stop.wait(float(hook.partition(":")[2] or 5))

    def _end(self, outcome: str, m: Manifest, reason: str, remember: bool = False) -> Outcome:
        self._store.clear_downloads()
        return self._close(m, outcome, reason, remember=remember)

    def _close(self, m: Manifest, outcome: str, reason: str, remember: bool = True,
               state_obj: Any = None) -> Outcome:
        """Persist the terminal status (and the job as seen) so a restart reports the same thing."""
        doc = status_doc(outcome, m.job, m.version, reason, 1.0)
        try:
            state = state_obj or self._store.read_state()
            if outcome in ("rolled_back", "failed") and state.pending and state.pending.job == m.job:
                state.pending = None
            if remember:
                state.remember(m.job)
            state.status = doc
            self._store.write_state(state)
        except OSError as exc:
            _log.error("OTA: cannot record %s for job %s: %s", outcome, m.job, exc)
        self._phase = None
        self._report(doc)
        return outcome

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> Optional[dict[str, Any]]:
        """Pick up after a restart; returns the last status to re-publish (None: nothing to say)."""
        state = self._store.read_state()
        p = state.pending
        if p is None:
            return state.status or None
        if not p.holds(self._engine.model.sha256):
            doc = status_doc("rolled_back", p.job, p.version, "the pending model did not pass the start-up "
                             "self-test; serving the previous one", 1.0)
            state.pending, state.status = None, doc
            state.remember(p.job)
            self._store.write_state(state)
            return doc
        try:
            envelope = self._store.envelope_path(p.slot).read_bytes()
            body, _ = parse_envelope(envelope, len(envelope) + 1)
            o = self._cfg.ota
            m = parse_manifest(body, Limits(o.max_model_bytes, o.max_chunks, o.max_chunk_bytes, o.family))
        except (OSError, ManifestError) as exc:
            _log.error("OTA: pending slot %s has no usable envelope (%s)", p.slot, exc)
            return state.status or None
        self._store.clear_downloads()
        self._start_test(m, envelope, p.slot, self._load_previous(state.committed),
                         f"resumed after a restart (start {p.attempts} of {self._cfg.ota.max_attempts})")
        return None

    def _load_previous(self, committed: Optional[SlotInfo]) -> Optional[LoadedModel]:
        """What a rollback returns to: the committed slot, else the shipped model."""
        path = self._store.model_path(committed) if committed else Path(self._cfg.inference.model)
        card_file = "" if committed else self._cfg.inference.model_card
        try:
            return load_preferred(read_model_set(path, card_file), self._engine.model.batch_max,
                                  self._cfg.inference.variant, self._cfg.ota.state_dir)
        except ModelError as exc:
            _log.error("OTA: cannot preload the rollback model %s: %s", path, exc)
            return None


def _slot_info(slot: str, m: Manifest, attempts: int = 0) -> SlotInfo:
    return SlotInfo(slot, m.version, m.job, m.sha256, attempts, {v.name: v.sha256 for v in m.variants})


def _slot_card(m: Manifest, slot: str) -> dict[str, Any]:
    """The card of an installed multi-variant version: the manifest's, its variants' files renamed."""
    meta = {e.get("name"): e for e in m.card.get("variants", []) if isinstance(e, dict)}
    variants = [{**meta.get(v.name, {}), "name": v.name, "file": f"{slot}.{v.name}.onnx", "sha256": v.sha256,
                 "size_bytes": v.size} for v in m.variants]
    first = variants[0]
    return {**m.card, "version": m.version, "file": first["file"], "sha256": first["sha256"],
            "size_bytes": first["size_bytes"], "variants": variants}


def _verifies(pub: Ed25519PublicKey, sig: bytes, body: bytes) -> bool:
    try:
        pub.verify(sig, body)
        return True
    except InvalidSignature:
        return False
