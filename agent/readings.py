"""What Modbus and serial readers share: value conversion, faults, back-off, parameters.

Kept free of pydantic and of per-reading allocations beyond the Reading itself: the agent
budget is a few microseconds of CPU per reading on a Pi-class board.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from agent.siteplan import StatusFlags, decimals_of
from stationseal.records import Event, Reading


class Conv:
    """Scale, offset, rounding and range of one point, precomputed from its profile entry."""

    __slots__ = ("decimals", "hi", "identity", "lo", "offset", "role", "scale", "signal",
                 "unit")

    def __init__(self, signal: str, unit: str, scale: float, offset: float,
                 range_: tuple[float, float] | None, role: str, integer: bool) -> None:
        self.signal = signal
        self.unit = unit
        self.scale = scale
        self.offset = offset
        self.identity = scale == 1 and offset == 0
        self.decimals = decimals_of(scale, offset) if integer and not self.identity else None
        self.lo, self.hi = range_ if range_ is not None else (float("-inf"), float("inf"))
        self.role = role

    def apply(self, v: int | float) -> int | float:
        if self.identity:
            return v
        x = v * self.scale + self.offset
        return round(x, self.decimals) if self.decimals is not None else x

    def quality(self, v: int | float, status_flag: str) -> str:
        """Instrument status outranks over-range: a calibration gas reading is not a
        measurement whatever its value. NaN (a float register's "no value") is a fault."""
        if status_flag:
            return status_flag
        if self.lo <= v <= self.hi:
            return "N"
        return "D" if v != v else "T"


class StatusDecoder:
    """Status word -> flag, memoised: instruments report a handful of distinct words."""

    __slots__ = ("_cache", "_spec")

    def __init__(self, spec: StatusFlags) -> None:
        self._spec = spec
        self._cache: dict[int, str] = {}

    def flag(self, word: int) -> str:
        f = self._cache.get(word)
        if f is None:
            f = self._spec.flag_for(word)
            if len(self._cache) < 4096:
                self._cache[word] = f
        return f


class ParamWatch:
    """Calibration and configuration values: a Reading when first read after start (the
    baseline an auditor compares against) and, on every change, a Reading plus a
    ``calibration_change`` / ``config_change`` Event with old and new values and bytes.

    Changes are detected on the raw bytes, so a float that prints the same but differs in
    its last bit still counts (span abuse can be subtle).
    """

    __slots__ = ("_instrument", "_last")

    def __init__(self, instrument: str) -> None:
        self._instrument = instrument
        self._last: dict[str, tuple[bytes, Any]] = {}

    def observe(self, conv: Conv, value: Any, raw: bytes, t: float,
                readings: list[Reading], events: list[Event]) -> None:
        prev = self._last.get(conv.signal)
        if prev is not None and prev[0] == raw:
            return
        self._last[conv.signal] = (raw, value)
        readings.append(Reading(self._instrument, conv.signal, value, conv.unit, t,
                                "N", raw))
        if prev is not None:
            kind = "calibration_change" if conv.role == "calibration" else "config_change"
            events.append(Event(self._instrument, kind, t, {
                "signal": conv.signal, "old": prev[1], "new": value,
                "raw_old": prev[0].hex(), "raw_new": raw.hex()}))


@dataclass
class FaultTracker:
    """Turns a stream of per-poll failures into events at state changes only.

    Each distinct error message gives one event per fault episode; repeats are counted,
    not re-sent, so a dead instrument polled at 10 Hz (or one refusing two blocks
    alternately) does not flood the outbox. The next fully successful poll ends the
    episode with ``instrument_recovered`` and the counts.
    """

    instrument: str
    #: last error of the current episode (None: healthy)
    error: str | None = None
    since: float = 0.0
    failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def fail(self, kind: str, error: str, t: float, events: list[Event],
             **detail: Any) -> None:
        self.failures += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.error is None:
            self.since = t
        self.error = error
        if error not in self.seen and len(self.seen) < 256:
            self.seen.add(error)
            events.append(Event(self.instrument, kind, t, {"error": error, **detail}))

    def ok(self, t: float, events: list[Event]) -> None:
        if self.error is None:
            return
        events.append(Event(self.instrument, "instrument_recovered", t, {
            "last_error": self.error, "since": self.since, "duration_s": round(t - self.since, 3),
            "failures": self.failures, **{f"{k}_count": n for k, n in self.kinds.items()}}))
        self.error = None
        self.failures = 0
        self.kinds = {}
        self.seen = set()


class Backoff:
    """Per-slave exponential back-off: the first failure is retried at the next poll
    (one lost frame is common on RS-485), then the wait doubles up to ``max_s``, with
    +-20 % jitter so several gateways do not retry a shared device in lock step."""

    __slots__ = ("_n", "_retry_at", "initial_s", "max_s")

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._n = 0
        self._retry_at = 0.0

    def waiting(self) -> bool:
        return self._n > 1 and time.monotonic() < self._retry_at

    def failed(self) -> float:
        self._n += 1
        if self._n == 1:
            return 0.0
        delay = min(self.max_s, self.initial_s * 2.0 ** (self._n - 2))
        delay *= random.uniform(0.8, 1.2)
        self._retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self._n = 0
