"""`stationseal audit` against the real local InfluxDB: a reading changed directly in the
database and a reading deleted from it are both found, and an untouched database is
consistent."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from ingest_support import Gateway, create_db, influx_query

from stack.manager import StackInfo
from stationseal.cli import main
from stationseal.export import line_for
from stationseal.keys import KeyRegistry

pytestmark = [pytest.mark.stack]


def _influx(url: str, db: str, q: str) -> None:
    data = urllib.parse.urlencode({"q": q, "db": db}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as r:
        assert '"error"' not in r.read().decode()


def _write(url: str, db: str, line: str) -> None:
    req = urllib.request.Request(f"{url}/write?db={db}&precision=ns", data=line.encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204


def test_audit_finds_a_changed_and_a_deleted_reading(stack: StackInfo, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    reg = KeyRegistry()
    gw = Gateway("gw-audit", tmp_path / "k", reg, site="S-audit", t0=1_760_000_000.0)
    reg.save(tmp_path / "registry.json")
    export = tmp_path / "export.jsonl"
    export.write_text("".join(line_for(gw.topic, gw.next_frame(10).payload) + "\n"
                              for _ in range(20)))
    db = "t_audit"
    create_db(stack.influx_url, db)
    _influx(stack.influx_url, db, 'DROP SERIES FROM "reading"')
    cfg = tmp_path / "central.yaml"
    cfg.write_text(yaml.safe_dump({
        "influx": {"url": stack.influx_url, "database": db},
        "registry": str(tmp_path / "registry.json"),
        "registry_authority": str(tmp_path / "registry.json.authority.pub.pem"),
        "state_dir": str(tmp_path / "state"),
        "archive_dir": str(tmp_path / "archive"),
        "mqtt": {"tls": None}, "metrics": {"enabled": False}}))
    assert main(["ingest", "import", str(export), "--config", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["audit", "--config", str(cfg)]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["result"] == "CONSISTENT" and summary["readings_expected"] == 200
    assert summary["readings_stored"] == 200

    rows = influx_query(stack.influx_url, db,
                        "SELECT * FROM \"reading\" WHERE \"gateway\" = 'gw-audit' "
                        "ORDER BY time LIMIT 60")
    cols = rows[0]["columns"]
    pts = [dict(zip(cols, v, strict=True)) for v in rows[0]["values"]]
    changed, deleted = pts[17], pts[42]
    # Someone with database access "corrects" one reading and removes another.
    tags = ",".join(f"{k}={changed[k]}" for k in ("gateway", "instrument", "signal", "site",
                                                 "unit"))
    _write(stack.influx_url, db,
           f'reading,{tags} value={changed["value"] + 0.5},quality="N",'
           f'seq={changed["seq"]}i,frame="{changed["frame"]}" {changed["time"]}')
    _influx(stack.influx_url, db,
            f"DELETE FROM \"reading\" WHERE \"gateway\" = 'gw-audit' AND "
            f"\"signal\" = '{deleted['signal']}' AND time = {deleted['time']}")
    capsys.readouterr()
    assert main(["audit", "--config", str(cfg), "--out", str(tmp_path / "diff.jsonl")]) == 1
    diffs = [json.loads(x) for x in (tmp_path / "diff.jsonl").read_text().splitlines()]
    kinds = {(d["kind"], d["ts_ns"], d["signal"]) for d in diffs}
    assert ("changed", changed["time"], changed["signal"]) in kinds, diffs
    assert ("missing", deleted["time"], deleted["signal"]) in kinds, diffs
    assert len(diffs) == 2, diffs
    ch = next(d for d in diffs if d["kind"] == "changed")
    assert ch["stored"]["value"] == pytest.approx(ch["signed"]["value"] + 0.5)
    # A reading inserted without any signed frame behind it.
    _write(stack.influx_url, db,
           f'reading,{tags} value=1.0,quality="N",seq=3i,frame="{changed["frame"]}" '
           f'{changed["time"] + 5}')
    assert main(["audit", "--config", str(cfg), "--gateway", "gw-audit",
                 "--out", str(tmp_path / "diff2.jsonl")]) == 1
    kinds2 = [json.loads(x)["kind"] for x in (tmp_path / "diff2.jsonl").read_text().splitlines()]
    assert sorted(kinds2) == ["changed", "missing", "unreceipted"]
