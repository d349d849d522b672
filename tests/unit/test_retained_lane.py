"""The retained lane (agent.publish.retained) and its place in front of the outbox (Inflight.take)."""

from __future__ import annotations

from agent.publish.inflight import Inflight
from agent.publish.outbox import Message, Outbox
from agent.publish.retained import Retained, RetainedLane


def _r(topic: str, payload: bytes = b"x") -> Retained:
    return Retained(topic, payload, 1, True)


def _drain(lane: RetainedLane) -> list[tuple[str, bytes]]:
    out = []
    while lane:
        m = lane.pop()
        out.append((m.topic, m.payload))
    return out


def test_newest_payload_per_topic_in_first_put_order() -> None:
    lane = RetainedLane()
    lane.put(_r("a", b"1"), sticky=True)
    lane.put(_r("b", b"1"), sticky=True)
    lane.put(_r("a", b"2"), sticky=True)  # replaces the waiting a=1
    assert len(lane) == 2 and lane.replaced == 1
    assert _drain(lane) == [("b", b"1"), ("a", b"2")]
    assert lane.peek() is None and not lane


def test_every_connection_resends_sticky_state_but_not_one_shot_messages() -> None:
    lane = RetainedLane()
    lane.put(_r("removal", b""), sticky=False)
    lane.put(_r("config"), sticky=True)
    lane.put(_r("ota/status", b"idle"), sticky=True)
    assert _drain(lane) == [("removal", b""), ("config", b"x"), ("ota/status", b"idle")]
    lane.put(_r("ota/status", b"committed"), sticky=True)
    lane.connected()
    assert _drain(lane) == [("config", b"x"), ("ota/status", b"committed")]
    lane.connected()
    assert [t for t, _ in _drain(lane)] == ["config", "ota/status"]


def test_requeue_takes_back_only_its_own_current_messages() -> None:
    lane = RetainedLane()
    old = _r("ota/status", b"downloading")
    lane.put(old, sticky=True)
    cfg = _r("config")
    lane.put(cfg, sticky=True)
    assert lane.pop() is old and lane.pop() is cfg
    lane.put(_r("ota/status", b"committed"), sticky=True)  # superseded while `old` was in flight
    result = Message("result", b"r", 1, False)
    rest = lane.requeue([old, result, cfg])
    assert rest == [result]  # results go back to the outbox, never into the lane
    assert _drain(lane) == [("ota/status", b"committed"), ("config", b"x")]  # not the stale `old`


def test_a_result_overflow_never_drops_retained_state() -> None:
    """The finding: discovery queued once with results in a drop-oldest outbox of 50, broker away:
    the configs were gone before the first connection. The lane is not part of that outbox."""
    outbox, lane = Outbox(50), RetainedLane()
    lane.put(_r("homeassistant/device/pi-042/config"), sticky=True)
    for i in range(10_000):
        outbox.push(Message("digit-agent/pi-042/result", str(i).encode(), 1, False))
    assert outbox.dropped == 10_000 - 50
    fl = Inflight(max_inflight=8)
    batch = fl.take(lane) + fl.take(outbox)
    assert batch[0].topic == "homeassistant/device/pi-042/config"
    assert len(batch) == 8 and [m.payload for m in batch[1:]] == [str(i).encode() for i in range(9950, 9957)]
