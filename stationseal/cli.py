"""The `stationseal` command: a thin dispatcher over importable functions.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``;
this module only wires them together, so a newcomer finds a command's code in the package
that owns the capability. Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from stationseal import __version__
from stationseal.errors import UsageError

__all__ = ["UsageError", "main"]

#: (subcommand, module that defines ``register(subparsers)``). Modules are imported only
#: when their command runs, so `stationseal verify` on an auditor's laptop does not need
#: pymodbus or the InfluxDB client.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("agent", "agent.cli", "run the gateway agent, probe instruments, show status"),
    ("ingest", "ingest.cli", "run the central service, import exports, inspect quarantine"),
    ("keys", "stationseal.keys_cli", "generate gateway keys and manage the key registry"),
    ("verify", "stationseal.verify_cli", "verify an exported frames file offline"),
    ("evidence", "evidence.cli",
     "evidence packages for alerts; the central key, checkpoints and receipts"),
    ("audit", "evidence.audit",
     "check InfluxDB against the receipt log: changed, missing, unreceipted readings"),
    ("detect", "ingest.detectors.cli", "run the falsification detectors over records offline"),
    ("reconcile", "ingest.reconcile.cli",
     "compare vehicle test results a site reported with what its instruments measured"),
    ("sim", "sim.cli", "start simulated instruments and data loggers"),
    ("dashboards", "dashboards.cli", "build and provision the Grafana dashboards"),
    ("stack", "stack.manager",
     "start/stop the local broker (Mosquitto, or a NATS cluster) + InfluxDB stack"),
    ("hj212", "stationseal.hj212.cli", "parse, build and check HJ 212 frames"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported (and so its dependencies)."""
    parser = argparse.ArgumentParser(
        prog="stationseal",
        description="Signed, loss-free instrument data for inspection and monitoring sites.",
    )
    parser.add_argument("--version", action="version", version=f"stationseal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        if name != only:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip())
        mod.register(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    known = {c[0] for c in COMMANDS}
    parser = build_parser(first if first in known else None)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = func(args)
    except UsageError as e:
        print(f"stationseal {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
