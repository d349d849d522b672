"""Notifier against a real AF_UNIX datagram listener (filesystem and abstract sockets)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.service.sdnotify import Notifier, parse_notify_socket, parse_watchdog_usec
from tests.helpers.notify import NotifyListener


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[NotifyListener]:
    lst = NotifyListener(abstract=request.param)
    try:
        yield lst
    finally:
        lst.close()


def test_parse_notify_socket() -> None:
    assert parse_notify_socket("/run/systemd/notify") == "/run/systemd/notify"
    assert parse_notify_socket("@sd-notify") == "\0sd-notify"
    assert parse_notify_socket("vsock:2:1234") is None
    assert parse_notify_socket("relative/path") is None
    assert parse_notify_socket("") is None
    assert parse_notify_socket(None) is None


def test_parse_watchdog_usec() -> None:
    assert parse_watchdog_usec("30000000", None, 42) == 30.0
    assert parse_watchdog_usec("30000000", "42", 42) == 30.0
    assert parse_watchdog_usec("30000000", "43", 42) is None  # meant for another process
    assert parse_watchdog_usec("30000000", "x", 42) is None
    assert parse_watchdog_usec("0", None, 42) is None
    assert parse_watchdog_usec("-5", None, 42) is None
    assert parse_watchdog_usec("abc", None, 42) is None
    assert parse_watchdog_usec(None, None, 42) is None


def test_messages_arrive(listener: NotifyListener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env})
    assert n.enabled
    assert n.ready("serving model v3")
    assert listener.recv() == "READY=1\nSTATUS=serving model v3"
    assert n.status("line one\nline two\tand more")  # a newline would start a new field
    assert listener.recv() == "STATUS=line one line two and more"
    assert n.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    assert n.extend_timeout(12.5)
    assert listener.recv() == "EXTEND_TIMEOUT_USEC=12500000"
    assert n.stopping()
    assert listener.recv() == "STOPPING=1"
    assert n.sent == 5 and n.failed == 0
    n.close()


def test_long_status_is_cut_to_one_short_line(listener: NotifyListener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env})
    n.status("x" * 1000)
    msg = listener.recv()
    assert msg is not None and msg.startswith("STATUS=xxx") and msg.endswith("...")
    assert len(msg) <= len("STATUS=") + 200


def test_watchdog_interval_from_env(listener: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "4000000"}
    assert Notifier.from_env(env).watchdog_interval_s == 4.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 4.0
    assert Notifier.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval_s is None
    # No socket: nowhere to send pings, so no watchdog either.
    assert Notifier.from_env({"WATCHDOG_USEC": "4000000"}).watchdog_interval_s is None


def test_without_notify_socket_everything_is_a_quiet_no_op(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()
    assert n.sent == 0 and n.failed == 0
    assert not caplog.records


def test_unsupported_socket_is_reported_and_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        n = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:999"})
    assert not n.enabled and not n.ready()
    assert "vsock:2:999" in caplog.text


def test_missing_socket_never_raises_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    path = str(Path(tempfile.mkdtemp(prefix="sdn")) / "notify")
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    with caplog.at_level(logging.INFO, logger="agent.service.sdnotify"):
        results = [n.watchdog() for _ in range(5)]
        assert results == [False] * 5 and n.failed == 5
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        # The manager comes (back): sending works again, and that is said once.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            assert n.watchdog()
            assert sock.recv(100) == b"WATCHDOG=1"
            assert "work again" in caplog.text
        finally:
            sock.close()
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


def test_full_socket_does_not_block(listener: NotifyListener, caplog: pytest.LogCaptureFixture) -> None:
    """A manager that does not read: the queue fills (net.unix.max_dgram_qlen), sends fail fast."""
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env})
    results: list[bool] = []

    def flood() -> None:
        results.extend(n.status(f"message {i}") for i in range(5000))

    with caplog.at_level(logging.WARNING, logger="agent.service.sdnotify"):
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t.join(60)  # a blocking send would hang here forever
        assert not t.is_alive(), "sending blocked on a full notification socket"
    assert len(results) == 5000
    assert False in results and n.failed > 0
    assert len(caplog.records) == 1  # logged once, not 4000 times
    listener.drain()
    assert n.watchdog()  # and it recovers as soon as there is room
