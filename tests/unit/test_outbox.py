"""The pure drop-oldest outbox: order, capacity, exact drop counting, front re-queue."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.publish.outbox import Message, Outbox


def _m(i: int, qos: int = 1) -> Message:
    return Message("t", b"%d" % i, qos, False)


def _drain(ob: Outbox) -> list[int]:
    out = []
    while ob:
        out.append(int(ob.pop().payload))
    return out


def test_fifo_order_within_capacity() -> None:
    ob = Outbox(5)
    for i in range(5):
        assert ob.push(_m(i)) is False
    assert len(ob) == 5 and ob.dropped == 0 and ob.pushed == 5
    assert _drain(ob) == [0, 1, 2, 3, 4]


def test_keeps_newest_and_counts_every_drop() -> None:
    ob = Outbox(3)
    dropped_flags = [ob.push(_m(i)) for i in range(10)]
    assert dropped_flags == [False] * 3 + [True] * 7
    assert ob.dropped == 7 and ob.pushed == 10
    assert _drain(ob) == [7, 8, 9]


def test_requeue_goes_to_front_in_order() -> None:
    ob = Outbox(10)
    for i in range(5):
        ob.push(_m(i))
    taken = [ob.pop(), ob.pop(), ob.pop()]  # 0,1,2 handed to the network
    ob.push(_m(5))
    assert ob.requeue(taken) == 0
    assert ob.pushed == 6  # re-queued messages are not counted twice
    assert _drain(ob) == [0, 1, 2, 3, 4, 5]


def test_requeue_overflow_drops_the_oldest_requeued_first() -> None:
    ob = Outbox(4)
    for i in range(4):
        ob.push(_m(i))
    taken = [ob.pop(), ob.pop()]  # 0,1 in flight
    ob.push(_m(4))
    ob.push(_m(5))  # outbox full again: 2,3,4,5
    assert ob.requeue(taken) == 2
    assert ob.dropped == 2
    assert _drain(ob) == [2, 3, 4, 5]


def test_requeue_partial_overflow() -> None:
    ob = Outbox(4)
    for i in range(3):
        ob.push(_m(i))
    taken = [ob.pop(), ob.pop(), ob.pop()]
    ob.push(_m(3))
    ob.push(_m(4))
    assert ob.requeue(taken) == 1  # room for two of the three
    assert _drain(ob) == [1, 2, 3, 4]


def test_peek_clear_and_bad_capacity() -> None:
    ob = Outbox(2)
    assert ob.peek() is None
    ob.push(_m(1))
    assert ob.peek() == _m(1)
    assert ob.clear() == 1 and ob.dropped == 1 and not ob
    with pytest.raises(IndexError):
        ob.pop()
    with pytest.raises(ValueError, match="capacity"):
        Outbox(0)


# A reference model: ops are ("push",) ("send", k) ("ack", k) ("fail",). Invariant after each op:
# pushed == acked + dropped + queued + inflight, queue never over capacity, order = seq order.
_ops = st.lists(st.one_of(st.just(("push", 0)), st.tuples(st.just("send"), st.integers(1, 5)),
                          st.tuples(st.just("ack"), st.integers(1, 5)), st.just(("fail", 0))),
                max_size=200)


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 8), ops=_ops)
def test_accounting_is_exact_under_any_interleaving(cap: int, ops: list[tuple[str, int]]) -> None:
    ob = Outbox(cap)
    inflight: list[Message] = []
    acked: list[int] = []
    seq = 0
    for op, k in ops:
        if op == "push":
            ob.push(_m(seq))
            seq += 1
        elif op == "send":
            for _ in range(min(k, len(ob))):
                inflight.append(ob.pop())
        elif op == "ack":
            acked += [int(m.payload) for m in inflight[:k]]
            del inflight[:k]
        else:
            ob.requeue(inflight)
            inflight = []
        assert len(ob) <= cap
        assert ob.pushed == seq == len(acked) + ob.dropped + len(ob) + len(inflight)
    rest = [int(m.payload) for m in inflight] + _drain(ob)
    # Messages come out in production order, each at most once, and the queue keeps the newest.
    assert acked == sorted(acked) and len(set(acked)) == len(acked)
    assert rest == sorted(rest) and not set(rest) & set(acked)
