"""Fault injection for the protocol simulators.

A fault is active over a window of seconds after the simulator started. Kinds:

* ``timeout``: the device stays silent (no answer, no free-running output);
* ``exception:N``: Modbus exception response N (e.g. 2 illegal data address);
* ``garbage``: random bytes instead of the answer / frame;
* ``bad_checksum``: a well-formed frame with a wrong checksum (Modbus RTU: wrong CRC;
  Modbus TCP has none, so it behaves as ``garbage``);
* ``set:SIGNAL=VALUE``: from the start time on, the device reports VALUE for SIGNAL, e.g.
  a span coefficient changed by a technician (``set:span_coeff.co_pct=1.08@30``).

Text form (CLI ``--faults``): comma-separated ``KIND[@START[-END]]``; without ``@`` the
fault is active from the start, without ``-END`` until the simulator stops. A ``uN/``
prefix limits a fault to Modbus unit N: ``u2/timeout@10-20``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

KINDS = ("timeout", "exception", "garbage", "bad_checksum", "set")


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    start: float = 0.0
    end: float | None = None
    code: int = 0
    signal: str = ""
    value: float = 0.0
    unit: int | None = None

    def covers(self, elapsed: float, unit: int | None) -> bool:
        if self.unit is not None and unit is not None and unit != self.unit:
            return False
        return self.start <= elapsed and (self.end is None or elapsed < self.end)


_ITEM = re.compile(r"^(?:u(?P<unit>\d+)/)?(?P<kind>[a-z_]+)(?::(?P<arg>[^@]+))?"
                   r"(?:@(?P<start>\d+(?:\.\d+)?)(?:-(?P<end>\d+(?:\.\d+)?))?)?$")


def parse_faults(spec: str) -> list[Fault]:
    """Parse the CLI form; raises FaultSpecError naming the bad item."""
    out: list[Fault] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = _ITEM.match(item)
        if not m or m["kind"] not in KINDS:
            raise FaultSpecError(f"fault {item!r}: expected KIND[:ARG][@START[-END]] with KIND "
                                 f"one of {', '.join(KINDS)}")
        kind, arg = m["kind"], m["arg"]
        start = float(m["start"] or 0)
        end = float(m["end"]) if m["end"] else None
        if end is not None and end <= start:
            raise FaultSpecError(f"fault {item!r}: end before start")
        unit = int(m["unit"]) if m["unit"] else None
        if kind == "exception":
            if not arg or not arg.isdigit() or not 1 <= int(arg) <= 255:
                raise FaultSpecError(f"fault {item!r}: exception needs a code, e.g. "
                                     "exception:2")
            out.append(Fault(kind, start, end, code=int(arg), unit=unit))
        elif kind == "set":
            sm = re.match(r"^([a-z0-9_.]+)=(-?[0-9.eE+-]+)$", arg or "")
            if not sm:
                raise FaultSpecError(f"fault {item!r}: set needs SIGNAL=VALUE")
            try:
                value = float(sm[2])
            except ValueError:
                raise FaultSpecError(f"fault {item!r}: {sm[2]!r} is not a number") from None
            out.append(Fault(kind, start, end, signal=sm[1], value=value, unit=unit))
        else:
            if arg:
                raise FaultSpecError(f"fault {item!r}: {kind} takes no argument")
            out.append(Fault(kind, start, end, unit=unit))
    return out


class FaultPlan:
    """The faults of one simulated device, on the clock of the simulator's start."""

    def __init__(self, faults: list[Fault] | tuple[Fault, ...] = ()) -> None:
        self.faults = list(faults)
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def add(self, fault: Fault) -> None:
        """Add a fault whose times count from now (tests, interactive use)."""
        e = self.elapsed()
        end = None if fault.end is None else fault.end + e
        self.faults.append(Fault(fault.kind, fault.start + e, end, fault.code, fault.signal,
                                 fault.value, fault.unit))

    def clear(self) -> None:
        self.faults = []

    def active(self, kind: str, unit: int | None = None) -> Fault | None:
        if not self.faults:
            return None
        e = self.elapsed()
        for f in self.faults:
            if f.kind == kind and f.covers(e, unit):
                return f
        return None

    def overrides(self, unit: int | None = None) -> dict[str, float]:
        if not self.faults:
            return {}
        e = self.elapsed()
        return {f.signal: f.value for f in self.faults if f.kind == "set" and f.covers(e, unit)}
