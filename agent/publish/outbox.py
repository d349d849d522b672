"""The bounded drop-oldest outbox between ``Publisher.publish`` and the MQTT connection.

Pure and single-threaded by design: the :class:`~agent.publish.client.Publisher` guards it
with its own lock. It keeps the newest ``capacity`` messages; every message it loses is
counted in :attr:`Outbox.dropped`, so ``pushed == popped + dropped + len(outbox)`` always holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple, Optional

__all__ = ["Message", "Outbox"]


class Message(NamedTuple):
    """One message waiting for the broker; ``topic`` is already absolute."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """A FIFO of at most ``capacity`` messages that drops the oldest when full."""

    __slots__ = ("_q", "capacity", "dropped", "pushed")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # No maxlen: deque(maxlen) would silently drop the *newest* on appendleft (requeue).
        self._q: deque[Message] = deque()
        self.pushed = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._q)

    def __bool__(self) -> bool:
        return bool(self._q)

    def push(self, msg: Message) -> bool:
        """Append ``msg``; returns True when the oldest message had to be dropped for it."""
        self.pushed += 1
        self._q.append(msg)
        if len(self._q) > self.capacity:
            self._q.popleft()
            self.dropped += 1
            return True
        return False

    def requeue(self, msgs: Iterable[Message]) -> int:
        """Put messages that left but were not delivered back at the FRONT, in their order.

        They are older than everything queued, so on overflow they are the ones dropped.
        Not counted in :attr:`pushed` (they were counted once); returns how many were dropped.
        """
        back = list(msgs)
        overflow = max(0, len(self._q) + len(back) - self.capacity)
        if overflow:
            back = back[overflow:]
            self.dropped += overflow
        self._q.extendleft(reversed(back))
        return overflow

    def peek(self) -> Optional[Message]:
        return self._q[0] if self._q else None

    def pop(self) -> Message:
        """The oldest message; raises IndexError when empty."""
        return self._q.popleft()

    def clear(self) -> int:
        """Drop everything (counted); returns how many."""
        n = len(self._q)
        self._q.clear()
        self.dropped += n
        return n
