"""Read registers once and show every plausible decoding, to write a profile from.

Vendor manuals disagree on address bases and on byte/word order; guessing them wrong is
the classic Modbus integration bug. ``stationseal agent probe`` reads raw registers and
prints them with their decodings in the four word orders (docs/profiles.md), so the
right ``word_order`` is the row showing the value on the instrument's display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.codec import decode_number, registers_to_bytes
from agent.config import ModbusRtuTransport, ModbusTcpTransport
from agent.modbus import BusError, ModbusBus
from agent.siteplan import FUNCTION_CODES, to_plain

ORDERS = ("ABCD", "BADC", "CDAB", "DCBA")


class ProbeError(Exception):
    pass


@dataclass
class ProbeResult:
    register: str
    address: int
    unit: int
    #: 16-bit words (holding/input) or 0/1 (coil/discrete)
    values: list[int]


async def probe_read(*, register: str, address: int, count: int, unit: int = 1,
                     host: str | None = None, port: int = 502, serial_port: str | None = None,
                     baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
                     bytesize: int = 8, timeout: float = 2.0) -> ProbeResult:
    """One read over TCP (``host``) or RTU (``serial_port``); raises ProbeError with the
    reason (timeout, exception response, connection)."""
    if (host is None) == (serial_port is None):
        raise ProbeError("give either a TCP host or a serial port")
    if register not in FUNCTION_CODES:
        raise ProbeError(f"register type {register!r}: one of {', '.join(FUNCTION_CODES)}")
    limit = 2000 if register in ("coil", "discrete") else 125
    if not 1 <= count <= limit or not 0 <= address <= 65535 or address + count > 65536:
        raise ProbeError(f"count must be 1..{limit} and address+count within 0..65536")
    transport: ModbusTcpTransport | ModbusRtuTransport
    if host is not None:
        transport = ModbusTcpTransport.model_validate({"type": "modbus_tcp", "host": host,
                                                       "port": port})
    else:
        transport = ModbusRtuTransport.model_validate({
            "type": "modbus_rtu", "port": serial_port, "baudrate": baudrate, "parity": parity,
            "stopbits": stopbits, "bytesize": bytesize})
    bus = ModbusBus(to_plain(transport))
    what = f"{register} {address}..{address + count - 1} unit {unit}"
    try:
        resp = await bus.request(FUNCTION_CODES[register], address, count, unit, timeout, 0.0,
                                 what)
    except BusError as e:
        raw = e.detail.get("raw")
        raise ProbeError(e.error + (f" (received {raw})" if raw else "")) from None
    finally:
        bus.close()
    if register in ("coil", "discrete"):
        values = [int(b) for b in resp.bits[:count]]
    else:
        values = list(resp.registers)
    return ProbeResult(register, address, unit, values)


def _fmt(v: float | int, digits: int) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def format_probe(res: ProbeResult) -> str:
    """Raw values, then 32-bit and 64-bit decodings at every start address."""
    n = len(res.values)
    lines = [f"{res.register} {res.address}..{res.address + n - 1} unit {res.unit} "
             "(0-based protocol addresses: a manual's 40001 / 30001 / 1 is address 0)"]
    if res.register in ("coil", "discrete"):
        lines.append("addr   bit")
        lines += [f"{res.address + i:<6} {b}" for i, b in enumerate(res.values)]
        return "\n".join(lines) + "\n"
    lines.append(f"{'addr':<6} {'hex':<6} {'uint16':>6} {'int16':>6}")
    for i, w in enumerate(res.values):
        lines.append(f"{res.address + i:<6} {w:04X}   {w:>6} {w - 65536 if w > 32767 else w:>6}")
    raw = registers_to_bytes(res.values)
    lines += _section(res.address, raw, 2, "32-bit values (word order: bytes A B C D of the "
                      "value, most significant first, as they arrive)",
                      (("float32", 16, 9), ("int32", 12, 0), ("uint32", 11, 0)))
    lines += _section(res.address, raw, 4, "64-bit values (ABCD = AB CD EF GH, BADC = BA DC "
                      "FE HG, CDAB = GH EF CD AB, DCBA = HG FE DC BA)",
                      (("float64", 24, 17), ("int64", 21, 0)))
    return "\n".join(lines) + "\n"


def _section(address: int, raw: bytes, regs: int, title: str,
             columns: tuple[tuple[str, int, int], ...]) -> list[str]:
    """Decodings of ``regs``-register values at every start address, four rows each;
    columns are (data type, width, significant digits for floats)."""
    n = len(raw) // 2
    if n < regs:
        return []
    out = ["", title, f"{'addr':<6} {'order':<5} "
           + " ".join(f"{dt:>{w}}" for dt, w, _ in columns)]
    for i in range(n - regs + 1):
        chunk = raw[2 * i:2 * (i + regs)]
        for order in ORDERS:
            cells = " ".join(f"{_fmt(decode_number(dt, order, chunk), digits):>{w}}"
                             for dt, w, digits in columns)
            addr = str(address + i) if order == "ABCD" else ""
            out.append(f"{addr:<6} {order:<5} {cells}")
    return out
