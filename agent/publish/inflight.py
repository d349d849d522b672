"""Bookkeeping of the messages handed to the current paho client and not yet completed.

Pure (no sockets, no paho): the network loop asks :meth:`Inflight.take` what it may hand out,
reports each hand-out with its packet id, each completion (``on_publish``) and, when the
connection dies, gets the unfinished messages back in hand-out order to re-queue at the FRONT of
the outbox. Used from the loop thread only; ``take`` runs under the outbox lock.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

from agent.publish.outbox import Message
from agent.publish.retained import Retained

__all__ = ["POISON_STRIKES", "QOS0_WINDOW", "Inflight"]

log = logging.getLogger(__name__)

QOS0_WINDOW = 256  # QoS 0 messages handed to paho but not yet written to the socket
POISON_STRIKES = 3
_BATCH = 256  # messages moved per lock hold (bounds how long publish() can wait for the lock)


class _Queue(Protocol):  # the outbox and the retained lane
    def __bool__(self) -> bool: ...

    def peek(self) -> Optional[Message]: ...

    def pop(self) -> Message: ...


class Inflight:
    """QoS>0 messages stay here until PUBACK/PUBCOMP, QoS 0 until written to the socket."""

    def __init__(self, max_inflight: int) -> None:
        self._max_inflight = max_inflight
        self.window = max_inflight
        self.max_packet = 0  # broker's Maximum Packet Size (MQTT 5 CONNACK); 0 = none announced
        self._msgs: dict[int, Message] = {}
        self._n_q0 = self._n_q1 = 0
        self._suspect: Optional[Message] = None  # oldest un-acked message when a session died
        self._strikes = 0
        self._acked_at_connect = 0
        self.sent = self.acked = self.rejected = 0
        # The retained lane's messages are re-sent on every connection, so they are kept out of the
        # outbox's ledger (produced = acked + dropped + queued + inflight) and counted apart.
        self.retained_sent = 0

    def __len__(self) -> int:
        return len(self._msgs)

    def session_started(self, connack_props: Any) -> None:
        """Adopt the broker's Receive Maximum and Maximum Packet Size (MQTT 5; absent in 3.1.1)."""
        receive_max = getattr(connack_props, "ReceiveMaximum", None)
        self.window = min(self._max_inflight, receive_max or self._max_inflight)
        self.max_packet = int(getattr(connack_props, "MaximumPacketSize", 0) or 0)
        self._acked_at_connect = self.acked + self.retained_sent

    def take(self, outbox: _Queue) -> list[Message]:
        """Pop from the outbox what the windows allow, oldest first (caller holds the outbox lock)."""
        batch: list[Message] = []
        while outbox and len(batch) < _BATCH:
            m = outbox.peek()
            assert m is not None
            if m.qos:
                if self._n_q1 >= self.window:
                    break
                self._n_q1 += 1
            elif self._n_q0 >= QOS0_WINDOW:
                break
            else:
                self._n_q0 += 1
            batch.append(outbox.pop())
        return batch

    def problem(self, m: Message) -> Optional[str]:
        """Why ``m`` must not be sent at all (the broker would drop the connection), or None."""
        if self.max_packet and packet_size(m) > self.max_packet:
            return f"{packet_size(m)} bytes exceed the broker's maximum packet size {self.max_packet}"
        return None

    def handed(self, mid: int, m: Message) -> None:
        self._msgs[mid] = m

    def unreserve(self, m: Message, rejected: bool) -> None:
        """A taken message that was not handed to paho after all."""
        if m.qos:
            self._n_q1 -= 1
        else:
            self._n_q0 -= 1
        self.rejected += rejected

    def completed(self, mid: int, failed: bool) -> Optional[Message]:
        """``on_publish``: returns the message, or None for a packet id that is not ours."""
        m = self._msgs.pop(mid, None)
        if m is None:
            return None
        self.unreserve(m, rejected=failed)
        if failed:
            return m
        if type(m) is Retained:
            self.retained_sent += 1
        else:
            self.sent += 1
            self.acked += m.qos > 0
        return m

    def take_back(self, was_connected: bool) -> list[Message]:
        """The connection is gone: everything unfinished, in hand-out order, for re-queueing.

        A message the broker kills the connection over (e.g. too large for an MQTT 3.1.1 broker,
        which cannot announce its limit) would otherwise be re-sent forever and block everything
        behind it: after POISON_STRIKES sessions in a row that died without a single ack with the
        same oldest message, that message is rejected instead of returned.
        """
        back = list(self._msgs.values())  # dicts keep insertion (= hand-out) order
        self._msgs.clear()
        self._n_q0 = self._n_q1 = 0
        if was_connected and back:
            if self.acked + self.retained_sent == self._acked_at_connect and back[0] is self._suspect:
                self._strikes += 1
            else:
                self._suspect, self._strikes = back[0], 1
            if self._strikes >= POISON_STRIKES:
                bad = back.pop(0)
                self._suspect, self._strikes = None, 0
                self.rejected += 1
                log.error("dropping a message on %s (%d bytes): the connection died %d times in a row "
                          "with it in flight", bad.topic, len(bad.payload), POISON_STRIKES)
        return back


def packet_size(m: Message) -> int:
    """Upper bound of the PUBLISH packet size (fixed header 5, topic 2+n, packet id 2, props 1)."""
    return 10 + len(m.topic.encode()) + len(m.payload)
