"""Shared fixtures: a real mosquitto per test (free loopback port) and pty pairs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.broker import Broker
from tests.helpers.notify import NotifyListener
from tests.helpers.pty_pair import PtyPair

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def pty_pair() -> Iterator[PtyPair]:
    p = PtyPair()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    """A fake systemd notification socket (``NOTIFY_SOCKET``)."""
    lst = NotifyListener()
    try:
        yield lst
    finally:
        lst.close()
