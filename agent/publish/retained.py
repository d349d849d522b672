"""The retained lane: the device's retained state (discovery, ``ota/status``, the digit) kept apart from the
result outbox, so that no result overflow can ever drop it.

Every message put here is sent, in order, before any queued result (a watcher of ``ota/status``
sees every transition). A *sticky* topic's newest message is sent again after every new
connection — a broker restarted without persistence, or one the device never reached while its
outbox overflowed, learns the device's state again without anyone asking; a non-sticky message
(e.g. an empty payload that deletes a retained config) goes out once. The lane is bounded: past
``limit`` waiting messages (a long outage during many state changes) only the newest waiting
message per topic is kept, which is what a retained topic holds anyway (counted in ``coalesced``).

Pure and single-threaded like :class:`~agent.publish.outbox.Outbox`: the publisher's lock guards it.
Messages it hands out are :class:`Retained` instances, so a connection that dies with some of
them in flight gives them back here (:meth:`RetainedLane.requeue`), never to the outbox.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from agent.publish.outbox import Message

__all__ = ["Retained", "RetainedLane"]


class Retained(Message):
    """A :class:`Message` that belongs to the retained lane."""

    __slots__ = ()


class RetainedLane:
    """A FIFO of retained messages; ``peek``/``pop``/``bool`` like the outbox, for ``Inflight.take``."""

    __slots__ = ("_newest", "_pending", "coalesced", "limit")

    def __init__(self, limit: int = 1024) -> None:
        self._newest: dict[str, tuple[Retained, bool]] = {}  # topic -> (newest message, sticky)
        self._pending: deque[Retained] = deque()
        self.limit = limit
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def put(self, msg: Retained, sticky: bool) -> None:
        self._newest[msg.topic] = (msg, sticky)
        self._pending.append(msg)
        if len(self._pending) > self.limit:
            newest = {m.topic: m for m in self._pending}
            keep = [m for m in self._pending if newest[m.topic] is m]
            self.coalesced += len(self._pending) - len(keep)
            self._pending = deque(keep)

    def connected(self) -> None:
        """A new connection: what waits goes first, then every sticky topic's newest message."""
        waiting = {id(m) for m in self._pending}
        self._pending.extend(m for m, sticky in self._newest.values() if sticky and id(m) not in waiting)

    def peek(self) -> Retained | None:
        return self._pending[0] if self._pending else None

    def pop(self) -> Retained:
        """The oldest waiting message; raises IndexError when empty."""
        return self._pending.popleft()

    def requeue(self, msgs: Sequence[Message]) -> list[Message]:
        """Put this lane's undelivered messages back at the front, in order; return the others."""
        mine = [m for m in msgs if type(m) is Retained]
        self._pending.extendleft(reversed(mine))  # type: ignore[arg-type]
        return [m for m in msgs if type(m) is not Retained]
