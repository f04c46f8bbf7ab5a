"""The site's HJ 212 data logger as one more instrument of the gateway.

The logger (数采仪) is configured with the gateway as an extra upper platform; it connects
over TCP (or talks on a serial line) and pushes real-time, minute and hourly data frames.
This module listens, turns every data frame into signed readings (stationseal/hj212/
readings.py: canonical signals, HJ 212 flags kept letter for letter, the CP text as raw
bytes, instrument ``logger`` / ``logger.minute`` / ``logger.hour`` so a *reported* value
is never mistaken for the analyzer's *measured* one) and hands them to the runtime at
each poll, like any instrument (agent/instruments.py protocol).

Answers (9014 / 9013) tell the logger it may forget the data, so they go out only after
the readings are **sealed into the outbox**: the runtime binds its sealer to this source
(:meth:`HJ212Source.bind_sealer`), each poll hands the buffered readings over, and the
next poll (by then the runtime has added them) seals the pending batch and releases the
answers, so a frame is answered within about one poll interval. A frame not sealed within
``ack_timeout_s`` (outbox not writable) is not answered, so the logger resends it; repeats
(same MN, CN, QN, PNO) are recognised and not sealed twice. Without a bound sealer
(another runtime) the answer goes out once the readings were handed to the runtime.

Every received frame is also sealed as an ``hj212_frame`` event holding its header and
raw text (items that could not become readings are listed there with the reason), and
data re-sent for a time already reported with another flag or value is sealed as
``flag_changed`` / ``reported_revision`` (pattern E6, "flag changed after data time").
The logger's password (``PW=...`` in the header) is replaced by ``PW=***`` in every text
or bytes sealed from a frame (stationseal.hj212.readings.redact_credentials): signed data
is copied into the central database and every export, and a password must not be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

import serial

from agent.siteplan import ConfigError, Hj212Serial, SiteConfig, plain_site
from stationseal.hj212 import (
    Frame,
    HJ212Error,
    HJ212Listener,
    KeySource,
    Reassembler,
    StreamDecoder,
    StreamError,
    reply_for,
    resolve_key,
)
from stationseal.hj212.readings import (
    RevisionTracker,
    convert,
    frame_event,
    instrument_for,
    is_data_command,
    raw_text,
    redact_credentials,
    redact_credentials_bytes,
)
from stationseal.records import Event, Reading

log = logging.getLogger("stationseal.agent.hj212")

HEARTBEAT = "9015"
_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SealerView(Protocol):
    """What the source needs of agent.sealer.Sealer."""

    @property
    def pending(self) -> int: ...

    storage_error: str | None
    frames: int

    def add(self, readings: list[Reading], events: list[Event] | None = None) -> None: ...

    def flush(self) -> int: ...


class _Conn(Protocol):
    peer: str

    async def send(self, frame: Frame) -> None: ...


@dataclass(slots=True)
class _Batch:
    """Items of one received frame, and whether they are safely stored."""

    readings: list[Reading]
    events: list[Event]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ok: bool = False
    #: answer after storing (False: a foreign MN, recorded but refused)
    answer: bool = True


class HJ212Source:
    """Instrument protocol implementation for a logger pushing HJ 212 frames."""

    def __init__(self, *, instrument: str = "logger", host: str = "127.0.0.1",
                 port: int | None = 0, mn: tuple[str, ...] | list[str] = (),
                 sm4_key: KeySource = None, serial_line: Hj212Serial | None = None,
                 poll_interval_s: float = 0.5, ack_timeout_s: float = 10.0,
                 dedup_size: int = 4096) -> None:
        self.id = instrument
        #: the runtime reads ``config.poll_interval_s`` (and nothing else)
        self.config: Any = SimpleNamespace(poll_interval_s=poll_interval_s, id=instrument)
        self.host = host
        self.port = port
        self.mn = frozenset(mn)
        self.sm4_key = sm4_key
        self.serial_line = serial_line
        self.ack_timeout_s = ack_timeout_s
        self.dedup_size = dedup_size
        self._listener: HJ212Listener | None = None
        self._serial: _SerialLink | None = None
        self._sealer: SealerView | None = None
        self._queue: list[_Batch] = []
        #: handed to the runtime at a poll, answer pending until sealed
        self._handed: list[_Batch] = []
        self._seen: OrderedDict[tuple[str, str, str, int], _Batch] = OrderedDict()
        self._reassembler = Reassembler()
        self._revisions = RevisionTracker()
        self._start_error: str | None = None
        self._retry_at = 0.0
        self._closed = False
        self.frames = 0
        self.duplicates = 0
        self.heartbeats = 0
        self.refused = 0

    @classmethod
    def from_site_config(cls, cfg: SiteConfig | Any) -> HJ212Source:
        """From the validated site config (plain copy, or its pydantic model)."""
        cfg = plain_site(cfg)
        h = cfg.hj212
        if h is None:
            raise ConfigError(f"{cfg.source}: no hj212 section")
        ids = {i.id for i in cfg.instruments}
        taken = {instrument_for(h.instrument, cn) for cn in ("2011", "2051", "2061", "2031")}
        if ids & taken:
            raise ConfigError(f"{cfg.source}: hj212.instrument: {h.instrument!r} would give "
                              f"ids {sorted(ids & taken)} already used by instruments")
        key: bytes | None = None
        if h.sm4_key_file is not None:
            try:
                text = h.sm4_key_file.read_text(encoding="utf-8").strip()
                key = bytes.fromhex(text)
            except (OSError, ValueError) as e:
                raise ConfigError(f"{cfg.source}: hj212.sm4_key_file: {h.sm4_key_file}: "
                                  f"{e}") from None
            if len(key) != 16:
                raise ConfigError(f"{cfg.source}: hj212.sm4_key_file: {h.sm4_key_file}: "
                                  f"expected 32 hex digits (16 bytes), got {len(key)} bytes")
        return cls(instrument=h.instrument, host=h.host, port=h.port, mn=h.mn,
                   sm4_key=key, serial_line=h.serial, poll_interval_s=h.poll_interval_s,
                   ack_timeout_s=h.ack_timeout_s)

    # -- runtime hooks ---------------------------------------------------------------
    def bind_sealer(self, sealer: SealerView) -> None:
        """Answer the logger only once its data are in the outbox (see module doc)."""
        self._sealer = sealer

    @property
    def bound_port(self) -> int | None:
        """The TCP port actually listened on (after the first poll)."""
        return self._listener.port if self._listener is not None else self.port

    async def start(self) -> None:
        """Open the TCP listener / serial port (the first poll does this too)."""
        if self.serial_line is not None:
            if self._serial is None:
                link = _SerialLink(self.serial_line, self.sm4_key, self._on_frame,
                                   self._on_error)
                link.open()
                self._serial = link
            return
        if self._listener is None:
            lst = HJ212Listener(self._on_frame, host=self.host, port=self.port or 0,
                                on_error=self._on_error, sm4_key=self.sm4_key)
            await lst.start()
            self._listener = lst

    async def poll(self) -> tuple[list[Reading], list[Event]]:
        events: list[Event] = []
        if self._closed:
            return [], []
        if (self._listener is None and self._serial is None) and \
                time.monotonic() >= self._retry_at:
            try:
                await self.start()
                if self._start_error is not None:
                    events.append(Event(self.id, "instrument_recovered", time.time(),
                                        {"error": self._start_error}))
                    self._start_error = None
            except (OSError, serial.SerialException) as e:
                err = f"cannot listen for the HJ 212 logger: {e}"
                if err != self._start_error:
                    log.error("%s", err)
                    events.append(Event(self.id, "instrument_fault", time.time(),
                                        {"error": err}))
                self._start_error = err
                self._retry_at = time.monotonic() + 5.0
        self._settle()
        batches, self._queue = self._queue, []
        readings: list[Reading] = []
        for b in batches:
            readings += b.readings
            events += b.events
        if batches:
            if self._sealer is None:
                for b in batches:
                    self._release(b, True)
            else:
                self._handed += batches
        return readings, events

    def _settle(self) -> None:
        """Release the answers of frames handed over at earlier polls, once sealed.

        The poll task adds what a poll returned to the sealer before it polls again, so
        those items are in the sealer now: one flush seals them (with whatever else is
        pending) and, if the outbox took it, the logger may be answered. A failed flush
        keeps them waiting; a later poll's successful flush seals everything added before.
        """
        s = self._sealer
        if not self._handed or s is None or s.storage_error is not None:
            return  # while the outbox fails, the seal loop retries (with its back-off)
        if s.pending:
            s.flush()
        if s.storage_error is None:
            for b in self._handed:
                self._release(b, True)
            self._handed = []

    @staticmethod
    def _release(b: _Batch, ok: bool) -> None:
        b.ok = ok
        b.done.set()

    async def close(self) -> None:
        self._closed = True
        sealer = self._sealer
        if sealer is not None and self._queue:
            # Shutdown: what was received but not yet handed over is sealed here (the
            # runtime closes instruments before its last flush), so it can be answered.
            # Frames handed over at the last poll stay unanswered unless already settled:
            # whether the cancelled poll task added them is not known, and a logger that
            # resends is better than data answered but never sealed.
            batches, self._queue = self._queue, []
            for b in batches:
                sealer.add(b.readings, b.events)
            sealer.flush()
            if sealer.storage_error is None:
                for b in batches:
                    self._release(b, True)
            await asyncio.sleep(0.05)  # let the handlers send their answers
        if self._listener is not None:
            await self._listener.stop(timeout=1.0)
            self._listener = None
        if self._serial is not None:
            await self._serial.close()
            self._serial = None
        rest = self._reassembler.flush()
        if rest:
            log.warning("HJ 212: %d split frame(s) incomplete at shutdown (their packets "
                        "are sealed as hj212_frame events)", len(rest))

    # -- frames ----------------------------------------------------------------------
    async def _on_error(self, err: StreamError, conn: _Conn) -> None:
        # The bytes may hold the logger's password (PW=...): redacted before sealing.
        self._enqueue([], [Event(self.id, "malformed_response", time.time(), {
            "error": redact_credentials(f"HJ 212 from {conn.peer}: {err.error}"),
            "raw": redact_credentials_bytes(err.raw[:256]).hex(), "offset": err.offset})])

    def _enqueue(self, readings: list[Reading], events: list[Event],
                 answer: bool = True) -> _Batch:
        b = _Batch(readings, events, answer=answer)
        self._queue.append(b)
        return b

    async def _on_frame(self, frame: Frame, conn: _Conn) -> None:
        """Store, then return (the caller answers); raise to leave the frame unanswered."""
        if frame.cn == HEARTBEAT:
            self.heartbeats += 1
            return
        if frame.cn.startswith("90"):
            return  # answers to requests this gateway never sends
        key = (frame.mn, frame.cn, frame.qn or "", frame.pno or 0)
        b = self._seen.get(key) if frame.qn else None
        if b is not None:
            self.duplicates += 1
            log.info("HJ 212: repeat of QN=%s CN=%s from %s (not sealed again)",
                     frame.qn, frame.cn, conn.peer)
        else:
            self.frames += 1
            b = self._accept(frame, time.time())
            if frame.qn:
                self._seen[key] = b
                while len(self._seen) > self.dedup_size:
                    self._seen.popitem(last=False)
        try:
            await asyncio.wait_for(b.done.wait(), self.ack_timeout_s)
        except TimeoutError:
            raise RuntimeError(f"QN={frame.qn}: not sealed within {self.ack_timeout_s:g} s "
                               f"(outbox: {self._sealer.storage_error if self._sealer else '-'})"
                               ) from None
        if not b.ok:
            raise RuntimeError(f"QN={frame.qn}: not stored")
        if not b.answer:
            self.refused += 1
            raise RuntimeError(f"MN={frame.mn} is not a configured logger: recorded, not "
                               "answered")

    def _accept(self, frame: Frame, now: float) -> _Batch:
        inst = instrument_for(self.id, frame.cn)
        if self.mn and frame.mn not in self.mn:
            ev = frame_event(frame, None, now, inst)
            ev.kind = "hj212_rejected"
            ev.detail["error"] = f"MN {frame.mn} is not configured for this site"
            log.warning("HJ 212 frame from unknown MN %s (QN=%s): sealed as evidence, not "
                        "answered", frame.mn, frame.qn)
            return self._enqueue([], [ev], answer=False)
        if not is_data_command(frame.cn):
            return self._enqueue([], [frame_event(frame, None, now, inst)])
        events: list[Event] = []
        merged: Frame | None
        try:
            merged = self._reassembler.add(frame)
        except HJ212Error as e:
            merged = None
            events.append(Event(inst, "malformed_response", now, {
                "error": f"HJ 212 packet QN={frame.qn} PNO={frame.pno}: {e}",
                "raw": raw_text(frame)[:512]}))
        for inc in self._reassembler.expire():
            events.append(Event(inst, "malformed_response", now, {
                "error": f"HJ 212 split frame QN={inc.key[2]} incomplete: {inc.reason}",
                "missing": inc.missing}))
        if merged is None:
            return self._enqueue([], [frame_event(frame, None, now, inst), *events])
        try:
            conv = convert(merged, instrument=self.id, received=now)
        except ValueError as e:
            return self._enqueue([], [frame_event(frame, None, now, inst), *events,
                                      Event(inst, "malformed_response", now, {"error": str(e)})])
        events.insert(0, frame_event(frame, conv, now, inst))
        for rev in self._revisions.observe(frame.mn, frame.qn or "", conv, frame.resent):
            events.append(rev.event(now))
            log.warning("HJ 212: %s %s at %s re-sent with %s (flag %s -> %s, value %s -> %s)",
                        rev.cn, rev.signal, merged.cp.data_time, "RF=1" if rev.resent
                        else "a new QN", rev.old_flag, rev.new_flag, rev.old_value,
                        rev.new_value)
        return self._enqueue(conv.readings, events)


class _SerialConn:
    def __init__(self, link: _SerialLink) -> None:
        self.peer = link.line.port
        self._link = link

    async def send(self, frame: Frame) -> None:
        self._link.write(frame.encode(resolve_key(self._link.sm4_key, frame.mn)))


class _SerialLink:
    """The listener's job on a serial line: decode, hand over in order, answer after."""

    def __init__(self, line: Hj212Serial, sm4_key: KeySource, on_frame: Any,
                 on_error: Any) -> None:
        self.line = line
        self.sm4_key = sm4_key
        self.on_frame = on_frame
        self.on_error = on_error
        self._ser: serial.Serial | None = None
        self._fd = -1
        self._q: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        ln = self.line
        ser = serial.Serial(ln.port, baudrate=ln.baudrate, bytesize=ln.bytesize,
                            parity=_PARITY[ln.parity], stopbits=ln.stopbits, timeout=0,
                            write_timeout=1.0, exclusive=True)
        self._ser = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)
        self._task = asyncio.create_task(self._run(), name=f"hj212-serial-{ln.port}")

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            log.error("HJ 212 serial %s: %s", self.line.port, e)
            data = b""
        if not data:
            self._drop()
            self._q.put_nowait(None)
            return
        self._q.put_nowait(data)

    def _drop(self) -> None:
        if self._loop is not None and self._fd >= 0:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._fd)
        self._fd = -1

    def write(self, data: bytes) -> None:
        if self._ser is not None:
            self._ser.write(data)

    async def _run(self) -> None:
        decoder = StreamDecoder(sm4_key=self.sm4_key)
        conn = _SerialConn(self)
        while True:
            data = await self._q.get()
            if data is None:
                return
            for item in decoder.feed(data):
                if isinstance(item, StreamError):
                    await self.on_error(item, conn)
                    continue
                try:
                    await self.on_frame(item, conn)
                except Exception as e:
                    log.warning("HJ 212 QN=%s on %s not answered: %s", item.qn,
                                self.line.port, e)
                    continue
                reply = reply_for(item, "logger")
                if reply is not None:
                    try:
                        await conn.send(reply)
                    except (OSError, serial.SerialException) as e:
                        log.info("HJ 212 answer on %s not delivered: %s", self.line.port, e)

    async def close(self) -> None:
        self._drop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ser is not None:
            with contextlib.suppress(OSError):
                self._ser.close()
            self._ser = None
