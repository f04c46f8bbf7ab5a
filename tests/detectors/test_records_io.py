"""Offline record format: strict parsing with file:line: field errors, round trips."""

from __future__ import annotations

import json

import pytest

from ingest.detectors.io import RecordError, read_records, record_to_json, write_records
from stationseal.records import Sample, SiteEvent
from stationseal.records import TestContext as Ctx

SAMPLE = {"time": "2024-01-01T00:00:00Z", "site": "L1", "instrument": "analyzer",
          "values": {"co_pct": 0.4, "co2_pct": 14.1}, "flags": {"co_pct": "N"},
          "test": {"id": "T1", "method": "asm5025", "vehicle": "V", "lane": "1",
                   "phase": "fast"},
          "origin": {"gateway": "gw-1", "seq": 7}}
EVENT = {"time": "2024-01-01T00:00:01+08:00", "site": "L1", "instrument": "gw",
         "event": "data_dropped", "detail": {"first_seq": 3}}


def write(tmp_path, lines):
    p = tmp_path / "RECORDS.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


def test_samples_and_events_parse(tmp_path):
    recs = list(read_records(write(tmp_path, [SAMPLE, "", EVENT])))
    assert [n for n, _ in recs] == [1, 3]
    s, e = recs[0][1], recs[1][1]
    assert isinstance(s, Sample) and isinstance(e, SiteEvent)
    assert s.values == {"co_pct": 0.4, "co2_pct": 14.1} and s.origin == ("gw-1", 7)
    assert s.test == Ctx("T1", "asm5025", "V", "1", "fast")
    assert e.time == 1704038401.0 and e.detail == {"first_seq": 3}


def test_round_trip(tmp_path):
    recs = [r for _, r in read_records(write(tmp_path, [SAMPLE, EVENT]))]
    out = tmp_path / "out.jsonl"
    assert write_records(out, recs) == 2
    assert [r for _, r in read_records(out)] == recs
    assert record_to_json(recs[0])["time"] == "2024-01-01T00:00:00.000Z"


@pytest.mark.parametrize(("change", "message"), [
    ({"values": {"co_pct": "0.4"}}, "values.co_pct: not a number"),
    ({"values": {"co_pct": True}}, "values.co_pct: not a number"),
    ({"values": {"carbon": 1}}, "values.carbon: unknown signal"),
    ({"flags": {"co_pct": "X"}}, "flags.co_pct: 'X' is not one of NMDCFSTB"),
    ({"time": "2024-01-01T00:00:00"}, "time: '2024-01-01T00:00:00': no UTC offset"),
    ({"time": "yesterday"}, "time: 'yesterday': not RFC 3339"),
    ({"time": 1704067200}, "time: not an RFC 3339 string"),
    ({"site": ""}, "site: not a non-empty string"),
    ({"test": {"method": "idle"}}, "test.id: missing"),
    ({"test": {"id": "T", "method": "dyno"}}, "test.method: 'dyno' is not one of"),
    ({"origin": {"gateway": "g", "seq": -1}}, "origin.seq: not a non-negative integer"),
    ({"colour": "red"}, "colour: unknown key"),
])
def test_bad_sample_names_line_and_field(tmp_path, change, message):
    bad = {**SAMPLE, **change}
    with pytest.raises(RecordError) as ei:
        list(read_records(write(tmp_path, [SAMPLE, bad])))
    assert str(ei.value).startswith(f"{tmp_path / 'RECORDS.jsonl'}:2: ")
    assert message in str(ei.value)
    assert ei.value.line == 2


def test_the_issue_example_message(tmp_path):
    lines = [SAMPLE] * 16 + [{**SAMPLE, "values": {"co_pct": "high"}}]
    with pytest.raises(RecordError, match=r"RECORDS\.jsonl:17: values\.co_pct: not a number$"):
        list(read_records(write(tmp_path, lines)))


def test_bad_json_and_bad_events(tmp_path):
    with pytest.raises(RecordError, match=r":1: not valid JSON"):
        list(read_records(write(tmp_path, ['{"time": '])))
    with pytest.raises(RecordError, match=r":1: detail: not an object"):
        list(read_records(write(tmp_path, [{**EVENT, "detail": [1]}])))
    with pytest.raises(RecordError, match=r":1: values: unknown key in an event"):
        list(read_records(write(tmp_path, [{**EVENT, "values": {}}])))
    with pytest.raises(RecordError, match=r":1: values: missing"):
        list(read_records(write(tmp_path, [{"time": SAMPLE["time"], "site": "a",
                                            "instrument": "b"}])))
    with pytest.raises(RecordError, match=r":1: values.co_pct: not a finite number"):
        list(read_records(write(tmp_path, ['{"time": "2024-01-01T00:00:00Z", "site": "a", '
                                           '"instrument": "b", "values": {"co_pct": NaN}}'])))
