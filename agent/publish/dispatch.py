"""Runs subscription handlers on one worker thread, fed by a bounded queue.

paho's ``on_message`` only calls :meth:`Dispatcher.offer` (never blocks, never raises); a slow
or failing handler can therefore never stall the network loop. When the queue is full the new
message is dropped and counted (the network loop must not wait).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Optional

from paho.mqtt.client import topic_matches_sub

__all__ = ["Dispatcher", "Handler"]

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]


class Dispatcher:
    """Topic filter → handler table plus the worker thread that calls them."""

    def __init__(self, maxsize: int, name: str = "mqtt-dispatch") -> None:
        self._q: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize)
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._name = name
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.received = 0
        self.dropped = 0
        self.errors = 0
        self.restarts = 0

    # -- table --------------------------------------------------------------------------------
    def add(self, topic_filter: str, handler: Handler) -> None:
        with self._lock:
            self._handlers[topic_filter] = handler

    def remove(self, topic_filter: str) -> bool:
        with self._lock:
            return self._handlers.pop(topic_filter, None) is not None

    def filters(self) -> list[str]:
        with self._lock:
            return list(self._handlers)

    def _matching(self, topic: str) -> list[Handler]:
        with self._lock:
            return [h for f, h in self._handlers.items() if f == topic or topic_matches_sub(f, topic)]

    # -- producer side (paho callback) ---------------------------------------------------------
    def offer(self, topic: str, payload: bytes) -> None:
        try:
            self._q.put_nowait((topic, payload))
            self.received += 1
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("subscription queue full: dropped %d message(s) so far (last on %s)",
                            self.dropped, topic)

    # -- worker ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._closed.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """True while the worker runs; a dead worker (only a BaseException can end it) is restarted."""
        if self._closed.is_set() or (self._thread is not None and self._thread.is_alive()):
            return True
        log.error("subscription dispatcher thread died; restarting it")
        self.restarts += 1
        self.start()
        return False

    def close(self, timeout: float) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                topic, payload = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            for handler in self._matching(topic):
                try:
                    handler(topic, payload)
                except Exception:  # a handler bug must not end the worker
                    self.errors += 1
                    log.exception("handler %r failed on %s", handler, topic)
