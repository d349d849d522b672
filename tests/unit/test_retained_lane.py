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


def test_every_message_in_order_and_coalesced_only_past_the_limit() -> None:
    lane = RetainedLane(limit=4)
    for state in (b"downloading", b"verifying", b"validating"):  # a watcher sees every transition
        lane.put(_r("ota/status", state), sticky=True)
    lane.put(_r("config"), sticky=True)
    assert _drain(lane) == [("ota/status", b"downloading"), ("ota/status", b"verifying"),
                            ("ota/status", b"validating"), ("config", b"x")]
    for i in range(6):  # a long outage: past the limit only the newest per topic waits
        lane.put(_r("ota/status", b"p%d" % i), sticky=True)
    assert _drain(lane) == [("ota/status", b"p4"), ("ota/status", b"p5")] and lane.coalesced == 4


def test_every_connection_resends_sticky_state_but_not_one_shot_messages() -> None:
    lane = RetainedLane()
    lane.put(_r("removal", b""), sticky=False)
    lane.put(_r("config"), sticky=True)
    lane.put(_r("ota/status", b"idle"), sticky=True)
    assert _drain(lane) == [("removal", b""), ("config", b"x"), ("ota/status", b"idle")]
    lane.put(_r("ota/status", b"committed"), sticky=True)
    lane.connected()  # what waits first, then the newest of each sticky topic not already waiting
    assert _drain(lane) == [("ota/status", b"committed"), ("config", b"x")]
    lane.connected()
    assert sorted(t for t, _ in _drain(lane)) == ["config", "ota/status"]


def test_requeue_takes_back_only_its_own_messages_in_order_at_the_front() -> None:
    lane = RetainedLane()
    old = _r("ota/status", b"downloading")
    cfg = _r("config")
    lane.put(old, sticky=True)
    lane.put(cfg, sticky=True)
    assert lane.pop() is old and lane.pop() is cfg
    lane.put(_r("ota/status", b"committed"), sticky=True)  # while the first two were in flight
    result = Message("result", b"r", 1, False)
    rest = lane.requeue([old, result, cfg])
    assert rest == [result]  # results go back to the outbox, never into the lane
    assert _drain(lane) == [("ota/status", b"downloading"), ("config", b"x"), ("ota/status", b"committed")]


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
