"""The serving engine: deadlines, the stuck-run watchdog, latency statistics and hot model swaps."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import numpy as np

from agent.inference.model import LoadedModel, run_options

__all__ = ["Engine", "InferenceAborted", "LatencyWindow"]

log = logging.getLogger(__name__)


class InferenceAborted(RuntimeError):
    """The watchdog terminated a run stuck far beyond its deadline (or onnxruntime failed)."""


class LatencyWindow:
    """Latencies since the last :meth:`drain`, in a preallocated array (newest kept when full)."""

    def __init__(self, capacity: int = 16384) -> None:
        self._ns = np.zeros(capacity, dtype=np.int64)
        self._n = 0
        self._cap = capacity

    def add(self, ns: int) -> None:
        self._ns[self._n % self._cap] = ns
        self._n += 1

    def drain(self) -> dict[str, Optional[float]]:
        """p50/p99/max in µs over the window, then start a new one (called by the health thread)."""
        n = min(self._n, self._cap)
        self._n = 0
        if not n:
            return {"p50_us": None, "p99_us": None, "max_us": None, "count": 0}
        p50, p99 = np.percentile(self._ns[:n], [50, 99]) / 1000.0
        return {"p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1),
                "max_us": round(float(self._ns[:n].max()) / 1000.0, 1), "count": n}


class Engine:
    """Runs micro-batches on the current model; only the inference thread calls :meth:`infer`."""

    def __init__(self, model: LoadedModel, deadline_ms: float, watchdog_factor: float,
                 stop: threading.Event) -> None:
        self.model = model
        self.deadline_ns = int(deadline_ms * 1e6)
        self._abort_after_ns = int(deadline_ms * watchdog_factor * 1e6)
        self._stop = stop
        self._pending: Optional[LoadedModel] = None
        self._swap_lock = threading.Lock()
        self._run_options = run_options()  # terminate() is set on it by the watchdog
        self._started_ns = 0  # monotonic start of the run in progress, 0 when idle
        self.latency = LatencyWindow()
        self.inferences = 0
        self.batches = 0
        self.deadline_misses = 0
        self.aborted = 0
        self.errors = 0
        self.swaps = 0

    # -- model swap (OTA) -------------------------------------------------------------------
    def request_swap(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next batch on; it must be fully loaded and warmed up already."""
        with self._swap_lock:
            self._pending = model

    def apply_swap(self) -> Optional[LoadedModel]:
        """Called by the inference thread between two batches; returns the model swapped out."""
        if self._pending is None:
            return None
        with self._swap_lock:
            new, self._pending = self._pending, None
        if new is None:
            return None
        old, self.model = self.model, new
        self.swaps += 1
        log.info("now serving model version %d variant %s (%s…)", new.version, new.variant or "-", new.sha256[:12])
        return old

    # -- hot path ---------------------------------------------------------------------------
    def infer(self, n: int) -> int:
        """Run the batch of ``n`` written into ``model.buffers(n)[0]``; returns the latency in ns."""
        t0 = time.monotonic_ns()
        # A terminate the watchdog meant for a previous run (set just as that run returned on its
        # own) must not kill this one: ORT refuses any run that starts with the flag set.
        self._run_options.terminate = False
        self._started_ns = t0
        try:
            self.model.run(n, self._run_options)
        except Exception as exc:  # terminate() surfaces as a generic onnxruntime error
            self._run_options.terminate = False
            self.errors += 1
            raise InferenceAborted(str(exc)) from None
        finally:
            self._started_ns = 0
        dt = time.monotonic_ns() - t0
        self.batches += 1
        self.inferences += n
        self.latency.add(dt)
        if dt > self.deadline_ns:
            self.deadline_misses += n
        return dt

    # -- watchdog thread ----------------------------------------------------------------------
    def watchdog(self) -> None:
        """Thread body: terminate a run stuck ``watchdog_factor`` deadlines long.

        Polls at a quarter of the abort time while batches flow; idle, it wakes only 4 times a
        second (idle CPU), so a run that hangs right after an idle spell is caught ≤ 0.25 s later."""
        period = max(self._abort_after_ns / 4e9, 0.001)
        idle_period = max(period, 0.25)
        seen = -1
        while not self._stop.wait(period if self.batches != seen or self._started_ns else idle_period):
            seen = self.batches
            started = self._started_ns
            if started and time.monotonic_ns() - started > self._abort_after_ns:
                if self._started_ns != started:
                    continue  # that run returned while it was judged: nothing to terminate
                self._run_options.terminate = True
                self.aborted += 1
                log.error("inference stuck for > %.1f ms: terminated", self._abort_after_ns / 1e6)
                while self._started_ns == started and not self._stop.wait(period):
                    pass  # wait for this run to return before arming again

    def counters(self) -> dict[str, int]:
        return {"inferences": self.inferences, "batches": self.batches,
                "deadline_misses": self.deadline_misses, "aborted": self.aborted,
                "errors": self.errors, "swaps": self.swaps}
