"""The daemon: builds the components from the config, runs their threads, shuts down in order.

Threads (see docs/architecture.md): main = inference loop; ``source`` fills the ring;
``watchdog`` terminates stuck runs; ``health`` publishes telemetry; the publisher's network and
dispatch threads; the OTA worker; ``sd-watchdog`` pings systemd while the inference, health and mqtt
loops make progress (``Liveness``; the source is not watched: a silent line is no hang).
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

from agent import __version__
from agent.config.schema import Config
from agent.health import HealthSampler
from agent.inference import Engine, GoldenResult, LoadedModel, ModelError, evaluate_golden, load_golden
from agent.inference.choice import Choice, NoVariant, Refused
from agent.inference.serving import choose_variant, timing_frame
from agent.inference.variants import read_model_set
from agent.pipeline import InferenceLoop
from agent.preprocess import Preprocessor
from agent.publish import Publisher
from agent.publish.board import board_info
from agent.publish.discovery import Discovery
from agent.publish.payloads import encode_health
from agent.ring import FrameRing
from agent.service import Liveness, Notifier, WatchdogPinger
from agent.source import make_source

__all__ = ["Daemon", "StartupError", "load_serving_model"]

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The daemon cannot start serving (model, golden set or self-test); exit code 1."""


def load_serving_model(cfg: Config, path: Path,
                       stop: Optional[threading.Event] = None) -> tuple[LoadedModel, Preprocessor, Choice]:
    """Load the model set at ``path``, self-test every variant on the golden set and serve the
    fastest that passes (or the pinned one); a variant that fails the self-test never serves."""
    models = read_model_set(path, cfg.inference.model_card if path == Path(cfg.inference.model) else "")
    try:
        pre = Preprocessor.from_card(models.card, max_side=_max_side(cfg))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: model card lacks a usable normalisation section ({exc!r})") from None
    golden = load_golden(cfg.inference.golden)
    floor = cfg.inference.selftest_min_accuracy

    def judge(model: LoadedModel) -> GoldenResult:
        result = evaluate_golden(model, golden, pre)
        if not result.finite or result.accuracy < floor:
            raise Refused(f"self-test failed for {model.path}: {result.summary()} (floor {floor * 100:.1f} %)",
                          result.accuracy)
        return result

    i = cfg.inference
    try:
        choice = choose_variant(models, judge, timing_frame(golden, pre), i.batch_max, i.variant,
                                i.variant_time_s, cfg.ota.state_dir, stop=stop)
    except NoVariant as exc:
        raise StartupError(f"{path}: {exc}") from None
    return choice.model, pre, choice


def _max_side(cfg: Config) -> int:
    s = cfg.source
    if s.type == "pipe":
        return max(s.roi[2:]) if s.roi else max(s.width, s.height)
    return s.max_frame_side


def _ring_shape(cfg: Config) -> tuple[int, int]:
    s = cfg.source
    return (s.height, s.width) if s.type == "pipe" else (s.max_frame_side, s.max_frame_side)


class Daemon:
    def __init__(self, cfg: Config, stop: Optional[threading.Event] = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.liveness = Liveness(expected=("inference", "health", "mqtt"))
        self.notifier = Notifier.from_env()
        self.threads: list[threading.Thread] = []
        self.pinger: Optional[WatchdogPinger] = None
        self._signal: Optional[int] = None  # set by the SIGTERM/SIGINT handler
        self._health_due = threading.Event()  # publish health at the next health tick (after an announce)

    # -- start-up -----------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        from agent.control.ota import OtaController, startup_model

        model_path, ota_info = startup_model(cfg)
        try:
            model, self.pre, choice = load_serving_model(cfg, Path(model_path), self.stop)
        except (ModelError, StartupError) as exc:
            if Path(model_path) == Path(cfg.inference.model):
                raise StartupError(str(exc)) from None
            log.error("OTA model failed its start-up self-test (%s); serving the shipped model", exc)
            model, self.pre, choice = load_serving_model(cfg, Path(cfg.inference.model), self.stop)
        log.info("model %s version %d ready: variant %s (%s), %s\n%s", model.path.name, model.version,
                 model.variant, choice.how, ota_info, choice.table())
        self.engine = Engine(model, cfg.inference.deadline_ms, cfg.inference.watchdog_factor, self.stop)
        self.ring = FrameRing(cfg.source.ring_slots, *_ring_shape(cfg))
        self.source = make_source(cfg.source)
        self.publisher = Publisher(cfg, self.stop)
        self.loop = InferenceLoop(self.ring, self.engine, self.pre, self.publisher.enqueue, cfg.mqtt.qos,
                                  min(cfg.inference.batch_max, model.batch_max), self.stop, self.liveness.beat,
                                  max_frame_age_ms=cfg.source.max_frame_age_ms if self.source.live else 0.0,
                                  on_stop=self._stopping, flush=self.publisher.kick, on_digit=self._publish_digit,
                                  digit_frames=cfg.mqtt.digit_debounce_frames)
        self.ota = OtaController(cfg, self.publisher, self.engine, self.stop)
        self.discovery = Discovery(cfg, self.publisher, self.stop, board=board_info(),
                                   after_announce=self._health_due.set)
        self.health = HealthSampler(cfg.health.thermal_zone, {
            "frames": self._frame_counters, "inference": self._inference_stats,
            "source": self.source.stats, "mqtt": self.publisher.stats, "model": self._model_info,
            "ota": self.ota.stats})

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                target()
            except Exception:
                log.exception("thread %s died; stopping the daemon so systemd restarts it", name)
                self.stop.set()
        return body

    # -- run ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or a finite replay ends); returns the exit code."""
        self._install_signals()
        self._build()
        _freeze_startup_objects()
        self.publisher.start()
        self.discovery.start()
        self._spawn("watchdog", self.engine.watchdog)
        self._spawn("source", self._run_source)
        self._spawn("health", self._run_health)
        self.ota.start()
        if self.notifier.watchdog_interval_s:
            max_age = max(2.0, self.notifier.watchdog_interval_s)
            self.pinger = WatchdogPinger(self.notifier, self.liveness, self.stop, max_age)
            self._spawn("sd-watchdog", self.pinger.run)
        self.notifier.ready()
        self.notifier.status(self._status_line())
        log.info("digit-agent %s serving device %s from %s source", __version__, self.cfg.device.id,
                 self.cfg.source.type)
        self.loop.run()
        if self._signal is not None:
            log.info("signal %s: shutting down", signal.Signals(self._signal).name)
        return self._shutdown()

    def _run_source(self) -> None:
        self.source.run(self.ring, self.stop)
        if not self.stop.is_set():  # a finite replay ended: serve what is left, then stop cleanly
            self.ring.wait_empty(10.0)
            log.info("source finished; stopping")
            self.stop.set()

    def _run_health(self) -> None:
        interval = self.cfg.health.interval_s
        next_t = time.monotonic()
        last_state: Any = None
        while not self.stop.wait(min(0.5, interval)):
            self.liveness.beat("health")
            if self.publisher.alive():
                self.liveness.beat("mqtt")
            state = (self.source.stats().get("state"), self.publisher.stats().get("connected"),
                     self.ota.state())
            if time.monotonic() >= next_t or state != last_state or self._health_due.is_set():
                self._health_due.clear()
                self.publish_health()
                self.notifier.status(self._status_line())
                next_t = time.monotonic() + interval
                last_state = state

    def publish_health(self) -> None:
        doc = self.health.sample()
        self.publisher.publish("health", encode_health(doc), self.cfg.mqtt.qos)

    def _publish_digit(self, digit: int, confidence: float, seq: int) -> None:
        """A new digit (see ``mqtt.digit_debounce_frames``): retained, for HA's event and last-digit
        entities; through the retained lane (never lost to a result overflow, in order), not sticky
        (sent again on a reconnect it would fire Home Assistant's event twice)."""
        doc = {"event_type": str(digit), "digit": digit, "confidence": round(confidence, 4), "seq": seq,
               "boot_id": self.loop.boot_id, "ts": round(time.time(), 3)}
        self.publisher.publish_retained("digit", json.dumps(doc, separators=(",", ":")).encode(),
                                        self.cfg.mqtt.qos, sticky=False)

    def _stopping(self) -> None:
        log.info("stopping: draining frames and flushing MQTT")
        self.notifier.stopping()

    def _shutdown(self) -> int:
        for t in self.threads:
            t.join(timeout=2.0)
        self.ota.stop()
        self.publish_health()
        self.discovery.stop()
        self.publisher.stop(timeout=5.0)
        log.info("stopped after %d results", self.loop.seq)
        gc.unfreeze()  # let a test process that runs many daemons collect this one's cycles
        return 0

    def _install_signals(self) -> None:
        def handler(signum: int, frame: Optional[FrameType]) -> None:
            # Runs on the main thread, which is the inference loop, between two of its bytecodes —
            # possibly while it holds the ring's (or the logging) lock. So: no ring.wake(), no
            # logging here; take() times out within 0.5 s and the loop sees ``stop`` then.
            # (Event.set takes the event's own lock; the main thread only polls stop.is_set(),
            # never waits on it, outside the DIGIT_AGENT_TEST_HANG_AFTER hook. A repeated signal,
            # e.g. during the shutdown flush, does not even take that lock.)
            self._signal = signum
            if not self.stop.is_set():
                self.stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    def ring_wake(self) -> None:
        """Wake the inference loop blocked in ``take`` (tests; never from a signal handler)."""
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.wake()

    # -- telemetry providers ------------------------------------------------------------------
    def _frame_counters(self) -> dict[str, Any]:
        src = self.source.stats()
        corrupt = sum(int(src.get(k) or 0) for k in ("crc_errors", "oversize", "malformed", "misaligned"))
        return {"in": self.ring.committed, "ok": self.loop.seq, "corrupt": corrupt,
                "dropped": self.ring.dropped_oldest + self.loop.stale_dropped,
                "dropped_oldest": self.ring.dropped_oldest, "dropped_stale": self.loop.stale_dropped,
                "pending": self.ring.pending()}

    def _inference_stats(self) -> dict[str, Any]:
        return {**self.engine.counters(), **self.engine.latency.drain(),
                "last_digit": self.loop.last_digit, "last_confidence": self.loop.last_confidence}

    def _model_info(self) -> dict[str, Any]:
        m = self.engine.model
        info: dict[str, Any] = {"version": m.version, "sha256": m.sha256, "path": str(m.path),
                                "variant": m.variant, "choice": m.choice}
        for key in ("release_notes", "release_url"):  # shown by Home Assistant's update entity
            if isinstance(m.card.get(key), str):
                info[key] = m.card[key]
        return info

    def _status_line(self) -> str:
        c = self.engine.counters()
        mq = self.publisher.stats()
        stalled = self.pinger.stale_now if self.pinger else []
        prefix = f"stalled: {', '.join(stalled)}; " if stalled else ""
        m = self.engine.model
        return (f"{prefix}model v{m.version} {m.variant}; {c['inferences']} inferences, "
                f"{c['deadline_misses']} misses; source {self.source.stats().get('state')}; "
                f"mqtt {'connected' if mq.get('connected') else 'disconnected'}")


def _freeze_startup_objects() -> None:
    """Move what start-up built (onnxruntime, numpy, paho, the config: ~32k objects) out of the
    collector's reach. A full collection walks them all with the GIL held (median 3-9 ms, up to
    16 ms here: ``python -m tools.bench.gc_pause``; the default deadline is 5 ms), stalling the
    inference loop whichever thread triggers it; frozen, one takes under a microsecond."""
    gc.collect()
    gc.freeze()
