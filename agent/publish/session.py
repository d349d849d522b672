"""The network-loop thread behind :class:`~agent.publish.client.Publisher`.

One :class:`Session` object lives as long as the publisher; it creates a fresh paho client for
every connection (so paho never re-sends on its own) and drives it with ``select`` on the
client socket plus the publisher's wake socket. Everything here runs on the loop thread,
except the few attributes read by ``stats()`` (plain ints/strs: a torn read is impossible).
paho callbacks only record what happened; the loop acts on it after the paho call returns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Optional, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.schema import Config
from agent.publish.auth import Credentials
from agent.publish.dispatch import Dispatcher
from agent.publish.outbox import Message, Outbox
from agent.publish.payloads import STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED
from agent.source.base import Backoff

__all__ = ["Session"]

log = logging.getLogger(__name__)
_paho_log = logging.getLogger(__name__ + ".paho")

_QOS0_WINDOW = 256  # QoS 0 messages handed to paho but not yet written to the socket
_BATCH = 256  # messages moved from the outbox per lock hold (bounds the inference thread's wait)
_TICK_S = 0.5  # longest select(): bounds keepalive handling and stop latency
_POISON_STRIKES = 3
_AUTH_CODES = (0x86, 0x87)  # bad user name or password, not authorised (v3 codes 4/5 map here)


class _PahoLog:
    """Forwards paho's log calls to our logger and remembers the last error (e.g. a TLS alert),
    which paho reports only in its log, so ``last_error`` can say why a connection failed."""

    def __init__(self) -> None:
        self.last: Optional[str] = None

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level >= logging.ERROR:
            self.last = fmt % args
        _paho_log.log(level, fmt, *args)


def _callback(fn: Callable[..., None]) -> Callable[..., None]:
    """paho callbacks must never raise: log and carry on."""

    @functools.wraps(fn)
    def guarded(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__name__)

    return guarded


class Session:
    def __init__(self, cfg: Config, creds: Credentials, outbox: Outbox, lock: threading.Lock,
                 dispatch: Dispatcher, wake_r: socket.socket, on_empty: Callable[[], None]) -> None:
        self._cfg, self._m, self._creds = cfg, cfg.mqtt, creds
        self._outbox, self._lock, self._dispatch = outbox, lock, dispatch
        self._wake_r, self._on_empty = wake_r, on_empty
        self.status_topic = cfg.topic("status")
        self._backoff = Backoff(self._m.reconnect_min_s, self._m.reconnect_max_s)
        self._client: Optional[mqtt.Client] = None
        self._next_attempt = 0.0
        self._conn_deadline = 0.0
        self._inflight: dict[int, Message] = {}
        self._n_q0 = self._n_q1 = 0
        self._window = self._m.max_inflight
        self._suspect: Optional[Message] = None  # oldest un-acked message when a session died
        self._strikes = 0
        self._acked_at_connect = 0
        self._max_packet = 0  # broker's Maximum Packet Size (MQTT 5 CONNACK); 0 = none announced
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
        self.connects = self.failures = self.sent = self.acked = self.rejected = 0
        self.loop_restarts = 0
        self.last_error: Optional[str] = None
        self.beat = time.monotonic()
        self._paho_log = _PahoLog()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

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
                self._step()
            except Exception as exc:  # never let the loop die: drop the connection and retry
                log.exception("MQTT network loop error")
                self._error(f"network loop: {exc!r}")
                self._end_session(None)
                self._wait(0.2)

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
            self._error(f"no CONNACK from {self._m.host}:{self._m.port} within "
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
        wlist = [sock] if c.want_write() else []
        r, _, _ = select.select([sock, self._wake_r], wlist, [], 0.0 if pending else _TICK_S)
        if self._wake_r in r:
            self._drain_wake()
        if sock in r or pending:
            c.loop_read()
        if c.socket() is not None and c.want_write():
            c.loop_write()  # non-blocking: writes what the socket takes now
        if c.socket() is not None:
            c.loop_misc()  # keepalive
        self._after_io(c)

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
        return not self._outbox and not self._inflight

    # -- connection ------------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        v5 = self._m.protocol == "5"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._cfg.client_id,
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                        clean_session=None if v5 else True)
        c.suppress_exceptions = True
        c.enable_logger(cast(logging.Logger, self._paho_log))  # paho only calls .log()
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        # With a register-write hook paho only queues in publish(); all writes happen in _io.
        c.on_socket_register_write = _noop
        c.max_inflight_messages_set(0)  # we bound in-flight ourselves; paho must never hold back
        c.max_queued_messages_set(0)
        c.connect_timeout = self._m.connect_timeout_s
        c.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        if self._creds.username:
            c.username_pw_set(self._creds.username, self._creds.password)
        if self._creds.tls is not None:
            c.tls_set_context(self._creds.tls)
        return c

    def _open(self) -> None:
        self.state = "connecting"
        c = self._new_client()
        kw: dict[str, Any] = {"clean_start": True} if self._m.protocol == "5" else {}
        try:
            c.connect(self._m.host, self._m.port, keepalive=self._m.keepalive_s, **kw)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
            self._error(f"connect to {self._m.host}:{self._m.port} failed: {exc}")
            self.failures += 1
            _close(c)
            self._schedule_retry()
            return
        self._client = c
        self._conn_deadline = time.monotonic() + self._m.connect_timeout_s

    def _session_up(self, c: mqtt.Client, props: Any) -> None:
        self.connected, self.state = True, "connected"
        self.connects += 1
        self._backoff.reset()
        receive_max = getattr(props, "ReceiveMaximum", None)
        self._window = min(self._m.max_inflight, receive_max or self._m.max_inflight)
        self._max_packet = int(getattr(props, "MaximumPacketSize", 0) or 0)
        self._acked_at_connect = self.acked
        c.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)  # before any backlog
        self._subscribed.clear()
        self._subscribe_new(c)
        self.connected_event.set()
        log.info("MQTT connected to %s:%d (connection %d, window %d, %d queued)", self._m.host,
                 self._m.port, self.connects, self._window, len(self._outbox))

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
            _close(c)
        back = list(self._inflight.values())  # insertion order = the order they were handed out
        self._inflight.clear()
        self._n_q0 = self._n_q1 = 0
        if was and back:
            self._check_poison(back)
        with self._lock:
            lost = self._outbox.requeue(back)
        if reason:
            detail = f": {self._paho_log.last}" if self._paho_log.last else ""
            self._error(f"{'connection lost' if was else 'connection failed'}: {reason}{detail}")
        self._paho_log.last = None
        self.failures += not was  # a connection attempt that never got a good CONNACK
        if back:
            log.info("re-queued %d unacknowledged message(s)%s", len(back) - lost,
                     f", {lost} dropped (outbox full)" if lost else "")
        self._schedule_retry()

    def _check_poison(self, back: list[Message]) -> None:
        """A message the broker kills the connection over (e.g. too large for an MQTT 3.1.1 broker,
        which cannot announce its limit) would be re-sent forever and block everything behind it:
        after _POISON_STRIKES sessions in a row that died without a single ack with the same
        oldest message, that message is rejected."""
        if self.acked == self._acked_at_connect and back[0] is self._suspect:
            self._strikes += 1
        else:
            self._suspect, self._strikes = back[0], 1
        if self._strikes >= _POISON_STRIKES:
            bad = back.pop(0)
            self._suspect, self._strikes = None, 0
            self.rejected += 1
            log.error("dropping a message on %s (%d bytes): the connection died %d times in a row "
                      "with it in flight", bad.topic, len(bad.payload), _POISON_STRIKES)

    def _schedule_retry(self) -> None:
        self.state = "down"
        self._next_attempt = time.monotonic() + self._backoff.next_delay()

    def _error(self, text: str) -> None:
        if text != self.last_error:  # one log line per distinct problem, not per retry
            log.warning("MQTT: %s", text)
        self.last_error = text

    # -- sending ---------------------------------------------------------------------------------
    def _pump(self, c: mqtt.Client) -> None:
        batch: list[Message] = []
        with self._lock:
            ob = self._outbox
            while ob and len(batch) < _BATCH:
                m = ob.peek()
                assert m is not None
                if m.qos:
                    if self._n_q1 >= self._window:
                        break
                    self._n_q1 += 1
                elif self._n_q0 >= _QOS0_WINDOW:
                    break
                else:
                    self._n_q0 += 1
                batch.append(ob.pop())
            if not ob:
                self._on_empty()
        for i, m in enumerate(batch):
            try:
                if self._max_packet and _packet_size(m) > self._max_packet:
                    # The broker would drop the connection; re-sending it after every reconnect
                    # would block the outbox forever.
                    raise ValueError(f"{_packet_size(m)} bytes exceed the broker's maximum packet "
                                     f"size {self._max_packet}")
                info = c.publish(m.topic, m.payload, m.qos, m.retain)
            except (ValueError, TypeError) as exc:  # e.g. payload too large: this message only
                self._forget(m)
                self.rejected += 1
                log.error("dropping unpublishable message on %s: %s", m.topic, exc)
                continue
            if info.rc != mqtt.MQTT_ERR_SUCCESS:  # connection went away under us
                for rest in batch[i:]:
                    self._forget(rest)
                with self._lock:
                    self._outbox.requeue(batch[i:])
                self._lost = f"publish: {mqtt.error_string(info.rc)}"
                return
            self._inflight[info.mid] = m

    def _forget(self, m: Message) -> None:
        if m.qos:
            self._n_q1 -= 1
        else:
            self._n_q0 -= 1

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
        c.loop_write()
        self._finish()
        return True

    def _finish(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            _close(c)
        self.connected, self.state = False, "stopped"
        self.connected_event.clear()
        self.done.set()

    # -- paho callbacks (loop thread; record only) -------------------------------------------------
    @_callback
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, props: Any) -> None:
        if client is not self._client:
            return
        if rc.is_failure:
            hint = " (check mqtt.username and mqtt.password_file)" if rc.value in _AUTH_CODES else ""
            self._lost = f"refused: {rc}{hint}"
        else:
            self._connack = props

    @_callback
    def _on_disconnect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if client is self._client and self._lost is None:
            by = "DISCONNECT from broker" if flags.is_disconnect_packet_from_server else "socket closed"
            self._lost = f"{rc} ({by})"

    @_callback
    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if client is not self._client:
            return
        m = self._inflight.pop(mid, None)
        if m is None:
            if mid == self._stopped_mid:
                self._stopped_acked = True
            return
        self._forget(m)
        if rc.is_failure:  # MQTT 5 PUBACK with an error reason (e.g. not authorised)
            self.rejected += 1
            self._error(f"broker refused a message on {m.topic}: {rc}")
        else:
            self.sent += 1
            self.acked += m.qos > 0

    @_callback
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._dispatch.offer(msg.topic, bytes(msg.payload))

    @_callback
    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[Any], _p: Any) -> None:
        for rc in rcs:
            if rc.is_failure:
                self._error(f"subscription refused: {rc}")


def _packet_size(m: Message) -> int:
    """Upper bound of the PUBLISH packet size (fixed header 5, topic 2+n, packet id 2, props 1)."""
    return 10 + len(m.topic.encode()) + len(m.payload)


def _noop(*_args: Any) -> None:
    pass


def _close(c: mqtt.Client) -> None:
    """Drop a paho client's socket without a DISCONNECT (that would cancel the Last Will)."""
    sock = c.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
