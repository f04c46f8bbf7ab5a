"""A full state disk stops the ingest visibly and loses nothing.

The ingest runs as a real process (``stationseal ingest run``) whose file size limit
(RLIMIT_FSIZE) is a few MB, so its SQLite state stops growing exactly as on a full
filesystem: every write past the limit fails (CPython ignores SIGXFSZ, so the error is
an ordinary exception). A gateway then publishes payloads that all go to the quarantine.
The worker must exit non-zero (systemd restarts it) instead of living on with a dead
processing thread and a healthy ``/healthz``, and after a restart with room again every
published payload is accounted for: none was acknowledged without being recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ingest_support import gateway_publisher, publish_all, wait_for

from ingest.metrics import fetch
from ingest.service import EXIT_FATAL
from ingest.store import Store
from stationseal.keys import KeyRegistry

pytestmark = [pytest.mark.stack]

#: Large enough for the initial state database and the receipts schema, small enough
#: that a few dozen quarantined payloads fill it.
FSIZE_LIMIT = 3 * 2**20
PAYLOAD = 64 * 1024
MESSAGES = 120


def _health(state: Path) -> dict[str, Any] | None:
    try:
        port = json.loads((state / "run" / "worker-0.json").read_text())["metrics_port"]
        _, text = fetch(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
        return dict(json.loads(text))
    except (OSError, ValueError, KeyError):
        return None


def _start(cfg: Path, log: Path, limit: int | None) -> subprocess.Popen[bytes]:
    def preexec() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    # stderr to a pipe-less file opened in the parent is still a file the child writes:
    # the log stays far below the limit (one line per quarantined payload).
    return subprocess.Popen(
        [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"), preexec_fn=preexec)


def test_full_state_disk_stops_worker_and_loses_nothing(make_stack: Any,
                                                        tmp_path: Path) -> None:
    info = make_stack(gateways=("gw-a",), name="diskfull")
    KeyRegistry().save(tmp_path / "registry.json")
    state = tmp_path / "state"
    cfg = tmp_path / "central.yaml"
    cfg.write_text(yaml.safe_dump({
        "mqtt": {"host": info.mqtt_host, "port": info.mqtt_port,
                 "tls": {"ca_file": str(info.ca_file)}, "username": "ingest",
                 "password_file": str(info.ingest.password_file),
                 "client_id": "ingest-diskfull"},
        "influx": {"url": info.influx_url, "database": info.influx_database,
                   "flush_interval_ms": 50},
        "registry": "registry.json",
        "registry_authority": "registry.json.authority.pub.pem",
        "state_dir": "state",
        "metrics": {"port": 0},
        "disk": {"min_free_bytes": 0, "min_free_pct": 0},
    }))
    log = tmp_path / "ingest.log"
    proc = _start(cfg, log, FSIZE_LIMIT)
    pub = gateway_publisher(info, "gw-a")
    try:
        assert wait_for(lambda: (_health(state) or {}).get("ok") is True, 30), \
            log.read_text()[-2000:]
        sent = [os.urandom(PAYLOAD) for _ in range(MESSAGES)]
        publish_all(pub, [("stationseal/v1/gw-a/frames", p) for p in sent])
        # The worker must notice and stop with a failure exit code.
        assert wait_for(lambda: proc.poll() is not None, 60), \
            f"ingest still running with a full state disk: {_health(state)}"
        assert proc.returncode == EXIT_FATAL, (proc.returncode, log.read_text()[-3000:])
        text = log.read_text()
        assert "worker stops" in text and "Traceback" not in text.split("worker stops")[-1]

        # Room again: the restarted worker records everything the broker kept for it.
        proc = _start(cfg, log, None)
        db = state / "ingest.db"

        def accounted() -> int:
            st = Store(db)
            try:
                return sum(st.quarantine_counts().values())
            finally:
                st.close()

        assert wait_for(lambda: accounted() >= MESSAGES, 60), accounted()
        time.sleep(1.0)
        st = Store(db)
        try:
            rows = list(st.quarantine_rows())
            # At least once, never silently dropped: every payload is in the quarantine
            # (a redelivered one may be there twice).
            assert {hashlib.sha256(p).digest() for p in sent} <= {r.digest for r in rows}
            assert not st.quarantine_overflow()
        finally:
            st.close()
        assert (_health(state) or {}).get("ok") is True
    finally:
        pub.disconnect()
        pub.loop_stop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
