"""The frame ring: FIFO order, drop-oldest under backpressure, lossless wait, no growth."""

from __future__ import annotations

import threading
import time

import numpy as np

from agent.ring import FrameRing


def _put(ring: FrameRing, seq: int) -> None:
    i = ring.acquire()
    ring.pixels[i, :2, :3] = seq % 256
    ring.commit(i, 2, 3, seq, seq)


def test_fifo_batches_and_views() -> None:
    ring = FrameRing(8, 4, 4)
    for s in range(5):
        _put(ring, s)
    out = np.zeros(4, np.int64)
    n = ring.take(out, 4, 0)
    assert n == 4
    assert [int(ring.frame_seq[i]) for i in out[:n]] == [0, 1, 2, 3]
    assert ring.view(int(out[1])).shape == (2, 3) and (ring.view(int(out[1])) == 1).all()
    ring.release(out, n)
    assert ring.take(out, 4, 0) == 1 and int(ring.frame_seq[out[0]]) == 4


def test_drop_oldest_when_consumer_is_behind() -> None:
    ring = FrameRing(4, 4, 4)
    for s in range(10):
        _put(ring, s)
    assert ring.dropped_oldest == 6
    out = np.zeros(4, np.int64)
    n = ring.take(out, 4, 0)
    assert [int(ring.frame_seq[i]) for i in out[:n]] == [6, 7, 8, 9]  # the newest survive, in order


def test_slots_held_by_consumer_are_never_overwritten() -> None:
    ring = FrameRing(6, 4, 4)
    for s in range(4):
        _put(ring, s)
    held = np.zeros(4, np.int64)
    n = ring.take(held, 4, 0)
    before = {int(i): int(ring.frame_seq[i]) for i in held[:n]}
    for s in range(100, 120):
        _put(ring, s)
    assert {int(i): int(ring.frame_seq[i]) for i in held[:n]} == before


def test_region_of_interest_view() -> None:
    ring = FrameRing(2, 10, 10)
    i = ring.acquire()
    ring.pixels[i] = np.arange(100, dtype=np.uint8).reshape(10, 10)
    ring.commit(i, 3, 2, 0, 0, top=4, left=5)
    assert ring.view(i).tolist() == [[45, 46], [55, 56], [65, 66]]


def test_lossless_producer_waits_for_consumer() -> None:
    ring = FrameRing(3, 2, 2)
    stop = threading.Event()
    got: list[int] = []

    def consume() -> None:
        out = np.zeros(1, np.int64)
        while len(got) < 200:
            if ring.take(out, 1, 0.5):
                got.append(int(ring.frame_seq[out[0]]))
                ring.release(out, 1)

    t = threading.Thread(target=consume)
    t.start()
    for s in range(200):
        i = ring.acquire_wait(stop)
        assert i is not None
        ring.commit(i, 1, 1, s, 0)
    t.join(10)
    assert got == list(range(200)) and ring.dropped_oldest == 0
    stop.set()
    for _ in range(3):  # fill it; then a stopped producer gets None instead of blocking
        i = ring.acquire_wait(stop)
        if i is None:
            break
        ring.commit(i, 1, 1, 0, 0)
    assert ring.acquire_wait(stop, timeout=0.01) is None


def test_lossless_producer_is_woken_once_half_the_ring_is_free() -> None:
    ring = FrameRing(8, 2, 2)
    stop = threading.Event()
    for s in range(8):
        i = ring.acquire()
        ring.commit(i, 2, 2, s, 0)
    woke: list[int] = []

    def produce() -> None:
        i = ring.acquire_wait(stop, timeout=5.0)
        woke.append(ring._free.size)  # slots still free when it got one
        if i is not None:
            ring.abort(i)

    t = threading.Thread(target=produce)
    t.start()
    out = np.zeros(1, np.int64)
    deadline = time.monotonic() + 5
    while not ring._producer_waiting and time.monotonic() < deadline:
        time.sleep(0.001)
    for _ in range(3):  # three slots freed: the producer is not woken yet
        assert ring.take(out, 1, 0.0) == 1
        ring.release(out, 1)
    time.sleep(0.05)
    assert not woke
    assert ring.take(out, 1, 0.0) == 1
    ring.release(out, 1)  # the fourth: half of 8
    t.join(5)
    assert woke == [3]  # it took one of the four free slots
    stop.set()
