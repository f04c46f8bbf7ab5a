"""Evidence packages served on the ingest's HTTP port, behind a bearer token; alerts name
their download path."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from evidence_support import Central, make_central

from evidence.serve import EvidenceServer, download_path
from evidence.verify import verify_package
from ingest.alerts import AlertBook
from ingest.config import load_config
from ingest.metrics import MetricsServer
from ingest.store import Store


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Central:
    return make_central(tmp_path_factory.mktemp("central"))


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                 if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_package_served_behind_a_token(central: Central, tmp_path: Path) -> None:
    doc = yaml.safe_load(central.config.read_text())
    doc["evidence"] = {"token": "s3cret-token", "cache_dir": str(tmp_path / "cache")}
    cfgp = tmp_path / "central.yaml"
    cfgp.write_text(yaml.safe_dump(doc))
    cfg = load_config(cfgp)
    alerts = {json.loads(x)["id"]: json.loads(x) for x in central.alerts.read_text().splitlines()}
    store = Store(cfg.db_path)
    book = AlertBook(store)
    a = alerts[central.alert_id]
    u = book.upsert(central.alert_id, a, 0.0)
    assert u.doc["download_path"] == download_path(central.alert_id)
    assert "%7C" in u.doc["download_path"] and u.doc["download_path"].endswith(".zip")
    store.commit_batch({}, [], [], [book.row(u)])
    srv = MetricsServer("127.0.0.1", 0, lambda: "", lambda: {"ok": True},
                        EvidenceServer(cfg)).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        url = base + u.doc["download_path"]
        assert _get(url, None)[0] == 401
        assert _get(url, "wrong")[0] == 401
        code, body = _get(base + download_path("E4|nope#1"), "s3cret-token")
        assert code == 404 and b"no alert" in body
        code, body = _get(url, "s3cret-token")
        assert code == 200
        z = tmp_path / "got.zip"
        z.write_bytes(body)
        assert zipfile.is_zipfile(z)
        assert verify_package(z, (central.root / "keys" / "central.pub.pem").read_bytes()).ok
        assert _get(base + "/metrics", None)[0] == 200
    finally:
        srv.close()
    # Without a token nothing is served.
    cfg2 = load_config(central.config)
    assert EvidenceServer(cfg2)(download_path(central.alert_id), {})[0] == 404  # type: ignore[arg-type,index]
