"""Alert merging and delivery: InfluxDB, MQTT, webhooks and a JSON Lines file.

Repeated firing of one finding (same alert key: rule, site and instrument or test) is one
alert that is updated, with a count, rather than a storm of notifications. Each update is
delivered in full (current state), so a receiver that missed one loses nothing.

Webhooks are put in the SQLite outbox in the same transaction that records the batch,
then POSTed by a delivery thread: a receiver that is down gets the alert later, after a
restart too. The body is signed with HMAC-SHA256 over the exact bytes sent, in
``X-StationSeal-Signature: sha256=<hex>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.config import AlertsConfig, WebhookConfig
from ingest.detectors.base import Alert
from ingest.store import Store
from stationseal.records import from_rfc3339

log = logging.getLogger("stationseal.ingest.alerts")

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass(slots=True)
class AlertUpdate:
    """An alert's current state as delivered: ``state`` is ``new`` or ``update``."""

    doc: dict[str, Any]
    start: float

    @property
    def key(self) -> str:
        return str(self.doc["id"])

    @property
    def site(self) -> str:
        return str(self.doc["site"])

    _body: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def body(self) -> bytes:
        """Serialised once: the state row, webhook outbox, JSONL file and MQTT publish all
        send the same bytes, and ``doc`` is not changed after the update is made."""
        if self._body is None:
            self._body = json.dumps(self.doc, sort_keys=True, ensure_ascii=False,
                                    separators=(",", ":")).encode("utf-8")
        return self._body


class AlertBook:
    """Upserts by alert id. Counts and the first start survive restarts (alerts table);
    the first start also fixes the alert's InfluxDB timestamp, so every update overwrites
    the same point."""

    def __init__(self, store: Store):
        self.store = store
        self._known: dict[str, tuple[int, float]] = {}

    def upsert(self, key: str, doc: dict[str, Any], start: float,
               is_new: bool | None = None) -> AlertUpdate:
        known = self._known.get(key)
        if known is None:
            known = self.store.alert_state(key)
        if known is None:
            count, first = 1, start
        else:
            count, first = known[0] + 1, known[1]
        if is_new is None:
            is_new = known is None
        self._known[key] = (count, first)
        if len(self._known) > 100_000:
            self._known.clear()
        out = dict(doc)
        out["id"] = key
        # Where the alert's evidence package is served (evidence/serve.py).
        out["download_path"] = "/evidence/" + urllib.parse.quote(key, safe="") + ".zip"
        out["state"] = "new" if is_new else "update"
        out["count"] = count
        return AlertUpdate(out, first)

    def update(self, alert: Alert, is_new: bool | None = None) -> AlertUpdate:
        return self.upsert(alert.key, alert.to_json(), alert.start, is_new)

    def row(self, u: AlertUpdate) -> tuple[str, str, int, float, float]:
        return (u.key, u.body().decode("utf-8"), int(u.doc["count"]), u.start,
                from_rfc3339(u.doc["end"]))


def integrity_alert(
    kind: str, severity: str, site: str | None, gateway: str | None, seq: int | None,
    when: float, detail: dict[str, Any],
) -> Alert:
    site_ = site or "unknown"
    what = f"{kind} from gateway {gateway or '?'}" + (f" at seq {seq}" if seq else "")
    return Alert(
        rule="integrity",
        severity=severity,  # type: ignore[arg-type]
        site=site_,
        instrument="",
        start=when,
        end=when,
        summary_en=f"Data integrity: {what}",
        summary_zh=f"数据完整性异常：{what}",
        evidence={"kind": kind, "gateway": gateway, "seq": seq, **detail},
        key=f"integrity|{site_}|{gateway or 'unknown'}|{kind}",
    )


def sign_body(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class JsonlSink:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, updates: list[AlertUpdate]) -> None:
        if not updates:
            return
        with self._lock, open(self.path, "ab") as fh:
            for u in updates:
                fh.write(u.body() + b"\n")
            fh.flush()


class WebhookDelivery:
    """Delivers the outbox; one thread per worker process."""

    def __init__(self, store: Store, cfg: AlertsConfig, stop: threading.Event,
                 metrics: Any = None):
        self.store = store
        self.hooks: dict[str, WebhookConfig] = {h.url: h for h in cfg.webhooks}
        self.secrets = {h.url: h.resolved_secret() for h in cfg.webhooks}
        self.max_backoff = cfg.webhook_max_backoff_s
        self.stop = stop
        self.metrics = metrics
        self.wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.hooks:
            return
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self.wake.set()
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.deliver_due()
            except Exception:
                log.exception("webhook delivery loop")
            self.wake.wait(1.0)
            self.wake.clear()

    def deliver_due(self) -> int:
        delivered = 0
        for row in self.store.outbox_due(time.time()):
            if self.stop.is_set():
                break
            hook = self.hooks.get(row.target)
            if hook is None:
                # Webhook removed from config: keep the row (never dropped) but look again
                # only rarely.
                self.store.outbox_retry(row.id, time.time() + 3600,
                                        "webhook no longer configured")
                continue
            err = self._post(hook, row.body, row.id)
            if err is None:
                self.store.outbox_done(row.id)
                delivered += 1
                if self.metrics is not None:
                    self.metrics.inc("webhook_deliveries_total", result="ok")
            else:
                delay = min(self.max_backoff, 2.0 * (2 ** min(row.attempts, 20)))
                self.store.outbox_retry(row.id, time.time() + delay, err)
                if self.metrics is not None:
                    self.metrics.inc("webhook_deliveries_total", result="retry")
                log.warning("webhook %s: %s (retry in %.0f s)", hook.url, err, delay)
        return delivered

    def _post(self, hook: WebhookConfig, body: bytes, delivery_id: int) -> str | None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "stationseal-ingest",
            "X-StationSeal-Delivery": str(delivery_id),
        }
        secret = self.secrets.get(hook.url)
        if secret:
            headers["X-StationSeal-Signature"] = sign_body(secret, body)
        req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=hook.timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            return str(e)
        return None if 200 <= status < 300 else f"HTTP {status}"
