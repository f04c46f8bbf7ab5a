"""The gateway hears the site's HJ 212 logger (agent/hj212_source.py): readings sealed
with flags and raw CP text, answers only after sealing, repeats not sealed twice,
revisions sealed as flag_changed / reported_revision, serial line, site config."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_helpers import file_agent, frames_of, make_keys, verify

from agent.config import load_site_config
from agent.hj212_source import HJ212Source
from agent.instruments import build_instruments
from agent.runtime import Agent
from agent.yamlcfg import ConfigError
from sim.hj212_logger import HJ212Logger, Tamper, synthetic_values
from sim.hj212_site import revision_frame, send_frame
from sim.pty import open_pty
from stationseal.hj212 import CP, Frame, StreamDecoder, make_flag, parse_data_time
from stationseal.records import Event, Reading

GW = "gw-hj212"
MN = "320600TEST00000000000001"
PROFILES = Path(__file__).resolve().parents[2] / "firmware-config" / "instruments"


def _t0() -> float:
    # three hours ago, on a minute boundary: revisions are then "after the data time"
    return (time.time() - 3 * 3600) // 60 * 60


async def _start(agent: Agent, src: HJ212Source) -> asyncio.Task[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    task.stop = stop  # type: ignore[attr-defined]
    for _ in range(200):
        if src._listener is not None:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("listener did not start")


async def _stop(task: asyncio.Task[None]) -> None:
    task.stop.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(task, 20)


def _readings(frames: list[Any], inst: str) -> list[Reading]:
    return [r for f in frames for r in f.readings if r.instrument == inst]


def _events(frames: list[Any], kind: str) -> list[Event]:
    return [e for f in frames for e in f.events if e.kind == kind]


def test_logger_over_tcp_sealed_with_flags_answered_after_sealing(tmp_path: Path) -> None:
    signer, reg = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    src = HJ212Source(instrument="logger", port=0, poll_interval_s=0.05)
    agent = file_agent(tmp_path, signer, GW, [src], out)
    t0 = _t0()
    # SO2 over its median is flagged D by the manipulated logger, which also reports
    # SO2 x 0.53
    values = synthetic_values("31", seed=3)
    limit = sorted(values(t0 + 30 * k)["a21026"][0] for k in range(1, 9))[4]
    tamper = Tamper(scale={"a21026": 0.53}, flag_limits={"a21026": limit}, flag_as="D")
    sealed_qns: set[str] = set()
    early: list[str] = []

    async def scenario() -> HJ212Logger:
        task = await _start(agent, src)
        assert agent.sealer is not None
        orig = agent.sealer._seal_store

        def spy(readings: list[Reading], events: list[Event]) -> None:
            orig(readings, events)
            sealed_qns.update(e.detail["qn"] for e in events if e.kind == "hj212_frame")

        agent.sealer._seal_store = spy  # type: ignore[method-assign]
        logger = HJ212Logger("127.0.0.1", src.bound_port or 0, mn=MN, st="31",
                             values_fn=values, rtd_interval=30.0,
                             minute_period=60.0, hour_period=None, speed=None,
                             start_time=t0, tamper=tamper, ack_timeout=3.0)
        orig_pf = logger._on_platform_frame

        async def watch(frame: Frame) -> None:
            if frame.cn == "9014" and frame.qn not in sealed_qns:
                early.append(frame.qn or "")
            await orig_pf(frame)

        logger._on_platform_frame = watch  # type: ignore[method-assign]
        async with logger:
            await logger.run(ticks=8)
        await _stop(task)
        return logger

    logger = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert all(r.acked for r in logger.history), [(r.qn, r.attempts) for r in logger.history]
    assert not early, f"answered before the data were sealed: {early}"
    assert all(r.attempts == 1 for r in logger.history)
    rep = verify(out, reg)
    assert rep.ok, rep.failures
    frames = frames_of(out)
    rtd = _readings(frames, "logger")
    sent_rtd = [r for r in logger.history if r.cn == "2011"]
    assert len(rtd) == 8 * len(sent_rtd[0].reported)  # every value, once
    by_time: dict[float, dict[str, Reading]] = {}
    for r in rtd:
        by_time.setdefault(r.time, {})[r.signal] = r
    flags_seen = set()
    for rec in sent_rtd:
        got = by_time[parse_data_time(rec.data_time)]
        so2 = got["so2_mgm3"]
        rep_so2 = rec.reported["a21026"]
        assert so2.value == pytest.approx(round(float(rep_so2["Rtd"]), 2))
        assert so2.quality == rep_so2["Flag"]  # flag letter for letter
        flags_seen.add(so2.quality)
        assert so2.raw == f"a21026-Rtd={float(rep_so2['Rtd']):.2f},a21026-Flag={so2.quality}" \
            .encode()
        # flow is sent in m³/s and sealed in the canonical m³/h
        flow = got["flow_m3h"]
        assert flow.unit == "m³/h"
        assert flow.value == pytest.approx(round(float(rec.reported["a00000"]["Rtd"]), 2) * 3600)
    assert flags_seen == {"N", "D"}, "the tamper threshold should hit some samples"
    minute = _readings(frames, "logger.minute")
    sent_min = [r for r in logger.history if r.cn == "2051"]
    assert sent_min and len(minute) == len(sent_min) * len(sent_min[0].reported)
    m0 = next(r for r in minute if r.signal == "so2_mgm3"
              and r.time == parse_data_time(sent_min[0].data_time))
    assert m0.value == pytest.approx(round(float(sent_min[0].reported["a21026"]["Avg"]), 2))
    assert b"a21026-Min=" in (m0.raw or b"") and b"a21026-Max=" in (m0.raw or b"")
    fe = _events(frames, "hj212_frame")
    assert sorted(e.detail["qn"] for e in fe) == sorted(r.qn for r in logger.history)
    assert all(e.detail["raw"].startswith("##") and e.detail["mn"] == MN for e in fe)
    # The logger's password never reaches a sealed frame (or, through it, any export).
    assert all("PW=***" in e.detail["raw"] and e.detail["redacted"] == ["PW"] for e in fe)
    assert b"123456" not in b"".join(f.body for f in frames)


def test_repeat_not_sealed_twice_and_unanswered_while_outbox_fails(tmp_path: Path) -> None:
    signer, reg = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    src = HJ212Source(port=0, poll_interval_s=0.05, ack_timeout_s=0.4)
    agent = file_agent(tmp_path, signer, GW, [src], out)
    fail = {"n": 0}

    async def scenario() -> HJ212Logger:
        task = await _start(agent, src)
        assert agent.sealer is not None
        orig = agent.sealer._seal_store

        def flaky(readings: list[Reading], events: list[Event]) -> None:
            if fail["n"] > 0 and any(e.kind == "hj212_frame" for e in events):
                fail["n"] -= 1
                raise OSError(28, "No space left on device")
            orig(readings, events)

        agent.sealer._seal_store = flaky  # type: ignore[method-assign]
        logger = HJ212Logger("127.0.0.1", src.bound_port or 0, mn=MN, st="31",
                             values_fn=synthetic_values("31", seed=1), rtd_interval=30.0,
                             minute_period=None, hour_period=None, speed=None,
                             start_time=_t0(), ack_timeout=1.0, retries=5)
        async with logger:
            await logger.run(ticks=1)
            fail["n"] = 3  # the next frame cannot be stored for a while
            await logger.run(ticks=1)
            await logger.run(ticks=1)
        await _stop(task)
        return logger

    logger = asyncio.run(asyncio.wait_for(scenario(), 60))
    h = list(logger.history)
    assert [r.acked for r in h] == [True, True, True]
    assert h[0].attempts == 1 and h[1].attempts >= 2  # not answered while not stored
    assert src.duplicates >= 1
    assert verify(out, reg).ok
    frames = frames_of(out)
    qns = [e.detail["qn"] for e in _events(frames, "hj212_frame")]
    assert sorted(qns) == sorted(r.qn for r in h)  # the repeat was not sealed again
    assert len(_readings(frames, "logger")) == 3 * len(h[0].reported)


def test_revision_of_past_data_sealed_as_flag_changed(tmp_path: Path) -> None:
    signer, reg = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    src = HJ212Source(port=0, poll_interval_s=0.05)
    agent = file_agent(tmp_path, signer, GW, [src], out)

    async def scenario() -> tuple[HJ212Logger, list[Frame | None]]:
        task = await _start(agent, src)
        port = src.bound_port or 0
        logger = HJ212Logger("127.0.0.1", port, mn=MN, st="31",
                             values_fn=synthetic_values("31", seed=2), rtd_interval=60.0,
                             minute_period=None, hour_period=3600.0, speed=None,
                             send_realtime=False,
                             start_time=_t0(), ack_timeout=3.0)
        async with logger:
            await logger.run(ticks=61)
        hour = next(r for r in logger.history if r.cn == "2061")
        answers = [
            # the operator re-flags the past hour's SO2 as maintenance (RF=1, new QN)
            await send_frame("127.0.0.1", port, revision_frame(
                hour, mn=MN, changes={"a21026": {"Flag": "M"}})),
            # ... and lowers NOx of that hour without touching its flag
            await send_frame("127.0.0.1", port, revision_frame(
                hour, mn=MN, changes={"a21026": {"Flag": "M"}, "a21002": {"Avg": 1.25}},
                qn_time=time.time() + 1)),
        ]
        await _stop(task)
        return logger, answers

    logger, answers = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert all(a is not None and a.cn == "9014" for a in answers)
    assert verify(out, reg).ok
    frames = frames_of(out)
    hour = next(r for r in logger.history if r.cn == "2061")
    fc = _events(frames, "flag_changed")
    assert len(fc) == 1, fc
    d = fc[0].detail
    assert fc[0].instrument == "logger.hour"
    assert (d["signal"], d["code"], d["old"], d["new"], d["resent"]) == \
        ("so2_mgm3", "a21026", "N", "M", True)
    assert d["old_qn"] == hour.qn and d["new_qn"] != hour.qn
    assert d["data_time"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(
        parse_data_time(hour.data_time))))
    assert fc[0].time - parse_data_time(hour.data_time) > 3600  # after the data time
    rv = _events(frames, "reported_revision")
    assert len(rv) == 1 and rv[0].detail["signal"] == "nox_mgm3"
    assert rv[0].detail["new"] == 1.25 and rv[0].detail["flag"] == "N"
    # the revised values are sealed as readings too: both versions are evidence
    so2_hour = [r for r in _readings(frames, "logger.hour") if r.signal == "so2_mgm3"]
    assert sorted(r.quality for r in so2_hour) == ["M", "M", "N"]


def test_unknown_mn_recorded_not_answered_and_garbage_sealed(tmp_path: Path) -> None:
    signer, _reg = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    src = HJ212Source(port=0, poll_interval_s=0.05, mn=[MN], ack_timeout_s=2.0)
    agent = file_agent(tmp_path, signer, GW, [src], out)
    frame = Frame(st="31", cn="2011", mn="OTHER0000000000000000001", qn="20240501120000001",
                  flag=make_flag(ack=True),
                  cp=CP.build(data_time="20240501120000",
                              pollutants={"a21026": {"Rtd": "1.0", "Flag": "N"}}))

    async def scenario() -> Frame | None:
        task = await _start(agent, src)
        port = src.bound_port or 0
        answer = await send_frame("127.0.0.1", port, frame, timeout=1.0)
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"garbage\r\n")
        await w.drain()
        await asyncio.sleep(0.3)
        w.close()
        await asyncio.sleep(0.3)
        await _stop(task)
        return answer

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) is None
    frames = frames_of(out)
    rej = _events(frames, "hj212_rejected")
    assert len(rej) == 1 and rej[0].detail["mn"] == frame.mn
    assert not _readings(frames, "logger")
    bad = _events(frames, "malformed_response")
    assert bad and "outside any frame" in bad[0].detail["error"]


def test_logger_on_a_serial_line(tmp_path: Path) -> None:
    from agent.config import Hj212Serial

    signer, _reg = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    pty = open_pty()
    src = HJ212Source(serial_line=Hj212Serial(port=pty.path), poll_interval_s=0.05)
    agent = file_agent(tmp_path, signer, GW, [src], out)
    frame = Frame(st="31", cn="2011", mn=MN, qn="20240501120000001", flag=make_flag(ack=True),
                  cp=CP.build(data_time="20240501120000",
                              pollutants={"a21026": {"Rtd": "12.5", "Flag": "C"}}))

    async def scenario() -> list[Frame]:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        for _ in range(200):
            if src._serial is not None:
                break
            await asyncio.sleep(0.01)
        os.write(pty.master, frame.encode())
        dec = StreamDecoder()
        got: list[Frame] = []
        for _ in range(300):
            await asyncio.sleep(0.01)
            try:
                data = os.read(pty.master, 4096)
            except BlockingIOError:
                continue
            got += [x for x in dec.feed(data) if isinstance(x, Frame)]
            if got:
                break
        stop.set()
        await asyncio.wait_for(task, 20)
        return got

    try:
        answers = asyncio.run(asyncio.wait_for(scenario(), 30))
    finally:
        pty.close()
    assert [a.cn for a in answers] == ["9014"] and answers[0].qn == frame.qn
    r = _readings(frames_of(out), "logger")
    assert [(x.signal, x.value, x.quality) for x in r] == [("so2_mgm3", 12.5, "C")]


def _site(tmp_path: Path, hj212: dict[str, Any]) -> Path:
    doc = {
        "site": "s1", "gateway_id": GW, "kind": "stack_cems",
        "key_file": str(tmp_path / "k.key"), "profiles_dir": str(PROFILES),
        "uplink": "file:" + str(tmp_path / "f.jsonl"),
        "outbox": {"path": str(tmp_path / "o.sqlite")},
        "instruments": [{"id": "cems", "profile": "stack_cems",
                         "transport": {"type": "modbus_tcp", "host": "127.0.0.1"}}],
        "hj212": hj212,
    }
    p = tmp_path / "site.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_site_config_section(tmp_path: Path) -> None:
    keyf = tmp_path / "sm4.key"
    keyf.write_text("00112233445566778899aabbccddeeff\n")
    cfg = load_site_config(_site(tmp_path, {"port": 9212, "mn": [MN],
                                            "sm4_key_file": "sm4.key"}))
    insts = build_instruments(cfg)
    src = insts[-1]
    assert isinstance(src, HJ212Source)
    assert (src.id, src.port, src.mn, src.sm4_key) == \
        ("logger", 9212, frozenset({MN}), bytes.fromhex("00112233445566778899aabbccddeeff"))
    with pytest.raises(ConfigError, match=r"hj212\.port: required"):
        load_site_config(_site(tmp_path, {"mn": [MN]}))
    keyf.write_text("0011\n")
    with pytest.raises(ConfigError, match=r"sm4_key_file.*16 bytes"):
        build_instruments(load_site_config(_site(tmp_path, {"port": 1,
                                                            "sm4_key_file": "sm4.key"})))
    with pytest.raises(ConfigError, match="already used"):
        build_instruments(load_site_config(_site(tmp_path, {"port": 1, "instrument": "cems"})))
