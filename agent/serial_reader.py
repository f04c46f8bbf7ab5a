"""Raw serial instruments: framing, checksums and field extraction driven by a profile.

Telegraf has no raw serial input and many station instruments (opacimeters, weather
stations, OBD adapters, older analyzers) speak nothing else, so the line protocol is
configuration, not code: delimiter- or length-framed, ASCII or binary, polled or
free-running (docs/profiles.md, "Serial profiles").

I/O: the port is opened with pyserial (which sets the line: baud rate, parity...) and
then read through its non-blocking file descriptor from the asyncio loop
(``add_reader``), so no thread is needed and a pseudo-terminal works like a UART.

Nothing a device sends is dropped silently: a frame with a bad checksum, bytes that are
no frame, a field that is not a number, all become ``malformed_response`` events
carrying the bytes (hex), once per fault episode (agent/readings.py, FaultTracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import serial

from agent.checksums import CHECKSUMS
from agent.codec import INTEGER_TYPES, NUMERIC_TYPES, order_plan, swap_words
from agent.readings import Backoff, Conv, FaultTracker, ParamWatch, StatusDecoder
from agent.siteplan import (
    DelimiterFraming,
    InstrumentConfig,
    Profile,
    SerialField,
    SerialMessage,
    SerialSpec,
    SerialStatus,
    SerialTransport,
)
from stationseal.records import Event, Reading

#: Frames waiting for poll() in free-running mode; beyond this the oldest are dropped and
#: a data_dropped event says how many (a poller stalled for minutes, not normal operation).
MAX_PENDING = 10_000


class FrameProblem(Exception):
    def __init__(self, error: str, **detail: Any) -> None:
        super().__init__(error)
        self.error = error
        self.detail = detail


@dataclass(slots=True)
class Chunk:
    """One framing result: a complete frame, or bytes that could not be a frame."""

    time: float
    frame: bytes
    garbage: str = ""  # reason, when this is not a frame
    port_lost: bool = False  # the port failed (garbage says why)


class _FieldCodec:
    """Precompiled extraction of one field (or status) from a frame."""

    __slots__ = ("base", "conv", "end", "group", "index", "offset", "st", "swapped")

    def __init__(self, f: SerialField | SerialStatus, conv: Conv | None) -> None:
        self.conv = conv
        self.index = f.index
        self.group = f.group
        self.offset = f.byte_offset or 0
        # (attributes rather than isinstance: the validated pydantic models work too)
        self.base = getattr(f, "base", 10) if not hasattr(f, "signal") else 10
        self.st: struct.Struct | None = None
        self.swapped = False
        self.end = 0
        if f.data_type is not None:
            size, code = NUMERIC_TYPES[f.data_type]
            swapped, endian = order_plan(f.byte_order)
            self.swapped = swapped and size > 1
            self.st = struct.Struct((endian if size > 1 else ">") + code)
            self.end = self.offset + size


class _MessageCodec:
    __slots__ = ("fields", "is_parameter", "message", "regex", "status")

    def __init__(self, m: SerialMessage) -> None:
        self.message = m
        self.regex = re.compile(m.regex) if m.regex else None
        self.fields = [
            _FieldCodec(f, Conv(f.signal, f.out_unit, f.scale, f.offset, f.range, f.role,
                                f.data_type in INTEGER_TYPES))
            for f in m.fields]
        self.status = (_FieldCodec(m.status, None), StatusDecoder(m.status)) \
            if m.status is not None else None
        self.is_parameter = all(f.role != "measurement" for f in m.fields)


class SerialCodec:
    """Framing, checksum and decoding for one serial profile; no I/O, so the same code is
    unit-tested byte by byte and used by the reader."""

    def __init__(self, spec: SerialSpec) -> None:
        self.spec = spec
        self.messages = [_MessageCodec(m) for m in spec.messages]
        self._buf = b""
        fr = spec.framing
        self._delim = cast(DelimiterFraming, fr) if fr.type == "delimiter" else None
        cs = spec.checksum
        if cs.type == "none":
            self._cs = None
            self._cs_len = 0
        else:
            fn, size, order = CHECKSUMS[cs.type]
            self._cs = (fn, size, cs.byte_order or order)
            self._cs_len = size if cs.encoding == "binary" else 2 * size

    # ------------------------------------------------------------------ framing

    def reset(self) -> bytes:
        """Forget buffered bytes (before a request); returns them for reporting."""
        old, self._buf = self._buf, b""
        return old

    def feed(self, data: bytes, t: float) -> list[Chunk]:
        self._buf += data
        out: list[Chunk] = []
        if self._delim is not None:
            self._split_delimited(self._delim, t, out)
        else:
            self._split_fixed(t, out)
        return out

    def _split_delimited(self, fr: DelimiterFraming, t: float, out: list[Chunk]) -> None:
        buf = self._buf
        start, end = fr.start, fr.end
        pos = 0
        while True:
            if start:
                s = buf.find(start, pos)
                if s < 0:
                    # keep a possible partial start marker, report the rest
                    keep = len(buf) - (len(start) - 1)
                    if keep > pos and buf[pos:keep].strip(b"\r\n\x00 "):
                        out.append(Chunk(t, buf[pos:keep], "bytes outside any frame"))
                    pos = max(pos, keep)
                    break
                if s > pos and buf[pos:s].strip(b"\r\n\x00 "):
                    out.append(Chunk(t, buf[pos:s], "bytes before frame start"))
                pos = s
                body_from = s + len(start)
            else:
                body_from = pos
            e = buf.find(end, body_from)
            if start:
                nxt = buf.find(start, body_from)
                if nxt >= 0 and (e < 0 or nxt < e):
                    out.append(Chunk(t, buf[pos:nxt], "frame cut short by a new frame start"))
                    pos = nxt
                    continue
            if e < 0:
                if len(buf) - pos > fr.max_length:
                    out.append(Chunk(t, buf[pos:], f"no frame end within {fr.max_length} "
                                     "bytes"))
                    pos = len(buf)
                break
            frame = buf[pos:e + len(end)]
            pos = e + len(end)
            if len(frame) > fr.max_length:
                out.append(Chunk(t, frame, f"frame longer than {fr.max_length} bytes"))
            elif frame.strip(b"\r\n\x00 ") or start:
                out.append(Chunk(t, frame))
        self._buf = buf[pos:]

    def _split_fixed(self, t: float, out: list[Chunk]) -> None:
        buf = self._buf
        pos = 0
        while pos < len(buf):
            best: tuple[int, _MessageCodec] | None = None
            for mc in self.messages:
                i = buf.find(mc.message.match, pos)
                if i >= 0 and (best is None or i < best[0]):
                    best = (i, mc)
            if best is None:
                keep = len(buf) - max(len(mc.message.match) for mc in self.messages) + 1
                if keep > pos:
                    out.append(Chunk(t, buf[pos:keep], "bytes outside any frame"))
                    pos = keep
                break
            i, mc = best
            if i > pos:
                out.append(Chunk(t, buf[pos:i], "bytes before frame header"))
            length = mc.message.length or 0
            if len(buf) - i < length:
                pos = i
                break
            out.append(Chunk(t, buf[i:i + length]))
            pos = i + length
        self._buf = buf[pos:]

    # ------------------------------------------------------------------ checking

    def body_of(self, frame: bytes) -> bytes:
        if self._delim is None:
            return frame
        return frame[len(self._delim.start):len(frame) - len(self._delim.end)]

    def check(self, frame: bytes) -> tuple[_MessageCodec, bytes]:
        """Verify the checksum and identify the message; returns (message, payload),
        payload being the body without checksum. Raises FrameProblem."""
        body = self.body_of(frame)
        payload = body
        if self._cs is not None:
            fn, size, order = self._cs
            cs = self.spec.checksum
            n = self._cs_len
            if len(body) < n + cs.gap + cs.cover_from:
                raise FrameProblem("frame too short for its checksum", raw=frame.hex())
            got_b = body[len(body) - n:]
            payload = body[:len(body) - n - cs.gap]
            want = fn(payload[cs.cover_from:])
            if cs.encoding == "hex":
                try:
                    got = int(got_b.decode("ascii"), 16)
                except ValueError:
                    raise FrameProblem(f"checksum field {got_b!r} is not hex",
                                       raw=frame.hex()) from None
            else:
                got = int.from_bytes(got_b, order)  # type: ignore[arg-type]
            if got != want:
                raise FrameProblem(f"checksum mismatch ({cs.type})",
                                   computed=f"{want:0{size * 2}X}",
                                   received=f"{got:0{size * 2}X}", raw=frame.hex())
        for mc in self.messages:
            if payload.startswith(mc.message.match):
                if mc.message.length is not None and len(frame) != mc.message.length:
                    continue
                return mc, payload
        raise FrameProblem("frame matches no message of the profile", raw=frame.hex())

    # ------------------------------------------------------------------ decoding

    def decode(self, mc: _MessageCodec, frame: bytes, payload: bytes, t: float,
               instrument: str, watch: ParamWatch, readings: list[Reading],
               events: list[Event]) -> None:
        """Append the frame's readings (and parameter events). Raises FrameProblem
        before appending anything, so a frame is used whole or not at all."""
        out: list[tuple[Conv, Any, bytes]] = []
        sflag = ""
        if self.spec.encoding == "ascii":
            try:
                text = payload.decode("ascii")
            except UnicodeDecodeError:
                raise FrameProblem(f"message {mc.message.name}: non-ASCII bytes",
                                   raw=frame.hex()) from None
            tokens: list[str] = []
            match = None
            if mc.regex is not None:
                match = mc.regex.fullmatch(text)
                if match is None:
                    raise FrameProblem(f"message {mc.message.name}: does not match its "
                                       "regex", raw=frame.hex())
            if self.spec.separator:
                tokens = text.split(self.spec.separator)
            if mc.status is not None:
                fc, dec = mc.status
                tok = self._token(mc, fc, tokens, match, frame)
                try:
                    word = int(tok, fc.base)
                except ValueError:
                    raise FrameProblem(f"message {mc.message.name}: status {tok!r} is not "
                                       f"a base-{fc.base} integer", raw=frame.hex()) from None
                sflag = dec.flag(word)
            for fc in mc.fields:
                tok = self._token(mc, fc, tokens, match, frame)
                assert fc.conv is not None
                try:
                    v = float(tok)
                except ValueError:
                    raise FrameProblem(f"message {mc.message.name}: {fc.conv.signal} "
                                       f"{tok!r} is not a number", raw=frame.hex()) from None
                out.append((fc.conv, v, tok.encode("ascii")))
        else:
            if mc.status is not None:
                fc, dec = mc.status
                sflag = dec.flag(int(self._binary(mc, fc, frame)))
            for fc in mc.fields:
                assert fc.conv is not None
                out.append((fc.conv, self._binary(mc, fc, frame), frame[fc.offset:fc.end]))
        for conv, v, rb in out:
            v = conv.apply(v)
            if conv.role != "measurement":
                watch.observe(conv, v, rb, t, readings, events)
            else:
                readings.append(Reading(instrument, conv.signal, v, conv.unit, t,
                                        conv.quality(v, sflag), rb))

    @staticmethod
    def _token(mc: _MessageCodec, fc: _FieldCodec, tokens: list[str],
               match: re.Match[str] | None, frame: bytes) -> str:
        if fc.group is not None:
            assert match is not None
            tok = match.group(fc.group)
            if tok is None:
                raise FrameProblem(f"message {mc.message.name}: group {fc.group} empty",
                                   raw=frame.hex())
            return tok.strip()
        assert fc.index is not None
        if fc.index >= len(tokens):
            raise FrameProblem(f"message {mc.message.name}: {len(tokens)} tokens, field needs "
                               f"index {fc.index}", raw=frame.hex())
        return tokens[fc.index].strip()

    @staticmethod
    def _binary(mc: _MessageCodec, fc: _FieldCodec, frame: bytes) -> int | float:
        if fc.end > len(frame):
            raise FrameProblem(f"message {mc.message.name}: {len(frame)}-byte frame too short "
                               f"for a field at byte {fc.offset}", raw=frame.hex())
        assert fc.st is not None
        data = frame[fc.offset:fc.end]
        if fc.swapped:
            data = swap_words(data)
        v: int | float = fc.st.unpack(data)[0]
        return v


_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialInstrument:
    """A raw serial instrument on its own port (ports are not shared: config.py)."""

    def __init__(self, cfg: InstrumentConfig, profile: Profile, site_dir: Path) -> None:
        assert profile.serial is not None and cfg.transport.type == "serial"
        self.id = cfg.id
        self.config = cfg
        self.profile = profile
        self._t = cast(SerialTransport, cfg.transport)
        port = Path(self._t.port)
        self._port = str(port if port.is_absolute() else site_dir / port)
        self._codec = SerialCodec(profile.serial)
        self._rr = profile.serial.mode == "request_response"
        self._ser: serial.Serial | None = None
        self._fd = -1
        self._pending: deque[Chunk] = deque()
        self._dropped = 0
        self._waiter: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._faults = FaultTracker(cfg.id)
        self._backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self._watch = ParamWatch(cfg.id)
        self._param_due = 0.0
        self._last_frame = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # a free-running instrument that says nothing for this long is reported silent
        self._silence_s = max(3 * profile.serial.output_interval_s, cfg.timeout_s,
                              2 * cfg.poll_interval_s)

    # ------------------------------------------------------------------ port

    def _open(self) -> None:
        ser = serial.Serial(self._port, baudrate=self._t.baudrate, bytesize=self._t.bytesize,
                            parity=_PARITY[self._t.parity], stopbits=self._t.stopbits,
                            timeout=0, write_timeout=0, exclusive=True)
        self._ser = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._codec.reset()
        self._last_frame = time.monotonic()

    def _drop_port(self) -> None:
        if self._ser is not None:
            if self._loop is not None and self._fd >= 0:
                with contextlib.suppress(ValueError, RuntimeError):
                    self._loop.remove_reader(self._fd)
            with contextlib.suppress(OSError):
                self._ser.close()
        self._ser = None
        self._fd = -1

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            self._port_lost(f"read error on {self._port}: {e.strerror or e}")
            return
        if not data:
            self._port_lost(f"{self._port} closed by the other end")
            return
        chunks = self._codec.feed(data, time.time())
        if chunks:
            pending = self._pending
            pending.extend(chunks)
            while len(pending) > MAX_PENDING:
                pending.popleft()
                self._dropped += 1
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def _port_lost(self, why: str) -> None:
        self._drop_port()
        self._pending.append(Chunk(time.time(), b"", why, port_lost=True))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ------------------------------------------------------------------ polling

    async def poll(self) -> tuple[list[Reading], list[Event]]:
        readings: list[Reading] = []
        events: list[Event] = []
        if self._closed or self._backoff.waiting():
            return readings, events
        async with self._lock:
            if self._ser is None:
                try:
                    self._open()
                except (OSError, serial.SerialException) as e:
                    self._faults.fail("instrument_fault", f"cannot open {self._port}: {e}",
                                      time.time(), events)
                    self._backoff.failed()
                    return readings, events
            ok = await (self._poll_rr(readings, events) if self._rr
                        else self._poll_free(readings, events))
        if ok:
            self._backoff.succeeded()
            self._faults.ok(time.time(), events)
        return readings, events

    def _drain(self, readings: list[Reading], events: list[Event]) -> tuple[set[str], bool]:
        """Decode pending chunks; returns (names of messages decoded, any problem)."""
        got: set[str] = set()
        bad = False
        if self._dropped:
            events.append(Event(self.id, "data_dropped", time.time(), {
                "error": "receive queue full: poller too slow", "frames": self._dropped}))
            self._dropped = 0
        pending = self._pending
        while pending:
            ch = pending.popleft()
            if ch.garbage:
                bad = True
                if ch.port_lost:
                    self._faults.fail("instrument_fault", ch.garbage, ch.time, events)
                    self._backoff.failed()
                else:
                    self._faults.fail("malformed_response", ch.garbage, ch.time, events,
                                      raw=ch.frame[:256].hex())
                continue
            try:
                mc, payload = self._codec.check(ch.frame)
                self._codec.decode(mc, ch.frame, payload, ch.time, self.id, self._watch,
                                   readings, events)
                got.add(mc.message.name)
            except FrameProblem as e:
                bad = True
                self._faults.fail("malformed_response", e.error, ch.time, events, **e.detail)
        return got, bad

    async def _poll_free(self, readings: list[Reading], events: list[Event]) -> bool:
        got, bad = self._drain(readings, events)
        now = time.monotonic()
        if got:
            self._last_frame = now
        elif self._ser is not None and now - self._last_frame > self._silence_s:
            self._faults.fail("instrument_fault", f"no frame from {self._port} for "
                              f"{self._silence_s:g} s", time.time(), events)
            self._backoff.failed()
            return False
        return bool(got) and not bad

    async def _poll_rr(self, readings: list[Reading], events: list[Event]) -> bool:
        now = time.monotonic()
        params_due = now >= self._param_due
        all_ok = True
        for mc in self._codec.messages:
            if mc.is_parameter and not params_due:
                continue
            answered, ok = await self._ask(mc, readings, events)
            all_ok = all_ok and ok
            if not answered:
                # a silent device is not asked the next question: back off instead
                self._backoff.failed()
                return False
            if self.config.pause_s:
                await asyncio.sleep(self.config.pause_s)
        if all_ok and params_due:
            self._param_due = now + self.config.parameter_interval_s
        return all_ok

    async def _ask(self, mc: _MessageCodec, readings: list[Reading],
                   events: list[Event]) -> tuple[bool, bool]:
        """Send one request and decode its answer: (answered at all, answered well)."""
        # whatever arrived unasked is reported (e.g. a late answer to a timed-out request)
        stale = self._codec.reset()
        _, bad = self._drain(readings, events)
        if stale.strip(b"\r\n\x00 "):
            self._faults.fail("malformed_response", "unsolicited bytes before request",
                              time.time(), events, raw=stale[:256].hex())
            bad = True
        request = mc.message.request
        assert request is not None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            n = os.write(self._fd, request)
            if n != len(request):
                raise OSError(f"wrote {n} of {len(request)} bytes")
        except OSError as e:
            self._waiter = None
            self._drop_port()
            self._faults.fail("instrument_fault", f"write error on {self._port}: {e}",
                              time.time(), events)
            return False, False
        deadline = loop.time() + self.config.timeout_s
        name = mc.message.name
        answered = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._waiter, remaining)
            except TimeoutError:
                break
            got, bad2 = self._drain(readings, events)
            bad = bad or bad2
            if self._ser is None:
                break
            if name in got or bad2:
                answered = True
                break
            self._waiter = loop.create_future()
        self._waiter = None
        if answered:
            return True, not bad
        partial = self._codec.reset()
        if partial:
            self._faults.fail("malformed_response", f"incomplete {name} frame within "
                              f"{self.config.timeout_s:g} s", time.time(), events,
                              raw=partial[:256].hex())
        elif self._ser is not None and not bad:
            self._faults.fail("instrument_fault", f"timeout after {self.config.timeout_s:g} s "
                              f"waiting for {name} from {self._port}", time.time(), events)
        return False, False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._drop_port()
