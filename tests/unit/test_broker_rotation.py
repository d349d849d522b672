from __future__ import annotations

import random

import pytest

from agent.publish.brokers import BrokerRotation

NODES = [("a", 1), ("b", 2), ("c", 3), ("fd00::1", 4)]


def test_each_round_tries_every_broker_once_in_a_random_order() -> None:
    rot = BrokerRotation(NODES, random.Random(1))
    assert rot.label == ""
    rounds = [[rot.next() for _ in NODES] for _ in range(50)]
    assert all(sorted(r) == sorted(NODES) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 10  # shuffled, not one fixed order
    # The broker just used (failed or dropped) is never tried again first.
    assert all(a[-1] != b[0] for a, b in zip(rounds, rounds[1:]))


def test_first_choice_spreads_a_fleet_over_the_nodes() -> None:
    firsts = {BrokerRotation(NODES, random.Random(seed)).next() for seed in range(200)}
    assert firsts == set(NODES)


def test_one_broker_and_labels() -> None:
    rot = BrokerRotation([("h", 1883)])
    assert [rot.next() for _ in range(3)] == [("h", 1883)] * 3
    assert rot.label == "h:1883"
    v6 = BrokerRotation([("fd00::1", 1883)])
    v6.next()
    assert v6.label == "[fd00::1]:1883"
    with pytest.raises(ValueError):
        BrokerRotation([])
