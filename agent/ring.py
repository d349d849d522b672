"""The preallocated frame ring between one source thread and the inference loop.

All pixel memory is allocated once. Slots move between three places — free, being written,
ready (FIFO) and taken by the consumer — by index only, so no frame is copied or allocated.
When the consumer falls behind and no slot is free, the producer takes the **oldest ready**
frame's slot (drop-oldest) and counts it: the ring never grows.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

__all__ = ["FrameRing"]


class _IndexQueue:
    """A fixed-capacity FIFO of slot indices on a preallocated array."""

    def __init__(self, capacity: int) -> None:
        self._items = np.zeros(capacity, dtype=np.int64)
        self._cap = capacity
        self._head = 0
        self.size = 0

    def push(self, idx: int) -> None:
        self._items[(self._head + self.size) % self._cap] = idx
        self.size += 1

    def pop(self) -> int:
        idx = int(self._items[self._head])
        self._head = (self._head + 1) % self._cap
        self.size -= 1
        return idx


class FrameRing:
    """``slots`` frames of at most ``max_h``×``max_w`` uint8 pixels plus per-slot metadata.

    Producer: ``i = acquire()`` → write ``pixels[i, :h, :w]`` → ``commit(i, h, w, frame_seq, t_ns)``
    (or ``abort(i)``). A source may commit a region of interest with ``top``/``left``: the
    consumer reads ``view(i)``. Consumer: ``n = take(out, max_n, timeout)`` fills ``out[:n]`` with slot
    indices, oldest first; after using them, ``release(out, n)``.
    """

    def __init__(self, slots: int, max_h: int, max_w: int) -> None:
        if slots < 2:
            raise ValueError("a ring needs at least 2 slots")
        self.slots = slots
        self.max_h, self.max_w = max_h, max_w
        self.pixels = np.zeros((slots, max_h, max_w), dtype=np.uint8)
        self.top = np.zeros(slots, dtype=np.int32)
        self.left = np.zeros(slots, dtype=np.int32)
        self.height = np.zeros(slots, dtype=np.int32)
        self.width = np.zeros(slots, dtype=np.int32)
        self.frame_seq = np.zeros(slots, dtype=np.int64)
        self.t_ns = np.zeros(slots, dtype=np.int64)  # time.monotonic_ns() when the frame was complete
        self._free = _IndexQueue(slots)
        self._ready = _IndexQueue(slots)
        for i in range(slots):
            self._free.push(i)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.committed = 0
        self.dropped_oldest = 0
        self._producer_waiting = False
        # A waiting lossless producer is woken once half the ring is free, not for every slot:
        # it then refills several slots per wake-up (one thread switch per several frames).
        self._refill_at = max(1, slots // 2)

    # -- producer ---------------------------------------------------------------------------
    def acquire(self) -> int:
        """A slot to write into; drops the oldest ready frame when none is free."""
        with self._lock:
            if self._free.size:
                return self._free.pop()
            if self._ready.size:
                self.dropped_oldest += 1
                return self._ready.pop()
        # Every slot is taken by the consumer: impossible when slots > batch_max (the config
        # loader refuses smaller rings; the consumer holds at most batch_max, the source one).
        raise RuntimeError("frame ring exhausted: ring_slots must exceed batch_max")

    def acquire_wait(self, stop: threading.Event, timeout: float = 0.5) -> Optional[int]:
        """A free slot, waiting for the consumer instead of dropping (lossless file replay);
        ``None`` when ``stop`` is set."""
        with self._cond:
            while not self._free.size:
                if stop.is_set():
                    return None
                self._producer_waiting = True
                self._cond.wait(timeout)
                self._producer_waiting = False
            return self._free.pop()

    def commit(self, idx: int, height: int, width: int, frame_seq: int, t_ns: int,
               top: int = 0, left: int = 0) -> None:
        self.top[idx] = top
        self.left[idx] = left
        self.height[idx] = height
        self.width[idx] = width
        self.frame_seq[idx] = frame_seq
        self.t_ns[idx] = t_ns
        with self._cond:
            self._ready.push(idx)
            self.committed += 1
            self._cond.notify_all()  # one condition serves both waiters (consumer, lossless producer)

    def abort(self, idx: int) -> None:
        with self._lock:
            self._free.push(idx)

    # -- consumer ---------------------------------------------------------------------------
    def take(self, out: np.ndarray, max_n: int, timeout: Optional[float]) -> int:
        """Wait up to ``timeout`` s for frames; move up to ``max_n`` ready slots into ``out``."""
        with self._cond:
            if not self._ready.size:
                self._cond.wait(timeout)
            n = min(max_n, self._ready.size)
            for k in range(n):
                out[k] = self._ready.pop()
            return n

    def release(self, idxs: np.ndarray, n: int) -> None:
        with self._cond:
            for k in range(n):
                self._free.push(int(idxs[k]))
            # Only a lossless producer ever waits for a free slot. Once the consumer has emptied
            # the ready queue every slot it does not hold is free (>= _refill_at): no stall.
            if self._producer_waiting and self._free.size >= self._refill_at:
                self._cond.notify_all()

    def view(self, idx: int) -> np.ndarray:
        """The committed frame (or its region of interest) in slot ``idx``, without copying."""
        t, le = int(self.top[idx]), int(self.left[idx])
        return self.pixels[idx, t:t + int(self.height[idx]), le:le + int(self.width[idx])]

    def pending(self) -> int:
        return self._ready.size

    def wait_empty(self, timeout: float) -> bool:
        """For shutdown: wait until the consumer has taken every ready frame."""
        deadline = time.monotonic() + timeout
        while self._ready.size and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._ready.size

    def wake(self) -> None:
        """Wake a consumer blocked in :meth:`take` (stop requests)."""
        with self._cond:
            self._cond.notify_all()
