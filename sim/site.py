"""Start every instrument of a site config as a simulator and write the runtime config.

The runtime config is the same site YAML with each transport pointed at its simulator
(TCP endpoints -> 127.0.0.1:<free port>, serial and RTU ports -> pty paths, parity N since
Linux ptys reject parity flags), so the real agent runs unchanged against simulated
instruments. Instruments that share a TCP endpoint
or an RTU line in the site config share one simulated server there too, so bus sharing and
per-port locking are exercised as on site.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.config import (
    FileUplink,
    InstrumentConfig,
    ModbusRtuTransport,
    ModbusTcpTransport,
    MqttUplink,
    SiteConfig,
    load_site_config,
)
from agent.yamlcfg import read_yaml
from sim.faults import Fault, FaultPlan
from sim.modbus_server import (
    ModbusSimServer,
    SimulatedDevice,
    start_modbus_rtu_server,
    start_modbus_tcp_server,
)
from sim.profiles import ValuesFactory
from sim.serial_instrument import SerialInstrumentSim, start_serial_instrument


@dataclass
class SiteSim:
    """A running simulated site."""

    site: SiteConfig
    config_path: Path
    modbus: list[ModbusSimServer] = field(default_factory=list)
    serial: dict[str, SerialInstrumentSim] = field(default_factory=dict)
    #: instrument id -> (server, unit) for Modbus instruments
    units: dict[str, tuple[ModbusSimServer, int]] = field(default_factory=dict)
    #: instrument id -> where the agent reaches it
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)

    def set_value(self, instrument: str, signal: str, value: Any) -> None:
        if instrument in self.serial:
            self.serial[instrument].set_value(signal, value)
        else:
            server, unit = self.units[instrument]
            server.set_value(signal, value, unit)

    async def stop(self) -> None:
        for s in self.modbus:
            await s.stop()
        for ser in self.serial.values():
            await ser.stop()


def _values_fn(factory: ValuesFactory | None, inst: InstrumentConfig, site: SiteConfig) -> Any:
    if factory is None:
        return None
    return factory(inst.id, site.profile(inst), inst.lane)


async def start_site(config: str | Path, out: str | Path, *,
                     values_factory: ValuesFactory | None = None,
                     faults: Mapping[str, list[Fault]] | None = None,
                     state_dir: str | Path | None = None,
                     key_file: str | Path | None = None) -> SiteSim:
    """Start simulators for every instrument of ``config`` and write the runtime config
    to ``out``. ``faults`` maps instrument ids to faults; ``state_dir`` (default: the
    directory of ``out``) receives the outbox and file-uplink paths of the runtime config.
    """
    site = load_site_config(config)
    faults = faults or {}
    unknown = set(faults) - {i.id for i in site.instruments}
    if unknown:
        raise ValueError(f"faults for unknown instruments: {', '.join(sorted(unknown))}")
    out = Path(out).resolve()
    sim = SiteSim(site, out)
    tcp_groups: dict[tuple[str, int], list[InstrumentConfig]] = {}
    rtu_groups: dict[str, list[InstrumentConfig]] = {}
    try:
        for inst in site.instruments:
            t = inst.transport
            if isinstance(t, ModbusTcpTransport):
                tcp_groups.setdefault((t.host, t.port), []).append(inst)
            elif isinstance(t, ModbusRtuTransport):
                rtu_groups.setdefault(t.port, []).append(inst)
            else:
                ser = await start_serial_instrument(
                    site.profile(inst), _values_fn(values_factory, inst, site),
                    FaultPlan(faults.get(inst.id, [])))
                sim.serial[inst.id] = ser
                sim.endpoints[inst.id] = {"type": "serial", "port": ser.port_path,
                                          "parity": "N"}
        for insts in tcp_groups.values():
            server = await start_modbus_tcp_server(_devices(insts, site, values_factory, faults))
            sim.modbus.append(server)
            for i in insts:
                sim.units[i.id] = (server, i.unit_id)
                sim.endpoints[i.id] = {"type": "modbus_tcp", "host": server.host,
                                       "port": server.port}
        for insts in rtu_groups.values():
            line = insts[0].transport
            assert isinstance(line, ModbusRtuTransport)
            server = await start_modbus_rtu_server(
                _devices(insts, site, values_factory, faults), baudrate=line.baudrate,
                stopbits=line.stopbits, bytesize=line.bytesize)
            sim.modbus.append(server)
            for i in insts:
                sim.units[i.id] = (server, i.unit_id)
                sim.endpoints[i.id] = {"type": "modbus_rtu", "port": server.port_path,
                                       "parity": "N"}
        write_runtime_config(site, sim.endpoints, out,
                             Path(state_dir).resolve() if state_dir else out.parent,
                             Path(key_file).resolve() if key_file else None)
        sim.site = load_site_config(out)
    except BaseException:
        await sim.stop()
        raise
    return sim


def _devices(insts: list[InstrumentConfig], site: SiteConfig,
             factory: ValuesFactory | None,
             faults: Mapping[str, list[Fault]]) -> list[SimulatedDevice]:
    return [SimulatedDevice(i.unit_id, site.profile(i), _values_fn(factory, i, site),
                            FaultPlan(faults.get(i.id, []))) for i in insts]


def write_runtime_config(site: SiteConfig, endpoints: Mapping[str, Mapping[str, Any]],
                         out: Path, state_dir: Path, key_file: Path | None) -> None:
    """The site YAML as written by its author, with transports rewritten and every
    path made absolute (the runtime file lives elsewhere)."""
    assert site.source is not None
    data = copy.deepcopy(read_yaml(site.source))
    data["profiles_dir"] = str(site.profiles_dir)
    if key_file is not None or site.key_file is not None:
        data["key_file"] = str(key_file or site.key_file)
    data["outbox"]["path"] = str(state_dir / site.outbox.path.name)
    up = site.uplink
    if isinstance(up, FileUplink):
        data["uplink"] = {"type": "file", "path": str(state_dir / up.path.name)}
    elif isinstance(up, MqttUplink):
        if up.tls is not None:
            data["uplink"]["tls"] = {k: str(v) for k, v in up.tls.model_dump().items()
                                     if v is not None}
        if up.password_file is not None:
            data["uplink"]["password_file"] = str(up.password_file)
    for raw in data["instruments"]:
        ep = endpoints[raw["id"]]
        t = dict(raw["transport"])
        t.update(ep)
        raw["transport"] = t
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Runtime config written by `stationseal sim site` from {site.source}:\n"
              "# transports point at simulated instruments. Serial lines are pseudo-terminals,\n"
              "# which refuse parity settings (EINVAL on Linux), so they run without parity.\n")
    out.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                   encoding="utf-8")
