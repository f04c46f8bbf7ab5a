"""Prometheus text metrics and a health endpoint on a small http.server.

Rates (frames/s, readings/s) are ``rate()`` over the ``*_total`` counters, the Prometheus
way; the service itself keeps only counters, gauges and two latency histograms.
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from bisect import bisect_left
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "stationseal_ingest_"

HELP: dict[str, tuple[str, str]] = {
    "frames_total": ("counter", "Frames received, by result (accepted, duplicate, "
                     "replay, fork, quarantined, other_shard)."),
    "readings_total": ("counter", "Readings written to InfluxDB."),
    "verification_failures_total": ("counter", "Frames quarantined, by reason."),
    "chain_events_total": ("counter", "Chain integrity events, by kind."),
    "alerts_total": ("counter", "Alert updates emitted, by rule and state."),
    "alerts_published_total": ("counter", "Alerts published on MQTT, by broker verdict."),
    "write_batches_total": ("counter", "InfluxDB write batches, by result."),
    "write_rejected_lines_total": ("counter", "Lines refused by InfluxDB for their content "
                                   "(kept in the state database)."),
    "write_retries_total": ("counter", "Failed InfluxDB write attempts that were retried."),
    "webhook_deliveries_total": ("counter", "Webhook POST attempts, by result."),
    "registry_reloads_total": ("counter", "Key registry reloads, by result."),
    "backlog_messages": ("gauge", "Frames received but not yet acknowledged to the broker."),
    "inbox_bytes": ("gauge", "Payload bytes received and waiting for the processor "
                    "(bounded by mqtt.inflight_bytes)."),
    "hj212_connections": ("gauge", "Open connections of the HJ 212 listener."),
    "hj212_refused_connections": ("gauge", "HJ 212 connections closed at once because a "
                                  "connection cap was reached (since start)."),
    "hj212_evicted_connections": ("gauge", "HJ 212 connections that never delivered an "
                                  "accepted frame, closed to make room at the total cap."),
    "hj212_frames_total": ("counter", "HJ 212 frames of legacy sites, by result."),
    "hj212_readings_total": ("counter", "Unsigned readings of legacy sites written."),
    "hj212_revisions_total": ("counter", "HJ 212 data re-sent with other values or flags."),
    "series_held_lines_total": ("counter", "Lines held back in the state database because "
                                "their gateway reached series.max_new_per_gateway_day."),
    "acks_frames_total": ("counter", "Frames acknowledged end to end to their gateways."),
    "acks_published_total": ("counter", "Acknowledgement messages published, by broker "
                             "verdict."),
    "sessions_lost_total": ("counter", "Reconnects on which the broker no longer had this "
                            "worker's persistent session (integrity alert raised)."),
    "fatal_errors_total": ("counter", "Worker threads that died (the worker then exits "
                           "non-zero and is restarted)."),
    "disk_free_bytes": ("gauge", "Free bytes on the filesystem of each watched path "
                        "(state_dir, archive_dir, disk.paths)."),
    "influx_up": ("gauge", "1 while InfluxDB writes succeed."),
    "mqtt_connected": ("gauge", "1 while connected to the broker."),
    "webhook_outbox": ("gauge", "Webhook deliveries waiting in the outbox."),
    "write_latency_seconds": ("histogram", "Duration of one InfluxDB batch write "
                              "(including retries)."),
    "reading_latency_seconds": ("histogram", "From a frame's creation at the gateway to "
                                "its readings being acknowledged as written."),
}

_BUCKETS: dict[str, tuple[float, ...]] = {
    "write_latency_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    "reading_latency_seconds": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
}


def _labels(lbl: tuple[tuple[str, str], ...]) -> str:
    if not lbl:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in lbl
    )
    return "{" + inner + "}"


class Metrics:
    def __init__(self, const_labels: dict[str, str] | None = None):
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._hist: dict[str, tuple[list[int], list[float]]] = {}
        self._gauge_fns: dict[str, Callable[[], float]] = {}
        self.const = tuple(sorted((const_labels or {}).items()))

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            d = self._values.setdefault(name, {})
            d[key] = d.get(key, 0.0) + n

    def set(self, name: str, v: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values.setdefault(name, {})[key] = v

    def gauge_fn(self, name: str, fn: Callable[[], float]) -> None:
        self._gauge_fns[name] = fn

    def observe(self, name: str, v: float, count: int = 1) -> None:
        buckets = _BUCKETS[name]
        with self._lock:
            h = self._hist.get(name)
            if h is None:
                h = self._hist[name] = ([0] * (len(buckets) + 1), [0.0, 0.0])
            h[0][bisect_left(buckets, v)] += count
            h[1][0] += v * count
            h[1][1] += count

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            if labels:
                return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)
            return sum(self._values.get(name, {}).values())

    def render(self) -> str:
        for name, fn in self._gauge_fns.items():
            with contextlib.suppress(Exception):
                self.set(name, float(fn()))
        out: list[str] = []
        with self._lock:
            for name, (typ, help_) in HELP.items():
                full = PREFIX + name
                if typ == "histogram":
                    h = self._hist.get(name)
                    if h is None:
                        continue
                    out.append(f"# HELP {full} {help_}")
                    out.append(f"# TYPE {full} histogram")
                    cum = 0
                    for b, c in zip((*_BUCKETS[name], float("inf")), h[0], strict=True):
                        cum += c
                        le = "+Inf" if b == float("inf") else repr(float(b))
                        out.append(f"{full}_bucket{_labels((*self.const, ('le', le)))} {cum}")
                    out.append(f"{full}_sum{_labels(self.const)} {h[1][0]!r}")
                    out.append(f"{full}_count{_labels(self.const)} {int(h[1][1])}")
                    continue
                vals = self._values.get(name)
                if not vals:
                    continue
                out.append(f"# HELP {full} {help_}")
                out.append(f"# TYPE {full} {typ}")
                for lbl, v in sorted(vals.items()):
                    out.append(f"{full}{_labels(tuple(sorted((*self.const, *lbl))))} {_num(v)}")
        return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (JSON; 200 healthy, 503 not)."""

    def __init__(self, host: str, port: int, metrics: Callable[[], str],
                 health: Callable[[], dict[str, Any]], extra: Any = None):
        """``extra(path, headers)``: other routes (evidence packages); returns
        ``(status, content type, body)`` or None when the path is not its own."""
        render = metrics
        health_fn = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body = render().encode()
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
                elif self.path.split("?")[0] in ("/healthz", "/health"):
                    h = health_fn()
                    self._send(200 if h.get("ok") else 503, "application/json",
                               json.dumps(h, sort_keys=True).encode())
                else:
                    got = extra(self.path, self.headers) if extra is not None else None
                    if got is not None:
                        self._send(*got)
                    else:
                        self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fetch(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
