"""The daemon's SIGTERM/SIGINT handler: lock-free, so it cannot deadlock the main (inference) thread."""

from __future__ import annotations

import signal
import threading

from agent.config import parse_config
from agent.daemon import Daemon
from agent.ring import FrameRing


def test_signal_handler_takes_no_ring_lock() -> None:
    # The handler runs on the main thread, which is the inference loop; if it took the ring's lock
    # while the loop held it inside take()/release(), the process would hang forever. Here the test
    # holds that lock and runs the handler on a helper thread, so a regression fails, not hangs.
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        daemon = Daemon(parse_config(""))
        daemon._install_signals()
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and signal.getsignal(signal.SIGINT) is handler
        daemon.ring = FrameRing(4, 28, 28)
        with daemon.ring._lock:
            t = threading.Thread(target=handler, args=(signal.SIGTERM, None), daemon=True)
            t.start()
            t.join(2.0)
            blocked = t.is_alive()
        t.join(2.0)
        assert not blocked, "the signal handler waited for the ring's lock"
        assert daemon.stop.is_set() and daemon._signal == signal.SIGTERM
        handler(signal.SIGINT, None)  # a second signal (during the shutdown flush) is harmless
        assert daemon.stop.is_set()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
