"""No reading lost across an InfluxDB outage and a ``kill -9`` of the ingest process.

One private stack; the ingest runs as a real subprocess (``stationseal ingest run``), two
gateways publish continuously through all phases, and at the end InfluxDB must hold
exactly the readings sent: none lost, none doubled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ingest_support import Gateway, gateway_publisher, influx_count, wait_for

from ingest.metrics import fetch
from stack.manager import start_component, stop_component
from stationseal.keys import KeyRegistry

#: The InfluxDB outage the test rides out: a minute, as in an ordinary database restart.
INFLUX_OUTAGE_S = float(os.environ.get("STATIONSEAL_TEST_INFLUX_OUTAGE_S", "60"))

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def _start_ingest(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg_path)],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"),
    )


def _health(state: Path) -> dict[str, Any] | None:
    try:
        port = json.loads((state / "run" / "worker-0.json").read_text())["metrics_port"]
        _, text = fetch(f"http://127.0.0.1:{port}/healthz")
        return dict(json.loads(text))
    except (OSError, ValueError, KeyError):
        return None


def test_influx_outage_and_kill_9_lose_nothing(make_stack: Any, tmp_path: Path) -> None:
    info = make_stack(gateways=("gw-a", "gw-b"), name="faults")
    reg = KeyRegistry()
    gws = [Gateway(g, tmp_path / g, reg) for g in ("gw-a", "gw-b")]
    reg.save(tmp_path / "registry.json")
    state = tmp_path / "state"
    cfg = {
        "mqtt": {"host": info.mqtt_host, "port": info.mqtt_port,
                 "tls": {"ca_file": str(info.ca_file)}, "username": "ingest",
                 "password_file": str(info.ingest.password_file),
                 "client_id": "ingest-faults", "receive_maximum": 200},
        "influx": {"url": info.influx_url, "database": info.influx_database,
                   "flush_interval_ms": 100, "max_backoff_s": 1.0, "timeout_s": 2.0},
        "registry": "registry.json",
        "registry_authority": "registry.json.authority.pub.pem",
        "state_dir": "state",
        "metrics": {"port": 0},
    }
    cfg_path = tmp_path / "central.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "ingest.log"
    proc = _start_ingest(cfg_path, log)
    pubs = {g.id: gateway_publisher(info, g.id) for g in gws}
    sent = [0]
    stop = threading.Event()
    errors: list[str] = []

    def publish() -> None:
        try:
            while not stop.is_set():
                for g in gws:
                    f = g.next_frame(10)
                    pubs[g.id].publish(g.topic, f.payload, qos=1)
                    sent[0] += len(f.readings)
                time.sleep(0.05)
        except Exception as e:  # surfaced by the main thread's assertion
            errors.append(repr(e))

    t = threading.Thread(target=publish, daemon=True)
    try:
        assert wait_for(lambda: (_health(state) or {}).get("ok") is True, 20), log.read_text()
        t.start()
        assert wait_for(lambda: influx_count(info.influx_url, info.influx_database) > 0, 10)

        # InfluxDB outage: ingest stops acknowledging, the broker keeps the frames.
        stop_component(info.dir, "influxdb")
        assert wait_for(lambda: (_health(state) or {}).get("influx_ok") is False, 15)
        time.sleep(INFLUX_OUTAGE_S)
        h = _health(state) or {}
        assert h.get("backlog", 0) > 0, h
        start_component(info.dir, "influxdb")
        assert wait_for(lambda: (_health(state) or {}).get("influx_ok") is True, 90)

        # kill -9 while frames keep coming; they wait in the persistent session.
        time.sleep(1.0)
        proc.kill()
        proc.wait(10)
        time.sleep(3.0)
        proc = _start_ingest(cfg_path, log)
        time.sleep(2.0)
        stop.set()
        t.join(10)
        assert not errors, errors
        for c in pubs.values():
            # Every publish acknowledged by the broker, so "sent" is what it holds.
            assert wait_for(lambda c=c: not c._out_messages, 20)  # type: ignore[misc]
        total = sent[0]
        assert wait_for(
            lambda: influx_count(info.influx_url, info.influx_database) == total, 60
        ), (influx_count(info.influx_url, info.influx_database), total, log.read_text()[-3000:])
        # Exactly once in the database: a second look after the backlog settled.
        time.sleep(1.0)
        assert influx_count(info.influx_url, info.influx_database) == total
        assert influx_count(info.influx_url, info.influx_database,
                            measurement="integrity", field="count",
                            where="WHERE severity <> 'low'") == 0
    finally:
        stop.set()
        for c in pubs.values():
            c.disconnect()
            c.loop_stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
