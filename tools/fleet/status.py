"""``python -m tools.fleet status``: a live table of the fleet, or one JSON snapshot for scripts.

Subscribes to every device's ``status`` (retained), ``health`` and ``ota/status`` (retained).
Retained messages arrive at once; health needs up to one ``health.interval_s`` — hence ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Optional, TextIO

from ..ota.push import connect
from ..progress import Progress
from .common import add_broker_args, connection
from .view import FleetView, render_table

__all__ = ["add_args", "collect", "run"]

_CLEAR = "\x1b[H\x1b[2J"


def add_args(p: argparse.ArgumentParser) -> None:
    add_broker_args(p)
    p.add_argument("--json", action="store_true", help="JSON instead of a table (one document per refresh)")
    p.add_argument("--once", action="store_true", help="collect for --timeout seconds, print once, exit")
    p.add_argument("--timeout", type=float, default=12.0,
                   help="--once: seconds to listen (cover one health interval)")
    p.add_argument("--duration", type=float, default=0.0, help="live mode: exit after this many seconds (0 = never)")
    p.add_argument("--refresh", type=float, default=2.0, help="live mode: seconds between redraws")
    p.add_argument("--expect", type=int, default=0,
                   help="--once: return as soon as this many devices have sent health")


class _Feed:
    """Thread-safe wrapper: paho's network thread calls ``on_message``; the main thread reads."""

    def __init__(self, prefix: str) -> None:
        self.view = FleetView(prefix)
        self.lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes, retained: bool = False) -> None:
        with self.lock:
            self.view.handle(topic, payload, time.monotonic())

    def healthy(self) -> int:
        with self.lock:
            return sum(1 for r in self.view.devices.values() if r.health_at is not None)


# The reads subscribe at QoS 0: retained state and periodic health lose nothing that matters by it,
# and a clustered broker (NATS) backs each QoS 1 subscription with a JetStream consumer, which it
# cannot create for seconds after losing a node.


def collect(args: argparse.Namespace, timeout: float, expect: int = 0,
            progress: Optional[Progress] = None) -> FleetView:
    """Listen for ``timeout`` seconds (or until ``expect`` devices sent health) and return the view;
    ``progress`` is told how many devices have sent health so far."""
    feed = _Feed(args.prefix)
    client, _ = connect(connection(args, "status"), feed.on_message, feed.view.topics(), qos=0)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            healthy = feed.healthy()
            if progress is not None:
                progress.set(healthy)
            if expect and healthy >= expect:
                break
            time.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()
    return feed.view


def _emit(view: FleetView, as_json: bool, out: TextIO, clear: bool) -> None:
    now = time.monotonic()
    text = json.dumps(view.to_json(now), sort_keys=True) if as_json else render_table(view, now)
    out.write((_CLEAR if clear else "") + text + "\n")
    out.flush()


def run(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    out = out or sys.stdout
    try:
        if args.once:
            _emit(collect(args, args.timeout, args.expect), args.json, out, clear=False)
            return 0
        feed = _Feed(args.prefix)
        client, _ = connect(connection(args, "status"), feed.on_message, feed.view.topics(), qos=0)
    except (OSError, TimeoutError) as exc:
        print(f"fleet status: cannot reach the broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    try:
        while time.monotonic() < end:
            with feed.lock:
                _emit(feed.view, args.json, out, clear=not args.json and out.isatty())
            time.sleep(max(0.2, args.refresh))
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return 0
