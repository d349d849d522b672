"""Full-jitter backoff: the bounds, and a simulated broker restart in front of 10,000 devices whose
reconnects must spread over the backoff window rather than arrive in waves."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from agent.backoff import Backoff

_DEVICES = 10_000


def test_delays_stay_under_a_doubling_bound_and_reset() -> None:
    b = Backoff(0.5, 4.0, random.Random(1))
    bounds = []
    for _ in range(200):
        bound = b.bound
        bounds.append(bound)
        assert 0.0 <= b.next_delay() <= bound
    assert bounds[:5] == [0.5, 1.0, 2.0, 4.0, 4.0] and set(bounds[4:]) == {4.0}
    b.reset()
    assert b.bound == 0.5


def test_delays_use_the_whole_window() -> None:
    b = Backoff(1.0, 1.0, random.Random(2))
    delays = [b.next_delay() for _ in range(5000)]
    assert min(delays) < 0.05 and max(delays) > 0.95  # not clustered around the bound
    assert 0.45 < sum(delays) / len(delays) < 0.55


def _full_jitter(lo: float, hi: float, rng: random.Random) -> Iterator[float]:
    b = Backoff(lo, hi, rng)
    while True:
        yield b.next_delay()


def _fixed_with_small_jitter(lo: float, hi: float, rng: random.Random) -> Iterator[float]:
    """What this replaced: doubling delays times a ±20 % factor."""
    delay = lo
    while True:
        yield delay * rng.uniform(0.8, 1.2)
        delay = min(hi, delay * 2)


def _reconnect_times(delays: Callable[[float, float, random.Random], Iterator[float]], down_s: float,
                     lo: float = 0.5, hi: float = 30.0) -> list[float]:
    """Every device loses the broker at t=0 and retries per its backoff; the broker is back at
    ``down_s``. Returns, per device, how long after the broker came back it reconnected."""
    rng = random.Random(7)
    out = []
    for _ in range(_DEVICES):
        t, attempts = 0.0, delays(lo, hi, rng)
        while t < down_s:
            t += next(attempts)
        out.append(t - down_s)
    return sorted(out)


def _spread(times: list[float]) -> float:
    """Seconds between the 10th and the 90th percentile of the reconnects."""
    return times[int(0.9 * len(times))] - times[int(0.1 * len(times))]


@pytest.mark.parametrize("down_s", [2.0, 5.0, 20.0])
def test_a_restarted_broker_sees_reconnects_spread_over_the_window(down_s: float) -> None:
    window = min(30.0, down_s)  # the backoff bound has grown to about the outage's length
    spread = _spread(_reconnect_times(_full_jitter, down_s))
    assert spread >= 0.5 * window, f"80 % of the fleet reconnected within {spread:.1f} s"
    # The metric tells the two apart: the old scheme reconnects the fleet in a narrow wave.
    waves = _spread(_reconnect_times(_fixed_with_small_jitter, down_s))
    assert waves < 0.5 * window and spread > 3 * waves
