"""1,000 gateways through the broker into InfluxDB: loss, latency, memory.

A load generator of lightweight publishers: each simulated gateway has its own Ed25519
key (in the registry the ingest verifies against), its own broker account, its own TLS
connection and MQTT 3.1.1 session, and seals real frames (chained, signed) at its own
rate. The publishers are asyncio tasks speaking just enough MQTT (CONNECT, PUBLISH QoS 1,
PUBACK, PINGREQ), so one process drives a thousand of them; a paho client per gateway
would need a thread each.

Default: NATS cluster, 2 ingest workers, 1,000 gateways, one frame every 10 s with 30
readings each (a monitoring site's 30 signals; 3,000 readings/s in all), 10 minutes.
Reported: frames and readings sent and stored (zero loss means every reading of every
acknowledged frame is in InfluxDB and no gateway shows a gap), latency from a frame's
creation to its readings being written and acknowledged (p50/p90/p99 interpolated in the
ingest's histogram buckets), peak RSS of the broker (all nodes) and of the ingest workers,
and their CPU share.

    python -m benchmarks.fleet_load                      # the full run (10 minutes)
    python -m benchmarks.fleet_load --quick              # 1 minute
    python -m benchmarks.fleet_load --broker mosquitto --gateways 200 --minutes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ingest.config import config_from_stack, dump_config
from stack import manager as st
from stationseal.frame import ZERO_HASH, seal
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.records import Reading
from stationseal.signing import Signer, load_signer

SIGNALS = ("so2_mgm3", "nox_mgm3")


@dataclass
class Sim:
    gw: str
    password: str
    signer: Signer
    boot: bytes = field(default_factory=lambda: os.urandom(16))
    seq: int = 0
    prev: bytes = ZERO_HASH
    sent: int = 0
    acked: int = 0
    errors: int = 0


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def _read_packet(r: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await r.readexactly(1))[0]
    mult, n = 1, 0
    while True:
        b = (await r.readexactly(1))[0]
        n += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    return head, await r.readexactly(n)


async def gateway(sim: Sim, host: str, port: int, ctx: ssl.SSLContext, topic: str,
                  interval: float, n_readings: int, until: float, start_delay: float) -> None:
    """One gateway: connect, then seal and publish a frame every ``interval`` seconds
    (QoS 1, waiting for the PUBACK before the next: as the agent's outbox does)."""
    await asyncio.sleep(start_delay)
    r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    body = (_utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _utf8(f"fleet-{sim.gw}")
            + _utf8(sim.gw) + _utf8(sim.password))
    w.write(b"\x10" + _remaining(len(body)) + body)
    head, data = await _read_packet(r)
    if head != 0x20 or data[1] != 0:
        raise ConnectionError(f"{sim.gw}: CONNACK {head:#x} {data!r}")
    tb = _utf8(topic)
    nxt = time.time()
    pid = 0
    while time.time() < until:
        now = time.time()
        sim.seq += 1
        rs = [Reading("cems-1", SIGNALS[i % 2] if i < 2 else f"ch{i}", 10.0 + random.random(),
                      "mg/m3", now - interval + (i + 1) * interval / (n_readings + 1), "N", None)
              for i in range(n_readings)]
        f = seal(sim.signer, gateway_id=sim.gw, site=f"site-{sim.gw}", boot_id=sim.boot,
                 seq=sim.seq, prev_hash=sim.prev, created=now, clock_sync="synced",
                 readings=rs, events=[])
        sim.prev = f.frame_hash
        pid = pid % 65535 + 1
        pkt = tb + struct.pack("!H", pid) + f.payload
        w.write(b"\x32" + _remaining(len(pkt)) + pkt)
        await w.drain()
        sim.sent += 1
        while True:  # PUBACK (and whatever else the broker sends)
            head, data = await asyncio.wait_for(_read_packet(r), 60)
            if head == 0x40 and struct.unpack("!H", data[:2])[0] == pid:
                sim.acked += 1
                break
        nxt += interval
        await asyncio.sleep(max(0.0, nxt - time.time()))
    w.write(b"\xe0\x00")
    await w.drain()
    w.close()


async def drive(sims: list[Sim], info: st.StackInfo, ports: list[int], interval: float,
                n_readings: int, seconds: float) -> None:
    ctx = info.tls_context()
    until = time.time() + seconds
    tasks = []
    for i, s in enumerate(sims):
        port = ports[i % len(ports)]
        tasks.append(asyncio.create_task(gateway(
            s, info.mqtt_host, port, ctx, info.topic(s.gw, "frames"), interval, n_readings,
            until, start_delay=interval * i / len(sims))))
    res = await asyncio.gather(*tasks, return_exceptions=True)
    errs = [r for r in res if isinstance(r, BaseException)]
    if errs:
        print(f"{len(errs)} gateway(s) failed, first: {errs[0]!r}")


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
                if ln.startswith("VmRSS:"):
                    total += int(ln.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tck


def _pid(info: st.StackInfo, component: str) -> list[int]:
    try:
        return [int(json.loads((info.dir / "run" / f"{component}.json").read_text())["pid"])]
    except (OSError, ValueError, KeyError):
        return []


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def influx_count(info: st.StackInfo, db: str, q: str) -> int:
    qs = urllib.parse.urlencode({"db": db, "q": q})
    with urllib.request.urlopen(f"{info.influx_url}/query?{qs}", timeout=60) as r:
        doc = json.loads(r.read())
    series = doc["results"][0].get("series", [])
    return sum(int(s["values"][0][1]) for s in series)


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def latency_percentiles(text: str, qs: tuple[float, ...]) -> list[float]:
    """Percentiles from the merged ``reading_latency_seconds`` histogram, linear within
    a bucket."""
    buckets: dict[float, float] = {}
    for ln in text.splitlines():
        if ln.startswith("stationseal_ingest_reading_latency_seconds_bucket"):
            le = ln.split('le="', 1)[1].split('"', 1)[0]
            b = float("inf") if le == "+Inf" else float(le)
            buckets[b] = buckets.get(b, 0.0) + float(ln.rsplit(" ", 1)[1])
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return [float("nan")] * len(qs)
    total = buckets[bounds[-1]]
    out = []
    for q in qs:
        target = q * total
        lo_b, lo_c = 0.0, 0.0
        for b in bounds:
            c = buckets[b]
            if c >= target:
                hi = b if b != float("inf") else lo_b * 2
                frac = (target - lo_c) / (c - lo_c) if c > lo_c else 1.0
                out.append(lo_b + (hi - lo_b) * frac)
                break
            lo_b, lo_c = b, c
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.gateways
    gws = [f"fl{i:04d}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="fleet-") as d:
        tmp = Path(d)
        t0 = time.monotonic()
        info = st.up(tmp / "stack", gws, broker=args.broker, timeout=120)
        print(f"stack ({args.broker}) with {n} gateway accounts up in "
              f"{time.monotonic() - t0:.0f} s")
        try:
            reg = KeyRegistry()
            sims = []
            for gw in gws:
                kf = generate_keypair(gw, tmp / "keys", overwrite=True)
                reg.add(gw, kf.public_key.read_bytes(), valid_from=0.0, sites=[f"site-{gw}"])
                sims.append(Sim(gw, info.gateway(gw).password(), load_signer(kf.private_key)))
            reg.save(tmp / "registry.json")
            db = "fleet"
            data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode()
            urllib.request.urlopen(f"{info.influx_url}/query", data=data, timeout=30).read()
            import socket

            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            mport = s.getsockname()[1]
            s.close()
            over: dict[str, Any] = {"influx": {"database": db}, "shard": {"count": args.workers},
                                    "metrics": {"port": mport}}
            if info.nats is not None:
                over["nats"] = {"lease_ttl_s": 5.0}
            cfg = config_from_stack(info, tmp / "registry.json", tmp / "state", **over)
            cfg_path = tmp / "central.yaml"
            cfg_path.write_text(yaml.safe_dump(dump_config(cfg)))
            with open(tmp / "ingest.log", "ab") as log:
                ingest = subprocess.Popen(
                    [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config",
                     str(cfg_path), "--log-level", "warning"], stderr=log)
            try:
                deadline = time.monotonic() + 60
                while not metrics_text(mport) and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(8 if info.nats is not None else 2)  # leases / sessions settle
                if info.nats is not None:
                    from stack import nats as sn

                    ports = sn.mqtt_ports(info)
                    broker = [p for c in sn.COMPONENTS for p in _pid(info, c)]
                else:
                    ports = [info.mqtt_port]
                    broker = _pid(info, "mosquitto")
                workers = [*_children(ingest.pid), ingest.pid]
                peak = {"broker": 0.0, "ingest": 0.0}
                cpu0 = (cpu_s(broker), cpu_s(workers), time.monotonic())

                async def sample(stop: asyncio.Event) -> None:
                    while not stop.is_set():
                        peak["broker"] = max(peak["broker"], rss_mb(broker))
                        peak["ingest"] = max(peak["ingest"], rss_mb(workers))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 5)

                async def main() -> None:
                    stop = asyncio.Event()
                    smp = asyncio.create_task(sample(stop))
                    await drive(sims, info, ports, args.interval, args.readings,
                                args.minutes * 60)
                    stop.set()
                    await smp

                print(f"driving {n} gateways for {args.minutes:g} min: a frame of "
                      f"{args.readings} readings every {args.interval:g} s each "
                      f"({n * args.readings / args.interval:,.0f} readings/s offered)")
                asyncio.run(main())
                t_pub = time.monotonic()
                acked = sum(s.acked for s in sims)
                want = acked * args.readings
                deadline = time.monotonic() + 300
                stored = 0
                while time.monotonic() < deadline:
                    stored = influx_count(info, db, 'SELECT count("seq") FROM "reading"')
                    if stored >= want:
                        break
                    time.sleep(2)
                drain_s = time.monotonic() - t_pub
                cpu1 = (cpu_s(broker), cpu_s(workers), time.monotonic())
                wall = cpu1[2] - cpu0[2]
                text = metrics_text(mport)
                p50, p90, p99 = latency_percentiles(text, (0.5, 0.9, 0.99))
                gaps = influx_count(info, db, "SELECT count(\"count\") FROM \"integrity\" "
                                              "WHERE \"kind\" = 'gap'")
                per_gw_short = sum(1 for s in sims if s.acked != s.sent)
                return {
                    "gateways": n, "frames_sent": sum(s.sent for s in sims),
                    "frames_acked": acked, "readings_acked": want, "readings_stored": stored,
                    "gaps": gaps, "unacked_gateways": per_gw_short,
                    "drain_after_s": drain_s, "p50_s": p50, "p90_s": p90, "p99_s": p99,
                    "broker_rss_mb": peak["broker"], "ingest_rss_mb": peak["ingest"],
                    "broker_cpu_pct": 100 * (cpu1[0] - cpu0[0]) / wall,
                    "ingest_cpu_pct": 100 * (cpu1[1] - cpu0[1]) / wall,
                }
            finally:
                ingest.terminate()
                try:
                    ingest.wait(60)
                except subprocess.TimeoutExpired:
                    ingest.kill()
        finally:
            st.down(tmp / "stack")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("nats", "mosquitto"), default="nats")
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between frames")
    ap.add_argument("--readings", type=int, default=30, help="readings per frame")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 minute")
    args = ap.parse_args()
    if args.quick:
        args.minutes = 1.0
    r = run(args)
    loss = r["readings_acked"] - r["readings_stored"]
    print(f"frames sent {r['frames_sent']:,}, acknowledged {r['frames_acked']:,}; readings "
          f"acknowledged {r['readings_acked']:,}, stored {r['readings_stored']:,} "
          f"(lost {loss:,}); gap events {r['gaps']}; all stored "
          f"{r['drain_after_s']:.1f} s after the last publish")
    print(f"latency creation -> written+acked: p50 {r['p50_s'] * 1000:.0f} ms, "
          f"p90 {r['p90_s'] * 1000:.0f} ms, p99 {r['p99_s'] * 1000:.0f} ms "
          "(interpolated in the ingest's histogram buckets)")
    print(f"peak RSS: broker {r['broker_rss_mb']:.0f} MB, ingest workers "
          f"{r['ingest_rss_mb']:.0f} MB; CPU: broker {r['broker_cpu_pct']:.0f} %, ingest "
          f"{r['ingest_cpu_pct']:.0f} % of one core")
    return 0 if loss <= 0 and r["gaps"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
