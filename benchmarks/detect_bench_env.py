"""Recall, precision and false alerts of the environmental detectors on labelled scenarios.

Scenarios come from the physics models of sim/cems.py (coal-fired stack, 5-minute CEMS
data with daily zero/span checks, weekly calibrations, logged monthly maintenance and
outages), sim/water.py (treatment plant outfall, hourly) and sim/air.py (six stations
sharing one air mass, hourly). Each scenario is ``--days`` days (default 40: three weeks
of history before anything happens); a labelled scenario has one pattern injected by
sim/envpatterns.py at a random time after day 24, a clean scenario none. All E rules run
on every scenario through the detection engine, as in the ingest service.

Scoring, per rule R: an alert of R at the injected site overlapping the injected window
of an R scenario is a true positive; an alert of R overlapping the window of another
pattern is a *cross-detection* (a real finding, of a different trick: E7 fires when E5
squeezes values under a limit); any other alert of R is false. Recall: share of R
scenarios with a true positive (any severity, and with severity high). Precision:
TP / (TP + false) — cross-detections are listed apart, and a strict figure counting them
as false is printed too. Clean scenarios give false alerts per station-day by severity.
Targets: recall ≥ 0.95 and precision ≥ 0.9 per rule. The detection wall time is printed
next to the time the simulators took to make the same data (a baseline from the same run).

    .venv/bin/python -m benchmarks.detect_bench_env [--quick] [--per-rule N] [--clean N]
        [--kinds air_quality] [--patterns E1] [--params PARAMS.yaml]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.detectors.base import Alert, SiteInfo
from ingest.detectors.engine import DetectionEngine
from ingest.detectors.sites import load_params
from sim.air import air_network, air_sites
from sim.cems import cems_series, cems_sites
from sim.envcommon import Record
from sim.envpatterns import inject
from sim.water import water_series, water_sites
from stationseal.records import Sample

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
HOUR = 3600.0
DAY = 86400.0
E_RULES = ["E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"]


@dataclass(frozen=True)
class Kind:
    name: str
    series: Callable[..., Iterator[Record]]
    sites: Callable[[], dict[str, SiteInfo]]
    step_s: float
    target: str
    #: (label, rule, hours range, extra inject arguments)
    patterns: tuple[Pattern, ...]


Pattern = tuple[str, str, tuple[float, float], dict[str, Any]]
COMMON: tuple[Pattern, ...] = (
    ("E3", "E3", (24, 48), {}),
    ("E4 flat", "E4", (6, 24), {"mode": "flat"}),
    ("E4 repeat", "E4", (24, 48), {"mode": "repeat"}),
    ("E5", "E5", (7 * 24, 10 * 24), {}),
    ("E7", "E7", (7 * 24, 7 * 24), {}),
    ("E8", "E8", (6, 24), {}),
)
KINDS = (
    Kind("stack_cems", lambda s, h, st, r: cems_series(s, h, st, r), cems_sites, 300.0,
         "stack-1", (("E2", "E2", (4, 12), {}), *COMMON, ("E6", "E6", (3, 8), {}))),
    Kind("water_quality", lambda s, h, st, r: water_series(s, h, st, r), water_sites, 3600.0,
         "outfall-1", (*COMMON, ("E6", "E6", (3, 8), {}))),
    Kind("air_quality", lambda s, h, st, r: air_network(s, h, st, r), air_sites, 3600.0,
         "aq-1", (("E1", "E1", (6, 48), {}), *COMMON)),
)


@dataclass
class Tally:
    scenarios: int = 0
    detected: int = 0
    detected_high: int = 0
    tp: int = 0
    false: int = 0
    cross: int = 0
    #: The same counts for alerts of severity medium or high only.
    tp_mh: int = 0
    false_mh: int = 0

    def count(self, what: str, severity: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if severity != "low" and what in ("tp", "false"):
            setattr(self, what + "_mh", getattr(self, what + "_mh") + 1)


def ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "-"


def run_scenario(kind: Kind, days: int, seed: int, pattern: tuple[Any, ...] | None,
                 params: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[list[Alert], dict[str, Any] | None, float, float]:
    rng = random.Random(seed)
    sites = kind.sites()
    t0 = time.perf_counter()
    recs = list(kind.series(T0, days * 24, kind.step_s, rng))
    label = None
    if pattern is not None:
        _, rule, (lo, hi), extra = pattern
        start = T0 + 24 * DAY + rng.randint(0, 47) * HOUR
        end = start + rng.uniform(lo, hi) * HOUR
        kw = dict(extra)
        if rule in ("E5", "E6", "E8", "E2", "E4") and "signal" not in kw:
            pols = {"stack_cems": ["so2_mgm3", "nox_mgm3", "pm_mgm3"],
                    "water_quality": ["cod_mgl", "nh3n_mgl", "tp_mgl", "tn_mgl"],
                    "air_quality": ["pm25_ugm3", "pm10_ugm3", "no2_ugm3"]}[kind.name]
            kw["signal"] = rng.choice(pols)
        if rule == "E5":
            # Hold under the limit a period that would exceed it: scale the period so its
            # median is 1.1-1.4 x the limit (the injection then clamps).
            sig = kw["signal"]
            vals = sorted(r.values[sig] for r in recs if isinstance(r, Sample)
                          and r.site == kind.target and start <= r.time < end
                          and sig in r.values)
            kw["excess"] = rng.uniform(1.1, 1.4) * sites[kind.target].limits[sig] \
                / max(vals[len(vals) // 2], 1e-9)
        recs = list(inject(rule, recs, site=kind.target, kind=kind.name, start=start, end=end,
                           rng=rng, limits=sites[kind.target].limits, **kw))
        label = {"rule": rule, "site": kind.target, "start": start, "end": end}
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    eng = DetectionEngine(sites, params, rules=E_RULES)
    for r in recs:
        eng.feed(r)
    eng.finish()
    t_det = time.perf_counter() - t0
    return [u.alert for u in eng.alerts()], label, t_sim, t_det


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few scenarios (CI smoke)")
    ap.add_argument("--per-rule", type=int, default=20, help="labelled scenarios per pattern")
    ap.add_argument("--clean", type=int, default=20, help="clean scenarios per site kind")
    ap.add_argument("--days", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", help="only these site kinds (comma-separated)")
    ap.add_argument("--patterns", help="only these pattern labels (comma-separated, e.g. E1)")
    ap.add_argument("--params", type=Path, help="detector parameter overrides (PARAMS.yaml)")
    args = ap.parse_args()
    params = load_params(args.params) if args.params else None
    if args.quick:
        args.per_rule, args.clean = 3, 3
    t_sim_total = t_det_total = 0.0
    seed = args.seed * 100_000
    print("recall: share of labelled scenarios found (any severity / high); precision: "
          "TP / (TP + false), all severities and medium+; strict: cross-detections counted "
          "as false. TP/false/cross count merged alerts of the pattern's rule, over all "
          "scenarios of the site kind.")
    print(f"{'kind':<14}{'pattern':<11}{'n':>4}{'recall':>8}{'high':>6}{'TP':>5}{'false':>6}"
          f"{'cross':>6}{'prec':>6}{'prec m+':>8}{'strict':>8}")
    clean_rows = []
    for kind in KINDS:
        if args.kinds and kind.name not in args.kinds.split(","):
            continue
        tallies: dict[str, Tally] = defaultdict(Tally)
        by_label: dict[str, Tally] = defaultdict(Tally)
        n_sites = len(kind.sites())
        clean_alerts: Counter[tuple[str, str]] = Counter()
        for _ in range(args.clean):
            seed += 1
            alerts, _, ts, td = run_scenario(kind, args.days, seed, None, params)
            t_sim_total += ts
            t_det_total += td
            for a in alerts:
                tallies[a.rule].count("false", a.severity)
                clean_alerts[(a.rule, a.severity)] += 1
        clean_rows.append((kind.name, args.clean * args.days * n_sites, clean_alerts))
        patterns = [p for p in kind.patterns
                    if not args.patterns or p[0] in args.patterns.split(",")]
        for pattern in patterns:
            label_name, rule = pattern[0], pattern[1]
            for _ in range(args.per_rule):
                seed += 1
                alerts, label, ts, td = run_scenario(kind, args.days, seed, pattern, params)
                t_sim_total += ts
                t_det_total += td
                assert label is not None
                lt = by_label[label_name]
                lt.scenarios += 1
                hit = False
                hit_high = False
                for a in alerts:
                    inside = a.site == label["site"] and a.start < label["end"] \
                        and a.end > label["start"]
                    if a.rule == rule and inside:
                        tallies[rule].count("tp", a.severity)
                        lt.tp += 1
                        hit = True
                        hit_high = hit_high or a.severity == "high"
                    elif inside:
                        tallies[a.rule].count("cross", a.severity)
                    else:
                        tallies[a.rule].count("false", a.severity)
                lt.detected += hit
                lt.detected_high += hit_high
        for pattern in patterns:
            label_name, rule = pattern[0], pattern[1]
            lt, rt = by_label[label_name], tallies[rule]
            print(f"{kind.name:<14}{label_name:<11}{lt.scenarios:>4}"
                  f"{lt.detected / lt.scenarios:>8.2f}{lt.detected_high / lt.scenarios:>6.2f}"
                  f"{lt.tp:>5}{rt.false:>6}{rt.cross:>6}{ratio(rt.tp, rt.tp + rt.false):>6}"
                  f"{ratio(rt.tp_mh, rt.tp_mh + rt.false_mh):>8}"
                  f"{ratio(rt.tp, rt.tp + rt.false + rt.cross):>8}")
        others = {r: t for r, t in tallies.items()
                  if r not in {p[1] for p in kind.patterns} and (t.false or t.cross)}
        for r, t in sorted(others.items()):
            print(f"{kind.name:<14}{r + ' (n/a)':<11}{'':>4}{'':>8}{'':>6}{0:>5}{t.false:>6}"
                  f"{t.cross:>6}")
    print("\nclean scenarios: false alerts per station-day")
    for name, station_days, c in clean_rows:
        rules = sorted({r for r, _ in c})
        text = ", ".join(f"{r} " + "/".join(f"{c[(r, s)] / station_days:.4f}"
                                            for s in ("high", "medium", "low")) for r in rules)
        total_high = sum(v for (r, s), v in c.items() if s == "high")
        print(f"{name:<14}{station_days:>6} station-days  high {total_high / station_days:.4f}"
              f"  (per rule high/medium/low: {text or 'none'})")
    print(f"\ndetection {t_det_total:.1f} s vs simulation of the same data {t_sim_total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
