"""A small MQTT 3.1.1 broker in pure Python, for make demo on a machine without mosquitto.

Why not a broker from the package index: it would be a download at demo time (no network, no
demo), a second dependency tree next to the daemon's (amqtt pins its own psutil and needs Python
≥ 3.10), and one more thing that can fail silently. This one ships with the repository, starts in
a fraction of a second on any Python the daemon runs on, and logs its errors to stderr.

What it does (what the daemon, the demo and paho need): CONNECT with will and keepalive, QoS 0/1/2
in both directions, retained messages, + and # filters (not matching $… topics at the first
level), UNSUBSCRIBE, PING, a second connection with the same client id replacing the first. What
it does not: MQTT 5 (refused with CONNACK 1), persistent sessions (every session is clean),
redelivery, authentication (any username/password is accepted), TLS. It is a demo broker: the
test suite runs the daemon against mosquitto.

    python -m tools.minibroker --port 1883        # 127.0.0.1 only; Ctrl-C or SIGTERM stops it
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import struct
from typing import Dict, List, Optional, Set, Tuple

__all__ = ["Broker", "main", "topic_matches"]

log = logging.getLogger("minibroker")

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
MAX_PACKET = 4 << 20  # a bigger "remaining length" is a broken or hostile client


def topic_matches(filt: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` one level, ``#`` the rest; wildcards never match a leading ``$``."""
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f, t = filt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


def _utf8(buf: bytes, pos: int) -> Tuple[str, int]:
    n = struct.unpack_from("!H", buf, pos)[0]
    return buf[pos + 2:pos + 2 + n].decode("utf-8"), pos + 2 + n


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    out, n = bytearray([kind << 4 | flags]), len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.id = ""
        self.subs: Dict[str, int] = {}
        self.will: Optional[Tuple[str, bytes, int, bool]] = None
        self.next_mid = 0
        self.qos2_in: Set[int] = set()  # packet ids received at QoS 2 whose PUBREL is pending

    def send(self, kind: int, flags: int, body: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(_packet(kind, flags, body))

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        body = _str(topic)
        if qos:
            self.next_mid = self.next_mid % 65535 + 1
            body += struct.pack("!H", self.next_mid)
        self.send(PUBLISH, qos << 1 | int(retain), body + payload)


class Broker:
    def __init__(self) -> None:
        self.clients: Dict[str, _Client] = {}
        self.retained: Dict[str, Tuple[bytes, int]] = {}

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        for c in list(self.clients.values()):
            granted = max((q for f, q in c.subs.items() if topic_matches(f, topic)), default=-1)
            if granted >= 0:
                c.deliver(topic, payload, min(qos, granted), False)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = _Client(writer)
        keepalive = 60.0
        clean_close = False
        try:
            kind, flags, body = await asyncio.wait_for(self._read(reader), 10)
            if kind != CONNECT:
                raise ValueError(f"first packet is type {kind}, not CONNECT")
            keepalive = self._connect(c, body)
            if keepalive < 0:  # refused (CONNACK already sent)
                return
            while True:
                timeout = keepalive * 1.5 if keepalive else None
                kind, flags, body = await asyncio.wait_for(self._read(reader), timeout)
                if kind == DISCONNECT:
                    clean_close = True
                    return
                self._dispatch(c, kind, flags, body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away: its will is published below
        except asyncio.TimeoutError:
            log.info("client %r: no packet within 1.5 × keepalive, disconnecting", c.id)
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            log.warning("client %r: protocol error: %s", c.id, exc)
        finally:
            if self.clients.get(c.id) is c:
                del self.clients[c.id]
                if c.will and not clean_close:
                    self.publish(*c.will)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Tuple[int, int, bytes]:
        head = (await reader.readexactly(1))[0]
        n, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 21:
                raise ValueError("malformed remaining length")
        if n > MAX_PACKET:
            raise ValueError(f"packet of {n} bytes (limit {MAX_PACKET})")
        return head >> 4, head & 0x0F, await reader.readexactly(n)

    def _connect(self, c: _Client, body: bytes) -> float:
        name, pos = _utf8(body, 0)
        level, flags, keepalive = struct.unpack_from("!BBH", body, pos)
        pos += 4
        if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            log.warning("refused a client speaking %s level %d (this broker speaks MQTT 3.1.1)", name, level)
            c.send(CONNACK, 0, b"\x00\x01")
            return -1
        c.id, pos = _utf8(body, pos)
        if flags & 0x04:
            topic, pos = _utf8(body, pos)
            n = struct.unpack_from("!H", body, pos)[0]
            c.will = (topic, body[pos + 2:pos + 2 + n], flags >> 3 & 3, bool(flags & 0x20))
        if not c.id:
            c.id = f"anon-{id(c):x}"
        old = self.clients.get(c.id)
        if old is not None:  # the spec: the new connection takes the client id over
            old.writer.close()
        self.clients[c.id] = c
        c.send(CONNACK, 0, b"\x00\x00")
        return float(keepalive)

    def _dispatch(self, c: _Client, kind: int, flags: int, body: bytes) -> None:
        if kind == PUBLISH:
            qos, retain = flags >> 1 & 3, bool(flags & 1)
            topic, pos = _utf8(body, 0)
            mid = b""
            if qos:
                mid, pos = body[pos:pos + 2], pos + 2
            if qos == 2:  # delivered on receipt; a resend before PUBREL is not delivered again
                c.send(PUBREC, 0, mid)
                n = struct.unpack("!H", mid)[0]
                if n in c.qos2_in:
                    return
                c.qos2_in.add(n)
            elif qos == 1:
                c.send(PUBACK, 0, mid)
            self.publish(topic, body[pos:], qos, retain)
        elif kind == PUBREL:
            c.qos2_in.discard(struct.unpack("!H", body[:2])[0])
            c.send(PUBCOMP, 0, body[:2])
        elif kind == PUBREC:  # our QoS 2 delivery: release it
            c.send(PUBREL, 2, body[:2])
        elif kind == SUBSCRIBE:
            new: Dict[str, int] = {}
            granted, pos = bytearray(), 2
            while pos < len(body):
                filt, pos = _utf8(body, pos)
                new[filt] = min(body[pos], 2)
                granted.append(new[filt])
                pos += 1
            c.subs.update(new)
            c.send(SUBACK, 0, body[:2] + bytes(granted))
            for topic, (payload, rq) in list(self.retained.items()):  # retained: for the new filters
                q = max((q for f, q in new.items() if topic_matches(f, topic)), default=-1)
                if q >= 0:
                    c.deliver(topic, payload, min(rq, q), True)
        elif kind == UNSUBSCRIBE:
            pos = 2
            while pos < len(body):
                filt, pos = _utf8(body, pos)
                c.subs.pop(filt, None)
            c.send(UNSUBACK, 0, body[:2])
        elif kind == PINGREQ:
            c.send(PINGRESP, 0, b"")
        elif kind not in (PUBACK, PUBCOMP):
            raise ValueError(f"unexpected packet type {kind}")


async def _serve(host: str, port: int) -> None:
    broker = Broker()
    server = await asyncio.start_server(broker.handle, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening on %s:%d (MQTT 3.1.1)", host, port)
    async with server:
        await stop.wait()
    for c in list(broker.clients.values()):
        c.writer.close()
    log.info("stopped")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="minibroker: %(message)s")
    try:
        asyncio.run(_serve(args.host, args.port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
