"""Ambient air-quality network physics: neighbouring stations sharing one air mass.

What neighbour-consistency (E1) and the other air rules rely on:

* a regional log-PM process with a correlation time of days (synoptic episodes and clean
  fronts) and a daily cycle (boundary-layer height) is shared by all stations;
* each station adds its own persistent deviation (local sources, a few hours) and a fixed
  bias (an urban station dirtier than a suburban one) — neighbours agree in trend, not
  in level;
* PM10 is PM2.5 plus a variable coarse fraction; CO follows PM (combustion) with its own
  noise; NO2 has a traffic cycle; O3 a photochemical afternoon peak, titrated by NO2;
  SO2 sits low. Values are integers (µg/m³) and CO has 0.1 mg/m³ steps, like the
  national network's data, so coarse channels repeat values as real ones do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from ingest.detectors.base import SiteInfo
from sim.envcommon import AR1, Record, SeqCounter, quantize
from stationseal.records import Sample

#: GB 3095-2012 grade II 24-hour limits (O3: 1-hour), for E5 and the integrity rules.
AIR_LIMITS: dict[str, float] = {"pm25_ugm3": 75.0, "pm10_ugm3": 150.0, "so2_ugm3": 150.0,
                                "no2_ugm3": 80.0, "co_mgm3": 4.0, "o3_ugm3": 200.0}


@dataclass(frozen=True, slots=True)
class Station:
    id: str
    lat: float
    lon: float
    #: Log-scale bias of this station's particulates against the regional level.
    bias: float = 0.0


def default_stations(n: int = 6) -> list[Station]:
    """``n`` stations on a ring of ~12 km radius around a city centre."""
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        out.append(Station(f"aq-{i + 1}", round(39.95 + 0.11 * math.sin(a), 4),
                           round(116.40 + 0.14 * math.cos(a), 4), bias=0.12 * math.cos(3 * a)))
    return out


def air_sites(stations: list[Station] | None = None) -> dict[str, SiteInfo]:
    st = stations or default_stations()
    return {s.id: SiteInfo(s.id, "air_quality", s.lat, s.lon, dict(AIR_LIMITS),
                           [o.id for o in st if o.id != s.id]) for s in st}


def air_network(
    start: float,
    hours: float,
    step_s: float,
    rng: random.Random,
    stations: list[Station] | None = None,
    instrument: str = "aq",
    local_sigma: float = 0.12,
) -> Iterator[Record]:
    """Samples of every station per time step, in time order."""
    st = stations or default_stations()
    reg = AR1(0.7, 36 * 3600, step_s, rng)
    reg_no2 = AR1(0.3, 24 * 3600, step_s, rng)
    reg_o3 = AR1(0.25, 48 * 3600, step_s, rng)
    local = {s.id: {k: AR1(sg, tau, step_s, rng) for k, sg, tau in (
        ("pm", local_sigma, 6 * 3600), ("coarse", 0.15, 4 * 3600), ("co", 0.15, 6 * 3600),
        ("no2", 0.2, 3 * 3600), ("o3", 0.12, 3 * 3600), ("so2", 0.3, 12 * 3600))}
        for s in st}
    seqs = {s.id: SeqCounter(f"gw-{s.id}") for s in st}
    for i in range(int(hours * 3600 / step_s)):
        t = start + i * step_s
        h = (t / 3600 + 8) % 24  # local time (UTC+8) drives the daily cycles
        g = reg.step(rng)
        g_no2 = reg_no2.step(rng)
        g_o3 = reg_o3.step(rng)
        blh = 0.25 * math.cos(2 * math.pi * (h - 3) / 24)  # night-time accumulation
        traffic = 1 + 0.35 * math.cos(2 * math.pi * (h - 8) / 24) \
            + 0.25 * math.cos(4 * math.pi * (h - 19) / 24)
        sun = max(0.0, math.sin(math.pi * (h - 7) / 12)) if 7 <= h <= 19 else 0.0
        for s in st:
            lo = local[s.id]
            pm25 = math.exp(math.log(55) + g + blh + s.bias + lo["pm"].step(rng))
            pm25 *= 1 + rng.gauss(0, 0.04)
            pm10 = pm25 * (1.45 + 0.25 * lo["coarse"].step(rng)) + abs(rng.gauss(0, 3))
            co = (0.35 + 0.011 * pm25) * math.exp(lo["co"].step(rng))
            no2 = 38 * traffic * math.exp(g_no2 + 0.5 * blh + lo["no2"].step(rng))
            o3 = max(2.0, (25 + 110 * sun) * math.exp(g_o3 + lo["o3"].step(rng)) - 0.3 * no2)
            so2 = 7 * math.exp(0.5 * g + lo["so2"].step(rng))
            values = {
                "pm25_ugm3": quantize(max(pm25, 2), 1), "pm10_ugm3": quantize(max(pm10, 4), 1),
                "so2_ugm3": quantize(max(so2, 2), 1), "no2_ugm3": quantize(max(no2, 2), 1),
                "co_mgm3": quantize(max(co, 0.1), 0.1), "o3_ugm3": quantize(o3, 1),
            }
            yield Sample(t, s.id, instrument, values, origin=seqs[s.id].next())
