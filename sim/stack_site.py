"""Real-time stack CEMS site: sim/cems.py physics played into the CEMS cabinet simulator.

The stack model describes a plant over days (daily load cycle, weekly calibrations, the
odd outage), while a commissioning run or a demo lasts minutes. So the driver runs the
model on a compressed clock: ``seconds_per_hour`` real seconds per simulated hour
(default 30: a simulated day in 12 minutes), and the cabinet simulator's value hook
answers with the model's latest sample at the simulated time of the request.

Only the *values* are compressed. The gateway stamps every reading with its own clock,
as it must, so detectors that judge hourly means (E2, E3, E5, E7) see real hours and
need a real day or week of data whatever the compression; rules judged on samples and
events (E4 flat line, E8 calibration step) can be shown in minutes with their windows
shortened by the caller (the demo does so in its detector parameters, and says so).

Scenario injection (:func:`parse_stack_scenario`) uses sim/envpatterns.py, on real-time
windows: ``E4`` freezes a pollutant (flat line), ``E5`` holds it just under its limit,
``E8`` changes the span coefficient register (the gateway reads it and seals a
``calibration_change`` event) and steps the readings down by the same ratio. Calibration
registers follow the model's own routine calibrations too, so the gateway sees those
changes as well.

The same samples can feed the site's simulated HJ 212 data logger
(sim/hj212_site.py ``driver_values_fn``, which converts to the units HJ 212 transmits),
honest or tampering (``demo_tamper``: SO2 x 0.53, pattern E3).
"""

from __future__ import annotations

import bisect
import math
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sim import envpatterns, scenario
from sim.cems import CEMS_LIMITS, StackModel, cems_series
from sim.envcommon import Record
from stationseal.records import Sample, SiteEvent

#: Model samples kept to answer callers a little behind the newest one.
_HISTORY = 4096
#: Patterns that can be played live (see the module docstring).
LIVE_PATTERNS: tuple[str, ...] = ("E4", "E5", "E8")
#: Status coil bits of the stack_cems profile, per quality flag.
STATUS_BITS: dict[str, int] = {"M": 0, "C": 1, "D": 2, "F": 3}
#: Calibration / configuration registers of the stack_cems profile and their idle values.
REGISTERS: dict[str, float] = {
    "span_coeff.so2_mgm3": 1.0, "span_coeff.nox_mgm3": 1.0, "span_coeff.pm_mgm3": 1.0,
    "zero_offset.so2_mgm3": 0.0, "zero_offset.nox_mgm3": 0.0, "span_coeff.flow_m3h": 1.0,
}
PRESETS: dict[str, str] = {
    "none": "",
    # A flat SO2 line early, then a span change stepping NOx down.
    "demo": "E4@10-70/signal=so2_mgm3, E8@45/signal=nox_mgm3/ratio=0.55",
}


@dataclass(frozen=True, slots=True)
class StackInjection:
    """Pattern ``pattern`` over real seconds ``[start_s, end_s)`` after the driver started
    (``end_s`` None: until the end); ``params`` go to sim.envpatterns.inject."""

    pattern: str
    start_s: float
    end_s: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        span = f"{self.start_s:g}" + (f"-{self.end_s:g}" if self.end_s is not None else "")
        return f"{self.pattern}@{span}" + "".join(f"/{k}={v}" for k, v in self.params.items())


_ENTRY = re.compile(r"^(E\d)@(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?((?:/[A-Za-z_]+=[^/]+)*)$")


def parse_stack_scenario(text: str) -> list[StackInjection]:
    """``PATTERN@START[-END][/key=value...]`` entries (seconds after start), comma
    separated, or a preset name: ``E4@10-70/signal=so2_mgm3, E8@45/ratio=0.55``."""
    out: list[StackInjection] = []
    for raw in scenario.entries(text, PRESETS):
        m = _ENTRY.match(raw)
        if m is None:
            raise ValueError(f"stack scenario entry {raw!r}: expected PATTERN@START[-END]"
                             f"[/key=value] (presets: {', '.join(PRESETS)})")
        pattern, lo, hi, params = m.groups()
        if pattern not in LIVE_PATTERNS:
            raise ValueError(f"stack scenario entry {raw!r}: {pattern} cannot be played live "
                             f"here; live patterns: {', '.join(LIVE_PATTERNS)}")
        if hi is not None and float(hi) <= float(lo):
            raise ValueError(f"stack scenario entry {raw!r}: end before start")
        kv = scenario.params(params)
        sig = kv.get("signal")
        if sig is not None and sig not in CEMS_LIMITS:
            raise ValueError(f"stack scenario entry {raw!r}: signal {sig!r} has no limit; "
                             f"choose one of {', '.join(CEMS_LIMITS)}")
        out.append(StackInjection(pattern, float(lo), float(hi) if hi else None, kv))
    return out


class StackSiteDriver:
    """The stack model on a compressed clock; thread-safe value hooks."""

    def __init__(self, site: str, start: float, *, seconds_per_hour: float = 30.0,
                 sim_start: float | None = None, step_s: float = 60.0, seed: int = 1,
                 instrument: str = "cems", injections: tuple[StackInjection, ...] = (),
                 model: StackModel | None = None) -> None:
        if seconds_per_hour <= 0 or step_s <= 0:
            raise ValueError("seconds_per_hour and step_s must be positive")
        self.site = site
        self.start = start
        self.speed = 3600.0 / seconds_per_hour  # simulated seconds per real second
        self.sim_start = float(math.floor(start if sim_start is None else sim_start))
        self.step_s = step_s
        self.instrument = instrument
        self.injections = injections
        self._lock = threading.Lock()
        rng = random.Random(seed)
        stream: Iterator[Record] = cems_series(self.sim_start, 24 * 3650, step_s, rng, site,
                                               instrument, model)
        for inj in injections:
            end = self.sim_time(start + inj.end_s) if inj.end_s is not None else math.inf
            stream = envpatterns.inject(inj.pattern, stream, site=site, kind="stack_cems",
                                        start=self.sim_time(start + inj.start_s), end=end,
                                        rng=random.Random(seed * 31 + len(inj.text())),
                                        limits=dict(CEMS_LIMITS), **dict(inj.params))
        self._stream = stream
        self._history: deque[Sample] = deque(maxlen=_HISTORY)
        self._times: deque[float] = deque(maxlen=_HISTORY)
        self._next: Record | None = None
        self.registers: dict[str, float] = dict(REGISTERS)
        #: calibration changes the model or a pattern made: (simulated time, detail)
        self.calibrations: list[tuple[float, dict[str, Any]]] = []

    def sim_time(self, t: float) -> float:
        return self.sim_start + (t - self.start) * self.speed

    def sample_at(self, t: float) -> Sample:
        """The model's latest sample at wall time ``t``. Callers on their own clocks (the
        cabinet answering polls, a data logger ticking every few seconds) may ask for
        slightly different times: the recent past is answered from history, so each gets
        the value of *its* instant, as real instruments sampling one process would."""
        with self._lock:
            target = self.sim_time(t)
            while self._peek() is not None and self._peek_time() <= target:
                rec = self._pop()
                if isinstance(rec, SiteEvent):
                    if rec.event == "calibration_change":
                        reg = str(rec.detail.get("signal", ""))
                        if reg in self.registers:
                            self.registers[reg] = float(rec.detail["new"])
                            self.calibrations.append((rec.time, dict(rec.detail)))
                elif isinstance(rec, Sample):
                    self._history.append(rec)
                    self._times.append(rec.time)
            if not self._history:  # before the first sample: the first one
                rec = self._pop()
                while not isinstance(rec, Sample):
                    rec = self._pop()
                self._history.append(rec)
                self._times.append(rec.time)
            i = bisect.bisect_right(self._times, target) - 1
            return self._history[max(i, 0)]

    def values(self, t: float) -> dict[str, Any]:
        """What the CEMS cabinet shows at wall time ``t``: concentrations, registers, and
        the status coils of the model's flags (zero/span check, maintenance, outage)."""
        s = self.sample_at(t)
        status = 0
        for flag in set(s.flags.values()):
            if flag in STATUS_BITS:
                status |= 1 << STATUS_BITS[flag]
        with self._lock:
            regs = dict(self.registers)
        return {**s.values, **regs, "status": status}

    def values_fn(self) -> Callable[[float], dict[str, Any]]:
        return self.values

    def labels(self) -> list[dict[str, Any]]:
        """Ground truth: each planted pattern with its real and simulated windows."""
        out = []
        for inj in self.injections:
            end = self.start + inj.end_s if inj.end_s is not None else None
            out.append({"site": self.site, "instrument": self.instrument,
                        "pattern": inj.pattern, "params": dict(inj.params),
                        "start": self.start + inj.start_s, "end": end,
                        "sim_start": self.sim_time(self.start + inj.start_s),
                        "sim_end": self.sim_time(end) if end is not None else None})
        return out

    # -- stream -----------------------------------------------------------------------
    def _peek(self) -> Record | None:
        if self._next is None:
            self._next = next(self._stream, None)
        return self._next

    def _peek_time(self) -> float:
        nxt = self._peek()
        return nxt.time if nxt is not None else math.inf

    def _pop(self) -> Record | None:
        rec = self._peek()
        self._next = None
        if rec is None:
            raise RuntimeError(f"stack model of {self.site} ran out of samples")
        return rec


def values_factory(drivers: Mapping[str, StackSiteDriver]) -> Callable[
        [str, Any, str | None], Callable[[float], dict[str, Any]] | None]:
    """A ``values_factory`` for sim.site.start_site: instrument id -> its stack driver,
    looked up at every call (a caller may replace the driver while simulators run)."""

    def factory(instrument_id: str, profile: Any, lane: str | None
                ) -> Callable[[float], dict[str, Any]] | None:
        if instrument_id not in drivers:
            return None
        return lambda t: drivers[instrument_id].values(t)

    return factory
