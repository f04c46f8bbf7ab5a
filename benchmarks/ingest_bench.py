"""Central ingest throughput and latency on the local stack.

Figures (all measured in this run, on a private Mosquitto + InfluxDB 1.x stack):

* raw: the same readings as line protocol, POSTed to InfluxDB by a plain batched HTTP
  writer (5,000 lines per request): the ceiling of the database on this machine;
* ingest, 1 and 2 workers: frames pre-sealed and queued in the broker, then
  `stationseal ingest run` drains them (verify, chain, convert, write, acknowledge);
  readings/s from the workers' own counters. Target: 1 worker >= 0.8 x raw;
* latency at half the 1-worker maximum: a publisher seals and publishes frames live; the
  time from a frame's creation to its readings being written and acknowledged, p50/p99;
* profile: where one worker's CPU goes per frame (no I/O).
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from ingest.config import config_from_stack
from ingest.convert import LineBuilder
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from stack import manager as st
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.records import Reading
from stationseal.signing import load_signer

#: Two gateways per shard of two workers (crc32 % 2).
GATEWAYS = ("gw-shard-0", "gw-shard-1", "gw-shard-4", "gw-shard-5")
SIGNALS = [("ana", f"s{i}", "u") for i in range(10)]


def make_frames(tmp: Path, reg: KeyRegistry, n_frames: int, n_readings: int,
                t0: float) -> dict[str, list[Frame]]:
    out: dict[str, list[Frame]] = {}
    for gw in GATEWAYS:
        kf = generate_keypair(gw, tmp / "keys", overwrite=True)
        reg.add(gw, kf.public_key.read_bytes(), valid_from=0.0, sites=[f"site-{gw}"])
        signer = load_signer(kf.private_key)
        prev, frames = ZERO_HASH, []
        boot = os.urandom(16)
        for seq in range(1, n_frames + 1):
            t = t0 + seq
            rs = [Reading(*SIGNALS[i % 10][:2], 20.0 + (seq * 7 + i) % 100 / 10,
                          SIGNALS[i % 10][2], t - 1 + (i // 10) * 0.1, "N", None)
                  for i in range(n_readings)]
            f = seal(signer, gateway_id=gw, site=f"site-{gw}", boot_id=boot, seq=seq,
                     prev_hash=prev, created=t, clock_sync="synced", readings=rs, events=[])
            prev = f.frame_hash
            frames.append(f)
        out[gw] = frames
    return out


def influx(info: st.StackInfo, q: str, db: str | None = None) -> dict[str, Any]:
    data = urllib.parse.urlencode({"q": q, **({"db": db} if db else {})}).encode()
    with urllib.request.urlopen(f"{info.influx_url}/query", data=data, timeout=30) as r:
        return dict(json.loads(r.read()))


def raw_rate(info: st.StackInfo, frames: dict[str, list[Frame]]) -> tuple[float, int]:
    """Median of three passes, each into a fresh database (as each ingest run gets)."""
    rates = []
    for i in range(3):
        r, n = _raw_once(info, frames, f"bench_raw{i}")
        rates.append(r)
    return statistics.median(rates), n


def _raw_once(info: st.StackInfo, frames: dict[str, list[Frame]], db: str
              ) -> tuple[float, int]:
    influx(info, f'CREATE DATABASE "{db}"')
    lb = LineBuilder()
    lines = [ln for fs in frames.values() for f in fs for ln in lb.frame_lines(f)
             if ln.startswith("reading")]
    u = urllib.parse.urlsplit(info.influx_url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
    t0 = time.perf_counter()
    for i in range(0, len(lines), 5000):
        body = ("\n".join(lines[i:i + 5000]) + "\n").encode()
        conn.request("POST", f"/write?db={db}&precision=ns", body=body)
        r = conn.getresponse()
        r.read()
        assert r.status == 204, r.status
    dt = time.perf_counter() - t0
    conn.close()
    return len(lines) / dt, len(lines)


def publish_frames(info: st.StackInfo, frames: dict[str, list[Frame]]) -> None:
    """Queue every frame in the broker (ingest subscribed before, then stopped)."""
    def one(gw: str) -> None:
        cred = info.gateway(gw)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{gw}")
        c.tls_set_context(info.tls_context())
        c.username_pw_set(cred.username, cred.password())
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.connect(info.mqtt_host, info.mqtt_port)
        c.loop_start()
        infos = [c.publish(info.topic(gw, "frames"), f.payload, qos=1) for f in frames[gw]]
        for m in infos:
            m.wait_for_publish(120)
        c.disconnect()
        c.loop_stop()

    ts = [threading.Thread(target=one, args=(gw,)) for gw in frames]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def write_config(info: st.StackInfo, tmp: Path, name: str, workers: int,
                 metrics_port: int) -> Path:
    influx(info, f'CREATE DATABASE "{name}"')
    cfg = {
        "mqtt": {"host": info.mqtt_host, "port": info.mqtt_port,
                 "tls": {"ca_file": str(info.ca_file)}, "username": "ingest",
                 "password_file": str(info.ingest.password_file), "client_id": name,
                 "receive_maximum": 2000},
        "influx": {"url": info.influx_url, "database": name, "batch_lines": 5000,
                   "flush_interval_ms": 200},
        "registry": str(tmp / "registry.json"),
        "registry_authority": str(tmp / "registry.json.authority.pub.pem"),
        "state_dir": str(tmp / f"state-{name}"),
        "shard": {"count": workers},
        "metrics": {"port": metrics_port},
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _readings_total(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("stationseal_ingest_readings_total"))


def ingest_rate(info: st.StackInfo, tmp: Path, frames: dict[str, list[Frame]],
                workers: int) -> float:
    name = f"bench_ingest{workers}"
    port = _free_port()
    cfg = write_config(info, tmp, name, workers, port)
    argv = [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg),
            "--log-level", "warning"]
    # First run: create the persistent session(s), then stop so frames queue up.
    p = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while _readings_total(port) < 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5 if workers > 1 else 0.5)
    p.terminate()
    p.wait(30)
    publish_frames(info, frames)
    total = sum(len(f.readings) for fs in frames.values() for f in fs)
    p = subprocess.Popen(argv)
    try:
        first_t, first_n = None, 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = _readings_total(port)
            now = time.perf_counter()
            if n > 0 and first_t is None:
                first_t, first_n = now, n
            if n >= total:
                assert first_t is not None
                return (n - first_n) / max(1e-6, now - first_t)
            time.sleep(0.05)
        raise RuntimeError(f"{name}: only {_readings_total(port)} of {total} readings")
    finally:
        p.terminate()
        p.wait(60)


def latency(info: st.StackInfo, tmp: Path, rate_readings: float, n_readings: int,
            seconds: float) -> tuple[float, float, int]:
    """In-process worker; a publisher thread seals and publishes at the given rate."""
    from ingest.service import IngestService

    influx(info, 'CREATE DATABASE "bench_latency"')
    cfg = config_from_stack(info, tmp / "registry.json", tmp / "state-latency",
                            mqtt={"client_id": "bench-latency"},
                            influx={"database": "bench_latency", "flush_interval_ms": 200})
    svc = IngestService(cfg)
    lat: list[float] = []
    orig = svc.committer.commit

    def timed(b: Any) -> Any:
        out = orig(b)
        now = time.time()
        lat.extend(now - c for c in b.created)
        return out

    svc.committer.commit = timed  # type: ignore[method-assign]
    svc.start()
    svc.connected.wait(10)
    time.sleep(0.5)
    gw = GATEWAYS[0]
    signer = load_signer(tmp / "keys" / f"{gw}.key")
    cred = info.gateway(gw)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency-pub")
    c.tls_set_context(info.tls_context())
    c.username_pw_set(cred.username, cred.password())
    c.max_inflight_messages_set(500)
    c.connect(info.mqtt_host, info.mqtt_port)
    c.loop_start()
    frames_per_s = rate_readings / n_readings
    boot, prev, seq = os.urandom(16), ZERO_HASH, 10_000_000
    t_end = time.monotonic() + seconds
    nxt = time.monotonic()
    sent = 0
    while time.monotonic() < t_end:
        now = time.time()
        seq += 1
        rs = [Reading(*SIGNALS[i % 10][:2], float(i), SIGNALS[i % 10][2],
                      now - (n_readings - i) * 0.001, "N", None) for i in range(n_readings)]
        f = seal(signer, gateway_id=gw, site=f"site-{gw}", boot_id=boot, seq=seq,
                 prev_hash=prev, created=now, clock_sync="synced", readings=rs, events=[])
        prev = f.frame_hash
        c.publish(info.topic(gw, "frames"), f.payload, qos=1)
        sent += 1
        nxt += 1 / frames_per_s
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    deadline = time.monotonic() + 30
    while len(lat) < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    svc.stop()
    lat.sort()
    return (statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))], sent)


def profile(tmp: Path, frames: dict[str, list[Frame]]) -> str:
    cfg = config_from_stack(_FakeInfo(), tmp / "registry.json", tmp / "state-profile")
    pipe = Pipeline(cfg, Store(tmp / "state-profile" / "p.db"), Metrics())
    fs = [f for gw in frames for f in frames[gw][:300]]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for f in fs:
        pipe.handle(f"stationseal/v1/{f.gateway_id}/frames", f.payload, f.created)
        if len(pipe.batch.lines) > 5000:
            pipe.seal()
    prof.disable()
    dt = time.perf_counter() - t0
    n = sum(len(f.readings) for f in fs)
    import io

    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(14)
    return (f"pipeline alone (verify+chain+convert, profiled): {n / dt:,.0f} readings/s\n"
            + "\n".join(s.getvalue().splitlines()[:40]))


class _FakeInfo:
    mqtt_host = "127.0.0.1"
    mqtt_port = 1
    ca_file = "/dev/null"
    topic_prefix = "stationseal/v1"
    influx_url = "http://127.0.0.1:1"
    influx_database = "x"

    class ingest:
        username = "ingest"
        password_file = "/dev/null"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--readings", type=int, default=500,
                    help="readings per frame (default: the agent's default batch_max_readings)")
    args = ap.parse_args()
    n_frames = 250 if args.quick else 1000
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as d:
        tmp = Path(d)
        info = st.up(tmp / "stack", GATEWAYS)
        try:
            reg = KeyRegistry()
            frames = make_frames(tmp, reg, n_frames, args.readings, time.time() - 10 * 86400)
            reg.save(tmp / "registry.json")
            total = n_frames * len(GATEWAYS) * args.readings
            print(f"{len(GATEWAYS)} gateways x {n_frames} frames x {args.readings} readings "
                  f"= {total:,} readings; machine: {os.cpu_count()} cores")
            raw, _ = raw_rate(info, frames)
            print(f"raw line-protocol write (batched HTTP, 5000 lines, median of 3): "
                  f"{raw:,.0f} readings/s")
            r1 = ingest_rate(info, tmp, frames, 1)
            print(f"ingest, 1 worker:  {r1:,.0f} readings/s = {r1 / raw:.2f} x raw "
                  f"(target >= 0.80)")
            r2 = ingest_rate(info, tmp, frames, 2)
            print(f"ingest, 2 workers: {r2:,.0f} readings/s = {r2 / raw:.2f} x raw; "
                  f"speed-up {r2 / r1:.2f} x over 1 worker")
            half = r1 / 2
            p50, p99, sent = latency(info, tmp, half, args.readings,
                                     5.0 if args.quick else 15.0)
            print(f"latency at half the 1-worker maximum ({half:,.0f} readings/s, {sent} "
                  f"frames): frame creation -> written+acked p50 {p50 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms")
            print(profile(tmp, frames))
        finally:
            st.down(tmp / "stack")
    return 0


if __name__ == "__main__":
    sys.exit(main())
