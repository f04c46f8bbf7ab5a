"""Whole-site simulation: every instrument of a shipped site config as a protocol peer,
and a runtime config the real readers (and agent) use unchanged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from instrument_helpers import ROOT, SITES_DIR, run

from agent.config import load_site_config
from agent.instruments import Instrument, build_instruments
from agent.profiles import Profile
from sim.faults import Fault
from sim.profiles import ValuesFn, load_values_factory
from sim.site import start_site
from stationseal.records import Event, Reading


async def _poll_all(insts: list[Instrument], until: float = 8.0
                    ) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
    """Poll every instrument until each produced readings (or ``until`` seconds)."""
    readings: dict[str, list[Reading]] = {i.id: [] for i in insts}
    events: dict[str, list[Event]] = {i.id: [] for i in insts}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + until
    while loop.time() < deadline and not all(readings.values()):
        for inst, (r, e) in zip(insts, await asyncio.gather(*(i.poll() for i in insts)),
                                strict=True):
            readings[inst.id] += r
            events[inst.id] += e
        await asyncio.sleep(0.05)
    return readings, events


def test_vehicle_site_runs_against_its_simulators(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = await start_site(SITES_DIR / "vehicle-station-example.yaml",
                               tmp_path / "run" / "site.yaml", key_file=tmp_path / "gw.key")
        try:
            cfg = load_site_config(sim.config_path)
            assert cfg.key_file == tmp_path / "gw.key"
            assert cfg.outbox.path == tmp_path / "run" / "outbox.sqlite"
            rtu = {i.transport.port for i in cfg.instruments
                   if i.transport.type == "modbus_rtu"}
            assert len(rtu) == 1  # both analyzers still share one line
            for inst in cfg.instruments:
                if inst.transport.type == "modbus_tcp":
                    assert inst.transport.host == "127.0.0.1"
            insts = build_instruments(cfg)
            try:
                readings, events = await _poll_all(insts)
            finally:
                for i in insts:
                    await i.close()
            for inst in cfg.instruments:
                got = {r.signal for r in readings[inst.id]}
                assert set(cfg.profile(inst).measurement_signals) <= got, inst.id
                assert not [e for e in events[inst.id] if e.kind != "instrument_recovered"]
        finally:
            await sim.stop()

    run(scenario(), timeout=60)


def lane_values(instrument: str, profile: Profile, lane: str | None) -> ValuesFn | None:
    """A values factory as --values-from names it: lane2's gas analyzer sees more CO."""
    if profile.id == "five_gas" and lane == "lane2":
        return lambda t: {"co_pct": 2.5}
    return None


def test_values_factory_and_per_instrument_faults(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = await start_site(SITES_DIR / "vehicle-station-example.yaml",
                               tmp_path / "site.yaml", values_factory=lane_values,
                               faults={"lane2-dyno": [Fault("exception", code=4)]})
        try:
            cfg = load_site_config(sim.config_path)
            wanted = {"lane1-gas", "lane2-gas", "lane1-dyno", "lane2-dyno"}
            insts = [i for i in build_instruments(cfg) if i.id in wanted]
            try:
                readings, events = await _poll_all(insts, until=2.0)
            finally:
                for i in insts:
                    await i.close()
            co = {k: [r.value for r in v if r.signal == "co_pct"] for k, v in readings.items()}
            assert set(co["lane2-gas"]) == {2.5}
            assert 2.5 not in co["lane1-gas"]
            assert readings["lane2-dyno"] == []
            assert events["lane2-dyno"][0].detail["error"].startswith(
                "Modbus exception 4 (server device failure)")
            assert readings["lane1-dyno"] and events["lane1-dyno"] == []
        finally:
            await sim.stop()

    run(scenario(), timeout=60)


def test_cems_site_starts(tmp_path: Path) -> None:
    async def scenario() -> None:
        sim = await start_site(SITES_DIR / "cems-site-example.yaml", tmp_path / "cems.yaml")
        try:
            cfg = load_site_config(sim.config_path)
            insts = build_instruments(cfg)
            try:
                readings, _ = await _poll_all(insts)
            finally:
                for i in insts:
                    await i.close()
            assert {r.signal for r in readings["stack1-cems"]} >= {"so2_mgm3", "flow_m3h"}
            assert readings["effluent-water"]
            raw = yaml.safe_load(sim.config_path.read_text())
            assert raw["hj212"]["port"] == 9212  # everything else kept as written
        finally:
            await sim.stop()

    run(scenario(), timeout=60)


def test_values_from_spec_errors() -> None:
    assert load_values_factory("sim.profiles:default_values_fn") is not None
    for bad, msg in [("nomodule", "expected module:function"),
                     ("no_such_module_x:f", "cannot import"),
                     ("sim.profiles:nothing", "has no callable nothing")]:
        with pytest.raises(ValueError, match=msg):
            load_values_factory(bad)


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli_sim(request: pytest.FixtureRequest) -> Iterator[Any]:
    """``stationseal sim ...`` as a subprocess; yields (its JSON announcement, process)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> dict[str, Any]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen([sys.executable, "-m", "stationseal.cli", "sim", *args],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
        procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"sim exited: {p.wait()} {p.stderr.read() if p.stderr else ''}")
        info: dict[str, Any] = json.loads(line)
        return info

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            assert p.wait(10) == 0
        if p.stdout:
            p.stdout.close()
        if p.stderr:
            p.stderr.close()


def test_cli_site_writes_a_runtime_config(cli_sim: Any, tmp_path: Path) -> None:
    info = cli_sim("site", "--config", str(SITES_DIR / "cems-site-example.yaml"),
                   "--out", str(tmp_path / "rt.yaml"), "--fault", "stack1-cems", "timeout@0-1")
    assert info["config"] == str(tmp_path / "rt.yaml")
    assert info["instruments"]["effluent-water"]["type"] == "modbus_tcp"
    assert info["instruments"]["stack1-cems"]["port"].startswith("/dev/pts/")
    cfg = load_site_config(tmp_path / "rt.yaml")
    assert cfg.instrument("effluent-water").transport.port == \
        info["instruments"]["effluent-water"]["port"]


def test_cli_rejects_bad_faults_with_usage_error() -> None:
    p = subprocess.run([sys.executable, "-m", "stationseal.cli", "sim", "instrument",
                        "--profile", "five_gas", "--faults", "explode@3"], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "fault 'explode@3'" in p.stderr
