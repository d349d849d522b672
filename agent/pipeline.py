"""The inference loop: ring → preprocess → engine → result messages. One thread owns it.

Per batch it only indexes preallocated arrays: frames are read in place from the ring, written
by the preprocessor into the model's bound input, and the model writes into its bound output.
The one per-result allocation is the JSON payload handed to the publisher.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Callable, Optional

import numpy as np

from agent.inference.engine import Engine, InferenceAborted
from agent.preprocess import Preprocessor
from agent.publish.payloads import ResultEncoder
from agent.ring import FrameRing

__all__ = ["InferenceLoop", "ResultSink"]

log = logging.getLogger(__name__)

# (suffix, payload, qos) — the publisher's ``publish`` or a test's collector.
ResultSink = Callable[[str, bytes, int], None]


class InferenceLoop:
    def __init__(self, ring: FrameRing, engine: Engine, pre: Preprocessor, sink: ResultSink,
                 qos: int, batch_max: int, stop: threading.Event,
                 beat: Callable[[str], None] = lambda name: None, max_frame_age_ms: float = 0.0,
                 on_stop: Callable[[], None] = lambda: None, flush: Callable[[], None] = lambda: None,
                 on_digit: Optional[Callable[[int, float, int], None]] = None, digit_frames: int = 0) -> None:
        """``sink`` takes each result of a batch, then ``flush`` is called once (the publisher
        queues in ``sink`` and sends the whole batch in ``flush``)."""
        self.ring, self.engine, self.pre, self.sink, self.flush = ring, engine, pre, sink, flush
        self.qos, self.batch_max, self.stop, self.beat, self.on_stop = qos, batch_max, stop, beat, on_stop
        self.boot_id = uuid.uuid4().hex[:16]
        self._encoder = ResultEncoder(self.boot_id)
        self.seq = 0  # result sequence number, monotonic per boot
        self.stale_dropped = 0
        # A frame's age limit (source.max_frame_age_ms), not the inference deadline: a slower CPU
        # misses deadlines (counted) but must not lose frames for it. 0 = never drop (replay).
        self._max_age_ns = int(max_frame_age_ms * 1e6)
        self.last_digit: Optional[int] = None
        self.last_confidence: Optional[float] = None
        # Digit on change, debounced: on_digit(digit, confidence, seq) once a digit other than the
        # last reported one has been the result of digit_frames frames in a row.
        self._on_digit = on_digit if digit_frames > 0 else None
        self._digit_frames = digit_frames
        self._run_digit, self._run_len = -1, 0
        self.stable_digit: Optional[int] = None
        self._idx = np.zeros(batch_max, dtype=np.int64)
        self._keep = np.zeros(batch_max, dtype=np.int64)
        self._hang_after = int(os.environ.get("DIGIT_AGENT_TEST_HANG_AFTER", "0"))  # systemd watchdog tests

    def run(self, drain_timeout_s: float = 2.0) -> None:
        """Serve until ``stop``; then finish what is already in the ring (bounded by a timeout)."""
        while not self.stop.is_set():
            self.step(0.5)
        self.on_stop()  # shutdown begins now (systemd's STOPPING=1), before the drain
        deadline = time.monotonic() + drain_timeout_s
        while self.ring.pending() and time.monotonic() < deadline:
            self.step(0.0)

    def step(self, timeout: float) -> int:
        """Take up to ``batch_max`` waiting frames and serve them; returns how many were taken."""
        n = self.ring.take(self._idx, self.batch_max, timeout)
        self.beat("inference")
        if n:
            try:
                self._serve(n)
            finally:
                self.ring.release(self._idx, n)
        self.engine.apply_swap()  # between two batches: a swap never splits or delays one
        return n

    def _serve(self, n: int) -> None:
        engine, ring, max_age = self.engine, self.ring, self._max_age_ns
        now = time.monotonic_ns()
        m = 0
        for k in range(n):
            i = int(self._idx[k])
            if max_age and now - int(ring.t_ns[i]) > max_age:
                self._drop_stale(now - int(ring.t_ns[i]))  # too old to be useful: drop, don't infer late
                continue
            self._keep[m] = i
            m += 1
        if not m:
            return
        x, y = engine.model.buffers(m)
        for k in range(m):
            self.pre(ring.view(int(self._keep[k])), x[k])
        self._maybe_hang()
        try:
            latency_ns = engine.infer(m)
        except InferenceAborted as exc:
            log.error("inference failed, %d frame(s) skipped: %s", m, exc)
            return
        self._publish(m, y, latency_ns)

    def _drop_stale(self, age_ns: int) -> None:
        self.stale_dropped += 1
        if self.stale_dropped == 1:  # once per boot: say which key decides, the counter says how many
            log.warning("dropped a frame that waited %.0f ms for inference (source.max_frame_age_ms = %.0f); "
                        "further drops are counted in health frames.dropped_stale",
                        age_ns / 1e6, self._max_age_ns / 1e6)

    def _publish(self, m: int, y: np.ndarray, latency_ns: int) -> None:
        engine, ring = self.engine, self.ring
        done = time.monotonic_ns()
        ts = time.time()
        missed = latency_ns > engine.deadline_ns
        for k in range(m):
            i = int(self._keep[k])
            probs = y[k]
            digit = int(probs.argmax())
            self.last_digit, self.last_confidence = digit, float(probs[digit])
            self.seq += 1
            payload = self._encoder.encode(
                self.seq, int(ring.frame_seq[i]), digit, self.last_confidence, probs, latency_ns // 1000,
                (done - int(ring.t_ns[i])) // 1000, missed, engine.model.version, ts)
            self.sink("result", payload, self.qos)
            if self._on_digit is not None:
                self._debounce(digit)
        self.flush()

    def _debounce(self, digit: int) -> None:
        if digit != self._run_digit:
            self._run_digit, self._run_len = digit, 0
        self._run_len += 1
        if self._run_len == self._digit_frames and digit != self.stable_digit:
            self.stable_digit = digit
            assert self._on_digit is not None and self.last_confidence is not None
            try:
                self._on_digit(digit, self.last_confidence, self.seq)
            except Exception:  # a reporting problem must not stop inference
                log.exception("digit report failed")

    def _maybe_hang(self) -> None:
        if self._hang_after and self.engine.inferences >= self._hang_after:
            log.warning("DIGIT_AGENT_TEST_HANG_AFTER reached: the inference loop now hangs (test hook)")
            while not self.stop.wait(0.5):
                pass

    def counters(self) -> dict[str, int]:
        return {"results": self.seq, "stale_dropped": self.stale_dropped}
