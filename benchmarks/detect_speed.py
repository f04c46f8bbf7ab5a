"""Detection engine throughput: samples per second, per rule and all together.

Data: simulated 1-minute CEMS stacks (sim/cems.py), an hourly six-station air network
(sim/air.py) and hourly outfalls (sim/water.py), generated once and fed to a fresh
engine per measurement. Baselines measured in the same run: the engine with no rule
(routing, ordering checks, hourly means, alert merging) and encoding each record to its
offline JSON form (docs/records.md) — work the ingest service does for every record
anyway. Each figure is the median of ``--repeats`` runs.

    .venv/bin/python -m benchmarks.detect_speed [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.detectors.base import SiteInfo
from ingest.detectors.engine import DetectionEngine
from ingest.detectors.io import record_to_json
from sim.air import air_network, air_sites
from sim.cems import cems_series, cems_sites
from sim.envcommon import Record
from sim.water import water_series, water_sites

T0 = 1_704_067_200.0
E_RULES = ["E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"]
I_RULES = ["I-GAP", "I-FORK", "I-REPLAY", "I-SIG", "I-DROP", "I-CLOCK", "I-CAL", "I-OFFLINE"]


def datasets(quick: bool) -> dict[str, tuple[dict[str, SiteInfo], list[Record]]]:
    rng = random.Random(7)
    days = 2 if quick else 6
    stacks: dict[str, SiteInfo] = {}
    recs: list[Record] = []
    for i in range(4):
        sid = f"stack-{i + 1}"
        stacks.update(cems_sites(sid))
        recs += cems_series(T0, days * 24, 60, rng, site=sid)
    recs.sort(key=lambda r: r.time)
    outfalls: dict[str, SiteInfo] = {}
    wrecs: list[Record] = []
    for i in range(10):
        sid = f"outfall-{i + 1}"
        outfalls.update(water_sites(sid))
        wrecs += water_series(T0, days * 10 * 24, 3600, rng, site=sid)
    wrecs.sort(key=lambda r: r.time)
    air = list(air_network(T0, days * 10 * 24, 3600, rng))
    return {"cems 1-min": (stacks, recs), "air hourly": (air_sites(), air),
            "water hourly": (outfalls, wrecs)}


def measure(rules: list[str] | None, sites: dict[str, SiteInfo], recs: list[Record],
            repeats: int) -> float:
    """Median records/s of the engine running ``rules`` (None: the JSON baseline)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if rules is None:
            encode_all(recs)
        else:
            engine_run(sites, recs, rules)
        rates.append(len(recs) / (time.perf_counter() - t0))
    return statistics.median(rates)


def engine_run(sites: dict[str, SiteInfo], recs: list[Record], rules: list[str]) -> None:
    eng = DetectionEngine(sites, rules=rules)
    for r in recs:
        eng.feed(r)
    eng.finish()


def encode_all(recs: list[Record]) -> None:
    for x in recs:
        json.dumps(record_to_json(x))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = datasets(args.quick)
    print(f"{'records/s (median of ' + str(args.repeats) + ')':<34}"
          + "".join(f"{name:>15}" for name in data))
    print(f"{'':<34}" + "".join(f"{len(r):>15,}" for _, r in data.values()))
    rows: list[tuple[str, list[str] | None]] = [
        ("baseline: JSON-encode each record", None),
        ("baseline: engine, no rule", []),
        *((f"rule {rule}", [rule]) for rule in E_RULES),
        ("integrity rules I-* together", I_RULES),
        ("all E and I rules", E_RULES + I_RULES),
    ]
    for label, rules in rows:
        cells = [f"{measure(rules, sites, recs, args.repeats):>15,.0f}"
                 for sites, recs in data.values()]
        print(f"{label:<34}" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
