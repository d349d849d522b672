"""Polling until a condition holds: a safety net for tests, never a measured assertion."""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["wait_until"]


def wait_until(pred: Callable[[], object], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``pred`` every ``interval`` s until it is true or ``timeout`` s passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
