"""Serial faults against the real SerialSource: unplug/replug, a stalled sender, line noise, baud mismatch.

The receiver is :class:`SerialSource` on a real pty (tests/helpers/pty_pair.py) or a ``socket://``
URL (a TCP "device" that can be unplugged), decoding into a real :class:`FrameRing` drained by a
consumer thread. The bytes come from tools/frame_sender.py. Every scenario checks the decoder's
counters against what was sent, exactly, and records the recovery time (a figure, not asserted).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from agent.config.schema import SourceConfig
from agent.ring import FrameRing
from agent.source.codec import encode_frame
from agent.source.serial_source import SerialSource
from tests.helpers.pty_pair import PtyPair
from tests.reliability.kit import record_figures, wait_until
from tools.frame_sender import frame_stream, synthetic_frames

pytestmark = pytest.mark.integration

FRAMES = synthetic_frames(64, seed=3)


class Receiver:
    """SerialSource in its own thread, a consumer that records (seq, commit time) of each frame."""

    def __init__(self, port: str) -> None:
        cfg = SourceConfig(type="serial", port=port, reopen_min_s=0.05, reopen_max_s=0.2, max_frame_side=28)
        self.source = SerialSource(cfg)
        self.ring = FrameRing(256, 28, 28)
        self.stop = threading.Event()
        self.got: list[tuple[int, int]] = []
        self._threads = [threading.Thread(target=self.source.run, args=(self.ring, self.stop), daemon=True),
                         threading.Thread(target=self._consume, daemon=True)]
        for t in self._threads:
            t.start()

    def _consume(self) -> None:
        out = np.zeros(16, dtype=np.int64)
        while not self.stop.is_set():
            n = self.ring.take(out, 16, 0.1)
            self.got += [(int(self.ring.frame_seq[i]), int(self.ring.t_ns[i])) for i in out[:n]]
            self.ring.release(out, n)

    def seqs(self) -> list[int]:
        return [s for s, _ in self.got]

    def wait_frames(self, n: int, timeout: float = 60.0) -> bool:
        return wait_until(lambda: len(self.got) >= n, timeout)

    def first_after(self, seq: int) -> int:
        """Commit time (monotonic ns) of frame ``seq``."""
        return next(t for s, t in self.got if s == seq)

    def close(self) -> dict[str, Any]:
        self.stop.set()
        self.ring.wake()
        for t in self._threads:
            t.join(5)
        assert self.ring.dropped_oldest == 0, "the test consumer fell behind: counts would be wrong"
        return self.source.stats()


@pytest.fixture
def pty_rx(pty_pair: PtyPair) -> Iterator[tuple[PtyPair, Receiver]]:
    rx = Receiver(pty_pair.slave_path)
    assert wait_until(lambda: rx.source.state == "up", 10)
    yield pty_pair, rx
    rx.close()


def _rejected(st: dict[str, Any]) -> int:
    return int(st["crc_errors"]) + int(st["malformed"]) + int(st["oversize"])


# -- unplug / replug --------------------------------------------------------------------------------
class SocketDevice:
    """A serial device on ``socket://``: each session is one plug-in; closing it is an unplug."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.srv.settimeout(30)
        self.url = f"socket://127.0.0.1:{self.srv.getsockname()[1]}"

    def session(self, data: bytes, opened: Callable[[], bool]) -> float:
        """Accept the receiver's connection, send ``data`` once ``opened()`` (pyserial discards input
        that arrives while it opens a port, like a UART flush), unplug; the time of the unplug."""
        conn, _ = self.srv.accept()
        with conn:
            assert wait_until(opened, 30), "the receiver did not open the port"
            conn.sendall(data)
            return time.monotonic()

    def close(self) -> None:
        self.srv.close()


def test_unplug_replug_cycles_lose_only_the_cut_frame(tmp_path: Any) -> None:
    cycles, per = 8, 25
    dev = SocketDevice()
    rx = Receiver(dev.url)
    partial_bytes = sent_bytes = seq = 0
    unplugged: list[tuple[float, int]] = []
    try:
        for _ in range(cycles):
            full = b"\0" + b"".join(encode_frame(seq + k, FRAMES[(seq + k) % 64]) for k in range(per))
            cut = encode_frame(seq + per, FRAMES[0])[:300]  # unplugged in the middle of this frame
            partial_bytes += len(cut)
            sent_bytes += len(full) + len(cut)
            n_open = len(unplugged) + 1
            unplugged.append((dev.session(full + cut, lambda: rx.source.opens >= n_open), seq + per + 1))  # noqa: B023
            seq += per + 1
            assert rx.wait_frames(per * len(unplugged), 120), rx.source.stats()
        dev.close()  # no more plug-ins: reopen attempts now fail
        assert rx.wait_frames(cycles * per)
        # ... and the last cut frame has been read too (the reader may still be on its bytes).
        assert wait_until(lambda: rx.source.decoder.bytes_in == sent_bytes, 60), rx.source.stats()
    finally:
        dev.close()
        st = rx.close()
    expected = [c * (per + 1) + k for c in range(cycles) for k in range(per)]
    assert rx.seqs() == expected
    assert st["frames_ok"] == cycles * per
    assert st["seq_gaps"] == cycles - 1  # the cut frame of each cycle (the last one is never followed)
    assert st["dropped_bytes"] == partial_bytes
    assert _rejected(st) == 0
    assert cycles - 1 <= st["reopens"] <= cycles  # + 1 if it reconnected before the last unplug was final
    recovery = [(rx.first_after(nxt) / 1e9 - t) * 1000 for t, nxt in unplugged[:-1]]
    record_figures("serial_unplug_replug", {"cycles": cycles, "frames_ok": st["frames_ok"],
                                            "seq_gaps": st["seq_gaps"], "reopens": st["reopens"],
                                            "recovery_ms_max": round(max(recovery), 1),
                                            "recovery_ms_median": round(sorted(recovery)[len(recovery) // 2], 1)})


# -- a sender that stalls, or resets, mid-frame -------------------------------------------------
def test_stall_mid_frame_loses_nothing(pty_rx: tuple[PtyPair, Receiver]) -> None:
    pty, rx = pty_rx
    wire = b"\0" + b"".join(encode_frame(k, FRAMES[k]) for k in range(10))
    half = len(wire) // 2
    pty.write(wire[:half])
    time.sleep(1.0)  # the stall: longer than many read timeouts (0.1 s)
    before = len(rx.got)
    pty.write(wire[half:])
    assert rx.wait_frames(10)
    st = rx.close()
    assert before < 10 and rx.seqs() == list(range(10))
    assert _rejected(st) == 0 and st["dropped_bytes"] == 0 and st["seq_gaps"] == 0


def test_sender_reset_mid_frame_is_counted_exactly(pty_rx: tuple[PtyPair, Receiver]) -> None:
    pty, rx = pty_rx
    tally: dict[str, int] = {}
    n, every = 400, 9
    for chunk in frame_stream(FRAMES, n, truncate_every=every, seed=5, tally=tally):
        pty.write(chunk)
    lost = n // every
    assert rx.wait_frames(n - lost)
    st = rx.close()
    assert tally["truncated"] == lost
    assert st["frames_ok"] == n - lost
    assert sorted(set(range(n)) - set(rx.seqs())) == [k for k in range(n) if (k + 1) % every == 0]
    assert _rejected(st) == lost and st["seq_gaps"] == lost
    assert st["bytes_in"] == tally["bytes"]


# -- line noise ---------------------------------------------------------------------------------------
def test_line_noise_counters_match_what_arrived(pty_rx: tuple[PtyPair, Receiver]) -> None:
    pty, rx = pty_rx
    tally: dict[str, int] = {}
    n = 600
    for chunk in frame_stream(FRAMES, n, corrupt_every=13, noise=0.2, seed=11, tally=tally):
        pty.write(chunk)
    pty.write(encode_frame(n, FRAMES[0]))  # a clean last frame: every earlier loss shows as a gap
    assert rx.wait_frames(n + 1 - 2 * tally["corrupted"])
    assert wait_until(lambda: rx.seqs()[-1:] == [n], 30)
    st = rx.close()
    seqs = rx.seqs()
    assert len(seqs) == len(set(seqs)) == st["frames_ok"]
    assert st["seq_gaps"] == n + 1 - st["frames_ok"], "every frame not delivered is counted as a gap"
    assert n - 2 * tally["corrupted"] <= st["frames_ok"] <= n + 1 - tally["corrupted"]
    assert _rejected(st) >= tally["corrupted"] and tally["noise_bursts"] > 0
    assert st["bytes_in"] == tally["bytes"] + len(encode_frame(n, FRAMES[0]))
    record_figures("serial_line_noise", {"frames": n + 1, "corrupted": tally["corrupted"],
                                         "noise_bursts": tally["noise_bursts"], "frames_ok": st["frames_ok"],
                                         "seq_gaps": st["seq_gaps"], "rejected_segments": _rejected(st),
                                         "resyncs": st["resyncs"]})


# -- baud mismatch ------------------------------------------------------------------------------------
def _misbaud(data: bytes, ratio: float) -> bytes:
    """What a UART at ``ratio`` x the sender's baud rate reads: 8N1 bits resampled, with real
    start-bit detection and framing (the stop bit is not checked, as many UARTs do)."""
    bits: list[int] = []
    for b in data:
        bits += [0, *((b >> i) & 1 for i in range(8)), 1]
    bits += [1] * 20
    sample = [bits[int(i / ratio)] for i in range(int(len(bits) * ratio))]
    out, i = bytearray(), 0
    while i < len(sample) - 10:
        if sample[i] == 1:
            i += 1
            continue
        out.append(sum(sample[i + 1 + k] << k for k in range(8)))
        i += 10
    return bytes(out)


def test_baud_mismatch_garbage_then_recovery(pty_rx: tuple[PtyPair, Receiver]) -> None:
    pty, rx = pty_rx
    sent = b"".join(encode_frame(k, FRAMES[k % 64]) for k in range(40))
    garbage = _misbaud(sent, 0.5) + _misbaud(sent, 1.6)  # the sender 2x too fast, then 1.6x too slow
    pty.write(garbage)
    assert wait_until(lambda: rx.source.decoder.bytes_in >= len(garbage), 30)
    assert rx.got == [], "garbage must never produce a frame"
    good = [encode_frame(1000 + k, FRAMES[k]) for k in range(50)]
    t_good = time.monotonic()
    pty.write(b"\0" + b"".join(good))  # the sender at the right speed (a delimiter first, as frame_sender)
    assert rx.wait_frames(50)
    st = rx.close()
    assert rx.seqs() == list(range(1000, 1050))
    assert st["frames_ok"] == 50 and st["seq_gaps"] == 0 and st["resyncs"] == 1
    assert len(garbage) - garbage.count(0) - 1 <= st["dropped_bytes"] <= len(garbage)
    record_figures("serial_baud_mismatch", {"garbage_bytes": len(garbage), "dropped_bytes": st["dropped_bytes"],
                                            "rejected_segments": _rejected(st),
                                            "recovery_ms": round((rx.first_after(1000) / 1e9 - t_good) * 1000, 1)})
