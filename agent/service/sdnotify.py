"""The systemd notification protocol (sd_notify) without libsystemd: datagrams on ``$NOTIFY_SOCKET``.

The service manager hands the socket path in ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for
an abstract socket) and, when ``WatchdogSec=`` is set, the timeout in ``WATCHDOG_USEC`` (for the
process ``WATCHDOG_PID`` if given). Sending never raises and never blocks: the socket is
non-blocking, a failed send is dropped and logged once until a send succeeds again. Without
``NOTIFY_SOCKET`` (run by hand, in a container, in tests) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Optional

__all__ = ["Notifier", "parse_notify_socket", "parse_watchdog_usec"]

_log = logging.getLogger(__name__)

# STATUS= is shown by `systemctl status`; keep it one short line.
_STATUS_MAX = 200


def parse_notify_socket(value: Optional[str]) -> Optional[str]:
    """The address to ``sendto`` for a ``NOTIFY_SOCKET`` value, or None if unset/unsupported.

    ``@name`` is an abstract socket (leading NUL); only AF_UNIX is supported (``vsock:`` is not)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def parse_watchdog_usec(usec: Optional[str], pid: Optional[str], own_pid: int) -> Optional[float]:
    """The watchdog timeout in seconds meant for ``own_pid``, or None (no watchdog, bad value, other pid)."""
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != own_pid:
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to the service manager; safe from any thread."""

    def __init__(self, address: Optional[str], watchdog_s: Optional[float] = None) -> None:
        self._address = address
        self._watchdog_s = watchdog_s
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._failing = False  # a failure was logged; stay quiet until a send succeeds
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        address = parse_notify_socket(raw)
        if raw and address is None:
            _log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX socket; systemd notifications are off", raw)
        watchdog_s = parse_watchdog_usec(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), os.getpid())
        if env.get("WATCHDOG_USEC") and watchdog_s is None and not env.get("WATCHDOG_PID"):
            _log.warning("WATCHDOG_USEC=%r is not a positive integer; watchdog pings are off",
                         env.get("WATCHDOG_USEC"))
        return cls(address, watchdog_s)

    @property
    def enabled(self) -> bool:
        """True when a notification socket was given."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> Optional[float]:
        """The watchdog timeout (``WATCHDOG_USEC``) in seconds; ping at least twice per interval."""
        return self._watchdog_s if self.enabled else None

    def ready(self, status: str = "") -> bool:
        """Start-up is complete (only after the self-test passed)."""
        return self.notify("READY=1", *_status_field(status))

    def status(self, text: str) -> bool:
        """A one-line summary for ``systemctl status``."""
        return self.notify(*_status_field(text))

    def watchdog(self) -> bool:
        """Keep-alive ping; the caller decides that the process is really making progress."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1", *_status_field(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up/shutdown time (e.g. a slow model load on a small board)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if it was sent. Never raises or blocks."""
        if self._address is None or not fields:
            return False
        data = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.setblocking(False)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                self.failed += 1
                if not self._failing:
                    self._failing = True
                    _log.warning("systemd notification failed (further failures are not logged "
                                 "until one succeeds): %s", exc)
                return False
            if self._failing:
                self._failing = False
                _log.info("systemd notifications work again (%d failed in total)", self.failed)
            self.sent += 1
            return True

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status_field(text: str) -> tuple[str, ...]:
    if not text:
        return ()
    line = " ".join(text.split())  # one line: systemd would take a newline as the next field
    if len(line) > _STATUS_MAX:
        line = line[: _STATUS_MAX - 3] + "..."
    return (f"STATUS={line}",)
