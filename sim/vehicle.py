"""Vehicle inspection lane physics: 1 Hz process data of one test, or of a station's day.

Detectors are only as good as the data they are tuned on, and real falsified process data
cannot be shared. So this model aims at the relations detectors rely on, not at engine
calibration accuracy:

* exhaust composition follows a carbon/oxygen balance of gasoline (H/C 1.7261) at the
  engine's lambda, so CO+CO2 sits near 15 % with the probe in and O2 near zero, and the
  analyzer's lambda is recomputed from the measured gases with the Brettschneider
  formula, exactly as a real analyzer does (so dilution raises it, scaling does not);
* the dynamometer's power is the product of its own force and speed readings (P = F·v/3600)
  with sensor noise, ASM holds 25 ± 1.5 / 40 ± 1.5 km/h, VMAS follows the 195 s urban cycle;
* the lane tachometer and the car's OBD port read the same engine through different
  sensors, so they agree closely but are never bit-identical;
* oil temperature and weather drift and carry sensor noise at the instruments' resolution.

Randomness is split on purpose: what the *car and driver* do comes from a generator seeded
by the vehicle and run seeds (so a substitute car, V6, reproduces a run), while instrument
noise comes from the caller's generator.

Each instrument is a separate :class:`~stationseal.records.Sample` stream (``analyzer``,
``dyno``, ``flowmeter``, ``opacimeter``, ``obd``, ``weather``, optionally prefixed by a lane,
e.g. ``L2.analyzer``) carrying canonical signal names, as a real lane's separate serial
instruments would. ``inject`` reproduces the data signature of the falsification patterns
V1..V10 of the shared falsification-patterns document.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sim.envcommon import quantize as _q
from stationseal import vehicle_results as vres
from stationseal.records import TEST_METHODS, Sample, SiteEvent, TestContext

RULES: tuple[str, ...] = tuple(f"V{i}" for i in range(1, 11))

#: Where each rule's injection makes sense: gas-analyzer rules need a gasoline test,
#: dynamometer rules a dynamometer.
APPLICABLE: dict[str, frozenset[str]] = {
    "V1": vres.GASOLINE_METHODS,
    "V2": frozenset(TEST_METHODS),
    "V3": frozenset(TEST_METHODS),
    "V4": frozenset(TEST_METHODS),
    "V5": vres.GASOLINE_METHODS,
    "V6": frozenset(TEST_METHODS),
    "V7": frozenset(TEST_METHODS),
    "V8": vres.DYNO_METHODS,
    "V9": frozenset(TEST_METHODS),
    "V10": frozenset(TEST_METHODS),
}

#: Variants each rule's injection knows (first is the default).
VARIANTS: dict[str, tuple[str, ...]] = {
    "V1": ("probe_out", "leak"),
    "V2": ("oil", "rpm"),
    "V6": ("car", "retest"),
    "V7": ("gap", "short"),
    "V8": ("power", "speed", "obd"),
    "V9": ("default", "frozen"),
}

#: Software defaults some lane programs write when no weather station answers.
DEFAULT_WEATHER = (25.0, 80.0, 101.0)

# Time offsets (s) of each instrument within the second: a lane polls them in turn.
_OFFSETS = {
    "analyzer": 0.0,
    "opacimeter": 0.05,
    "dyno": 0.1,
    "flowmeter": 0.15,
    "obd": 0.3,
    "weather": 0.45,
}

_STOICH_O2 = 1.0 + vres.H_C_RATIO / 4.0 - vres.O_C_RATIO / 2.0  # mol O2 per mol C
_N2_PER_O2 = 3.773
#: Fraction of water left in the analyzer's sample after its condenser.
_DRY = 0.96


# --------------------------------------------------------------------------- vehicles


@dataclass(frozen=True, slots=True)
class ModelGroup:
    """A type-approval family: engines sharing calibrations (hence CALID/CVN)."""

    name: str
    fuel: str
    displacement_l: float
    mass_kg: float
    rated_kw: float
    rated_rpm: float
    calibrations: tuple[tuple[str, str], ...]


def _calibration(group: str, j: int) -> tuple[str, str]:
    h = hashlib.sha256(f"{group}/{j}".encode()).hexdigest().upper()
    return f"{h[:4]}C{h[4:10]}", h[10:18]


def _make_groups() -> tuple[ModelGroup, ...]:
    r = random.Random(18285)
    out: list[ModelGroup] = []
    for i in range(1, 31):
        disp = r.choice([1.0, 1.2, 1.4, 1.5, 1.6, 1.8, 2.0, 2.4, 3.0])
        name = f"G{i:02d}"
        out.append(
            ModelGroup(
                name, "gasoline", disp, round(900 + 420 * disp + r.uniform(-80, 80)),
                round(disp * r.uniform(55, 80), 1), r.choice([5500.0, 6000.0, 6500.0]),
                tuple(_calibration(name, j) for j in range(r.randint(1, 3))),
            )
        )
    for i in range(1, 11):
        disp = r.choice([1.9, 2.5, 2.8, 3.0, 4.0, 6.7])
        name = f"D{i:02d}"
        out.append(
            ModelGroup(
                name, "diesel", disp, round(1500 + 900 * disp + r.uniform(-100, 100)),
                round(disp * r.uniform(28, 40), 1), r.choice([2600.0, 3000.0, 3600.0]),
                tuple(_calibration(name, j) for j in range(r.randint(1, 2))),
            )
        )
    return tuple(out)


MODEL_GROUPS: tuple[ModelGroup, ...] = _make_groups()
MODEL_BY_NAME: dict[str, ModelGroup] = {m.name: m for m in MODEL_GROUPS}

_PROVINCES = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云陕甘青宁新"
_PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
_VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


@dataclass(slots=True)
class Vehicle:
    """A registered vehicle: identity plus the traits that make its exhaust its own."""

    plate: str
    vin: str
    model: ModelGroup
    calid: str
    cvn: str
    odometer_km: float
    emission_factor: float
    vehicle_seed: int


def random_vehicle(rng: random.Random, fuel: str | None = None) -> Vehicle:
    """A plausible vehicle; emission factors are log-normal so a minority fails."""
    pool = [m for m in MODEL_GROUPS if fuel is None or m.fuel == fuel]
    model = rng.choice(pool)
    calid, cvn = rng.choice(model.calibrations)
    plate = rng.choice(_PROVINCES) + rng.choice(_PLATE_CHARS[:24]) + "".join(
        rng.choice(_PLATE_CHARS) for _ in range(5)
    )
    vin = "L" + "".join(rng.choice(_VIN_CHARS) for _ in range(16))
    return Vehicle(
        plate=plate,
        vin=vin,
        model=model,
        calid=calid,
        cvn=cvn,
        odometer_km=round(rng.uniform(3000.0, 320000.0), 1),
        emission_factor=math.exp(rng.gauss(0.0, 0.85)),
        vehicle_seed=rng.getrandbits(31),
    )


@dataclass(slots=True)
class VehicleTestSpec:
    """Everything that determines one simulated test (identity, car physics, lane, weather)."""

    test_id: str
    method: str
    plate: str
    vin: str = "LSIMULATEDVIN0001"
    site: str = "SITE-1"
    lane: str = "L1"
    model_group: str = "G01"
    displacement_l: float = 1.6
    mass_kg: float = 1400.0
    rated_kw: float = 95.0
    rated_rpm: float = 6000.0
    #: Multiplier of tailpipe pollutants against a typical clean car (1 = median car).
    emission_factor: float = 1.0
    calid: str = ""
    cvn: str = ""
    odometer_km: float = 60000.0
    oil_temp_c: float = 85.0
    ambient_temp_c: float = 20.0
    ambient_rh_pct: float = 50.0
    ambient_kpa: float = 101.0
    #: Persistent traits of the car (idle speed, catalyst, lambda control).
    vehicle_seed: int = 1
    #: What car and driver do in this run; None draws it from the caller's generator.
    run_seed: int | None = None
    instrument_prefix: str = ""
    gateway: str = ""
    seq_start: int = 0
    analyzer_delay_s: int = 3
    dilute_flow_lps: float = 100.0

    def __post_init__(self) -> None:
        if self.method not in TEST_METHODS:
            raise ValueError(f"test {self.test_id}: unknown method {self.method!r}, "
                             f"expected one of {TEST_METHODS}")

    @property
    def fuel(self) -> str:
        return "diesel" if self.method in vres.DIESEL_METHODS else "gasoline"


def spec_for(
    vehicle: Vehicle, method: str, test_id: str, *, site: str = "SITE-1", lane: str = "L1",
    **kw: Any,
) -> VehicleTestSpec:
    """A test spec for a registered vehicle (identity and physics from the vehicle)."""
    m = vehicle.model
    return VehicleTestSpec(
        test_id=test_id, method=method, plate=vehicle.plate, vin=vehicle.vin, site=site,
        lane=lane, model_group=m.name, displacement_l=m.displacement_l, mass_kg=m.mass_kg,
        rated_kw=m.rated_kw, rated_rpm=m.rated_rpm, emission_factor=vehicle.emission_factor,
        calid=vehicle.calid, cvn=vehicle.cvn, odometer_km=vehicle.odometer_km,
        vehicle_seed=vehicle.vehicle_seed, **kw,
    )


# --------------------------------------------------------------------------- physics


@dataclass(slots=True)
class _Traits:
    idle_rpm: float
    gear_scale: float
    hi_offset: float
    lam_offset: float
    lam_osc: float
    lam_period: float
    fuelcut: float
    enrich: float
    o2_resid: float
    f_co: float
    f_hc: float
    f_no: float
    f_k: float
    f_nox: float
    hc_spike: float
    driver_lag: int
    driver_gain: float


def _traits(spec: VehicleTestSpec) -> _Traits:
    r = random.Random(spec.vehicle_seed)
    ef = spec.emission_factor
    dirty = ef > 3.0
    return _Traits(
        idle_rpm=r.uniform(700, 880) if spec.fuel == "gasoline" else r.uniform(650, 800),
        gear_scale=r.uniform(0.85, 1.15),
        hi_offset=r.uniform(-60, 60),
        lam_offset=r.gauss(0.0, 0.02 if dirty else 0.004),
        lam_osc=r.uniform(0.002, 0.008),
        lam_period=r.uniform(1.3, 3.5),
        fuelcut=r.choice([r.uniform(0.02, 0.12), r.uniform(0.1, 0.5)]),
        enrich=r.uniform(0.003, 0.02),
        o2_resid=r.uniform(0.02, 0.25),
        f_co=ef * math.exp(r.gauss(0.0, 0.4)),
        f_hc=ef * math.exp(r.gauss(0.0, 0.4)),
        f_no=ef * math.exp(r.gauss(0.0, 0.4)),
        f_k=ef * math.exp(r.gauss(0.0, 0.3)),
        f_nox=ef * math.exp(r.gauss(0.0, 0.3)),
        hc_spike=r.uniform(0.5, 4.0),
        driver_lag=r.choice([0, 0, 1, 1, 2]),
        driver_gain=r.uniform(0.85, 1.1),
    )


def _carbon_total(lam: float) -> tuple[float, float]:
    """(%C in the analyzer sample, CO % from oxygen shortage) at this lambda."""
    if lam >= 1.0:
        dry = 1.0 + (lam - 1.0) * _STOICH_O2 + _N2_PER_O2 * _STOICH_O2 * lam
        co_rich = 0.0
    else:
        x = 1.5 * (1.0 - lam) * _STOICH_O2
        dry = 1.0 + x / 3.0 + _N2_PER_O2 * _STOICH_O2 * lam
        co_rich = 100.0 * _DRY * x / dry
    return 100.0 * _DRY / dry, co_rich


def _exhaust(lam: float, co_base: float, hc: float, o2_resid: float) -> tuple[float, float, float]:
    """(CO, CO2, O2) % behind the catalyst, consistent with Brettschneider at ``lam``."""
    ctot, co_rich = _carbon_total(lam)
    # The catalyst's oxygen storage swallows lambda control ripple; real enrichment passes.
    passthrough = min(1.0, max(0.0, (1.0 - lam - 0.004) / 0.03))
    co = co_base + co_rich * passthrough
    co2 = max(ctot - co - vres.HC_CARBON_FACTOR * hc * 1e-4, 0.1)
    k = vres.H_C_RATIO / 4.0 * 3.5 / (3.5 + co / co2) - vres.O_C_RATIO / 2.0
    o2 = lam * _STOICH_O2 * ctot - (co2 + co / 2.0 + k * (co2 + co))
    return co, co2, max(o2, 0.0) + o2_resid


def _ar(r: random.Random, n: int, sigma: float, phi: float) -> list[float]:
    """AR(1) noise with stationary standard deviation ``sigma``."""
    out: list[float] = []
    x = r.gauss(0.0, sigma)
    e = sigma * math.sqrt(1.0 - phi * phi)
    for _ in range(n):
        out.append(x)
        x = phi * x + r.gauss(0.0, e)
    return out


@dataclass(slots=True)
class _Truth:
    """What really happens, second by second (before any instrument sees it)."""

    n: int
    phase: list[str]
    target: list[float]
    speed: list[float]
    force: list[float]
    rpm: list[float]
    throttle: list[float]
    load: list[float]
    lam: list[float]
    co: list[float] = field(default_factory=list)
    co2: list[float] = field(default_factory=list)
    o2: list[float] = field(default_factory=list)
    hc: list[float] = field(default_factory=list)
    no: list[float] = field(default_factory=list)
    k: list[float] = field(default_factory=list)
    nox: list[float] = field(default_factory=list)
    q_exh: list[float] = field(default_factory=list)


# ECE-15 urban cycle (UN R83): (t, km/h) breakpoints, linear in between; 195 s.
_ECE15 = (
    (0, 0), (11, 0), (15, 15), (23, 15), (25, 10), (28, 0), (49, 0), (54, 15), (56, 15),
    (61, 32), (85, 32), (93, 10), (96, 0), (117, 0), (122, 15), (124, 15), (133, 35),
    (135, 35), (143, 50), (155, 50), (163, 35), (176, 35), (178, 32), (185, 10), (188, 0),
    (195, 0),
)
# Gear by time window (0 = neutral/clutch) and rpm per km/h in that gear.
_ECE15_GEARS = (
    (11, 0), (25, 1), (28, 0), (54, 1), (56, 0), (85, 2), (93, 2), (96, 0), (122, 1),
    (124, 0), (133, 2), (135, 0), (176, 3), (178, 0), (185, 2), (195, 0),
)
_GEAR_RPM_PER_KMH = {1: 120.0, 2: 65.0, 3: 45.0}


def vmas_target(t: int) -> float:
    """Target speed of the 195 s urban cycle at second ``t`` (0-based)."""
    for (t0, v0), (t1, v1) in itertools.pairwise(_ECE15):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else float(v1)
    return 0.0


def _vmas_gear(t: int) -> int:
    for end, g in _ECE15_GEARS:
        if t < end:
            return g
    return 0


def _truth_idle(spec: VehicleTestSpec, tr: _Traits, r: random.Random) -> _Truth:
    plan = [("precondition", 30), ("high_idle_settle", 15), ("high_idle", 30),
            ("idle_settle", 15), ("idle", 30)]
    phase = [p for p, d in plan for _ in range(d)]
    n = len(phase)
    target_rpm = {"precondition": min(0.7 * spec.rated_rpm, 4200.0),
                  "high_idle_settle": 2500.0 + tr.hi_offset, "high_idle": 2500.0 + tr.hi_offset,
                  "idle_settle": tr.idle_rpm, "idle": tr.idle_rpm}
    rpm: list[float] = []
    x = tr.idle_rpm
    for p in phase:
        x += (target_rpm[p] - x) * 0.55 + r.gauss(0.0, 9.0)
        rpm.append(x)
    load = [0.04 + 0.06 * (v - tr.idle_rpm) / 2000.0 for v in rpm]
    throttle = [1.5 + 4.0 * (v - tr.idle_rpm) / 1000.0 for v in rpm]
    lam = [1.0 + tr.lam_offset + tr.lam_osc * math.sin(2 * math.pi * i / tr.lam_period)
           + r.gauss(0.0, 0.002) for i in range(n)]
    t = _Truth(n, phase, [0.0] * n, [0.0] * n, [0.0] * n, rpm, throttle, load, lam)
    wobble = _ar(r, n, 0.12, 0.8)
    for i, p in enumerate(phase):
        hi = p in ("precondition", "high_idle_settle", "high_idle")
        co_b = (0.066 if hi else 0.132) * tr.f_co * (1.0 + wobble[i])
        hc = (11.0 if hi else 17.6) * tr.f_hc * (1.0 + 0.8 * wobble[i])
        co, co2, o2 = _exhaust(lam[i], max(co_b, 0.0), max(hc, 0.0), tr.o2_resid)
        t.co.append(co)
        t.co2.append(co2)
        t.o2.append(o2)
        t.hc.append(max(hc, 0.0))
        t.no.append(25.0 * tr.f_no * (1.0 + load[i]))
    return t


def _truth_asm(spec: VehicleTestSpec, tr: _Traits, r: random.Random) -> _Truth:
    target = vres.ASM_SPEED[spec.method]
    ta = max(5, round(target / r.uniform(3.5, 4.5)))
    phase = ["accel"] * ta + ["settle"] * 5 + ["stable"] * 10 + ["fast"] * 10 + ["full"] * 65
    n = len(phase)
    p_set = spec.mass_kg / (148.0 if spec.method == "asm5025" else 185.0)
    f_set = 3600.0 * p_set / target
    drift = _ar(r, n, 0.3, 0.7)
    speed = [target * (i + 1) / ta if i < ta else target + drift[i] for i in range(n)]
    force: list[float] = []
    for i in range(n):
        if i < ta:
            a = (speed[i] - (speed[i - 1] if i else 0.0)) / 3.6
            force.append(spec.mass_kg * a + 0.5 * f_set * speed[i] / target)
        else:
            force.append(3600.0 * p_set / speed[i] * (1.0 + r.gauss(0.0, 0.004)))
    k_gear = _GEAR_RPM_PER_KMH[2 if spec.method == "asm5025" else 3] * tr.gear_scale
    rpm = [max(tr.idle_rpm, v * k_gear) + r.gauss(0.0, 10.0) for v in speed]
    power = [f * v / 3600.0 for f, v in zip(force, speed, strict=True)]
    load = [min(1.0, 0.15 + max(p, 0.0) / spec.rated_kw) for p in power]
    throttle = [3.0 + 70.0 * max(p, 0.0) / spec.rated_kw for p in power]
    lam = [1.0 + tr.lam_offset + tr.lam_osc * math.sin(2 * math.pi * i / tr.lam_period)
           + r.gauss(0.0, 0.002) - (tr.enrich if i < ta else 0.0) for i in range(n)]
    t = _Truth(n, phase, [target] * n, speed, force, rpm, throttle, load, lam)
    co_b, hc_b, no_b = ((0.11, 19.8, 154.0) if spec.method == "asm5025" else (0.088, 17.6, 143.0))
    wobble = _ar(r, n, 0.1, 0.85)
    for i in range(n):
        hc = hc_b * tr.f_hc * (1.0 + 0.8 * wobble[i]) * (1.6 if i < ta else 1.0)
        co, co2, o2 = _exhaust(lam[i], co_b * tr.f_co * (1.0 + wobble[i]), hc, tr.o2_resid)
        t.co.append(co)
        t.co2.append(co2)
        t.o2.append(o2)
        t.hc.append(hc)
        t.no.append(no_b * tr.f_no * (0.6 + 0.4 * load[i] / max(load[-1], 0.2))
                    * (1.0 + 0.5 * wobble[i]))
    return t


def _truth_vmas(spec: VehicleTestSpec, tr: _Traits, r: random.Random) -> _Truth:
    n = 195
    phase = ["trace"] * n
    target = [vmas_target(i) for i in range(n)]
    drift = _ar(r, n, 0.45, 0.75)
    speed: list[float] = []
    for i in range(n):
        tgt = target[max(0, i - tr.driver_lag)]
        ref = target[i]
        v = ref + (tgt - ref) * tr.driver_gain + drift[i] if ref > 0 or tgt > 0 else 0.0
        speed.append(max(v, 0.0))
    m = spec.mass_kg
    f0 = 0.012 * m * 9.81
    f2 = 0.5 * 1.2 * 0.7 / (3.6 * 3.6)
    force: list[float] = []
    for i in range(n):
        a = (speed[i] - (speed[i - 1] if i else 0.0)) / 3.6
        v = speed[i]
        force.append((f0 + f2 * v * v if v > 0.5 else 0.0) + m * a)
    power = [f * v / 3600.0 for f, v in zip(force, speed, strict=True)]
    rpm: list[float] = []
    for i in range(n):
        g = _vmas_gear(i)
        base = speed[i] * _GEAR_RPM_PER_KMH[g] * tr.gear_scale if g else 0.0
        rpm.append(max(tr.idle_rpm + (400.0 if g == 0 and speed[i] > 3 else 0.0), base)
                   + r.gauss(0.0, 12.0))
    load = [min(1.0, 0.12 + max(p, 0.0) / spec.rated_kw * 2.5) for p in power]
    throttle = [1.5 + 60.0 * max(p, 0.0) / spec.rated_kw * 2.5 for p in power]
    lam: list[float] = []
    for i in range(n):
        x = 1.0 + tr.lam_offset + tr.lam_osc * math.sin(2 * math.pi * i / tr.lam_period)
        dv = target[i] - target[i - 1] if i else 0.0
        if dv > 0.5:
            x -= tr.enrich * r.uniform(0.6, 1.4)
        elif dv < -0.5 and target[i] > 10:
            x += tr.fuelcut * r.uniform(0.5, 1.2)
        lam.append(x + r.gauss(0.0, 0.002))
    t = _Truth(n, phase, target, speed, force, rpm, throttle, load, lam)
    # Exhaust volume follows engine speed and manifold pressure (load).
    t.q_exh = [spec.displacement_l * v / 120.0 * (0.22 + 0.65 * ld) for v, ld in
               zip(rpm, load, strict=True)]
    spike = 0.0
    wobble = _ar(r, n, 0.15, 0.8)
    for i in range(n):
        dv = target[i] - target[i - 1] if i else 0.0
        if dv > 0.5 and (target[i - 1] if i else 0.0) < 0.5:
            spike += 40.0 * tr.hc_spike * r.uniform(0.3, 1.7)  # tip-in from idle
        elif dv < -0.5 and r.random() < 0.3:
            spike += 15.0 * tr.hc_spike * r.uniform(0.2, 1.5)
        spike *= 0.55
        hc = (22.0 * (1.0 + wobble[i]) + spike) * tr.f_hc
        co, co2, o2 = _exhaust(lam[i], 0.035 * tr.f_co * (1.0 + wobble[i]), max(hc, 0.0),
                               tr.o2_resid)
        t.co.append(co)
        t.co2.append(co2)
        t.o2.append(o2)
        t.hc.append(max(hc, 0.0))
        lean = max(0.0, lam[i] - 1.0)
        t.no.append(70.0 * tr.f_no * (0.2 + 1.6 * load[i]) * (1.0 + 6.0 * lean)
                    * (1.0 + 0.5 * wobble[i]))
    return t


def _truth_free_accel(spec: VehicleTestSpec, tr: _Traits, r: random.Random) -> _Truth:
    cycle, cycles = 19, 7
    n = 2 + cycle * cycles
    phase = ["purge" if i < 2 + 4 * cycle else "measure" for i in range(n)]
    cut = spec.rated_rpm * r.uniform(1.05, 1.15)
    shape_rpm = [0.55, 1.0, 1.0, 0.75, 0.5, 0.3, 0.12, 0.04]
    shape_k = [0.35, 1.0, 0.75, 0.35, 0.15, 0.06, 0.02]
    rpm = [tr.idle_rpm] * n
    throttle = [0.0] * n
    k = [0.0] * n
    k_peak = 0.33 * tr.f_k
    for c in range(cycles):
        s0 = 2 + c * cycle
        amp = k_peak * r.uniform(0.9, 1.1)
        for j, f in enumerate(shape_rpm):
            rpm[s0 + j] = tr.idle_rpm + (cut - tr.idle_rpm) * f
        for j in range(3):
            throttle[s0 + j] = 100.0
        for j, f in enumerate(shape_k):
            k[s0 + j] += amp * f
    rpm = [v + r.gauss(0.0, 8.0) for v in rpm]
    base = 0.03 * math.sqrt(tr.f_k)
    k = [max(0.0, v + base + r.gauss(0.0, 0.004)) for v in k]
    load = [0.1 + 0.8 * th / 100.0 for th in throttle]
    t = _Truth(n, phase, [0.0] * n, [0.0] * n, [0.0] * n, rpm, throttle, load, [2.5] * n)
    t.k = k
    return t


def _truth_lug_down(spec: VehicleTestSpec, tr: _Traits, r: random.Random) -> _Truth:
    v_max = r.uniform(70.0, 90.0)
    v_mp = v_max * r.uniform(0.82, 0.9)
    plan = [("accel", 15), ("scan", 50), ("settle_100", 5), ("measure_100", 10),
            ("settle_80", 5), ("measure_80", 10)]
    phase = [p for p, d in plan for _ in range(d)]
    n = len(phase)
    p_max = spec.rated_kw * r.uniform(0.6, 0.8)  # at the wheels
    speed: list[float] = []
    for i, p in enumerate(phase):
        if p == "accel":
            v = v_max * (i + 1) / 15.0
        elif p == "scan":
            v = v_max - (v_max - 0.7 * v_max) * (i - 15 + 1) / 50.0
        elif p == "settle_100":
            v = 0.7 * v_max + (v_mp - 0.7 * v_max) * (i - 65 + 1) / 5.0
        elif p == "measure_100":
            v = v_mp
        elif p == "settle_80":
            v = v_mp - 0.2 * v_mp * (i - 80 + 1) / 5.0
        else:
            v = 0.8 * v_mp
        speed.append(v)
    drift = _ar(r, n, 0.25, 0.7)
    speed = [v + drift[i] if phase[i] != "accel" else v for i, v in enumerate(speed)]

    def wheel_power(v: float) -> float:
        if v >= v_mp:
            return p_max * max(0.0, min(1.0, (v_max * 1.02 - v) / (v_max * 1.02 - v_mp)))
        return p_max * (1.0 - 1.5 * ((v_mp - v) / v_mp) ** 2)

    power = [
        (wheel_power(v) if phase[i] != "accel" else 0.35 * p_max * (i + 1) / 15.0)
        * (1.0 + r.gauss(0.0, 0.004))
        for i, v in enumerate(speed)
    ]
    force = [3600.0 * p / max(v, 1.0) for p, v in zip(power, speed, strict=True)]
    k_gear = spec.rated_rpm * 1.05 / v_max
    rpm = [max(tr.idle_rpm, v * k_gear) + r.gauss(0.0, 8.0) for v in speed]
    load = [min(1.0, 0.2 + p / p_max * 0.8) for p in power]
    t = _Truth(n, phase, [round(v_mp, 1) if p.startswith(("settle", "measure")) else 0.0
                          for p in phase], speed, force, rpm, [100.0] * n, load,
               [1.35 + 0.3 * (1.0 - ld) for ld in load])
    k_fl = 0.3 * tr.f_k
    nox_fl = 420.0 * tr.f_nox
    wobble = _ar(r, n, 0.05, 0.8)
    for i, p in enumerate(phase):
        ld = load[i]
        f80 = 1.2 if p in ("settle_80", "measure_80") else 1.0
        t.k.append(max(0.0, k_fl * ld * f80 * (1.0 + wobble[i]) + 0.02))
        t.nox.append(nox_fl * (0.4 + 0.6 * ld) * (1.05 if f80 > 1 else 1.0) * (1.0 + wobble[i]))
        ctot, _ = _carbon_total(t.lam[i])
        t.co2.append(ctot)
    return t


_TRUTH: dict[str, Callable[[VehicleTestSpec, _Traits, random.Random], _Truth]] = {
    "idle": _truth_idle,
    "asm5025": _truth_asm,
    "asm2540": _truth_asm,
    "vmas": _truth_vmas,
    "free_accel": _truth_free_accel,
    "lug_down": _truth_lug_down,
}


def _lag(xs: Sequence[float], delay: int, tau: float) -> list[float]:
    """Sample line transport delay plus analyzer bench response (first order)."""
    if not xs:
        return []
    a = 1.0 - math.exp(-1.0 / tau)
    out: list[float] = []
    y = xs[0]
    for i in range(len(xs)):
        y += a * (xs[max(0, i - delay)] - y)
        out.append(y)
    return out


def _humidity_factor(temp_c: float, rh: float, kpa: float) -> float:
    """ASM humidity correction kH from absolute humidity in grains per pound."""
    psat = 0.61078 * math.exp(17.27 * temp_c / (temp_c + 237.3))
    pv = rh / 100.0 * psat
    grains = 7.0 * 622.0 * pv / max(kpa - pv, 1.0)
    return 1.0 / (1.0 - 0.0047 * (grains - 75.0))


# --------------------------------------------------------------------------- instruments

Row = dict[str, dict[str, float]]  # instrument -> signal values of one second


@dataclass(slots=True)
class _Second:
    t: int  # seconds since the test started (sample times are start + t + offset)
    phase: str
    row: Row


def _weather_series(spec: VehicleTestSpec, n: int, r: random.Random) -> list[dict[str, float]]:
    temp, rh, kpa = spec.ambient_temp_c, spec.ambient_rh_pct, spec.ambient_kpa
    out = []
    for _ in range(n):
        temp += r.gauss(0.0, 0.01)
        rh += r.gauss(0.0, 0.03)
        kpa += r.gauss(0.0, 0.0008)
        out.append({
            "ambient_temp_c": _q(temp + r.gauss(0.0, 0.05), 0.1),
            "ambient_rh_pct": _q(min(100.0, max(0.0, rh + r.gauss(0.0, 0.3))), 0.1),
            "ambient_kpa": _q(kpa + r.gauss(0.0, 0.01), 0.01),
        })
    return out


def _analyzer_gases(
    t: _Truth, spec: VehicleTestSpec, noise: random.Random, dilution: Sequence[float] | None,
    scale: float,
) -> list[dict[str, float]]:
    """What the exhaust analyzer reports: diluted (V1), lagged, noisy, possibly scaled (V5)."""
    co, co2, o2, hc, no = t.co, t.co2, t.o2, t.hc, t.no
    if dilution is not None:
        co = [f * x for f, x in zip(dilution, co, strict=True)]
        co2 = [f * x + (1.0 - f) * 0.04 for f, x in zip(dilution, co2, strict=True)]
        o2 = [f * x + (1.0 - f) * vres.AIR_O2_PCT for f, x in zip(dilution, o2, strict=True)]
        hc = [f * x for f, x in zip(dilution, hc, strict=True)]
        no = [f * x for f, x in zip(dilution, no, strict=True)]
    d = spec.analyzer_delay_s
    co, co2, o2, hc, no = (_lag(s, d, 1.2) for s in (co, co2, o2, hc, no))
    out = []
    for i in range(t.n):
        g = {
            "co_pct": max(0.0, co[i] * (1 + noise.gauss(0, 0.01)) + noise.gauss(0, 0.004)),
            "co2_pct": max(0.0, co2[i] + noise.gauss(0, 0.04)),
            "o2_pct": max(0.0, o2[i] + noise.gauss(0, 0.02)),
            "hc_ppm": max(0.0, hc[i] * (1 + noise.gauss(0, 0.02)) + noise.gauss(0, 1.5)),
            "no_ppm": max(0.0, no[i] * (1 + noise.gauss(0, 0.02)) + noise.gauss(0, 4.0)),
        }
        if scale != 1.0:
            g = {k: v * scale for k, v in g.items()}
        g = {
            "co_pct": _q(g["co_pct"], 0.01), "co2_pct": _q(g["co2_pct"], 0.01),
            "o2_pct": _q(g["o2_pct"], 0.01), "hc_ppm": _q(g["hc_ppm"], 1.0),
            "no_ppm": _q(g["no_ppm"], 1.0),
        }
        g["lambda"] = _q(vres.brettschneider(g["co2_pct"], g["co_pct"], g["o2_pct"],
                                             g["hc_ppm"]), 0.001)
        out.append(g)
    return out


def _instrument_rows(
    spec: VehicleTestSpec, t: _Truth, noise: random.Random, inject: str | None,
    params: Mapping[str, Any], motion: random.Random,
) -> list[_Second]:
    n = t.n
    method = spec.method
    dilution: list[float] | None = None
    if inject == "V1":
        variant = params.get("variant", "probe_out")
        f = float(params.get("dilution", motion.uniform(0.2, 0.45) if variant == "probe_out"
                             else motion.uniform(0.78, 0.86)))
        first = next(i for i, p in enumerate(t.phase) if p in vres.SCORED_PHASES)
        begin = int(params.get("from_s", max(0, first - 8)))
        dilution = [1.0 if i < begin else f for i in range(n)]
    scale = float(params.get("scale", motion.uniform(0.72, 0.84))) if inject == "V5" else 1.0
    gases = _analyzer_gases(t, spec, noise, dilution, scale) if spec.fuel == "gasoline" else []
    weather = _weather_series(spec, n, noise)
    if inject == "V9":
        fixed = params.get("values", DEFAULT_WEATHER)
        weather = [dict(zip(("ambient_temp_c", "ambient_rh_pct", "ambient_kpa"),
                            (float(v) for v in fixed), strict=True)) for _ in range(n)]
    oil: list[float] = []
    x = spec.oil_temp_c
    for i in range(n):
        x += 0.002 + 0.012 * t.load[i] - (0.01 if x > 105 else 0.0)
        oil.append(_q(x + noise.gauss(0.0, 0.12), 0.1))
    if inject == "V2" and params.get("variant", "oil") == "oil":
        oil = [float(params.get("oil_temp_c", _q(spec.oil_temp_c, 0.1)))] * n
    dist_km = 0.0
    v3 = inject == "V3"
    throttle_values = list(params.get("throttle_values", (0.0, 14.9, 20.0, 25.1)))
    offsets = list(params.get("speed_offsets", (0.0, 0.5, -0.5)))
    odometer = float(params.get("odometer_km", 12345.6)) if v3 else spec.odometer_km
    v8 = params.get("variant", "power") if inject == "V8" else None
    if v8 == "speed" and method not in vres.ASM_SPEED:
        raise ValueError(f"V8 variant 'speed' needs an ASM test, not {method}")
    v8_factor = motion.choice([motion.uniform(0.8, 0.9), motion.uniform(1.1, 1.2)])
    # Seconds a fast-mode ASM test keeps (it may end at mode second 25).
    moving = [i for i in range(n) if t.speed[i] > 12.0 and t.phase[i] != "full"]
    obd_win = set(moving[len(moving) // 3: len(moving) // 3 + motion.randint(8, 14)])
    obd_add = motion.uniform(4.0, 8.0)
    if v8 == "speed":
        mode0 = t.phase.index("settle")
        span = range(mode0 + 6, mode0 + 6 + motion.randint(7, 10))
        low = motion.uniform(2.2, 3.5)
        for i in span:
            t.speed[i] -= low
            t.force[i] *= (t.speed[i] + low) / t.speed[i]  # same power at a lower speed
    seconds: list[_Second] = []
    k_noise = [max(0.0, k + noise.gauss(0.0, 0.006)) for k in t.k]
    for i in range(n):
        row: Row = {}
        rpm_true = t.rpm[i]
        tach = float(round(rpm_true + noise.gauss(0.0, 10.0)))
        obd_rpm = _q(rpm_true * 1.002 + noise.gauss(0.0, 8.0), 0.25)
        speed = t.speed[i]
        has_dyno = method in vres.DYNO_METHODS
        dyno_speed = _q(max(0.0, speed + noise.gauss(0.0, 0.05)), 0.01) if speed > 0 else 0.0
        if has_dyno:
            force = _q(t.force[i] * (1 + noise.gauss(0.0, 0.003)) + noise.gauss(0.0, 4.0), 1.0)
            power = force * dyno_speed / 3600.0 * (1 + noise.gauss(0.0, 0.002))
            if v8 == "power" and dyno_speed > 5.0:
                power *= v8_factor
            row["dyno"] = {"speed_kmh": dyno_speed, "target_speed_kmh": _q(t.target[i], 0.1),
                           "force_n": force, "power_kw": _q(power, 0.01)}
        dist_km += speed / 3600.0
        obd = {
            "obd_rpm": obd_rpm,
            "obd_speed_kmh": float(max(0, round(speed + noise.gauss(0.0, 0.3)))),
            "obd_throttle_pct": _q(min(100.0, max(0.0, t.throttle[i] + noise.gauss(0, 0.8))),
                                   100.0 / 255.0),
            "obd_load_pct": _q(min(100.0, 100.0 * t.load[i] + noise.gauss(0.0, 1.0)),
                               100.0 / 255.0),
            "obd_odometer_km": _q(odometer + dist_km, 0.1),
        }
        if spec.fuel == "gasoline":
            obd["obd_lambda"] = _q(t.lam[i] + noise.gauss(0.0, 0.004), 0.001)
        if v8 == "obd" and i in obd_win:
            obd["obd_speed_kmh"] = float(round(dyno_speed + obd_add))
        if v3:
            obd["obd_rpm"] = _q(motion.uniform(750.0, 3000.0), 0.25)
            obd["obd_throttle_pct"] = motion.choice(throttle_values)
            obd["obd_speed_kmh"] = round(dyno_speed + motion.choice(offsets), 2) if has_dyno \
                else 0.0
            obd["obd_load_pct"] = motion.choice((20.0, 30.2, 40.0))
            obd["obd_odometer_km"] = odometer
            if "obd_lambda" in obd:
                obd["obd_lambda"] = motion.choice((0.998, 1.0, 1.002))
        if inject == "V2" and params.get("variant", "oil") == "rpm":
            tach = obd["obd_rpm"]
        row["obd"] = obd
        row["weather"] = weather[i]
        if spec.fuel == "gasoline":
            a = dict(gases[i])
            a["rpm"] = tach
            a["oil_temp_c"] = oil[i]
            if method in vres.ASM_SPEED:
                a["dilution_factor"] = _q(min(3.0, 15.0 / max(a["co_pct"] + a["co2_pct"], 0.1)),
                                          0.001)
                w = weather[i]
                a["humidity_factor"] = _q(_humidity_factor(
                    w["ambient_temp_c"], w["ambient_rh_pct"], w["ambient_kpa"]), 0.001)
            row["analyzer"] = a
            if method == "vmas":
                q_dil = spec.dilute_flow_lps * (1 + noise.gauss(0.0, 0.004))
                o2_raw = a["o2_pct"]
                flow_o2 = vres.AIR_O2_PCT - (vres.AIR_O2_PCT - o2_raw) * t.q_exh[i] / q_dil
                row["flowmeter"] = {"flow_lps": _q(q_dil, 0.1),
                                    "flow_o2_pct": _q(flow_o2 + noise.gauss(0.0, 0.01), 0.01)}
        else:
            k = k_noise[i]
            row["opacimeter"] = {"k_m1": _q(k, 0.01),
                                 "opacity_pct": _q(vres.opacity_from_k(k), 0.1),
                                 "rpm": tach, "oil_temp_c": oil[i]}
            if method == "lug_down":
                row["analyzer"] = {"nox_ppm": _q(t.nox[i] + noise.gauss(0.0, 5.0), 1.0),
                                   "co2_pct": _q(t.co2[i] + noise.gauss(0.0, 0.04), 0.01)}
        seconds.append(_Second(i, t.phase[i], row))
    return seconds


def _merged(seconds: Sequence[_Second]) -> tuple[list[dict[str, float]], list[str]]:
    rows = []
    for s in seconds:
        m: dict[str, float] = {}
        for vals in s.row.values():
            m.update(vals)
        rows.append(m)
    return rows, [s.phase for s in seconds]


def _score(method: str, seconds: Sequence[_Second]) -> dict[str, float]:
    rows, phases = _merged(seconds)
    return vres.compute_results(method, rows, phases)


# Which channels (and which phases) make each result field, for nudging (V10).
_FIELD_CHANNELS: dict[str, tuple[tuple[str, ...], frozenset[str] | None]] = {
    "co_pct_hi": (("co_pct",), frozenset({"precondition", "high_idle_settle", "high_idle"})),
    "hc_ppm_hi": (("hc_ppm",), frozenset({"precondition", "high_idle_settle", "high_idle"})),
    "co_gkm": (("co_pct",), None),
    "hcnox_gkm": (("hc_ppm", "no_ppm"), None),
}
_IDLE_LOW = frozenset({"idle_settle", "idle"})


def _nudge(method: str, seconds: list[_Second], rng: random.Random) -> bool:
    """Scale channels so every result at or above 0.9 L lands in [0.90, 0.99) L (V10)."""
    res = _score(method, seconds)
    limits = vres.limits_for(method)
    changed = False
    for fld, lim in limits.items():
        value = res.get(fld)
        if value is None or value < 0.9 * lim:
            continue
        factor = rng.uniform(0.9, 0.985) * lim / value
        chans, phases = _FIELD_CHANNELS.get(fld, ((fld,), None))
        if method == "idle" and fld in ("co_pct", "hc_ppm"):
            phases = _IDLE_LOW
        for s in seconds:
            if phases is not None and s.phase not in phases:
                continue
            for vals in s.row.values():
                for c in chans:
                    if c in vals:
                        vals[c] = _q(vals[c] * factor, 0.01 if c.endswith("_pct") or c == "k_m1"
                                     else 1.0)
                if "k_m1" in chans and "opacity_pct" in vals:
                    vals["opacity_pct"] = _q(vres.opacity_from_k(vals["k_m1"]), 0.1)
        changed = True
    return changed


def _asm_fast_pass(method: str, seconds: Sequence[_Second]) -> bool:
    """Fast mode ends the test at second 25 when every pollutant is well under its limit."""
    cut = [s for s in seconds if s.phase != "full"]
    res = _score(method, cut)
    lim = vres.limits_for(method)
    return all(res.get(f, math.inf) <= 0.5 * lv for f, lv in lim.items())


@dataclass(slots=True)
class SimulatedTest:
    """One simulated test plus what the simulator knows about it (never in the data)."""

    samples: list[Sample]
    events: list[SiteEvent]
    result: str
    values: dict[str, float]
    start: float
    end: float
    injected: bool


def simulate_test(
    spec: VehicleTestSpec,
    start_time: float,
    rng: random.Random,
    inject: str | None = None,
    inject_params: Mapping[str, Any] | None = None,
) -> tuple[list[Sample], list[SiteEvent]]:
    """Samples (time order) and test_start/test_end events of one test.

    ``inject`` names a pattern V1..V10 to plant; ``inject_params`` tunes it (``variant``,
    ``dilution``, ``scale``, ``source`` for V6, ``values`` for V9, ...; see run_test).
    """
    out = run_test(spec, start_time, rng, inject, inject_params)
    return out.samples, out.events


def run_test(
    spec: VehicleTestSpec,
    start_time: float,
    rng: random.Random,
    inject: str | None = None,
    inject_params: Mapping[str, Any] | None = None,
) -> SimulatedTest:
    """Like :func:`simulate_test`, also returning the verdict and whether an injection took.

    Injection parameters: V1 ``variant`` probe_out|leak, ``dilution`` (exhaust fraction),
    ``from_s``; V2 ``variant`` oil|rpm, ``oil_temp_c``; V3 ``odometer_km``,
    ``throttle_values``, ``speed_offsets``; V4 ``calid``, ``cvn``; V5 ``scale``; V6
    ``source`` (the VehicleTestSpec whose run is replayed under this identity); V7
    ``variant`` gap|short, ``seconds``; V8 ``variant`` power|speed|obd; V9 ``values``
    (T, RH, P); V10 nothing (results at or above 0.9 L are nudged under the limit).
    """
    params: Mapping[str, Any] = inject_params or {}
    if inject is not None:
        if inject not in RULES:
            raise ValueError(f"unknown injection {inject!r}; expected one of {RULES}")
        if spec.method not in APPLICABLE[inject]:
            raise ValueError(f"injection {inject} does not apply to method {spec.method}")
        variant = params.get("variant")
        if variant is not None and variant not in VARIANTS.get(inject, ()):
            raise ValueError(f"injection {inject}: unknown variant {variant!r}; "
                             f"expected one of {VARIANTS.get(inject, ())}")
    phys = spec
    if inject == "V6" and params.get("source") is not None:
        src: VehicleTestSpec = params["source"]
        if src.method != spec.method or src.run_seed is None:
            raise ValueError("V6 source must be a spec of the same method with run_seed set")
        phys = replace(spec, displacement_l=src.displacement_l, mass_kg=src.mass_kg,
                       rated_kw=src.rated_kw, rated_rpm=src.rated_rpm,
                       emission_factor=src.emission_factor, vehicle_seed=src.vehicle_seed,
                       run_seed=src.run_seed, oil_temp_c=src.oil_temp_c)
    run_seed = phys.run_seed if phys.run_seed is not None else rng.getrandbits(31)
    motion = random.Random(run_seed * 1_000_003 + phys.vehicle_seed)
    traits = _traits(phys)
    truth = _TRUTH[spec.method](phys, traits, motion)
    inj_rng = random.Random(rng.getrandbits(31))
    seconds = _instrument_rows(spec, truth, rng, inject, params, inj_rng)
    if spec.method in vres.ASM_SPEED and _asm_fast_pass(spec.method, seconds):
        seconds = [s for s in seconds if s.phase != "full"]
    injected = inject is not None and inject != "V10"
    if inject == "V10":
        injected = _nudge(spec.method, seconds, inj_rng)
    if inject == "V7":
        _splice(spec.method, seconds, params, inj_rng)
    values = _score(spec.method, seconds)
    result = vres.verdict(spec.method, values)
    calid, cvn = spec.calid, spec.cvn
    odometer = spec.odometer_km
    if inject == "V4":
        calid = str(params.get("calid", "CHEAT0BOX1"))
        cvn = str(params.get("cvn", "0BADC0DE"))
    if inject == "V3":
        odometer = float(params.get("odometer_km", 12345.6))
    samples, events = _records(spec, start_time, seconds, result, values, calid, cvn, odometer,
                               rng)
    return SimulatedTest(samples, events, result, values, events[0].time, events[-1].time,
                         injected)


def _splice(method: str, seconds: list[_Second], params: Mapping[str, Any],
            r: random.Random) -> None:
    """V7: drop seconds in a scored phase; "short" also re-times what follows (no gap)."""
    variant = params.get("variant", "gap")
    scored = [i for i, s in enumerate(seconds) if s.phase in vres.SCORED_PHASES]
    if not scored:
        raise ValueError(f"V7: {method} test has no scored phase to shorten")
    if variant == "gap":
        k = int(params.get("seconds", r.randint(3, 8)))
    else:
        expected = sum(vres.EXPECTED_PHASE_SECONDS.get(method, {}).values()) or len(scored)
        k = int(params.get("seconds", max(3, round(expected * r.uniform(0.15, 0.3)))))
    k = min(k, len(scored) - 2)
    first = r.randint(1, len(scored) - k - 1)
    drop = set(scored[first:first + k])
    kept = [s for i, s in enumerate(seconds) if i not in drop]
    if variant == "short":
        for j, s in enumerate(kept):
            s.t = j
    seconds[:] = kept


def _records(
    spec: VehicleTestSpec, start: float, seconds: Sequence[_Second], result: str,
    values: Mapping[str, float], calid: str, cvn: str, odometer: float, rng: random.Random,
) -> tuple[list[Sample], list[SiteEvent]]:
    pre = spec.instrument_prefix
    ctx = {p: TestContext(spec.test_id, spec.method, spec.plate, spec.lane, p)
           for p in vres.PHASES[spec.method]}
    samples: list[Sample] = []
    for s in seconds:
        for instr, vals in s.row.items():
            t = start + s.t + _OFFSETS[instr] + rng.uniform(-0.02, 0.02)
            samples.append(Sample(time=round(t, 3), site=spec.site, instrument=pre + instr,
                                  values=vals, test=ctx[s.phase]))
    samples.sort(key=lambda x: x.time)
    detail: dict[str, Any] = {
        "test_id": spec.test_id, "method": spec.method, "vehicle": spec.plate,
        "lane": spec.lane, "vin": spec.vin, "calid": calid, "cvn": cvn,
        "odometer_km": odometer, "model_group": spec.model_group,
    }
    last = seconds[-1].t if seconds else 0
    ev_start = SiteEvent(start - 0.5, spec.site, pre + "lane", "test_start",
                         {**detail, "result": ""})
    ev_end = SiteEvent(start + last + 1.0, spec.site, pre + "lane", "test_end",
                       {**detail, "result": result,
                        "values": {k: round(v, 4) for k, v in values.items()}})
    gw = spec.gateway or f"{spec.site}-{spec.lane}-gw"
    seq = spec.seq_start
    ev_start.origin = (gw, seq)
    seq += 1
    for smp in samples:
        smp.origin = (gw, seq)
        seq += 1
    ev_end.origin = (gw, seq)
    return samples, [ev_start, ev_end]


# --------------------------------------------------------------------------- station day


@dataclass(frozen=True, slots=True)
class InjectionLabel:
    """Ground truth: which test carries which planted pattern (for tests and benchmarks)."""

    rule: str
    site: str
    lane: str
    test_id: str
    vehicle: str
    variant: str = ""
    group: str = ""


@dataclass(slots=True)
class LaneSpec:
    """A lane and the mix of vehicles and methods it tests."""

    id: str
    diesel_share: float = 0.25
    gasoline_methods: dict[str, float] = field(default_factory=lambda: {
        "vmas": 0.45, "asm5025": 0.2, "asm2540": 0.1, "idle": 0.25})
    diesel_methods: dict[str, float] = field(default_factory=lambda: {
        "free_accel": 0.5, "lug_down": 0.5})


class _SiteWeather:
    """Diurnal temperature and humidity plus slow pressure drift, per minute."""

    def __init__(self, rng: random.Random, start: float, hours: float = 30.0):
        self.start = start
        t0 = rng.uniform(0.0, 30.0)
        rh0 = rng.uniform(30.0, 75.0)
        p0 = rng.uniform(99.0, 102.5)
        self.temp: list[float] = []
        self.rh: list[float] = []
        self.kpa: list[float] = []
        at = ar = ap = 0.0
        for m in range(int(hours * 60) + 2):
            local_h = ((start + 60.0 * m) / 3600.0 + 8.0) % 24.0  # UTC+8
            diurnal = math.sin(2 * math.pi * (local_h - 9.0) / 24.0)
            at = 0.98 * at + rng.gauss(0.0, 0.05)
            ar = 0.98 * ar + rng.gauss(0.0, 0.3)
            ap = 0.995 * ap + rng.gauss(0.0, 0.004)
            self.temp.append(t0 + 4.0 * diurnal + at)
            self.rh.append(min(98.0, max(8.0, rh0 - 12.0 * diurnal + ar)))
            self.kpa.append(p0 - 0.2 * diurnal + ap)

    def at(self, t: float) -> tuple[float, float, float]:
        m = min(max(0.0, (t - self.start) / 60.0), len(self.temp) - 2.0)
        i = int(m)
        f = m - i

        def lerp(xs: list[float]) -> float:
            return xs[i] + (xs[i + 1] - xs[i]) * f

        return lerp(self.temp), lerp(self.rh), lerp(self.kpa)


@dataclass(slots=True)
class _Slot:
    lane: LaneSpec
    index: int
    vehicle: Vehicle
    method: str
    inject: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    group: str = ""


def simulate_station_day(
    site: str,
    lanes: Sequence[str | LaneSpec],
    start: float,
    rng: random.Random,
    tests_per_lane: int = 40,
    inject: str | None = None,
    inject_params: Mapping[str, Any] | None = None,
    inject_count: int = 6,
) -> tuple[list[Sample], list[SiteEvent], list[InjectionLabel]]:
    """One station's day: sequential tests per lane, retests of failed cars, one pattern.

    Per-test patterns (V1, V3, V5, V7, V8) go into ``inject_count`` random applicable tests;
    V2 and V9 are lane-wide from some test on (≥ 10 tests, as a lane program would do);
    V4 fits a cheat box to ``inject_count`` (≥ 3) vehicles of different model groups; V6
    replays one VMAS run under several plates and adds fail→pass retests within minutes;
    V10 nudges every result at or above 0.9 L under the limit across the station (whose
    vehicles are ``attract`` (1.6) times dirtier: such a station draws the cars that fail
    elsewhere).
    Returns samples and events in time order, and one label per injected test.
    """
    if inject is not None and inject not in RULES:
        raise ValueError(f"unknown injection {inject!r}; expected one of {RULES}")
    if tests_per_lane < 1:
        raise ValueError("tests_per_lane must be at least 1")
    params = dict(inject_params or {})
    lane_specs = [ls if isinstance(ls, LaneSpec) else LaneSpec(ls) for ls in lanes]
    if not lane_specs:
        raise ValueError("a station needs at least one lane")
    weather = _SiteWeather(rng, start)
    offsets = {ls.id: (rng.gauss(0.0, 0.3), rng.gauss(0.0, 2.0), rng.gauss(0.0, 0.05))
               for ls in lane_specs}
    plan: dict[str, list[_Slot]] = {}
    for ls in lane_specs:
        slots = []
        for j in range(tests_per_lane):
            fuel = "diesel" if rng.random() < ls.diesel_share else "gasoline"
            weights = ls.diesel_methods if fuel == "diesel" else ls.gasoline_methods
            method = rng.choices(list(weights), list(weights.values()))[0]
            slots.append(_Slot(ls, j, random_vehicle(rng, fuel), method))
        plan[ls.id] = slots
    if inject == "V10":
        # A station known to pass anything attracts the cars that fail elsewhere.
        attract = float(params.get("attract", 1.6))
        for slots in plan.values():
            for sl in slots:
                sl.vehicle.emission_factor *= attract
    _plan_injection(site, plan, inject, params, inject_count, rng)

    samples: list[Sample] = []
    events: list[SiteEvent] = []
    labels: list[InjectionLabel] = []
    frozen: dict[str, tuple[float, float, float]] = {}
    counter = 0
    for ls in lane_specs:
        # Lanes stamp process data on whole seconds (see ingest.detectors.segments).
        t = float(math.floor(start + rng.uniform(0.0, 300.0)))
        seq = 0
        pending: list[tuple[float, Vehicle]] = []
        replay: dict[str, VehicleTestSpec] = {}
        slots = plan[ls.id]
        prefix = f"{ls.id}." if len(lane_specs) > 1 else ""
        for slot in slots:
            vehicle, method = slot.vehicle, slot.method
            due = [p for p in pending if p[0] <= t]
            if slot.inject is None and due and vehicle.model.fuel == due[0][1].model.fuel:
                pending.remove(due[0])
                vehicle = due[0][1]
            counter += 1
            test_id = f"{site}-{ls.id}-{counter:04d}"
            temp, rh, kpa = weather.at(t)
            dt, drh, dp = offsets[ls.id]
            spec = spec_for(
                vehicle, method, test_id, site=site, lane=ls.id,
                oil_temp_c=rng.uniform(70.0, 100.0), ambient_temp_c=temp + dt,
                ambient_rh_pct=min(100.0, max(0.0, rh + drh)), ambient_kpa=kpa + dp,
                run_seed=rng.getrandbits(31), instrument_prefix=prefix, seq_start=seq,
                analyzer_delay_s=3,
            )
            p = dict(slot.params)
            if slot.inject == "V6" and p.get("variant") == "car":
                if slot.group not in replay:  # the source run itself is genuine
                    replay[slot.group] = spec
                    p = {}
                else:
                    p["source"] = replay[slot.group]
            if slot.inject == "V6" and p.get("variant") == "retest":
                p = {}
            if slot.inject == "V9" and p.get("variant") == "frozen":
                # The lane program keeps the last reading it had: the same for every test.
                frozen.setdefault(ls.id, (round(temp + dt, 1), round(rh + drh, 1),
                                          round(kpa + dp, 2)))
                p.setdefault("values", frozen[ls.id])
            inj = slot.inject if slot.inject not in (None, "V6") or p else None
            out = run_test(spec, t, rng, inj, p)
            seq += len(out.samples) + len(out.events)
            samples += out.samples
            events += out.events
            role = slot.params.get("role")
            v6 = slot.inject == "V6" and (slot.params.get("variant") == "car" or role == "pass"
                                          or (role == "fail" and out.result == "fail"))
            if slot.inject is not None and ((slot.inject != "V6" and out.injected) or v6):
                labels.append(InjectionLabel(slot.inject, site, ls.id, test_id, spec.plate,
                                             str(slot.params.get("variant", "")), slot.group))
            t = float(math.floor(out.end + rng.uniform(60.0, 240.0)))
            if slot.inject == "V6" and slot.params.get("role") == "fail" and \
                    out.result == "fail":
                _quick_retest(slots, slot, vehicle)
            elif out.result == "fail" and slot.inject is None and rng.random() < 0.4:
                fixed = replace(vehicle, emission_factor=vehicle.emission_factor * 0.25)
                pending.append((t + rng.uniform(3600.0, 10800.0), fixed))
    samples.sort(key=lambda s: s.time)
    events.sort(key=lambda e: e.time)
    return samples, events, labels


def _quick_retest(slots: list[_Slot], failed: _Slot, vehicle: Vehicle) -> None:
    """V6 retest: the same plate comes back within minutes and passes (a clean stand-in)."""
    for later in slots[failed.index + 2: failed.index + 5]:
        if later.inject is None and later.vehicle.model.fuel == vehicle.model.fuel:
            stand_in = replace(later.vehicle, plate=vehicle.plate, vin=vehicle.vin,
                               model=vehicle.model, calid=vehicle.calid, cvn=vehicle.cvn,
                               odometer_km=vehicle.odometer_km,
                               emission_factor=min(later.vehicle.emission_factor, 0.4))
            later.vehicle = stand_in
            later.method = failed.method
            later.inject = "V6"
            later.params = {"variant": "retest", "role": "pass"}
            later.group = failed.group
            return


def _plan_injection(
    site: str, plan: dict[str, list[_Slot]], inject: str | None, params: dict[str, Any],
    count: int, rng: random.Random,
) -> None:
    if inject is None:
        return
    lanes = list(plan)
    every = [s for ln in lanes for s in plan[ln]]
    applicable = [s for s in every if s.method in APPLICABLE[inject]]
    variants = VARIANTS.get(inject, ("",))
    fixed_variant = params.get("variant")

    def mark(slots: Sequence[_Slot], group: str = "") -> None:
        for k, s in enumerate(slots):
            s.inject = inject
            s.params = dict(params)
            if variants != ("",):
                s.params["variant"] = fixed_variant or variants[k % len(variants)]
            s.group = group

    if inject in ("V1", "V3", "V5", "V7", "V8"):
        chosen = rng.sample(applicable, min(count, len(applicable)))
        if inject == "V3":
            params.setdefault("odometer_km", round(rng.uniform(1000.0, 99999.0), 1))
        mark(chosen)
        if inject == "V8":
            for k, s in enumerate(chosen):
                options = [v for v in variants if v != "speed" or s.method in vres.ASM_SPEED]
                s.params["variant"] = fixed_variant if fixed_variant in options else \
                    options[k % len(options)]
    elif inject in ("V2", "V9"):
        lane = rng.choice(lanes)
        n = max(12 if inject == "V9" else 6, count)
        run = plan[lane][-n:]
        variant = fixed_variant or rng.choice(variants)
        if inject == "V2" and variant == "oil":
            params.setdefault("oil_temp_c", float(rng.choice([80.0, 85.0, 90.0])))
        mark(run)
        for s in run:
            s.params["variant"] = variant
    elif inject == "V4":
        seen: set[str] = set()
        chosen = []
        for s in rng.sample(every, len(every)):
            if s.vehicle.model.name not in seen:
                seen.add(s.vehicle.model.name)
                chosen.append(s)
            if len(chosen) >= max(3, count):
                break
        params.setdefault("calid", "CB" + "".join(rng.choice("0123456789ABCDEF")
                                                  for _ in range(8)))
        params.setdefault("cvn", "".join(rng.choice("0123456789ABCDEF") for _ in range(8)))
        mark(chosen)
    elif inject == "V6":
        variant = fixed_variant
        if variant in (None, "car"):
            lane = max(lanes, key=lambda ln: sum(s.method == "vmas" for s in plan[ln]))
            vm = [s for s in plan[lane] if s.method == "vmas"]
            k = max(2, min(count - (0 if variant else 2), len(vm)))
            if len(vm) >= 2:
                start = rng.randint(0, len(vm) - k)
                mark(vm[start:start + k], group=f"{site}-car")
                for s in vm[start:start + k]:
                    s.params["variant"] = "car"
        if variant in (None, "retest"):
            spare = [s for s in every if s.inject is None and s.index < len(plan[s.lane.id]) - 6]
            for g, s in enumerate(rng.sample(spare, min(2 if variant is None else count,
                                                         len(spare)))):
                # A car that really fails: dirty enough that no noise saves it.
                s.vehicle = replace(s.vehicle, emission_factor=8.0)
                mark([s], group=f"{site}-retest{g}")
                s.params.update(variant="retest", role="fail")
    elif inject == "V10":
        mark(every)


def reported_rows(events: Sequence[SiteEvent]) -> list[dict[str, Any]]:
    """What the lane software reports to the supervision platform for each finished test.

    One row per ``test_end`` in the columns of docs/reconciliation.md; start is the
    ``test_start`` time (else the end). Tamper with the rows to simulate a falsified report.
    """
    from stationseal.records import to_rfc3339

    starts = {e.detail.get("test_id"): e.time for e in events if e.event == "test_start"}
    rows: list[dict[str, Any]] = []
    for e in events:
        if e.event != "test_end":
            continue
        d = e.detail
        row: dict[str, Any] = {
            "test_id": d["test_id"], "site": e.site, "lane": d.get("lane", ""),
            "vehicle": d.get("vehicle", ""), "vin": d.get("vin", ""), "method": d["method"],
            "start": to_rfc3339(starts.get(d["test_id"], e.time)), "end": to_rfc3339(e.time),
            "result": d["result"],
        }
        for k, v in d.get("values", {}).items():
            row[k] = round(float(v), 4)
        rows.append(row)
    return rows
