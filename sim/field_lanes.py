"""Field-like lane recordings with labels: an evaluation set written apart from sim/vehicle.py.

The detectors and sim/vehicle.py were built together, so the detectors' scores on that
simulator say little about recordings from other lane software. This generator was
written separately, from docs/records.md, GB 18285 / GB 3847 as summarised in the shared
falsification-patterns document, and the behaviour of real lanes — not from the
simulator's code — and deliberately makes different choices:

* **engine and exhaust**: combustion of CH1.85 fuel at the engine's lambda (dry-product
  balance), a closed-loop lambda oscillation and slow drift per car, catalyst
  breakthrough of CO/HC/NO scaled by load; diesel smoke as K peaks of throttle snaps
  timed by the driver, not by a schedule;
* **instruments**: a sample line with its own transport delay and first-order response
  (T90 of 4–9 s), analyzer noise and resolution per brand, lambda computed by the
  analyzer (Brettschneider with the constants of that brand), a tachometer and an OBD
  port that read engine speed through different paths;
* **lane software** (:data:`VENDORS`): four programs with their own instrument ids,
  stream rates (1 to 5 s), poll offsets and jitter, one-second timer slips, one-second
  stalls, isolated lost samples and short single-instrument dropouts; one tags every
  sample with test and phase, one tags samples without phases, one sends only
  test_start/test_end events, one sends no context at all;
* **weather** from the real Beijing station data in ``../shared`` (temperature,
  pressure, dew point of a random day, interpolated), with a sensor's resolution; a
  smooth synthetic day when the data is absent;
* **instrument faults on clean lanes**: a dead analyzer (all zeros), a weather station
  reading 0 °C / 0 % / 0 kPa, an OBD port not connected, an oil-temperature probe
  saturating at 125 °C on hot engines, gateway fault events — all labelled as faults,
  none as falsification.

Falsifications (V1…V10) are planted on chosen lanes and labelled per test (V10: per
station). Some plants show a second rule's signature by physics; those tests carry the
second rule as an *also* label (a bottle of calibration gas is analyzer output no
engine produces, which is V5's signature too), and the evaluation reports it.

Entry point: :func:`generate`. benchmarks/detect_eval_vehicle.py scores the detectors on
it.
"""

from __future__ import annotations

import csv
import gzip
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.detectors.base import SiteInfo
from stationseal.records import Sample, SiteEvent, TestContext

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beijing-air-quality"

FUEL_H = 1.85  # H/C of the fuel this generator burns
AIR_O2 = 20.95
AIR_CO2 = 0.04
ECE_TRACE: tuple[tuple[float, float], ...] = (
    # (duration s, speed at its end km/h): the 195 s urban cycle, piecewise linear
    (11, 0), (4, 15), (8, 15), (5, 0), (21, 0), (12, 32), (24, 32), (11, 0), (21, 0),
    (26, 50), (12, 50), (8, 35), (13, 35), (12, 0), (7, 0),
)
RULES = tuple(f"V{i}" for i in range(1, 11))


# --------------------------------------------------------------------------- lane software


@dataclass(frozen=True)
class Vendor:
    """A lane program: what its records look like."""

    name: str
    ids: dict[str, str]  # role -> instrument id suffix
    rates: dict[str, float]  # role -> seconds between samples
    context: str  # "full" | "no_phase" | "events" | "none"
    slip_p: float  # chance per sample of a 1 s timer slip
    stall_p: float  # chance per test of a 1 s stall of every stream
    drop_p: float  # chance per sample that it is lost
    dropout_p: float  # chance per test and instrument of a 3-8 s dropout
    delay_s: int  # sample-line transport delay
    tau_s: float  # analyzer first-order time constant (T90 = 2.3 tau)
    res: dict[str, float]  # signal -> resolution
    idle_rpm: tuple[float, float]  # high idle, idle
    lambda_consts: tuple[float, float]  # H/C, O/C assumed by the analyzer
    phase_names: bool = True


_RES_A = {"co_pct": 0.01, "co2_pct": 0.01, "o2_pct": 0.01, "hc_ppm": 1.0, "no_ppm": 1.0,
          "lambda": 0.001, "rpm": 10.0, "obd_rpm": 1.0, "oil_temp_c": 0.1,
          "ambient_temp_c": 0.1, "ambient_rh_pct": 0.1, "ambient_kpa": 0.01, "k_m1": 0.01,
          "opacity_pct": 0.1, "speed_kmh": 0.01, "power_kw": 0.01, "force_n": 1.0,
          "obd_speed_kmh": 1.0, "obd_throttle_pct": 0.4, "obd_lambda": 0.001,
          "nox_ppm": 1.0}
_RES_B = {**_RES_A, "co_pct": 0.001, "o2_pct": 0.02, "rpm": 1.0, "oil_temp_c": 1.0,
          "ambient_rh_pct": 1.0, "ambient_kpa": 0.1, "obd_rpm": 0.25}

VENDORS: tuple[Vendor, ...] = (
    Vendor("tagged", {"gas": "gas", "dyno": "dyn", "obd": "obd", "met": "met",
                      "smoke": "smk", "tach": "gas"},
           {"gas": 1.0, "dyno": 1.0, "obd": 1.0, "met": 5.0, "smoke": 1.0},
           "full", 0.004, 0.05, 0.002, 0.03, 6, 2.2, _RES_A, (2500, 800), (1.73, 0.02)),
    Vendor("tag-no-phase", {"gas": "analyser", "dyno": "chassis", "obd": "ecu",
                            "met": "weather", "smoke": "opacity", "tach": "tacho"},
           {"gas": 1.0, "dyno": 1.0, "obd": 2.0, "met": 1.0, "smoke": 1.0, "tach": 1.0},
           "no_phase", 0.01, 0.1, 0.003, 0.03, 8, 3.0, _RES_B, (2450, 750), (1.8, 0.0)),
    Vendor("events-only", {"gas": "a5", "dyno": "dy", "obd": "ob", "met": "wx",
                           "smoke": "op", "tach": "a5"},
           {"gas": 1.0, "dyno": 1.0, "obd": 1.0, "met": 3.0, "smoke": 1.0},
           "events", 0.006, 0.05, 0.002, 0.02, 5, 1.8, _RES_A, (2550, 820), (1.7261, 0.0176)),
    Vendor("no-context", {"gas": "gas", "dyno": "dyno", "obd": "obd", "met": "met",
                          "smoke": "smoke", "tach": "gas"},
           {"gas": 1.0, "dyno": 1.0, "obd": 1.0, "met": 2.0, "smoke": 1.0},
           "none", 0.004, 0.05, 0.002, 0.02, 7, 2.5, _RES_B, (2500, 780), (1.73, 0.02)),
)

PHASES: dict[str, list[tuple[str, int]]] = {
    # method -> [(phase, seconds)], in order (scored phases carry the standard durations)
    "idle": [("precondition", 30), ("high_idle_settle", 15), ("high_idle", 30),
             ("idle_settle", 15), ("idle", 30)],
    "asm5025": [("accel", 8), ("settle", 5), ("stable", 10), ("fast", 10)],
    "asm2540": [("accel", 12), ("settle", 5), ("stable", 10), ("fast", 10)],
    "vmas": [("trace", 195)],
    "lug_down": [("accel", 20), ("scan", 40), ("settle_100", 5), ("measure_100", 10),
                 ("settle_80", 5), ("measure_80", 10)],
}
SCORED = {"high_idle", "idle", "fast", "full", "trace", "measure", "measure_100",
          "measure_80"}
#: Reference limits (GB 18285 / GB 3847 as quoted in the shared patterns document) on the
#: mean of the phases named; VMAS and diesel tests are judged by this generator's own
#: concentration and peak-K stand-ins (it does not compute g/km).
PHASE_LIMITS: dict[str, tuple[tuple[frozenset[str], str, float], ...]] = {
    "idle": ((frozenset({"high_idle"}), "co_pct", 0.3), (frozenset({"high_idle"}), "hc_ppm", 50.0),
             (frozenset({"idle"}), "co_pct", 0.6), (frozenset({"idle"}), "hc_ppm", 80.0)),
    "asm5025": tuple((frozenset({"fast", "full"}), k, v) for k, v in
                     (("hc_ppm", 90.0), ("co_pct", 0.5), ("no_ppm", 700.0))),
    "asm2540": tuple((frozenset({"fast", "full"}), k, v) for k, v in
                     (("hc_ppm", 80.0), ("co_pct", 0.4), ("no_ppm", 650.0))),
}
OTHER_LIMITS = {"vmas": {"co_pct": 0.8, "hc_ppm": 120.0, "no_ppm": 900.0},
                "free_accel": {"k_m1": 1.2}, "lug_down": {"k_m1": 1.2}}


# --------------------------------------------------------------------------- weather


_ROWS: dict[Path, list[dict[str, str]]] = {}


def _station_rows(path: Path) -> list[dict[str, str]]:
    if path not in _ROWS:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            _ROWS[path] = list(csv.DictReader(fh))
    return _ROWS[path]


class Weather:
    """A day of weather at one site: real Beijing hours interpolated to seconds."""

    def __init__(self, rng: random.Random, day0: float, data: Path | None = None) -> None:
        self.day0 = day0
        self.hours: list[tuple[float, float, float]] = []  # temp C, kPa, dew point C
        data = data or DATA
        files = sorted(data.glob("PRSA_Data_*.csv.gz")) if data.is_dir() else []
        self.real = bool(files)
        if files:
            path = rng.choice(files)
            rows = _station_rows(path)
            start = rng.randrange(0, len(rows) - 30) // 24 * 24
            for r in rows[start:start + 26]:
                try:
                    self.hours.append((float(r["TEMP"]), float(r["PRES"]) / 10.0,
                                       float(r["DEWP"])))
                except ValueError:
                    self.hours.append(self.hours[-1] if self.hours else (15.0, 101.0, 5.0))
        if len(self.hours) < 26:  # no shared data: a smooth day
            base = rng.uniform(-5, 30)
            self.hours = [(base + 5 * math.sin((h - 9) / 24 * 2 * math.pi),
                           101.3 + rng.uniform(-1, 1), base - rng.uniform(3, 15))
                          for h in range(26)]

    def at(self, t: float) -> tuple[float, float, float]:
        """Temperature (°C), relative humidity (%), pressure (kPa) at ``t``."""
        h = max(0.0, min(24.99, (t - self.day0) / 3600.0))
        i = int(h)
        f = h - i
        a, b = self.hours[i], self.hours[i + 1]
        temp, kpa, dew = (a[k] + (b[k] - a[k]) * f for k in range(3))
        rh = 100.0 * math.exp(17.625 * dew / (243.04 + dew)) / \
            math.exp(17.625 * temp / (243.04 + temp))
        return temp, min(100.0, max(1.0, rh)), kpa


# --------------------------------------------------------------------------- vehicles

_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


@dataclass
class Car:
    plate: str
    vin: str
    fuel: str
    group: str
    calid: str
    cvn: str
    odometer: float
    lam0: float  # mean lambda
    lam_amp: float  # closed-loop oscillation
    o2_res: float  # residual O2 at lambda 1
    co: float  # catalyst CO breakthrough (%)
    hc: float  # HC (ppm)
    no: float  # NO at full ASM load (ppm)
    k_peak: float  # diesel smoke K peak (1/m)
    oil: float  # oil temperature at the start of the test
    mass: float  # kg (road load)
    idle_rpm: float


def new_car(rng: random.Random, fuel: str, dirty: float = 1.0) -> Car:
    plate = rng.choice(_PROVINCES) + rng.choice(_ALNUM[:24]) + "".join(
        rng.choice(_ALNUM) for _ in range(5))
    vin = "L" + "".join(rng.choice(_ALNUM) for _ in range(16))
    group = f"MG{rng.randrange(1, 40):02d}"
    clean = rng.lognormvariate(0.0, 0.8) * dirty
    return Car(plate=plate, vin=vin, fuel=fuel, group=group,
               calid=f"{rng.getrandbits(40):010X}", cvn=f"{rng.getrandbits(32):08X}",
               odometer=round(rng.uniform(3000, 350000), 1),
               lam0=rng.gauss(1.0, 0.006), lam_amp=rng.uniform(0.002, 0.015),
               o2_res=rng.uniform(0.02, 0.4), co=min(3.0, 0.05 * clean),
               hc=min(600.0, 12.0 * clean), no=min(2500.0, 180.0 * clean),
               k_peak=min(4.0, rng.lognormvariate(-0.9, 0.6) * dirty),
               oil=rng.gauss(86.0, 9.0), mass=rng.uniform(900, 2200),
               idle_rpm=rng.uniform(680, 880))


def exhaust(lam: float, car: Car, load: float) -> dict[str, float]:
    """Dry exhaust composition (%vol, ppm) of CH1.85 fuel at ``lam``, this car, this load."""
    a = 1.0 + FUEL_H / 4.0
    n2 = 3.76 * lam * a
    if lam >= 1.0:
        o2 = (lam - 1.0) * a
        co_rich = 0.0
    else:
        o2 = 0.0
        co_rich = min(1.0, 2.0 * a * (1.0 - lam))
    dry = 1.0 + o2 + n2 + co_rich * 0.5
    carbon = 100.0 / dry
    co = min(carbon * 0.9, carbon * co_rich + car.co * (0.6 + 0.8 * load))
    return {"co2_pct": carbon - co, "co_pct": co, "o2_pct": 100.0 * o2 / dry + car.o2_res,
            "hc_ppm": car.hc * (0.7 + 0.6 * load), "no_ppm": car.no * (0.05 + 0.95 * load)}


def analyzer_lambda(v: dict[str, float], hc: float, oc: float) -> float:
    """Brettschneider lambda as an analyzer computes it (capped like a display)."""
    co2, co, o2 = v["co2_pct"], v["co_pct"], v["o2_pct"]
    c = co2 + co + 6e-4 * v["hc_ppm"]
    if c < 0.2:
        return 9.999
    ratio = co / co2 if co2 > 0 else 0.0
    num = co2 + co / 2 + o2 + (hc / 4 * 3.5 / (3.5 + ratio) - oc / 2) * (co2 + co)
    return min(9.999, num / ((1 + hc / 4 - oc / 2) * c))


# --------------------------------------------------------------------------- a test


@dataclass
class TruthSecond:
    phase: str
    speed: float
    rpm: float
    load: float  # 0..1
    lam: float
    throttle: float
    k: float


def protocol(method: str, car: Car, rng: random.Random, vendor: Vendor) -> list[TruthSecond]:
    """What the engine and rollers do, second by second."""
    out: list[TruthSecond] = []
    drift = 0.0
    lam_phase = rng.uniform(0, 6.28)

    def lam_at(i: int, load: float) -> float:
        nonlocal drift
        drift = 0.97 * drift + rng.gauss(0, 0.0015)
        osc = car.lam_amp * math.sin(lam_phase + i * rng.uniform(1.6, 2.4))
        return car.lam0 + drift + osc - 0.01 * load * (car.lam0 < 1.0)

    if method == "idle":
        hi, lo = vendor.idle_rpm
        for phase, n in PHASES["idle"]:
            target = hi if phase.startswith(("precondition", "high")) else car.idle_rpm
            for _ in range(n):
                rpm = target + rng.gauss(0, 25 if target > 1500 else 12)
                out.append(TruthSecond(phase, 0.0, rpm, 0.15 if target > 1500 else 0.05,
                                       lam_at(len(out), 0.1), 12.0 if target > 1500 else 3.0,
                                       0.0))
        del lo
    elif method in ("asm5025", "asm2540"):
        v_t = 25.0 if method == "asm5025" else 40.0
        phases = list(PHASES[method])
        if rng.random() < 0.3:
            phases.append(("full", rng.randrange(20, 66)))
        for phase, n in phases:
            for k in range(n):
                v = v_t * (k + 1) / n if phase == "accel" else v_t + rng.gauss(0, 0.35)
                load = 0.5 if method == "asm5025" else 0.25
                rpm = 900 + v * rng.uniform(58, 62)
                out.append(TruthSecond(phase, max(0.0, v), rpm, load, lam_at(len(out), load),
                                       18 + 40 * load + rng.gauss(0, 1.5), 0.0))
    elif method == "vmas":
        v0 = 0.0
        for dur, v1 in ECE_TRACE:
            for k in range(int(dur)):
                v = v0 + (v1 - v0) * (k + 1) / dur
                v = v + rng.gauss(0, 0.4) if v > 0 else 0.0
                accel = (v1 - v0) / dur
                load = max(0.0, min(1.0, 0.15 + 0.25 * accel + v / 120))
                if accel < 0:
                    load = 0.02
                rpm = car.idle_rpm if v < 1 else 900 + v * rng.uniform(35, 45)
                lam = lam_at(len(out), load) + (0.4 if accel < -0.5 and rng.random() < 0.6
                                                else 0.0)
                out.append(TruthSecond("trace", max(0.0, v), rpm, load, lam,
                                       max(0.0, 5 + 60 * load + rng.gauss(0, 2)), 0.0))
            v0 = v1
    elif method == "free_accel":
        for _ in range(rng.randrange(6, 12)):
            out.append(TruthSecond("purge", 0, car.idle_rpm, 0.05, 1.5, 2, 0.02))
        snaps = 4
        for j in range(snaps):
            phase = "purge" if j == 0 else "measure"
            up = rng.randrange(2, 4)
            for k in range(up):
                out.append(TruthSecond(phase, 0, car.idle_rpm + (3400 - car.idle_rpm) *
                                       (k + 1) / up, 1.0, 1.4, 100, 0.0))
            peak = car.k_peak * rng.uniform(0.85, 1.15)
            for _k in range(rng.randrange(1, 3)):
                out.append(TruthSecond(phase, 0, 3400 + rng.gauss(0, 60), 0.6, 1.6, 100,
                                       peak))
            for k in range(rng.randrange(8, 16)):
                out.append(TruthSecond(phase, 0, max(car.idle_rpm, 3400 - 500 * (k + 1)),
                                       0.05, 2.0, 0, peak * math.exp(-0.8 * (k + 1))))
    elif method == "lug_down":
        vmax = rng.uniform(65, 85)
        for phase, n in PHASES["lug_down"]:
            for k in range(n):
                if phase == "accel":
                    v = vmax * (k + 1) / n
                elif phase == "scan":
                    v = vmax - 0.1 * vmax * k / n
                elif phase in ("settle_100", "measure_100"):
                    v = 0.9 * vmax + rng.gauss(0, 0.3)
                else:
                    v = 0.72 * vmax + rng.gauss(0, 0.3)
                load = 1.0 if phase != "accel" else 0.6
                out.append(TruthSecond(phase, v, 1200 + v * 25, load, 1.6, 100,
                                       car.k_peak * 0.5 * load * rng.uniform(0.9, 1.1)))
    return out


@dataclass
class Plan:
    """What to do to one test: a falsification and/or a fault (all optional)."""

    rule: str | None = None
    variant: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)


@dataclass
class TestOut:
    test_id: str
    samples: list[Sample]
    events: list[SiteEvent]
    end: float
    result: str
    scored_means: dict[str, float]
    method: str
    car: Car


def _q(v: float, res: float) -> float:
    return round(round(v / res) * res, 6)


class Lane:
    """One lane of a station, run by one lane program, testing cars one after another."""

    def __init__(self, site: str, lane: str, vendor: Vendor, weather: Weather,
                 rng: random.Random, gateway: str) -> None:
        self.site, self.lane, self.vendor, self.weather, self.rng = site, lane, vendor, \
            weather, rng
        self.gateway = gateway
        self.seq = 0
        self.oil_sensor_max: float | None = None  # saturating probe (fault)
        self.frozen_weather: tuple[float, float, float] | None = None  # V9 frozen
        self.fake_oil: float | None = None  # V2 simulated probe
        self.hot_engines = False
        self.n = 0

    def _origin(self) -> tuple[str, int]:
        self.seq += 1
        return (self.gateway, self.seq)

    def iid(self, role: str) -> str:
        return f"{self.lane}.{self.vendor.ids[role]}"

    def run(self, t0: float, method: str, car: Car, plan: Plan,
            replay: TestOut | None = None) -> TestOut:
        rng, vd = self.rng, self.vendor
        self.n += 1
        test_id = f"{self.site}-{self.lane}-{self.n:04d}"
        truth = protocol(method, car, rng, vd)
        n = len(truth)
        # V7 "short": the lane relabels a shortened scored phase (no gap shows)
        if plan.rule == "V7" and plan.variant == "short":
            # the lane program drops seconds of the first scored phase and re-times
            first = self._first_scored(truth)
            ph = truth[first].phase
            scored = [i for i, s in enumerate(truth) if s.phase == ph]
            cut = min(plan.params.get("seconds", 10), len(scored) - 3)
            drop = set(scored[len(scored) // 3: len(scored) // 3 + cut])
            truth = [s for i, s in enumerate(truth) if i not in drop]
            n = len(truth)
        rows: list[dict[str, dict[str, float]]] = [dict() for _ in range(n)]
        gas_true: list[dict[str, float]] = []
        first_scored = self._first_scored(truth)
        for i, s in enumerate(truth):
            if car.fuel == "gasoline":
                g = exhaust(s.lam, car, s.load)
                if plan.rule == "V1" and \
                        plan.params["from"] <= i - first_scored < plan.params["to"]:
                    f = plan.params["exhaust_fraction"]
                    g = {k: f * x + (1 - f) * {"o2_pct": AIR_O2, "co2_pct": AIR_CO2}.get(k, 0.0)
                         for k, x in g.items()}
                gas_true.append(g)
        # the sample line: transport delay and first-order response
        if car.fuel == "gasoline":
            alpha = 1.0 - math.exp(-1.0 / vd.tau_s)
            # the probe went in before the test started: the line is full of exhaust
            state = dict(gas_true[0])
            pre = [dict(state)] * vd.delay_s
            line = pre + gas_true
            for i in range(n):
                src = line[i]
                for k in state:
                    state[k] += alpha * (src[k] - state[k])
                noise = {"co2_pct": 0.03, "co_pct": 0.006, "o2_pct": 0.025, "hc_ppm": 2.0,
                         "no_ppm": 6.0}
                meas = {k: max(0.0, state[k] + rng.gauss(0, noise[k])) for k in state}
                rows[i]["gas"] = meas
        oil = self.fake_oil if plan.rule == "V2" and plan.variant == "oil" else None
        oil_t = car.oil
        odo = plan.params.get("odometer", car.odometer)
        obd_offsets = plan.params.get("offsets", [0.0, 1.0, -1.0])
        throttle_vals = plan.params.get("throttle", [0.0, 15.7, 22.4, 30.2])
        for i, s in enumerate(truth):
            t = t0 + i
            r = rows[i]
            oil_t += 0.015 + rng.gauss(0, 0.01)
            r["eng"] = {"rpm": s.rpm + rng.gauss(0, 8),
                        "oil_temp_c": oil if oil is not None else oil_t}
            if car.fuel != "gasoline":
                kk = max(0.0, s.k + rng.gauss(0, 0.01))
                r["smoke"] = {"k_m1": kk, "opacity_pct": 100 * (1 - math.exp(-kk * 0.43))}
            if method in ("asm5025", "asm2540", "vmas", "lug_down"):
                v = s.speed
                force = (120 + 0.012 * car.mass * 9.81 + 0.35 * v * v / 3.6) * (0.5 + s.load)
                power = force * v / 3600.0
                if plan.rule == "V8" and plan.variant == "power" and s.phase in SCORED:
                    power *= plan.params["factor"]
                if plan.rule == "V8" and plan.variant == "speed" and s.phase in ("fast",
                                                                                 "stable"):
                    v += plan.params["offset"]
                r["dyno"] = {"speed_kmh": v + rng.gauss(0, 0.05), "force_n": force +
                             rng.gauss(0, 4), "power_kw": power + rng.gauss(0, 0.02)}
            if car.fuel == "gasoline":
                ob = {"obd_rpm": s.rpm + rng.gauss(0, 15), "obd_speed_kmh": max(
                      0.0, s.speed + rng.gauss(0, 0.4)), "obd_throttle_pct": s.throttle,
                      "obd_lambda": s.lam + rng.gauss(0, 0.004), "obd_load_pct": 100 * s.load}
                if i == 0:
                    ob["obd_odometer_km"] = odo
                if plan.rule == "V3":
                    ob["obd_throttle_pct"] = rng.choice(throttle_vals)
                    ob["obd_rpm"] = rng.uniform(800, 3000)
                    if "dyno" in r:
                        ob["obd_speed_kmh"] = r["dyno"]["speed_kmh"] + rng.choice(obd_offsets)
                if plan.rule == "V8" and plan.variant == "obd" and s.speed > 10:
                    ob["obd_speed_kmh"] = s.speed * plan.params["factor"]
                if plan.rule == "V2" and plan.variant == "rpm":
                    # the lane program writes the OBD reading into the tachometer field
                    ob["obd_rpm"] = _q(ob["obd_rpm"], max(vd.res["rpm"], vd.res["obd_rpm"]))
                    r["eng"]["rpm"] = ob["obd_rpm"]
                r["obd"] = ob
            temp, rh, kpa = self.weather.at(t)
            if plan.rule == "V9" and plan.variant == "default":
                temp, rh, kpa = plan.params["values"]
            elif self.frozen_weather is not None and plan.rule == "V9":
                temp, rh, kpa = self.frozen_weather
            else:
                temp += rng.gauss(0, 0.05)
                rh += rng.gauss(0, 0.3)
                kpa += rng.gauss(0, 0.01)
            r["met"] = {"ambient_temp_c": temp, "ambient_rh_pct": rh, "ambient_kpa": kpa}
        # V10: limited pollutants of a failing test scaled to land just under the limit
        nudge: dict[str, dict[str, float]] = {}
        if plan.rule == "V10":
            for phases, sig, lim in PHASE_LIMITS.get(method, ()):
                vals = [rows[i]["gas"][sig] for i in range(n) if truth[i].phase in phases]
                mean = sum(vals) / len(vals) if vals else 0.0
                if mean > lim:
                    for ph in phases:
                        nudge.setdefault(ph, {})[sig] = rng.uniform(0.9, 0.99) * lim / mean
        # V5: the bench output scaled by a factor (every gas channel)
        for i in range(n):
            r = rows[i]
            if "gas" not in r:
                continue
            g = r["gas"]
            if plan.rule == "V5" and truth[i].phase in SCORED | {"settle", "stable", "accel",
                                                                 "high_idle_settle",
                                                                 "idle_settle"}:
                for k in ("co2_pct", "co_pct", "o2_pct", "hc_ppm", "no_ppm"):
                    g[k] *= plan.params["factor"]
            if plan.rule == "V6" and plan.variant == "gas":
                bottle = plan.params["bottle"]
                for k, lvl in bottle.items():
                    g[k] = max(0.0, lvl + rng.gauss(0, {"co2_pct": 0.02, "co_pct": 0.004,
                                                         "o2_pct": 0.01, "hc_ppm": 1.5,
                                                         "no_ppm": 4.0}[k]))
            if nudge:
                for k, f in nudge.get(truth[i].phase, {}).items():
                    g[k] *= f
            for k in list(g):
                g[k] = _q(g[k], vd.res.get(k, 0.01))
            g["lambda"] = _q(analyzer_lambda(g, *vd.lambda_consts), vd.res["lambda"])
        if replay is not None:  # V6: the recording of an earlier test under this plate
            return self._replayed(t0, replay, test_id, car, plan)
        return self._emit(t0, test_id, method, car, truth, rows, plan)

    @staticmethod
    def _first_scored(truth: Sequence[TruthSecond]) -> int:
        return next((i for i, s in enumerate(truth) if s.phase in SCORED), 0)

    # -- records -----------------------------------------------------------------------

    def _emit(self, t0: float, test_id: str, method: str, car: Car,
              truth: list[TruthSecond], rows: list[dict[str, dict[str, float]]],
              plan: Plan) -> TestOut:
        rng, vd = self.rng, self.vendor
        n = len(truth)
        samples: list[Sample] = []
        roles = sorted({role for r in rows for role in r})
        # roles sharing an instrument id (a gas bench that also reads rpm) form one stream
        streams: dict[str, list[str]] = {}
        for role in roles:
            streams.setdefault(self.iid("tach" if role == "eng" else role), []).append(role)
        cut: set[int] = set()
        if plan.rule == "V7" and plan.variant == "gap":
            # seconds cut from every stream inside the first scored phase (never past it:
            # that would be a shorter test, not a splice)
            first = self._first_scored(truth)
            ph = truth[first].phase
            last = max(i for i, s in enumerate(truth) if s.phase == ph)
            a = first + min(plan.params.get("at", 3), max(1, (last - first) // 4))
            b = min(a + plan.params["seconds"], last - 1)
            cut = set(range(a, b))
        stall = {rng.randrange(n)} if rng.random() < vd.stall_p else set()
        dead = set(plan.faults)
        for iid, rls in streams.items():
            main = next((r for r in rls if r != "eng"), rls[0])
            rate = vd.rates.get(main, vd.rates.get("tach", 1.0))
            step = max(1, round(rate))
            phase0 = rng.randrange(step)
            offset = rng.uniform(0.02, 0.9)
            dropout: set[int] = set()
            if rng.random() < vd.dropout_p:
                a = rng.randrange(n)
                dropout = set(range(a, a + rng.randrange(3, 9)))
            for i in range(phase0, n, step):
                if i in cut or i in stall or i in dropout or rng.random() < vd.drop_p:
                    continue
                vals: dict[str, float] = {}
                for r in rls:
                    if r in rows[i]:
                        vals.update(rows[i][r])
                if not vals:
                    continue
                t = t0 + i + offset + rng.uniform(-0.03, 0.03)
                if rng.random() < vd.slip_p:
                    t += 1.0  # the lane's timer slipped a second for this poll
                self._add(samples, t, iid, vals, test_id, method, car, truth[i].phase, dead,
                          main)
        samples.sort(key=lambda s: s.time)
        end = t0 + n
        result, means = _verdict(method, truth, rows)
        events = self._events(t0, end, test_id, method, car, result, plan)
        return TestOut(test_id, samples, events, end, result, means, method, car)

    def _add(self, out: list[Sample], t: float, iid: str, vals: dict[str, float], test_id: str,
             method: str, car: Car, phase: str, dead: set[str], role: str) -> None:
        vd = self.vendor
        vals = {k: _q(v, vd.res.get(k, 0.01)) for k, v in vals.items()}
        flags: dict[str, str] = {}
        if "oil_temp_c" in vals and self.oil_sensor_max is not None:
            vals["oil_temp_c"] = min(vals["oil_temp_c"], self.oil_sensor_max)
        if (role == "gas" and "analyzer_dead" in dead) or (role == "met" and
                                                           "weather_dead" in dead):
            vals = dict.fromkeys(vals, 0.0)
        if role == "obd" and "obd_unplugged" in dead:
            vals = {k: 0.0 for k in vals if k != "obd_odometer_km"}
        if role == "met" and "weather_comm" in dead:
            flags = dict.fromkeys(vals, "B")
        ctx = None
        if vd.context in ("full", "no_phase"):
            ctx = TestContext(test_id, method, car.plate, self.lane,
                              phase if vd.context == "full" else "")
        out.append(Sample(round(t, 3), self.site, iid, vals, flags, ctx, self._origin()))

    def _events(self, t0: float, end: float, test_id: str, method: str, car: Car,
                result: str, plan: Plan) -> list[SiteEvent]:
        if self.vendor.context == "none":
            return []
        calid, cvn, group = car.calid, car.cvn, car.group
        if plan.rule == "V4":
            calid, cvn = plan.params["calid"], plan.params["cvn"]
        d: dict[str, Any] = {"test_id": test_id, "method": method, "vehicle": car.plate,
                             "lane": self.lane, "vin": car.vin, "calid": calid, "cvn": cvn,
                             "model_group": group, "odometer_km": plan.params.get(
                                 "odometer", car.odometer)}
        lane_inst = f"{self.lane}.ctl"
        out = [SiteEvent(t0 - 0.4, self.site, lane_inst, "test_start", dict(d), self._origin())]
        out.append(SiteEvent(end + 0.6, self.site, lane_inst, "test_end",
                             {**d, "result": result}, self._origin()))
        return out

    def _replayed(self, t0: float, src: TestOut, test_id: str, car: Car, plan: Plan) -> TestOut:
        """V6 substitute: an earlier test's records, re-timed, under this car's plate."""
        rng = self.rng
        s0 = min(s.time for s in src.samples)
        shift = t0 - s0
        shift = round(shift)
        jitter = plan.params.get("jitter", 0.0)
        samples: list[Sample] = []
        for s in src.samples:
            vals = dict(s.values)
            if jitter:
                for k in ("co2_pct", "hc_ppm", "no_ppm"):
                    if k in vals and rng.random() < jitter:
                        vals[k] = _q(vals[k] + rng.choice((-1, 1)) *
                                     self.vendor.res.get(k, 0.01), self.vendor.res.get(k, 0.01))
            ctx = None
            if s.test is not None:
                ctx = TestContext(test_id, s.test.method, car.plate, self.lane, s.test.phase)
            samples.append(Sample(round(s.time + shift, 3), self.site, s.instrument, vals,
                                  dict(s.flags), ctx, self._origin()))
        end = src.end + shift
        events = self._events(t0, end, test_id, src.method, car, src.result, plan)
        return TestOut(test_id, samples, events, end, src.result, src.scored_means,
                       src.method, car)


def _verdict(method: str, truth: Sequence[TruthSecond], rows: Sequence[dict[str, dict[str, float]]]
             ) -> tuple[str, dict[str, float]]:
    """The lane's verdict: phase means against the limits (peak K for diesel)."""
    means: dict[str, float] = {}
    fail = False
    for phases, sig, lim in PHASE_LIMITS.get(method, ()):
        vals = [rows[i]["gas"][sig] for i, s in enumerate(truth) if s.phase in phases
                and "gas" in rows[i]]
        if vals:
            m = sum(vals) / len(vals)
            means[f"{sig}@{min(phases)}"] = m
            fail = fail or m > lim
    for sig, lim in OTHER_LIMITS.get(method, {}).items():
        vals = [rows[i][r][sig] for i, s in enumerate(truth) if s.phase in SCORED
                for r in ("gas", "smoke") if r in rows[i] and sig in rows[i][r]]
        if vals:
            m = max(vals) if sig == "k_m1" else sum(vals) / len(vals)
            means[sig] = m
            fail = fail or m > lim
    return ("fail" if fail else "pass"), means


# --------------------------------------------------------------------------- scenario


@dataclass
class Label:
    rule: str
    site: str
    test_id: str  # "" for station-level (V10)
    variant: str = ""
    also: tuple[str, ...] = ()


@dataclass
class Recording:
    samples: list[Sample]
    events: list[SiteEvent]
    sites: dict[str, SiteInfo]
    labels: list[Label]
    #: (site, test id, fault kind) of instrument faults planted on clean tests.
    faults: list[tuple[str, str, str]]
    #: site -> "clean", "faulty" or the rule planted there
    roles: dict[str, str]
    tests: int = 0
    #: (site, lane, start, end, test id) of every test, to name tests whose lane sent no
    #: context (the detectors then infer them under ids of their own).
    spans: list[tuple[str, str, float, float, str]] = field(default_factory=list)
    #: Whether the weather came from the real Beijing data.
    real_weather: bool = False


_BOTTLES = ({"co_pct": 0.50, "co2_pct": 6.0, "hc_ppm": 200.0, "no_ppm": 300.0, "o2_pct": 0.0},
            {"co_pct": 2.40, "co2_pct": 3.6, "hc_ppm": 960.0, "no_ppm": 900.0, "o2_pct": 0.0},
            {"co_pct": 0.25, "co2_pct": 14.2, "hc_ppm": 60.0, "no_ppm": 150.0, "o2_pct": 0.3})


def _methods(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        x = rng.random()
        out.append("asm5025" if x < 0.28 else "asm2540" if x < 0.36 else "vmas" if x < 0.56
                   else "idle" if x < 0.76 else "free_accel" if x < 0.9 else "lug_down")
    return out


#: Rules that need the lane to say which vehicle is tested (plates, VINs, CALID): they
#: are planted only on lanes whose program sends test context.
NEEDS_IDENTITY = frozenset({"V4", "V6"})
FAULT_KINDS = ("analyzer_dead", "weather_dead", "obd_unplugged", "oil_saturating",
               "weather_comm")


def generate(seed: int = 7, clean: int = 8, faulty: int = 4, per_rule: int = 2,
             tests_per_lane: int = 36, day0: float = 1_767_254_400.0,
             weather_data: Path | None = None) -> Recording:
    """Station-days: ``clean`` clean ones, ``faulty`` clean ones with instrument faults,
    and ``per_rule`` with each of V1…V10 planted. Each station has two lanes run by
    different lane programs; every station tests the same calendar day (a fleet).
    ``weather_data``: the Beijing data folder (default ``../shared/data/...``); without
    it each station gets a smooth synthetic day (``Recording.real_weather`` says which)."""
    rng = random.Random(seed)
    rec = Recording([], [], {}, [], [], {})
    roles: list[str] = ["clean"] * clean + ["faulty"] * faulty + \
        [r for r in RULES for _ in range(per_rule)]
    rng.shuffle(roles)
    for k, role in enumerate(roles):
        site = f"F{k + 1:03d}"
        rec.sites[site] = SiteInfo(site, "vehicle_inspection")
        rec.roles[site] = role
        weather = Weather(random.Random(rng.random()), day0, weather_data)
        rec.real_weather = weather.real
        vendors = rng.sample(VENDORS, 2)
        if role in NEEDS_IDENTITY and vendors[0].context == "none":
            vendors.reverse()
        for j, vd in enumerate(vendors):
            lane = Lane(site, f"L{j + 1}", vd, weather, random.Random(rng.random()),
                        f"gw-{site}")
            lane_role = role if j == 0 or role in ("faulty", "V10") else "clean"
            _run_lane(rec, lane, lane_role, tests_per_lane,
                      day0 + 8 * 3600 + rng.uniform(0, 600), random.Random(rng.random()))
    rec.samples.sort(key=lambda s: s.time)
    rec.events.sort(key=lambda e: e.time)
    return rec


def _plant(role: str, lane: Lane, methods: list[str], rng: random.Random
           ) -> tuple[list[Plan], dict[int, int], dict[int, int]]:
    """Plans per test for a lane with ``role``; (plans, replay_of, retest_of)."""
    n = len(methods)
    vd = lane.vendor
    plans = [Plan() for _ in range(n)]
    replay_of: dict[int, int] = {}
    retest_of: dict[int, int] = {}
    gas = [i for i, m in enumerate(methods) if m in ("idle", "asm5025", "asm2540", "vmas")]
    s0 = rng.randrange(2, n // 3)
    later = [i for i in gas if i >= s0]
    if role == "faulty":
        kind = rng.choice(FAULT_KINDS)
        if kind == "oil_saturating":
            lane.oil_sensor_max = 125.0
            lane.hot_engines = True
        else:
            a = rng.randrange(0, n // 2)
            for i in range(a, min(n, a + rng.randrange(4, 12))):
                plans[i].faults.append(kind)
    elif role == "V1":
        for i in later[:6]:
            leak = rng.random() < 0.3
            # pulled (or leaking) so that the analyzer, behind its sample line, sees air
            # over the scored seconds
            a = -vd.delay_s - rng.randrange(0, 4)
            plans[i] = Plan("V1", "leak" if leak else "probe",
                            {"from": a, "to": a + rng.randrange(14, 30),
                             "exhaust_fraction": rng.uniform(0.7, 0.8) if leak
                             else rng.uniform(0.0, 0.3)})
    elif role == "V2":
        if rng.random() < 0.5:
            lane.fake_oil = _q(rng.uniform(82, 95), vd.res["oil_temp_c"])
            for i in range(s0, min(n, s0 + 10)):
                plans[i] = Plan("V2", "oil")
        else:
            for i in later[:5]:
                plans[i] = Plan("V2", "rpm")
    elif role == "V3":
        for i in later[:5]:
            plans[i] = Plan("V3", "", {"odometer": 23456.7})
    elif role == "V4":
        for i in range(s0, min(n, s0 + 5)):
            plans[i] = Plan("V4", "", {"calid": "FAKE00CALID1", "cvn": "0000BEEF"})
    elif role == "V5":
        for i in later[:6]:
            plans[i] = Plan("V5", "", {"factor": rng.uniform(0.55, 0.8)})
    elif role == "V6":
        variant = rng.choice(["replay", "gas", "retest"])
        if variant == "replay":
            src = later[0]
            for i in [i for i in gas if i > src + 2][:4]:
                methods[i] = methods[src]
                replay_of[i] = src
                plans[i] = Plan("V6", "replay", {"jitter": rng.choice([0.0, 0.15])})
        elif variant == "gas":
            bottle = rng.choice(_BOTTLES)
            for i in [i for i in later if methods[i] != "vmas"][:5]:
                plans[i] = Plan("V6", "gas", {"bottle": bottle})
        else:
            for src in later[:12:3]:
                if src + 1 < n:
                    retest_of[src + 1] = src
                    methods[src + 1] = methods[src]
                    plans[src + 1] = Plan("V6", "retest")
    elif role == "V7":
        for i in range(s0, min(n, s0 + 5)):
            if methods[i] == "free_accel":
                methods[i] = "idle"
            short = vd.context == "full" and rng.random() < 0.5
            plans[i] = Plan("V7", "short" if short else "gap",
                            {"seconds": rng.randrange(6, 15), "at": 3})
    elif role == "V8":
        dyn = [i for i, m in enumerate(methods) if m in ("asm5025", "asm2540", "vmas")]
        for i in dyn[s0 // 2:][:5]:
            v = rng.choice(["power", "speed", "obd"])
            if v == "speed" and methods[i] == "vmas":
                v = "power"
            plans[i] = Plan("V8", v, {"factor": rng.choice([0.8, 0.85, 1.15, 1.25]),
                                      "offset": rng.choice([-3.0, 3.5])})
    elif role == "V9":
        default = rng.random() < 0.4
        vals = rng.choice([(25.0, 80.0, 101.0), (25.0, 80.0, 101.3)])
        for i in range(s0, min(n, s0 + 14)):
            plans[i] = Plan("V9", "default" if default else "frozen", {"values": vals})
    elif role == "V10":
        for i in range(n):
            plans[i] = Plan("V10")
    return plans, replay_of, retest_of


def _run_lane(rec: Recording, lane: Lane, role: str, n: int, t: float,
              rng: random.Random) -> None:
    vd = lane.vendor
    methods = _methods(rng, n)
    plans, replay_of, retest_of = _plant(role, lane, methods, rng)
    cars: list[Car] = []
    outs: list[TestOut] = []
    t_now = t
    for i in range(n):
        m = methods[i]
        p = plans[i]
        fuel = "diesel" if m in ("free_accel", "lug_down") else "gasoline"
        # a V6 retest: a car far over the limit, then a clean stand-in under its plate
        dirty = 2.5 if role == "V10" else 8.0 if (i + 1) in retest_of else \
            0.4 if i in retest_of else 1.0
        car = new_car(rng, fuel, dirty)
        if lane.hot_engines:
            car.oil = rng.gauss(112.0, 10.0)  # a summer day of hot engines
        if i in retest_of:
            first = cars[retest_of[i]]
            car.plate, car.vin, car.group = first.plate, first.vin, first.group
        cars.append(car)
        if p.rule == "V9" and p.variant == "frozen" and lane.frozen_weather is None:
            temp, rh, kpa = lane.weather.at(t_now)
            lane.frozen_weather = (_q(temp, vd.res["ambient_temp_c"]),
                                   _q(rh, vd.res["ambient_rh_pct"]),
                                   _q(kpa, vd.res["ambient_kpa"]))
        out = lane.run(t_now, m, car, p, outs[replay_of[i]] if i in replay_of else None)
        outs.append(out)
        rec.samples += out.samples
        rec.events += out.events
        rec.tests += 1
        if out.samples:
            rec.spans.append((lane.site, lane.lane, out.samples[0].time, out.samples[-1].time,
                              out.test_id))
        rec.faults += [(lane.site, out.test_id, f) for f in p.faults]
        if lane.oil_sensor_max is not None and any(
                s.values.get("oil_temp_c") == lane.oil_sensor_max for s in out.samples):
            rec.faults.append((lane.site, out.test_id, "oil_saturated"))
        if p.rule and p.rule != "V10":
            also: tuple[str, ...] = ()
            if p.rule == "V6" and p.variant == "gas" and p.params["bottle"]["co2_pct"] < 12:
                also = ("V5",)  # calibration gas: no engine burns to that composition
            # a retest that is not a fail followed by a pass: nothing planted after all
            if not (p.rule == "V6" and p.variant == "retest" and (
                    out.result != "pass" or outs[retest_of[i]].result != "fail")):
                rec.labels.append(Label(p.rule, lane.site, out.test_id, p.variant, also))
        t_now = out.end + (rng.uniform(300, 900) if (i + 1) in retest_of
                           else rng.uniform(40, 240))
    if role == "V10" and not any(lb.rule == "V10" and lb.site == lane.site
                                 for lb in rec.labels):
        rec.labels.append(Label("V10", lane.site, ""))
