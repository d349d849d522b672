"""The network-loop thread behind :class:`~agent.publish.client.Publisher`.

One :class:`Session` object lives as long as the publisher; it creates a fresh paho client for
every connection (so paho never re-sends on its own) and drives it with ``select`` on the
client socket plus the publisher's wake socket. Everything here runs on the loop thread,
except the few attributes read by ``stats()`` (plain ints/strs: a torn read is impossible)
and :meth:`Session.send_now`, by which the producer writes its own messages while connected.
paho callbacks only record what happened; the loop acts on it after the paho call returns.

Every use of the paho client and of the in-flight table happens under ``io_lock``; the loop holds
it except while it waits in ``select``. So a producer that finds the lock free hands its messages
to paho and writes them itself — no wake of this thread, no GIL hand-off per message — and when
the lock is taken (the loop is reading a PUBACK, reconnecting, ...) it wakes the loop as before.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import paho.mqtt.client as mqtt

from agent.backoff import Backoff
from agent.config.schema import Config
from agent.publish.auth import Credentials
from agent.publish.brokers import BrokerRotation
from agent.publish.dispatch import Dispatcher
from agent.publish.inflight import Inflight
from agent.publish.outbox import Message, Outbox
from agent.publish.pahoclient import PahoLog, close_client, connect_options, guarded, new_client
from agent.publish.payloads import STATUS_ONLINE, STATUS_STOPPED
from agent.publish.rawq0 import RawQos0
from agent.publish.retained import RetainedLane

__all__ = ["Session"]

log = logging.getLogger(__name__)

_TICK_S = 0.5  # longest select(): bounds keepalive handling and stop latency
_AUTH_CODES = (0x86, 0x87)  # bad user name or password, not authorised (v3 codes 4/5 map here)


class Session:
    def __init__(self, cfg: Config, creds: Credentials, outbox: Outbox, lock: threading.Lock,
                 dispatch: Dispatcher, wake_r: socket.socket, on_empty: Callable[[], None],
                 lane: RetainedLane) -> None:
        self._cfg, self._m, self._creds = cfg, cfg.mqtt, creds
        self._outbox, self._lock, self._dispatch, self._lane = outbox, lock, dispatch, lane
        self._wake_r, self._on_empty = wake_r, on_empty
        self.status_topic = cfg.topic("status")
        self._backoff = Backoff(self._m.reconnect_min_s, self._m.reconnect_max_s)
        self.brokers = BrokerRotation(self._m.brokers)
        self.session_present = False  # the broker resumed a kept session (mqtt.session_expiry_s)
        self._client: Optional[mqtt.Client] = None
        self._next_attempt = 0.0
        self._conn_deadline = 0.0
        self.fl = Inflight(self._m.max_inflight)
        self._subscribed: set[str] = set()
        self.subs_dirty = False
        # Set by paho callbacks, consumed by the loop.
        self._connack: Optional[Any] = None
        self._lost: Optional[str] = None
        # Shutdown.
        self._stopping = False
        self._flush_deadline = self._hard_deadline = 0.0
        self._stopped_mid: Optional[int] = None
        self._stopped_acked = False
        self.done = threading.Event()
        self.connected_event = threading.Event()
        # Stats.
        self.connected = False
        self.state = "down"
        self.connects = self.failures = 0
        self.loop_restarts = 0
        self.last_error: Optional[str] = None
        self.beat = time.monotonic()
        self.connecting_since: Optional[float] = None
        self._paho_log = PahoLog()
        self.io_lock = threading.Lock()
        self._raw = RawQos0(self._m.protocol == "5")
        self._raw_batch = 64  # QoS 0 messages per send

    @property
    def inflight(self) -> int:
        return len(self.fl)

    def request_stop(self, timeout: float) -> None:
        now = time.monotonic()
        self._flush_deadline = now + 0.7 * timeout
        self._hard_deadline = now + timeout
        self._stopping = True

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        if self._client is not None:  # restarted after the previous loop thread died
            self._end_session("network loop restarted")
        while not self.done.is_set():
            self.beat = time.monotonic()
            try:
                with self.io_lock:
                    self._step()
            except Exception as exc:  # never let the loop die: drop the connection and retry
                log.exception("MQTT network loop error")
                with self.io_lock:
                    self._error(f"network loop: {exc!r}")
                    self._end_session(None)
                self._wait(0.2)

    def send_now(self) -> bool:
        """The producer's shortcut, right after it queued: while connected and the loop is not
        using the client, hand the outbox to paho and write it on the calling thread. Returns
        False when the loop must be woken instead (busy, not connected, stopping, window full, or
        the socket did not take everything)."""
        if not self.connected or self._stopping or not self.io_lock.acquire(False):
            return False
        try:
            c = self._client
            if c is None or not self.connected:
                return False
            self._pump(c)
            self._write(c)
            return (self._lost is None and c.socket() is not None and not self._wants_write(c)
                    and not self._outbox and not self._lane)
        finally:
            self.io_lock.release()

    def _step(self) -> None:
        now = time.monotonic()
        if self._stopping and (now >= self._hard_deadline or (
                self._client is None and (self._drained() or now >= self._flush_deadline))):
            self._finish()
            return
        c = self._client
        if c is None:
            if now < self._next_attempt:
                self._wait(min(self._next_attempt - now, _TICK_S))
            else:
                self._open()
            return
        if not self.connected and now >= self._conn_deadline:
            self._error(f"no CONNACK from {self.brokers.label} within "
                        f"{self._m.connect_timeout_s:g} s")
            self._end_session(None)
            return
        if self.connected:
            if self.subs_dirty:
                self._subscribe_new(c)
            self._pump(c)
            if self._stopping and self._stop_progress(c, now):
                return
        self._io(c)

    def _io(self, c: mqtt.Client) -> None:
        sock = c.socket()
        if sock is None:
            self._end_session("socket closed")
            return
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0  # select can't see these
        wlist = [sock] if self._wants_write(c) else []
        self.io_lock.release()  # producers may write while this thread waits
        try:
            r, _, _ = select.select([sock, self._wake_r], wlist, [], 0.0 if pending else _TICK_S)
        except (OSError, ValueError):  # a producer's write failed and paho closed the socket
            r = []
        finally:
            self.io_lock.acquire()
        if c is not self._client:
            return
        if self._wake_r in r:
            self._drain_wake()
        if sock in r or pending:
            c.loop_read()
        self._write(c)
        if c.socket() is not None:
            c.loop_misc()  # keepalive
        self._after_io(c)

    def _wants_write(self, c: mqtt.Client) -> bool:
        return self._raw.pending or c.want_write()

    def _write(self, c: mqtt.Client) -> None:
        """Non-blocking: our raw remainder first, then paho's queue (never paho's before ours)."""
        sock = c.socket()
        if sock is None:
            return
        if self._raw.pending:
            try:
                self.fl.sent += len(self._raw.flush(sock))
            except OSError as exc:
                self._lost = f"send failed: {exc}"
                return
            if self._raw.pending:
                return
        if c.want_write():
            c.loop_write()  # on a socket error paho closes it and says so in on_disconnect

    def _after_io(self, c: mqtt.Client) -> None:
        if self._connack is not None:
            props, self._connack = self._connack, None
            self._session_up(c, props)
        if self._lost is not None or c.socket() is None:
            self._end_session(self._lost or "connection closed")

    def _wait(self, timeout: float) -> None:
        r, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        if r:
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def _drained(self) -> bool:
        return not self._outbox and not self._lane and not self.fl

    # -- connection ------------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        c = new_client(self._cfg, self._creds, self.status_topic, self._paho_log)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _open(self) -> None:
        self.state = "connecting"
        c = self._new_client()
        host, port = self.brokers.next()
        self.connecting_since = time.monotonic()  # DNS inside connect() has no timeout of ours
        try:
            c.connect(host, port, keepalive=self._m.keepalive_s, **connect_options(self._m))
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
            self.connecting_since = None
            self._error(f"connect to {self.brokers.label} failed: {exc}")
            self.failures += 1
            close_client(c)
            self._schedule_retry()
            return
        self.connecting_since = None
        self._client = c
        self._conn_deadline = time.monotonic() + self._m.connect_timeout_s

    def _session_up(self, c: mqtt.Client, props: Any) -> None:
        self.connected, self.state = True, "connected"
        self.connects += 1
        self._backoff.reset()
        self.fl.session_started(props)
        c.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)  # before any backlog
        with self._lock:
            self._lane.connected()  # the retained state (discovery, ota/status) next, then the outbox
        self._subscribed.clear()
        self._subscribe_new(c)
        self.connected_event.set()
        log.info("MQTT connected to %s (connection %d, window %d, %d queued%s)", self.brokers.label,
                 self.connects, self.fl.window, len(self._outbox),
                 ", session resumed" if self.session_present else "")

    def _subscribe_new(self, c: mqtt.Client) -> None:
        """Make the broker's subscriptions match the dispatcher's table."""
        self.subs_dirty = False
        wanted = set(self._dispatch.filters())
        for f in sorted(wanted - self._subscribed):
            c.subscribe(f, qos=1)
        for f in sorted(self._subscribed - wanted):
            c.unsubscribe(f)
        self._subscribed = wanted

    def _end_session(self, reason: Optional[str]) -> None:
        c, self._client = self._client, None
        was = self.connected
        self.connected, self.state = False, "down"
        self.connected_event.clear()
        self._lost = self._connack = None
        self._stopped_mid = None
        if c is not None:
            close_client(c)
        back = self.fl.take_back(was) + self._raw.reset()
        with self._lock:
            lost = self._outbox.requeue(self._lane.requeue(back))
        if reason:
            detail = f": {self._paho_log.last}" if self._paho_log.last else ""
            self._error(f"{'connection lost' if was else 'connection failed'}: {reason}{detail}")
        self._paho_log.last = None
        self.failures += not was  # a connection attempt that never got a good CONNACK
        if back:
            log.info("re-queued %d unacknowledged message(s)%s", len(back) - lost,
                     f", {lost} dropped (outbox full)" if lost else "")
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self.state = "down"
        self._next_attempt = time.monotonic() + self._backoff.next_delay()

    def _error(self, text: str) -> None:
        if text != self.last_error:  # one log line per distinct problem, not per retry
            log.warning("MQTT: %s", text)
        self.last_error = text

    # -- sending ---------------------------------------------------------------------------------
    def _pump(self, c: mqtt.Client) -> None:
        lane: list[Message] = []
        if self._lane:  # the retained state goes to paho before any queued result (raw ones too)
            with self._lock:
                lane = self.fl.take(self._lane)
        if not lane and not self._raw.pending and not c.want_write():
            self._pump_raw(c)
        with self._lock:
            batch = self.fl.take(self._outbox)
            if not self._outbox:
                self._on_empty()
        if lane:
            batch = lane + batch
        for i, m in enumerate(batch):
            try:
                problem = self.fl.problem(m)
                if problem:  # re-sent after every reconnect it would block the outbox forever
                    raise ValueError(problem)
                info = c.publish(m.topic, m.payload, m.qos, m.retain)
            except (ValueError, TypeError) as exc:  # this message only
                self.fl.unreserve(m, rejected=True)
                log.error("dropping unpublishable message on %s: %s", m.topic, exc)
                continue
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # connection went away under us
                for rest in batch[i:]:
                    self.fl.unreserve(rest, rejected=False)
                with self._lock:
                    self._outbox.requeue(self._lane.requeue(batch[i:]))
                self._lost = f"publish: {mqtt.error_string(info.rc)}"
                return
            self.fl.handed(info.mid, m)

    def _pump_raw(self, c: mqtt.Client) -> None:
        """QoS 0 messages at the head of the outbox, packed and written in one ``send``
        (:mod:`agent.publish.rawq0`); only called while paho has nothing waiting to be written."""
        sock = c.socket()
        if sock is None:
            return
        msgs: list[Message] = []
        with self._lock:
            while self._outbox and len(msgs) < self._raw_batch:
                m = self._outbox.peek()
                if m is None or m.qos:
                    break
                msgs.append(self._outbox.pop())
            if not self._outbox:
                self._on_empty()
        if not msgs:
            return
        if self.fl.max_packet:
            ok = [m for m in msgs if not self.fl.problem(m)]
            for m in msgs:
                if m not in ok:
                    self.fl.rejected += 1
                    log.error("dropping unpublishable message on %s: %s", m.topic, self.fl.problem(m))
            msgs = ok
        try:
            self.fl.sent += self._raw.write(sock, msgs)
        except OSError as exc:
            with self._lock:
                self._outbox.requeue(msgs)
            self._lost = f"send failed: {exc}"

    def _stop_progress(self, c: mqtt.Client, now: float) -> bool:
        """Shutdown while connected: flush, then retained ``stopped``, then a clean DISCONNECT."""
        if self._stopped_mid is None:
            if self._drained() or now >= self._flush_deadline:
                self._stopped_acked = False
                self._stopped_mid = c.publish(self.status_topic, STATUS_STOPPED, qos=1, retain=True).mid
            return False
        if not (self._stopped_acked or now >= self._hard_deadline):
            return False
        c.disconnect()
        self._write(c)
        self._finish()
        return True

    def _finish(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            close_client(c)
        self.connected, self.state = False, "stopped"
        self.connected_event.clear()
        self.done.set()

    # -- paho callbacks (loop thread; record only) -------------------------------------------------
    @guarded
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, props: Any) -> None:
        if client is not self._client:
            return
        if rc.is_failure:
            hint = " (check mqtt.username and mqtt.password_file)" if rc.value in _AUTH_CODES else ""
            self._lost = f"refused by {self.brokers.label}: {rc}{hint}"
        else:
            self.session_present = bool(flags.session_present)
            self._connack = props

    @guarded
    def _on_disconnect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if client is self._client and self._lost is None:
            by = "DISCONNECT from broker" if flags.is_disconnect_packet_from_server else "socket closed"
            self._lost = f"{rc} ({by})"

    @guarded
    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if client is not self._client:
            return
        m = self.fl.completed(mid, failed=rc.is_failure)
        if m is None:
            if mid == self._stopped_mid:
                self._stopped_acked = True
        elif rc.is_failure:  # MQTT 5 PUBACK with an error reason (e.g. not authorised)
            self._error(f"broker refused a message on {m.topic}: {rc}")

    @guarded
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._dispatch.offer(msg.topic, bytes(msg.payload))

    @guarded
    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        for rc in rcs:
            if rc.is_failure:
                self._error(f"subscription refused: {rc}")
