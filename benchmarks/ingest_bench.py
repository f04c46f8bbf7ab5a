"""Central ingest throughput and latency, on Mosquitto and on a NATS JetStream cluster.

Figures (all measured in this run, on private stacks on this machine):

* raw: the same readings as line protocol, POSTed to InfluxDB by a plain batched HTTP
  writer (5,000 lines per request): the ceiling of the database on this machine;
* ingest, 1, 2 and 4 workers, on each broker: frames pre-sealed and queued in the broker
  (Mosquitto: the workers' persistent sessions; NATS: the partitioned FRAMES stream),
  then `stationseal ingest run` drains them (verify, chain, convert, write,
  acknowledge); readings/s from the workers' own counters, and the CPU seconds the
  broker, the workers and InfluxDB spent per reading while draining (from /proc);
* ingest with detection on, 1 worker (Mosquitto), next to the same run's raw rate;
* latency at half the 1-worker maximum, per broker: a publisher seals and publishes
  frames live; the time from a frame's creation to its readings being written and
  acknowledged, p50/p99;
* profile: where one worker's CPU goes per frame (no I/O).

The machine is shared: rates are medians where repeated, and ratios are to figures of
the same run.
"""

from __future__ import annotations

import argparse
import contextlib
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

#: A five-gas analyzer and a dynamometer at 10 Hz: signals the vehicle detectors read, so
#: the detection-on run does the work it does at a real lane.
SIGNALS = [("ana-1", "hc_ppm", "ppm"), ("ana-1", "co_pct", "%vol"), ("ana-1", "co2_pct", "%vol"),
           ("ana-1", "o2_pct", "%vol"), ("ana-1", "no_ppm", "ppm"), ("ana-1", "lambda", "1"),
           ("dyn-1", "speed_kmh", "km/h"), ("dyn-1", "power_kw", "kW"), ("dyn-1", "rpm", "1/min"),
           ("dyn-1", "force_n", "N")]


def _pick_gateways(n: int = 16, parts: int = 16, shards: int = 4) -> tuple[str, ...]:
    """Ids that spread evenly on both brokers: one per NATS partition (fnv1a32 % 16) and
    four per Mosquitto filter shard of four workers (crc32 % 4)."""
    import zlib

    from ingest.nats_source import partition_of

    out: list[str] = []
    used_p: set[int] = set()
    per_shard: dict[int, int] = {}
    i = 0
    while len(out) < n:
        gw = f"gw-b{i}"
        i += 1
        p = partition_of(gw, parts)
        k = zlib.crc32(gw.encode()) % shards
        if p in used_p or per_shard.get(k, 0) >= n // shards:
            continue
        used_p.add(p)
        per_shard[k] = per_shard.get(k, 0) + 1
        out.append(gw)
    return tuple(out)


GATEWAYS = _pick_gateways()


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
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{gw}",
                        protocol=mqtt.MQTTv311)
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
                 metrics_port: int, detection: Path | None = None) -> Path:
    influx(info, f'CREATE DATABASE "{name}"')
    # One broker account per worker: the broker ties client ids (sessions) to accounts.
    acct = f"ingest-{name}".replace("_", "-")
    creds = [st.add_ingest_account(info.dir, f"{acct}-{k}") for k in range(workers)]
    cfg: dict[str, Any] = {
        "mqtt": {"host": info.mqtt_host, "port": info.mqtt_port,
                 "tls": {"ca_file": str(info.ca_file)}, "username": f"{acct}-{{shard}}",
                 "password_file": str(creds[0].password_file.parent.parent
                                      / f"{acct}-{{shard}}" / "password"),
                 "client_id": f"{acct}-{{shard}}", "receive_maximum": 2000},
        "influx": {"url": info.influx_url, "database": name, "batch_lines": 5000,
                   "flush_interval_ms": 200},
        "registry": str(tmp / "registry.json"),
        "registry_authority": str(tmp / "registry.json.authority.pub.pem"),
        "state_dir": str(tmp / f"state-{name}"),
        "shard": {"count": workers},
        "metrics": {"port": metrics_port},
    }
    if info.nats is not None:
        from ingest.config import config_from_stack as cfs

        n = cfs(info, tmp / "registry.json", tmp).nats
        assert n is not None
        cfg["nats"] = {**n.model_dump(mode="json"), "leases_bucket": "stationseal-ingest",
                       "lease_ttl_s": 3.0}
    if detection is not None:
        cfg["detection"] = {"enabled": True, "sites": str(detection)}
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


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (0 for a vanished one)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tck


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


def _pids(info: st.StackInfo, component: str) -> list[int]:
    try:
        return [int(json.loads((info.dir / "run" / f"{component}.json").read_text())["pid"])]
    except (OSError, ValueError, KeyError):
        return []


def broker_pids(info: st.StackInfo) -> list[int]:
    if info.nats is None:
        return _pids(info, "mosquitto")
    return [p for c in ("nats-1", "nats-2", "nats-3") for p in _pids(info, c)]


def reset_nats(info: st.StackInfo) -> None:
    """Empty the stream, drop every consumer and the lease bucket: the next run starts
    from this run's frames only, with no leases of the previous run's workers."""
    import asyncio

    from stack import nats as sn

    async def go() -> None:
        import nats

        nc = await nats.connect(sn.client_urls(info), user="ingest",
                                password=info.ingest.password(), tls=info.tls_context())
        js = nc.jetstream(timeout=30)
        for ci in await js.consumers_info(sn.STREAM):
            await js.delete_consumer(sn.STREAM, ci.name)
        await js.purge_stream(sn.STREAM)
        with contextlib.suppress(Exception):
            await js.delete_stream("KV_stationseal-ingest")
        await nc.close()

    asyncio.run(go())


def stream_count(info: st.StackInfo) -> int:
    import asyncio

    from stack import nats as sn

    async def go() -> int:
        import nats

        nc = await nats.connect(sn.client_urls(info), user="ingest",
                                password=info.ingest.password(), tls=info.tls_context())
        si = await nc.jetstream(timeout=30).stream_info(sn.STREAM)
        await nc.close()
        return int(si.state.messages)

    return asyncio.run(go())


def ingest_rate(info: st.StackInfo, tmp: Path, frames: dict[str, list[Frame]],
                workers: int, tag: str = "", detection: Path | None = None
                ) -> dict[str, float]:
    """Drain the queued frames; readings/s and CPU seconds per reading of broker,
    workers and InfluxDB over the drain."""
    name = f"bench_ingest{tag}{workers}"
    port = _free_port()
    cfg = write_config(info, tmp, name, workers, port, detection)
    argv = [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg),
            "--log-level", "warning"]
    total = sum(len(f.readings) for fs in frames.values() for f in fs)
    if info.nats is None:
        # First run: create the persistent session(s), then stop so frames queue up.
        p = subprocess.Popen(argv)
        deadline = time.monotonic() + 30
        while _readings_total(port) < 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5 if workers > 1 else 0.5)
        p.terminate()
        p.wait(30)
        publish_frames(info, frames)
    else:
        reset_nats(info)
        publish_frames(info, frames)
        n_frames = sum(len(fs) for fs in frames.values())
        deadline = time.monotonic() + 120
        while stream_count(info) < n_frames and time.monotonic() < deadline:
            time.sleep(0.5)
    p = subprocess.Popen(argv)
    try:
        first_t, first_n = None, 0.0
        cpu0: tuple[float, float, float] = (0.0, 0.0, 0.0)
        workers_pids: list[int] = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            n = _readings_total(port)
            now = time.perf_counter()
            if n > 0 and first_t is None:
                first_t, first_n = now, n
                workers_pids = _children(p.pid) or [p.pid]
                cpu0 = (_cpu_s(broker_pids(info)), _cpu_s(workers_pids),
                        _cpu_s(_pids(info, "influxdb")))
            if n >= total:
                assert first_t is not None
                done = n - first_n
                return {
                    "rate": done / max(1e-6, now - first_t),
                    "broker_us": (_cpu_s(broker_pids(info)) - cpu0[0]) / done * 1e6,
                    "ingest_us": (_cpu_s(workers_pids) - cpu0[1]) / done * 1e6,
                    "influx_us": (_cpu_s(_pids(info, "influxdb")) - cpu0[2]) / done * 1e6,
                }
            time.sleep(0.05)
        raise RuntimeError(f"{name}: only {_readings_total(port)} of {total} readings")
    finally:
        p.terminate()
        p.wait(60)


def latency(info: st.StackInfo, tmp: Path, rate_readings: float, n_readings: int,
            seconds: float) -> tuple[float, float, int]:
    """In-process worker; a publisher thread seals and publishes at the given rate."""
    from ingest.service import IngestService

    influx(info, 'CREATE DATABASE "bench_latency"')  # each broker's stack has its own
    cfg = config_from_stack(info, tmp / "registry.json", tmp / f"state-latency-{info.broker}",
                            mqtt={"client_id": "bench-latency"},
                            influx={"database": "bench_latency", "flush_interval_ms": 200})
    if info.nats is not None:
        from ingest.nats_source import NatsIngestService

        reset_nats(info)
        svc: IngestService = NatsIngestService(cfg)
    else:
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
    if info.nats is not None:
        # Wait until the worker holds every partition (first lease round).
        from ingest.nats_source import NatsIngestService as N

        assert isinstance(svc, N)
        deadline = time.monotonic() + 30
        while len(svc.link.owned) < int(info.nats["partitions"]) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
    gw = GATEWAYS[0]
    signer = load_signer(tmp / "keys" / f"{gw}.key")
    cred = info.gateway(gw)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency-pub",
                    protocol=mqtt.MQTTv311)
    c.tls_set_context(info.tls_context())
    c.username_pw_set(cred.username, cred.password())
    c.max_inflight_messages_set(500)
    c.connect(info.mqtt_host, info.mqtt_port)
    c.loop_start()
    frames_per_s = rate_readings / n_readings
    boot, prev, seq = os.urandom(16), ZERO_HASH, 0  # own state dir: a fresh chain
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


def _sites_file(tmp: Path) -> Path:
    """SITES.yaml naming the bench gateways' sites (vehicle lanes), for detection on."""
    p = tmp / "sites.yaml"
    p.write_text(yaml.safe_dump({"sites": {
        f"site-{gw}": {"kind": "vehicle_inspection", "location": {"lat": 23.0, "lon": 113.1}}
        for gw in GATEWAYS}}))
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--readings", type=int, default=500,
                    help="readings per frame (default: the agent's default batch_max_readings)")
    ap.add_argument("--brokers", default="mosquitto,nats",
                    help="comma-separated: mosquitto, nats (default both)")
    ap.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    ap.add_argument("--no-detection", action="store_true",
                    help="skip the detection-on run")
    args = ap.parse_args()
    n_frames = 40 if args.quick else 150
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as d:
        tmp = Path(d)
        reg = KeyRegistry()
        frames = make_frames(tmp, reg, n_frames, args.readings, time.time() - 10 * 86400)
        reg.save(tmp / "registry.json")
        total = n_frames * len(GATEWAYS) * args.readings
        print(f"{len(GATEWAYS)} gateways x {n_frames} frames x {args.readings} readings "
              f"= {total:,} readings; machine: {os.cpu_count()} cores (shared)")
        raw = 0.0
        results: dict[tuple[str, int], dict[str, float]] = {}
        for broker in brokers:
            sdir = tmp / f"stack-{broker}"
            info = st.up(sdir, GATEWAYS, broker=broker, timeout=60)
            try:
                if not raw:
                    raw, _ = raw_rate(info, frames)
                    print(f"raw line-protocol write (batched HTTP, 5000 lines, median of 3): "
                          f"{raw:,.0f} readings/s")
                for w in counts:
                    r = ingest_rate(info, tmp, frames, w, tag=broker[:4])
                    results[(broker, w)] = r
                    base = results.get((broker, counts[0]))
                    up_ = f"; {r['rate'] / base['rate']:.2f} x {counts[0]} worker" \
                        if base and w != counts[0] else ""
                    print(f"{broker:<9} {w} worker(s): {r['rate']:>9,.0f} readings/s = "
                          f"{r['rate'] / raw:.2f} x raw{up_}; CPU per reading: broker "
                          f"{r['broker_us']:.1f} us, ingest {r['ingest_us']:.1f} us, "
                          f"influxd {r['influx_us']:.1f} us")
                if broker == "mosquitto" and not args.no_detection:
                    r = ingest_rate(info, tmp, frames, 1, tag="det",
                                    detection=_sites_file(tmp))
                    r0 = results.get(("mosquitto", 1))
                    rel = f"; {r['rate'] / r0['rate']:.2f} x detection off" if r0 else ""
                    print(f"{broker:<9} 1 worker, detection on: {r['rate']:>9,.0f} "
                          f"readings/s = {r['rate'] / raw:.2f} x raw (target >= 0.80){rel}; "
                          f"ingest CPU {r['ingest_us']:.1f} us/reading")
                one = results.get((broker, 1))
                if one:
                    half = one["rate"] / 2
                    p50, p99, sent = latency(info, tmp, half, args.readings,
                                             5.0 if args.quick else 15.0)
                    print(f"{broker:<9} latency at half the 1-worker maximum ({half:,.0f} "
                          f"readings/s, {sent} frames): creation -> written+acked "
                          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
            finally:
                st.down(sdir)
        print(profile(tmp, frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
