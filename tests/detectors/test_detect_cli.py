"""`stationseal detect`: offline runs, selection, parameters, errors and the listing."""

from __future__ import annotations

import json

from env_helpers import HOUR, T0

from ingest.detectors import registry
from ingest.detectors.io import write_records
from stationseal.cli import main
from stationseal.records import Sample, SiteEvent

SITES = """
sites:
  S1:
    kind: stack_cems
    location: {lat: 36.0, lon: 120.3}
    limits: {so2_mgm3: 35}
"""


def setup(tmp_path):
    recs = [Sample(T0 + i * HOUR, "S1", "cems", {"so2_mgm3": 21.5 if 10 <= i < 40 else 10 + i % 7,
                                                  "flow_m3h": 9e5 + i * 700}, origin=("gw-1", i))
            for i in range(60)]
    recs.append(SiteEvent(T0 + 3 * HOUR, "S1", "gw-1", "data_dropped",
                          {"first_seq": 1, "last_seq": 2}))
    recs.reverse()  # the command sorts by time
    (tmp_path / "SITES.yaml").write_text(SITES)
    write_records(tmp_path / "RECORDS.jsonl", recs)
    return tmp_path / "RECORDS.jsonl", tmp_path / "SITES.yaml", tmp_path / "ALERTS.jsonl"


def alerts(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_offline_run_writes_alerts(tmp_path, capsys):
    rec, sites, out = setup(tmp_path)
    assert main(["detect", "--in", str(rec), "--sites", str(sites), "--out", str(out)]) == 0
    got = alerts(out)
    assert [(a["rule"], a["severity"]) for a in got] == [("I-DROP", "medium"), ("E4", "high")]
    e4 = got[1]
    assert e4["start"] == "2024-01-01T10:00:00.000Z" and e4["end"] == "2024-01-02T15:00:00.000Z"
    assert e4["evidence"]["origins"][0] == {"gateway": "gw-1", "first_seq": 10,
                                            "last_seq": 39, "count": 30}
    assert e4["summary_zh"] and e4["id"] == "E4|S1|cems|so2_mgm3|flat#1"
    assert "test_id" not in e4 and e4["update_count"] >= 1
    assert "61 records" in capsys.readouterr().err


def test_rules_and_params_select_and_tune(tmp_path):
    rec, sites, out = setup(tmp_path)
    (tmp_path / "P.yaml").write_text("E4: {high_hours: 48}\n")
    assert main(["detect", "--in", str(rec), "--sites", str(sites), "--out", str(out),
                 "--rules", "E4", "--params", str(tmp_path / "P.yaml")]) == 0
    assert [(a["rule"], a["severity"]) for a in alerts(out)] == [("E4", "medium")]


def test_usage_errors_name_the_culprit(tmp_path, capsys):
    rec, sites, out = setup(tmp_path)
    (tmp_path / "P.yaml").write_text("E4: {high_hour: 48}\n")
    base = ["detect", "--in", str(rec), "--sites", str(sites), "--out", str(out)]
    assert main([*base, "--params", str(tmp_path / "P.yaml")]) == 2
    assert "P.yaml: E4.high_hour: unknown parameter" in capsys.readouterr().err
    assert main([*base, "--rules", "E4,E42"]) == 2
    assert "unknown rule(s) E42" in capsys.readouterr().err
    (tmp_path / "SITES.yaml").write_text(SITES.replace("S1:", "S2:"))
    assert main(base) == 2
    assert "RECORDS.jsonl:1: site: 'S1' is not in" in capsys.readouterr().err
    assert main(["detect", "--sites", str(sites)]) == 2


def test_list_and_markdown(capsys):
    assert main(["detect", "--list"]) == 0
    listing = capsys.readouterr().out
    for rule in ("E1", "E8", "I-GAP", "I-OFFLINE"):
        assert f"\n{rule} " in listing
    assert main(["detect", "--list", "--markdown"]) == 0
    assert capsys.readouterr().out == registry.markdown(registry.discover())
