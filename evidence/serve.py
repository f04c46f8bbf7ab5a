"""Evidence packages over the ingest's HTTP port, behind a bearer token.

``GET /evidence/<alert id, URL-quoted>.zip`` with ``Authorization: Bearer <token>``
returns the alert's package, built on first request (and again when the alert has been
updated since) into ``evidence.cache_dir``. Alerts carry this path as ``download_path``.
Without a configured token nothing is served: packages name stations and hold evidence.
One build at a time, so a burst of requests cannot exhaust the service.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.parse
from email.message import Message
from typing import Any

from ingest.config import IngestConfig

log = logging.getLogger("stationseal.ingest.evidence")

PREFIX = "/evidence/"


def download_path(alert_id: str) -> str:
    return PREFIX + urllib.parse.quote(alert_id, safe="") + ".zip"


class EvidenceServer:
    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg
        self.token = cfg.evidence.resolved_token()
        self.cache = cfg.evidence.cache_dir or (cfg.state_dir / "evidence")
        self._lock = threading.Lock()

    def __call__(self, path: str, headers: Message) -> tuple[int, str, bytes] | None:
        if not path.startswith(PREFIX):
            return None
        if not self.token:
            return 404, "text/plain", b"evidence serving is not configured (evidence.token)\n"
        auth = headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return 401, "text/plain", b"missing or wrong bearer token\n"
        name = path[len(PREFIX):].split("?")[0]
        if not name.endswith(".zip"):
            return 404, "text/plain", b"not found\n"
        alert_id = urllib.parse.unquote(name[:-4])
        try:
            data = self._package(alert_id)
        except KeyError:
            return 404, "text/plain", f"no alert {alert_id!r}\n".encode()
        except Exception as e:
            log.exception("evidence package for %s", alert_id)
            return 503, "text/plain", f"package cannot be built: {e}\n".encode()
        return 200, "application/zip", data

    def _package(self, alert_id: str) -> bytes:
        from evidence.build_cli import sources_for
        from evidence.package import build

        with self._lock:
            src = sources_for(self.cfg)
            alert = src.alerts.get(alert_id)
            if alert is None:
                raise KeyError(alert_id)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in alert_id)
            out = self.cache / f"{safe}.zip"
            stamp = self.cache / f"{safe}.state"
            state = json.dumps([alert.get("count"), alert.get("end")])
            if not (out.exists() and stamp.exists() and stamp.read_text() == state):
                self.cache.mkdir(parents=True, exist_ok=True)
                build(alert_id, src, out)
                stamp.write_text(state)
            return out.read_bytes()


def handler_for(cfg: IngestConfig) -> Any:
    return EvidenceServer(cfg)
