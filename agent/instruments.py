"""The instrument layer's public face: one protocol, one factory.

The agent runtime sees every instrument the same way, whatever the wire::

    inst = build_instrument(inst_cfg, profile, site_dir)
    readings, events = await inst.poll()   # never raises for instrument trouble
    await inst.close()

``poll`` returns whatever the instrument produced since the previous call: for polled
devices the answer to this poll's requests, for free-running serial devices every frame
received meanwhile (each with its arrival time). Failures come back as events
(``instrument_fault``, ``malformed_response``, then ``instrument_recovered``), which the
runtime seals like readings. Back-off is internal: during it ``poll`` returns quickly
with nothing, so the runtime may keep calling it on its schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from agent.siteplan import ConfigError, InstrumentConfig, Profile, plain_site, to_plain
from stationseal.records import Event, Reading

if TYPE_CHECKING:
    from agent.modbus import BusPool
    from agent.siteplan import ModbusRtuTransport, ModbusTcpTransport

__all__ = ["Instrument", "build_instrument", "build_instruments"]


@runtime_checkable
class Instrument(Protocol):
    id: str
    #: the instrument's entry of the site config (poll_interval_s, lane, ...)
    config: InstrumentConfig

    async def poll(self) -> tuple[list[Reading], list[Event]]: ...

    async def close(self) -> None: ...


def build_instrument(inst_cfg: InstrumentConfig, profile: Profile, site_dir: Path, *,
                     buses: BusPool | None = None) -> Instrument:
    """Make the reader for one configured instrument. No I/O happens here: ports and
    connections are opened by the first ``poll`` (and reopened after failures), so a
    missing device at start-up is an event, not a crash.

    Modbus instruments on the same serial port or TCP endpoint share one client and lock
    through ``buses`` (default: a process-wide pool). The readers' modules are imported
    here, by the first instrument that needs them: a site without serial instruments
    never loads the serial reader, one without Modbus never loads pymodbus.

    ``inst_cfg`` and ``profile`` are the plain copies (agent/siteplan.py); validated
    pydantic models are accepted too and copied.
    """
    inst_cfg, profile = _plain(inst_cfg), _plain(profile)
    if inst_cfg.transport.type == "serial":
        if profile.protocol != "serial":
            raise ConfigError(f"instrument {inst_cfg.id}: profile {profile.id} is "
                              f"{profile.protocol}, transport is serial")
        from agent.serial_reader import SerialInstrument

        return SerialInstrument(inst_cfg, profile, site_dir)
    if profile.protocol != "modbus":
        raise ConfigError(f"instrument {inst_cfg.id}: profile {profile.id} is serial, "
                          f"transport is {inst_cfg.transport.type}")
    from agent.modbus import DEFAULT_POOL, ModbusInstrument

    pool = buses or DEFAULT_POOL
    bus = pool.acquire(cast("ModbusTcpTransport | ModbusRtuTransport", inst_cfg.transport))
    return ModbusInstrument(inst_cfg, profile, bus, pool)


def _plain(obj: Any) -> Any:
    return to_plain(obj)


def build_instruments(cfg: Any) -> list[Instrument]:
    """Readers for every instrument of a site, sharing buses among themselves. ``cfg``:
    the validated site config, plain (agent/siteplan.py) or its pydantic model."""
    cfg = plain_site(cfg)
    pool: BusPool | None = None
    if any(i.transport.type != "serial" for i in cfg.instruments):
        from agent.modbus import BusPool

        pool = BusPool()
    out = [build_instrument(i, cfg.profile(i), cfg.site_dir, buses=pool)
           for i in cfg.instruments]
    if cfg.hj212 is not None:
        # The site's HJ 212 data logger, heard as one more upper platform.
        from agent.hj212_source import HJ212Source

        out.append(HJ212Source.from_site_config(cfg))
    return out
