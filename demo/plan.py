"""What the demo station is: its sites, gateways, instruments, scenario and configs.

Two sites, one gateway each, as a regional deployment would have them:

* ``demo-station``: a two-lane vehicle inspection station. Each lane has a lane
  controller (Modbus TCP), a five-gas analyzer (both analyzers on one RS-485 Modbus RTU
  line), a chassis dynamometer (Modbus TCP), an OBD adapter, a smoke opacimeter and a
  weather station (raw serial). sim/lane.py plays a sequence of tests into them.
* ``demo-cems``: a coal-fired unit's stack CEMS cabinet (Modbus RTU), played by
  sim/stack_site.py on a compressed clock, and the site's HJ 212 data logger reporting
  the same values to the gateway, tampered (sim/hj212_site.py: SO2 x 0.53, NOx copied
  into three other channels).

Instrument ids carry their lane as a prefix (``L1.analyzer``), the convention the
detectors use to tell lanes apart. The vehicle scenario is chosen so that several
patterns complete within the default two minutes (short ASM tests first); patterns on
long tests (VMAS, 195 s) complete only in longer runs, and the summary says which
planted tests had finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sim.cems import CEMS_LIMITS
from sim.lane import PRESETS, TAIL_S, Injection, LaneConfig, parse_scenario
from sim.stack_site import StackInjection, parse_stack_scenario
from stack.manager import StackInfo

STATION = "demo-station"
STATION_GW = "gw-demo-station"
CEMS = "demo-cems"
CEMS_GW = "gw-demo-cems"
CEMS_INSTRUMENT = "stack1.cems"

#: Methods each lane tests in turn: short ASM tests first, so a two-minute run finishes
#: some; every method of GB 18285 / GB 3847 comes up in a longer run.
LANE_METHODS: dict[str, tuple[str, ...]] = {
    "L1": ("asm5025", "asm2540", "idle", "vmas", "free_accel", "lug_down"),
    "L2": ("asm2540", "asm5025", "lug_down", "vmas", "idle", "free_accel"),
}
LANE_SEEDS = {"L1": 11, "L2": 23}

#: Default vehicle scenario: dyno power inconsistent and default weather on lane 1 from
#: its first test, probe out on its second; analyzer scaled down and a fabricated OBD
#: stream on lane 2; a substitute car replayed under two plates on lane 2's VMAS tests.
VEHICLE_SCENARIO = PRESETS["demo"]

SITE_LOCATIONS = {STATION: (23.02, 113.12), CEMS: (32.01, 120.86)}


def stack_scenario(seconds: float) -> str:
    """Flat SO2 from 10 % to 70 % of the run, NOx span coefficient cut at half time."""
    return (f"E4@{0.1 * seconds:.0f}-{0.7 * seconds:.0f}/signal=so2_mgm3, "
            f"E8@{0.5 * seconds:.0f}/signal=nox_mgm3/ratio=0.55")


def detector_params(seconds: float) -> dict[str, dict[str, Any]]:
    """Demo-only windows, so findings that need hours can be shown in minutes: the
    gateway stamps readings in real time, only the simulated plant runs faster."""
    flat_s = max(12.0, min(6 * 3600.0, 0.3 * seconds))
    return {
        "E4": {"window_h": round(flat_s / 3600.0, 5)},
        "E8": {"window_s": max(8.0, min(3600.0, round(0.2 * seconds)))},
    }


@dataclass(frozen=True)
class Scenario:
    lanes: dict[str, LaneConfig]
    stack: tuple[StackInjection, ...]
    vehicle_text: str
    stack_text: str


def lane_context_applied() -> bool:
    """Whether ingest turns lane controller readings into test context (it imports
    ingest/testcontext.py's LaneContexts into its pipeline when it does)."""
    import ingest.pipeline as pipeline

    return hasattr(pipeline, "LaneContexts")


#: Pause between tests: short with lane context; without it the detectors infer tests
#: from the signals and need a quiet spell longer than their 30 s gap between two tests
#: (after the test's tail, sim.lane.TAIL_S, in which car and probe are still there).
GAP_WITH_CONTEXT = (6.0, 10.0)
GAP_INFERRED = (30.0 + TAIL_S + 3.0, 30.0 + TAIL_S + 6.0)


def make_scenario(vehicle: str, stack: str | None, seconds: float, *,
                  gap_s: tuple[float, float] = GAP_WITH_CONTEXT) -> Scenario:
    """Lane configs and stack injections; ValueError names a bad scenario entry."""
    injs = parse_scenario(vehicle)
    unknown = {i.lane for i in injs} - set(LANE_METHODS)
    if unknown:
        raise ValueError(f"scenario names lane(s) {', '.join(sorted(unknown))}; the demo "
                         f"station has {', '.join(LANE_METHODS)}")
    lanes: dict[str, LaneConfig] = {}
    for lane, methods in LANE_METHODS.items():
        mine: tuple[Injection, ...] = tuple(i for i in injs if i.lane == lane)
        lanes[lane] = LaneConfig(STATION, lane, methods, gap_s=gap_s, lead_s=1.0,
                                 seed=LANE_SEEDS[lane], max_emission_factor=0.8,
                                 injections=mine)
    stack_text = stack_scenario(seconds) if stack is None else stack
    return Scenario(lanes, tuple(parse_stack_scenario(stack_text)), vehicle, stack_text)


# --------------------------------------------------------------------------- configs


def _uplink(info: StackInfo, gateway: str) -> dict[str, Any]:
    cred = info.gateway(gateway)
    return {"type": "mqtt", "host": info.mqtt_host, "port": info.mqtt_port,
            "tls": {"ca": str(info.ca_file)}, "username": cred.username,
            "password_file": str(cred.password_file), "keepalive_s": 10}


def _inst(iid: str, profile: str, transport: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"id": iid, "profile": profile, "transport": transport, "poll_interval_s": 1.0,
            "timeout_s": 0.5, "backoff_initial_s": 0.5, "backoff_max_s": 5.0, **kw}


def station_site(info: StackInfo, key_file: Path, profiles: Path, state: Path,
                 ntp: str | None = None) -> dict[str, Any]:
    """The vehicle station as its commissioning engineer writes it (transports are
    rewritten by the simulators to where they listen)."""
    insts: list[dict[str, Any]] = []
    rtu = {"type": "modbus_rtu", "port": "/dev/ttyUSB0", "baudrate": 19200}
    for n, lane in enumerate(LANE_METHODS, start=1):
        tcp = {"type": "modbus_tcp", "host": f"192.168.10.{20 + n}", "port": 502}
        insts += [
            _inst(f"{lane}.lane", "lane_controller",
                  {"type": "modbus_tcp", "host": f"192.168.10.{10 + n}", "port": 502},
                  lane=lane),
            _inst(f"{lane}.analyzer", "five_gas", rtu, unit_id=n, lane=lane,
                  parameter_interval_s=10.0),
            _inst(f"{lane}.dyno", "chassis_dyno", tcp, lane=lane),
            _inst(f"{lane}.obd", "obd_adapter",
                  {"type": "serial", "port": f"/dev/ttyS{10 * n + 1}", "baudrate": 38400},
                  lane=lane),
            _inst(f"{lane}.opacimeter", "opacimeter",
                  {"type": "serial", "port": f"/dev/ttyS{10 * n + 2}", "baudrate": 9600},
                  lane=lane),
            _inst(f"{lane}.weather", "weather_station",
                  {"type": "serial", "port": f"/dev/ttyS{10 * n + 3}", "baudrate": 4800},
                  lane=lane),
        ]
    return {
        "site": STATION, "gateway_id": STATION_GW, "kind": "vehicle_inspection",
        "key_file": str(key_file), "profiles_dir": str(profiles),
        "uplink": _uplink(info, STATION_GW),
        "outbox": {"path": str(state / "station-outbox.sqlite"), "batch_max_ms": 1000},
        "clock": _clock(ntp),
        "instruments": insts,
    }


def cems_site(info: StackInfo, key_file: Path, profiles: Path, state: Path,
              hj212_port: int, ntp: str | None = None) -> dict[str, Any]:
    """The stack site; its gateway also listens for the site's HJ 212 data logger."""
    from sim.hj212_site import hj212_section

    return {
        "site": CEMS, "gateway_id": CEMS_GW, "kind": "stack_cems",
        "key_file": str(key_file), "profiles_dir": str(profiles),
        "uplink": _uplink(info, CEMS_GW),
        "outbox": {"path": str(state / "cems-outbox.sqlite"), "batch_max_ms": 1000},
        "clock": _clock(ntp),
        "hj212": hj212_section(hj212_port),
        "instruments": [_inst(
            CEMS_INSTRUMENT, "stack_cems",
            {"type": "modbus_rtu", "port": "/dev/ttyAMA0", "baudrate": 9600, "parity": "E"},
            parameter_interval_s=1.0)],
    }


def _clock(ntp: str | None) -> dict[str, Any]:
    """A deployed gateway measures its clock against NTP servers; the demo's is an SNTP
    server on loopback (sim/sntp.py), checked every 10 s."""
    if ntp is None:
        return {"ntp_check": True}
    return {"ntp_servers": [ntp], "check_interval_s": 10.0, "max_offset_s": 1.0}


def bound_instruments(site_doc: dict[str, Any]) -> list[str]:
    """The instrument ids a site's gateway key is bound to in the registry: its
    instruments and, if it listens for one, the HJ 212 logger (which covers the logger's
    ``logger.minute`` / ``logger.hour`` streams)."""
    ids = {i["id"] for i in site_doc["instruments"]}
    if site_doc.get("hj212") is not None:
        ids.add(site_doc["hj212"].get("instrument", "logger"))
    return sorted(ids)


def sites_yaml() -> dict[str, Any]:
    sites: dict[str, Any] = {}
    for site, kind, limits in ((STATION, "vehicle_inspection", {}),
                               (CEMS, "stack_cems", dict(CEMS_LIMITS))):
        lat, lon = SITE_LOCATIONS[site]
        sites[site] = {"kind": kind, "location": {"lat": lat, "lon": lon}, "limits": limits}
    return {"sites": sites}


def central_config(info: StackInfo, *, registry: Path, authority: Path, state: Path,
                   alerts: Path, sites: Path, params: Path, central_key: Path | None = None,
                   archive: Path | None = None) -> dict[str, Any]:
    """CENTRAL.yaml for `stationseal ingest run`, pointing at the demo stack. With
    ``central_key`` the receipt log signs checkpoints (every 10 s in the demo);
    ``archive`` keeps every accepted frame as received, for evidence packages."""
    from ingest.config import config_from_stack, dump_config

    extra: dict[str, Any] = {"registry_authority": str(authority)}
    if central_key is not None:
        extra["custody"] = {"key_file": str(central_key), "origin": "demo-central",
                            "checkpoint_interval_s": 10.0}
    if archive is not None:
        extra["archive_dir"] = str(archive)
    cfg = config_from_stack(
        info, registry, state, **extra,
        alerts={"jsonl": str(alerts)},
        detection={"enabled": True, "sites": str(sites), "params": str(params),
                   "reorder_s": 2.0, "finish_on_stop": True},
        chain={"gap_grace_s": 30.0},
    )
    return dump_config(cfg)


def write_yaml(path: Path, doc: dict[str, Any], header: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    path.write_text((header + "\n" if header else "") + text, encoding="utf-8")
    return path
