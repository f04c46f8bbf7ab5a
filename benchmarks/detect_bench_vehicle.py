"""Recall, precision and false alerts of the vehicle detectors V1..V10 on labelled simulations.

Scenario: ``--days`` clean station-days plus ``--per-rule`` station-days per rule with that
pattern planted (sim/vehicle.py labels every planted test), each at its own station, all
on the same calendar day and fed to one set of detectors in time order — as the central
service would see a fleet. Every rule's detector sees every station (so a V5 station can
raise a false V1 alert, and clean stations form V10's fleet baseline).

Detectors run inside ingest.detectors.engine (``--direct`` feeds them without it;
``--reorder-s`` gives the engine a service's reorder buffer, under which lane events pass
ahead of held-back samples).

Scoring: an alert counts as correct when it names (``test_id`` or ``evidence.test_ids``) a
test labelled with its rule (V10: a station labelled V10); alerts sharing a key count once.
Recall is over labelled tests (V10: labelled stations). Targets: recall ≥ 0.95 and
precision ≥ 0.9 per rule. Prints the wall time of detection next to the time to
simulate the same data (the baseline measured in the same run).

    .venv/bin/python benchmarks/detect_bench_vehicle.py [--quick] [--days N] [--per-rule K]
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.detectors.base import Alert, Detector, SiteInfo
from sim.vehicle import RULES, InjectionLabel, simulate_station_day
from stationseal.records import Sample, SiteEvent

DAY0 = 1_767_225_600.0 + 7 * 3600  # 2026-01-01 07:00 UTC


def vehicle_detectors(sites: dict[str, SiteInfo]) -> list[Detector]:
    """One instance of each V detector (module ingest.detectors.vN, its Detector subclass)."""
    out = []
    for rule in RULES:
        mod = importlib.import_module(f"ingest.detectors.{rule.lower()}")
        classes = [c for c in vars(mod).values() if isinstance(c, type)
                   and issubclass(c, Detector) and getattr(c, "rule", "") == rule]
        if len(classes) != 1:
            raise SystemExit(f"{mod.__name__}: expected one Detector with rule {rule}")
        out.append(classes[0](sites))
    return out


def _ordered(samples: Iterable[Sample], events: Iterable[SiteEvent]) -> list[Any]:
    recs: list[tuple[float, int, Any]] = [(e.time, 0, e) for e in events]
    recs += [(s.time, 1, s) for s in samples]
    recs.sort(key=lambda r: (r[0], r[1]))
    return [r for _, _, r in recs]


def run_detectors(dets: Sequence[Detector], samples: Iterable[Sample],
                  events: Iterable[SiteEvent]) -> list[Alert]:
    """Feed detector instances directly, in time order (no engine)."""
    alerts: list[Alert] = []
    for r in _ordered(samples, events):
        for d in dets:
            alerts += d.on_sample(r) if isinstance(r, Sample) else d.on_event(r)
    for d in dets:
        alerts += d.finish()
    return alerts


def run_engine(sites: dict[str, SiteInfo], samples: Iterable[Sample],
               events: Iterable[SiteEvent], reorder_s: float) -> list[Alert]:
    """The same records through ingest.detectors.engine (merged alerts, as delivered)."""
    from ingest.detectors.engine import DetectionEngine

    eng = DetectionEngine(sites, rules=list(RULES), reorder_s=reorder_s)
    for r in _ordered(samples, events):
        eng.feed(r)
    eng.finish()
    return [u.alert for u in eng.alerts()]


def scenario(days: int, per_rule: int, tests_per_lane: int, seed: int
             ) -> tuple[list[Sample], list[SiteEvent], list[InjectionLabel], dict[str, str]]:
    rng = random.Random(seed)
    samples: list[Sample] = []
    events: list[SiteEvent] = []
    labels: list[InjectionLabel] = []
    kind: dict[str, str] = {}  # site -> "clean" or rule
    plan = [None] * days + [r for r in RULES for _ in range(per_rule)]
    for i, rule in enumerate(plan):
        site = f"S{i + 1:03d}"
        kind[site] = rule or "clean"
        s, e, lab = simulate_station_day(site, ["L1", "L2"], DAY0, random.Random(rng.random()),
                                         tests_per_lane=tests_per_lane, inject=rule)
        samples += s
        events += e
        labels += lab
    return samples, events, labels, kind


def named_tests(a: Alert) -> set[str]:
    """Tests an alert is about: its test_id and any listed in its evidence."""
    named = {str(t) for t in a.evidence.get("test_ids") or []}
    if a.test_id is not None:
        named.add(a.test_id)
    return named


def score(alerts: Sequence[Alert], labels: Sequence[InjectionLabel], kind: dict[str, str],
          days: int) -> dict[str, Any]:
    final: dict[str, Alert] = {}
    for a in alerts:
        final[a.key] = a
    labelled = {(lb.rule, lb.test_id) for lb in labels}
    out: dict[str, Any] = {"rules": {}}
    for rule in RULES:
        mine = [a for a in final.values() if a.rule == rule]
        if rule == "V10":
            targets = {s for s, k in kind.items() if k == "V10"}
            hits: set[str] = {a.site for a in mine if a.site in targets}
            tp = sum(a.site in targets for a in mine)
        else:
            targets = {t for r, t in labelled if r == rule}
            hits = set()
            tp = 0
            for a in mine:
                good = named_tests(a) & targets
                hits |= good
                tp += bool(good)
        out["rules"][rule] = {
            "labelled": len(targets), "detected": len(hits & targets), "alerts": len(mine),
            "correct_alerts": tp,
            "recall": round(len(hits & targets) / len(targets), 3) if targets else None,
            "precision": round(tp / len(mine), 3) if mine else None,
        }
    clean = [a for a in final.values() if kind.get(a.site) == "clean"]
    out["clean_station_days"] = days
    out["false_alerts_on_clean"] = len(clean)
    out["false_alerts_per_clean_station_day"] = round(len(clean) / days, 3) if days else None
    out["false_alerts_on_clean_by_rule"] = {r: sum(a.rule == r for a in clean) for r in RULES
                                            if any(a.rule == r for a in clean)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (about a minute)")
    ap.add_argument("--days", type=int, default=20, help="clean station-days")
    ap.add_argument("--per-rule", type=int, default=3, help="injected station-days per rule")
    ap.add_argument("--tests-per-lane", type=int, default=40)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--show", type=int, default=0, help="print N false alerts")
    ap.add_argument("--direct", action="store_true",
                    help="feed the detectors directly instead of through the engine")
    ap.add_argument("--reorder-s", type=float, default=0.0,
                    help="engine reorder buffer (a service holds samples this long)")
    args = ap.parse_args(argv)
    if args.quick:
        args.days, args.per_rule = 6, 1
    t = time.perf_counter()
    samples, events, labels, kind = scenario(args.days, args.per_rule, args.tests_per_lane,
                                             args.seed)
    t_sim = time.perf_counter() - t
    sites = {s: SiteInfo(id=s, kind="vehicle_inspection") for s in kind}
    t = time.perf_counter()
    if args.direct:
        alerts = run_detectors(vehicle_detectors(sites), samples, events)
    else:
        alerts = run_engine(sites, samples, events, args.reorder_s)
    t_det = time.perf_counter() - t
    res = score(alerts, labels, kind, args.days)
    res["records"] = len(samples) + len(events)
    res["simulate_s"] = round(t_sim, 2)
    res["detect_s"] = round(t_det, 2)
    print(f"{len(kind)} station-days ({args.days} clean), {res['records']} records; "
          f"simulate {t_sim:.1f} s (baseline), detect {t_det:.1f} s "
          f"({1e6 * t_det / max(1, res['records']):.1f} µs/record for 10 detectors)")
    print(f"{'rule':5} {'labelled':>8} {'detected':>8} {'recall':>7} {'alerts':>6} "
          f"{'correct':>7} {'precision':>9}")
    ok = True
    for rule, r in res["rules"].items():
        rec = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        pre = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        flag = ""
        if (r["recall"] is not None and r["recall"] < 0.95) or \
                (r["precision"] is not None and r["precision"] < 0.9):
            flag, ok = "  below target", False
        print(f"{rule:5} {r['labelled']:8d} {r['detected']:8d} {rec:>7} {r['alerts']:6d} "
              f"{r['correct_alerts']:7d} {pre:>9}{flag}")
    print(f"false alerts on clean data: {res['false_alerts_on_clean']} over {args.days} "
          f"station-days = {res['false_alerts_per_clean_station_day']} per station-day "
          f"{res['false_alerts_on_clean_by_rule']}")
    if args.show:
        labelled = {(lb.rule, lb.test_id) for lb in labels}
        shown = 0
        for a in {a.key: a for a in alerts}.values():
            if a.rule != "V10" and not any((a.rule, t) in labelled for t in named_tests(a)):
                print("FALSE", a.rule, a.site, a.test_id, kind.get(a.site), a.summary_en)
                shown += 1
                if shown >= args.show:
                    break
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, ensure_ascii=False))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
