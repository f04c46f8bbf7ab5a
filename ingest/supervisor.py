"""Runs ``shard.count`` worker processes and gives them one metrics/health endpoint.

Processes, not threads: verification and conversion are CPU-bound Python, and the GIL
would serialise threads. Each worker is a plain ``stationseal ingest run --shard k``
(also usable directly from a systemd template unit) that owns the gateways whose id
hashes to ``k``; the supervisor restarts a worker that dies, with back-off.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ingest.config import IngestConfig
from ingest.metrics import MetricsServer, fetch

log = logging.getLogger("stationseal.ingest.supervisor")


def worker_info_path(cfg: IngestConfig, shard: int) -> Path:
    return cfg.state_dir / "run" / f"worker-{shard}.json"


def write_worker_info(cfg: IngestConfig, shard: int, metrics_port: int | None) -> None:
    p = worker_info_path(cfg, shard)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "metrics_port": metrics_port}))
    os.replace(tmp, p)


def worker_port(cfg: IngestConfig, shard: int) -> int:
    return 0 if cfg.metrics.port == 0 else cfg.metrics.port + 1 + shard


def merge_metrics(texts: list[str]) -> str:
    """Concatenate Prometheus texts keeping each metric family contiguous and its HELP
    and TYPE once (workers label their samples with ``shard``)."""
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        fam = ""
        for ln in text.splitlines():
            if not ln.strip():
                continue
            if ln.startswith("# "):
                parts = ln.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    fam = parts[2]
                    if fam not in meta:
                        order.append(fam)
                        meta[fam] = []
                        samples[fam] = []
                    if not any(m.split(" ", 3)[1] == parts[1] for m in meta[fam]):
                        meta[fam].append(ln)
                continue
            if fam not in samples:
                order.append(fam)
                meta[fam] = []
                samples[fam] = []
            samples[fam].append(ln)
    out: list[str] = []
    for fam in order:
        out += meta[fam] + samples[fam]
    return "\n".join(out) + "\n"



def merge_registry(workers: dict[str, Any]) -> dict[str, Any]:
    """The workers' key registry states in one: ``refused`` if any worker refused the
    file (naming which, and why), else the serial in force. Not part of ``ok``: the last
    accepted registry keeps verifying (ingest/pipeline.py RegistryWatcher.status)."""
    states = {k: h["registry"] for k, h in workers.items()
              if isinstance(h, dict) and isinstance(h.get("registry"), dict)}
    if not states:
        return {"state": "unknown"}
    refused = {k: r for k, r in states.items() if r.get("state") == "refused"}
    serials = sorted({r.get("serial") for r in states.values()}, key=str)
    out: dict[str, Any] = {"state": "refused" if refused else "current",
                           "serial": serials[0] if len(serials) == 1 else serials}
    if refused:
        first = refused[min(refused)]
        out["refused"] = {"workers": sorted(refused, key=int),
                          **(first.get("refused") or {})}
    return out

class Supervisor:
    def __init__(self, cfg: IngestConfig, config_path: str, extra_args: list[str]):
        self.cfg = cfg
        self.config_path = config_path
        self.extra = extra_args
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts: dict[int, int] = {}
        self.stop = threading.Event()
        self.server: MetricsServer | None = None

    def _spawn(self, k: int) -> None:
        worker_info_path(self.cfg, k).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config",
                self.config_path, "--shard", str(k), *self.extra]
        self.procs[k] = subprocess.Popen(argv)
        log.info("worker %d started (pid %d)", k, self.procs[k].pid)

    def _worker_ports(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for k in range(self.cfg.shard.count):
            try:
                d = json.loads(worker_info_path(self.cfg, k).read_text())
            except (OSError, ValueError):
                continue
            if d.get("metrics_port"):
                out[k] = int(d["metrics_port"])
        return out

    def metrics(self) -> str:
        texts = []
        for port in self._worker_ports().values():
            try:
                st, text = fetch(f"http://{self.cfg.metrics.host}:{port}/metrics")
            except OSError:
                continue
            if st == 200:
                texts.append(text)
        return merge_metrics(texts)

    def health(self) -> dict[str, Any]:
        workers: dict[str, Any] = {}
        ports = self._worker_ports()
        ok = True
        for k in range(self.cfg.shard.count):
            h: dict[str, Any] = {"ok": False, "error": "not running"}
            if k in ports:
                try:
                    _, text = fetch(f"http://{self.cfg.metrics.host}:{ports[k]}/healthz")
                    h = json.loads(text)
                except (OSError, ValueError) as e:
                    h = {"ok": False, "error": str(e)}
            workers[str(k)] = h
            ok = ok and bool(h.get("ok"))
        return {"ok": ok, "registry": merge_registry(workers), "workers": workers}

    def run(self) -> int:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda *_: self.stop.set())
        if self.cfg.metrics.enabled:
            self.server = MetricsServer(self.cfg.metrics.host, self.cfg.metrics.port,
                                        self.metrics, self.health).start()
        for k in range(self.cfg.shard.count):
            self._spawn(k)
        next_start: dict[int, float] = {}
        while not self.stop.wait(0.5):
            for k, p in list(self.procs.items()):
                if p.poll() is None:
                    continue
                if k not in next_start:
                    n = self.restarts.get(k, 0)
                    delay = min(30.0, 2.0 ** n)
                    log.error("worker %d exited with %s; restarting in %.0f s", k,
                              p.returncode, delay)
                    next_start[k] = time.monotonic() + delay
                    self.restarts[k] = n + 1
                elif time.monotonic() >= next_start[k]:
                    del next_start[k]
                    self._spawn(k)
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        rc = 0
        for p in self.procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = 1
        if self.server is not None:
            self.server.close()
        return rc
