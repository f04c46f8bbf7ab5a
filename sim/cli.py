"""Simulated instruments as real protocol peers (Modbus TCP/RTU servers, serial ptys).

  stationseal sim instrument --profile five_gas --port 0 [--faults timeout@5-10]
  stationseal sim site --config firmware-config/sites/vehicle-station-example.yaml \\
      --out run/site.yaml [--values-from sim.vehicle:values_for]

Each command prints one JSON line saying where the simulators listen (bound TCP ports,
pty paths; for ``site`` also the runtime config path), then runs until interrupted or
``--duration`` seconds have passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agent.profiles import load_profile, profile_file
from agent.yamlcfg import ConfigError
from sim.faults import Fault, FaultPlan, FaultSpecError, parse_faults
from sim.profiles import ValuesFactory, load_values_factory
from stationseal.cli import UsageError

DEFAULT_PROFILES = Path(__file__).resolve().parent.parent / "firmware-config" / "instruments"


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)

    i = sub.add_parser("instrument", help="simulate one instrument from its profile")
    i.add_argument("--profile", required=True, help="profile id or YAML file")
    i.add_argument("--profiles-dir", type=Path, default=DEFAULT_PROFILES)
    i.add_argument("--transport", choices=("tcp", "rtu", "serial"),
                   help="default: tcp for Modbus profiles, serial for serial profiles")
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--port", type=int, default=0, help="TCP port, 0 = any free port")
    i.add_argument("--unit", type=int, action="append",
                   help="Modbus unit id (repeat for several devices on one bus; default 1)")
    i.add_argument("--baudrate", type=int, default=9600)
    i.add_argument("--faults", default="", help="e.g. 'timeout@5-10,exception:2@12-15,"
                   "set:span_coeff.co_pct=1.08@30' (see sim/faults.py)")
    i.add_argument("--values-from", metavar="MODULE:FUNCTION",
                   help="value-model factory (see sim/profiles.py)")
    i.add_argument("--duration", type=float, help="stop after this many seconds")
    i.set_defaults(func=_cmd_instrument)

    s = sub.add_parser("site", help="simulate every instrument of a site config")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--out", type=Path, help="runtime config to write "
                   "(default: ./<config name>.runtime.yaml)")
    s.add_argument("--state-dir", type=Path,
                   help="where the runtime config puts outbox/export files (default: beside "
                   "--out)")
    s.add_argument("--key-file", type=Path, help="gateway key for the runtime config")
    s.add_argument("--fault", nargs=2, action="append", default=[],
                   metavar=("INSTRUMENT", "FAULTS"), help="faults for one instrument")
    s.add_argument("--values-from", metavar="MODULE:FUNCTION",
                   help="value-model factory (see sim/profiles.py)")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.set_defaults(func=_cmd_site)


def _factory(spec: str | None) -> ValuesFactory | None:
    if not spec:
        return None
    try:
        return load_values_factory(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _faults(spec: str, what: str) -> list[Fault]:
    try:
        return parse_faults(spec)
    except FaultSpecError as e:
        raise UsageError(f"{what}: {e}") from None


async def _run_until_stopped(duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    await stop.wait()


def _announce(info: dict[str, Any]) -> None:
    print(json.dumps(info), flush=True)


def _cmd_instrument(args: argparse.Namespace) -> int:
    path = Path(args.profile) if args.profile.endswith((".yaml", ".yml")) else \
        profile_file(args.profiles_dir, args.profile)
    try:
        profile = load_profile(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    faults = _faults(args.faults, "--faults")
    factory = _factory(args.values_from)
    transport = args.transport or ("tcp" if profile.protocol == "modbus" else "serial")
    if (transport == "serial") != (profile.protocol == "serial"):
        raise UsageError(f"--transport {transport} does not fit {profile.protocol} profile "
                         f"{profile.id}")
    units = args.unit or [1]
    return asyncio.run(_instrument(profile, transport, units, args, faults, factory))


async def _instrument(profile: Any, transport: str, units: list[int],
                      args: argparse.Namespace, faults: list[Fault],
                      factory: ValuesFactory | None) -> int:
    from sim.modbus_server import (
        SimulatedDevice,
        start_modbus_rtu_server,
        start_modbus_tcp_server,
    )
    from sim.serial_instrument import start_serial_instrument

    values_fn = factory(profile.id, profile, None) if factory else None
    info: dict[str, Any] = {"profile": profile.id, "transport": transport}
    if transport == "serial":
        ser = await start_serial_instrument(profile, values_fn, FaultPlan(faults))
        info["port_path"] = ser.port_path
        stopper: Any = ser
    else:
        devices = [SimulatedDevice(u, profile, values_fn, FaultPlan(faults)) for u in units]
        if transport == "tcp":
            try:
                srv = await start_modbus_tcp_server(devices, args.host, args.port)
            except (OSError, RuntimeError) as e:
                print(f"stationseal sim: cannot listen on {args.host}:{args.port}: {e}",
                      file=sys.stderr)
                return 1
            info.update(host=srv.host, port=srv.port, units=units)
        else:
            srv = await start_modbus_rtu_server(devices, baudrate=args.baudrate)
            info.update(port_path=srv.port_path, units=units, baudrate=args.baudrate)
        stopper = srv
    _announce(info)
    try:
        await _run_until_stopped(args.duration)
    finally:
        await stopper.stop()
    return 0


def _cmd_site(args: argparse.Namespace) -> int:
    faults: dict[str, list[Fault]] = {}
    for inst, spec in args.fault:
        faults.setdefault(inst, []).extend(_faults(spec, f"--fault {inst}"))
    factory = _factory(args.values_from)
    out = args.out or Path.cwd() / f"{args.config.stem}.runtime.yaml"
    return asyncio.run(_site(args, out, faults, factory))


async def _site(args: argparse.Namespace, out: Path, faults: dict[str, list[Fault]],
                factory: ValuesFactory | None) -> int:
    from sim.site import start_site

    try:
        sim = await start_site(args.config, out, values_factory=factory, faults=faults,
                               state_dir=args.state_dir, key_file=args.key_file)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    _announce({"site": sim.site.site, "config": str(sim.config_path),
               "instruments": sim.endpoints})
    try:
        await _run_until_stopped(args.duration)
    finally:
        await sim.stop()
    return 0
