"""`stationseal ingest import` and `ingest quarantine` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ingest_support import Gateway, create_db, influx_count

from stack.manager import StackInfo
from stationseal.export import line_for
from stationseal.keys import KeyRegistry

pytestmark = [pytest.mark.stack]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stationseal.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_import_then_inspect_quarantine(stack: StackInfo, tmp_path: Path) -> None:
    reg = KeyRegistry()
    g = Gateway("gw-airgap", tmp_path / "k", reg)
    other = Gateway("gw-airgap", tmp_path / "k2", KeyRegistry())  # key not registered
    reg.save(tmp_path / "registry.json")
    frames = [g.next_frame(20) for _ in range(30)]
    lines = [line_for(g.topic, f.payload) for f in frames]
    lines.insert(10, line_for(g.topic, other.next_frame(5).payload))  # forged
    lines.insert(20, "{not json")
    lines.append(lines[5])  # the same frame twice in the export
    export = tmp_path / "frames.jsonl"
    export.write_text("\n".join(lines) + "\n")
    db = "t_import"
    create_db(stack.influx_url, db)
    cfg = tmp_path / "central.yaml"
    cfg.write_text(yaml.safe_dump({
        "influx": {"url": stack.influx_url, "database": db},
        "registry": "registry.json",
        "registry_authority": "registry.json.authority.pub.pem",
        "state_dir": "state",
        "alerts": {"jsonl": "alerts.jsonl"},
    }))

    r = cli("ingest", "import", str(export), "--config", str(cfg))
    assert r.returncode == 1, r.stderr  # something was quarantined
    summary = json.loads(r.stdout)
    assert summary["accepted"] == 30 and summary["quarantined"] == 2
    assert summary["duplicate"] == 1 and summary["readings"] == 600 + 20
    assert "import [" in r.stderr and "100.0%" in r.stderr
    assert influx_count(stack.influx_url, db) == 600

    # Importing the same file again changes nothing in the database.
    r = cli("ingest", "import", str(export), "--config", str(cfg), "--no-progress")
    assert json.loads(r.stdout)["duplicate"] == 31
    assert influx_count(stack.influx_url, db) == 600

    r = cli("ingest", "quarantine", "list", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(x["reason"] for x in rows) == ["bad_json", "bad_json", "unknown_key",
                                                 "unknown_key"]
    forged = next(x for x in rows if x["reason"] == "unknown_key")
    assert forged["gateway_id"] == "gw-airgap" and forged["seq"] == 1

    r = cli("ingest", "quarantine", "show", str(forged["id"]), "--config", str(cfg))
    assert r.returncode == 0
    shown = json.loads(r.stdout)
    assert shown["decoded"]["readings"] == 5 and shown["payload_base64"]

    out = tmp_path / "q.jsonl"
    r = cli("ingest", "quarantine", "export", str(out), "--config", str(cfg),
            "--reason", "unknown_key")
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 2
    r = cli("verify", str(out), "--registry", str(tmp_path / "registry.json"),
            "--authority", str(tmp_path / "registry.json.authority.pub.pem"))
    assert r.returncode == 1 and "unknown_key" in r.stdout

    alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert {a["evidence"]["kind"] for a in alerts} >= {"unknown_key", "bad_json"}
    unknown = [a for a in alerts if a["evidence"]["kind"] == "unknown_key"]
    assert [a["state"] for a in unknown] == ["new", "update"]  # merged: one alert id
    assert len({a["id"] for a in unknown}) == 1


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "central.yaml"
    cfg.write_text(yaml.safe_dump({"registry": "r.json", "registry_authority_fingerprint": "0" * 64,
                                   "state_dir": "s",
                                   "influx": {"url": "http://x", "batchlines": 5}}))
    r = cli("ingest", "check-config", "--config", str(cfg))
    assert r.returncode == 2
    assert "influx.batchlines" in r.stderr and str(cfg) in r.stderr
    cfg.write_text(yaml.safe_dump({"registry": "r.json", "registry_authority_fingerprint": "0" * 64,
                                   "state_dir": "s",
                                   "influx": {"version": 2, "url": "http://x"}}))
    r = cli("ingest", "check-config", "--config", str(cfg))
    assert r.returncode == 2 and "org" in r.stderr and "token" in r.stderr
