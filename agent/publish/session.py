"""The network-loop thread behind :class:`~agent.publish.client.Publisher`.

One :class:`Session` object lives as long as the publisher; it creates a fresh paho client for
every connection (so paho never re-sends on its own) and drives it with ``select`` on the
client socket plus the publisher's wake socket. Everything here runs on the loop thread,
except the few attributes read by ``stats()`` (plain ints/strs: a torn read is impossible).
paho callbacks only record what happened; the loop acts on it after the paho call returns.
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
from agent.publish.dispatch import Dispatcher
from agent.publish.inflight import Inflight
from agent.publish.outbox import Outbox
from agent.publish.pahoclient import PahoLog, close_client, guarded, new_client
from agent.publish.payloads import STATUS_ONLINE, STATUS_STOPPED

__all__ = ["Session"]

log = logging.getLogger(__name__)

_TICK_S = 0.5  # longest select(): bounds keepalive handling and stop latency
_AUTH_CODES = (0x86, 0x87)  # bad user name or password, not authorised (v3 codes 4/5 map here)


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
        return not self._outbox and not self.fl

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
        kw: dict[str, Any] = {"clean_start": True} if self._m.protocol == "5" else {}
        self.connecting_since = time.monotonic()  # DNS inside connect() has no timeout of ours
        try:
            c.connect(self._m.host, self._m.port, keepalive=self._m.keepalive_s, **kw)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket.timeout are OSErrors
            self.connecting_since = None
            self._error(f"connect to {self._m.host}:{self._m.port} failed: {exc}")
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
        self._subscribed.clear()
        self._subscribe_new(c)
        self.connected_event.set()
        log.info("MQTT connected to %s:%d (connection %d, window %d, %d queued)", self._m.host,
                 self._m.port, self.connects, self.fl.window, len(self._outbox))

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
        back = self.fl.take_back(was)
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

    def _schedule_retry(self) -> None:
        self.state = "down"
        self._next_attempt = time.monotonic() + self._backoff.next_delay()

    def _error(self, text: str) -> None:
        if text != self.last_error:  # one log line per distinct problem, not per retry
            log.warning("MQTT: %s", text)
        self.last_error = text

    # -- sending ---------------------------------------------------------------------------------
    def _pump(self, c: mqtt.Client) -> None:
        with self._lock:
            batch = self.fl.take(self._outbox)
            if not self._outbox:
                self._on_empty()
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
                    self._outbox.requeue(batch[i:])
                self._lost = f"publish: {mqtt.error_string(info.rc)}"
                return
            self.fl.handed(info.mid, m)

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
            close_client(c)
        self.connected, self.state = False, "stopped"
        self.connected_event.clear()
        self.done.set()

    # -- paho callbacks (loop thread; record only) -------------------------------------------------
    @guarded
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, props: Any) -> None:
        if client is not self._client:
            return
        if rc.is_failure:
            hint = " (check mqtt.username and mqtt.password_file)" if rc.value in _AUTH_CODES else ""
            self._lost = f"refused: {rc}{hint}"
        else:
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
