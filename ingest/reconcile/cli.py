"""Reconcile what stations reported to the supervision platform with the sealed records.

Reads the platform's vehicle test results (CSV or JSON, docs/reconciliation.md) and the
offline records (docs/records.md), and writes R-MISMATCH / R-NOSEAL / R-UNREPORTED alerts
as JSON Lines in the alert format of docs/records.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ingest.detectors.io import RecordError, read_records, write_jsonl
from ingest.detectors.sites import ConfigError, load_sites
from ingest.reconcile.vehicle import ReportError, Tolerance, read_reported, reconcile_vehicle
from stationseal.cli import UsageError
from stationseal.records import Sample, SiteEvent


def add_reconcile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reported", required=True, metavar="REPORT.csv",
                   help="vehicle test results as reported (CSV, JSON array or JSON Lines)")
    p.add_argument("--in", dest="records", required=True, metavar="RECORDS.jsonl",
                   help="sealed samples and events, JSON Lines ('-' for stdin)")
    p.add_argument("--sites", metavar="SITES.yaml",
                   help="site list, for per-site limits (<method>.<field> keys)")
    p.add_argument("--out", default="-", metavar="ALERTS.jsonl",
                   help="where to write alerts (default: stdout)")
    p.add_argument("--tolerance", type=float, default=0.05, metavar="REL",
                   help="relative tolerance on reported values (default 0.05, plus a "
                        "per-field absolute floor)")
    p.add_argument("--time-window", type=float, default=300.0, metavar="S",
                   help="seconds within which a row without a matching test id may match a "
                        "sealed test of the same vehicle (default 300)")
    p.add_argument("--asm-corrected", action="store_true",
                   help="the platform reports ASM values corrected by dilution/humidity")


def run_reconcile(args: argparse.Namespace) -> int:
    if not 0.0 <= args.tolerance < 1.0:
        raise UsageError(f"--tolerance {args.tolerance}: expected a fraction in [0, 1)")
    if args.time_window < 0:
        raise UsageError(f"--time-window {args.time_window}: must not be negative")
    try:
        rows = read_reported(args.reported)
    except ReportError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{args.reported}: cannot read: {e.strerror}") from None
    try:
        sites = load_sites(args.sites) if args.sites else {}
    except ConfigError as e:
        raise UsageError(str(e)) from None
    samples: list[Sample] = []
    events: list[SiteEvent] = []
    try:
        for _, rec in read_records(args.records):
            if isinstance(rec, Sample):
                samples.append(rec)
            else:
                events.append(rec)
    except RecordError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{args.records}: cannot read: {e.strerror}") from None
    tol = Tolerance(rel=args.tolerance, time_s=args.time_window)
    alerts = reconcile_vehicle(rows, samples, events, tol, sites, args.asm_corrected)
    try:
        write_jsonl(args.out, (a.to_json() for a in alerts))
    except OSError as e:
        print(f"stationseal detect reconcile: cannot write {args.out}: {e.strerror}",
              file=sys.stderr)
        return 1
    by_rule = Counter(a.rule for a in alerts)
    print(f"{len(rows)} reported tests, {len(samples)} samples, {len(events)} events: "
          f"{by_rule['R-MISMATCH']} mismatched, {by_rule['R-NOSEAL']} without sealed data, "
          f"{by_rule['R-UNREPORTED']} never reported", file=sys.stderr)
    return 0


def register(p: argparse.ArgumentParser) -> None:
    add_reconcile_args(p)
    p.set_defaults(func=run_reconcile)
