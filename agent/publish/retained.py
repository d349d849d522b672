"""The retained lane: the device's retained state (discovery, ``ota/status``, the last digit), kept
apart from the result outbox so that no result overflow can ever drop it.

Retained messages are state, not a stream: only the newest payload per topic matters. So the lane
holds one message per topic (a newer one replaces an older one still waiting), is bounded by the
number of distinct topics (a handful) and is sent before the outbox. A *sticky* entry is sent again
after every new connection — a broker restarted without persistence, or one the device never
reached while its outbox overflowed, learns the device's state again without anyone asking; a
non-sticky entry (e.g. an empty payload that deletes a retained config) goes out once.

Pure and single-threaded like :class:`~agent.publish.outbox.Outbox`: the publisher's lock guards it.
Messages it hands out are :class:`Retained` instances, so a connection that dies with some of
them in flight gives them back here (:meth:`RetainedLane.requeue`), never to the outbox.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.publish.outbox import Message

__all__ = ["Retained", "RetainedLane"]


class Retained(Message):
    """A :class:`Message` that belongs to the retained lane."""

    __slots__ = ()


class RetainedLane:
    """One message per topic; ``peek``/``pop``/``bool`` like the outbox, for ``Inflight.take``."""

    __slots__ = ("_pending", "_state", "replaced")

    def __init__(self) -> None:
        self._state: dict[str, tuple[Retained, bool]] = {}  # topic -> (newest message, sticky)
        self._pending: dict[str, Retained] = {}  # topic -> message waiting to be sent, in order
        self.replaced = 0  # superseded before they were sent (not a loss: the newer state goes out)

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def put(self, msg: Retained, sticky: bool) -> None:
        self._state[msg.topic] = (msg, sticky)
        self.replaced += self._pending.pop(msg.topic, None) is not None
        self._pending[msg.topic] = msg

    def connected(self) -> None:
        """A new connection: everything sticky (and whatever still waits) goes out, in first-put order."""
        self._pending = {t: m for t, (m, sticky) in self._state.items() if sticky or t in self._pending}

    def peek(self) -> Retained | None:
        return next(iter(self._pending.values()), None)

    def pop(self) -> Retained:
        """The oldest waiting message; raises StopIteration when empty (callers check ``bool`` first)."""
        return self._pending.pop(next(iter(self._pending)))

    def requeue(self, msgs: Iterable[Message]) -> list[Message]:
        """Take back this lane's undelivered messages (unless superseded meanwhile); return the others."""
        rest: list[Message] = []
        for m in msgs:
            if type(m) is not Retained:
                rest.append(m)
                continue
            entry = self._state.get(m.topic)
            if entry is not None and entry[0] is m and m.topic not in self._pending:
                self._pending[m.topic] = m
        return rest
