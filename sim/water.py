"""Effluent water-quality physics: a municipal treatment plant's outfall, hourly.

Online water analyzers (COD, NH3-N, TP, TN) report one result per measuring cycle, here
hourly. The model keeps the relations detectors rely on: flow with the two daily peaks
of a sewer catchment, pollutant concentrations that follow the plant's load a few hours
later plus independent persistent fluctuations, pH and temperature on their own slow
processes, a weekly analyzer calibration (small coefficient change, sealed event) and a
monthly logged maintenance (flag M) — routine that detectors must not mistake for fraud.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ingest.detectors.base import SiteInfo
from sim.envcommon import AR1, Record, SeqCounter, quantize, span_change
from stationseal.records import Sample, SiteEvent

#: GB 18918-2002 class 1A effluent limits (mg/L).
WATER_LIMITS: dict[str, float] = {"cod_mgl": 50.0, "nh3n_mgl": 5.0, "tp_mgl": 0.5,
                                  "tn_mgl": 15.0}


@dataclass(frozen=True, slots=True)
class OutfallModel:
    flow_ls: float = 260.0
    cod_mgl: float = 27.0
    nh3n_mgl: float = 1.6
    tp_mgl: float = 0.24
    tn_mgl: float = 9.0
    noise_sigma: float = 0.18
    noise_tau_s: float = 6 * 3600.0


def water_sites(site: str = "outfall-1", lat: float = 30.59, lon: float = 114.30
                ) -> dict[str, SiteInfo]:
    return {site: SiteInfo(site, "water_quality", lat, lon, dict(WATER_LIMITS))}


def water_series(
    start: float,
    hours: float,
    step_s: float,
    rng: random.Random,
    site: str = "outfall-1",
    instrument: str = "water",
    model: OutfallModel | None = None,
    gateway: str | None = None,
) -> Iterator[Record]:
    m = model or OutfallModel()
    seq = SeqCounter(gateway or f"gw-{site}")
    ar = {k: AR1(m.noise_sigma, m.noise_tau_s, step_s, rng)
          for k in ("cod", "nh3n", "tp", "tn", "flow")}
    ph_ar = AR1(0.12, 12 * 3600, step_s, rng)
    temp_ar = AR1(0.6, 48 * 3600, step_s, rng)
    span = dict.fromkeys(WATER_LIMITS, 1.0)
    maint: tuple[float, float] | None = None
    for i in range(int(hours * 3600 / step_s)):
        t = start + i * step_s
        sec = t % 86400
        day = int(t // 86400)
        if sec < step_s and day % 30 == 11:
            a = t + rng.uniform(8, 14) * 3600
            maint = (a, a + rng.uniform(2, 4) * 3600)
        if maint is not None and abs(t - maint[0]) < step_s / 2:
            yield SiteEvent(t, site, instrument, "maintenance_start",
                            {"reason": "analyzer reagent change"}, seq.next())
        if maint is not None and abs(t - maint[1]) < step_s / 2:
            yield SiteEvent(t, site, instrument, "maintenance_end", {}, seq.next())
        if day % 7 == 5 and abs(sec - 9 * 3600) < step_s / 2:
            yield span_change(t, site, instrument, span, rng, seq)
        h = sec / 3600
        diurnal = 1 + 0.25 * math.sin(2 * math.pi * (h - 7) / 24) \
            + 0.1 * math.sin(4 * math.pi * (h - 9) / 24)
        lagged = 1 + 0.12 * math.sin(2 * math.pi * (h - 11) / 24)
        flow = m.flow_ls * diurnal * math.exp(0.5 * ar["flow"].step(rng))
        values = {
            "water_flow_ls": quantize(flow, 0.1),
            "cod_mgl": quantize(m.cod_mgl * lagged * math.exp(ar["cod"].step(rng))
                                * span["cod_mgl"], 0.1),
            "nh3n_mgl": quantize(m.nh3n_mgl * lagged * math.exp(ar["nh3n"].step(rng))
                                 * span["nh3n_mgl"], 0.01),
            "tp_mgl": quantize(m.tp_mgl * lagged * math.exp(ar["tp"].step(rng))
                               * span["tp_mgl"], 0.001),
            "tn_mgl": quantize(m.tn_mgl * lagged * math.exp(ar["tn"].step(rng))
                               * span["tn_mgl"], 0.01),
            "ph": quantize(7.15 + ph_ar.step(rng) + rng.gauss(0, 0.02), 0.01),
            "water_temp_c": quantize(19 + 0.6 * math.sin(2 * math.pi * (h - 15) / 24)
                                     + temp_ar.step(rng), 0.1),
        }
        flags = {k: "M" for k in WATER_LIMITS} \
            if maint is not None and maint[0] <= t < maint[1] else {}
        yield Sample(t, site, instrument, values, flags, origin=seq.next())
