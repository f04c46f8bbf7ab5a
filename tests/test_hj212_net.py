"""The simulated data logger against HJ212Listener over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sim.hj212_logger import HJ212Logger, SentRecord, Tamper, synthetic_values
from stationseal.hj212 import (
    CP,
    Frame,
    HJ212Connection,
    HJ212Listener,
    Reassembler,
    StreamDecoder,
    StreamError,
    make_flag,
    parse_data_time,
    parse_frame,
)

START = 1714536000.0  # 2024-05-01 12:00:00 China Standard Time
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class Platform:
    """Listener plus everything it received."""

    def __init__(
        self,
        handler: Callable[[Frame, HJ212Connection], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.frames: list[Frame] = []
        self.errors: list[StreamError] = []
        self.handler = handler
        self.listener = HJ212Listener(self.on_frame, on_error=self.on_error, **kwargs)

    async def on_frame(self, frame: Frame, conn: HJ212Connection) -> None:
        if self.handler is not None:
            await self.handler(frame, conn)
        self.frames.append(frame)

    async def on_error(self, error: StreamError, conn: HJ212Connection) -> None:
        self.errors.append(error)


def logger_for(platform: Platform, **kwargs: Any) -> HJ212Logger:
    options: dict[str, Any] = {
        "mn": "MNSIM0000000000000000001",
        "values_fn": synthetic_values("31", seed=3),
        "speed": None,
        "start_time": START,
        "ack_timeout": 2.0,
    }
    options.update(kwargs)
    return HJ212Logger("127.0.0.1", platform.listener.port, **options)


async def settle(platform: Platform, count: int) -> None:
    """Wait until the platform has handled ``count`` frames (answers are sent before)."""
    while len(platform.frames) < count:
        await asyncio.sleep(0.01)


def test_logger_sends_realtime_minute_hour_data_and_gets_answers() -> None:
    platform = Platform()

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(platform)
            async with logger:
                await logger.run(ticks=250)
            return logger

    logger = run(scenario())
    history = list(logger.history)
    assert [(f.cn, f.qn) for f in platform.frames] == [(r.cn, r.qn) for r in history]
    assert all(r.acked is True and r.attempts == 1 for r in history)
    counts = {cn: sum(r.cn == cn for r in history) for cn in ("2011", "2051", "2061")}
    assert counts == {"2011": 250, "2051": 125, "2061": 2}
    assert all(f.ack_requested and f.st == "31" and f.version == 1 for f in platform.frames)

    # Aggregates agree with the real-time data the platform received for the same period.
    rtd: dict[float, dict[str, float]] = {}
    for f in platform.frames:
        if f.cn == "2011":
            epoch = f.cp.data_epoch()
            assert epoch is not None
            rtd[epoch] = {c: p.rtd for c, p in f.cp.pollutants.items() if p.rtd is not None}
    for f in platform.frames:
        if f.cn not in ("2051", "2061"):
            continue
        start = f.cp.data_epoch()
        assert start is not None
        period = 60.0 if f.cn == "2051" else 3600.0
        assert start % period == 0
        window = [v for t, v in rtd.items() if start <= t < start + period]
        assert window
        for code, pol in f.cp.pollutants.items():
            values = [w[code] for w in window]
            assert pol.avg == pytest.approx(sum(values) / len(values), abs=0.011)
            assert pol.min == pytest.approx(min(values))
            assert pol.max == pytest.approx(max(values))
        flow = f.cp.pollutants["a00000"]
        assert flow.cou == pytest.approx((flow.avg or 0) * period, rel=1e-3)


def test_tamper_scenarios_as_seen_by_the_platform() -> None:
    def values(t: float) -> dict[str, tuple[float, str]]:
        so2 = 554.0 if int(t / 30) % 2 else 400.0
        return {
            "a21026": (so2, "N"),
            "a21002": (100.0 + math.sin(t / 600) * 20, "N"),
            "a34013": (8.0, "N"),
            "a19001": (9.5, "N"),
            "a01014": (7.0, "N"),
        }

    tamper = Tamper(
        scale={"a21026": 294.49 / 554},
        copy_from="a21002",
        copy_to=("a34013", "a19001", "a01014"),
        flag_limits={"a21026": 550.0},
        flag_as="D",
    )
    platform = Platform()

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(
                platform, values_fn=values, tamper=tamper, minute_period=None, hour_period=None
            )
            async with logger:
                await logger.run(ticks=20)
            return logger

    logger = run(scenario())
    records: list[SentRecord] = list(logger.history)
    assert len(platform.frames) == 20
    for frame, record in zip(platform.frames, records, strict=True):
        pol = frame.cp.pollutants
        measured_so2 = record.measured["a21026"]["Rtd"]
        assert isinstance(measured_so2, float)
        if measured_so2 == 554.0:
            # (a) the prosecuted case: 554 reported as 294.49; (c) and flagged as a fault
            assert pol["a21026"].fields == {"Rtd": "294.49", "Flag": "D"}
        else:
            assert pol["a21026"].fields == {"Rtd": f"{400 * 294.49 / 554:.2f}", "Flag": "N"}
        # (b) three unrelated channels carry the NOx signal
        nox = pol["a21002"].fields["Rtd"]
        assert [pol[c].fields["Rtd"] for c in ("a34013", "a19001", "a01014")] == [nox] * 3
        assert record.measured["a34013"]["Rtd"] == 8.0  # ground truth kept
        assert record.reported["a21026"]["Rtd"] == pytest.approx(measured_so2 * 294.49 / 554)


def test_no_answers_without_the_a_bit() -> None:
    platform = Platform()

    async def scenario() -> tuple[HJ212Logger, int]:
        async with platform.listener:
            logger = logger_for(platform, ack=False, minute_period=None, hour_period=None)
            async with logger:
                await logger.run(ticks=5)
                await settle(platform, 5)
                answers = sum(c.answers_sent for c in platform.listener.connections)
            return logger, answers

    logger, answers = run(scenario())
    assert answers == 0
    assert [f.flag for f in platform.frames] == [4] * 5
    assert all(r.acked is None for r in logger.history)


def test_failed_handler_is_not_answered_and_the_logger_resends() -> None:
    failed: set[str] = set()

    async def flaky(frame: Frame, conn: HJ212Connection) -> None:
        if frame.qn not in failed:
            failed.add(frame.qn or "")
            raise RuntimeError("storage unavailable")

    platform = Platform(flaky)

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(platform, ack_timeout=0.5, minute_period=None, hour_period=None)
            async with logger:
                await logger.run(ticks=2)
            return logger

    logger = run(scenario())
    # Each frame failed once, so each was sent at least twice (more only on a slow machine).
    assert all(r.acked and r.attempts >= 2 for r in logger.history)
    assert failed == {r.qn for r in logger.history} == {f.qn for f in platform.frames}


def test_logger_reconnects_after_the_platform_drops_it() -> None:
    dropped: list[str] = []

    async def drop_first(frame: Frame, conn: HJ212Connection) -> None:
        if not dropped:
            dropped.append(frame.qn or "")
            conn.close()
            raise ConnectionResetError("simulated outage")

    platform = Platform(drop_first)

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(platform, ack_timeout=0.3, minute_period=None, hour_period=None)
            async with logger:
                await logger.run(ticks=4)
            return logger

    logger = run(scenario())
    assert logger.connects >= 2
    assert all(r.acked for r in logger.history)
    assert sorted({f.qn or "" for f in platform.frames}) == sorted(r.qn for r in logger.history)


def test_platform_requests_get_9011_and_9012() -> None:
    asked: list[bool] = []

    async def ask(frame: Frame, conn: HJ212Connection) -> None:
        if frame.cn == "2011" and not asked:
            asked.append(True)
            for cn, params in (("1062", {"RtdInterval": "60"}), ("1011", {}), ("3012", {})):
                await conn.send(
                    Frame(
                        st="31",
                        cn=cn,
                        mn=frame.mn,
                        qn=f"20240501120001{cn[1:]}",
                        flag=make_flag(ack=True),
                        cp=CP.build(params=params),
                    )
                )

    platform = Platform(ask)

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(platform, minute_period=None, hour_period=None)
            async with logger:
                await logger.run(ticks=1)
                await settle(platform, 1 + 6)
            return logger

    logger = run(scenario())
    replies = [(f.cn, f.qn, f.cp.params) for f in platform.frames if f.cn != "2011"]
    assert ("9011", "20240501120001062", {"QnRtn": "1"}) in replies
    assert ("9012", "20240501120001062", {"ExeRtn": "1"}) in replies
    assert ("9011", "20240501120001012", {"QnRtn": "2"}) in replies  # not supported: refused
    (time_report,) = [f for f in platform.frames if f.cn == "1011"]
    assert parse_data_time(time_report.cp.params["SystemTime"]) == START + 30
    assert logger.rtd_interval == 60.0
    assert [r.cn for r in logger.requests] == ["1062", "1011", "3012"]


def test_encrypted_logger_and_listener() -> None:
    platform = Platform(sm4_key=lambda mn: KEY if mn.startswith("MNSIM") else None)

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(
                platform, sm4_key=KEY, version=2, minute_period=60.0, hour_period=None
            )
            async with logger:
                await logger.run(ticks=4)
            return logger

    logger = run(scenario())
    assert all(r.acked for r in logger.history)
    assert all(f.encrypted and f.version == 2 and f.ack_requested for f in platform.frames)
    assert b"a21026" not in logger.history[0].wire
    assert "a21026" in platform.frames[0].cp.pollutants
    # Encrypted minute data no longer fits one frame: sent as packets, and they reassemble.
    reassembler = Reassembler()
    merged = [m for m in map(reassembler.add, platform.frames) if m is not None]
    assert any(f.is_split for f in platform.frames) and reassembler.pending == 0
    minute = [m for m in merged if m.cn == "2051"]
    records = [r for r in logger.history if r.cn == "2051"]
    assert len(minute) == len(records) >= 1
    for frame, record in zip(minute, records, strict=True):
        assert frame.qn == record.qn and not frame.is_split
        assert set(frame.cp.pollutants) == set(record.reported)


def test_listener_reports_garbage_answers_frames_and_heartbeats() -> None:
    platform = Platform()
    upload = Frame(
        st="31",
        cn="2011",
        mn="RAW1",
        qn="20240501120000001",
        flag=make_flag(ack=True),
        cp=CP.build(data_time="20240501120000"),
    ).encode()
    heartbeat = Frame(
        st="91", cn="9015", mn="RAW1", qn="20240501120000002", flag=make_flag(2, ack=True)
    ).encode()

    async def scenario() -> list[Frame]:
        async with platform.listener:
            reader, writer = await asyncio.open_connection("127.0.0.1", platform.listener.port)
            writer.write(b"garbage\r\n" + upload[:20])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(upload[20:] + heartbeat)
            await writer.drain()
            decoder, answers = StreamDecoder(), list[Frame]()
            while len(answers) < 2:
                answers += [
                    a for a in decoder.feed(await reader.read(4096)) if isinstance(a, Frame)
                ]
            writer.write(b"##0010trunc")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            while len(platform.errors) < 2:
                await asyncio.sleep(0.01)
            return answers

    answers = run(scenario())
    assert [(a.cn, a.qn, a.st) for a in answers] == [
        ("9014", "20240501120000001", "91"),
        ("9013", "20240501120000002", "91"),
    ]
    assert answers[1].flag == 8  # a 2025 heartbeat gets a 2025 answer
    assert [f.cn for f in platform.frames] == ["2011", "9015"]
    assert platform.errors[0].raw == b"garbage\r\n" and platform.errors[0].offset == 0
    assert platform.errors[1].raw == b"##0010trunc"


def test_listener_stop_closes_connections() -> None:
    platform = Platform()

    async def scenario() -> bytes:
        await platform.listener.start()
        port = platform.listener.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        assert len(platform.listener.connections) == 1
        await platform.listener.stop()
        data = await reader.read(100)
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        return data

    assert run(scenario()) == b""
    assert platform.listener.connections == set()


def test_parse_of_logger_wire_matches_history() -> None:
    platform = Platform()

    async def scenario() -> HJ212Logger:
        async with platform.listener:
            logger = logger_for(platform, minute_period=None, hour_period=None, ack=False)
            async with logger:
                await logger.run(ticks=2)
                await settle(platform, 2)
            return logger

    logger = run(scenario())
    for record, frame in zip(logger.history, platform.frames, strict=True):
        assert parse_frame(record.wire) == frame
