"""Raw QoS 0 PUBLISH packets: the encoding, and what happens when the socket takes only part."""

from __future__ import annotations

import pytest

from agent.publish.outbox import Message
from agent.publish.rawq0 import RawQos0, encode_publish_qos0


def _parse(data: bytes, v5: bool) -> list[tuple[str, bytes, bool]]:
    """A reference reader of QoS 0 PUBLISH packets (MQTT spec 2.2 and 3.3)."""
    out, i = [], 0
    while i < len(data):
        first = data[i]
        assert first & 0xF6 == 0x30  # PUBLISH, QoS 0, no DUP
        i += 1
        n, mult = 0, 1
        while True:
            b = data[i]
            i += 1
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        body, i = data[i:i + n], i + n
        tlen = int.from_bytes(body[:2], "big")
        topic = body[2:2 + tlen].decode()
        rest = body[2 + tlen:]
        if v5:
            assert rest[0] == 0  # empty properties
            rest = rest[1:]
        out.append((topic, rest, bool(first & 1)))
    return out


@pytest.mark.parametrize("v5", [False, True])
@pytest.mark.parametrize("size", [0, 1, 120, 127, 128, 16383, 16384, 2_097_151, 2_097_152])
def test_encoding_round_trips_every_remaining_length(v5: bool, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    pkt = encode_publish_qos0("a/ü/b", payload, retain=size % 2 == 1, v5=v5)
    assert _parse(pkt, v5) == [("a/ü/b", payload, size % 2 == 1)]


class _Trickle:
    """A non-blocking socket that takes at most ``n`` bytes per send (then none: buffer full)."""

    def __init__(self, per_call: list[int]) -> None:
        self.per_call = per_call
        self.data = b""

    def send(self, buffer: bytes) -> int:
        k = min(len(buffer), self.per_call.pop(0) if self.per_call else len(buffer))
        self.data += bytes(buffer[:k])
        return k


def test_partial_write_keeps_the_rest_and_reports_completion_in_order() -> None:
    msgs = [Message("t/x", f"payload-{k}".encode() * 3, 0, False) for k in range(5)]
    sock = _Trickle([40, 0, 17])
    raw = RawQos0(v5=False)
    done = raw.write(sock, msgs)
    assert raw.pending and 0 <= done < 5
    assert raw.pending_msgs == msgs[done:]
    assert raw.flush(sock) == []  # took 0
    assert raw.flush(sock) == []  # took 17, still not all
    assert raw.flush(sock) == msgs[done:]  # the rest
    assert not raw.pending and raw.pending_msgs == []
    assert [(t, p) for t, p, _ in _parse(sock.data, False)] == [(m.topic, m.payload) for m in msgs]


def test_reset_returns_the_unwritten_messages() -> None:
    msgs = [Message("t", b"x" * 50, 0, False) for _ in range(3)]
    raw = RawQos0(v5=True)
    assert raw.write(_Trickle([60]), msgs) == 1
    assert raw.reset() == msgs[1:]
    assert not raw.pending


def test_a_broken_socket_raises() -> None:
    class Broken:
        def send(self, buffer: bytes) -> int:
            raise ConnectionResetError("gone")

    with pytest.raises(OSError):
        RawQos0(v5=False).write(Broken(), [Message("t", b"x", 0, False)])
