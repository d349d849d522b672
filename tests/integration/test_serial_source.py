"""SerialSource over real ptys and a real TCP socket (pyserial ``socket://``): frames arrive intact,
faults are counted exactly, and an unplugged device comes back without restarting the source."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.codec import encode_frame
from agent.source.serial_source import SerialSource
from tests.helpers.broker import free_port
from tests.helpers.pty_pair import PtyPair
from tests.helpers.wait import wait_until
from tools.frame_sender import frame_stream, synthetic_frames

pytestmark = pytest.mark.integration


@dataclass
class Running:
    src: SerialSource
    ring: FrameRing
    stop: threading.Event
    thread: threading.Thread

    def drain(self) -> list[tuple[int, np.ndarray, int]]:
        """(seq, pixels copy, t_ns) of every ready frame, oldest first."""
        out, idx = [], np.zeros(8, np.int64)
        while n := self.ring.take(idx, 8, 0.05):
            for i in idx[:n]:
                out.append((int(self.ring.frame_seq[i]), self.ring.view(int(i)).copy(), int(self.ring.t_ns[i])))
            self.ring.release(idx, n)
        return out


@pytest.fixture
def start_source() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(port: str, max_side: int = 28, slots: int = 1024) -> Running:
        cfg = SourceConfig(type="serial", port=port, max_frame_side=max_side, reopen_min_s=0.05,
                           reopen_max_s=0.2)
        r = Running(SerialSource(cfg), FrameRing(slots, max_side, max_side), threading.Event(),
                    threading.Thread(target=lambda: None))
        r.thread = threading.Thread(target=r.src.run, args=(r.ring, r.stop), daemon=True)
        r.thread.start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop.set()
        r.thread.join(5)
        assert not r.thread.is_alive(), "the source did not notice stop"
        assert r.src.stats()["state"] == "stopped"


def test_pty_delivers_all_frames_intact(pty_pair: PtyPair, start_source: Callable[..., Running]) -> None:
    frames = synthetic_frames(300, seed=21)
    r = start_source(pty_pair.slave_path)
    assert wait_until(lambda: r.src.state == "up")
    for chunk in frame_stream(frames, len(frames), start_seq=1000):
        pty_pair.write(chunk)
    assert wait_until(lambda: r.src.decoder.frames_ok == 300), r.src.stats()
    got = r.drain()
    assert [s for s, _, _ in got] == list(range(1000, 1300))
    for (_, px, _), want in zip(got, frames):
        np.testing.assert_array_equal(px, want)
    t_ns = [t for _, _, t in got]
    assert t_ns == sorted(t_ns) and t_ns[0] > 0
    st = r.src.stats()
    assert (st["crc_errors"], st["malformed"], st["oversize"], st["seq_gaps"], st["resyncs"]) == (0, 0, 0, 0, 0)


def _flip_data_byte(wire: bytes) -> bytes:
    """Flip one bit of a pixel byte inside the first COBS block: the structure stays valid, only
    the CRC can notice."""
    bad = bytearray(wire)
    assert bad[0] == 0xFF  # a full first block: header and pixels without zeros
    bad[100] ^= 0x80 if bad[100] != 0x80 else 0x40
    return bytes(bad)


def test_pty_faults_are_counted_exactly(pty_pair: PtyPair, start_source: Callable[..., Running]) -> None:
    rng = np.random.default_rng(8)
    frames = rng.integers(1, 256, (12, 28, 28), dtype=np.uint8)  # no zero pixels
    seq0 = 0x01010101  # no zero bytes in the header either
    wires = [encode_frame(seq0 + k, f) for k, f in enumerate(frames)]
    stream = (b"\0" + wires[0] + wires[1]
              + _flip_data_byte(wires[2])                            # crc_errors: frame 2 lost
              + wires[3]
              + b"AT+RESET\r\n\0"                                   # malformed garbage, no frame lost
              + wires[4]
              + encode_frame(seq0 + 5, np.ones((60, 60), np.uint8))  # oversize: frame 5 lost
              + wires[6]
              + wires[7][:400] + b"\0"                               # truncated: frame 7 lost
              + wires[8]
              + wires[10] + wires[11])                               # frame 9 never sent
    r = start_source(pty_pair.slave_path)
    assert wait_until(lambda: r.src.state == "up")
    pty_pair.write(stream)
    delivered = [0, 1, 3, 4, 6, 8, 10, 11]
    assert wait_until(lambda: r.src.decoder.frames_ok == len(delivered)), r.src.stats()
    got = r.drain()
    assert [s - seq0 for s, _, _ in got] == delivered
    for (_, px, _), k in zip(got, delivered):
        np.testing.assert_array_equal(px, frames[k])
    st = r.src.stats()
    assert st["crc_errors"] == 1
    assert st["oversize"] == 1
    assert st["malformed"] + st["crc_errors"] == 3  # garbage + the truncated frame (either kind)
    assert st["resyncs"] == 4
    assert st["seq_gaps"] == 4  # 2, 5, 7 and 9
    assert st["bytes_in"] == len(stream)


def test_unplug_and_replug(tmp_path: Path, start_source: Callable[..., Running]) -> None:
    """Like a USB adapter behind /dev/serial/by-id/...: the link points at a new device after replug."""
    link = tmp_path / "usb-digit-sensor"
    first = PtyPair()
    os.symlink(first.slave_path, link)
    r = start_source(str(link))
    try:
        assert wait_until(lambda: r.src.state == "up")
        for chunk in frame_stream(synthetic_frames(10), 10):
            first.write(chunk)
        assert wait_until(lambda: r.src.decoder.frames_ok == 10)
    finally:
        first.close()  # unplug: the pty's device node disappears
    assert wait_until(lambda: r.src.state == "down"), r.src.stats()
    assert "read failed" in str(r.src.stats()["last_error"]) or "open failed" in str(r.src.last_error)
    assert r.thread.is_alive()
    assert wait_until(lambda: r.src.open_failures >= 2)  # it keeps trying with backoff
    second = PtyPair()
    try:
        os.replace(_tmp_symlink(tmp_path, second.slave_path), link)
        assert wait_until(lambda: r.src.state == "up"), r.src.stats()
        for chunk in frame_stream(synthetic_frames(10, seed=1), 10, start_seq=10):
            second.write(chunk)
        assert wait_until(lambda: r.src.decoder.frames_ok == 20), r.src.stats()
    finally:
        second.close()
    st = r.src.stats()
    assert st["reopens"] == 1
    assert st["seq_gaps"] == 0 and st["crc_errors"] == 0
    assert [s for s, _, _ in r.drain()] == list(range(20))


def _tmp_symlink(d: Path, target: str) -> Path:
    tmp = d / "link.tmp"
    os.symlink(target, tmp)
    return tmp


_POOL = synthetic_frames(16, seed=2)


class _FrameServer:
    """A one-client TCP server on a fixed loopback port streaming frames (seq from ``seq0``,
    pixels ``_POOL[seq % 16]``) every 2 ms until closed, like a ser2net-attached sensor.

    It streams rather than sending once because pyserial's ``socket://`` open discards whatever
    arrived before it finished connecting, as a UART open flushes its input."""

    def __init__(self, port: int, seq0: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.closed = threading.Event()
        self.conn: Optional[socket.socket] = None
        self.thread = threading.Thread(target=self._serve, args=(seq0,), daemon=True)
        self.thread.start()

    def _serve(self, seq: int) -> None:
        try:
            self.conn, _ = self.sock.accept()
            self.conn.sendall(b"\0")
            while not self.closed.wait(0.002):
                self.conn.sendall(encode_frame(seq, _POOL[seq % len(_POOL)]))
                seq += 1
        except OSError:
            pass  # closed before or while a client was connected

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        self.thread.join(10)
        if self.conn is not None:
            self.conn.close()


def test_socket_url_reconnects_after_server_restart(start_source: Callable[..., Running]) -> None:
    port = free_port()
    server = _FrameServer(port, seq0=0)
    r = start_source(f"socket://127.0.0.1:{port}")
    try:
        assert wait_until(lambda: r.src.decoder.frames_ok >= 20), r.src.stats()
    finally:
        server.close()
    assert wait_until(lambda: r.src.state == "down"), r.src.stats()
    assert wait_until(lambda: r.src.open_failures >= 1)  # connection refused while the server is away
    before = r.src.decoder.frames_ok
    server = _FrameServer(port, seq0=100_000)
    try:
        assert wait_until(lambda: r.src.decoder.frames_ok >= before + 20), r.src.stats()
        assert r.src.state == "up"
    finally:
        server.close()
    assert r.src.reopens >= 1
    got = r.drain()
    for seq, px, _ in got:
        np.testing.assert_array_equal(px, _POOL[seq % len(_POOL)])
    seqs = [s for s, _, _ in got]
    first = [s for s in seqs if s < 100_000]
    second = [s for s in seqs if s >= 100_000]
    assert len(first) >= 20 and len(second) >= 20
    assert first == list(range(first[0], first[0] + len(first)))  # in order, none lost mid-stream
    assert second == list(range(second[0], second[0] + len(second)))
    assert r.src.decoder.crc_errors + r.src.decoder.malformed <= 2  # a frame cut by each disconnect


def test_missing_port_is_down_and_stops_promptly(tmp_path: Path, start_source: Callable[..., Running]) -> None:
    r = start_source(str(tmp_path / "no-such-tty"))
    assert wait_until(lambda: r.src.open_failures >= 3)
    st = r.src.stats()
    assert st["state"] == "down" and "open failed" in str(st["last_error"])
    # the fixture's teardown checks that stop ends run() (join with a timeout)


def test_ring_smaller_than_max_frame_side_is_refused() -> None:
    src = SerialSource(SourceConfig(type="serial", port="loop://", max_frame_side=28))
    with pytest.raises(ValueError, match="max_frame_side"):
        src.run(FrameRing(4, 16, 16), threading.Event())
