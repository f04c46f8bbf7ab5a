"""Instrument layer: CPU per reading and per Modbus request, next to baselines.

1. decode: one 10-point block (float32 CDAB) turned into Readings by the reader's
   precompiled decoder, next to the per-point ``convert_from_registers`` pymodbus offers;
2. request: CPU per read-holding-registers request, client side only (the simulator runs
   in another process): pymodbus' async client, a bare asyncio protocol, a blocking
   socket, and one full ``ModbusInstrument.poll`` (pymodbus + decode + Readings); the
   same pymodbus request over RTU on a pty;
3. site: 8 Modbus TCP instruments x 10 signals polled at 10 Hz for ``--seconds`` by the
   real readers (``build_instruments``), CPU of this process per reading; next to a
   baseline that wakes once per 100 ms slot for all 8 endpoints (blocking sockets: send
   every request, then ``select`` until every answer is in, unpack the registers).
   Paced at 10 Hz a request costs several times what it costs in the back-to-back loop
   of (2): most of the cost is waking up, so the number of wake-ups per slot matters
   more than the Modbus client's own code.

CPU is ``time.process_time`` (this process, all threads). Every figure is the median of
``--repeats`` runs.

    .venv/bin/python -m benchmarks.instrument_bench [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIGNALS = ["so2_mgm3", "nox_mgm3", "pm_mgm3", "o2_stack_pct", "flue_temp_c", "flue_kpa",
           "moisture_pct", "co_mgm3", "pm25_ugm3", "pm10_ugm3"]


def write_bench_profile(d: Path) -> Path:
    points = [{"signal": s, "register": "holding", "address": 2 * i, "data_type": "float32",
               "word_order": "CDAB", "range": [-1000, 1e7]} for i, s in enumerate(SIGNALS)]
    prof = {"id": "bench10", "version": "1", "vendor": "bench", "model": "bench",
            "protocol": "modbus", "points": points}
    path = d / "bench10.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --------------------------------------------------------------------------- decode


def bench_decode(prof_path: Path, n: int, repeats: int) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    from agent.config import InstrumentConfig
    from agent.modbus import BusPool, ModbusInstrument
    from agent.profiles import load_profile
    from stationseal.records import Reading

    prof = load_profile(prof_path)
    cfg = InstrumentConfig.model_validate({"id": "b", "profile": "bench10", "transport": {
        "type": "modbus_tcp", "host": "127.0.0.1"}})
    pool = BusPool()
    assert cfg.transport.type == "modbus_tcp"
    inst = ModbusInstrument(cfg, prof, pool.acquire(cfg.transport), pool)
    comp = inst._measure[0]
    regs = []
    for i in range(10):
        b = struct.pack(">f", 10.5 + i)
        regs += [b[2] << 8 | b[3], b[0] << 8 | b[1]]
    resp = ReadHoldingRegistersResponse(registers=regs)

    def ours() -> float:
        t0 = time.process_time()
        for _ in range(n):
            r: list[Reading] = []
            inst._decode(comp, resp, 1.0, "", r, [])
        return (time.process_time() - t0) / (n * 10) * 1e6

    dt = AsyncModbusTcpClient.DATATYPE.FLOAT32
    convert = AsyncModbusTcpClient.convert_from_registers

    def baseline() -> float:
        t0 = time.process_time()
        for _ in range(n):
            r: list[Reading] = []
            raw = resp.registers
            for i, s in enumerate(SIGNALS):
                v = convert(raw[2 * i:2 * i + 2], dt, word_order="little")
                assert isinstance(v, float)
                r.append(Reading("b", s, v, "x", 1.0, "N",
                                 struct.pack(">2H", *raw[2 * i:2 * i + 2])))
        return (time.process_time() - t0) / (n * 10) * 1e6

    mine = [ours() for _ in range(repeats)]
    theirs = [baseline() for _ in range(repeats)]
    return {"decode_us_per_reading": median(mine),
            "pymodbus_convert_us_per_reading": median(theirs)}


# --------------------------------------------------------------------------- servers


class SimProcess:
    """``stationseal sim ...`` in a subprocess (its CPU is not ours)."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "stationseal.cli", "sim", *args],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator exited with {self.p.wait()}")
        self.info: dict[str, Any] = json.loads(line)

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(10)
        if self.p.stdout:
            self.p.stdout.close()


def cpu_per(n: int, fn: Callable[[], Awaitable[Any]]) -> Coroutine[Any, Any, float]:
    async def run() -> float:
        for _ in range(20):
            await fn()
        t0 = time.process_time()
        for _ in range(n):
            await fn()
        return (time.process_time() - t0) / n * 1e6
    return run()


async def bench_requests_tcp(port: int, prof_path: Path, n: int) -> dict[str, float]:
    from pymodbus.client import AsyncModbusTcpClient

    from agent.config import InstrumentConfig
    from agent.instruments import build_instrument
    from agent.modbus import BusPool
    from agent.profiles import load_profile

    out: dict[str, float] = {}
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0, reconnect_delay=0)
    await client.connect()
    out["pymodbus_async_us_per_request"] = await cpu_per(
        n, lambda: client.read_holding_registers(0, count=20, device_id=1))
    client.close()

    loop = asyncio.get_running_loop()

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = b""
            self.fut: asyncio.Future[bytes] | None = None

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if len(self.buf) >= 6:
                n_ = struct.unpack_from(">H", self.buf, 4)[0] + 6
                if len(self.buf) >= n_ and self.fut is not None and not self.fut.done():
                    self.fut.set_result(self.buf[:n_])
                    self.buf = self.buf[n_:]

    tr, proto = await loop.create_connection(Proto, "127.0.0.1", port)
    tid = 0

    async def bare() -> bytes:
        nonlocal tid
        tid = (tid + 1) & 0xFFFF
        proto.fut = loop.create_future()
        tr.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, 0, 20))
        return await asyncio.wait_for(proto.fut, 2.0)

    out["bare_asyncio_us_per_request"] = await cpu_per(n, bare)
    tr.close()

    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def blocking() -> bytes:
        s.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 20))
        return s.recv(512)

    out["blocking_socket_us_per_request"] = await cpu_per(n, blocking)
    s.close()

    prof = load_profile(prof_path)
    cfg = InstrumentConfig.model_validate({"id": "b", "profile": "bench10", "transport": {
        "type": "modbus_tcp", "host": "127.0.0.1", "port": port}, "unit_id": 1})
    inst = build_instrument(cfg, prof, ROOT, buses=BusPool())

    async def poll() -> Any:
        r, e = await inst.poll()
        assert len(r) == 10 and not e, e
        return r

    out["instrument_poll_us_per_poll"] = await cpu_per(n, poll)
    out["instrument_poll_us_per_reading"] = out["instrument_poll_us_per_poll"] / 10
    await inst.close()
    return out


async def bench_request_rtu(port_path: str, n: int) -> float:
    from pymodbus.client import AsyncModbusSerialClient

    client = AsyncModbusSerialClient(port_path, baudrate=115200, retries=0, reconnect_delay=0)
    await client.connect()
    cost = await cpu_per(n, lambda: client.read_holding_registers(0, count=20, device_id=1))
    client.close()
    return cost


# --------------------------------------------------------------------------- site


def write_site(d: Path, prof_dir: Path) -> Path:
    site = {"site": "bench", "gateway_id": "gw-bench", "kind": "stack_cems",
            "key_file": str(d / "k.key"), "profiles_dir": str(prof_dir),
            "uplink": f"file:{d / 'frames.jsonl'}", "outbox": {"path": str(d / "ob.sqlite")},
            "instruments": [{"id": f"i{k}", "profile": "bench10", "unit_id": 1,
                             "poll_interval_s": 0.1, "timeout_s": 1.0,
                             "transport": {"type": "modbus_tcp", "host": f"10.99.0.{k + 1}"}}
                            for k in range(8)]}
    path = d / "bench-site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


async def bench_site(cfg_path: Path, seconds: float) -> dict[str, float]:
    from agent.config import load_site_config
    from agent.instruments import build_instruments

    cfg = load_site_config(cfg_path)
    insts = build_instruments(cfg)
    counts = {"readings": 0, "events": 0, "late": 0}
    period = 0.1

    async def run_one(inst: Any, stop_at: float) -> None:
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while nxt < stop_at:
            r, e = await inst.poll()
            counts["readings"] += len(r)
            counts["events"] += len(e)
            nxt += period
            delay = nxt - loop.time()
            if delay < 0:
                counts["late"] += 1
                nxt = loop.time()
            else:
                await asyncio.sleep(delay)

    loop = asyncio.get_running_loop()
    await asyncio.gather(*(run_one(i, loop.time() + 1.0) for i in insts))  # warm-up
    counts.update(readings=0, events=0, late=0)
    t0, w0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(run_one(i, loop.time() + seconds) for i in insts))
    cpu, wall = time.process_time() - t0, time.monotonic() - w0
    for i in insts:
        await i.close()
    return {"site_readings_per_s": counts["readings"] / wall,
            "site_us_cpu_per_reading": cpu / max(1, counts["readings"]) * 1e6,
            "site_cpu_pct_of_one_core": cpu / wall * 100,
            "site_events": counts["events"], "site_late_polls": counts["late"]}


def bench_site_one_wakeup(cfg_path: Path, seconds: float) -> dict[str, float]:
    from agent.config import ModbusTcpTransport, load_site_config

    cfg = load_site_config(cfg_path)
    socks = []
    for i in cfg.instruments:
        assert isinstance(i.transport, ModbusTcpTransport)
        s = socket.create_connection((i.transport.host, i.transport.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    req = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 20)
    regs = struct.Struct(">20H")
    period = 0.1

    def run(stop_at: float) -> int:
        n = 0
        nxt = time.monotonic()
        while nxt < stop_at:
            for s in socks:
                s.sendall(req)
            left = set(socks)
            while left:
                ready, _, _ = select.select(list(left), [], [], 1.0)
                if not ready:
                    raise RuntimeError("no answer within 1 s")
                for s in ready:
                    data = s.recv(512)
                    regs.unpack_from(data, 9)
                    n += 10
                    left.discard(s)
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
        return n

    try:
        run(time.monotonic() + 1.0)  # warm-up
        t0, w0 = time.process_time(), time.monotonic()
        n = run(w0 + seconds)
        cpu, wall = time.process_time() - t0, time.monotonic() - w0
    finally:
        for s in socks:
            s.close()
    return {"one_wakeup_us_cpu_per_reading": cpu / max(1, n) * 1e6,
            "one_wakeup_readings_per_s": n / wall}


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    n_req = 300 if args.quick else 2000
    seconds = 3.0 if args.quick else args.seconds

    with tempfile.TemporaryDirectory(prefix="instbench-") as tmp:
        d = Path(tmp)
        prof = write_bench_profile(d)
        dec = bench_decode(prof, 2000 if args.quick else 20000, repeats)
        print(f"decode, 10 float32 CDAB points per block (median of {repeats}):")
        print(f"  reader (precompiled structs + Reading)      "
              f"{dec['decode_us_per_reading']:7.2f} us/reading")
        print(f"  baseline: pymodbus convert_from_registers   "
              f"{dec['pymodbus_convert_us_per_reading']:7.2f} us/reading")

        tcp = SimProcess("instrument", "--profile", str(prof))
        rtu = SimProcess("instrument", "--profile", str(prof), "--transport", "rtu",
                         "--baudrate", "115200")
        try:
            runs = [asyncio.run(bench_requests_tcp(tcp.info["port"], prof, n_req))
                    for _ in range(repeats)]
            rtu_runs = [asyncio.run(bench_request_rtu(rtu.info["port_path"], n_req // 2))
                        for _ in range(repeats)]
        finally:
            tcp.stop()
            rtu.stop()
        req = {k: median([r[k] for r in runs]) for k in runs[0]}
        print(f"\nModbus request, read 20 holding registers, client CPU only "
              f"({n_req} requests, median of {repeats}):")
        print(f"  pymodbus AsyncModbusTcpClient               "
              f"{req['pymodbus_async_us_per_request']:7.1f} us/request")
        print(f"  baseline: bare asyncio protocol             "
              f"{req['bare_asyncio_us_per_request']:7.1f} us/request")
        print(f"  baseline: blocking socket                   "
              f"{req['blocking_socket_us_per_request']:7.1f} us/request")
        print(f"  ModbusInstrument.poll (10 readings)         "
              f"{req['instrument_poll_us_per_poll']:7.1f} us/poll = "
              f"{req['instrument_poll_us_per_reading']:.1f} us/reading")
        print(f"  pymodbus AsyncModbusSerialClient (RTU, pty) "
              f"{median(rtu_runs):7.1f} us/request")

        site_path = write_site(d, d)
        sim = SimProcess("site", "--config", str(site_path), "--out", str(d / "rt.yaml"))
        try:
            sites = [asyncio.run(bench_site(Path(sim.info["config"]), seconds))
                     for _ in range(repeats)]
            ones = [bench_site_one_wakeup(Path(sim.info["config"]), seconds)
                    for _ in range(repeats)]
        finally:
            sim.stop()
        site = {k: median([s[k] for s in sites]) for k in sites[0]}
        print(f"\nsite: 8 instruments x 10 signals at 10 Hz over Modbus TCP, {seconds:g} s "
              f"(median of {repeats}):")
        print(f"  readings/s                                  {site['site_readings_per_s']:7.0f}")
        print(f"  CPU per reading, instrument layer all-in    "
              f"{site['site_us_cpu_per_reading']:7.1f} us")
        print(f"  CPU share of one core                       "
              f"{site['site_cpu_pct_of_one_core']:7.1f} %")
        print(f"  events {site['site_events']:.0f}, late polls {site['site_late_polls']:.0f}")
        one = {k: median([o[k] for o in ones]) for k in ones[0]}
        print(f"  baseline: one wake-up per slot for all 8    "
              f"{one['one_wakeup_us_cpu_per_reading']:7.1f} us/reading "
              f"({one['one_wakeup_readings_per_s']:.0f} readings/s; blocking sockets, "
              f"select, no Reading objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
