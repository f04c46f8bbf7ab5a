"""What the HJ 212 reconciliation (rule HJ212) adds to the detection engine per sample.

A CEMS site for one hour: the analyzer read at 1 Hz, the logger reporting every 30 s and a
minute mean every 60 s (SO2 x 0.53, NOx copied into three channels; and an honest
logger), fed through the
engine with E3 and E6 (baseline) and with E3, E6 and HJ212, as the ingest service runs
them. Also the conversion of one logger frame into readings (stationseal/hj212/readings.py),
which the gateway pays per received frame.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

from ingest.detectors.base import SiteInfo
from ingest.detectors.engine import DetectionEngine
from sim.hj212_logger import Tamper
from stationseal.hj212 import CP, Frame, format_data_time, format_number, signal_map
from stationseal.hj212.codes import SIGNAL_TO_HJ212
from stationseal.hj212.readings import convert
from stationseal.records import Sample

SITE = "bench-cems"
T0 = 1_700_000_000.0 // 3600 * 3600
TAMPER = Tamper(scale={"a21026": 0.53}, copy_from="a21002",
                copy_to=("a34013", "a19001", "a01014"))


def canonical(t: float) -> dict[str, float]:
    ph = (t - T0) / 600
    return {"so2_mgm3": 400 + 50 * math.sin(ph), "nox_mgm3": 100 + 20 * math.cos(ph),
            "pm_mgm3": 8 + math.sin(ph / 3), "o2_stack_pct": 9 + 0.3 * math.sin(ph / 2),
            "flow_m3h": 120000 + 5000 * math.sin(ph), "flue_temp_c": 120.0 + math.sin(ph),
            "flue_kpa": 0.3, "moisture_pct": 8 + 0.1 * math.sin(ph)}


def _frame(t: float, cn: str, codes: dict[str, tuple[float, str]], field: str) -> Frame:
    return Frame(st="31", cn=cn, mn="MN1", qn=f"{int(t * 1000):017d}", cp=CP.build(
        data_time=format_data_time(t),
        pollutants={c: {field: format_number(v, 2), "Flag": f} for c, (v, f) in codes.items()}))


def _transmitted(v: dict[str, float]) -> dict[str, tuple[float, str]]:
    out = {}
    for sig, x in v.items():
        code = SIGNAL_TO_HJ212[("31", sig)]
        sm = signal_map("31", code)
        assert sm is not None
        out[code] = (x / sm.factor, "N")
    return out


def _sample(conv: Any, t: float, seq: int) -> Sample:
    s = Sample(t, SITE, conv.instrument, {}, {}, None, ("gw", seq))
    for r in conv.readings:
        s.values[r.signal] = r.value
        s.flags[r.signal] = r.quality
    return s


def records(seconds: int, tamper: Tamper | None = TAMPER) -> list[Sample]:
    out: list[Sample] = []
    window: list[dict[str, tuple[float, str]]] = []
    for k in range(seconds):
        t = T0 + k
        v = canonical(t)
        out.append(Sample(t, SITE, "stack1.cems", v, {s: "N" for s in v}, None, ("gw", k)))
        if k % 30 == 0:
            rep = tamper.apply(_transmitted(v)) if tamper else _transmitted(v)
            window.append(rep)
            out.append(_sample(convert(_frame(t, "2011", rep, "Rtd")), t, 10**6 + k))
        if k % 60 == 59:
            agg = {c: (sum(w[c][0] for w in window) / len(window), "N") for c in window[0]}
            out.append(_sample(convert(_frame(t - 59, "2051", agg, "Avg")), t - 59,
                               2 * 10**6 + k))
            window = []
    out.sort(key=lambda r: r.time)
    return out


def run(recs: list[Sample], rules: list[str]) -> tuple[float, int]:
    eng = DetectionEngine({SITE: SiteInfo(SITE, "stack_cems", limits={"so2_mgm3": 550.0})},
                          None, rules, keep_history=False)
    t = time.process_time()
    for r in recs:
        eng.feed(r)
    eng.finish()
    return time.process_time() - t, len(eng.alerts())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 900 if args.quick else 3600
    rounds = 3 if args.quick else 7
    recs = records(seconds)
    honest = records(seconds, None)
    n = len(recs)
    print(f"{n} samples ({seconds} s of a CEMS analyzer at 1 Hz + logger reports), "
          f"median of {rounds} rounds, CPU time")
    rows = []
    for name, rules, data in (("E3+E6 (baseline)", ["E3", "E6"], recs),
                              ("E3+E6+HJ212", ["E3", "E6", "HJ212"], recs),
                              ("HJ212 alone", ["HJ212"], recs),
                              ("HJ212, honest", ["HJ212"], honest)):
        times, alerts = [], 0
        for _ in range(rounds):
            dt, alerts = run(data, rules)
            times.append(dt)
        med = statistics.median(times)
        rows.append((name, med, alerts))
        print(f"{name:<18} {med * 1e6 / n:7.2f} us/sample  {n / med:9.0f} samples/s  "
              f"{alerts} alerts")
    extra = (rows[1][1] - rows[0][1]) * 1e6 / n
    print(f"reconciliation adds {extra:.2f} us per sample over the baseline")
    frame = _frame(T0, "2011", TAMPER.apply(_transmitted(canonical(T0))), "Rtd")
    reps = 500 if args.quick else 5000
    per = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(reps):
            convert(frame)
        per.append((time.process_time() - t) / reps * 1e6)
    print(f"convert() one 8-channel real-time frame: {statistics.median(per):.1f} us")


if __name__ == "__main__":
    main()
