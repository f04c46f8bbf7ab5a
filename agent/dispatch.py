"""Which stored frames go to the uplink next: live first, backlog oldest-first.

The outbox is the only buffer. The uplink (MQTT or export file) is handed at most
``max_inflight`` frames at a time and reports each one delivered (PUBACK, or fsync of
the file) before the dispatcher lets it be deleted; when the link drops, every frame
in flight simply becomes eligible again, because it is still in the outbox.

Backfill policy (docs/agent.md, "Backfill"): a newly sealed frame ("live") is sent
before any backlog frame, so the central side sees the present at once after an outage;
backlog frames, oldest first, fill every other slot of the inflight window except
``live_reserve`` slots kept free for live frames. Live traffic is a frame or two per
second and each occupies a slot for one round trip, so the backlog gets nearly the whole
window and cannot starve live data, nor live data the backlog.

Only sequence numbers and a few recent payloads live in memory: a backlog of a week is
read from SQLite a window at a time, never listed in RAM.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Container
from typing import Any, Protocol

from agent.outbox import Outbox
from agent.sealer import Sealed

log = logging.getLogger("stationseal.agent")

#: Newest sealed frames kept in memory for immediate sending; older ones are read back
#: from the outbox when their turn comes.
LIVE_CAP = 32


class Transport(Protocol):
    """An uplink running in its own thread; it reports back through :class:`Dispatcher`
    methods scheduled on the event loop (``link_up``, ``link_down``, ``delivered``)."""

    kind: str

    def start(self, dispatcher: Dispatcher) -> None: ...

    def submit(self, gen: int, items: list[tuple[int, bytes]]) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def state(self) -> dict[str, Any]: ...


class Dispatcher:
    """Runs on the event loop thread (all outbox access is single-threaded)."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        max_inflight: int,
        live_reserve: int,
    ) -> None:
        if not 1 <= live_reserve < max_inflight:
            raise ValueError("live_reserve must be at least 1 and below max_inflight")
        self.outbox = outbox
        self.max_inflight = max_inflight
        self.live_reserve = live_reserve
        self.transport: Transport | None = None
        self.gen: int | None = None  # link generation while up
        self.inflight: dict[int, int] = {}  # seq -> payload length
        self.live: deque[tuple[int, bytes]] = deque()
        self.live_seqs: set[int] = set()
        #: delivered but not yet deleted (the deletion rides on the next frame's
        #: transaction): seq -> payload length
        self.delivered_pending: dict[int, int] = {}
        self.cursor = 0  # backlog scan position: every seq <= cursor was considered
        self.sent_frames = 0
        self.delivered_frames = 0
        self.backlog_sent = 0

    def attach(self, transport: Transport) -> None:
        self.transport = transport

    # -- events from the sealer ----------------------------------------------------
    def on_sealed(self, s: Sealed) -> None:
        self.live.append((s.seq, s.payload))
        self.live_seqs.add(s.seq)
        while len(self.live) > LIVE_CAP:
            seq, _ = self.live.popleft()
            self.live_seqs.discard(seq)
            # It stays in the outbox and is now backlog: make sure the scan sees it.
            self.cursor = min(self.cursor, seq - 1)
        self.pump()

    def forget(self, ranges: list[tuple[int, int]]) -> None:
        """Frames removed from the outbox by a drop must not be sent any more."""
        gone = {s for s in self.live_seqs if any(a <= s <= b for a, b in ranges)}
        if gone:
            self.live = deque(x for x in self.live if x[0] not in gone)
            self.live_seqs -= gone

    def protected(self) -> Container[int]:
        """Frames a drop must not touch: in flight, or delivered and awaiting deletion."""
        return _Either(self.inflight, self.delivered_pending)

    # -- events from the transport (scheduled on the loop) -------------------------
    def link_up(self, gen: int) -> None:
        self.gen = gen
        self.inflight.clear()
        self.cursor = 0
        self.pump()

    def link_down(self, gen: int) -> None:
        if self.gen == gen:
            self.gen = None
            self.inflight.clear()
            self.cursor = 0

    def delivered(self, gen: int, seqs: list[int]) -> None:
        # A delivery is a delivery whatever the link generation: the broker has it.
        n = 0
        for seq in seqs:
            size = self.inflight.pop(seq, None)
            if size is not None:
                self.delivered_pending[seq] = size
                n += 1
        self.delivered_frames += n
        self.pump()

    # -- deletions -----------------------------------------------------------------
    def take_delivered(self) -> list[tuple[int, int]]:
        return list(self.delivered_pending.items())

    def deleted(self, items: list[tuple[int, int]]) -> None:
        for seq, _ in items:
            self.delivered_pending.pop(seq, None)

    # -- scheduling ----------------------------------------------------------------
    def pump(self) -> None:
        if self.gen is None or self.transport is None:
            return
        durable = self.outbox.durable_seq
        out: list[tuple[int, bytes]] = []
        inflight = self.inflight
        while self.live and len(inflight) < self.max_inflight and self.live[0][0] <= durable:
            seq, payload = self.live.popleft()
            self.live_seqs.discard(seq)
            inflight[seq] = len(payload)
            out.append((seq, payload))
        backlog_limit = self.max_inflight - self.live_reserve
        while len(inflight) < backlog_limit and self.cursor < durable:
            rows = self.outbox.fetch_after(self.cursor, backlog_limit - len(inflight) + 8,
                                           durable)
            if not rows:
                self.cursor = durable
                break
            for seq, payload in rows:
                if len(inflight) >= backlog_limit:
                    break
                self.cursor = seq
                if seq in inflight or seq in self.live_seqs or seq in self.delivered_pending:
                    continue
                inflight[seq] = len(payload)
                out.append((seq, payload))
                self.backlog_sent += 1
        if out:
            self.sent_frames += len(out)
            self.transport.submit(self.gen, out)

    def state(self) -> dict[str, object]:
        return {
            "inflight": len(self.inflight),
            "sent_frames": self.sent_frames,
            "delivered_frames": self.delivered_frames,
            "backlog_frames_sent": self.backlog_sent,
        }


class _Either:
    __slots__ = ("a", "b")

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a = a
        self.b = b

    def __contains__(self, x: object) -> bool:
        return x in self.a or x in self.b
