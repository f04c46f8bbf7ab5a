"""`python -m demo --seconds N --out DIR` (what `make demo` runs)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from demo import plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m demo",
        description="Run the StationSeal demo station: simulated vehicle lanes and a stack "
                    "CEMS, real gateway agents, broker, ingest, InfluxDB and detectors, "
                    "with falsification patterns planted; writes frames.jsonl, "
                    "registry.json, alerts.jsonl and summary.json to --out.")
    ap.add_argument("--seconds", type=float,
                    default=float(os.environ.get("DEMO_SECONDS", "120")),
                    help="how long the lanes and the stack run (default $DEMO_SECONDS or 120)")
    ap.add_argument("--out", type=Path, default=Path("demo-output"))
    ap.add_argument("--scenario", default=plan.VEHICLE_SCENARIO,
                    help="vehicle patterns: 'none', 'demo' or RULE@LANE[:TESTS][/k=v],... "
                         "(sim/lane.py); default: %(default)s")
    ap.add_argument("--stack-scenario", default=None,
                    help="stack patterns: 'none' or PATTERN@START[-END][/k=v],... in seconds "
                         "after the start (sim/stack_site.py); default scales with --seconds")
    ap.add_argument("--seconds-per-hour", type=float, default=30.0,
                    help="real seconds per simulated hour of the stack (default 30)")
    args = ap.parse_args(argv)
    if args.seconds < 10:
        ap.error("--seconds must be at least 10")
    if args.seconds_per_hour <= 0:
        ap.error("--seconds-per-hour must be positive")

    from demo.run import Demo, _stop_signal

    # Ctrl-C and SIGTERM both run the teardown (set explicitly: a shell may have started
    # us with SIGINT ignored, e.g. as a background job)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_signal)
    try:
        demo = Demo(args.seconds, args.out, args.scenario, args.stack_scenario,
                    args.seconds_per_hour)
        return demo.run()
    except ValueError as e:
        print(f"python -m demo: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
