"""A CEMS site with a tampering HJ 212 logger, end to end: the gateway reads the analyzer
over Modbus TCP and hears the logger over HJ 212, publishes signed frames over MQTT; the
live ingest raises the reconciliation alerts; the archived frames reproduce them offline
with `stationseal detect`."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ingest_support import create_db, drop_session, wait_for

from agent.config import load_site_config
from agent.runtime import Agent
from ingest.config import config_from_stack
from ingest.convert import frame_records
from ingest.detectors.io import write_records
from ingest.service import IngestService
from sim import stack_site
from sim.cems import CEMS_LIMITS
from sim.hj212_site import demo_tamper, driver_values_fn, send_frame, start_logger
from sim.site import start_site
from stack.manager import Credential, StackInfo
from stationseal.cli import main
from stationseal.export import read_frames
from stationseal.frame import decode
from stationseal.hj212 import CP, VERSION_2025, Frame, format_data_time, make_flag
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.verify_cli import verify_file

pytestmark = [pytest.mark.stack]

SITE = "cems-hj212-e2e"
MN = "320600E2ECEMS00000000001"
PROFILES = Path(__file__).resolve().parents[1] / "firmware-config" / "instruments"
LOGGER_SECONDS = 16.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site_yaml(tmp: Path, stack: StackInfo, cred: Credential, key: Path, port: int) -> Path:
    pw = tmp / "mqtt-password"
    pw.write_text(cred.password() + "\n")
    doc = {
        "site": SITE, "gateway_id": cred.username, "kind": "stack_cems",
        "key_file": str(key), "profiles_dir": str(PROFILES),
        "uplink": {"type": "mqtt", "host": stack.mqtt_host, "port": stack.mqtt_port,
                   "tls": {"ca": str(stack.ca_file)}, "username": cred.username,
                   "password_file": str(pw), "keepalive_s": 10},
        "outbox": {"path": str(tmp / "outbox.sqlite"), "batch_max_ms": 300},
        "hj212": {"host": "127.0.0.1", "port": port, "mn": [MN], "poll_interval_s": 0.2},
        "instruments": [{"id": "stack1.cems", "profile": "stack_cems",
                         "transport": {"type": "modbus_tcp", "host": "10.0.0.9", "port": 502},
                         "poll_interval_s": 1.0, "timeout_s": 0.5,
                         "parameter_interval_s": 5.0}],
    }
    p = tmp / "site.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def _hour_frames() -> tuple[Frame, Frame]:
    """An hourly report for two hours ago, and the same hour re-sent (RF=1) re-flagged."""
    t = (time.time() - 7200) // 3600 * 3600
    cp = {"a21026": {"Avg": "512.30", "Flag": "N"}, "a21002": {"Avg": "101.20", "Flag": "N"}}
    first = Frame(st="31", cn="2061", mn=MN, qn=format_data_time(time.time() - 1) + "000",
                  flag=make_flag(ack=True), cp=CP.build(data_time=t, pollutants=cp))
    cp2 = {**cp, "a21026": {"Avg": "512.30", "Flag": "M"}}
    again = Frame(st="31", cn="2061", mn=MN, qn=format_data_time(time.time()) + "000",
                  flag=make_flag(VERSION_2025, ack=True), rf="1",
                  cp=CP.build(data_time=t, pollutants=cp2))
    return first, again


def test_tampering_logger_alerts_live_and_offline(stack: StackInfo, new_gateway: Any,
                                                 tmp_path: Path) -> None:
    cred = new_gateway()
    gw = cred.username
    kf = generate_keypair(gw, tmp_path / "keys")
    reg = KeyRegistry()
    reg.add(gw, kf.public_key.read_bytes(), valid_from=0.0, sites=[SITE])
    reg.save(tmp_path / "registry.json")
    sites = tmp_path / "SITES.yaml"
    sites.write_text(yaml.safe_dump({"sites": {SITE: {
        "kind": "stack_cems", "location": {"lat": 32.0, "lon": 120.9},
        "limits": dict(CEMS_LIMITS)}}}))
    db = "hj212_e2e"
    create_db(stack.influx_url, db)
    client_id = "ingest-hj212-e2e"
    alerts_file = tmp_path / "alerts.jsonl"
    archive = tmp_path / "archive"
    cfg = config_from_stack(
        stack, tmp_path / "registry.json", tmp_path / "ingest", mqtt={"client_id": client_id},
        influx={"database": db, "flush_interval_ms": 50}, archive_dir=str(archive),
        alerts={"jsonl": str(alerts_file), "mqtt": False},
        detection={"enabled": True, "sites": str(sites), "reorder_s": 1.0,
                   "rules": ["E3", "E6", "HJ212"]})
    svc = IngestService(cfg).start()
    port = _free_port()
    answers: list[Frame | None] = []

    async def site() -> None:
        drivers = {"stack1.cems": stack_site.StackSiteDriver(
            SITE, time.time(), seconds_per_hour=30.0, instrument="stack1.cems")}
        sim = await start_site(_site_yaml(tmp_path, stack, cred, kf.private_key, port),
                               tmp_path / "runtime.yaml",
                               values_factory=stack_site.values_factory(drivers),
                               state_dir=tmp_path / "state")
        agent = Agent.from_config(load_site_config(tmp_path / "runtime.yaml"))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        # SO2 x 0.53, NOx copied into dust/O2/moisture, flue temperature flagged "fault"
        tamper = demo_tamper(flag_limits={"a01012": -1.0}, flag_as="D")
        logger = await start_logger(port, driver_values_fn(lambda: drivers["stack1.cems"]),
                                    mn=MN, tamper=tamper, rtd_interval=1.0,
                                    minute_period=None, hour_period=None)
        await asyncio.sleep(LOGGER_SECONDS)
        await logger.stop()
        for frame in _hour_frames():
            answers.append(await send_frame("127.0.0.1", port, frame))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 20)
        await sim.stop()
        assert len(logger.sent) >= 8

    want = {
        f"E3|{SITE}|logger|so2_mgm3|mismatch",
        f"E3|{SITE}|logger|identical|moisture_pct+nox_mgm3+o2_stack_pct+pm_mgm3",
        f"E6|{SITE}|logger|flue_temp_c|flag_not_shown",
        f"E6|{SITE}|logger.hour|so2_mgm3|late_flag",
    }

    def live_keys() -> set[str]:
        if not alerts_file.exists():
            return set()
        return {json.loads(ln)["key"] for ln in alerts_file.read_text().splitlines() if ln}

    try:
        asyncio.run(asyncio.wait_for(site(), 90))
        assert [a.cn if a else None for a in answers] == ["9014", "9014"]
        assert wait_for(lambda: want <= live_keys(), 30), sorted(live_keys())
    finally:
        svc.stop()
        drop_session(stack, client_id)

    live = {}
    for ln in alerts_file.read_text().splitlines():
        a = json.loads(ln)
        live[a["key"]] = a  # the latest update of each alert
    so2 = live[f"E3|{SITE}|logger|so2_mgm3|mismatch"]
    assert so2["rule"] == "E3" and so2["evidence"]["code"] == "a21026"
    assert so2["evidence"]["ratio"] == pytest.approx(0.53, abs=0.02)
    assert so2["evidence"]["origins"]["reported"][0]["gateway"] == gw
    assert so2["evidence"]["origins"]["measured"][0]["gateway"] == gw
    late = live[f"E6|{SITE}|logger.hour|so2_mgm3|late_flag"]
    assert (late["evidence"]["old"], late["evidence"]["new"]) == ("N", "M")
    assert not [k for k in live if k.startswith("E3|") and "nox_mgm3|mismatch" in k]

    # offline: the archived (signed, verifiable) frames give the same findings
    files = sorted(archive.glob("frames-*.jsonl"))
    merged = tmp_path / "frames.jsonl"
    merged.write_text("".join(f.read_text() for f in files))
    rep = verify_file(merged, reg)
    assert rep.ok, rep.failures
    records = [r for ff in read_frames(merged) if ff.payload is not None
               for r in frame_records(decode(ff.payload))]
    write_records(tmp_path / "records.jsonl", records)
    out = tmp_path / "offline.jsonl"
    assert main(["detect", "--in", str(tmp_path / "records.jsonl"), "--sites", str(sites),
                 "--out", str(out), "--rules", "E3,E6,HJ212"]) == 0
    offline = {json.loads(ln)["key"] for ln in out.read_text().splitlines()}
    assert want <= offline, sorted(offline)
