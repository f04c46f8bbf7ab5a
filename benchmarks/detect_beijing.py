"""Environmental detectors on real data: six Beijing stations, 2013-03 to 2017-02, hourly.

1. **False alerts.** All E rules over the untouched data; alerts per station-month by rule
   and severity. Every high alert is classified against the raw CSV, independently of
   the detector: it is a *genuine instrument fault* when its window overlaps a run of at
   least 24 identical consecutive values of the signal it names (any signal of the
   station for rules that name none). Target: at most 1 high alert per station-month that
   is not a genuine fault.
2. **Recall.** Copies of the data with falsifications injected by sim/envpatterns.py —
   E1 (PM2.5 and PM10 scaled to 30-60 % for 6-48 h), E4 (a signal frozen for 6-24 h),
   E5 (a signal clamped just under its limit for 7-10 days), E7 (a signal's variability
   squashed to 5-15 % for a week) — staggered so that no two stations are manipulated at
   the same time; recall is the share of injections overlapped by an alert of that rule
   at that station (any severity / medium and above / high).

The data (UCI "Beijing Multi-Site Air-Quality", CC BY 4.0) are read from
``../shared/data/beijing-air-quality`` (or ``--data``). Sample origins are
``(csv-<station>, row No)`` so that alert evidence points at CSV rows.

    .venv/bin/python -m benchmarks.detect_beijing [--quick] [--data DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import bisect
import csv
import gzip
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.detectors.base import Alert, SiteInfo
from ingest.detectors.engine import DetectionEngine
from sim.envpatterns import inject
from stationseal.records import Sample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beijing-air-quality"
CST = timezone(timedelta(hours=8))
HOUR = 3600.0
DAY = 86400.0

#: Approximate coordinates of the national monitoring stations.
STATIONS: dict[str, tuple[float, float]] = {
    "aotizhongxin": (39.982, 116.397),
    "changping": (40.217, 116.230),
    "dingling": (40.292, 116.220),
    "dongsi": (39.929, 116.417),
    "guanyuan": (39.929, 116.339),
    "gucheng": (39.914, 116.184),
}
COLUMNS = {"PM2.5": "pm25_ugm3", "PM10": "pm10_ugm3", "SO2": "so2_ugm3", "NO2": "no2_ugm3",
           "CO": "co_mgm3", "O3": "o3_ugm3"}
#: GB 3095-2012 grade II (24-hour; O3 1-hour).
LIMITS = {"pm25_ugm3": 75.0, "pm10_ugm3": 150.0, "so2_ugm3": 150.0, "no2_ugm3": 80.0,
          "co_mgm3": 4.0, "o3_ugm3": 200.0}
E_RULES = ["E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"]


def beijing_sites() -> dict[str, SiteInfo]:
    return {s: SiteInfo(s, "air_quality", lat, lon, dict(LIMITS),
                        [o for o in STATIONS if o != s]) for s, (lat, lon) in STATIONS.items()}


def load_station(data: Path, station: str, end: float = float("inf")) -> list[Sample]:
    """One station's samples before ``end``; CO converted from µg/m³ to mg/m³."""
    out: list[Sample] = []
    [path] = data.glob(f"PRSA_Data_{station.capitalize()}_*.csv.gz")
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            t = datetime(int(row["year"]), int(row["month"]), int(row["day"]),
                         int(row["hour"]), tzinfo=CST).timestamp()
            if t >= end:
                break
            values = {}
            for col, sig in COLUMNS.items():
                if row[col] != "NA":
                    v = float(row[col])
                    values[sig] = round(v / 1000, 4) if col == "CO" else v
            out.append(Sample(t, station, "aq", values,
                              origin=(f"csv-{station}", int(row["No"]))))
    return out


def load(data: Path, quick: bool) -> list[Sample]:
    """All stations' samples, time-ordered (``quick``: the first year)."""
    end = datetime(2014, 3, 1, tzinfo=CST).timestamp() if quick else float("inf")
    out = [s for station in STATIONS for s in load_station(data, station, end)]
    out.sort(key=lambda s: s.time)
    return out


def detect(sites: dict[str, SiteInfo], samples: Iterable[Sample]) -> tuple[list[Alert], float,
                                                                              int]:
    eng = DetectionEngine(sites, rules=E_RULES)
    t0 = time.perf_counter()
    n = 0
    for s in samples:
        eng.feed_sample(s)
        n += 1
    eng.finish()
    return [u.alert for u in eng.alerts()], time.perf_counter() - t0, n


def stuck_runs(samples: list[Sample], min_hours: int = 24) -> dict[tuple[str, str],
                                                                   list[tuple[float, float]]]:
    """Raw-data runs of identical consecutive values (missing hours skipped)."""
    runs: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    cur: dict[tuple[str, str], list[Any]] = {}
    for s in samples:
        for sig, v in s.values.items():
            k = (s.site, sig)
            c = cur.get(k)
            if c is not None and c[0] == v:
                c[2] = s.time
                c[3] += 1
            else:
                if c is not None and c[3] >= min_hours:
                    runs[k].append((c[1], c[2]))
                cur[k] = [v, s.time, s.time, 1]
    for k, c in cur.items():
        if c[3] >= min_hours:
            runs[k].append((c[1], c[2]))
    return runs


def is_fault(a: Alert, runs: dict[tuple[str, str], list[tuple[float, float]]]) -> bool:
    sig = a.evidence.get("signal")
    sigs = [sig] if isinstance(sig, str) else list(COLUMNS.values())
    return any(s < a.end and e + HOUR > a.start for g in sigs for s, e in runs.get((a.site, g), ()))


def station_months(samples: list[Sample]) -> int:
    return len({(s.site, datetime.fromtimestamp(s.time, CST).strftime("%Y-%m")) for s in samples})


# -- injections ---------------------------------------------------------------------------

def plan(pattern: str, samples: list[Sample], rng: random.Random) -> list[dict[str, Any]]:
    """Non-overlapping injections: one station at a time, stations taking turns."""
    t_first, t_last = samples[0].time, samples[-1].time
    spec = {"E1": (10, (6, 48)), "E4": (6, (6, 24)), "E5": (40, (7 * 24, 10 * 24)),
            "E7": (30, (7 * 24, 7 * 24))}[pattern]
    gap_days, (lo, hi) = spec
    stations = list(STATIONS)
    out = []
    t = t_first + 21 * DAY  # leave E1/E7 their history
    i = 0
    while True:
        hours = rng.randint(lo, hi)
        start = t + rng.randint(0, 23) * HOUR
        if start + hours * HOUR > t_last - 2 * DAY:
            break
        station = stations[i % len(stations)]
        kw: dict[str, Any] = {}
        if pattern == "E4":
            kw["signal"] = rng.choice(list(COLUMNS.values()))
        elif pattern == "E5":
            # The operator holds values under the limit in a period that would exceed it:
            # scale the period so its median is 1.1-1.4 x the limit, then clamp.
            sig = kw["signal"] = rng.choice(["pm25_ugm3", "pm10_ugm3", "no2_ugm3"])
            vals = [x.values[sig] for x in samples if x.site == station
                    and start <= x.time < start + hours * HOUR and sig in x.values]
            if vals:
                kw["excess"] = rng.uniform(1.1, 1.4) * LIMITS[sig] / max(median(vals), 1.0)
        elif pattern == "E7":
            kw["signals"] = [rng.choice(["pm25_ugm3", "pm10_ugm3", "no2_ugm3", "co_mgm3",
                                         "o3_ugm3"])]
        out.append({"site": station, "start": start, "end": start + hours * HOUR, **kw})
        t += gap_days * DAY
        i += 1
    return out


def injected(pattern: str, samples: list[Sample], injections: list[dict[str, Any]],
             rng: random.Random) -> list[Sample]:
    """A copy with every injection applied to its station's samples around its window."""
    by_site: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_site[s.site].append(s)
    for inj in injections:
        recs = by_site[inj["site"]]
        times = [s.time for s in recs]
        a = bisect.bisect_left(times, inj["start"] - DAY)
        b = bisect.bisect_left(times, inj["end"])
        kw = {k: v for k, v in inj.items() if k not in ("site", "start", "end")}
        new = inject(pattern, recs[a:b], site=inj["site"], kind="air_quality",
                     start=inj["start"], end=inj["end"], rng=rng, limits=LIMITS, **kw)
        recs[a:b] = [r for r in new if isinstance(r, Sample)]
    out = [s for recs in by_site.values() for s in recs]
    out.sort(key=lambda s: s.time)
    return out


def recall(pattern: str, alerts: list[Alert], injections: list[dict[str, Any]]
           ) -> dict[str, Any]:
    found = {"any": 0, "medium+": 0, "high": 0}
    by_signal: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for inj in injections:
        hits = [a for a in alerts if a.rule == pattern and a.site == inj["site"]
                and a.start < inj["end"] and a.end > inj["start"]
                and (pattern != "E1" or a.evidence.get("finding") == "below_neighbours")]
        sevs = {a.severity for a in hits}
        found["any"] += bool(hits)
        found["medium+"] += bool(sevs & {"medium", "high"})
        found["high"] += "high" in sevs
        sig = inj.get("signal") or ",".join(inj.get("signals", [])) or "pm"
        by_signal[sig][0] += 1
        by_signal[sig][1] += bool(hits)
    n = len(injections)
    return {"n": n, **{k: v / n for k, v in found.items()}, "by_signal": dict(by_signal)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="first year only (CI smoke)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=2013)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"skipped: Beijing data not found at {args.data}")
        return 0
    t0 = time.perf_counter()
    samples = load(args.data, args.quick)
    t_load = time.perf_counter() - t0
    sites = beijing_sites()
    months = station_months(samples)
    print(f"{len(samples)} hourly samples, {len(STATIONS)} stations, {months} station-months "
          f"(loaded in {t_load:.1f} s)")

    alerts, t_det, n = detect(sites, samples)
    print(f"detection: {n / t_det:,.0f} samples/s (all E rules; CSV parsing baseline "
          f"{n / t_load:,.0f} rows/s)\n")
    runs = stuck_runs(samples)
    table: Counter[tuple[str, str]] = Counter((a.rule, a.severity) for a in alerts)
    print("1. untouched data: alerts per station-month")
    print(f"{'rule':<6}{'high':>8}{'medium':>9}{'low':>8}   high that are genuine faults")
    high_nonfault: Counter[str] = Counter()
    for rule in E_RULES:
        highs = [a for a in alerts if a.rule == rule and a.severity == "high"]
        faults = sum(is_fault(a, runs) for a in highs)
        for a in highs:
            if not is_fault(a, runs):
                month = datetime.fromtimestamp(a.start, CST).strftime("%Y-%m")
                high_nonfault[f"{a.site} {month}"] += 1
        print(f"{rule:<6}{table[(rule, 'high')] / months:>8.3f}"
              f"{table[(rule, 'medium')] / months:>9.3f}{table[(rule, 'low')] / months:>8.3f}"
              f"   {faults}/{len(highs)}")
    total_nf = sum(high_nonfault.values())
    worst = max(high_nonfault.values(), default=0)
    print(f"high alerts that are not genuine faults: {total_nf} = {total_nf / months:.3f} per "
          f"station-month (target <= 1); worst station-month: {worst}")
    findings = Counter((a.rule, a.evidence.get("finding"), a.severity) for a in alerts)
    print("by finding: " + ", ".join(f"{r}/{f}/{s} {c}" for (r, f, s), c in
                                      sorted(findings.items())))

    print("\n2. recall on injected copies")
    print(f"{'rule':<6}{'n':>5}{'any':>8}{'medium+':>9}{'high':>8}   by signal (found/n)")
    rng = random.Random(args.seed)
    for pattern in ("E1", "E4", "E5", "E7"):
        injections = plan(pattern, samples, rng)
        dirty = injected(pattern, samples, injections, random.Random(rng.random()))
        got, _, _ = detect(sites, dirty)
        r = recall(pattern, got, injections)
        sig = ", ".join(f"{k} {v[1]}/{v[0]}" for k, v in sorted(r["by_signal"].items()))
        print(f"{pattern:<6}{r['n']:>5}{r['any']:>8.2f}{r['medium+']:>9.2f}{r['high']:>8.2f}"
              f"   {sig}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
