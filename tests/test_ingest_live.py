"""Live ingest against the real local broker and InfluxDB: verification, quarantine,
integrity events, alert delivery, sharding across two workers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_support import (
    Gateway,
    create_db,
    drop_session,
    gateway_publisher,
    influx_count,
    influx_query,
    publish_all,
    wait_for,
)

from ingest.config import config_from_stack
from ingest.metrics import fetch
from ingest.service import IngestService
from stack.manager import StackInfo, load_info
from stationseal import cbor
from stationseal.chain import HASH_WINDOW
from stationseal.frame import Frame, decode, encode_body
from stationseal.keys import KeyRegistry
from stationseal.records import Reading

pytestmark = [pytest.mark.stack]


def _tamper(f: Frame) -> bytes:
    """The same frame with one reading's value changed and the original signature."""
    r = f.readings[0]
    readings = [Reading(r.instrument, r.signal, float(r.value) + 1.0, r.unit, r.time,
                        r.quality, r.raw), *f.readings[1:]]
    body = encode_body(gateway_id=f.gateway_id, site=f.site, key_id=f.key_id, alg=f.alg,
                       boot_id=f.boot_id, seq=f.seq, prev_hash=f.prev_hash,
                       created_ms=f.created_ms, clock_sync=f.clock_sync,
                       readings=readings, events=f.events)
    return (cbor.head(4, 2) + cbor.head(2, len(body)) + body
            + cbor.head(2, len(f.signature)) + f.signature)


def _service(stack: StackInfo, tmp: Path, db: str, reg: Path, client_id: str,
             shard: int = 0, count: int = 1, **over: Any) -> IngestService:
    create_db(stack.influx_url, db)
    cfg = config_from_stack(
        stack, reg, tmp / "state",
        mqtt={"client_id": client_id},
        influx={"database": db, "flush_interval_ms": 50},
        shard={"count": count},
        registry_check_s=0.2,
        **over,
    )
    return IngestService(cfg, shard).start()


def test_bad_frames_are_quarantined_and_service_keeps_running(stack: StackInfo,
                                                              tmp_path: Path) -> None:
    reg = KeyRegistry()
    g1 = Gateway("gw-test-1", tmp_path / "k1", reg, site="lane-A")
    g2 = Gateway("gw-test-2", tmp_path / "k2", reg, site="lane-B")
    rogue = Gateway("gw-test-1", tmp_path / "rogue", KeyRegistry(), site="lane-A")
    reg_path = tmp_path / "registry.json"
    reg.save(reg_path)
    db = "t_quarantine"
    alerts_file = tmp_path / "alerts.jsonl"
    cid = "ingest-test-quarantine"
    svc = _service(stack, tmp_path, db, reg_path, cid,
                   alerts={"jsonl": str(alerts_file)}, chain={"gap_grace_s": 0,
                                                            "gap_check_interval_s": 0.2})
    pub1 = gateway_publisher(stack, "gw-test-1")
    pub2 = gateway_publisher(stack, "gw-test-2")
    try:
        assert wait_for(svc.connected.is_set, 10)
        good = [g1.next_frame(10) for _ in range(5)]
        publish_all(pub1, [(g1.topic, f.payload) for f in good])
        assert wait_for(lambda: influx_count(stack.influx_url, db) == 50, 20)

        forged = rogue.next_frame(10)  # right gateway id, key not in the registry
        tampered = _tamper(g1.next_frame(10))
        g1.seq -= 1
        g1.prev = good[-1].frame_hash
        g1.frames.pop()
        wrong_topic = g2.next_frame(10)  # signed by gw-test-2, published on gw-test-1
        publish_all(pub1, [(g1.topic, forged.payload), (g1.topic, tampered),
                           (g1.topic, wrong_topic.payload), (g1.topic, b"\x00garbage")])
        # Exact redelivery of an accepted frame: counted, stored once.
        publish_all(pub1, [(g1.topic, good[2].payload)])
        # Fork: same seq, different content, same boot.
        keep = (g1.seq, g1.prev, g1.t)
        g1.seq, g1.prev = 3, good[1].frame_hash
        fork = g1.next_frame(4)
        g1.seq, g1.prev, g1.t = keep
        publish_all(pub1, [(g1.topic, fork.payload)])
        # Gap: skip seq 6.
        g1.next_frame(10)
        after_gap = g1.next_frame(10)
        publish_all(pub1, [(g1.topic, after_gap.payload)])

        # The same frame again after its hash left the tracker's window (a broker
        # redelivery after a crash looks like this): the receipt log knows it, so it is a
        # duplicate, not stored twice and not quarantined.
        early = [g2.next_frame(1) for _ in range(HASH_WINDOW + 5)]
        publish_all(pub2, [(g2.topic, f.payload) for f in early])
        assert wait_for(lambda: influx_count(stack.influx_url, db,
                                             "WHERE gateway = 'gw-test-2'") == HASH_WINDOW + 5,
                        30)
        publish_all(pub2, [(g2.topic, early[0].payload)])
        # Replay: different content for a sequence received long ago (its hash no longer
        # in the tracker's window, and not the frame the receipt log holds).
        keep2 = (g2.seq, g2.prev, g2.t)
        g2.seq, g2.prev = early[0].seq - 1, early[0].prev_hash
        replayed = g2.next_frame(2)
        g2.seq, g2.prev, g2.t = keep2
        publish_all(pub2, [(g2.topic, replayed.payload)])
        assert wait_for(lambda: "replay" in svc.store.quarantine_counts(), 20)

        # Revoke gw-test-2's key (compromised): the registry reloads without a restart.
        reg.revoke(g2.key_id, time.time(), "compromised")
        reg.save(reg_path)
        time.sleep(0.5)
        revoked = g2.next_frame(10)
        publish_all(pub2, [(g2.topic, revoked.payload)])

        def reasons() -> dict[str, int]:
            return svc.store.quarantine_counts()

        want = {"unknown_key": 1, "bad_signature": 1, "topic_mismatch": 1, "malformed": 1,
                "revoked_key": 1, "replay": 1}
        assert wait_for(lambda: reasons() == want, 20), reasons()
        want.pop("replay")  # flagged, kept as evidence: integrity event, not a failure

        kinds = {"duplicate", "fork", "gap", "replay"}

        def integrity() -> set[str]:
            rows = influx_query(stack.influx_url, db,
                                'SELECT count("count") FROM "integrity" GROUP BY "kind"')
            return {s["tags"]["kind"] for s in rows}

        assert wait_for(lambda: kinds | set(want) <= integrity(), 20), integrity()
        # 5 good + 1 after the gap: 60 readings in the main history; the fork's 4 are
        # stored apart (branch tag), the duplicate did not add any.
        assert influx_count(stack.influx_url, db,
                            "WHERE branch = '' AND gateway = 'gw-test-1'") == 60
        assert influx_count(stack.influx_url, db,
                            "WHERE gateway = 'gw-test-2'") == HASH_WINDOW + 5
        assert influx_count(stack.influx_url, db, "WHERE branch <> ''") == 4
        assert svc.health()["ok"], svc.health()

        # Alerts: JSONL file and MQTT topic, merged by key (one alert per kind).
        assert wait_for(lambda: alerts_file.exists() and len(
            alerts_file.read_text().splitlines()) >= len(want) + 2, 10)
        docs = [json.loads(x) for x in alerts_file.read_text().splitlines()]
        got = {d["evidence"]["kind"] for d in docs}
        assert {"bad_signature", "fork", "gap", "revoked_key"} <= got
        assert "duplicate" not in got  # low severity: counted, not alerted
        # The broker accepted every MQTT alert (PUBACK reason code, MQTT 5).
        assert wait_for(lambda: svc.metrics.get("alerts_published_total", result="ok")
                        >= len(docs), 10)
        assert svc.metrics.get("alerts_published_total", result="refused") == 0

        # Metrics endpoint.
        st, text = fetch(f"http://127.0.0.1:{svc.metrics_port}/metrics")
        assert st == 200
        assert 'stationseal_ingest_verification_failures_total{reason="bad_signature"} 1' \
            in text
        # gw-test-1's re-sent frame and gw-test-2's frame re-sent beyond the hash window.
        assert 'stationseal_ingest_frames_total{result="duplicate"} 2' in text
        st, text = fetch(f"http://127.0.0.1:{svc.metrics_port}/healthz")
        assert st == 200 and json.loads(text)["ok"] is True
    finally:
        for c in (pub1, pub2):
            c.disconnect()
            c.loop_stop()
        svc.stop()
        drop_session(stack, cid)


def test_two_workers_share_gateways_in_order(stack: StackInfo, tmp_path: Path,
                                             new_gateway: Any) -> None:
    reg = KeyRegistry()
    ids = ("gw-shard-0", "gw-shard-1", "gw-shard-4", "gw-test-1")  # shards 0, 0, 1, 1
    for gid in ids[:3]:
        new_gateway(gid)
    info = load_info(stack.dir)
    gws = [Gateway(g, tmp_path / g, reg) for g in ids]
    reg_path = tmp_path / "registry.json"
    reg.save(reg_path)
    db = "t_shards"
    cid = "ingest-test-shards"
    workers = [_service(stack, tmp_path, db, reg_path, cid, shard=k, count=2)
               for k in range(2)]
    order: dict[str, list[tuple[int, int]]] = {}
    lock = threading.Lock()
    for k, w in enumerate(workers):
        orig = w.pipeline.handle

        def spy(topic: Any, payload: bytes, received: float, ack: Any = None,
                _k: int = k, _orig: Any = orig) -> str:
            f = decode(payload)
            with lock:
                order.setdefault(f.gateway_id, []).append((_k, f.seq))
            return str(_orig(topic, payload, received, ack))

        w.pipeline.handle = spy  # type: ignore[method-assign]
    pubs = {g.id: gateway_publisher(info, g.id, f"pub2-{g.id}") for g in gws}
    try:
        assert all(wait_for(w.connected.is_set, 10) for w in workers)
        n = 40
        for _ in range(n):
            for g in gws:
                f = g.next_frame(5)
                pubs[g.id].publish(g.topic, f.payload, qos=1)
        total = n * 5 * len(gws)
        assert wait_for(lambda: influx_count(stack.influx_url, db) == total, 30)
        owners: dict[str, int] = {}
        for k, w in enumerate(workers):
            for gw, t in w.pipeline.trackers.items():
                assert gw not in owners, f"{gw} processed by two workers"
                owners[gw] = k
                # In order: every frame linked to its predecessor, nothing reordered.
                assert t.received.iv == [[1, n]]
                assert t.frames == n
        assert set(owners) == {g.id for g in gws}
        assert set(owners.values()) == {0, 1}, "both workers must own gateways"
        for gw, seqs in order.items():
            assert {k for k, _ in seqs} == {owners[gw]}
            assert [s for _, s in seqs] == list(range(1, n + 1)), f"{gw} out of order"
        chain_events = sum(w.metrics.get("chain_events_total") for w in workers)
        assert chain_events == 0
        accepted = [w.metrics.get("frames_total", result="accepted") for w in workers]
        assert sum(accepted) == n * len(gws) and min(accepted) > 0
    finally:
        for c in pubs.values():
            c.disconnect()
            c.loop_stop()
        for w in workers:
            w.stop()
        for k in range(2):
            drop_session(stack, f"{cid}-{k}")


def test_line_protocol_escaping_round_trips_through_influxdb(stack: StackInfo) -> None:
    from ingest_support import influx_query as q

    from ingest.lineproto import line

    db = "t_escape"
    create_db(stack.influx_url, db)
    from ingest.config import InfluxConfig
    from ingest.influx import V1Writer

    w = V1Writer(InfluxConfig(url=stack.influx_url, database=db))
    nasty = 'a b,c=d"e\nf'
    w.write([line("m x,y", {"t k": nasty, "site": "s=1"},
                  {"f,1": 'he said "hi"\\ back', "v": 1.5, "n": 3, "ok": True},
                  1_700_000_000_000_000_123)])
    rows = q(stack.influx_url, db, 'SELECT * FROM "m x,y"')
    cols = rows[0]["columns"]
    vals = dict(zip(cols, rows[0]["values"][0], strict=True))
    assert vals["time"] == 1_700_000_000_000_000_123
    assert vals["f,1"] == 'he said "hi"\\ back'
    assert vals["v"] == 1.5 and vals["n"] == 3 and vals["ok"] is True
    assert vals["t k"] == "a b,c=d\"e_f"  # newline in a tag becomes "_"
    assert vals["site"] == "s=1"
    w.close()
