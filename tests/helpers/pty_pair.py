"""A real pseudo-terminal pair: the daemon opens ``slave_path`` like a serial device."""

from __future__ import annotations

import contextlib
import os
import pty
import tty

__all__ = ["PtyPair"]


class PtyPair:
    def __init__(self) -> None:
        self.master_fd, self.slave_fd = pty.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self.slave_fd)
        self.slave_path = os.ttyname(self.slave_fd)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master_fd, view)
            view = view[n:]

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
