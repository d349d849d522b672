"""QoS 0 PUBLISH packets written straight to the connection's socket, several per ``send``.

paho spends ~20 Python calls and one ``send`` syscall on every message; a QoS 0 PUBLISH is only
``0x30|retain, remaining length, topic length, topic, [properties length 0 in MQTT 5], payload``.
The network loop and ``Session.send_now`` use this for QoS 0 messages at the head of the outbox,
only while paho has nothing queued for the socket (so the stream keeps the outbox's order), and
let paho write again only after a partially written remainder here has gone out.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Optional, Protocol

from agent.publish.outbox import Message

__all__ = ["RawQos0", "encode_publish_qos0"]



class _Sock(Protocol):
    def send(self, buffer: bytes, /) -> int: ...


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _topic_head(topic: str, v5: bool) -> bytes:
    """The variable header of a QoS 0 PUBLISH: topic length, topic, MQTT 5's empty properties."""
    t = topic.encode("utf-8")
    return len(t).to_bytes(2, "big") + t + (b"\x00" if v5 else b"")


def encode_publish_qos0(topic: str, payload: bytes, retain: bool = False, v5: bool = False) -> bytes:
    """One complete QoS 0 PUBLISH packet (MQTT 3.1.1, or MQTT 5 with no properties)."""
    head = _topic_head(topic, v5)
    return (b"\x31" if retain else b"\x30") + _remaining_length(len(head) + len(payload)) + head + payload


class RawQos0:
    """Packs QoS 0 messages and writes them; keeps what the socket did not take (``pending``)."""

    def __init__(self, v5: bool) -> None:
        self._v5 = v5
        self._heads: dict[str, bytes] = {}  # topic -> length-prefixed topic (+ MQTT 5 properties)
        self._pending: Optional[bytes] = None
        self.pending_msgs: list[Message] = []  # not completely written yet

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def reset(self) -> list[Message]:
        """The connection is gone: forget the remainder, return its messages for re-queueing."""
        back, self.pending_msgs, self._pending = self.pending_msgs, [], None
        return back

    def _head(self, topic: str) -> bytes:
        head = self._heads.get(topic)
        if head is None:
            head = _topic_head(topic, self._v5)
            if len(self._heads) < 1024:
                self._heads[topic] = head
        return head

    def write(self, sock: _Sock, msgs: Sequence[Message]) -> int:
        """Write ``msgs`` (all QoS 0) with one ``send``; returns how many went out completely.
        Raises OSError when the connection is broken (the caller ends the session)."""
        parts: list[bytes] = []
        for m in msgs:
            head = self._head(m.topic)
            parts += (b"\x31" if m.retain else b"\x30", _remaining_length(len(head) + len(m.payload)), head,
                      m.payload)
        data = b"".join(parts)
        sent = _send(sock, data)
        if sent == len(data):
            return len(msgs)
        self._pending = data[sent:]  # rare (socket buffer full): a copy is fine
        # Which messages are not yet complete: walk the packet ends (rare: the socket buffer was full).
        end, done = 0, 0
        for k in range(len(msgs)):
            end += sum(len(p) for p in parts[4 * k:4 * k + 4])
            if end <= sent:
                done = k + 1
        self.pending_msgs = list(msgs[done:])
        return done

    def flush(self, sock: _Sock) -> list[Message]:
        """Write more of the remainder; returns the messages that are now complete (all of them
        once ``pending`` is False). Raises OSError when the connection is broken."""
        assert self._pending is not None
        sent = _send(sock, self._pending)
        if sent < len(self._pending):
            self._pending = self._pending[sent:]
            return []  # message boundaries inside the remainder are not tracked: all complete at once
        done, self.pending_msgs, self._pending = self.pending_msgs, [], None
        return done


def _send(sock: _Sock, data: bytes) -> int:
    try:
        return sock.send(data)
    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
        return 0
