"""One gateway floods, the others must not notice: ingest memory and the latency of the
other gateways' frames under a flood of large QoS 0 messages.

A private stack, the ingest as a real process (``stationseal ingest run``), three good
gateways publishing one signed frame of 10 readings per second each (QoS 1) and one
gateway account publishing large random payloads at QoS 0 as fast as it can. Latency of a
good frame = time from its publish until it is visible in InfluxDB (polled every 0.1 s).
Peak RSS of the ingest process from /proc (VmRSS sampled every 0.1 s).

Phases, in the same run: ``baseline`` (no flood), then each flood. Figures are medians
and maxima of the good frames published during the phase, next to the baseline.

  .venv/bin/python -m benchmarks.flood_bench            # 60 x 3.9 MB, then 240 x 1 MB
  .venv/bin/python -m benchmarks.flood_bench --quick    # shorter phases
"""

from __future__ import annotations

import argparse
import json
import os
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from ingest_support import Gateway  # noqa: E402

from stack import manager as st  # noqa: E402
from stationseal.keys import KeyRegistry  # noqa: E402

GOOD = ("gw-good-1", "gw-good-2", "gw-good-3")
FLOOD = "gw-flood"


def _client(info: st.StackInfo, gw: str) -> mqtt.Client:
    cred = info.gateway(gw)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gw, protocol=mqtt.MQTTv311)
    c.tls_set_context(info.tls_context())
    c.username_pw_set(cred.username, cred.password())
    c.max_queued_messages_set(0)
    c.connect(info.mqtt_host, info.mqtt_port, keepalive=60)
    c.loop_start()
    return c


def _rss_kb(pid: int) -> int:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    except OSError:
        pass
    return 0


def _last_seqs(info: st.StackInfo, db: str) -> dict[str, int]:
    q = urllib.parse.urlencode({"db": db, "q": 'SELECT last(seq) FROM "frame" GROUP BY "gateway"'})
    try:
        with urllib.request.urlopen(f"{info.influx_url}/query?{q}", timeout=5) as r:
            doc = json.loads(r.read())
    except OSError:
        return {}
    out: dict[str, int] = {}
    for s in doc["results"][0].get("series", []):
        out[s["tags"]["gateway"]] = int(s["values"][0][1])
    return out


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.info = st.up(tmp / "stack", [*GOOD, FLOOD])
        reg = KeyRegistry()
        self.gws = {g: Gateway(g, tmp / "keys" / g, reg) for g in GOOD}
        reg.save(tmp / "registry.json")
        self.db = self.info.influx_database
        cfg = {
            "mqtt": {"host": self.info.mqtt_host, "port": self.info.mqtt_port,
                     "tls": {"ca_file": str(self.info.ca_file)}, "username": "ingest",
                     "password_file": str(self.info.ingest.password_file),
                     "client_id": "ingest"},
            "influx": {"url": self.info.influx_url, "database": self.db,
                       "flush_interval_ms": 100},
            "registry": str(tmp / "registry.json"),
            "state_dir": str(tmp / "state"),
            "metrics": {"port": 0},
        }
        (tmp / "central.yaml").write_text(yaml.safe_dump(cfg))
        self.log = open(tmp / "ingest.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config",
             str(tmp / "central.yaml"), "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=self.log, cwd=HERE.parent)
        self.pubs = {g: _client(self.info, g) for g in GOOD}
        self.sent: dict[tuple[str, int], float] = {}
        self.seen: dict[tuple[str, int], float] = {}
        self.rss: list[tuple[float, int]] = []
        self.stop = threading.Event()
        time.sleep(3.0)  # ingest connected and subscribed

    def _publisher(self) -> None:
        nxt = time.monotonic()
        while not self.stop.is_set():
            for g, gw in self.gws.items():
                f = gw.next_frame(10, created=time.time())
                self.sent[(g, f.seq)] = time.time()
                self.pubs[g].publish(gw.topic, f.payload, qos=1)
            nxt += 1.0
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def _watch(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            self.rss.append((now, _rss_kb(self.proc.pid)))
            for g, last in _last_seqs(self.info, self.db).items():
                for seq in range(1, last + 1):
                    self.seen.setdefault((g, seq), now)
            self.stop.wait(0.1)

    def run(self, phases: list[tuple[str, int, int, float]]) -> list[dict[str, Any]]:
        threads = [threading.Thread(target=self._publisher, daemon=True),
                   threading.Thread(target=self._watch, daemon=True)]
        for t in threads:
            t.start()
        out = []
        for name, count, size, seconds in phases:
            t0 = time.time()
            flood_err = ""
            if count:
                c = _client(self.info, FLOOD)
                try:
                    for _ in range(count):
                        c.publish(f"stationseal/v1/{FLOOD}/frames", os.urandom(size), qos=0)
                except Exception as e:  # the broker may disconnect the flooder
                    flood_err = repr(e)
            time.sleep(max(0.0, seconds - (time.time() - t0)))
            t1 = time.time()
            if count:
                c.disconnect()
                c.loop_stop()
            out.append({"phase": name, "t0": t0, "t1": t1, "flood": f"{count} x {size}",
                        "flood_error": flood_err})
        time.sleep(5.0)  # let the last frames land
        self.stop.set()
        for t in threads:
            t.join(10)
        for ph in out:
            lat = [self.seen.get(k, float("inf")) - ts for k, ts in self.sent.items()
                   if ph["t0"] <= ts < ph["t1"]]
            done = [x for x in lat if x != float("inf")]
            rss = [kb for t, kb in self.rss if ph["t0"] <= t < ph["t1"]]
            ph.update({
                "frames": len(lat), "never_stored": len(lat) - len(done),
                "latency_median_s": round(statistics.median(done), 2) if done else None,
                "latency_max_s": round(max(done), 2) if done else None,
                "rss_peak_mb": round(max(rss) / 1024, 1) if rss else None,
            })
        return out

    def quarantine(self) -> dict[str, int]:
        import sqlite3

        db = sqlite3.connect(self.tmp / "state" / "ingest.db")
        try:
            rows = db.execute("SELECT reason, COUNT(*), SUM(length(payload)) FROM quarantine "
                              "GROUP BY reason").fetchall()
        finally:
            db.close()
        return {f"{r}: rows": int(n) for r, n, _ in rows} | {
            f"{r}: stored bytes": int(b or 0) for r, _, b in rows}

    def close(self) -> None:
        self.stop.set()
        for c in self.pubs.values():
            c.disconnect()
            c.loop_stop()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        st.down(self.tmp / "stack")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    secs = 12.0 if args.quick else 25.0
    phases = [("baseline", 0, 0, secs),
              ("flood 60 x 3.9 MB", 60, 3_900_000, secs),
              ("flood 240 x 1 MB", 240, 1_000_000, secs)]
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as d:
        b = Bench(Path(d))
        try:
            res = b.run(phases)
            q = b.quarantine()
        finally:
            b.close()
    print(f"{'phase':<22} {'frames':>6} {'lost':>5} {'lat p50 s':>10} {'lat max s':>10} "
          f"{'RSS peak MB':>12}")
    for r in res:
        print(f"{r['phase']:<22} {r['frames']:>6} {r['never_stored']:>5} "
              f"{r['latency_median_s']!s:>10} {r['latency_max_s']!s:>10} "
              f"{r['rss_peak_mb']!s:>12}" + (f"  ({r['flood_error']})" if r["flood_error"]
                                             else ""))
    print("quarantine:", json.dumps(q))
    base = res[0]
    for r in res[1:]:
        if base["latency_median_s"] and r["latency_median_s"]:
            print(f"{r['phase']}: other gateways' median latency x"
                  f"{r['latency_median_s'] / base['latency_median_s']:.1f} of baseline, "
                  f"peak RSS x{(r['rss_peak_mb'] or 0) / (base['rss_peak_mb'] or 1):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
