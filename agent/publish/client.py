"""The MQTT publisher: a cheap, never-blocking ``publish()`` in front of one network-loop thread.

Design (why it looks like this):

* ``publish()`` appends to the bounded drop-oldest :class:`~agent.publish.outbox.Outbox` under a
  lock. While connected, and when the loop thread is not using the client at that moment, it then
  hands the message to paho and writes it to the socket itself (:meth:`Session.send_now`): one
  thread, no wake-up and no GIL hand-off per message. Otherwise, if the loop does not already know
  there is work, it writes one byte to a wake socket. It never blocks.
* We run paho's *external-loop* API (``loop_read``/``loop_write``/``loop_misc`` around our own
  ``select``) on a thread we own, rather than ``loop_start()``: the wake socket is in the same
  ``select``, every paho call and callback happens on this one thread (no locking of paho state),
  and liveness is a heartbeat this thread updates. :meth:`Publisher.alive` restarts the thread
  if it died and reports False if it is stuck, for the systemd watchdog.
* paho's own queue drops the newest message when full and loses QoS 0 while offline, and it
  re-sends its in-flight messages on reconnect by itself. So we hand paho at most the broker's
  receive window of QoS>0 messages (plus a small QoS 0 write window), keep ownership of every
  message until ``on_publish`` (PUBACK/PUBCOMP, or written to the socket for QoS 0), and use a
  **fresh paho client per connection**: on disconnect the un-acknowledged messages go back to the
  FRONT of the outbox and are re-sent, in order, after the reconnect. Re-sent duplicates are
  recognisable by ``seq`` + ``boot_id`` in the payload.
* Retained state (discovery configs, ``ota/status``, the last digit) does not go through the
  outbox but through :meth:`Publisher.publish_retained` into the *retained lane*
  (:mod:`agent.publish.retained`): one message per topic, sent before the outbox, never dropped by
  a result overflow, and sent again after every new connection.
* Every connection publishes retained ``online`` on ``<prefix>/<id>/status`` first, re-makes all
  subscriptions, and registers the retained Last Will ``offline``. ``stop()`` flushes, publishes
  retained ``stopped`` and disconnects cleanly (so the will is not sent).

QoS 2 is exactly-once only within one connection: each connection is a clean session, so a QoS 2
message in flight when the connection dies is re-sent and may arrive twice (``seq`` tells).

Topics: ``suffix`` is relative to ``<topic_prefix>/<device.id>/``; a leading ``/`` marks an
absolute topic and is stripped (``"/homeassistant/x/config"`` → ``homeassistant/x/config``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Optional, Union

from agent.config.schema import Config
from agent.publish.auth import load_credentials
from agent.publish.dispatch import Dispatcher, Handler
from agent.publish.outbox import Message, Outbox
from agent.publish.retained import Retained, RetainedLane
from agent.publish.session import Session

__all__ = ["Publisher", "StatValue", "resolve_topic"]

log = logging.getLogger(__name__)

StatValue = Union[int, float, str, bool, None]

_TOPIC_CACHE_MAX = 1024
_RESOLVER_GRACE_S = 60.0
_QOS = frozenset((0, 1, 2))
_new_msg = tuple.__new__  # skips NamedTuple's Python-level __new__ on the hot path


def resolve_topic(base: str, suffix: str, wildcards: bool = False) -> str:
    """``base + suffix``, or ``suffix[1:]`` when it starts with '/'; raises ValueError if invalid."""
    topic = suffix[1:] if suffix.startswith("/") else base + suffix
    bad = "\x00" if wildcards else "\x00+#"
    if not topic or any(ch in topic for ch in bad) or len(topic.encode("utf-8")) > 65535:
        raise ValueError(f"invalid MQTT topic {topic!r} (from {suffix!r})")
    return topic


class Publisher:
    """See the module docstring. ``stop`` is the daemon's shared stop event: the publisher keeps
    delivering after it is set (the last results still go out); :meth:`stop` ends it."""

    def __init__(self, cfg: Config, stop: threading.Event,
                 environ: Optional[Mapping[str, str]] = None) -> None:
        self._cfg = cfg
        self._stop_event = stop
        self._base = cfg.topic("")
        self._topics: dict[str, str] = {}
        self._lock = threading.Lock()
        self._outbox = Outbox(cfg.mqtt.outbox_max)
        self._lane = RetainedLane()
        self._wake_pending = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._dispatch = Dispatcher(cfg.mqtt.rx_queue_max)
        self._rejected = 0
        # Raises CredentialError (naming key and file) here, at start-up, not on first connect.
        creds = load_credentials(cfg.mqtt, environ)
        self._session = Session(cfg, creds, self._outbox, self._lock, self._dispatch,
                                self._wake_r, self._on_outbox_empty, self._lane)
        self._thread: Optional[threading.Thread] = None
        self.status_topic = self._session.status_topic

    # -- hot path ------------------------------------------------------------------------------
    def publish(self, suffix: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Queue one message and send it; never blocks, never raises (bad topic/QoS: logged and counted)."""
        self.enqueue(suffix, payload, qos, retain)
        self.kick()

    def enqueue(self, suffix: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Queue one message without sending yet: several queued messages then go out with one
        :meth:`kick` (the inference loop's results of one batch: one ``send``)."""
        try:
            topic = self._topics.get(suffix) if qos in _QOS else None
        except TypeError:  # unhashable suffix or QoS: reported by _checked_topic
            topic = None
        if topic is None:
            topic = self._checked_topic(suffix, qos)
            if topic is None:
                return
        msg = _new_msg(Message, (topic, payload, qos, retain))
        with self._lock:
            self._outbox.push(msg)

    def kick(self) -> None:
        """Send what is queued: on this thread when the connection is free (no wake-up of the
        loop), else by waking the loop if it is not already woken."""
        if self._wake_pending:
            return  # the loop is about to take everything
        if self._session.send_now():
            return
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake()

    def publish_retained(self, suffix: str, payload: bytes, qos: int = 1, sticky: bool = True) -> None:
        """Set this device's retained state on ``suffix`` (the retained lane, see
        :mod:`agent.publish.retained`): sent in order before any queued result, never dropped by
        an outbox overflow, and a ``sticky`` topic's newest payload is sent again after every new
        connection. Never blocks, never raises."""
        topic = self._checked_topic(suffix, qos)
        if topic is None:
            return
        with self._lock:
            self._lane.put(Retained(topic, payload, qos, True), sticky)
        self.kick()

    def _checked_topic(self, suffix: str, qos: int) -> Optional[str]:
        try:
            if qos not in _QOS:
                raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")
            topic = resolve_topic(self._base, suffix)
        except (ValueError, TypeError, AttributeError) as exc:
            with self._lock:
                self._rejected += 1
            log.error("publish rejected: %s", exc)
            return None
        if len(self._topics) < _TOPIC_CACHE_MAX:
            self._topics[suffix] = topic
        return topic

    def _wake(self) -> None:
        # OSError: buffer full (a wake is pending anyway) or closed during stop.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _on_outbox_empty(self) -> None:
        """Called by the loop (under the lock) once it has taken everything: wake on next publish."""
        self._wake_pending = False

    # -- subscriptions ---------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call ``handler(topic, payload)`` on the dispatcher thread for messages matching ``topic``
        (relative suffix or '/'-prefixed absolute filter; wildcards allowed). Made on every connect."""
        self._dispatch.add(resolve_topic(self._base, topic, wildcards=True), handler)
        self._session.subs_dirty = True
        self._wake()

    def unsubscribe(self, topic: str) -> None:
        """Forget the handler for ``topic`` (same spelling as in :meth:`subscribe`) and unsubscribe."""
        if self._dispatch.remove(resolve_topic(self._base, topic, wildcards=True)):
            self._session.subs_dirty = True
            self._wake()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher and the network loop; connecting happens in the background."""
        if self._thread is not None:
            return
        self._dispatch.start()
        self._start_loop()

    def _start_loop(self) -> None:
        self._session.beat = time.monotonic()
        self._thread = threading.Thread(target=self._session.run, name="mqtt-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush (≈70 % of ``timeout``), publish retained ``stopped``, disconnect; returns within
        ``timeout`` + 0.5 s. Messages still queued then are reported in the log and :meth:`stats`.
        A stopped publisher cannot be started again."""
        if self._thread is None:
            return
        self._session.request_stop(timeout)
        self._wake()
        self._thread.join(timeout + 0.5)
        if self._thread.is_alive():
            log.warning("MQTT loop did not finish within %.1f s; abandoning it", timeout)
            self._session.done.set()
        else:
            self._wake_r.close()  # a later publish() only queues (its wake send fails quietly)
            self._wake_w.close()
        self._dispatch.close(0.5)
        left = len(self._outbox) + len(self._lane) + self._session.inflight
        if left:
            log.warning("stopped with %d message(s) undelivered", left)

    def alive(self, max_age_s: Optional[float] = None) -> bool:
        """Network loop progressing (heartbeat younger than ``max_age_s``) and dispatcher running.
        A dead loop thread is restarted (this call then returns False); a stuck one is reported."""
        if self._thread is None or self._session.done.is_set():
            return False
        if not self._thread.is_alive():
            log.error("MQTT network loop thread died; restarting it")
            self._session.loop_restarts += 1
            self._start_loop()
            return False
        limit = max_age_s if max_age_s is not None else 2 * self._cfg.mqtt.connect_timeout_s + 10
        if self._session.connecting_since is not None:
            # Inside paho's connect(): the resolver can take tens of seconds on a bad network
            # (glibc: 5 s x 2 attempts x up to 3 servers); that is not a stuck loop.
            limit = max(limit, self._cfg.mqtt.connect_timeout_s + _RESOLVER_GRACE_S)
        fresh = time.monotonic() - self._session.beat < limit
        return self._dispatch.alive() and fresh

    def wait_connected(self, timeout: float) -> bool:
        return self._session.connected_event.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight (tests, benchmarks, shutdown helpers)."""
        deadline = time.monotonic() + timeout
        while len(self._outbox) or len(self._lane) or self._session.inflight:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def stats(self) -> dict[str, StatValue]:
        with self._lock:
            produced, queued, dropped = self._outbox.pushed, len(self._outbox), self._outbox.dropped
            rejected = self._rejected
            retained_queued, retained_coalesced = len(self._lane), self._lane.coalesced
        s = self._session
        return {
            "connected": s.connected, "state": s.state, "broker": s.brokers.label,
            "session_present": s.session_present, "connects": s.connects,
            "reconnects": max(0, s.connects - 1), "connect_failures": s.failures,
            "produced": produced, "queued": queued, "inflight": s.inflight, "dropped": dropped,
            "retained_queued": retained_queued, "retained_coalesced": retained_coalesced,
            "rejected": rejected + s.fl.rejected, "sent": s.fl.sent, "acked": s.fl.acked,
            "retained_sent": s.fl.retained_sent,
            "rx": self._dispatch.received, "rx_dropped": self._dispatch.dropped,
            "handler_errors": self._dispatch.errors, "loop_restarts": s.loop_restarts,
            "last_error": s.last_error,
        }
