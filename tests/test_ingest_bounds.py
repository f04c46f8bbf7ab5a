"""Bounded work per source in the ingest: the quarantine's byte and rate budgets, the
fair byte-bounded inbox, oversize and overloading payloads summarised (digest + first
bytes) instead of kept, and a dead worker thread stopping the worker visibly."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_support import Gateway, create_db, drop_session, influx_count, wait_for

from ingest.config import config_from_stack
from ingest.inbox import FairInbox
from ingest.metrics import fetch
from ingest.service import IngestService
from ingest.store import Digested, QuarantineLimits, Store
from stack.manager import StackInfo
from stationseal.keys import KeyRegistry

# --------------------------------------------------------------------------- quarantine


def _store(tmp: Path, **limits: Any) -> Store:
    st = Store(tmp / "ingest.db")
    st.limits = QuarantineLimits(**{"max_bytes_per_source_day": 1_000_000,
                                    "max_per_source_minute": 10,
                                    "digest_per_source_minute": 20, "head_bytes": 16,
                                    **limits})
    return st


def _q(st: Store, payload: bytes, t: float, topic: str = "stationseal/v1/gw-a/frames",
       **kw: Any) -> int:
    return st.quarantine(received=t, source="mqtt", topic=topic, reason="malformed",
                         detail="x", payload=payload, **kw)


def test_quarantine_keeps_full_then_digest_then_counts(tmp_path: Path) -> None:
    st = _store(tmp_path)
    t = 1_700_000_000.0
    payloads = [os.urandom(100) for _ in range(40)]
    ids = [_q(st, p, t) for p in payloads]
    rows = list(st.quarantine_rows())
    full = [r for r in rows if not r.truncated]
    dig = [r for r in rows if r.truncated]
    # 10 full rows (the rate), then 20 digests, then 10 only counted.
    assert len(full) == 10 and len(dig) == 20
    assert ids[30:] == [0] * 10
    assert [r.payload for r in full] == payloads[:10]
    for r, p in zip(dig, payloads[10:30], strict=True):
        assert r.payload == p[:16] and r.size == 100
        assert r.digest == hashlib.sha256(p).digest()
        assert r.summary()["sha256"] == hashlib.sha256(p).hexdigest()
    over = st.quarantine_overflow()
    assert [(o[2], o[3], o[4]) for o in over] == [("malformed", 10, 1000)]
    assert over[0][5] == hashlib.sha256(payloads[-1]).digest()
    # Nothing is lost from the count: every payload is accounted for.
    assert st.quarantine_counts() == {"malformed": 40}


def test_quarantine_rate_refills_and_sources_are_separate(tmp_path: Path) -> None:
    st = _store(tmp_path)
    t = 1_700_000_000.0
    for _ in range(10):
        _q(st, b"a" * 50, t)
    assert _q(st, b"b" * 50, t) > 0  # digest row: the full-row rate is used up
    assert list(st.quarantine_rows())[-1].truncated
    # Another gateway's topic has its own budget.
    _q(st, b"c" * 50, t, topic="stationseal/v1/gw-b/frames")
    assert not list(st.quarantine_rows())[-1].truncated
    # The payload's claimed gateway does not choose the budget: the topic does.
    _q(st, b"d" * 50, t, gateway_id="gw-b")
    assert list(st.quarantine_rows())[-1].truncated
    # Six seconds later one full row is available again (10 per minute), not two.
    _q(st, b"e" * 50, t + 6.0)
    _q(st, b"f" * 50, t + 6.0)
    last = list(st.quarantine_rows())[-2:]
    assert [r.truncated for r in last] == [False, True]


def test_quarantine_byte_budget_per_day_both_sides(tmp_path: Path) -> None:
    st = _store(tmp_path, max_bytes_per_source_day=1000, max_per_source_minute=1000)
    t = 1_700_000_000.0
    _q(st, b"x" * 600, t)
    _q(st, b"y" * 400, t + 1)  # exactly at the budget: kept whole
    _q(st, b"z" * 1, t + 2)  # one byte over: digest
    rows = list(st.quarantine_rows())
    assert [r.truncated for r in rows] == [False, False, True]
    # A day later the budget is free again; a restart (new Store) remembers the day.
    st2 = _store(tmp_path, max_bytes_per_source_day=1000, max_per_source_minute=1000)
    _q(st2, b"w" * 10, t + 3)
    assert list(st2.quarantine_rows())[-1].truncated
    _q(st2, b"v" * 10, t + 86400 + 3600)
    assert not list(st2.quarantine_rows())[-1].truncated


def test_digested_payload_is_never_kept_whole(tmp_path: Path) -> None:
    st = _store(tmp_path)
    big = os.urandom(5000)
    d = Digested(big, 32)
    assert bytes(d) == big[:32] and d.size == 5000
    qid = _q(st, d, 1_700_000_000.0)
    r = next(st.quarantine_rows(ids=[qid]))
    assert r.truncated and r.size == 5000 and r.payload == big[:16]
    assert r.digest == hashlib.sha256(big).digest()


def test_old_state_database_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "ingest.db")
    db.execute("CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, received REAL "
               "NOT NULL, source TEXT NOT NULL, topic TEXT, reason TEXT NOT NULL, detail TEXT "
               "NOT NULL, gateway_id TEXT, site TEXT, seq INTEGER, key_id TEXT, payload BLOB "
               "NOT NULL)")
    db.execute("INSERT INTO quarantine(received, source, reason, detail, payload) VALUES "
               "(1.0, 'mqtt', 'malformed', 'old', x'00ff')")
    db.commit()
    db.close()
    st = _store(tmp_path)
    old = next(st.quarantine_rows())
    assert old.payload == b"\x00\xff" and not old.truncated
    assert old.summary()["bytes"] == 2


# --------------------------------------------------------------------------- inbox


def test_fair_inbox_serves_sources_in_turn() -> None:
    box: FairInbox[str] = FairInbox(10**9, 10**9)
    for i in range(60):
        box.put("gw-flood", f"A{i}", 1000)
    box.put("gw-quiet", "B0", 10)
    got = [box.get(0) for _ in range(3)]
    assert got == ["A0", "B0", "A1"]
    box.put_control("C")
    assert box.get(0) == "C"  # control work first
    with pytest.raises(queue.Empty):
        FairInbox[str](10, 10).get(0.01)


def test_fair_inbox_bounds_bytes_and_refuses_qos0_beyond_a_share() -> None:
    box: FairInbox[int] = FairInbox(max_bytes=1000, per_key_bytes=300)
    assert box.put("a", 1, 300, droppable=True)
    assert not box.put("a", 2, 1, droppable=True)  # one byte over its share
    assert box.put("b", 3, 300, droppable=True)
    assert box.put("a", 4, 300)  # QoS 1 is never refused, only made to wait
    done = threading.Event()

    def blocked() -> None:
        box.put("c", 5, 200)  # 900 + 200 > 1000: waits for room
        done.set()

    th = threading.Thread(target=blocked, daemon=True)
    th.start()
    assert not done.wait(0.3)
    assert box.bytes == 900
    box.get(0)
    assert done.wait(5)
    assert box.peak_bytes <= 1000 and box.waits == 1
    th.join(5)


# --------------------------------------------------------------------------- service



def _svc(stack: StackInfo, tmp: Path, reg: Path, db: str, cid: str, **over: Any
         ) -> IngestService:
    create_db(stack.influx_url, db)
    cfg = config_from_stack(stack, reg, tmp / "state", mqtt={"client_id": cid, **over.pop(
        "mqtt", {})}, influx={"database": db, "flush_interval_ms": 50}, **over)
    return IngestService(cfg).start()


@pytest.mark.stack
def test_oversize_and_qos0_flood_are_summarised_while_others_flow(
        stack: StackInfo, tmp_path: Path) -> None:
    from ingest_support import gateway_publisher, publish_all

    reg = KeyRegistry()
    good = Gateway("gw-test-2", tmp_path / "k2", reg)
    reg.save(tmp_path / "registry.json")
    cid = "ingest-test-bounds"
    svc = _svc(stack, tmp_path, tmp_path / "registry.json", "t_bounds", cid,
               mqtt={"max_message_bytes": 64 * 1024, "inflight_bytes": 2 * 2**20,
                     "gateway_inflight_bytes": 256 * 1024})
    flood = gateway_publisher(stack, "gw-test-1")
    pub = gateway_publisher(stack, "gw-test-2")
    try:
        assert wait_for(svc.connected.is_set, 10)
        big = os.urandom(200 * 1024)
        # 200 kB > 64 kB: refused before queueing, kept as digest + first bytes.
        publish_all(flood, [("stationseal/v1/gw-test-1/frames", big)])
        at_limit = os.urandom(64 * 1024)  # exactly at the bound: processed (malformed)
        publish_all(flood, [("stationseal/v1/gw-test-1/frames", at_limit)])
        # A QoS 0 flood of payloads under the size bound, beyond the topic's share.
        for _ in range(40):
            flood.publish("stationseal/v1/gw-test-1/frames", os.urandom(60 * 1024), qos=0)
        frames = [good.next_frame(10) for _ in range(20)]
        publish_all(pub, [(good.topic, f.payload) for f in frames])
        assert wait_for(lambda: influx_count(stack.influx_url, "t_bounds") == 200, 30)

        def counts() -> dict[str, int]:
            return svc.store.quarantine_counts()

        assert wait_for(lambda: counts().get("oversize") == 1, 20), counts()
        row = next(svc.store.quarantine_rows(reason="oversize"))
        assert row.truncated and row.size == len(big)
        assert row.digest == hashlib.sha256(big).digest()
        assert len(row.payload) == svc.cfg.quarantine.head_bytes
        assert row.gateway_id == "gw-test-1"
        # Every QoS 0 message is accounted for: processed (malformed) or summarised.
        assert wait_for(lambda: counts().get("malformed", 0) + counts().get("overload", 0)
                        == 41, 30), counts()
        assert svc.inbox.peak_bytes <= 2 * 2**20 + 64 * 1024
        assert svc.health()["ok"] is True
    finally:
        for c in (flood, pub):
            c.disconnect()
            c.loop_stop()
        svc.stop()
        drop_session(stack, cid)


@pytest.mark.stack
def test_dead_worker_thread_turns_health_false_and_stops(stack: StackInfo,
                                                         tmp_path: Path) -> None:
    reg = KeyRegistry()
    reg.save(tmp_path / "registry.json")
    cid = "ingest-test-fatal"
    svc = _svc(stack, tmp_path, tmp_path / "registry.json", "t_fatal", cid)
    try:
        assert wait_for(lambda: svc.health()["ok"] is True, 10)
        port = svc.metrics_port

        def boom(p: Any) -> None:
            raise OSError(28, "No space left on device")

        svc.inbox.put_control(boom)
        assert wait_for(lambda: svc.stop_event.is_set(), 10)
        h = svc.health()
        assert h["ok"] is False and "No space left" in h["fatal"]
        st, _ = fetch(f"http://127.0.0.1:{port}/healthz")
        assert st == 503
        assert svc.metrics.get("fatal_errors_total") == 1
    finally:
        svc.stop()
        drop_session(stack, cid)


@pytest.mark.stack
def test_any_thread_ending_stops_the_worker(stack: StackInfo, tmp_path: Path) -> None:
    reg = KeyRegistry()
    reg.save(tmp_path / "registry.json")
    cid = "ingest-test-threads"
    svc = _svc(stack, tmp_path, tmp_path / "registry.json", "t_threads", cid)
    try:
        assert wait_for(lambda: svc.health()["ok"] is True, 10)
        svc.check_threads()
        assert svc.fatal is None  # all alive: nothing to say
        done = threading.Thread(target=lambda: None)
        done.start()
        done.join()
        svc.webhooks._thread = done  # the webhook thread "ended"
        h = svc.health()
        assert h["ok"] is False and "webhooks" in h["fatal"]
        assert svc.stop_event.is_set()
    finally:
        svc.stop()
        drop_session(stack, cid)


@pytest.mark.stack
def test_low_disk_raises_one_alert_and_one_recovery(stack: StackInfo,
                                                    tmp_path: Path) -> None:
    reg = KeyRegistry()
    reg.save(tmp_path / "registry.json")
    cid = "ingest-test-disk"
    alerts = tmp_path / "alerts.jsonl"
    svc = _svc(stack, tmp_path, tmp_path / "registry.json", "t_disk", cid,
               alerts={"jsonl": str(alerts)}, disk={"check_interval_s": 3600})
    try:
        import shutil

        free = shutil.disk_usage(tmp_path).free
        # Bound just above what is free: low. Just below: fine. Both sides of it.
        object.__setattr__(svc.cfg.disk, "min_free_pct", 0.0)
        object.__setattr__(svc.cfg.disk, "min_free_bytes", free + 2**30)
        assert str(svc.cfg.state_dir) in svc.check_disk()
        svc.check_disk()  # still low: no second alert
        object.__setattr__(svc.cfg.disk, "min_free_bytes", max(0, free - 2**30))
        assert svc.check_disk() == {}
        assert wait_for(lambda: alerts.exists() and len(alerts.read_text().splitlines())
                        >= 1, 10)
        time.sleep(0.5)
        import json

        docs = [json.loads(x) for x in alerts.read_text().splitlines()]
        kinds = [d["evidence"]["kind"] for d in docs]
        assert kinds.count("low_disk") == 1, kinds
        low = next(d for d in docs if d["evidence"]["kind"] == "low_disk")
        assert low["severity"] == "high" and "MB free" in low["summary_en"]
        assert svc.health()["ok"] is True  # low disk is an alert, not a failure yet
    finally:
        svc.stop()
        drop_session(stack, cid)
