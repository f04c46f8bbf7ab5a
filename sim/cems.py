"""Stack CEMS physics: a coal-fired unit's flue gas over days, as its CEMS reports it.

The relations the E detectors rely on, not a combustion model:

* load follows a daily cycle (low at night, high in the afternoon) with slow random
  wander; flue gas flow is proportional to load and to the excess air,
  ``flow ∝ load × (21 − O2_full) / (21 − O2)``;
* O2 falls with load (more excess air at low load), so dilution with air shows as O2 the
  load cannot explain;
* SO2, NOx and PM at the reference O2 (6 %) vary with load and with independent persistent
  fluctuations (separate control devices: FGD, SCR, ESP), and the analyzers read them
  diluted by the actual excess air, ``C = C_ref × (21 − O2) / 15``;
* routine operation: a daily zero/span check (flag C for 10 minutes), a weekly calibration
  with a coefficient change of a few percent (a sealed ``calibration_change`` event),
  monthly maintenance with a log (``maintenance_start``/``maintenance_end``, flag M) and
  the odd outage (flow 0, flag F) — the things detectors must not confuse with fraud.

Values are quantized to typical analyzer resolutions (0.1 mg/m³, 0.01 % O2, 100 m³/h).
Falsification patterns are added by :func:`sim.envpatterns.inject`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ingest.detectors.base import SiteInfo
from sim.envcommon import AR1, Record, SeqCounter, quantize, span_change
from stationseal.records import Sample, SiteEvent

#: Ultra-low emission limits for coal-fired power units (mg/m³ at 6 % O2).
CEMS_LIMITS: dict[str, float] = {"so2_mgm3": 35.0, "nox_mgm3": 50.0, "pm_mgm3": 10.0}

O2_REF = 6.0


@dataclass(frozen=True, slots=True)
class StackModel:
    flow_full_m3h: float = 1.2e6
    o2_full_pct: float = 5.5
    o2_min_load_pct: float = 9.0
    min_load: float = 0.45
    #: Concentrations at reference O2 and full load (mg/m³).
    so2_mgm3: float = 17.0
    nox_mgm3: float = 30.0
    pm_mgm3: float = 3.0
    #: Log-scale standard deviation and correlation time of concentration fluctuations.
    noise_sigma: float = 0.15
    noise_tau_s: float = 5400.0
    #: Probability that a simulated day contains an outage of 6-30 h.
    outage_per_day: float = 0.01


def cems_sites(site: str = "stack-1", lat: float = 36.06, lon: float = 120.38
               ) -> dict[str, SiteInfo]:
    return {site: SiteInfo(site, "stack_cems", lat, lon, dict(CEMS_LIMITS))}


def cems_series(
    start: float,
    hours: float,
    step_s: float,
    rng: random.Random,
    site: str = "stack-1",
    instrument: str = "cems",
    model: StackModel | None = None,
    gateway: str | None = None,
) -> Iterator[Record]:
    """Samples (one per ``step_s``) and the site's routine events, in time order."""
    m = model or StackModel()
    seq = SeqCounter(gateway or f"gw-{site}")
    load_ar = AR1(0.04, 3 * 3600, step_s, rng)
    ar = {k: AR1(m.noise_sigma, m.noise_tau_s, step_s, rng) for k in ("so2", "nox", "pm")}
    o2_ar = AR1(0.15, 1800, step_s, rng)
    n = int(hours * 3600 / step_s)
    span = {"so2_mgm3": 1.0, "nox_mgm3": 1.0, "pm_mgm3": 1.0}
    outage_until = -1.0
    maint: tuple[float, float] | None = None
    for i in range(n):
        t = start + i * step_s
        sec_of_day = t % 86400
        day = int(t // 86400)
        events: list[SiteEvent] = []
        if sec_of_day < step_s:
            # Day boundary: plan today's routine.
            if rng.random() < m.outage_per_day:
                outage_until = t + rng.uniform(6, 30) * 3600 + rng.uniform(0, 12) * 3600
            if day % 30 == 17:
                a = t + rng.uniform(8, 14) * 3600
                maint = (a, a + rng.uniform(1, 3) * 3600)
        if day % 7 == 3 and abs(sec_of_day - 10 * 3600) < step_s / 2:
            events.append(span_change(t, site, instrument, span, rng, seq))
        if maint is not None and abs(t - maint[0]) < step_s / 2:
            events.append(SiteEvent(t, site, instrument, "maintenance_start",
                                    {"reason": "monthly maintenance"}, seq.next()))
        if maint is not None and abs(t - maint[1]) < step_s / 2:
            events.append(SiteEvent(t, site, instrument, "maintenance_end", {}, seq.next()))
        yield from events

        h = sec_of_day / 3600
        load = 0.74 + 0.2 * math.cos(2 * math.pi * (h - 15) / 24) + load_ar.step(rng)
        load = min(1.0, max(m.min_load, load))
        o2 = (m.o2_full_pct + (m.o2_min_load_pct - m.o2_full_pct)
              * (1 - load) / (1 - m.min_load) + o2_ar.step(rng))
        flow = m.flow_full_m3h * load * (21 - m.o2_full_pct) / (21 - o2)
        dil = (21 - o2) / (21 - O2_REF)
        so2 = m.so2_mgm3 * (1 + 0.25 * (load - 0.75)) * math.exp(ar["so2"].step(rng)) * dil
        nox = m.nox_mgm3 * (0.75 + 0.35 * load) * math.exp(ar["nox"].step(rng)) * dil
        pm = m.pm_mgm3 * (0.8 + 0.3 * load) * math.exp(ar["pm"].step(rng)) * dil
        values = {
            "so2_mgm3": quantize(so2 * span["so2_mgm3"], 0.1),
            "nox_mgm3": quantize(nox * span["nox_mgm3"], 0.1),
            "pm_mgm3": quantize(pm * span["pm_mgm3"], 0.01),
            "o2_stack_pct": quantize(o2 + rng.gauss(0, 0.03), 0.01),
            "flow_m3h": quantize(flow * (1 + rng.gauss(0, 0.01)), 100),
            "flue_temp_c": quantize(112 + 30 * load + rng.gauss(0, 0.6), 0.1),
            "flue_kpa": quantize(-0.25 - 0.45 * load + rng.gauss(0, 0.02), 0.01),
            "moisture_pct": quantize(8.5 + 3 * load + rng.gauss(0, 0.15), 0.1),
        }
        flags: dict[str, str] = {}
        if t < outage_until:
            values.update({"so2_mgm3": quantize(rng.uniform(0, 0.3), 0.1), "nox_mgm3": 0.0,
                           "pm_mgm3": 0.0, "o2_stack_pct": quantize(20.6 + rng.gauss(0, 0.05),
                                                                    0.01),
                           "flow_m3h": 0.0, "flue_temp_c": quantize(35 + rng.gauss(0, 1), 0.1)})
            flags = {k: "F" for k in CEMS_LIMITS}
        elif maint is not None and maint[0] <= t < maint[1]:
            flags = {k: "M" for k in CEMS_LIMITS}
        elif 2 * 3600 <= sec_of_day < 2 * 3600 + 600:
            flags = {k: "C" for k in CEMS_LIMITS}
        yield Sample(t, site, instrument, values, flags, origin=seq.next())
