"""Writing line protocol to InfluxDB 1.x (HTTP API v1) or 2.x/3.x (v2 write API).

The write path has exactly two outcomes per line: stored, or recorded as rejected by the
server together with the server's words (a type conflict, a point beyond the retention
policy). Everything else (server down, timeouts, 5xx, 429, auth trouble while a token is
being rotated) is retried with back-off for as long as it takes, which is what makes the
MQTT side stop acknowledging and the broker keep the frames: backpressure, never loss.
Because every point has a deterministic timestamp and series, writing a batch twice
leaves the database exactly as writing it once.
"""

from __future__ import annotations

import base64
import http.client
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Protocol

from ingest.config import InfluxConfig

log = logging.getLogger("stationseal.ingest.influx")


class WriteError(Exception):
    """``retriable`` False means the server refused the content itself (HTTP 400/413/422):
    sending the same lines again cannot succeed (a smaller part may)."""

    def __init__(self, msg: str, *, retriable: bool, status: int | None = None):
        super().__init__(msg)
        self.retriable = retriable
        self.status = status


class Stopped(Exception):
    """The service is shutting down while a write was still being retried: the batch is
    not acknowledged, the broker redelivers it to the next run."""


class Writer(Protocol):
    def write(self, lines: list[str]) -> None: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


def _classify(status: int, body: str, what: str) -> WriteError:
    if status in (400, 413, 422):
        return WriteError(f"{what}: HTTP {status}: {body.strip()[:500]}", retriable=False,
                          status=status)
    return WriteError(f"{what}: HTTP {status}: {body.strip()[:500]}", retriable=True,
                      status=status)


class V1Writer:
    """InfluxDB 1.x ``/write``: plain http.client with one kept-alive connection, so the
    hot path has no dependency beyond the standard library."""

    def __init__(self, cfg: InfluxConfig):
        u = urllib.parse.urlsplit(cfg.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"influx.url {cfg.url!r} is not an http(s) URL")
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port or (443 if self._https else 80)
        self._base = u.path.rstrip("/")
        self._timeout = cfg.timeout_s
        q = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            q["rp"] = cfg.retention_policy
        self._write_path = f"{self._base}/write?{urllib.parse.urlencode(q)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        pw = cfg.resolved_password()
        if cfg.username:
            tok = base64.b64encode(f"{cfg.username}:{pw or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {tok}"
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.database = cfg.database

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _request(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, str]:
        with self._lock:
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read().decode("utf-8", "replace")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self._conn = None
                return resp.status, data
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._conn = None
                raise WriteError(f"InfluxDB {self._host}:{self._port}: {e}",
                                 retriable=True) from None

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        body = ("\n".join(lines) + "\n").encode("utf-8")
        status, text = self._request("POST", self._write_path, body, self._headers)
        if status != 204 and not 200 <= status < 300:
            raise _classify(status, text, f"InfluxDB write to {self.database}")

    def query(self, q: str, method: str = "POST") -> tuple[int, str]:
        params = urllib.parse.urlencode({"q": q, "db": self.database})
        hdrs = {k: v for k, v in self._headers.items() if k == "Authorization"}
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        return self._request(method, f"{self._base}/query", params.encode(), hdrs)

    def create_database(self) -> None:
        status, text = self.query(f'CREATE DATABASE "{self.database}"')
        if status != 200 or '"error"' in text:
            raise WriteError(f"CREATE DATABASE {self.database}: HTTP {status}: {text[:300]}",
                             retriable=True, status=status)

    def ping(self) -> bool:
        try:
            status, _ = self._request("GET", f"{self._base}/ping", None, {})
        except WriteError:
            return False
        return status in (200, 204)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class V2Writer:
    """InfluxDB 2.x / 3.x through the v2 write API, with the official client."""

    def __init__(self, cfg: InfluxConfig):
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._client = InfluxDBClient(
            url=cfg.url, token=cfg.resolved_token() or "", org=cfg.org or "",
            timeout=int(cfg.timeout_s * 1000),
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._org = cfg.org or ""
        self._bucket = cfg.bucket or ""
        self.database = cfg.bucket or ""

    def write(self, lines: list[str]) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        if not lines:
            return
        try:
            self._api.write(bucket=self._bucket, org=self._org, record="\n".join(lines),
                            write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as e:
            raise _classify(int(e.status or 0), str(e.body or e.reason),
                            f"InfluxDB write to bucket {self._bucket}") from None
        except Exception as e:  # urllib3 connection errors and timeouts
            raise WriteError(f"InfluxDB write to bucket {self._bucket}: {e}",
                             retriable=True) from None

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def make_writer(cfg: InfluxConfig) -> V1Writer | V2Writer:
    return V1Writer(cfg) if cfg.version == 1 else V2Writer(cfg)


class ReliableWriter:
    """Retries until written; isolates lines the server refuses (bisection) so one bad
    point never blocks or loses the good ones around it."""

    def __init__(
        self,
        writer: Writer,
        *,
        max_backoff_s: float = 30.0,
        stop: threading.Event | None = None,
        on_state: Callable[[bool, str | None], None] | None = None,
    ):
        self.writer = writer
        self.max_backoff_s = max_backoff_s
        self.stop = stop or threading.Event()
        self.on_state = on_state
        self.up = True
        self.retries = 0

    def _set_state(self, up: bool, err: str | None) -> None:
        if up != self.up:
            self.up = up
            if up:
                log.warning("InfluxDB writes succeed again")
            else:
                log.error("InfluxDB write failed, retrying with back-off: %s", err)
            if self.on_state is not None:
                self.on_state(up, err)

    def _attempt(self, lines: list[str]) -> None:
        delay = 0.2
        while True:
            try:
                self.writer.write(lines)
                self._set_state(True, None)
                return
            except WriteError as e:
                if not e.retriable:
                    raise
                self._set_state(False, str(e))
                self.retries += 1
            if self.stop.wait(delay):
                raise Stopped("shutdown while InfluxDB writes were failing")
            delay = min(delay * 2, self.max_backoff_s)

    def write(self, lines: list[str]) -> list[tuple[str, str]]:
        """Write all lines; return the (line, server message) pairs refused for content."""
        rejected: list[tuple[str, str]] = []
        stack = [lines]
        while stack:
            part = stack.pop()
            if not part:
                continue
            try:
                self._attempt(part)
            except WriteError as e:
                if len(part) == 1:
                    rejected.append((part[0], str(e)))
                    continue
                mid = len(part) // 2
                # Right half pushed first so the left half is written first: keeps the
                # write order close to arrival order.
                stack.append(part[mid:])
                stack.append(part[:mid])
        return rejected


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
