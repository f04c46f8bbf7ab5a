"""Gateway agent commands.

  stationseal agent run --config SITE.yaml [--output file:PATH]
  stationseal agent status [--config SITE.yaml | --status-file PATH] [--json]
  stationseal agent check-config [--config SITE.yaml]
  stationseal agent probe --host H --port P --unit U --type holding --address A --count N
  stationseal agent probe --serial-port /dev/ttyUSB0 --baudrate 9600 --unit U ...
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from stationseal.cli import UsageError


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="agent_command", metavar="SUBCOMMAND", required=True)

    # `agent run --config SITE.yaml [--output file:PATH]` and `agent status`
    # (agent/run_cli.py; the runtime itself is imported only when they run)
    from agent.run_cli import register_check, register_run, register_status

    register_run(sub)
    register_status(sub)
    register_check(sub)

    pr = sub.add_parser("probe", help="read registers once; print raw values and decodings "
                        "in all four word orders")
    where = pr.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP host")
    where.add_argument("--serial-port", help="Modbus RTU serial port, e.g. /dev/ttyUSB0")
    pr.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    pr.add_argument("--baudrate", type=int, default=9600)
    pr.add_argument("--parity", choices=("N", "E", "O"), default="N")
    pr.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    pr.add_argument("--bytesize", type=int, choices=(7, 8), default=8)
    pr.add_argument("--unit", type=int, default=1, help="slave / unit id (default 1)")
    pr.add_argument("--type", dest="register", default="holding",
                    choices=("coil", "discrete", "holding", "input"),
                    help="register type: coil (FC1), discrete (FC2), holding (FC3), input (FC4)")
    pr.add_argument("--address", type=int, required=True,
                    help="0-based protocol address (manual's 40001 -> 0)")
    pr.add_argument("--count", type=int, default=2, help="registers or bits to read")
    pr.add_argument("--timeout", type=float, default=2.0, help="seconds")
    pr.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from agent.probe import ProbeError, format_probe, probe_read

    if not 0 <= args.unit <= 255:
        raise UsageError(f"--unit {args.unit}: must be 0..255")
    try:
        res = asyncio.run(probe_read(
            register=args.register, address=args.address, count=args.count, unit=args.unit,
            host=args.host, port=args.port, serial_port=args.serial_port,
            baudrate=args.baudrate, parity=args.parity, stopbits=args.stopbits,
            bytesize=args.bytesize, timeout=args.timeout))
    except ProbeError as e:
        if "count must" in str(e) or "register type" in str(e):
            raise UsageError(str(e)) from None
        print(f"stationseal agent probe: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(format_probe(res))
    return 0
