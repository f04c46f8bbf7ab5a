"""Ingest parts that need no servers: line protocol, timestamps, retry logic, webhooks,
v2 write API requests, metrics merging, chain branch tagging."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_support import Gateway

from ingest.alerts import WebhookDelivery
from ingest.config import AlertsConfig, InfluxConfig, parse_config, shard_of
from ingest.convert import LineBuilder, frame_records
from ingest.influx import ReliableWriter, V2Writer, WriteError
from ingest.lineproto import line, parse_line
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from ingest.supervisor import merge_metrics
from stationseal.keys import KeyRegistry
from stationseal.records import Reading, Sample, SiteEvent

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(meas=text, tags=st.dictionaries(text, text, max_size=4),
       s=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
       f=st.floats(allow_nan=False, allow_infinity=False), i=st.integers(-2**63, 2**63 - 1))
def test_line_protocol_round_trip(meas: str, tags: dict[str, str], s: str, f: float,
                                  i: int) -> None:
    ln = line(meas, tags, {"s": s, "f": f, "i": i, "b": True}, 123)
    assert "\n" not in ln
    m, t, fields, ts = parse_line(ln)
    ctrl = str.maketrans({chr(c): "_" for c in [*range(32), 127]})
    assert m == meas.translate(ctrl)
    assert t == {k.translate(ctrl) or "_": v.translate(ctrl) or "_" for k, v in tags.items()}
    assert fields == {"s": s, "f": f, "i": i, "b": True} and ts == 123


def test_line_protocol_escapes() -> None:
    assert line("a b,c", {"k=1": "x y"}, {"v": 'q"\\'}, 5) == \
        'a\\ b\\,c,k\\=1=x\\ y v="q\\"\\\\" 5'
    with pytest.raises(ValueError):
        line("m", {}, {"v": float("nan")}, 1)
    with pytest.raises(ValueError):
        line("m", {}, {}, 1)


def _gw(tmp_path: Path) -> tuple[Gateway, KeyRegistry]:
    reg = KeyRegistry()
    return Gateway("gw-u", tmp_path / "k", reg, site="S1", t0=1_700_000_000.0), reg


def test_same_millisecond_readings_do_not_collide_and_redelivery_is_identical(
        tmp_path: Path) -> None:
    g, _ = _gw(tmp_path)
    f = g.next_frame(0)
    t = f.created
    f.readings = [Reading("a", "co", 1.0, "%", t), Reading("a", "co", 2.0, "%", t),
                  Reading("a", "note", "door open", "", t), Reading("a", "x", float("nan"), "", t),
                  Reading("a", "n", 2**60, "", t)]
    lines = LineBuilder().frame_lines(f)
    pts = [parse_line(x) for x in lines if x.startswith("reading")]
    co = [p for p in pts if p[1]["signal"] == "co"]
    assert len({p[3] for p in co}) == 2  # two points, not one overwritten
    assert all(p[3] // 1_000_000 == round(t * 1000) for p in pts)  # the ms is kept
    assert next(p for p in pts if p[1]["signal"] == "note")[2]["text"] == "door open"
    assert next(p for p in pts if p[1]["signal"] == "x")[2]["text"] == "nan"
    assert next(p for p in pts if p[1]["signal"] == "n")[2]["text"] == str(2**60)
    assert all(p[2]["seq"] == f.seq for p in pts)
    assert LineBuilder().frame_lines(f) == lines  # deterministic: a redelivery overwrites


def test_frame_records_group_by_instrument_and_time(tmp_path: Path) -> None:
    g, _ = _gw(tmp_path)
    f = g.next_frame(10)
    recs = frame_records(f)
    samples = [r for r in recs if isinstance(r, Sample)]
    assert sum(len(s.values) for s in samples) == 10
    assert all(s.origin == ("gw-u", f.seq) and s.site == "S1" for s in samples)
    assert {s.instrument for s in samples} == {"ana-1", "dyn-1"}
    assert not [r for r in recs if isinstance(r, SiteEvent)]


class _Flaky:
    def __init__(self, fail: int, bad: str | None = None):
        self.fail = fail
        self.bad = bad
        self.written: list[str] = []

    def write(self, lines: list[str]) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise WriteError("down", retriable=True)
        if self.bad is not None and self.bad in lines:
            raise WriteError("field type conflict", retriable=False, status=400)
        self.written += lines

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_reliable_writer_retries_then_isolates_refused_lines() -> None:
    states: list[bool] = []
    w = _Flaky(fail=3, bad="l5")
    rw = ReliableWriter(w, max_backoff_s=0.01, on_state=lambda up, e: states.append(up))
    lines = [f"l{i}" for i in range(10)]
    rejected = rw.write(lines)
    assert [x for x, _ in rejected] == ["l5"]
    assert sorted(w.written) == sorted(set(lines) - {"l5"})
    assert states == [False, True] and rw.retries == 3


class _Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    statuses: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body})
        code = type(self).statuses.pop(0) if type(self).statuses else 204
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Recorder]]]:
    class H(_Recorder):
        requests: ClassVar[list[dict[str, Any]]] = []
        statuses: ClassVar[list[int]] = []

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", H
    srv.shutdown()
    srv.server_close()


def test_v2_writer_uses_org_bucket_token(http_server: tuple[str, type[_Recorder]]) -> None:
    url, h = http_server
    w = V2Writer(InfluxConfig(version=2, url=url, org="enforcement", bucket="readings",
                              token="tok123"))
    w.write(["m,a=b v=1 1", "m,a=b v=2 2"])
    req = h.requests[0]
    assert req["path"].startswith("/api/v2/write?")
    assert "org=enforcement" in req["path"] and "bucket=readings" in req["path"]
    assert "precision=ns" in req["path"]
    assert req["headers"]["authorization"] == "Token tok123"
    assert req["body"].replace(b"\r", b"") == b"m,a=b v=1 1\nm,a=b v=2 2"
    h.statuses.append(400)
    with pytest.raises(WriteError) as e:
        w.write(["bad"])
    assert not e.value.retriable
    w.close()


def test_webhook_signed_retried_and_kept_until_delivered(
        tmp_path: Path, http_server: tuple[str, type[_Recorder]]) -> None:
    url, h = http_server
    store = Store(tmp_path / "s.db")
    cfg = AlertsConfig(webhooks=[{"url": url + "/hook", "secret": "s3cret"}],  # type: ignore[list-item]
                       webhook_max_backoff_s=0.01)
    body = json.dumps({"rule": "integrity", "id": "k"}).encode()
    store.commit_batch({}, [(url + "/hook", body)], [], [])
    h.statuses += [500]
    d = WebhookDelivery(store, cfg, threading.Event())
    assert d.deliver_due() == 0 and store.outbox_size() == 1  # kept after a failure
    import time as _t
    _t.sleep(0.05)
    assert d.deliver_due() == 1 and store.outbox_size() == 0
    last = h.requests[-1]
    want = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert last["headers"]["x-stationseal-signature"] == want and last["body"] == body


def test_merge_metrics_keeps_families_contiguous() -> None:
    a = Metrics({"shard": "0"})
    b = Metrics({"shard": "1"})
    for m in (a, b):
        m.inc("frames_total", result="accepted")
        m.observe("write_latency_seconds", 0.01)
    merged = merge_metrics([a.render(), b.render()])
    lines = merged.splitlines()
    assert sum(1 for x in lines if x.startswith("# TYPE stationseal_ingest_frames_total")) == 1
    idx = [i for i, x in enumerate(lines) if x.startswith("stationseal_ingest_frames_total")]
    assert len(idx) == 2 and idx[1] == idx[0] + 1
    assert 'shard="1"' in merged


def test_sequence_reset_is_stored_apart(tmp_path: Path) -> None:
    g, reg = _gw(tmp_path)
    reg.save(tmp_path / "r.json")
    cfg = parse_config({"registry": str(tmp_path / "r.json"),
                        "registry_authority": str(tmp_path / "r.json.authority.pub.pem"),
                        "state_dir": str(tmp_path)})
    p = Pipeline(cfg, Store(tmp_path / "s.db"), Metrics())
    for _ in range(3):
        f = g.next_frame(2)
        assert p.handle(g.topic, f.payload, f.created) == "accepted"
    # The gateway lost its counter: new boot id, sequence numbers from 1 again.
    g.boot, g.seq, g.prev = b"\x01" * 16, 0, bytes(32)
    f = g.next_frame(2)
    assert p.handle(g.topic, f.payload, f.created) == "fork"
    assert any("branch=reset-01010101" in ln for ln in p.batch.lines)
    assert any(ln.startswith("integrity") and "kind=sequence_reset" in ln
               for ln in p.batch.lines)
    # State survives a restart of the pipeline (persisted at batch commit).
    b = p.seal()
    p.store.commit_batch(b.chain, [], [], [])
    p2 = Pipeline(cfg, Store(tmp_path / "s.db"), Metrics())
    f1 = g.frames[0]
    assert p2.handle(g.topic, f1.payload, f1.created) == "duplicate"


def test_shard_of_is_stable() -> None:
    assert shard_of("gw-shard-0", 2) == 0 and shard_of("gw-shard-4", 2) == 1
    assert shard_of("anything", 1) == 0


def test_shipped_example_config_is_valid() -> None:
    from ingest.config import load_config

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "deploy" / "ingest" / "central-example.yaml")
    assert cfg.shard.count == 2 and cfg.alerts.webhooks
