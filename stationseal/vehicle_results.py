"""Vehicle inspection results from 1 Hz process data: phases, limits and the scoring formulas.

The simulator (which plays a lane), the detectors (which judge what sealed instruments
measured) and the reconciliation (which compares that with what a station reported) must
score a test the same way, otherwise a "reported ≠ measured" alert could come from two
formulas disagreeing rather than from a falsified report. So the scoring lives here, once.

Formulas follow GB 18285-2018 (gasoline: two-speed idle, ASM, VMAS) and GB 3847-2018
(diesel: free acceleration, lug-down) in simplified form; limits are the reference values
of docs/reconciliation.md and the shared falsification-patterns document. Regions differ:
every limit can be overridden per site (``"<method>.<field>"`` keys in the site's limits).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

#: Phase names a lane attaches to each second (``TestContext.phase``), per method, in order.
PHASES: dict[str, tuple[str, ...]] = {
    "idle": ("precondition", "high_idle_settle", "high_idle", "idle_settle", "idle"),
    "asm5025": ("accel", "settle", "stable", "fast", "full"),
    "asm2540": ("accel", "settle", "stable", "fast", "full"),
    "vmas": ("trace",),
    "free_accel": ("purge", "measure"),
    "lug_down": ("accel", "scan", "settle_100", "measure_100", "settle_80", "measure_80"),
}

#: Chinese names of the methods and phases, for alert texts (GB 18285 / GB 3847 terms).
METHOD_ZH: dict[str, str] = {
    "idle": "双怠速", "asm5025": "稳态工况 ASM5025", "asm2540": "稳态工况 ASM2540",
    "vmas": "简易瞬态工况", "free_accel": "自由加速", "lug_down": "加载减速",
}
PHASE_ZH: dict[str, str] = {
    "precondition": "预热", "high_idle_settle": "高怠速稳定", "high_idle": "高怠速测量",
    "idle_settle": "怠速稳定", "idle": "怠速测量", "accel": "加速", "settle": "稳定",
    "stable": "稳定计时", "fast": "快速检测段", "full": "全程检测段", "trace": "工况曲线",
    "purge": "吹拂", "measure": "测量", "scan": "功率扫描", "settle_100": "100% 点稳定",
    "measure_100": "100% 点测量", "settle_80": "80% 点稳定", "measure_80": "80% 点测量",
}

#: Phases whose seconds enter the result: the only seconds whose integrity decides a verdict.
SCORED_PHASES: frozenset[str] = frozenset(
    {"high_idle", "idle", "fast", "full", "trace", "measure", "measure_100", "measure_80"}
)

GASOLINE_METHODS: frozenset[str] = frozenset({"idle", "asm5025", "asm2540", "vmas"})
DIESEL_METHODS: frozenset[str] = frozenset({"free_accel", "lug_down"})
DYNO_METHODS: frozenset[str] = frozenset({"asm5025", "asm2540", "vmas", "lug_down"})

#: ASM target speed (km/h) and tolerance band per GB 18285-2018.
ASM_SPEED: dict[str, float] = {"asm5025": 25.0, "asm2540": 40.0}
ASM_SPEED_TOLERANCE = 1.5

#: Seconds each scored phase lasts on a complete test (VMAS: the 195 s urban cycle).
EXPECTED_PHASE_SECONDS: dict[str, dict[str, int]] = {
    "idle": {"high_idle": 30, "idle": 30},
    "asm5025": {"fast": 10},
    "asm2540": {"fast": 10},
    "vmas": {"trace": 195},
    "free_accel": {"measure": 57},
    "lug_down": {"measure_100": 10, "measure_80": 10},
}

#: Reference limits (upper bounds) per method and result field.
LIMITS: dict[str, dict[str, float]] = {
    "idle": {"co_pct_hi": 0.3, "hc_ppm_hi": 50.0, "co_pct": 0.6, "hc_ppm": 80.0},
    "asm5025": {"hc_ppm": 90.0, "co_pct": 0.5, "no_ppm": 700.0},
    "asm2540": {"hc_ppm": 80.0, "co_pct": 0.4, "no_ppm": 650.0},
    "vmas": {"co_gkm": 5.0, "hcnox_gkm": 1.0},
    "free_accel": {"k_m1": 1.2},
    "lug_down": {"k_m1": 1.2, "nox_ppm": 1500.0},
}
#: High-idle lambda must lie in this band (two-speed idle).
IDLE_LAMBDA_RANGE = (0.95, 1.05)

#: Result fields per method, the columns a station reports (docs/reconciliation.md).
RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "idle": ("co_pct_hi", "hc_ppm_hi", "lambda_hi", "co_pct", "hc_ppm"),
    "asm5025": ("hc_ppm", "co_pct", "no_ppm"),
    "asm2540": ("hc_ppm", "co_pct", "no_ppm"),
    "vmas": ("co_gkm", "hcnox_gkm"),
    "free_accel": ("k_m1", "opacity_pct"),
    "lug_down": ("k_m1", "nox_ppm"),
}

# Fuel composition assumed by the analyzers' lambda formula (gasoline, per carbon atom).
H_C_RATIO = 1.7261
O_C_RATIO = 0.0176
#: Hexane-equivalent HC ppm counts six carbons per molecule in the carbon balance.
HC_CARBON_FACTOR = 6.0
#: Opacimeter effective optical path length (m), GB 3847: N = 100 (1 - exp(-K L)).
OPACITY_PATH_M = 0.430
#: Gas densities at 0 °C, 101.325 kPa (g/L) used for VMAS mass rates; HC per C1 unit, NOx as NO2.
DENSITY_G_L = {"co": 1.250, "hc": 0.619, "nox": 2.053}
AIR_O2_PCT = 20.9


def brettschneider(co2_pct: float, co_pct: float, o2_pct: float, hc_ppm: float) -> float:
    """Lambda from exhaust gas concentrations (Brettschneider), as analyzers compute it.

    Homogeneous of degree one in the concentrations: scaling every channel by the same
    factor leaves lambda unchanged, which is why an analyzer scaled down (V5) still shows
    lambda ≈ 1 while CO+CO2 falls far below what combustion can produce.
    """
    hc_pct = hc_ppm * 1e-4
    carbon = co2_pct + co_pct + HC_CARBON_FACTOR * hc_pct
    if carbon <= 0.0:
        return float("nan")
    ratio = co_pct / co2_pct if co2_pct > 0 else 0.0
    num = (
        co2_pct
        + co_pct / 2.0
        + o2_pct
        + (H_C_RATIO / 4.0 * 3.5 / (3.5 + ratio) - O_C_RATIO / 2.0) * (co2_pct + co_pct)
    )
    den = (1.0 + H_C_RATIO / 4.0 - O_C_RATIO / 2.0) * carbon
    return num / den


def opacity_from_k(k_m1: float) -> float:
    """Opacity N (%) from the absorption coefficient K (1/m) over the standard path."""
    return 100.0 * (1.0 - math.exp(-k_m1 * OPACITY_PATH_M))


def limits_for(method: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Reference limits of a method, with ``"<method>.<field>"`` overrides (e.g. a region)."""
    lim = dict(LIMITS.get(method, {}))
    for key, value in (overrides or {}).items():
        m, _, fld = key.partition(".")
        if m == method and fld:
            lim[fld] = float(value)
    return lim


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _col(
    rows: Sequence[Mapping[str, float]], phases: Sequence[str], phase: str, sig: str
) -> list[float]:
    return [r[sig] for r, p in zip(rows, phases, strict=True) if p == phase and sig in r]


def compute_results(
    method: str, rows: Sequence[Mapping[str, float]], phases: Sequence[str],
    corrected: bool = False,
) -> dict[str, float]:
    """Score one test: ``rows[i]`` holds every signal measured in second i, ``phases[i]`` its phase.

    Fields that the data cannot support (a channel missing, a phase absent) are left out
    rather than guessed, so a caller can tell "not measured" from "measured zero".
    ``corrected``: ASM values multiplied second by second by the analyzer's dilution factor
    (and NO also by the humidity factor), as platforms that report corrected ASM results do.
    """
    if len(rows) != len(phases):
        raise ValueError(f"{len(rows)} rows but {len(phases)} phase labels")
    out: dict[str, float] = {}

    def put(name: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            out[name] = value

    if method == "idle":
        put("co_pct_hi", _mean(_col(rows, phases, "high_idle", "co_pct")))
        put("hc_ppm_hi", _mean(_col(rows, phases, "high_idle", "hc_ppm")))
        put("lambda_hi", _mean(_col(rows, phases, "high_idle", "lambda")))
        put("co_pct", _mean(_col(rows, phases, "idle", "co_pct")))
        put("hc_ppm", _mean(_col(rows, phases, "idle", "hc_ppm")))
    elif method in ASM_SPEED:
        # Fast mode scores seconds 15-25 of the mode; a test that went on to full mode (at
        # least 10 s of it) is scored on its last 10 seconds.
        full = [i for i, p in enumerate(phases) if p == "full"]
        idx = full[-10:] if len(full) >= 10 else [i for i, p in enumerate(phases) if p == "fast"]
        for sig in ("hc_ppm", "co_pct", "no_ppm"):
            put(sig, _mean([rows[i][sig] * (_asm_factor(rows[i], sig) if corrected else 1.0)
                            for i in idx if sig in rows[i]]))
    elif method == "vmas":
        out.update(_vmas_mass(rows, phases))
    elif method == "free_accel":
        peaks_k, peaks_n = _snap_peaks(rows, phases)
        put("k_m1", _mean(peaks_k[-3:]))
        put("opacity_pct", _mean(peaks_n[-3:]))
    elif method == "lug_down":
        k100 = _mean(_col(rows, phases, "measure_100", "k_m1"))
        k80 = _mean(_col(rows, phases, "measure_80", "k_m1"))
        ks = [k for k in (k100, k80) if k is not None]
        put("k_m1", max(ks) if ks else None)
        put("nox_ppm", _mean(_col(rows, phases, "measure_80", "nox_ppm")))
    else:
        raise ValueError(f"unknown test method {method!r}")
    return out


def _asm_factor(row: Mapping[str, float], sig: str) -> float:
    f = row.get("dilution_factor", 1.0)
    if sig == "no_ppm":
        f *= row.get("humidity_factor", 1.0)
    return f


def _vmas_mass(rows: Sequence[Mapping[str, float]], phases: Sequence[str]) -> dict[str, float]:
    """g/km from raw concentrations and the flowmeter's dilution O2 (VMAS principle).

    Exhaust flow = diluted flow x (20.9 - O2 diluted) / (20.9 - O2 raw): the O2 deficit
    in the diluted stream is what the raw exhaust brought in.
    """
    co_g = hc_g = nox_g = dist_m = 0.0
    n = 0
    for r, p in zip(rows, phases, strict=True):
        if p != "trace":
            continue
        need = ("co_pct", "hc_ppm", "o2_pct", "flow_lps", "flow_o2_pct", "speed_kmh")
        if any(k not in r for k in need):
            continue
        denom = AIR_O2_PCT - r["o2_pct"]
        q_exh = r["flow_lps"] * (AIR_O2_PCT - r["flow_o2_pct"]) / denom if denom > 0.5 else 0.0
        q_exh = max(q_exh, 0.0)
        co_g += q_exh * r["co_pct"] / 100.0 * DENSITY_G_L["co"]
        hc_g += q_exh * r["hc_ppm"] * HC_CARBON_FACTOR * 1e-6 * DENSITY_G_L["hc"]
        nox_g += q_exh * r.get("no_ppm", 0.0) * 1e-6 * DENSITY_G_L["nox"]
        dist_m += r["speed_kmh"] / 3.6
        n += 1
    if n == 0 or dist_m < 100.0:
        return {}
    km = dist_m / 1000.0
    return {"co_gkm": co_g / km, "hcnox_gkm": (hc_g + nox_g) / km}


def _snap_peaks(
    rows: Sequence[Mapping[str, float]], phases: Sequence[str]
) -> tuple[list[float], list[float]]:
    """Peak K and N of each throttle snap in the measuring phase.

    Snaps are found on rpm rising edges (half-way between idle and governed speed), not on
    K itself, so that a clean engine with barely visible smoke still yields its peaks.
    """
    idx = [i for i, p in enumerate(phases) if p == "measure" and "k_m1" in rows[i]]
    if not idx:
        return [], []
    rpms = [rows[i].get("rpm", 0.0) for i in idx]
    lo, hi = min(rpms), max(rpms)
    thr = lo + 0.5 * (hi - lo)
    edges = [j for j in range(len(idx)) if rpms[j] >= thr and (j == 0 or rpms[j - 1] < thr)]
    if hi - lo < 500.0 or not edges:
        edges = [0]
    pk: list[float] = []
    pn: list[float] = []
    for e in edges:
        window = [idx[j] for j in range(max(0, e - 1), min(len(idx), e + 8))]
        pk.append(max(rows[i]["k_m1"] for i in window))
        pn.append(max(rows[i].get("opacity_pct", opacity_from_k(rows[i]["k_m1"])) for i in window))
    return pk, pn


def verdict(
    method: str,
    results: Mapping[str, float],
    overrides: Mapping[str, float] | None = None,
) -> str:
    """"pass" or "fail" against the limits; a test lacking a limited field fails (no score)."""
    lim = limits_for(method, overrides)
    for fld, limit in lim.items():
        if fld not in results or results[fld] > limit:
            return "fail"
    if method == "idle":
        lam = results.get("lambda_hi")
        if lam is None or not IDLE_LAMBDA_RANGE[0] <= lam <= IDLE_LAMBDA_RANGE[1]:
            return "fail"
    return "pass"
