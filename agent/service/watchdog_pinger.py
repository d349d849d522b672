"""Feeds the systemd watchdog only while every watched loop makes progress.

``WatchdogPinger.run()`` is a thread body: every half watchdog interval it asks
:class:`~agent.service.liveness.Liveness` for stale loops and sends ``WATCHDOG=1`` only when there
are none. A hung inference, a dead MQTT network thread or a stalled frame loop therefore stops the
pings, and systemd aborts (``WatchdogSignal=SIGABRT``, stacks dumped by faulthandler) and restarts us.
"""

from __future__ import annotations

import logging
from typing import Optional, Protocol

from agent.service.liveness import Liveness

__all__ = ["WatchdogNotifier", "WatchdogPinger"]

_log = logging.getLogger(__name__)


class WatchdogNotifier(Protocol):
    """The part of :class:`~agent.service.sdnotify.Notifier` the pinger uses."""

    @property
    def watchdog_interval_s(self) -> Optional[float]: ...

    def watchdog(self) -> bool: ...

    def status(self, text: str) -> bool: ...


class _Waiter(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: Optional[float] = None) -> bool: ...


class WatchdogPinger:
    """Pings every ``watchdog_interval_s / 2`` while ``liveness.stale(max_age_s)`` is empty.

    ``max_age_s`` defaults to the watchdog interval. ``run()`` returns at once when systemd asked for
    no watchdog, and when ``stop`` is set (the caller sends ``STOPPING=1``)."""

    def __init__(self, notifier: WatchdogNotifier, liveness: Liveness, stop: _Waiter,
                 max_age_s: Optional[float] = None) -> None:
        self._notifier = notifier
        self._liveness = liveness
        self._stop = stop
        self._max_age_s = max_age_s
        self.pings = 0
        self.withheld = 0
        self.stale_now: list[str] = []

    @property
    def period_s(self) -> Optional[float]:
        """Seconds between two checks, or None when there is no watchdog."""
        interval = self._notifier.watchdog_interval_s
        return interval / 2 if interval else None

    def run(self) -> None:
        period = self.period_s
        if period is None:
            _log.debug("no systemd watchdog requested; pinger not running")
            return
        interval = self._notifier.watchdog_interval_s or period * 2
        max_age = self._max_age_s if self._max_age_s is not None else interval
        _log.info("systemd watchdog: %.1f s timeout, checking every %.1f s, loops stale after %.1f s",
                  interval, period, max_age)
        while not self._stop.is_set():
            self.check(max_age)
            self._stop.wait(period)

    def check(self, max_age_s: float) -> bool:
        """One round: ping if nothing is stale; True if a ping was sent."""
        stale = self._liveness.stale(max_age_s)
        if stale != self.stale_now:
            self._report(stale)
        self.stale_now = stale
        if stale:
            self.withheld += 1
            return False
        self.pings += 1
        return self._notifier.watchdog()

    def _report(self, stale: list[str]) -> None:
        if stale:
            ages = self._liveness.ages()
            detail = ", ".join(f"{n} ({ages.get(n, 0.0):.1f} s)" for n in stale)
            _log.error("watchdog pings withheld: no progress from %s", detail)
            self._notifier.status(f"stalled: {', '.join(stale)}; watchdog pings withheld")
        else:
            _log.warning("all loops make progress again; watchdog pings resumed")
