"""``digit-agent-fleet retire``: remove what a decommissioned device left on the broker.

A device's retained messages outlive it: ``<prefix>/<id>/status`` (``online``/``stopped``/``offline``),
``<prefix>/<id>/ota/status`` and its Home Assistant discovery configs, which keep an unavailable
device in Home Assistant forever. Retire subscribes to ``<prefix>/<id>/#`` and ``<ha_prefix>/#``,
collects the retained messages the broker hands over, and clears (empty retained payload) those of
the device: everything under its own topic, and every discovery config that names it — in either
the device-based form (``<ha_prefix>/device/<id>/config``) or the single-component form
(``<ha_prefix>/<component>/[<id>/]<object>/config``) — recognised by the device identifier
``digit_agent_<id>`` or by a topic of the device inside the config. A device that still reports
``online`` is refused without ``--force`` (it would publish its status again).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from ..ota.push import connect
from .common import add_broker_args, connection

__all__ = ["add_args", "belongs_to", "collect_retained", "run"]


def add_args(p: argparse.ArgumentParser) -> None:
    add_broker_args(p)
    p.add_argument("--device", action="append", required=True, help="device id to retire; repeatable")
    p.add_argument("--ha-prefix", default="homeassistant", help="Home Assistant discovery prefix "
                   "(the devices' homeassistant.prefix)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds without a new retained message that end the collection")
    p.add_argument("--timeout", type=float, default=30.0, help="longest time to collect retained messages")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--force", action="store_true", help="retire a device that still reports online")


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []


def belongs_to(topic: str, payload: bytes, device: str, prefix: str, ha_prefix: str) -> bool:
    """Is this retained message the device's: under its own topic, or a discovery config naming it?"""
    if topic.startswith(f"{prefix}/{device}/"):
        return True
    if not (topic.startswith(ha_prefix + "/") and topic.endswith("/config")):
        return False
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    dev = doc.get("device", doc.get("dev")) or {}
    ids = dev.get("identifiers", dev.get("ids", [])) if isinstance(dev, dict) else []
    if f"digit_agent_{device}" in ([ids] if isinstance(ids, str) else _strings(ids)):
        return True
    # A config that reads or commands the device's topics (the "~" base topic may abbreviate them).
    own = f"{prefix}/{device}"
    return any(s == own or s.startswith(own + "/") for s in _strings(doc))


def collect_retained(args: argparse.Namespace, topics: list[str]) -> dict[str, bytes]:
    """Retained messages on ``topics``: until none came for ``--settle`` s, at most ``--timeout`` s."""
    got: dict[str, bytes] = {}
    lock = threading.Lock()
    last = [time.monotonic()]

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if retained and payload:
            with lock:
                got[topic] = payload
                last[0] = time.monotonic()

    client, _ = connect(connection(args, "retire"), on_message, topics)
    try:
        end = time.monotonic() + args.timeout
        last[0] = time.monotonic()
        while time.monotonic() < end:
            with lock:
                if time.monotonic() - last[0] >= args.settle:
                    break
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    with lock:
        return dict(got)


def _clear(args: argparse.Namespace, topics: list[str]) -> None:
    client, _ = connect(connection(args, "retire-clear"), lambda *_: None, [])
    try:
        infos = [client.publish(t, b"", qos=1, retain=True) for t in topics]
        for t, info in zip(topics, infos):
            info.wait_for_publish(timeout=10.0)
            if info.rc != mqtt.MQTT_ERR_SUCCESS or not info.is_published():
                raise TimeoutError(f"the broker did not acknowledge clearing {t}")
    finally:
        client.disconnect()
        client.loop_stop()


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 retired (or nothing to remove), 1 refused (device online), 2 broker error."""
    devices: list[str] = args.device
    subs = [f"{args.prefix}/{d}/#" for d in devices] + [f"{args.ha_prefix}/#"]
    try:
        retained = collect_retained(args, subs)
        mine = {d: sorted(t for t, p in retained.items() if belongs_to(t, p, d, args.prefix, args.ha_prefix))
                for d in devices}
        online = [d for d in devices if retained.get(f"{args.prefix}/{d}/status", b"").strip() == b"online"]
        if online and not args.force:
            print(f"fleet retire: {', '.join(online)} still reports online; stop the device first "
                  f"(or --force)", file=sys.stderr)
            return 1
        for d in devices:
            verb = "would remove" if args.dry_run else "removing"
            print(f"{d}: {verb} {len(mine[d])} retained message(s)" + ("" if mine[d] else " (none found)"))
            for t in mine[d]:
                print(f"  {t}")
        if args.dry_run:
            return 0
        todo = [t for d in devices for t in mine[d]]
        if todo:
            _clear(args, todo)
            left = collect_retained(args, todo)
            if left:
                print(f"fleet retire: still retained after clearing: {sorted(left)}", file=sys.stderr)
                return 2
            print(f"removed {len(todo)} retained message(s); checked: none left")
    except (OSError, TimeoutError) as exc:
        print(f"fleet retire: cannot reach the broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0
