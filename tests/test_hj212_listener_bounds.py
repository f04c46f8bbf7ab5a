"""The HJ 212 listener faces the network: idle connections and half-sent frames time out,
connections are capped per address and in total, the ingest binds loopback unless told
otherwise, and a flood of idle connections leaves /healthz and real loggers working.

Each limit is tested on both sides. Extra client addresses are taken from 127.0.0.0/8
(all local on Linux), so "another address" needs no network setup.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ingest_support import wait_for

from ingest.config import HJ212IngestConfig
from ingest.metrics import fetch
from stationseal.hj212 import CP, Frame, HJ212Connection, HJ212Listener, make_flag
from stationseal.hj212.stream import StreamError
from stationseal.keys import KeyRegistry


def _frame(mn: str = "MNTEST0001", qn: str = "20240101000000000") -> bytes:
    f = Frame(st="31", cn="2011", mn=mn, qn=qn, flag=make_flag(ack=True),
              cp=CP.build(data_time="20240101000000", pollutants={"a21026": {"Rtd": "1.0",
                                                                               "Flag": "N"}}))
    return f.encode()


async def _connect(port: int, src: str = "127.0.0.1"
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes the connection (EOF) within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(4096):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


class _Sink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.errors: list[StreamError] = []

    async def on_frame(self, f: Frame, c: HJ212Connection) -> None:
        self.frames.append(f)

    async def on_error(self, e: StreamError, c: HJ212Connection) -> None:
        self.errors.append(e)


def test_idle_connection_is_closed_but_a_talking_one_is_not() -> None:
    sink = _Sink()

    async def scenario() -> None:
        async with HJ212Listener(sink.on_frame, on_error=sink.on_error,
                                 idle_timeout_s=0.6, frame_timeout_s=5) as lst:
            idle_r, idle_w = await _connect(lst.port)
            talk_r, talk_w = await _connect(lst.port)
            for k in range(6):  # a frame every 0.25 s for 1.5 s: never idle 0.6 s
                talk_w.write(_frame(qn=f"2024010100000000{k}"))
                await talk_w.drain()
                await asyncio.sleep(0.25)
            assert await _closed_within(idle_r, 0.1), "idle connection still open"
            assert not await _closed_within(talk_r, 0.1)
            assert lst.idle_closed == 1 and len(lst.connections) == 1
            for w in (idle_w, talk_w):
                w.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert len(sink.frames) == 6 and not sink.errors


def test_half_sent_frame_times_out_even_when_trickled() -> None:
    sink = _Sink()
    raw = _frame()

    async def scenario() -> None:
        async with HJ212Listener(sink.on_frame, on_error=sink.on_error,
                                 idle_timeout_s=30, frame_timeout_s=1.0) as lst:
            r, w = await _connect(lst.port)
            # One byte every 0.3 s: never idle, but the frame is not complete after 1 s.
            t0 = time.monotonic()
            closed = False
            for b in raw[: len(raw) // 2]:
                try:
                    w.write(bytes([b]))
                    await w.drain()
                except ConnectionError:
                    closed = True
                    break
                if await _closed_within(r, 0.3):
                    closed = True
                    break
            assert closed, "trickled half frame held the connection"
            assert 0.9 <= time.monotonic() - t0 < 5
            assert lst.frame_timeouts == 1
            # A whole frame sent at once on a new connection is fine.
            _r2, w2 = await _connect(lst.port)
            w2.write(raw)
            await w2.drain()
            await asyncio.sleep(0.3)
            w2.close()
            w.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    # The partial bytes are accounted for (on_error: truncated frame), not dropped.
    assert len(sink.errors) == 1 and raw.startswith(sink.errors[0].raw)
    assert len(sink.frames) == 1


def test_connection_caps_per_address_and_in_total() -> None:
    sink = _Sink()

    async def scenario() -> None:
        async with HJ212Listener(sink.on_frame, max_per_address=3,
                                 max_connections=5) as lst:
            held = [await _connect(lst.port) for _ in range(3)]  # at the cap: accepted
            await asyncio.sleep(0.1)
            for r, _ in held:
                assert not await _closed_within(r, 0.05)
            r4, w4 = await _connect(lst.port)  # one over the per-address cap
            assert await _closed_within(r4, 2)
            assert lst.refused == 1
            other = [await _connect(lst.port, "127.0.0.2") for _ in range(2)]  # total 5
            await asyncio.sleep(0.1)
            for r, _ in other:
                assert not await _closed_within(r, 0.05)
            # Over the total cap: the stranger idle longest (held[0]) makes room.
            r6, w6 = await _connect(lst.port, "127.0.0.3")
            assert await _closed_within(held[0][0], 2)
            assert not await _closed_within(r6, 0.2)
            assert lst.evicted == 1 and len(lst.connections) == 5
            # Connections that delivered a frame are never closed for a newcomer.
            conns = [*held[1:], *other, (r6, w6)]
            for k, (_, w) in enumerate(conns):
                w.write(_frame(qn=f"2024010100000001{k}"))
                await w.drain()
            await asyncio.sleep(0.3)
            r7, w7 = await _connect(lst.port, "127.0.0.4")
            assert await _closed_within(r7, 2)
            assert lst.refused == 2 and lst.evicted == 1
            for r, _ in conns:
                assert not await _closed_within(r, 0.05)
            for _, w in [*conns, held[0], (r4, w4), (r7, w7)]:
                w.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(sink.frames) == 5


def test_ingest_listener_binds_loopback_by_default() -> None:
    assert HJ212IngestConfig().host == "127.0.0.1"


# --------------------------------------------------------------------------- real process


def _nofile(limit: int) -> Any:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return preexec


@pytest.mark.stack
def test_connection_flood_leaves_healthz_and_real_loggers_working(make_stack: Any,
                                                                  tmp_path: Path) -> None:
    """562 idle connections against an ingest with a 512 file limit used to make /healthz
    unreachable and refuse real loggers."""
    info = make_stack(gateways=("gw-a",), name="hjflood")
    KeyRegistry().save(tmp_path / "registry.json")
    state = tmp_path / "state"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    hj_port = s.getsockname()[1]
    s.close()
    cfg = tmp_path / "central.yaml"
    cfg.write_text(yaml.safe_dump({
        "mqtt": {"host": info.mqtt_host, "port": info.mqtt_port,
                 "tls": {"ca_file": str(info.ca_file)}, "username": "ingest",
                 "password_file": str(info.ingest.password_file),
                 "client_id": "ingest-hjflood"},
        "influx": {"url": info.influx_url, "database": info.influx_database},
        "registry": "registry.json", "registry_authority": "registry.json.authority.pub.pem", "state_dir": "state", "metrics": {"port": 0},
        "hj212": {"port": hj_port, "loggers": [{"mn": "MNTEST0001", "site": "legacy-1"}]},
    }))
    log = tmp_path / "ingest.log"
    with open(log, "ab") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=errf, preexec_fn=_nofile(512))

    def health() -> tuple[int, dict[str, Any]] | None:
        try:
            port = json.loads((state / "run" / "worker-0.json").read_text())["metrics_port"]
            st, text = fetch(f"http://127.0.0.1:{port}/healthz", timeout=3.0)
            return st, dict(json.loads(text))
        except (OSError, ValueError, KeyError):
            return None

    flood: list[socket.socket] = []
    try:
        assert wait_for(lambda: (health() or (0, {}))[1].get("ok") is True, 30), \
            log.read_text()[-2000:]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 700:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        for k in range(562):
            c = socket.socket()
            c.bind((f"127.0.0.{2 + k % 200}", 0))  # 200 addresses, a few each
            c.settimeout(5)
            try:
                c.connect(("127.0.0.1", hj_port))
            except OSError:
                c.close()
                continue
            flood.append(c)
        time.sleep(1.0)
        h = health()
        assert h is not None and h[0] == 200 and h[1]["ok"] is True, h

        async def real_logger() -> bytes:
            r, w = await asyncio.open_connection("127.0.0.1", hj_port)
            w.write(_frame())
            await w.drain()
            async with asyncio.timeout(15):
                answer = await r.readuntil(b"\r\n")
            w.close()
            return answer

        answer = asyncio.run(real_logger())
        assert b"CN=9014" in answer, answer
        _, text = fetch(f"http://127.0.0.1:{json.loads((state / 'run' / 'worker-0.json').read_text())['metrics_port']}/metrics")
        closed = [float(ln.split()[-1]) for ln in text.splitlines()
                  if ln.startswith(("stationseal_ingest_hj212_refused_connections",
                                    "stationseal_ingest_hj212_evicted_connections"))]
        assert len(closed) == 2 and sum(closed) >= 562 - 256, text[-2000:]
    finally:
        for c in flood:
            c.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
