"""Profile-driven Modbus TCP / RTU simulators, served by pymodbus.

Each simulated device (unit id) holds the register map of its profile; on every request
the registers asked for are refreshed from the device's value source (sim/profiles.py)
and encoded with the profile's data types and word orders, so the reader decodes what
the simulator meant only if both sides agree byte for byte. Faults (sim/faults.py) are
injected at the two hooks pymodbus offers: the datastore action (exception responses)
and the packet trace (silence, garbage, corrupted CRC).

Usage::

    server = await start_modbus_tcp_server([SimulatedDevice(1, profile)], port=0)
    server.port            # the bound TCP port
    rtu = await start_modbus_rtu_server([SimulatedDevice(1, p1), SimulatedDevice(2, p2)])
    rtu.port_path          # pty path for the reader (/dev/pts/N)
    await server.stop()
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.profiles import Profile
from sim.faults import FaultPlan
from sim.profiles import ValuesFn, ValueSource, encode_registers, garbage
from sim.pty import PtyLink

_TABLES = ("coil", "discrete", "holding", "input")
_FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
             16: "holding", 22: "holding", 23: "holding", 4: "input"}
_BITS_NOWHERE = 65520  # a device without coils still needs a (never read) coil block


@dataclass
class SimulatedDevice:
    """One unit id on a simulated bus."""

    unit: int
    profile: Profile
    values_fn: ValuesFn | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)


class _DeviceState:
    def __init__(self, dev: SimulatedDevice) -> None:
        if dev.profile.protocol != "modbus":
            raise ValueError(f"profile {dev.profile.id} is not a Modbus profile")
        self.unit = dev.unit
        self.profile = dev.profile
        self.faults = dev.faults
        self.source = ValueSource(dev.profile, dev.values_fn)
        #: values used for the last answer (canonical, before encoding)
        self.last_served: dict[str, Any] = {}
        #: requests that reached this device (answered or not)
        self.requests = 0
        #: addresses written by a client: kept as written, not refreshed from the model
        self.pinned: dict[str, set[int]] = {t: set() for t in _TABLES}
        img = encode_registers(dev.profile, self.source.at(time.time()))
        co, di, hr, ir = (self._blocks(t, sorted(img[t])) for t in _TABLES)
        self.simdevice = SimDevice(dev.unit, simdata=(co, di, hr, ir), action=self.action)

    @staticmethod
    def _blocks(table: str, addresses: list[int]) -> list[SimData]:
        if table in ("coil", "discrete"):
            if not addresses:
                return [SimData(_BITS_NOWHERE, values=[False] * 16, datatype=DataType.BITS)]
            lo, hi = addresses[0], addresses[-1]
            return [SimData(lo, values=[False] * (hi - lo + 1), datatype=DataType.BITS)]
        if not addresses:
            return [SimData(65535, count=1, datatype=DataType.INVALID)]
        runs: list[SimData] = []
        start = prev = addresses[0]
        for a in [*addresses[1:], -1]:
            if a != prev + 1:
                runs.append(SimData(start, count=prev - start + 1, values=0,
                                    datatype=DataType.REGISTERS))
                start = a
            prev = a
        return runs

    async def action(self, fc: int, start: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None
                     ) -> ExcCodes | None:
        self.requests += 1
        exc = self.faults.active("exception", self.unit)
        if exc is not None:
            try:
                return ExcCodes(exc.code)
            except ValueError:
                return ExcCodes.DEVICE_FAILURE
        table = _FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            self.pinned[table].update(range(address, address + len(set_values)))
            return None
        values = self.source.at(time.time(), self.faults.overrides(self.unit))
        self.last_served = values
        img = encode_registers(self.profile, values)[table]
        pinned = self.pinned[table]
        if table in ("coil", "discrete"):
            for a, bit in img.items():
                if a in pinned:
                    continue
                i, b = a // 16 - start, a % 16
                if 0 <= i < len(registers):
                    registers[i] = registers[i] & ~(1 << b) | bit << b
        else:
            for a, word in img.items():
                i = a - start
                if a not in pinned and 0 <= i < len(registers):
                    registers[i] = word
        return None


class ModbusSimServer:
    """A running simulator: one TCP endpoint or one RTU line with one or more units."""

    def __init__(self, devices: Sequence[SimulatedDevice], rtu: bool) -> None:
        units = [d.unit for d in devices]
        if len(set(units)) != len(units):
            raise ValueError(f"unit ids must be unique on one bus: {units}")
        self.states = {d.unit: _DeviceState(d) for d in devices}
        self.rtu = rtu
        self.host = "127.0.0.1"
        self.port = 0
        self.port_path = ""
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._link: PtyLink | None = None
        self._rng = random.Random(0x5EA1)
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    def device(self, unit: int) -> _DeviceState:
        return self.states[unit]

    def set_value(self, signal: str, value: Any, unit: int | None = None) -> None:
        """Make the device(s) report ``value`` for ``signal`` from now on (e.g. a span
        coefficient changed at the instrument's keypad)."""
        for u, st in self.states.items():
            if unit is None or u == unit:
                st.source.overrides[signal] = value

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data:
            return data
        unit = data[0] if self.rtu else (data[6] if len(data) > 6 else -1)
        st = self.states.get(unit)
        if st is None:
            # an RTU slave that does not exist does not answer
            return b"" if self.rtu else data
        faults = st.faults
        if faults.active("timeout", unit):
            return b""
        if faults.active("garbage", unit):
            return garbage(len(data), self._rng)
        if faults.active("bad_checksum", unit):
            if self.rtu:
                return data[:-1] + bytes([data[-1] ^ 0xFF])
            return garbage(len(data), self._rng)
        return data

    async def _start_tcp(self, host: str, port: int) -> None:
        self.host = host
        srv = ModbusTcpServer([s.simdevice for s in self.states.values()],
                              address=(host, port), trace_packet=self._trace)
        await srv.serve_forever(background=True)
        self._server = srv
        sockets = getattr(srv.transport, "sockets", None)
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def _start_rtu(self, baudrate: int, parity: str, stopbits: int, bytesize: int) -> None:
        link = PtyLink()
        link.start()
        self._link = link
        srv = ModbusSerialServer([s.simdevice for s in self.states.values()],
                                 framer=FramerType.RTU, port=link.a.path, baudrate=baudrate,
                                 parity=parity, stopbits=stopbits, bytesize=bytesize,
                                 trace_packet=self._trace)
        await srv.serve_forever(background=True)
        self._server = srv
        self.port_path = link.b.path

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._link is not None:
            self._link.close()
            self._link = None


async def start_modbus_tcp_server(devices: Sequence[SimulatedDevice], host: str = "127.0.0.1",
                                  port: int = 0) -> ModbusSimServer:
    """Serve ``devices`` on TCP; ``port=0`` picks a free port, read it from ``.port``."""
    server = ModbusSimServer(devices, rtu=False)
    await server._start_tcp(host, port)
    return server


async def start_modbus_rtu_server(devices: Sequence[SimulatedDevice], *, baudrate: int = 9600,
                                  parity: str = "N", stopbits: int = 1,
                                  bytesize: int = 8) -> ModbusSimServer:
    """Serve ``devices`` as RTU slaves on a pty line; the reader opens ``.port_path``."""
    server = ModbusSimServer(devices, rtu=True)
    await server._start_rtu(baudrate, parity, stopbits, bytesize)
    return server
