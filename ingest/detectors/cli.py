"""Run the falsification detectors over offline records (docs/records.md, docs/detectors.md).

The same detectors as the ingest service, so an alert raised live can be reproduced by
anyone holding the records. Records need not be sorted: they are judged in time order
(stable for equal times). Alerts are written one JSON object per line, ordered by start.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from ingest.detectors import registry
from ingest.detectors.engine import DetectionEngine
from ingest.detectors.io import Record, RecordError, read_records, write_jsonl
from ingest.detectors.sites import ConfigError, load_params, load_sites
from stationseal.cli import UsageError


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="records", metavar="RECORDS.jsonl",
                   help="samples and events, JSON Lines ('-' for stdin)")
    p.add_argument("--sites", metavar="SITES.yaml", help="site kinds, locations, limits")
    p.add_argument("--out", default="-", metavar="ALERTS.jsonl",
                   help="where to write alerts (default: stdout)")
    p.add_argument("--params", metavar="PARAMS.yaml",
                   help="parameter overrides: {RULE: {parameter: value}}")
    p.add_argument("--rules", metavar="E1,E4,...", help="run only these rules (default: all)")
    p.add_argument("--list", action="store_true", help="list the rules and exit")
    p.add_argument("--markdown", action="store_true",
                   help="with --list: print docs/detectors.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    reg = registry.discover()
    if args.list:
        sys.stdout.write(registry.markdown(reg) if args.markdown else registry.listing(reg))
        return 0
    if args.markdown:
        raise UsageError("--markdown only goes with --list")
    if not args.records or not args.sites:
        raise UsageError("--in RECORDS.jsonl and --sites SITES.yaml are required (or --list)")
    try:
        sites = load_sites(args.sites)
        params: dict[str, Any] = load_params(args.params) if args.params else {}
    except ConfigError as e:
        raise UsageError(str(e)) from None
    rules = args.rules.split(",") if args.rules else None
    try:
        engine = DetectionEngine(sites, params, rules)
    except ValueError as e:
        where = f"{args.params}: " if args.params else ""
        raise UsageError(f"{where}{e}") from None

    records: list[tuple[float, int, Record]] = []
    try:
        for line, rec in read_records(args.records):
            if rec.site not in sites:
                raise UsageError(f"{args.records}:{line}: site: {rec.site!r} is not in "
                                 f"{args.sites}")
            records.append((rec.time, line, rec))
    except RecordError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{args.records}: cannot read: {e.strerror}") from None
    records.sort(key=lambda x: (x[0], x[1]))
    for _, _, rec in records:
        engine.feed(rec)
    engine.finish()
    alerts = engine.alerts()
    try:
        write_jsonl(args.out, (u.to_json() for u in alerts))
    except OSError as e:
        print(f"stationseal detect: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 1
    sev = Counter(u.alert.severity for u in alerts)
    st = engine.stats
    print(f"{len(records)} records ({st.samples} samples, {st.events} events), "
          f"{len(alerts)} alerts (high {sev['high']}, medium {sev['medium']}, "
          f"low {sev['low']}) from rules {','.join(engine.rules)}", file=sys.stderr)
    return 0
