"""Which broker the next connection attempt goes to, when the device knows several (``mqtt.hosts``).

Every attempt takes the next broker of a shuffled round, so a node that just failed or dropped the
connection is not tried again before the others, and a fleet spreads over the nodes instead of
all devices crowding the first one listed. Pure (no sockets): the network loop asks, the backoff
between attempts stays the loop's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Optional

__all__ = ["BrokerRotation"]


class BrokerRotation:
    def __init__(self, brokers: Sequence[tuple[str, int]], rng: Optional[random.Random] = None) -> None:
        if not brokers:
            raise ValueError("no broker to connect to")
        self._all = list(brokers)
        self._rng = rng or random.Random()
        self._round: list[tuple[str, int]] = []
        self._current: Optional[tuple[str, int]] = None

    def __len__(self) -> int:
        return len(self._all)

    def next(self) -> tuple[str, int]:
        """The broker for the next attempt: the rest of this round, then a new shuffled round that
        does not start with the broker just used."""
        if not self._round:
            self._round = list(self._all)
            self._rng.shuffle(self._round)
            if len(self._round) > 1 and self._round[0] == self._current:
                self._round.append(self._round.pop(0))
        self._current = self._round.pop(0)
        return self._current

    @property
    def label(self) -> str:
        """``host:port`` of the broker in use or last tried ("" before the first attempt)."""
        if self._current is None:
            return ""
        host, port = self._current
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
