"""The per-gateway daily cap on new InfluxDB series (ingest/series.py): a gateway with a
valid key can no longer push a tag to 100,001 values and make InfluxDB refuse new series
for every gateway; what is over the cap is held back in the state database, with one
alert per gateway and day, and existing series keep flowing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ingest_support import (
    Gateway,
    create_db,
    drop_session,
    gateway_publisher,
    influx_query,
    publish_all,
    wait_for,
)

from ingest.config import config_from_stack
from ingest.pipeline import Batch
from ingest.series import SeriesGuard, series_key, tag_value
from ingest.service import IngestService
from ingest.store import Store
from stack.manager import StackInfo
from stationseal.frame import Frame, seal
from stationseal.keys import KeyRegistry
from stationseal.records import Reading


def test_series_key_and_tags_with_escapes() -> None:
    ln = r"reading,gateway=gw\ 1,instrument=a\,b,signal=x value=1 5"
    assert series_key(ln) == r"reading,gateway=gw\ 1,instrument=a\,b,signal=x"
    assert tag_value(series_key(ln), "gateway") == r"gw\ 1"
    assert tag_value(series_key(ln), "instrument") == r"a\,b"
    assert tag_value("alert,site=s", "gateway") is None


def _lines(gw: str, signals: list[str]) -> list[str]:
    return [f"reading,gateway={gw},signal={s} value=1 1" for s in signals]


def test_cap_both_sides_per_gateway_and_day_and_restart(tmp_path: Path) -> None:
    st = Store(tmp_path / "ingest.db")
    g = SeriesGuard(st, cap=5)
    t = 1_700_000_000.0
    b = Batch(lines=_lines("gw-a", [f"s{i}" for i in range(5)]))  # exactly the cap
    g.filter(b, now=t)
    assert len(b.lines) == 5 and not b.held and len(b.series) == 5
    st.commit_batch({}, [], b.held, [], None, b.series)
    b2 = Batch(lines=_lines("gw-a", ["s0", "s6"]) + _lines("gw-b", ["s6"]))
    g.filter(b2, now=t + 1)
    # s0 exists: written; s6 is the 6th new series of gw-a: held; gw-b has its own cap.
    assert b2.lines == _lines("gw-a", ["s0"]) + _lines("gw-b", ["s6"])
    assert [h[0] for h in b2.held] == _lines("gw-a", ["s6"])
    assert "series cap" in b2.held[0][1]
    st.commit_batch({}, [], b2.held, [], None, b2.series)
    # A restart remembers what exists and what was created today.
    g2 = SeriesGuard(Store(tmp_path / "ingest.db"), cap=5)
    b3 = Batch(lines=_lines("gw-a", ["s1", "s7"]))
    g2.filter(b3, now=t + 2)
    assert b3.lines == _lines("gw-a", ["s1"]) and len(b3.held) == 1
    # The next UTC day the gateway may create new series again.
    b4 = Batch(lines=_lines("gw-a", ["s7"]))
    g2.filter(b4, now=t + 86400)
    assert b4.lines == _lines("gw-a", ["s7"]) and not b4.held
    # Held lines are in the state database, not lost.
    assert [r[2] for r in st.rejects()] == _lines("gw-a", ["s6"])


def _frame(gw: Gateway, signals: list[str]) -> Frame:
    gw.seq += 1
    gw.t += 1.0
    readings = [Reading("ana-1", s, 1.0 + i, "ppm", gw.t - 0.5, "N", None)
                for i, s in enumerate(signals)]
    f = seal(gw.signer, gateway_id=gw.id, site=gw.site, boot_id=gw.boot, seq=gw.seq,
             prev_hash=gw.prev, created=gw.t, clock_sync="synced", readings=readings,
             events=[])
    gw.prev = f.frame_hash
    return f


@pytest.mark.stack
def test_label_flood_is_capped_and_others_unaffected(stack: StackInfo, tmp_path: Path) -> None:
    reg = KeyRegistry()
    a = Gateway("gw-test-1", tmp_path / "ka", reg)
    b = Gateway("gw-test-2", tmp_path / "kb", reg)
    reg.save(tmp_path / "registry.json")
    db = "t_series_cap"
    create_db(stack.influx_url, db)
    alerts = tmp_path / "alerts.jsonl"
    cid = "ingest-test-series"
    cfg = config_from_stack(stack, tmp_path / "registry.json", tmp_path / "state",
                            mqtt={"client_id": cid},
                            influx={"database": db, "flush_interval_ms": 50},
                            series={"max_new_per_gateway_day": 12},
                            alerts={"jsonl": str(alerts)})
    svc = IngestService(cfg).start()
    pa = gateway_publisher(stack, a.id)
    pb = gateway_publisher(stack, b.id)
    try:
        assert wait_for(svc.connected.is_set, 10)
        # 1 frame series + 5 + 5 + 1 reading series = 12 admitted; the rest held back.
        flood = [_frame(a, [f"lbl{k}_{i}" for i in range(5)]) for k in range(6)]
        publish_all(pa, [(a.topic, f.payload) for f in flood])
        old = _frame(a, ["lbl0_0", "lbl1_4"])  # existing series: still written
        publish_all(pa, [(a.topic, old.payload)])
        fb = _frame(b, [f"b{i}" for i in range(8)])
        publish_all(pb, [(b.topic, fb.payload)])

        def n_series(gw: str) -> int:
            rows = influx_query(stack.influx_url, db,
                                f"SHOW SERIES FROM \"reading\" WHERE gateway = '{gw}'")
            return sum(len(r["values"]) for r in rows)

        assert wait_for(lambda: n_series(b.id) == 8, 20)
        assert wait_for(lambda: len(svc.store.rejects()) == 30 - 11, 20), svc.store.rejects()
        assert n_series(a.id) == 11
        vals = influx_query(stack.influx_url, db,
                            f"SELECT count(value) FROM reading WHERE gateway = '{a.id}' "
                            f"AND signal = 'lbl0_0'")
        assert vals[0]["values"][0][1] == 2  # the first frame and the later one
        assert all("series cap" in r[3] for r in svc.store.rejects())
        time.sleep(0.5)
        docs = [json.loads(x) for x in alerts.read_text().splitlines()]
        cap = [d for d in docs if d["evidence"].get("kind") == "series_cap"]
        assert len({d["id"] for d in cap}) == 1, cap
        assert cap[0]["evidence"]["gateway"] == a.id and "12" in cap[0]["summary_en"]
        assert not [d for d in docs if d["evidence"].get("gateway") == b.id]
    finally:
        for c in (pa, pb):
            c.disconnect()
            c.loop_stop()
        svc.stop()
        drop_session(stack, cid)
