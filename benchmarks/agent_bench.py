"""Gateway agent: CPU per reading and memory, next to a plain unsigned gateway.

End to end: 8 simulated Modbus TCP instruments (sim/ servers on loopback, in this
process) x 10 float signals, polled at 10 Hz for ``--seconds``, by

* the agent: ``stationseal agent run`` (seal, SQLite outbox with fsync per frame, MQTT
  QoS 1 over TLS to a local stack), and
* the baseline: a plain pymodbus -> paho loop (same instruments, rate and broker; JSON
  per poll, QoS 1, no signing, no storage).

Both run as subprocesses; CPU is read from /proc/<pid>/stat (user + system, every
thread) after a warm-up, RSS from /proc/<pid>/status (VmRSS at the end, VmHWM peak).
The difference agent - baseline is what signing, storing and the outbox cost on top of
reading the instruments at all.

Micro: sign + store + publish without Modbus, in this process (getrusage: every thread,
including the uplink's): readings handed to the sealer in polls of 10, frames of up to
500 readings, one SQLite transaction + fsync per frame, MQTT QoS 1 to the same broker;
next to its own baseline (JSON per poll + QoS 1 publish).

Every figure is the median over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")
SIGNALS = ["so2_mgm3", "nox_mgm3", "pm_mgm3", "o2_stack_pct", "flue_temp_c", "flue_kpa",
           "moisture_pct", "co_mgm3", "pm25_ugm3", "pm10_ugm3"]
#: extra environment for the agent process (experiments: MALLOC_ARENA_MAX=2, ...)
AGENT_ENV = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_AGENT_ENV", "").split()
                 if "=" in kv)
N_INST = 8
RATE_HZ = 10.0


# ----------------------------------------------------------------------- setup


def bench_profile(profiles_dir: Path) -> None:
    """Ten float32 measurement points, registers 0..19: one block per poll."""
    points = [{"signal": s, "register": "holding", "address": 2 * i, "data_type": "float32",
               "range": [-1000, 100000]} for i, s in enumerate(SIGNALS)]
    doc = {"id": "bench_ten", "version": "1.0", "vendor": "bench", "model": "ten floats",
           "protocol": "modbus", "points": points}
    profiles_dir.mkdir(parents=True, exist_ok=True)
    (profiles_dir / "bench_ten.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


class Sims:
    def __init__(self, profiles_dir: Path) -> None:
        from agent.profiles import load_profile
        from sim.modbus_server import SimulatedDevice, start_modbus_tcp_server

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        prof = load_profile(profiles_dir / "bench_ten.yaml")
        self.servers = [
            asyncio.run_coroutine_threadsafe(
                start_modbus_tcp_server([SimulatedDevice(1, prof)], "127.0.0.1", 0),
                self.loop).result(10)
            for _ in range(N_INST)
        ]
        self.ports = [s.port for s in self.servers]

    def close(self) -> None:
        for s in self.servers:
            asyncio.run_coroutine_threadsafe(s.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_mem(pid: int) -> tuple[float, float]:
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


# ----------------------------------------------------------------------- end to end

#: The reading-age bound measured next to the default (outbox.batch_max_ms).
FAST_BATCH_MS = 100


def run_agent(work: Path, info: Any, ports: list[int], profiles_dir: Path, seconds: float,
              warmup: float, run: int, batch_ms: int = 1000) -> dict[str, float]:
    from stationseal.keys import generate_keypair

    d = work / f"agent{run}-{batch_ms}"
    d.mkdir()
    gw = "gw-bench"
    kf = generate_keypair(gw, d / "keys")
    cred = info.gateway(gw)
    pw = d / "pw"
    pw.write_text(cred.password())
    cfg = {
        "site": "bench", "gateway_id": gw, "kind": "stack_cems", "key_file": str(kf.private_key),
        "profiles_dir": str(profiles_dir),
        "uplink": {"type": "mqtt", "host": info.mqtt_host, "port": info.mqtt_port,
                   "tls": {"ca": str(info.ca_file)}, "username": gw, "password_file": str(pw)},
        "outbox": {"path": str(d / "outbox.sqlite"), "batch_max_readings": 500,
                   "batch_max_ms": batch_ms, "fsync": "batch"},
        "instruments": [
            {"id": f"inst-{i}", "profile": "bench_ten",
             "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": p},
             "poll_interval_s": 1 / RATE_HZ, "timeout_s": 1.0}
            for i, p in enumerate(ports)
        ],
    }
    path = d / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with open(d / "agent.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "stationseal.cli", "agent", "run",
                                 "--config", str(path), "--log-level", "WARNING"],
                                cwd=ROOT, stderr=log, env={**os.environ, **AGENT_ENV})
    status = d / "outbox.status.json"
    try:
        time.sleep(warmup)
        r0, c0, t0 = _sealed_readings(status), proc_cpu(proc.pid), time.monotonic()
        time.sleep(seconds)
        r1, c1, t1 = _sealed_readings(status), proc_cpu(proc.pid), time.monotonic()
        rss, hwm = proc_mem(proc.pid)
        st = json.loads(status.read_text())
    finally:
        proc.terminate()
        proc.wait(20)
    n = r1 - r0
    return {"us_per_reading": (c1 - c0) / n * 1e6, "readings_per_s": n / (t1 - t0),
            "rss_mb": rss, "hwm_mb": hwm, "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
            "frames": st["sealer"]["frames"], "queued": st["outbox"]["frames"]}


def _sealed_readings(status: Path) -> int:
    # the status file is rewritten every 5 s; wait for a fresh one
    before = status.stat().st_mtime if status.exists() else 0
    end = time.monotonic() + 8
    while time.monotonic() < end:
        if status.exists() and status.stat().st_mtime != before:
            doc = json.loads(status.read_text())
            return int(doc["sealer"]["readings"]) + int(doc["outbox"]["pending_readings"])
        time.sleep(0.05)
    raise RuntimeError(f"{status} not updated")


def run_baseline(work: Path, info: Any, ports: list[int], seconds: float, warmup: float,
                 run: int) -> dict[str, float]:
    d = work / f"base{run}"
    d.mkdir()
    cred = info.gateway("gw-base")
    count = d / "count"
    args = {"ports": ports, "host": info.mqtt_host, "port": info.mqtt_port,
            "ca": str(info.ca_file), "user": "gw-base", "password": cred.password(),
            "topic": info.topic("gw-base", "frames"), "count_file": str(count)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.agent_bench", "--baseline-child",
                             json.dumps(args)], cwd=ROOT)
    try:
        time.sleep(warmup)
        r0, c0, t0 = _count(count), proc_cpu(proc.pid), time.monotonic()
        time.sleep(seconds)
        r1, c1, t1 = _count(count), proc_cpu(proc.pid), time.monotonic()
        rss, hwm = proc_mem(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    n = r1 - r0
    return {"us_per_reading": (c1 - c0) / n * 1e6, "readings_per_s": n / (t1 - t0),
            "rss_mb": rss, "hwm_mb": hwm, "cpu_pct": 100 * (c1 - c0) / (t1 - t0)}


def _count(path: Path) -> int:
    before = path.stat().st_mtime_ns if path.exists() else 0
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if path.exists() and path.stat().st_mtime_ns != before:
            txt = path.read_text().strip()
            if txt:
                return int(txt)
        time.sleep(0.02)
    raise RuntimeError(f"{path} not updated")


def baseline_child(spec: str) -> None:
    """The plain gateway: pymodbus read -> JSON -> paho publish QoS 1, nothing else."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from pymodbus.client import AsyncModbusTcpClient

    a = json.loads(spec)
    import ssl

    ctx = ssl.create_default_context(cafile=a["ca"])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-base")
    client.tls_set_context(ctx)
    client.username_pw_set(a["user"], a["password"])
    client.max_inflight_messages_set(100)
    client.connect(a["host"], a["port"], 30)
    client.loop_start()
    counter = [0]
    unpack = struct.Struct(">20H").pack
    floats = struct.Struct(">10f").unpack

    async def poll(i: int, port: int) -> None:
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
        await c.connect()
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        while True:
            rr = await c.read_holding_registers(0, count=20, device_id=1)
            t = time.time()
            vals = floats(unpack(*rr.registers))
            client.publish(a["topic"], json.dumps(
                {"instrument": f"inst-{i}", "time": t, "values": dict(zip(SIGNALS, vals,
                                                                          strict=True))}),
                qos=1)
            counter[0] += len(vals)
            nxt += 1 / RATE_HZ
            await asyncio.sleep(max(0.0, nxt - loop.time()))

    async def report() -> None:
        while True:
            Path(a["count_file"]).write_text(str(counter[0]))
            await asyncio.sleep(1.0)

    async def main() -> None:
        await asyncio.gather(report(), *(poll(i, p) for i, p in enumerate(a["ports"])))

    asyncio.run(main())


# ----------------------------------------------------------------------- micro


def micro(work: Path, info: Any, frames: int, run: int) -> dict[str, float]:
    """sign + store + publish per reading, without Modbus (this process, all threads)."""
    from agent.clock import ClockMonitor
    from agent.dispatch import Dispatcher
    from agent.outbox import Outbox
    from agent.sealer import Sealer
    from agent.uplink import MqttTransport
    from stationseal.keys import generate_keypair
    from stationseal.records import Reading
    from stationseal.signing import load_signer

    d = work / f"micro{run}"
    d.mkdir()
    gw = "gw-bench"
    signer = load_signer(generate_keypair(gw, d / "keys").private_key)
    cred = info.gateway(gw)
    polls_per_frame = 50
    n_readings = frames * polls_per_frame * len(SIGNALS)

    def polls() -> list[list[Reading]]:
        t = time.time()
        return [[Reading(f"inst-{k % N_INST}", s, 12.5 + j, "mg/m3", t, "N",
                         b"\x41\x48\x00\x00") for j, s in enumerate(SIGNALS)]
                for k in range(polls_per_frame)]

    batches = [polls() for _ in range(frames)]  # readings are made by the instrument layer

    async def pipeline(publish: bool, store: bool) -> float:
        ob = Outbox(d / f"ob-{publish}-{store}.sqlite", gateway_id=gw, max_bytes=2**30,
                    max_age_s=1e9)
        disp = Dispatcher(ob, max_inflight=16, live_reserve=2)
        tr = None
        if publish:
            tr = MqttTransport(host=info.mqtt_host, port=info.mqtt_port, gateway_id=gw,
                               frames_topic=info.topic(gw, "frames"),
                               status_topic=info.topic(gw, "status"), birth={},
                               tls=info.tls_context(), username=gw, password=cred.password())
            disp.attach(tr)
            tr.start(disp)
            while disp.gen is None:
                await asyncio.sleep(0.01)
        sealer = Sealer(signer, ob, gateway_id=gw, site="bench", max_readings=500,
                        max_delay_s=1.0, clock=ClockMonitor(), forwarder=disp if store else None)
        c0 = _self_cpu()
        for batch in batches:
            for poll in batch:
                sealer.add(poll)
            if publish:
                await asyncio.sleep(0)  # let acknowledgements in, as the event loop would
        sealer.flush()
        if publish:
            while disp.inflight or disp.live or disp.cursor < ob.seq:
                await asyncio.sleep(0.001)
        cpu = _self_cpu() - c0
        if tr is not None:
            tr.stop(5)
        ob.close()
        return cpu / n_readings * 1e6

    def seal_only() -> float:
        from stationseal.frame import seal

        c0 = _self_cpu()
        prev = bytes(32)
        for k, batch in enumerate(batches):
            flat = [r for poll in batch for r in poll]
            prev = seal(signer, gateway_id=gw, site="bench", boot_id=bytes(16), seq=k + 1,
                        prev_hash=prev, created=time.time(), clock_sync="synced",
                        readings=flat, events=[]).frame_hash
        return (_self_cpu() - c0) / n_readings * 1e6

    async def json_baseline() -> float:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        acked = [0]
        done = threading.Event()
        total = frames * polls_per_frame
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-base")
        client.tls_set_context(info.tls_context())
        base = info.gateway("gw-base")
        client.username_pw_set("gw-base", base.password())
        client.max_inflight_messages_set(100)

        def on_publish(*a: Any) -> None:
            acked[0] += 1
            if acked[0] >= total:
                done.set()

        client.on_publish = on_publish
        client.connect(info.mqtt_host, info.mqtt_port, 30)
        client.loop_start()
        time.sleep(0.5)
        topic = info.topic("gw-base", "frames")
        c0 = _self_cpu()
        for batch in batches:
            for poll in batch:
                client.publish(topic, json.dumps(
                    {"instrument": poll[0].instrument, "time": poll[0].time,
                     "values": {r.signal: r.value for r in poll}}), qos=1)
        done.wait(60)
        cpu = _self_cpu() - c0
        client.disconnect()
        client.loop_stop()
        return cpu / n_readings * 1e6

    res = {"seal": seal_only(),
           "seal_store": asyncio.run(pipeline(publish=False, store=True)),
           "seal_store_publish": asyncio.run(pipeline(publish=True, store=True)),
           "json_publish_baseline": asyncio.run(json_baseline())}
    return res


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ----------------------------------------------------------------------- main


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        baseline_child(args.baseline_child)
        return 0
    seconds, repeats, warmup, micro_frames = args.seconds, args.repeats, 4.0, 200
    if args.quick:
        seconds, repeats, warmup, micro_frames = 8.0, 1, 3.0, 40

    from stack.manager import down, up

    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        work = Path(tmp)
        profiles = work / "profiles"
        bench_profile(profiles)
        info = up(work / "stack", ["gw-bench", "gw-base"])
        sims = Sims(profiles)
        try:
            print(f"{N_INST} simulated Modbus TCP instruments x {len(SIGNALS)} signals at "
                  f"{RATE_HZ:g} Hz = {N_INST * len(SIGNALS) * RATE_HZ:.0f} readings/s; "
                  f"{seconds:g} s measured after {warmup:g} s warm-up; median of {repeats}",
                  flush=True)
            agent_rows, base_rows, micro_rows, fast_rows = [], [], [], []
            for run in range(repeats):
                base_rows.append(run_baseline(work, info, sims.ports, seconds, warmup, run))
                agent_rows.append(run_agent(work, info, sims.ports, profiles, seconds, warmup,
                                            run))
                fast_rows.append(run_agent(work, info, sims.ports, profiles, seconds, warmup,
                                           run, batch_ms=FAST_BATCH_MS))
                micro_rows.append(micro(work, info, micro_frames, run))
                print(f"  run {run + 1}: agent {agent_rows[-1]['us_per_reading']:.1f} us/r, "
                      f"baseline {base_rows[-1]['us_per_reading']:.1f} us/r", flush=True)
        finally:
            sims.close()
            down(work / "stack")
    print()
    print(f"{'end to end (process)':<34}{'agent':>10}{'baseline':>10}{'agent-base':>12}")
    for key, label, fmt in (("us_per_reading", "CPU us per reading", "{:.1f}"),
                            ("cpu_pct", "CPU % of one core", "{:.1f}"),
                            ("readings_per_s", "readings per second", "{:.0f}"),
                            ("rss_mb", "RSS MB at end", "{:.1f}"),
                            ("hwm_mb", "RSS MB peak", "{:.1f}")):
        a, b = med(agent_rows, key), med(base_rows, key)
        print(f"{label:<34}{fmt.format(a):>10}{fmt.format(b):>10}{fmt.format(a - b):>12}")
    a, f, b = (med(agent_rows, "us_per_reading"), med(fast_rows, "us_per_reading"),
               med(base_rows, "us_per_reading"))
    print(f"bounded reading age: outbox.batch_max_ms {FAST_BATCH_MS} (a frame at the latest "
          f"{FAST_BATCH_MS} ms after its oldest reading) costs {f:.1f} us CPU per reading "
          f"against {a:.1f} at the default 1000 ms ({f / a:.2f} x) and {b:.1f} for the bare "
          f"loop ({f / b:.2f} x); {med(fast_rows, 'frames'):.0f} frames per run, RSS "
          f"{med(fast_rows, 'rss_mb'):.1f} MB")
    print(f"agent frames sealed per run (median): {med(agent_rows, 'frames'):.0f}, "
          f"left in outbox at end: {med(agent_rows, 'queued'):.0f}")
    print()
    print("micro, no Modbus (this process, all threads), CPU us per reading:")
    for key, label in (("seal", "seal (CBOR encode + Ed25519)"),
                       ("seal_store", "+ SQLite outbox (fsync per frame)"),
                       ("seal_store_publish", "+ MQTT QoS 1 publish, TLS"),
                       ("json_publish_baseline", "baseline: JSON + QoS 1 per poll")):
        print(f"  {label:<40}{med(micro_rows, key):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
