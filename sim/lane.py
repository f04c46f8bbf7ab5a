"""Real-time vehicle lane: a sequence of inspection tests played into the lane's instruments.

A commissioning engineer (or the demo) needs a lane that behaves like one while the real
gateway polls it: the five-gas analyzer, dynamometer, OBD adapter, opacimeter and weather
station must show the curves of the test under way, second by second, and the lane
controller (profile ``lane_controller``) must say which test, vehicle and phase that is.
The physics is sim/vehicle.py's; this module only schedules tests on the wall clock and
answers the simulators' value hooks (``values_fn(t)``, see sim/profiles.py).

The schedule is a pure function of the configuration and the start time: a test is
generated when the clock first reaches its start, from a generator seeded by the lane's
seed, so what a value hook answers does not depend on who asks or how often. Tests start
on whole seconds; second ``k`` of a test covers ``[start + k, start + k + 1)``.

Scenario injection (``Injection``, text form in :func:`parse_scenario`) plants the data
signatures of the falsification patterns V1..V10 into chosen tests. Patterns that concern
what the *instruments* show are reproduced as such: V9 makes the weather station itself
report constant values (a box that replaced it), V6 replays one car's run under other
plates. V7 "gap" (lane software deleting seconds from its upload) cannot be shown by
instruments, which never skip seconds, and is refused; V7 "short" (the lane ending a
phase early) is supported. V2 "rpm" (tachometer fed from the OBD value) is played, but
the five-gas analyzer's rpm register holds whole rpm while OBD rpm has 0.25 rpm steps,
so the two are equal only to the analyzer's resolution.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sim import scenario
from sim import vehicle as vm
from sim.envcommon import quantize
from stationseal import lanecodes as lc
from stationseal import vehicle_results as vres

#: Instrument role per profile id: which part of a simulated test an instrument shows.
ROLE_BY_PROFILE: dict[str, str] = {
    "five_gas": "analyzer",
    "chassis_dyno": "dyno",
    "obd_adapter": "obd",
    "opacimeter": "opacimeter",
    "weather_station": "weather",
    "lane_controller": "lane",
}
ROLES: tuple[str, ...] = ("lane", "analyzer", "dyno", "obd", "opacimeter", "weather",
                          "flowmeter")

#: A lane that tests every method (gasoline and diesel) in turn.
DEFAULT_METHODS: tuple[str, ...] = ("asm5025", "idle", "free_accel", "asm2540", "vmas",
                                    "lug_down")

#: Ready-made scenarios for ``--scenario NAME``.
PRESETS: dict[str, str] = {
    "none": "",
    # The demo station's (demo/plan.py): two lanes, most patterns on tests that end
    # within the first two minutes; the substitute car on lane 2's VMAS tests later on.
    "demo": "V8@L1:1/variant=power, V9@L1:1-/variant=default, V1@L1:2/variant=probe_out, "
            "V5@L2:1, V3@L2:2, V6@L2:4-5/variant=car",
}

ValuesFn = Callable[[float], dict[str, Any]]
#: After a test the car stays on the rollers and the probe in the tailpipe until the
#: operator has seen the verdict: instruments hold the last state for ``_HOLD_S``, then
#: the analyzer clears with room air and the rollers coast to a stop.
TAIL_S = 10.0
_HOLD_S = 7.0
#: The lane has one tachometer and one oil temperature probe, wired to whichever exhaust
#: instrument the method uses; the other one shows the same inputs.
_SHARED_INPUTS = ("rpm", "oil_temp_c")
_PARTNER = {"analyzer": "opacimeter", "opacimeter": "analyzer"}
#: Tests are generated this long before they start, so lane-wide patterns (a weather box
#: in place) are set up before the test's first second.
_LOOKAHEAD_S = 2.0
#: Tests whose per-second curves stay in memory (older ones keep only their label).
_KEEP_CURVES = 50


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True, slots=True)
class Injection:
    """Pattern ``rule`` planted into tests of ``lane`` (1-based test numbers of the run).

    ``tests`` lists test numbers; ``open_from`` (if set) adds every test from that number
    on. V6 "car" takes its group's first test as the genuine source run; V6 "retest" needs
    two tests: a car that fails, then a stand-in under the same plate.
    """

    rule: str
    lane: str
    tests: tuple[int, ...] = ()
    open_from: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def applies(self, number: int) -> bool:
        return number in self.tests or (self.open_from is not None and number >= self.open_from)

    @property
    def variant(self) -> str:
        v = self.params.get("variant")
        return str(v) if v is not None else vm.VARIANTS.get(self.rule, ("",))[0]

    def text(self) -> str:
        nums = "+".join(str(n) for n in self.tests)
        if self.open_from is not None:
            nums = (nums + "+" if nums else "") + f"{self.open_from}-"
        params = "".join(f"/{k}={v}" for k, v in self.params.items())
        return f"{self.rule}@{self.lane}" + (f":{nums}" if nums else "") + params


_ENTRY = re.compile(r"^(V\d+)@([A-Za-z0-9_.-]+)(?::([0-9+\-]+))?((?:/[A-Za-z_]+=[^/]+)*)$")


def parse_scenario(text: str) -> list[Injection]:
    """``RULE@LANE[:TESTS][/key=value...]`` entries separated by commas, or a preset name.

    TESTS: ``3``, ``2-4``, ``3-`` (from test 3 on), ``1+3+5``; without TESTS every test.
    Examples: ``V1@L1:3/variant=probe_out``, ``V6@L2:2-4/variant=car``, ``V9@L2``.
    Raises ValueError naming the entry at fault.
    """
    out: list[Injection] = []
    for raw in scenario.entries(text, PRESETS):
        m = _ENTRY.match(raw)
        if m is None:
            raise ValueError(f"scenario entry {raw!r}: expected RULE@LANE[:TESTS][/key=value]"
                             f" (presets: {', '.join(PRESETS)})")
        rule, lane, nums, params = m.groups()
        if rule not in vm.RULES:
            raise ValueError(f"scenario entry {raw!r}: unknown rule {rule}")
        tests: list[int] = []
        open_from: int | None = None
        for part in (nums or "").split("+"):
            if not part:
                continue
            lo, dash, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()) or int(lo) < 1:
                raise ValueError(f"scenario entry {raw!r}: bad test number(s) {part!r}")
            if dash and not hi:
                open_from = int(lo)
            else:
                tests += range(int(lo), int(hi or lo) + 1)
        if not nums:
            open_from = 1
        kv = scenario.params(params)
        inj = Injection(rule, lane, tuple(sorted(set(tests))), open_from, kv)
        variant = kv.get("variant")
        if variant is not None and variant not in vm.VARIANTS.get(rule, ()):
            raise ValueError(f"scenario entry {raw!r}: {rule} has no variant {variant!r} "
                             f"(known: {', '.join(vm.VARIANTS.get(rule, ())) or 'none'})")
        if rule == "V7" and inj.variant == "gap":
            raise ValueError(f"scenario entry {raw!r}: V7 'gap' deletes seconds from the "
                             "lane's upload, which instruments polled live cannot show; use "
                             "variant=short")
        if rule == "V6" and inj.variant == "retest" and (len(inj.tests) != 2 or open_from):
            raise ValueError(f"scenario entry {raw!r}: V6 retest needs exactly two tests "
                             "(the failing car, then its stand-in), e.g. V6@L1:2+4")
        out.append(inj)
    return out


# --------------------------------------------------------------------------- lane


@dataclass(slots=True)
class LaneConfig:
    site: str
    lane: str
    #: Methods tested in turn (a test that carries a pattern not applicable to its turn's
    #: method takes the first applicable method of this list instead).
    methods: tuple[str, ...] = DEFAULT_METHODS
    #: Pause between two tests (uniform in this range, seconds).
    gap_s: tuple[float, float] = (6.0, 12.0)
    #: Idle time from the driver's start to the first test.
    lead_s: float = 3.0
    seed: int = 1
    #: Cap on the cars' emission factor (None: the fleet's log-normal, where some cars
    #: fail and a failing ASM test runs its full 90 s).
    max_emission_factor: float | None = None
    #: Serial number of the first test (what the lane controller shows).
    first_number: int = 1
    injections: tuple[Injection, ...] = ()

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in vres.PHASES]
        if not self.methods or bad:
            raise ValueError(f"lane {self.lane}: methods {bad or '(none)'}: expected some of "
                             f"{', '.join(vres.PHASES)}")
        if not 0 <= self.gap_s[0] <= self.gap_s[1]:
            raise ValueError(f"lane {self.lane}: gap_s {self.gap_s} must be 0 <= low <= high")
        per_test = [i for i in self.injections if i.rule != "V9"]
        for a_i, a in enumerate(per_test):
            for b in per_test[a_i + 1:]:
                if _overlap(a, b):
                    raise ValueError(f"lane {self.lane}: {a.text()} and {b.text()} target "
                                     "the same test; one pattern per test (V9, lane-wide, "
                                     "combines with any)")
        for inj in self.injections:
            if inj.lane != self.lane:
                raise ValueError(f"lane {self.lane}: injection {inj.text()} is for lane "
                                 f"{inj.lane}")
            if not any(m in vm.APPLICABLE[inj.rule] for m in self.methods):
                raise ValueError(f"lane {self.lane}: {inj.text()} needs one of the methods "
                                 f"{sorted(vm.APPLICABLE[inj.rule])}, the lane tests "
                                 f"{', '.join(self.methods)}")


def _overlap(a: Injection, b: Injection) -> bool:
    if set(a.tests) & set(b.tests):
        return True
    if a.open_from is not None and b.open_from is not None:
        return True
    return any(o is not None and any(n >= o for n in other.tests)
               for o, other in ((a.open_from, b), (b.open_from, a)))


Row = dict[str, float]


@dataclass(slots=True)
class LaneTest:
    """One scheduled test: identity, timing, verdict, planted pattern and per-second rows."""

    site: str
    lane: str
    number: int
    test_id: str
    method: str
    plate: str
    vin: str
    calid: str
    cvn: str
    start: float
    end: float
    result: str
    model: str = ""
    #: cut short by :meth:`LaneDriver.stop` (the lane shows "aborted", no verdict)
    aborted: bool = False
    #: planted patterns: rule -> variant
    patterns: dict[str, str] = field(default_factory=dict)
    #: V6 group the test belongs to (tests of one substitute car or retest pair)
    group: str = ""
    #: role -> one row per second (None: the instrument has nothing in that second)
    rows: dict[str, list[Row | None]] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    spec: vm.VehicleTestSpec | None = None

    def label(self) -> dict[str, Any]:
        """What the lane knows and the data must not tell: the ground truth of the test."""
        return {"site": self.site, "lane": self.lane, "test_id": self.test_id,
                "number": self.number, "method": self.method, "vehicle": self.plate,
                "start": self.start, "end": self.end, "result": self.result,
                "aborted": self.aborted, "model": self.model,
                "patterns": dict(self.patterns), "group": self.group}


class _Weather:
    """The lane's weather: slow smooth drift plus sensor noise, a function of time only."""

    def __init__(self, seed: int) -> None:
        r = random.Random(seed)
        self.base = (r.uniform(8.0, 28.0), r.uniform(35.0, 70.0), r.uniform(99.5, 102.0))
        self.ph = [r.uniform(0.0, 2 * math.pi) for _ in range(6)]
        self.seed = seed

    def truth(self, t: float) -> tuple[float, float, float]:
        p = self.ph
        temp = self.base[0] + 0.8 * math.sin(2 * math.pi * t / 5400 + p[0]) \
            + 0.2 * math.sin(2 * math.pi * t / 1300 + p[1])
        rh = self.base[1] - 3.0 * math.sin(2 * math.pi * t / 5400 + p[0]) \
            + 0.8 * math.sin(2 * math.pi * t / 900 + p[2])
        kpa = self.base[2] + 0.05 * math.sin(2 * math.pi * t / 7200 + p[3])
        return temp, min(100.0, max(0.0, rh)), kpa

    def reading(self, t: float) -> Row:
        n = random.Random(self.seed * 1_000_003 + math.floor(t))
        temp, rh, kpa = self.truth(t)
        return {"ambient_temp_c": quantize(temp + n.gauss(0.0, 0.05), 0.1),
                "ambient_rh_pct": quantize(min(100.0, max(0.0, rh + n.gauss(0.0, 0.3))), 0.1),
                "ambient_kpa": quantize(kpa + n.gauss(0.0, 0.01), 0.01)}


class LaneDriver:
    """Plays a lane's test sequence on the wall clock; thread-safe value hooks per role."""

    def __init__(self, cfg: LaneConfig, start: float, close_at: float | None = None) -> None:
        """``close_at``: the lane starts no test it could not finish by then (a station
        closing for the day), so a run ends without a test cut short."""
        self.cfg = cfg
        self.close_at = math.inf if close_at is None else close_at
        self.start = float(math.floor(start))
        self._rng = random.Random(cfg.seed)
        self._weather = _Weather(cfg.seed ^ 0x5EA7)
        self._tests: list[LaneTest] = []
        self._starts: list[float] = []
        self._next_start = self.start + cfg.lead_s
        self._next_number = cfg.first_number
        self._stopped = math.inf
        self._lock = threading.Lock()
        #: V6 "car" groups: injection index -> the genuine run replayed under other plates
        self._v6_source: dict[int, vm.VehicleTestSpec] = {}
        #: V6 "retest": injection index -> the vehicle that failed
        self._v6_failed: dict[int, vm.Vehicle] = {}
        self._v4_ids: dict[int, tuple[str, str]] = {}
        self._v9_fixed: dict[int, tuple[float, float, float]] = {}
        self._v9_since: dict[int, float] = {}

    # -- public ---------------------------------------------------------------------
    @property
    def lane(self) -> str:
        return self.cfg.lane

    def tests(self, until: float | None = None) -> list[LaneTest]:
        """Tests scheduled so far (``until``: first extend the schedule to that time)."""
        with self._lock:
            if until is not None:
                self._ensure(until)
            return list(self._tests)

    def labels(self, until: float) -> list[dict[str, Any]]:
        """Ground truth of every test that *ended* by ``until``, injected or not."""
        return [t.label() for t in self.tests(until) if t.end <= until]

    def values_fn(self, role: str) -> ValuesFn:
        if role not in ROLES:
            raise ValueError(f"unknown lane role {role!r}; expected one of {ROLES}")
        return lambda t: self.values(role, t)

    def values(self, role: str, t: float) -> dict[str, Any]:
        """What the instrument playing ``role`` shows at wall time ``t``."""
        with self._lock:
            self._ensure(t + _LOOKAHEAD_S)
            cur, last = self._around(t)
            if role == "lane":
                return self._controller(cur, last, t)
            if role == "weather":
                fixed = self._v9_values(cur or last, t)
                if fixed is not None:
                    return dict(zip(("ambient_temp_c", "ambient_rh_pct", "ambient_kpa"),
                                    fixed, strict=True))
            # Every signal the instrument has: what the test gives it, the rest at rest
            # (a lug-down test uses only the analyzer's CO2 channel, for instance).
            out = self._idle(role, t)
            own = self._shown(role, cur, last, t) or {}
            out.update(own)
            partner = _PARTNER.get(role)
            if partner is not None and any(k not in own for k in _SHARED_INPUTS):
                other = self._shown(partner, cur, last, t) or {}
                out.update({k: other[k] for k in _SHARED_INPUTS if k in other and k not in own})
            return out

    def stop(self, t: float) -> None:
        """Close the lane at ``t``: no test starts after it, and a test under way is cut
        short (the controller shows it aborted, without a verdict)."""
        with self._lock:
            self._ensure(t)
            self._stopped = t
            cur, _ = self._around(t)
            if cur is not None:
                cur.end = max(cur.start + 1.0, float(math.ceil(t)))
                cur.result = ""
                cur.aborted = True

    def _shown(self, role: str, cur: LaneTest | None, last: LaneTest | None, t: float
               ) -> dict[str, Any] | None:
        """The role's own data at ``t`` (test second or post-test tail), if it has any."""
        if cur is not None:
            k = int(t - cur.start)
            rows = cur.rows.get(role)
            row = rows[k] if rows is not None and 0 <= k < len(rows) else None
            return {**row, "status": 0} if row is not None else None
        if last is not None and t - last.end < TAIL_S and not last.aborted:
            return self._tail(role, last, t - last.end)
        return None

    # -- schedule -------------------------------------------------------------------
    def _ensure(self, t: float) -> None:
        while self._next_start <= t and self._next_start < self._stopped:
            test = self._build(self._next_number, self._next_start)
            if test.end > self.close_at:
                self._next_start = math.inf
                break
            self._tests.append(test)
            self._starts.append(test.start)
            self._next_number += 1
            self._next_start = float(math.floor(test.end + self._rng.uniform(*self.cfg.gap_s)))
            if self._next_start <= test.end:
                self._next_start = test.end + 1.0
            if len(self._tests) > _KEEP_CURVES:
                self._tests[-_KEEP_CURVES - 1].rows = {}  # keep the label, drop the curves

    def _around(self, t: float) -> tuple[LaneTest | None, LaneTest | None]:
        """(test under way at t, last test that ended by t)."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0:
            return None, None
        test = self._tests[i]
        if t < test.end:
            return test, self._tests[i - 1] if i > 0 else None
        return None, test

    def _injections(self, number: int) -> list[tuple[int, Injection]]:
        return [(i, inj) for i, inj in enumerate(self.cfg.injections) if inj.applies(number)]

    def _method_for(self, number: int, rules: Iterable[str]) -> str:
        m = self.cfg.methods[(number - self.cfg.first_number) % len(self.cfg.methods)]
        need = [vm.APPLICABLE[r] for r in rules]
        if all(m in a for a in need):
            return m
        for cand in self.cfg.methods:
            if all(cand in a for a in need):
                return cand
        raise ValueError(f"lane {self.lane} test {number}: no method of the lane fits "
                         f"{', '.join(rules)} together")

    def _vehicle(self, method: str) -> vm.Vehicle:
        fuel = "diesel" if method in vres.DIESEL_METHODS else "gasoline"
        v = vm.random_vehicle(self._rng, fuel)
        cap = self.cfg.max_emission_factor
        return replace(v, emission_factor=min(v.emission_factor, cap)) if cap else v

    def _build(self, number: int, start: float) -> LaneTest:
        cfg = self.cfg
        injs = self._injections(number)
        lane_wide = [(i, x) for i, x in injs if x.rule == "V9"]
        per_test = [(i, x) for i, x in injs if x.rule != "V9"]
        if len(per_test) > 1:
            raise ValueError(f"lane {self.lane} test {number}: several patterns "
                             f"({', '.join(x.text() for _, x in per_test)}); one per test")
        method = self._method_for(number, [x.rule for _, x in injs])
        inject: str | None = None
        params: dict[str, Any] = {}
        patterns: dict[str, str] = {}
        group = ""
        vehicle = self._vehicle(method)
        source: vm.VehicleTestSpec | None = None
        if per_test:
            idx, inj = per_test[0]
            patterns[inj.rule] = inj.variant
            params = dict(inj.params)
            if inj.rule == "V6":
                group = f"{cfg.site}-{self.lane}-V6-{idx}"
                method, vehicle, source = self._v6(idx, inj, method, vehicle)
                params = {"source": source} if source is not None else {}
                inject = "V6" if source is not None else None
            else:
                inject = inj.rule
                if inj.rule == "V4":
                    params.setdefault("calid", self._v4(idx)[0])
                    params.setdefault("cvn", self._v4(idx)[1])
        for idx, inj in lane_wide:
            fixed = self._v9_fixed_values(idx, inj, start)
            patterns[inj.rule] = inj.variant
            if inject is None:  # else the weather station's values are replaced anyway
                inject, params = "V9", {"values": fixed}
        temp, rh, kpa = self._weather.truth(start)
        tid = lc.test_id(cfg.site, self.lane, number)
        spec = vm.spec_for(vehicle, method, tid, site=cfg.site, lane=self.lane,
                           oil_temp_c=self._rng.uniform(70.0, 100.0), ambient_temp_c=temp,
                           ambient_rh_pct=rh, ambient_kpa=kpa,
                           run_seed=self._rng.getrandbits(31))
        out = vm.run_test(spec, start, self._rng, inject, params or None)
        if per_test and per_test[0][1].rule == "V6":
            idx, inj = per_test[0]
            if inj.variant == "car" and source is None:
                self._v6_source[idx] = spec
            elif inj.variant == "retest" and inj.tests[0] == number:
                self._v6_failed[idx] = vehicle
        if "V10" in patterns and not out.injected:
            del patterns["V10"]  # nothing at or above 0.9 L: nothing to nudge
        calid = str(params.get("calid", spec.calid)) if "V4" in patterns else spec.calid
        cvn = str(params.get("cvn", spec.cvn)) if "V4" in patterns else spec.cvn
        test = LaneTest(cfg.site, self.lane, number, tid, method, spec.plate, spec.vin, calid,
                        cvn, start, out.end, out.result, spec.model_group,
                        patterns=patterns, group=group, spec=spec)
        self._index(test, out.samples)
        return test

    def _v4(self, idx: int) -> tuple[str, str]:
        if idx not in self._v4_ids:
            hx = "0123456789ABCDEF"
            self._v4_ids[idx] = ("CB" + "".join(self._rng.choice(hx) for _ in range(8)),
                                 "".join(self._rng.choice(hx) for _ in range(8)))
        return self._v4_ids[idx]

    def _v6(self, idx: int, inj: Injection, method: str, vehicle: vm.Vehicle
            ) -> tuple[str, vm.Vehicle, vm.VehicleTestSpec | None]:
        """V6 car: later tests of the group replay the first one's run (same method);
        V6 retest: a dirty car fails, its stand-in passes under the same identity."""
        if inj.variant == "car":
            src = self._v6_source.get(idx)
            if src is None:
                return method, vehicle, None
            return src.method, self._vehicle(src.method), src
        failed = self._v6_failed.get(idx)
        if failed is None:
            return method, replace(vehicle, emission_factor=8.0), None
        first = next(t for t in self._tests if t.number == inj.tests[0])
        stand_in = self._vehicle(first.method)
        stand_in = replace(stand_in, plate=failed.plate, vin=failed.vin, model=failed.model,
                           calid=failed.calid, cvn=failed.cvn, odometer_km=failed.odometer_km,
                           emission_factor=min(stand_in.emission_factor, 0.4))
        return first.method, stand_in, None

    def _v9_fixed_values(self, idx: int, inj: Injection, t: float) -> tuple[float, float, float]:
        if idx not in self._v9_fixed:
            if inj.variant == "frozen":
                w = self._weather.reading(t)
                self._v9_fixed[idx] = (w["ambient_temp_c"], w["ambient_rh_pct"],
                                       w["ambient_kpa"])
            else:
                self._v9_fixed[idx] = vm.DEFAULT_WEATHER
            # the box replacing the weather station is in place before the test starts
            self._v9_since[idx] = max(self.start, t - 5.0)
        return self._v9_fixed[idx]

    def _v9_values(self, test: LaneTest | None, t: float) -> tuple[float, float, float] | None:
        """V9 replaces the weather station for good from its first test on (and between
        tests), except for a closed range of tests, outside which the real one answers."""
        for idx, inj in enumerate(self.cfg.injections):
            if inj.rule != "V9" or idx not in self._v9_fixed or t < self._v9_since[idx]:
                continue
            if inj.open_from is not None or (test is not None and inj.applies(test.number)):
                return self._v9_fixed[idx]
        return None

    def _index(self, test: LaneTest, samples: Sequence[Any]) -> None:
        """Per-second rows by role from the simulated samples (second k: the sample's time
        minus the test start, less the instrument's poll offset within the second)."""
        n = max(1, round(test.end - test.start))
        rows: dict[str, list[Row | None]] = {}
        phases = [""] * n
        for s in samples:
            k = round(s.time - test.start - 0.2)
            if not 0 <= k < n:
                continue
            role = s.instrument.rsplit(".", 1)[-1]
            rows.setdefault(role, [None] * n)[k] = dict(s.values)
            if s.test is not None and not phases[k]:
                phases[k] = s.test.phase
        for k in range(1, n):
            phases[k] = phases[k] or phases[k - 1]
        test.rows = rows
        test.phases = phases

    # -- instrument faces -----------------------------------------------------------
    def _controller(self, cur: LaneTest | None, last: LaneTest | None, t: float
                    ) -> dict[str, Any]:
        test = cur or last
        if test is None:
            return {"lane_test_state": lc.STATE_IDLE, "lane_method": 0, "lane_phase": 0,
                    "lane_test_id": 0, "lane_result": 0, "lane_vehicle": "", "lane_vin": "",
                    "lane_calid": "", "lane_cvn": "", "lane_model": "", "status": 0}
        out: dict[str, Any] = {
            "lane_method": lc.METHOD_CODES[test.method], "lane_test_id": test.number,
            "lane_vehicle": lc.encode_text(test.plate), "lane_vin": test.vin,
            "lane_calid": test.calid, "lane_cvn": test.cvn, "lane_model": test.model,
            "status": 0,
        }
        if cur is not None:
            k = min(int(t - cur.start), len(cur.phases) - 1)
            phase = cur.phases[k] if k >= 0 else ""
            out.update(lane_test_state=lc.STATE_TESTING, lane_result=0,
                       lane_phase=lc.phase_code(cur.method, phase))
        else:
            out.update(lane_test_state=lc.STATE_ABORTED if test.aborted
                       else lc.STATE_FINISHED, lane_phase=0,
                       lane_result=lc.RESULT_CODES.get(test.result, 0))
        return out

    def _tail(self, role: str, test: LaneTest, dt: float) -> dict[str, Any] | None:
        """``dt`` seconds after ``test`` ended: exhaust held for the sample line's delay and
        then cleared by room air, rollers coasting to a stop, the engine idling."""
        rows = [r for r in test.rows.get(role, []) if r is not None]
        if not rows:
            return None
        last = dict(rows[-1])
        f = 1.0 if dt < _HOLD_S else math.exp(-(dt - _HOLD_S) / 1.2)
        if role == "analyzer":
            for k in ("co_pct", "hc_ppm", "no_ppm", "nox_ppm"):
                if k in last:
                    last[k] = quantize(last[k] * f, 0.01 if k.endswith("_pct") else 1.0)
            if "co2_pct" in last:
                last["co2_pct"] = quantize(f * last["co2_pct"] + (1 - f) * 0.04, 0.01)
            if "o2_pct" in last:
                last["o2_pct"] = quantize(f * last["o2_pct"] + (1 - f) * vres.AIR_O2_PCT, 0.01)
            if f < 1.0 and {"co2_pct", "co_pct", "o2_pct", "hc_ppm"} <= set(last):
                carbon = last["co2_pct"] + last["co_pct"]
                last["lambda"] = quantize(vres.brettschneider(
                    last["co2_pct"], last["co_pct"], last["o2_pct"], last["hc_ppm"]), 0.001) \
                    if carbon > 1.0 else 0.0
        elif role == "opacimeter":
            last["k_m1"] = quantize(last.get("k_m1", 0.0) * f, 0.001)
            last["opacity_pct"] = quantize(vres.opacity_from_k(last["k_m1"]), 0.01)
        elif role in ("dyno", "obd"):
            key = "speed_kmh" if role == "dyno" else "obd_speed_kmh"
            if dt >= _HOLD_S:
                v = max(0.0, last.get(key, 0.0) * (1.0 - (dt - _HOLD_S) / 3.0))
                last[key] = quantize(v, 0.01 if role == "dyno" else 1.0)
                if role == "dyno":
                    last.update(target_speed_kmh=0.0, force_n=0.0, power_kw=0.0)
        else:
            return None
        return {**last, "status": 0}

    def _idle(self, role: str, t: float) -> dict[str, Any]:
        """Instruments between tests: analyzer sampling room air, rollers still, no car on
        the OBD adapter (its status says so), the weather station as always."""
        w = self._weather.reading(t)
        n = random.Random(self.cfg.seed * 7919 + math.floor(t) * 31 + ROLES.index(role))
        if role == "weather":
            return {**w, "status": 0}
        if role == "analyzer":
            return {"hc_ppm": float(max(0, round(n.gauss(1.0, 1.0)))), "co_pct": 0.0,
                    "co2_pct": quantize(max(0.0, 0.04 + n.gauss(0.0, 0.01)), 0.01),
                    "o2_pct": quantize(20.9 + n.gauss(0.0, 0.02), 0.01), "no_ppm": 0.0,
                    "lambda": 0.0, "rpm": 0.0, "oil_temp_c": w["ambient_temp_c"], "status": 0}
        if role == "dyno":
            return {"speed_kmh": 0.0, "target_speed_kmh": 0.0, "power_kw": 0.0,
                    "force_n": quantize(n.gauss(0.0, 2.0), 1.0), "status": 0}
        if role == "obd":
            return {"obd_rpm": 0.0, "obd_speed_kmh": 0.0, "obd_throttle_pct": 0.0,
                    "obd_lambda": 0.0, "obd_load_pct": 0.0, "obd_odometer_km": 0.0,
                    "status": 1}
        if role == "opacimeter":
            k = quantize(max(0.0, n.gauss(0.0, 0.003)), 0.001)
            return {"k_m1": k, "opacity_pct": quantize(vres.opacity_from_k(k), 0.01), "rpm": 0.0,
                    "oil_temp_c": w["ambient_temp_c"], "status": 0}
        if role == "flowmeter":
            return {"flow_lps": 0.0, "flow_o2_pct": 20.9, "status": 0}
        return {"status": 0}


# --------------------------------------------------------------------------- wiring


def lane_of_instrument(instrument_id: str, lane: str | None = None) -> str:
    """The lane an instrument serves: its configured lane, else the id's prefix before
    the last dot (``L2.analyzer`` -> ``L2``), the convention the detectors share."""
    if lane:
        return lane
    head, dot, _ = instrument_id.rpartition(".")
    return head if dot else ""


def values_factory(drivers: Mapping[str, LaneDriver]) -> Callable[[str, Any, str | None],
                                                                  ValuesFn | None]:
    """A ``values_factory`` for sim.site.start_site: each lane instrument is answered by
    its lane's driver in the role its profile plays; a weather station shared by several
    lanes follows the first lane. Other instruments keep the simulator's default model.

    The driver is looked up in ``drivers`` at every call, so a caller may replace a lane's
    driver while the simulators run (e.g. start the test sequence once the gateway is up).
    """

    def factory(instrument_id: str, profile: Any, lane: str | None) -> ValuesFn | None:
        role = ROLE_BY_PROFILE.get(getattr(profile, "id", ""))
        if role is None:
            return None
        name = lane_of_instrument(instrument_id, lane)
        if name not in drivers:
            if role != "weather" or not drivers:
                return None
            name = next(iter(drivers))
        return lambda t: drivers[name].values(role, t)

    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Print a lane's test plan (what a run would play) as JSON lines, without waiting."""
    ap = argparse.ArgumentParser(prog="python -m sim.lane", description=main.__doc__)
    ap.add_argument("--site", default="SITE-1")
    ap.add_argument("--lane", default="L1")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--scenario", default="none", help="preset name or RULE@LANE[:TESTS]...")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=600.0, help="length of the plan")
    args = ap.parse_args(argv)
    try:
        injs = [i for i in parse_scenario(args.scenario) if i.lane == args.lane]
        cfg = LaneConfig(args.site, args.lane, tuple(args.methods.split(",")), seed=args.seed,
                         injections=tuple(injs))
    except ValueError as e:
        print(f"python -m sim.lane: {e}", file=sys.stderr)
        return 2
    drv = LaneDriver(cfg, 0.0)
    for label in drv.labels(args.seconds):
        print(json.dumps(label, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
