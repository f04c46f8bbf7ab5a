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

Confirmation (docs/acks.md). With ``confirm="ingest"`` (the default of a site config) a
PUBACK only moves a frame from "in flight" to "accepted by the broker, awaiting the
ingest": it stays in the outbox, marked with the time, and is not sent again until it is
due (``confirm_timeout_s``, doubling per attempt), or sooner if a frame sent after it is
confirmed first (the ingest sees one gateway's frames in order, so the earlier one, or
its confirmation, was lost: a broker crash). It is deleted when the ingest's
acknowledgement names its sequence number *and* its hash. With ``confirm="broker"`` a
PUBACK with reason "success" is the delivery. Either way, "no matching subscribers"
(PUBACK 0x10) means nobody holds the frame: it is sent again after ``retry_s``, doubling.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Container
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
        confirm: str = "broker",
        confirm_timeout_s: float = 900.0,
        retry_s: float = 5.0,
        overtaken_grace_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= live_reserve < max_inflight:
            raise ValueError("live_reserve must be at least 1 and below max_inflight")
        if confirm not in ("ingest", "broker"):
            raise ValueError(f"confirm {confirm!r}: choose 'ingest' or 'broker'")
        self.confirm = confirm
        self.confirm_timeout_s = confirm_timeout_s
        self.retry_s = retry_s
        self.overtaken_grace_s = overtaken_grace_s
        self._clock = clock
        #: earliest time a frame waiting for a resend is due (rescan the backlog then)
        self.next_due = math.inf
        self.confirmed_frames = 0
        self.unrouted_frames = 0
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
        """Delivered for good (export file fsynced; PUBACK with ``confirm="broker"``)."""
        # A delivery is a delivery whatever the link generation: the broker has it.
        n = 0
        for seq in seqs:
            size = self.inflight.pop(seq, None)
            if size is not None:
                self.delivered_pending[seq] = size
                n += 1
        self.delivered_frames += n
        self.pump()

    def published(self, gen: int, seqs: list[int]) -> None:
        """PUBACK "success": at the broker. Awaiting the ingest unless confirming by
        broker."""
        if self.confirm == "broker":
            self.delivered(gen, seqs)
            return
        now = self._clock()
        for seq in seqs:
            if self.inflight.pop(seq, None) is not None:
                self.outbox.mark_published(seq, now, self.confirm_timeout_s)
        self.next_due = min(self.next_due, now + self.confirm_timeout_s)
        self.pump()

    def unrouted(self, gen: int, seqs: list[int]) -> None:
        """PUBACK 0x10 "no matching subscribers": the broker dropped the frame (the ingest
        lost its session, or never subscribed). Not a delivery: due again later."""
        now = self._clock()
        n = 0
        for seq in seqs:
            if self.inflight.pop(seq, None) is not None:
                self.outbox.mark_unrouted(seq, now, self.retry_s)
                n += 1
        if n:
            if self.unrouted_frames == 0:
                log.warning("broker has no subscriber for this gateway's frames (PUBACK "
                            "0x10): keeping them and sending again later")
            self.unrouted_frames += n
            self.next_due = min(self.next_due, now + self.retry_s)
        self.pump()

    def confirmed(self, items: list[tuple[int, bytes]]) -> None:
        """The ingest's acknowledgement: (seq, frame hash) it has stored for good. A frame
        is deleted only if the hash is the one in the outbox."""
        now = self._clock()
        latest: float | None = None
        n = 0
        for seq, h in items:
            info = self.outbox.lookup(seq)
            if info is None or info[0] != h or seq in self.delivered_pending:
                continue
            self.inflight.pop(seq, None)
            if seq in self.live_seqs:
                self.live = deque(x for x in self.live if x[0] != seq)
                self.live_seqs.discard(seq)
            self.delivered_pending[seq] = info[1]
            n += 1
            if info[2] is not None:
                latest = info[2] if latest is None else max(latest, info[2])
        self.confirmed_frames += n
        self.delivered_frames += n
        if latest is not None:
            due = now + self.overtaken_grace_s
            self.outbox.expedite(latest - self.overtaken_grace_s, due)
            self.next_due = min(self.next_due, due)
        if n:
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
        now = self._clock()
        if now >= self.next_due and not self.outbox.pending_marks:
            # Frames waiting for a resend became due: scan the backlog from the start.
            self.cursor = 0
            nd = self.outbox.next_due(now)
            self.next_due = math.inf if nd is None else nd
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
                                           durable, now)
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
            "confirm": self.confirm,
            "confirmed_frames": self.confirmed_frames,
            "unrouted_frames": self.unrouted_frames,
        }


class _Either:
    __slots__ = ("a", "b")

    def __init__(self, a: Container[int], b: Container[int]) -> None:
        self.a = a
        self.b = b

    def __contains__(self, x: object) -> bool:
        return x in self.a or x in self.b
