"""Liveness beats and the WatchdogPinger that feeds systemd only while every loop moves.

Deterministic tests drive the pinger with a fake clock and a fake stop event (``wait`` advances the
clock); a threaded test uses the real clock and a real notification socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Optional

from agent.service.liveness import Liveness
from agent.service.sdnotify import Notifier
from agent.service.watchdog_pinger import WatchdogPinger
from tests.helpers.notify import NotifyListener


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class SteppedStop:
    """A stop event whose ``wait`` advances the fake clock and runs the test's script for that step."""

    def __init__(self, clock: FakeClock, rounds: int, on_step: Callable[[int], None]) -> None:
        self.clock = clock
        self.rounds = rounds
        self.on_step = on_step
        self.waits: list[Optional[float]] = []
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: Optional[float] = None) -> bool:
        assert timeout is not None, "the pinger must never wait without a timeout"
        self.waits.append(timeout)
        self.clock.t += timeout
        self.on_step(len(self.waits))
        if len(self.waits) >= self.rounds:
            self._set = True
        return self._set


def _notifier(listener: NotifyListener, watchdog_usec: int) -> Notifier:
    return Notifier.from_env({"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": str(watchdog_usec)})


def test_expected_loop_goes_stale_without_any_beat() -> None:
    clock = FakeClock()
    live = Liveness(expected=("inference", "mqtt"), clock=clock)
    assert live.stale(5.0) == []
    clock.t += 4.0
    live.beat("inference")
    clock.t += 2.0
    assert live.stale(5.0) == ["mqtt"]  # never beat since it was announced 6 s ago
    assert live.ages() == {"inference": 2.0, "mqtt": 6.0}


def test_beat_refreshes_and_forget_stops_watching() -> None:
    clock = FakeClock()
    live = Liveness(clock=clock)
    live.beat("b")
    live.beat("a")
    clock.t += 10.0
    assert live.stale(5.0) == ["a", "b"]
    live.beat("b")
    assert live.stale(5.0) == ["a"]
    live.forget("a")
    live.forget("never-seen")
    assert live.stale(5.0) == []
    live.expect("b")  # already watched: its last beat is kept, not reset
    clock.t += 6.0
    assert live.stale(5.0) == ["b"]


def test_beats_from_many_threads() -> None:
    live = Liveness()
    names = [f"loop{i}" for i in range(8)]

    def worker(name: str) -> None:
        for _ in range(2000):
            live.beat(name)
            live.stale(60.0)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(live.ages()) == names and live.stale(60.0) == []


def test_pings_every_half_interval_while_beating_then_stop_when_a_loop_stalls(
        listener: NotifyListener) -> None:
    clock = FakeClock()
    live = Liveness(expected=("inference", "mqtt"), clock=clock)
    notifier = _notifier(listener, 2_000_000)  # WatchdogSec=2s

    def script(step: int) -> None:
        live.beat("inference")
        if step < 6:  # the MQTT loop dies after step 6
            live.beat("mqtt")

    stop = SteppedStop(clock, rounds=12, on_step=script)
    pinger = WatchdogPinger(notifier, live, stop, max_age_s=2.0)
    pinger.run()
    assert stop.waits and all(w <= 1.0 for w in stop.waits)  # at least every WATCHDOG_USEC / 2
    msgs = listener.drain()
    pings = [m for m in msgs if m == "WATCHDOG=1"]
    # 12 checks at t = 0..11 s; mqtt's last beat is at t = 5 s, so it is fresh up to t = 7 s
    # (age 2 s is not > 2 s) and stale from t = 8 s: 8 pings, then 4 withheld.
    assert len(pings) == 8 == pinger.pings
    assert pinger.withheld == 4 and pinger.stale_now == ["mqtt"]
    assert msgs[-1].startswith("STATUS=stalled: mqtt")
    assert all(m == "WATCHDOG=1" for m in msgs[:-1])  # no ping after the stall was seen


def test_pings_resume_when_the_loop_recovers(listener: NotifyListener) -> None:
    clock = FakeClock()
    live = Liveness(expected=("inference",), clock=clock)
    pinger = WatchdogPinger(_notifier(listener, 1_000_000), live, SteppedStop(clock, 1, lambda s: None), 1.0)
    clock.t += 5.0
    assert not pinger.check(1.0)
    live.beat("inference")
    assert pinger.check(1.0)
    assert listener.drain() == ["STATUS=stalled: inference; watchdog pings withheld", "WATCHDOG=1"]


def test_no_watchdog_requested_returns_at_once(listener: NotifyListener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.env})
    stop = SteppedStop(FakeClock(), rounds=1, on_step=lambda s: None)
    pinger = WatchdogPinger(notifier, Liveness(), stop)
    assert pinger.period_s is None
    pinger.run()
    assert stop.waits == [] and listener.drain() == []


def test_default_max_age_is_the_watchdog_interval(listener: NotifyListener) -> None:
    clock = FakeClock()
    live = Liveness(expected=("inference",), clock=clock)
    stop = SteppedStop(clock, rounds=10, on_step=lambda s: None)  # nobody beats
    pinger = WatchdogPinger(_notifier(listener, 3_000_000), live, stop)
    pinger.run()
    # Checks at t = 0, 1.5, 3.0 (age 3.0 is not > 3.0) ping; from 4.5 s on they are withheld.
    assert pinger.pings == 3 and pinger.withheld == 7


def test_threaded_with_real_clock(listener: NotifyListener) -> None:
    """Real thread, clock and socket: pings flow while beating, stop for good once a beat is stale,
    and the thread ends on stop, after which the daemon sends STOPPING=1."""
    live = Liveness(expected=("inference", "mqtt"))
    notifier = _notifier(listener, 200_000)  # 0.2 s: pings every 0.1 s
    stop = threading.Event()
    beating = threading.Event()
    beating.set()

    def beater() -> None:
        while not stop.wait(0.02):
            live.beat("inference")
            if beating.is_set():
                live.beat("mqtt")

    pinger = WatchdogPinger(notifier, live, stop, max_age_s=0.3)
    threads = [threading.Thread(target=beater), threading.Thread(target=pinger.run)]
    for t in threads:
        t.start()
    try:
        got = listener.wait_for("WATCHDOG=1")
        got += listener.wait_for("WATCHDOG=1")
        assert got.count("WATCHDOG=1") >= 2
        beating.clear()  # the MQTT loop hangs
        deadline = time.monotonic() + 30
        while pinger.stale_now != ["mqtt"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pinger.stale_now == ["mqtt"]
        listener.drain()
        # Several check periods pass: a correct pinger sends nothing while mqtt stays stale.
        after = [m for m in (listener.recv(0.2) for _ in range(5)) if m is not None]
        assert "WATCHDOG=1" not in after
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads), "pinger thread did not end on stop"
    notifier.stopping()
    assert listener.drain()[-1] == "STOPPING=1"
