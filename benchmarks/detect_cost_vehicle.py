"""CPU per record of the vehicle rules: this code against the code before it, same run.

Budget: the ten vehicle rules (V1-V10, run by the detection engine as the ingest service
runs them) cost at most **20 µs of CPU per record** (one sample of one instrument) on the
reference 2-core machine. An inspection lane reports ~4-6 records a second, so a worker
core judges well over 10,000 lanes' worth of records per second of CPU, and detection stays
below the ingest path's own per-reading cost.

Data (generated once, written as JSON Lines in docs/records.md format, sorted by time):
the sim/vehicle.py fleet used by detect_bench_vehicle, and the independent field-lane
recordings of sim/field_lanes.py (other lane programs, 1-5 s rates, faults).

Measured, each in its own process, ``--repeats`` rounds in alternating order, median CPU
(``time.process_time``) of feeding the records to a fresh engine and finishing it:

* **baseline**: the code of ``--baseline`` (default ``80ebd6a``, the commit before shared
  test assembly, instrument health and the field hardening), checked out with
  ``git worktree`` into a temporary folder — every rule assembled its own tests there;
* **one assembly per rule**: this code with ``share_tests=False`` (the old architecture,
  today's rules);
* **shared assembly**: this code as the service runs it;
* **shared + I-HEALTH**: the same with the instrument-fault rule.

    .venv/bin/python -m benchmarks.detect_cost_vehicle [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

V_RULES = [f"V{i}" for i in range(1, 11)]
BUDGET_US = 20.0

CHILD = r"""
import json, sys, time
from pathlib import Path
import ingest
from ingest.detectors.engine import DetectionEngine
from ingest.detectors.io import read_records
from ingest.detectors.sites import load_sites
recs = [r for _, r in read_records(sys.argv[1])]
sites = load_sites(sys.argv[2])
rules = sys.argv[3].split(",")
kw = json.loads(sys.argv[4])
eng = DetectionEngine(sites, rules=rules, **kw)
t0 = time.process_time()
w0 = time.perf_counter()
for r in recs:
    eng.feed(r)
eng.finish()
print(json.dumps({"cpu_s": time.process_time() - t0, "wall_s": time.perf_counter() - w0,
                  "records": len(recs), "alerts": len(eng.alerts()),
                  "code": str(Path(ingest.__file__).resolve().parents[1])}))
"""


def _write(dirpath: Path, name: str, samples: list[Any], events: list[Any],
           sites: dict[str, Any]) -> tuple[Path, Path]:
    from ingest.detectors.io import write_records
    from stationseal.records import SiteEvent

    recs = sorted([*events, *samples],
                  key=lambda r: (r.time, 0 if isinstance(r, SiteEvent) else 1))
    rp = dirpath / f"{name}.jsonl"
    write_records(rp, recs)
    sp = dirpath / f"{name}-sites.json"
    sp.write_text(json.dumps({"sites": {
        s: {"kind": "vehicle_inspection", "location": {"lat": 30.0, "lon": 120.0}}
        for s in sites}}))
    return rp, sp


def datasets(dirpath: Path, quick: bool) -> dict[str, tuple[Path, Path, int]]:
    from benchmarks.detect_bench_vehicle import scenario
    from sim.field_lanes import generate

    out: dict[str, tuple[Path, Path, int]] = {}
    days, per_rule, per_lane = (1, 1, 16) if quick else (6, 1, 40)
    samples, events, _, kind = scenario(days, per_rule, per_lane, 2026)
    rp, sp = _write(dirpath, "sim", samples, events, kind)
    out["sim/vehicle fleet"] = (rp, sp, len(samples) + len(events))
    rec = generate(seed=12, clean=1 if quick else 6, faulty=1 if quick else 2, per_rule=1,
                   tests_per_lane=16 if quick else 36)
    rp, sp = _write(dirpath, "field", rec.samples, rec.events, rec.sites)
    out["field lanes"] = (rp, sp, len(rec.samples) + len(rec.events))
    random.seed(0)
    return out


def worktree(commit: str, dirpath: Path) -> Path | None:
    path = dirpath / f"baseline-{commit}"
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path),
                        commit], check=True, capture_output=True, text=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        err = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        print(f"baseline {commit}: not measured ({err})")
        return None
    return path


def run_child(code_root: Path, records: Path, sites: Path, rules: list[str],
              kw: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    p = subprocess.run([sys.executable, "-c", CHILD, str(records), str(sites), ",".join(rules),
                        json.dumps(kw)], capture_output=True, text=True, env=env,
                       cwd=code_root, check=True)
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    if Path(res["code"]) != code_root.resolve():
        raise SystemExit(f"child ran {res['code']}, not {code_root}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default="80ebd6a", help="commit measured as the old code")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    tmp = Path(tempfile.mkdtemp(prefix="stationseal-cost-"))
    base = None
    try:
        data = datasets(tmp, args.quick)
        base = worktree(args.baseline, tmp)
        variants: list[tuple[str, Path, list[str], dict[str, Any]]] = []
        if base is not None:
            variants.append((f"baseline {args.baseline} (an assembly per rule)", base,
                             V_RULES, {}))
        variants += [
            ("this code, one assembly per rule", ROOT, V_RULES, {"share_tests": False}),
            ("this code, shared assembly", ROOT, V_RULES, {}),
            ("this code, shared + I-HEALTH", ROOT, [*V_RULES, "I-HEALTH"], {}),
        ]
        results: dict[str, dict[str, list[float]]] = {}
        for rnd in range(args.repeats):
            order = variants if rnd % 2 == 0 else list(reversed(variants))
            for label, root, rules, kw in order:
                for dname, (rp, sp, n) in data.items():
                    r = run_child(root, rp, sp, rules, kw)
                    results.setdefault(label, {}).setdefault(dname, []).append(
                        1e6 * r["cpu_s"] / n)
        names = list(data)
        print(f"µs CPU per record, median of {args.repeats} (budget for the vehicle rules: "
              f"{BUDGET_US:.0f} µs)")
        print(f"{'':48}" + "".join(f"{n:>20}" for n in names))
        print(f"{'records':48}" + "".join(f"{data[n][2]:>20,}" for n in names))
        med = {lab: {n: statistics.median(v) for n, v in d.items()} for lab, d in results.items()}
        ref = med[variants[0][0]]
        for label, *_ in variants:
            cells = "".join(f"{med[label][n]:>12.1f} ({med[label][n] / ref[n]:4.2f}x)"
                            for n in names)
            print(f"{label:48}{cells}")
        shared = med["this code, shared assembly"]
        over = [n for n in names if shared[n] > BUDGET_US]
        print("vehicle rules within budget" if not over else
              f"vehicle rules OVER budget on: {', '.join(over)}")
        if args.json:
            args.json.write_text(json.dumps({"median_us_per_record": med,
                                             "budget_us": BUDGET_US}, indent=2))
        return 0
    finally:
        if base is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(base)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
