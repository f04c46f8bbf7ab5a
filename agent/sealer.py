"""Readings and events in, signed frames in the outbox out.

Instrument tasks hand their readings here the moment a poll returns; they wait in memory
only until the batch is full (``max_readings``) or old enough (``max_delay_s``), then
one frame is sealed and stored in one SQLite transaction. That in-memory batch is the
only thing a power cut can cost (docs/agent.md, "Durability").

Per reading the cost is a list append here and the hand-inlined CBOR encoding in
:func:`stationseal.frame.seal`; everything else (signature, hashing, transaction, MQTT
publish) is paid once per frame.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Protocol

from agent.clock import GATEWAY, ClockMonitor
from agent.outbox import Outbox
from stationseal.frame import Frame, FrameError, encode_body, seal
from stationseal.records import Event, Reading
from stationseal.signing import Signer

log = logging.getLogger("stationseal.agent")

#: Readings kept in memory while the outbox cannot be written (disk full, I/O error), as
#: a multiple of the batch size. Beyond it the oldest are discarded, counted and the count
#: sealed in a ``readings_lost`` event as soon as storage works again.
MAX_BACKLOG_BATCHES = 20


@dataclass(slots=True)
class Sealed:
    """What the uplink needs to know about a newly stored frame."""

    seq: int
    payload: bytes
    readings: int


class Forwarder(Protocol):
    """The sending side (agent.dispatch.Dispatcher), as the sealer sees it."""

    def on_sealed(self, s: Sealed) -> None: ...

    def protected(self) -> Container[int]: ...

    def take_delivered(self) -> list[tuple[int, int]]: ...

    def deleted(self, items: list[tuple[int, int]]) -> None: ...

    def forget(self, ranges: list[tuple[int, int]]) -> None: ...


class Sealer:
    def __init__(
        self,
        signer: Signer,
        outbox: Outbox,
        *,
        gateway_id: str,
        site: str,
        max_readings: int,
        max_delay_s: float,
        clock: ClockMonitor,
        forwarder: Forwarder | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.outbox = outbox
        self.gateway_id = gateway_id
        self.site = site
        self.max_readings = max_readings
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.forwarder = forwarder
        self._wall = wall
        self.boot_id = os.urandom(16)
        self._readings: list[Reading] = []
        self._events: list[Event] = []
        self._since: float | None = None  # monotonic time of the oldest pending item
        self.frames = 0
        self.readings = 0
        self.lost_readings = 0  # discarded while storage failed (sealed as an event)
        self._unreported_lost = 0
        self.storage_error: str | None = None

    # -- intake --------------------------------------------------------------------
    def boot(self, agent_version: str, config_hash: str, **detail: object) -> None:
        """Queue the ``gateway_boot`` event: first item of the first frame of this run."""
        prev = self.outbox.previous_boot_id
        self._events.insert(0, Event(GATEWAY, "gateway_boot", self._wall(), {
            "agent_version": agent_version,
            "config_hash": config_hash,
            "previous_boot_id": None if prev is None else prev.hex(),
            **detail,
        }))
        if self._since is None:
            self._since = time.monotonic()

    def add(self, readings: list[Reading], events: list[Event] | None = None) -> None:
        if readings:
            self._readings += readings
        if events:
            self._events += events
        if self._since is None and (readings or events):
            self._since = time.monotonic()
        if len(self._readings) >= self.max_readings:
            self.flush()

    def deadline(self) -> float | None:
        """Monotonic time at which the pending batch must be sealed, None if empty."""
        return None if self._since is None else self._since + self.max_delay_s

    @property
    def pending(self) -> int:
        return len(self._readings) + len(self._events)

    @property
    def pending_readings(self) -> int:
        return len(self._readings)

    # -- sealing -------------------------------------------------------------------
    def flush(self) -> int:
        """Seal everything pending (in frames of at most ``max_readings``); returns the
        number of frames stored. On a storage failure the items stay pending."""
        jump = self.clock.check()
        if jump is not None:
            self._events.append(jump)
        self._events += self.clock.take_events()
        n = 0
        while self._readings or self._events:
            take = self._readings[: self.max_readings]
            events = self._events
            try:
                self._seal_store(take, events)
            except Exception as e:  # storage: keep the batch, retry at the next tick
                self._storage_failed(e)
                return n
            del self._readings[: len(take)]
            self._events = []
            n += 1
        self._since = None
        if self.storage_error is not None:
            log.info("outbox writable again")
            self.storage_error = None
        return n

    def _seal_store(self, readings: list[Reading], events: list[Event]) -> None:
        if self._unreported_lost:
            events = [*events, Event(GATEWAY, "readings_lost", self._wall(), {
                "readings": self._unreported_lost,
                "error": self.storage_error or "outbox not writable"})]
        ob = self.outbox
        seq = ob.seq + 1
        created = self._wall()
        frame = self._seal(seq, created, readings, events)
        fw = self.forwarder
        drops = ob.plan_drops(len(frame.payload), created,
                              fw.protected() if fw is not None else (),
                              check_age=self.clock.sync_state != "unsynced")
        if drops:
            events = [*events, *(d.event(created) for d in drops)]
            frame = self._seal(seq, created, readings, events)
            log.warning("outbox bound reached: dropped %s", ", ".join(
                f"seq {d.first_seq}..{d.last_seq} ({d.frames} frames, {d.readings} readings)"
                for d in drops))
        delivered = fw.take_delivered() if fw is not None else []
        ob.append(seq=seq, created=created, readings=len(readings),
                  frame_hash=frame.frame_hash, payload=frame.payload, boot_id=self.boot_id,
                  drops=drops, delivered=delivered)
        self._unreported_lost = 0
        self.frames += 1
        self.readings += len(readings)
        if fw is not None:
            if delivered:
                fw.deleted(delivered)
            if drops:
                fw.forget([(d.first_seq, d.last_seq) for d in drops])
            fw.on_sealed(Sealed(seq, frame.payload, len(readings)))

    def _seal(self, seq: int, created: float, readings: list[Reading],
              events: list[Event]) -> Frame:
        try:
            return self._seal_as(seq, created, readings, events)
        except FrameError:
            # One unsealable item (a reader bug: a None value, a two-letter flag) must not
            # cost the whole batch: seal the rest and record what was wrong in its place.
            readings, events = self._quarantine(created, readings, events)
            return self._seal_as(seq, created, readings, events)

    def _seal_as(self, seq: int, created: float, readings: list[Reading],
                 events: list[Event]) -> Frame:
        return seal(self.signer, gateway_id=self.gateway_id, site=self.site,
                    boot_id=self.boot_id, seq=seq, prev_hash=self.outbox.last_hash,
                    created=created, clock_sync=self.clock.sync_state, readings=readings,
                    events=events)

    def _sealable(self, created: float, readings: list[Reading], events: list[Event]
                  ) -> str | None:
        try:
            encode_body(gateway_id=self.gateway_id, site=self.site,
                        key_id=self.signer.key_id, alg=self.signer.alg, boot_id=self.boot_id,
                        seq=1, prev_hash=bytes(32), created_ms=round(created * 1000),
                        clock_sync="unknown", readings=readings, events=events)
        except FrameError as e:
            return e.detail
        return None

    def _quarantine(self, created: float, readings: list[Reading], events: list[Event]
                    ) -> tuple[list[Reading], list[Event]]:
        good_r: list[Reading] = []
        good_e: list[Event] = []
        bad: list[Event] = []
        for r in readings:
            err = self._sealable(created, [r], [])
            if err is None:
                good_r.append(r)
            else:
                bad.append(Event(str(r.instrument), "malformed_response", created, {
                    "error": f"reading not sealable: {err}", "signal": str(r.signal),
                    "value": repr(r.value)[:200]}))
        for ev in events:
            err = self._sealable(created, [], [ev])
            if err is None:
                good_e.append(ev)
            else:
                bad.append(Event(str(ev.instrument), "malformed_response", created, {
                    "error": f"event not sealable: {err}", "kind": str(ev.kind),
                    "detail": repr(ev.detail)[:200]}))
        log.error("sealed %d item(s) as malformed_response events instead", len(bad))
        return good_r, good_e + bad

    def _storage_failed(self, e: Exception) -> None:
        msg = f"{type(e).__name__}: {e}"
        if msg != self.storage_error:
            log.error("outbox %s: cannot store frame: %s", self.outbox.path, msg)
        self.storage_error = msg
        cap = self.max_readings * MAX_BACKLOG_BATCHES
        excess = len(self._readings) - cap
        if excess > 0:
            del self._readings[:excess]
            self.lost_readings += excess
            self._unreported_lost += excess
