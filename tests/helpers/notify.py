"""A fake systemd: a datagram socket at ``NOTIFY_SOCKET`` that records what the daemon says."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

__all__ = ["NotifyListener"]


class NotifyListener:
    """What systemd does: a datagram socket; ``env`` is the NOTIFY_SOCKET value to hand out."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: Optional[str] = None
        if abstract:
            name = f"digit-agent-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="sdn")  # short: AF_UNIX paths are limited to 108 bytes
            self.env = os.path.join(self._dir, "notify")
            self.sock.bind(self.env)

    def recv(self, timeout: float = 10.0) -> Optional[str]:
        """The next datagram, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except socket.timeout:
            return None

    def drain(self) -> list[str]:
        out: list[str] = []
        while (msg := self.recv(0.01)) is not None:
            out.append(msg)
        return out

    def wait_for(self, field: str, timeout: float = 30.0) -> list[str]:
        """Datagrams received until one holding ``field`` (a ``KEY=VALUE`` line); raises on timeout."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                break
            seen.append(msg)
            if field in msg.split("\n"):
                return seen
        raise AssertionError(f"{field} not received within {timeout} s; got {seen[-5:]}")

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            Path(self.env).unlink(missing_ok=True)
            os.rmdir(self._dir)

