"""Pure in-flight bookkeeping: windows, completion, re-queue order, poison messages, packet limit."""

from __future__ import annotations

from types import SimpleNamespace

from agent.publish.inflight import POISON_STRIKES, QOS0_WINDOW, Inflight
from agent.publish.outbox import Message, Outbox


def _outbox(n: int, qos: int = 1, cap: int = 10_000) -> Outbox:
    ob = Outbox(cap)
    for i in range(n):
        ob.push(Message("t", b"%d" % i, qos, False))
    return ob


def _hand(fl: Inflight, batch: list[Message], first_mid: int = 1) -> list[int]:
    mids = list(range(first_mid, first_mid + len(batch)))
    for mid, m in zip(mids, batch):
        fl.handed(mid, m)
    return mids


def test_qos1_window_and_receive_maximum() -> None:
    fl = Inflight(max_inflight=64)
    fl.session_started(SimpleNamespace(ReceiveMaximum=20))
    ob = _outbox(100)
    batch = fl.take(ob)
    assert len(batch) == 20 and len(ob) == 80
    mids = _hand(fl, batch)
    assert fl.take(ob) == []  # window full
    assert fl.completed(mids[0], failed=False) == batch[0]
    assert [m.payload for m in fl.take(ob)] == [b"20"]  # one slot freed
    assert fl.sent == fl.acked == 1


def test_qos0_window_is_separate_and_blocks_in_order() -> None:
    fl = Inflight(max_inflight=4)
    ob = _outbox(QOS0_WINDOW + 10, qos=0)
    assert len(fl.take(ob)) == QOS0_WINDOW
    assert fl.take(ob) == []


def test_take_back_returns_unfinished_in_hand_out_order() -> None:
    fl = Inflight(max_inflight=10)
    ob = _outbox(10)
    batch = fl.take(ob)
    mids = _hand(fl, batch)
    for mid in (mids[1], mids[4]):
        fl.completed(mid, failed=False)
    back = fl.take_back(was_connected=True)
    assert [int(m.payload) for m in back] == [0, 2, 3, 5, 6, 7, 8, 9]
    assert len(fl) == 0 and len(fl.take(_outbox(20))) == 10  # window fully released


def test_failed_completion_is_rejected_and_unknown_mid_ignored() -> None:
    fl = Inflight(max_inflight=10)
    batch = fl.take(_outbox(2))
    mids = _hand(fl, batch)
    assert fl.completed(999, failed=False) is None
    assert fl.completed(mids[0], failed=True) == batch[0]
    assert (fl.sent, fl.acked, fl.rejected) == (0, 0, 1)


def test_poison_message_is_dropped_after_strikes_without_progress() -> None:
    fl = Inflight(max_inflight=10)
    ob = _outbox(3)
    for strike in range(1, POISON_STRIKES + 1):
        fl.session_started(None)
        batch = fl.take(ob)
        _hand(fl, batch)
        back = fl.take_back(was_connected=True)
        if strike < POISON_STRIKES:
            assert [int(m.payload) for m in back] == [0, 1, 2]
        else:
            assert [int(m.payload) for m in back] == [1, 2] and fl.rejected == 1
        ob.requeue(back)


def test_progress_or_failed_connects_reset_the_strikes() -> None:
    fl = Inflight(max_inflight=10)
    ob = _outbox(3)
    for _ in range(POISON_STRIKES * 2):
        fl.session_started(None)
        mids = _hand(fl, fl.take(ob))
        fl.completed(mids[-1], failed=False)  # the broker acks something: the head is not poison
        ob.requeue(fl.take_back(was_connected=True))
        ob.push(Message("t", b"new", 1, False))
    assert fl.rejected == 0 and ob.peek() == Message("t", b"0", 1, False)  # the head survived
    for _ in range(POISON_STRIKES * 2):  # never connected: no strike
        ob.requeue(fl.take_back(was_connected=False))
    assert fl.rejected == 0


def test_packet_limit() -> None:
    fl = Inflight(max_inflight=10)
    big, small = Message("t", b"x" * 500, 1, False), Message("t", b"x", 1, False)
    assert fl.problem(big) is None  # no limit announced
    fl.session_started(SimpleNamespace(MaximumPacketSize=300))
    assert "maximum packet size 300" in str(fl.problem(big)) and fl.problem(small) is None
