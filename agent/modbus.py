"""Modbus TCP / RTU instruments over the pymodbus asyncio client.

Design points, each from a way other gateways lose data (shared/domain/edge-lessons.md):

* One client and one lock per serial port or TCP endpoint (:class:`ModbusBus`), shared
  by every unit id on it: RS-485 is half duplex and many TCP devices accept one
  connection, so the lock must be per wire, never per unit id.
* Points are coalesced into contiguous blocks of at most ``max_registers`` and each block
  is decoded with precompiled structs (agent/codec.py); raw register bytes go into every
  Reading.
* Errors never leave :meth:`ModbusInstrument.poll`: a timeout, an exception response or a
  garbled frame becomes an Event and per-slave back-off, so one dead analyzer neither
  raises into the agent nor holds the bus for the others.
* pymodbus' own retries and automatic reconnect are switched off: retrying is the
  poller's decision, with back-off per slave rather than per connection.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from agent.checksums import crc16_modbus
from agent.codec import (
    INTEGER_TYPES,
    NUMERIC_TYPES,
    BlockDecoder,
    Field,
    decode_number,
    decode_string,
)
from agent.readings import Backoff, Conv, FaultTracker, ParamWatch, StatusDecoder
from agent.siteplan import (
    FUNCTION_CODES,
    InstrumentConfig,
    ModbusPoint,
    ModbusRtuTransport,
    ModbusStatus,
    ModbusTcpTransport,
    Profile,
)
from stationseal.records import Event, Reading

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: The Modbus limit on coils/discrete inputs per request.
MAX_BITS = 2000


class BusError(Exception):
    """A failed request, already classified: ``kind`` is the Event kind, ``stop`` says
    the device did not answer (abandon this poll and back off) rather than refused."""

    def __init__(self, kind: str, error: str, *, stop: bool, **detail: Any) -> None:
        super().__init__(error)
        self.kind = kind
        self.error = error
        self.stop = stop
        self.detail = detail


Transport = ModbusTcpTransport | ModbusRtuTransport


def bus_key(t: Transport) -> str:
    # (tags rather than isinstance: the validated pydantic models work here as well)
    if t.type == "modbus_tcp":
        tcp = cast(ModbusTcpTransport, t)
        return f"tcp://{tcp.host}:{tcp.port}"
    return cast(ModbusRtuTransport, t).port


def _quiet_pymodbus() -> None:
    # pymodbus logs every timeout at ERROR; here each one is a signed event instead, and a
    # dead slave polled at 10 Hz must not flood the journal. Explicit settings win.
    lg = logging.getLogger("pymodbus")
    if lg.level == logging.NOTSET:
        lg.setLevel(logging.CRITICAL)


class ModbusBus:
    """One wire: a pymodbus client, the lock serialising its requests, the bytes last
    received (to tell a garbled answer from silence)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.key = bus_key(transport)
        self.refs = 0
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._rx_last = b""
        self._readers: dict[int, Callable[..., Awaitable[ModbusPDU]]] = {}

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._rx_last = data
        return data

    def _make_client(self, timeout: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        _quiet_pymodbus()
        t = self.transport
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if t.type == "modbus_tcp":
            tcp = cast(ModbusTcpTransport, t)
            client = AsyncModbusTcpClient(tcp.host, port=tcp.port, name=self.key,
                                          timeout=timeout, retries=0, reconnect_delay=0,
                                          trace_packet=self._trace)
        else:
            rtu = cast(ModbusRtuTransport, t)
            client = AsyncModbusSerialClient(rtu.port, framer=FramerType.RTU,
                                             baudrate=rtu.baudrate, parity=rtu.parity,
                                             stopbits=rtu.stopbits, bytesize=rtu.bytesize,
                                             name=self.key, timeout=timeout, retries=0,
                                             reconnect_delay=0, trace_packet=self._trace)
        self._readers = {1: client.read_coils, 2: client.read_discrete_inputs,
                         3: client.read_holding_registers, 4: client.read_input_registers}
        return client

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # a client and lock belong to the loop they were made in
            self._client = None
            self._lock = asyncio.Lock()
            self._loop = loop

    async def _connected(self, timeout: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            self._client = self._make_client(timeout)
        client = self._client
        if not client.connected:
            client.ctx.comm_params.timeout_connect = timeout
            if not await client.connect():
                raise BusError("instrument_fault", f"cannot connect to {self.key}", stop=True)
        return client

    async def request(self, fc: int, address: int, count: int, unit: int, timeout: float,
                      pause: float, what: str) -> ModbusPDU:
        """One read under the bus lock, followed by the configured quiet time."""
        self._check_loop()
        async with self._lock:
            try:
                client = await self._connected(timeout)
                # the response timeout lives in the transaction manager's parameters;
                # units on one bus may have different timeouts
                client.ctx.comm_params.timeout_connect = timeout
                self._rx_last = b""
                try:
                    resp = await self._readers[fc](address, count=count, device_id=unit)
                except ModbusIOException as e:
                    raise self._no_answer(e, timeout, what, unit, fc) from None
                except ConnectionException as e:
                    raise BusError("instrument_fault", f"connection to {self.key} lost "
                                   f"reading {what}: {e}", stop=True) from None
                except (TimeoutError, OSError) as e:
                    self.reset()
                    raise BusError("instrument_fault", f"I/O error on {self.key} reading "
                                   f"{what}: {e!r}", stop=True) from None
            finally:
                if pause:
                    await asyncio.sleep(pause)
        if resp.isError():
            code = int(getattr(resp, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise BusError("instrument_fault", f"Modbus exception {code} ({name}) reading "
                           f"{what}", stop=False, exception_code=code)
        return resp

    def _no_answer(self, e: ModbusIOException, timeout: float, what: str, unit: int,
                   fc: int) -> BusError:
        msg = str(e)
        raw = self._rx_last
        if "No response received" not in msg:
            return BusError("malformed_response", f"invalid response reading {what}: {msg}",
                            stop=True, raw=raw[:256].hex())
        if raw:
            why = "no valid Modbus frame"
            if self.transport.type == "modbus_rtu" and _rtu_crc_bad(raw, unit, fc):
                why = "CRC mismatch in answer"
            return BusError("malformed_response", f"{why} within {timeout:g} s reading {what}",
                            stop=True, raw=raw[:256].hex())
        return BusError("instrument_fault", f"timeout after {timeout:g} s reading {what}",
                        stop=True)

    def reset(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self.reset()


def _rtu_crc_bad(raw: bytes, unit: int, fc: int) -> bool:
    """Whether ``raw`` is the expected RTU answer except for its CRC (a line fault, worth
    naming: it points at cabling, termination or baud rate rather than the device)."""
    if len(raw) < 5 or raw[0] != unit or raw[1] & 0x7F != fc:
        return False
    n = 5 if raw[1] & 0x80 else 5 + raw[2]
    if len(raw) < n:
        return False
    return crc16_modbus(raw[:n - 2]) != int.from_bytes(raw[n - 2:n], "little")


class BusPool:
    """Hands every instrument on one wire the same :class:`ModbusBus` (reference counted).

    Instruments built separately with :func:`agent.instruments.build_instrument` still
    share a bus through the module's default pool: two clients on one RS-485 port would
    interleave frames.
    """

    def __init__(self) -> None:
        self._buses: dict[str, ModbusBus] = {}

    def acquire(self, transport: Transport) -> ModbusBus:
        key = bus_key(transport)
        bus = self._buses.get(key)
        if bus is None:
            bus = self._buses[key] = ModbusBus(transport)
        bus.refs += 1
        return bus

    def release(self, bus: ModbusBus) -> None:
        bus.refs -= 1
        if bus.refs <= 0:
            bus.close()
            if self._buses.get(bus.key) is bus:
                del self._buses[bus.key]


DEFAULT_POOL = BusPool()


# --------------------------------------------------------------------------- planning


def _is_status(p: ModbusPoint | ModbusStatus) -> bool:
    """A status register rather than a point (points carry a signal)."""
    return not hasattr(p, "signal")


@dataclass
class _Item:
    register: str
    address: int
    count: int
    point: ModbusPoint | ModbusStatus


@dataclass
class Block:
    """One request: ``count`` registers (or bits) of one type from ``address``, and the
    precompiled recipe that turns its answer into readings."""

    register: str
    address: int
    count: int
    items: list[_Item] = field(default_factory=list)
    parameters: bool = False

    @property
    def fc(self) -> int:
        return FUNCTION_CODES[self.register]

    def describe(self, unit: int) -> str:
        return f"{self.register} {self.address}..{self.address + self.count - 1} unit {unit}"


def plan_blocks(items: Sequence[_Item], max_registers: int) -> list[Block]:
    """Coalesce contiguous or overlapping items of one register type into blocks of at
    most ``max_registers`` registers (x16 bits for coils/discrete inputs, at most 2000).
    Gaps are never read across: devices answer exception 2 for unmapped addresses."""
    blocks: list[Block] = []
    by_type: dict[str, list[_Item]] = {}
    for it in items:
        by_type.setdefault(it.register, []).append(it)
    for reg, its in by_type.items():
        limit = min(max_registers * 16, MAX_BITS) if reg in ("coil", "discrete") \
            else max_registers
        its.sort(key=lambda i: (i.address, -i.count))
        cur: Block | None = None
        for it in its:
            end = it.address + it.count
            if cur is not None and it.address <= cur.address + cur.count and \
                    max(end, cur.address + cur.count) - cur.address <= limit:
                cur.count = max(end, cur.address + cur.count) - cur.address
                cur.items.append(it)
                continue
            if it.count > limit:
                raise ValueError(f"{reg} {it.address}: {it.count} registers exceed "
                                 f"max_registers {limit}")
            cur = Block(reg, it.address, it.count, [it])
            blocks.append(cur)
    return blocks


class _Compiled:
    """Per-block decode recipe: a Struct to turn registers into bytes, a BlockDecoder for
    numeric points, and tuples for everything else. Built once."""

    __slots__ = ("bit_points", "block", "decoder", "numeric", "pack", "status", "strings",
                 "what")

    def __init__(self, block: Block, unit: int) -> None:
        self.block = block
        self.what = block.describe(unit)
        bitwise = block.register in ("coil", "discrete")
        self.pack = None if bitwise else struct.Struct(f">{block.count}H")
        fields: list[Field] = []
        self.numeric: list[tuple[Conv, int, int]] = []
        self.strings: list[tuple[Conv, int, int, str]] = []
        #: (conv, byte offset of the register or index of the bit, bit number or -1)
        self.bit_points: list[tuple[Conv, int, int]] = []
        self.status: tuple[StatusDecoder, int, int, str, str] | None = None
        for it in block.items:
            off = it.address - block.address
            if _is_status(it.point):
                st = cast(ModbusStatus, it.point)
                self.status = (StatusDecoder(st), off if bitwise else off * 2,
                               st.register_count, st.data_type, st.word_order)
                continue
            p = cast(ModbusPoint, it.point)
            conv = Conv(p.signal, p.out_unit, p.scale, p.offset, p.range, p.role,
                        p.data_type in INTEGER_TYPES or p.data_type == "bits")
            if p.data_type == "bits":
                self.bit_points.append((conv, off if bitwise else off * 2,
                                        -1 if bitwise else (p.bit or 0)))
            elif p.data_type == "string":
                self.strings.append((conv, off * 2, p.register_count * 2, p.word_order))
            else:
                fields.append(Field(off * 2, p.data_type, p.word_order))
                self.numeric.append((conv, off * 2, NUMERIC_TYPES[p.data_type][0]))
        self.decoder = BlockDecoder(block.count * 2, fields) if fields else None

    def status_flag(self, raw: bytes, bits: Sequence[bool] | None) -> str:
        assert self.status is not None
        dec, off, n, data_type, word_order = self.status
        if bits is not None:
            word = 0
            for i in range(n):
                if bits[off + i]:
                    word |= 1 << i
        else:
            word = int(decode_number(data_type, word_order, raw[off:off + n * 2]))
        return dec.flag(word)


class ModbusInstrument:
    """One unit id on a bus, polled block by block. See the module docstring."""

    def __init__(self, cfg: InstrumentConfig, profile: Profile, bus: ModbusBus,
                 pool: BusPool) -> None:
        self.id = cfg.id
        self.config = cfg
        self.profile = profile
        self._bus = bus
        self._pool = pool
        self._unit = cfg.unit_id
        self._timeout = cfg.timeout_s
        self._pause = cfg.pause_s
        meas = [_Item(p.table, p.address, p.register_count, p) for p in profile.points
                if p.role == "measurement"]
        params = [_Item(p.table, p.address, p.register_count, p) for p in profile.points
                  if p.role != "measurement"]
        if profile.status is not None:
            s = profile.status
            meas.append(_Item(s.table, s.address, s.register_count, s))
        mblocks = plan_blocks(meas, cfg.max_registers)
        # the status block first, so its flag is known for every other block of the poll
        mblocks.sort(key=lambda b: not any(_is_status(i.point) for i in b.items))
        pblocks = plan_blocks(params, cfg.max_registers)
        for b in pblocks:
            b.parameters = True
        self._measure = [_Compiled(b, self._unit) for b in mblocks]
        self._params = [_Compiled(b, self._unit) for b in pblocks]
        self._param_every = cfg.parameter_interval_s
        self._param_due = 0.0
        self._faults = FaultTracker(cfg.id)
        self._backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self._watch = ParamWatch(cfg.id)
        self._closed = False

    @property
    def blocks(self) -> list[Block]:
        return [c.block for c in self._measure + self._params]

    async def poll(self) -> tuple[list[Reading], list[Event]]:
        readings: list[Reading] = []
        events: list[Event] = []
        if self._closed or self._backoff.waiting():
            return readings, events
        now = time.monotonic()
        todo = self._measure
        params_due = bool(self._params) and now >= self._param_due
        if params_due:
            todo = self._measure + self._params
        failed = False
        sflag = ""
        for comp in todo:
            try:
                resp = await self._bus.request(comp.block.fc, comp.block.address,
                                               comp.block.count, self._unit, self._timeout,
                                               self._pause, comp.what)
                t = time.time()
                sflag = self._decode(comp, resp, t, sflag, readings, events)
            except BusError as e:
                failed = True
                self._faults.fail(e.kind, e.error, time.time(), events, **e.detail)
                if e.stop:
                    self._backoff.failed()
                    break
            except Exception as e:  # a reader bug must not stop the agent
                failed = True
                self._faults.fail("instrument_fault", f"{type(e).__name__} decoding "
                                  f"{comp.what}: {e}", time.time(), events)
                self._backoff.failed()
                break
        if not failed:
            self._backoff.succeeded()
            self._faults.ok(time.time(), events)
            if params_due:
                self._param_due = now + self._param_every
        return readings, events

    def _decode(self, comp: _Compiled, resp: ModbusPDU, t: float, sflag: str,
                readings: list[Reading], events: list[Event]) -> str:
        block = comp.block
        iid = self.id
        bits: Sequence[bool] | None = None
        raw = b""
        if comp.pack is None:
            bits = resp.bits
            if len(resp.bits) < block.count:
                raise BusError("malformed_response", f"{len(resp.bits)} bits in answer to "
                               f"{comp.what}", stop=False)
        else:
            regs = resp.registers
            if len(regs) != block.count:
                raise BusError("malformed_response", f"{len(regs)} registers in answer to "
                               f"{comp.what}", stop=False)
            raw = comp.pack.pack(*regs)
        if comp.status is not None:
            sflag = comp.status_flag(raw, bits)
        if block.parameters:
            self._decode_params(comp, raw, bits, t, readings, events)
            return sflag
        if comp.decoder is not None:
            values = comp.decoder.decode(raw)
            for (conv, off, n), v in zip(comp.numeric, values, strict=True):
                if not conv.identity:
                    v = conv.apply(v)
                readings.append(Reading(iid, conv.signal, v, conv.unit, t,
                                        conv.quality(v, sflag), raw[off:off + n]))
        for conv, off, bit in comp.bit_points:
            if bits is not None:
                b = int(bits[off])
                rb = b"\x01" if b else b"\x00"
            else:
                rb = raw[off:off + 2]
                b = (rb[0] << 8 | rb[1]) >> bit & 1
            readings.append(Reading(iid, conv.signal, b, conv.unit, t, conv.quality(b, sflag),
                                    rb))
        for conv, off, n, order in comp.strings:
            rb = raw[off:off + n]
            readings.append(Reading(iid, conv.signal, decode_string(rb, order), conv.unit, t,
                                    sflag or "N", rb))
        return sflag

    def _decode_params(self, comp: _Compiled, raw: bytes, bits: Sequence[bool] | None, t: float,
                       readings: list[Reading], events: list[Event]) -> None:
        if comp.decoder is not None:
            values = comp.decoder.decode(raw)
            for (conv, off, n), v in zip(comp.numeric, values, strict=True):
                self._watch.observe(conv, conv.apply(v), raw[off:off + n], t, readings, events)
        for conv, off, bit in comp.bit_points:
            if bits is not None:
                b = int(bits[off])
                rb = bytes([b])
            else:
                rb = raw[off:off + 2]
                b = (rb[0] << 8 | rb[1]) >> bit & 1
            self._watch.observe(conv, b, rb, t, readings, events)
        for conv, off, n, order in comp.strings:
            rb = raw[off:off + n]
            self._watch.observe(conv, decode_string(rb, order), rb, t, readings, events)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.release(self._bus)
