"""Broker options shared by the fleet and OTA commands; the connection itself is tools.ota.push's."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..ota.push import Connection

__all__ = ["add_broker_args", "connection"]


def add_broker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    g.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    g.add_argument("--prefix", default="digit-agent", help="topic prefix of the devices (their mqtt.topic_prefix)")
    g.add_argument("--username", default="", help="MQTT user name (empty: anonymous)")
    g.add_argument("--password-file", default="", help="file holding the password (never on the command line)")
    g.add_argument("--tls-ca", default="", help="CA bundle; turns TLS on")
    g.add_argument("--protocol", default="5", choices=("5", "3.1.1"),
                   help="MQTT version; 3.1.1 for a broker without MQTT 5 (a NATS cluster)")


def connection(args: argparse.Namespace, role: str) -> Connection:
    """A :class:`Connection` with a client id unique to this process (two operators never collide)."""
    password = Path(args.password_file).read_text().strip() if args.password_file else ""
    return Connection(host=args.host, port=args.port, username=args.username, password=password,
                      tls_ca=args.tls_ca, client_id=f"digit-agent-{role}-{os.getpid()}", protocol=args.protocol)
