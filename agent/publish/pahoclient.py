"""paho-mqtt plumbing shared by the network loop: client construction, log capture, guards.

Kept apart from :mod:`agent.publish.session` so the loop reads as a state machine.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any, Optional, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.schema import Config, MqttConfig
from agent.publish.auth import Credentials
from agent.publish.payloads import STATUS_OFFLINE

__all__ = ["PahoLog", "close_client", "connect_options", "guarded", "new_client"]

log = logging.getLogger(__name__)
_paho_log = logging.getLogger("agent.publish.paho")


class PahoLog:
    """Forwards paho's log calls to our logger and remembers the last error (e.g. a TLS alert),
    which paho reports only in its log, so ``last_error`` can say why a connection failed."""

    def __init__(self) -> None:
        self.last: Optional[str] = None

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if level >= logging.ERROR:
            self.last = fmt % args
        _paho_log.log(level, fmt, *args)


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """paho callbacks must never raise: log and carry on."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("MQTT callback %s failed", fn.__name__)

    return wrapper


def new_client(cfg: Config, creds: Credentials, status_topic: str, paho_log: PahoLog) -> mqtt.Client:
    """A fresh client (one per connection) with the Last Will, credentials and our limits set;
    the caller sets the callbacks."""
    m = cfg.mqtt
    v5 = m.protocol == "5"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                    clean_session=None if v5 else not m.session_expiry_s)
    c.suppress_exceptions = True
    c.enable_logger(cast(logging.Logger, paho_log))  # paho only calls .log()
    # With a register-write hook paho only queues in publish(); all writes happen in our loop,
    # so on_publish never fires inside publish() and no write blocks the caller.
    c.on_socket_register_write = _noop
    c.max_inflight_messages_set(0)  # we bound in-flight ourselves; paho must never hold back
    c.max_queued_messages_set(0)
    c.connect_timeout = m.connect_timeout_s
    c.will_set(status_topic, STATUS_OFFLINE, qos=1, retain=True)
    if creds.username:
        c.username_pw_set(creds.username, creds.password)
    if creds.tls is not None:
        c.tls_set_context(creds.tls)
    return c


def connect_options(m: MqttConfig) -> dict[str, Any]:
    """``connect()``'s session arguments. MQTT 5: a clean start, or with ``session_expiry_s`` the
    session kept that long (a cluster that replicates sessions resumes it on another node with its
    subscriptions and queued QoS 1 messages). MQTT 3.1.1 has no expiry: ``clean_session`` above."""
    if m.protocol != "5":
        return {}
    if not m.session_expiry_s:
        return {"clean_start": True}
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = m.session_expiry_s
    return {"clean_start": False, "properties": props}


def close_client(c: mqtt.Client) -> None:
    """Drop a paho client's socket without a DISCONNECT (that would cancel the Last Will)."""
    sock = c.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _noop(*_args: Any) -> None:
    pass
