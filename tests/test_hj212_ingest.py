"""Legacy sites without a gateway: HJ 212 straight into ingest (ingest/hj212_ingest.py),
stored unsigned in InfluxDB and answered only once stored."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_support import create_db, drop_session, influx_query

from ingest.config import ConfigError, config_from_stack, parse_config
from ingest.hj212_ingest import HJ212Ingest, point_ts
from ingest.metrics import Metrics
from ingest.service import IngestService
from ingest.store import Store
from sim.hj212_logger import HJ212Logger, Tamper, synthetic_values
from sim.hj212_site import revision_frame, send_frame
from stack.manager import StackInfo
from stationseal.hj212 import CP, Frame, make_flag, parse_data_time
from stationseal.keys import KeyRegistry

MN = "320600LEGACY000000000001"
SITE = "legacy-stack-1"


def _registry(tmp: Path) -> Path:
    reg = tmp / "registry.json"
    KeyRegistry().save(reg)
    return reg


@pytest.mark.stack
def test_legacy_logger_stored_unsigned_and_answered(stack: StackInfo, tmp_path: Path) -> None:
    db = "hj212_legacy"
    create_db(stack.influx_url, db)
    client_id = "ingest-hj212-legacy"
    cfg = config_from_stack(
        stack, _registry(tmp_path), tmp_path / "state", mqtt={"client_id": client_id},
        influx={"database": db}, hj212={"host": "127.0.0.1", "port": 0,
                                        "loggers": [{"mn": MN, "site": SITE}]})
    svc = IngestService(cfg).start()
    t0 = (time.time() - 3 * 3600) // 60 * 60
    try:
        port = svc.hj212.port
        values = synthetic_values("31", seed=5)
        limit = sorted(values(t0 + 60 * k)["a21026"][0] for k in range(1, 7))[3]

        async def scenario() -> tuple[HJ212Logger, list[Frame | None]]:
            logger = HJ212Logger("127.0.0.1", port, mn=MN, st="31", values_fn=values,
                                 rtd_interval=60.0, minute_period=None, hour_period=None,
                                 speed=None, start_time=t0, ack_timeout=5.0,
                                 tamper=Tamper(flag_limits={"a21026": limit}, flag_as="M"))
            async with logger:
                await logger.run(ticks=6)
            first = logger.history[0]
            repeat = Frame(st="31", cn="2011", mn=MN, qn=first.qn, flag=make_flag(ack=True),
                           cp=CP.build(data_time=first.data_time, pollutants={
                               c: {k: f"{v:.2f}" if isinstance(v, float) else v
                                   for k, v in f.items()} for c, f in first.reported.items()}))
            stranger = repeat.replace(mn="OTHER000000000000000000X", qn="20240101000000000")
            answers = [await send_frame("127.0.0.1", port, repeat),
                       await send_frame("127.0.0.1", port, revision_frame(
                           first, mn=MN, changes={"a21026": {"Flag": "D"}})),
                       await send_frame("127.0.0.1", port, stranger)]
            return logger, answers

        logger, answers = asyncio.run(asyncio.wait_for(scenario(), 60))
        assert all(r.acked and r.attempts == 1 for r in logger.history)
        assert [a.cn if a else None for a in answers] == ["9014", "9014", "9014"]
        m = svc.metrics
        assert m.get("hj212_frames_total", result="stored") == 7
        assert m.get("hj212_frames_total", result="duplicate") == 1
        assert m.get("hj212_frames_total", result="unknown_mn") == 1
        q = [r for r in svc.store.quarantine_rows() if r.source == "hj212"]
        assert [r.reason for r in q] == ["unknown_mn"] and q[0].payload.startswith(b"##")
    finally:
        svc.stop()
        drop_session(stack, client_id)

    rows = influx_query(stack.influx_url, db,
                        "SELECT value, quality, qn, raw FROM reading WHERE trust = 'unsigned' "
                        "AND signal = 'so2_mgm3' GROUP BY site, instrument, mn")
    assert len(rows) == 1 and rows[0]["tags"] == {"site": SITE, "instrument": "logger", "mn": MN}
    vals = rows[0]["values"]
    assert len(vals) == 7  # six reports + the revision stored beside the first
    sent = {r.qn: r for r in logger.history}
    flags = set()
    for ts, value, quality, qn, raw in vals:
        if qn not in sent:
            continue
        rec = sent[qn]
        assert ts // 1_000_000_000 == int(parse_data_time(rec.data_time))
        assert value == pytest.approx(float(rec.reported["a21026"]["Rtd"]), abs=0.006)
        assert quality == rec.reported["a21026"]["Flag"]
        assert raw.startswith("a21026-Rtd=")
        flags.add(quality)
    assert flags == {"N", "M"}
    ev = influx_query(stack.influx_url, db, "SELECT detail FROM event WHERE kind = "
                      "'flag_changed' AND trust = 'unsigned'")
    assert len(ev) == 1 and len(ev[0]["values"]) == 1
    d = json.loads(ev[0]["values"][0][1])
    assert (d["signal"], d["old"], d["new"]) == ("so2_mgm3", sent[logger.history[0].qn]
                                                 .reported["a21026"]["Flag"], "D")
    signed = influx_query(stack.influx_url, db,
                          "SELECT count(value) FROM reading WHERE trust != 'unsigned'")
    assert signed == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_not_answered_while_influxdb_is_down(tmp_path: Path) -> None:
    dead = _free_port()
    cfg = parse_config({
        "registry": str(_registry(tmp_path)),
        "registry_authority": str(tmp_path / "registry.json.authority.pub.pem"),
        "state_dir": str(tmp_path / "state"),
        "influx": {"url": f"http://127.0.0.1:{dead}", "timeout_s": 0.5},
        "hj212": {"host": "127.0.0.1", "port": 0, "loggers": [{"mn": MN, "site": SITE}]},
    })
    (tmp_path / "state").mkdir()
    store = Store(cfg.db_path)
    ing = HJ212Ingest(cfg, store, Metrics()).start()
    frame = Frame(st="31", cn="2011", mn=MN, qn="20240501120000001", flag=make_flag(ack=True),
                  cp=CP.build(data_time="20240501120000",
                              pollutants={"a21026": {"Rtd": "1.5", "Flag": "N"}}))
    try:
        answer = asyncio.run(send_frame("127.0.0.1", ing.port, frame, timeout=1.5))
    finally:
        ing.stop()
        store.close()
    assert answer is None  # not stored, so not answered: the logger will resend
    assert ing.metrics.get("hj212_frames_total", result="stored") == 0


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    base: dict[str, Any] = {"registry": "r.json", "registry_authority_fingerprint": "0" * 64,
                            "state_dir": "s"}
    with pytest.raises(ConfigError, match="MN X listed twice"):
        parse_config({**base, "hj212": {"loggers": [{"mn": "X", "site": "a"},
                                                    {"mn": "X", "site": "b"}]}})
    with pytest.raises(ConfigError, match=r"hj212\.loggers\[0\]\.site: Field required"):
        parse_config({**base, "hj212": {"loggers": [{"mn": "X"}]}})
    cfg = parse_config({**base, "hj212": {"loggers": [{"mn": "X", "site": "a",
                                                       "sm4_key": "0011"}]}})
    assert cfg.hj212 is not None
    with pytest.raises(ConfigError, match="32 hex digits"):
        cfg.hj212.loggers[0].resolved_key()


def test_point_timestamps_keep_resends_and_revisions_apart() -> None:
    t = 1714536000.0
    assert point_ts(t, "A") == point_ts(t, "A")  # a resend overwrites itself
    assert point_ts(t, "A") != point_ts(t, "B")  # a revision is stored beside it
    assert point_ts(t, "B") // 1_000_000 == round(t * 1000)  # the millisecond is kept
