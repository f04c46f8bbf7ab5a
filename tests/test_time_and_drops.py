"""Bounded time and self-declared loss: what the central side accepts from a gateway's
clock and from its signed ``data_dropped`` events. Each test plays the site operator's
move and shows the named finding (in the live ingest with detection off, and offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingest.config import parse_config
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from stationseal import vectors
from stationseal.chain import MAX_DROP_SPAN, MAX_UNSYNCED_MS, ChainTracker
from stationseal.export import frames_topic, line_for
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.records import Event, Reading
from stationseal.registry import Authority, KeyRegistry
from stationseal.signing import Ed25519Signer
from stationseal.verify_cli import verify_file

ED = Ed25519Signer(vectors.ed_key())
T0 = vectors.T0
DAY = 86400.0
TOPIC = frames_topic("gw-demo-1")
ED_PEM = vectors.build()["keys"]["ed25519"]["public_key"].encode()


class Chain:
    """gw-demo-1's frames, sealed in order."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev = ZERO_HASH
        self.frames: list[Frame] = []

    def next(self, created: float, clock: str = "synced", events: list[Event] | None = None,
             skip: int = 0) -> Frame:
        for _ in range(skip):  # sealed, never delivered
            self.next(created)
            self.frames.pop()
        self.seq += 1
        f = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=self.seq,
                 prev_hash=self.prev, created=created, clock_sync=clock,
                 readings=[Reading("a1", "co_pct", 0.5, "%vol", created, "N", None)],
                 events=events or [])
        self.prev = f.frame_hash
        self.frames.append(f)
        return f


def registry(backfill_s: int = 7 * 86400) -> KeyRegistry:
    reg = KeyRegistry()
    reg.add("gw-demo-1", ED_PEM, T0 - 100 * DAY, sites=["S"], backfill_s=backfill_s)
    return reg


def pipeline(tmp: Path, reg: KeyRegistry) -> Pipeline:
    a = Authority.generate(tmp / "authority.key")
    reg.save(tmp / "registry.json", a)
    cfg = parse_config({"registry": str(tmp / "registry.json"),
                        "registry_authority": str(tmp / "authority.pub.pem"),
                        "state_dir": str(tmp / "state"),
                        "detection": {"enabled": False}})
    (tmp / "state").mkdir(exist_ok=True)
    return Pipeline(cfg, Store(tmp / "state" / "s.db"), Metrics())


def findings(p: Pipeline) -> list[tuple[str, str]]:
    """(kind, severity) of every integrity alert the batch would deliver."""
    return [(u.doc["evidence"]["kind"], u.doc["severity"]) for u in p.batch.alert_updates]


# --------------------------------------------------------------------------- time


def test_frames_far_in_the_future_alert_without_detection(tmp_path: Path) -> None:
    """40 days ahead used to be accepted with no finding when detection was off."""
    p = pipeline(tmp_path, registry())
    c = Chain()
    now = T0
    assert p.handle(TOPIC, c.next(now + 40 * DAY).payload, now) == "accepted"
    assert findings(p) == [("created_future", "high")]
    # Just inside the tolerance: nothing; unsynced clock: medium (a fault, not a lie).
    p2 = pipeline(tmp_path / "b", registry())
    c2 = Chain()
    p2.handle(TOPIC, c2.next(now + 119.9).payload, now)
    assert findings(p2) == []
    p2.handle(TOPIC, c2.next(now + 121, clock="unsynced").payload, now)
    assert findings(p2) == [("created_future", "medium")]


def test_frames_older_than_the_backfill_horizon_alert(tmp_path: Path) -> None:
    p = pipeline(tmp_path, registry(backfill_s=86400))
    c = Chain()
    p.handle(TOPIC, c.next(T0 - 86399).payload, T0)
    assert findings(p) == []
    p.handle(TOPIC, c.next(T0 - 86401).payload, T0)
    assert findings(p) == [("created_too_old", "high")]
    assert any("kind=created_too_old" in ln for ln in p.batch.lines)


def test_a_long_unsynchronised_clock_alerts_once(tmp_path: Path) -> None:
    p = pipeline(tmp_path, registry())
    c = Chain()
    lim = MAX_UNSYNCED_MS / 1000
    p.handle(TOPIC, c.next(T0, clock="unsynced").payload, T0)
    p.handle(TOPIC, c.next(T0 + lim, clock="unknown").payload, T0 + lim)
    assert findings(p) == []  # at the limit, not beyond
    p.handle(TOPIC, c.next(T0 + lim + 1, clock="unsynced").payload, T0 + lim + 1)
    p.handle(TOPIC, c.next(T0 + lim + 2, clock="unsynced").payload, T0 + lim + 2)
    assert findings(p) == [("clock_unsynced", "medium")]
    # Synchronised again, then a new stretch: a new finding.
    p.handle(TOPIC, c.next(T0 + lim + 3).payload, T0 + lim + 3)
    for k in (4, 5 + lim, 6 + lim):
        p.handle(TOPIC, c.next(T0 + k + lim, clock="unsynced").payload, T0 + k + lim)
    assert findings(p).count(("clock_unsynced", "medium")) == 2


def test_offline_verification_judges_time_on_receipts(tmp_path: Path) -> None:
    reg = registry(backfill_s=86400)
    reg.revoke(ED.key_id, T0 + 10, "retired")
    c = Chain()
    f1 = c.next(T0)
    f2 = c.next(T0 + 5)  # back-dated: first received after the retirement
    f3 = c.next(T0 + 6)  # created a day and more before it arrived
    path = tmp_path / "f.jsonl"
    path.write_text("".join(line_for(TOPIC, f.payload) + "\n" for f in (f1, f2, f3)))
    assert verify_file(path, reg).ok  # the gateway's own clock says all is well
    receipts = {f1.frame_hash: int(T0 * 1000) + 50, f2.frame_hash: int((T0 + 20) * 1000),
                f3.frame_hash: int((T0 + 6 + DAY + 1) * 1000)}
    rep = verify_file(path, reg, receipts)
    assert [x["reason"] for x in rep.failures] == ["revoked_key", "revoked_key"]
    reg2 = registry(backfill_s=86400)
    rep = verify_file(path, reg2, receipts)
    issues = rep.gateways["gw-demo-1"].issues
    assert [(i["kind"], i["seq"]) for i in issues] == [("created_too_old", 3)]


# --------------------------------------------------------------------------- drops


def drop(first: int, last: int, last_hash: bytes | None, **over: Any) -> Event:
    d: dict[str, Any] = {"first_seq": first, "last_seq": last, "frames": last - first + 1,
                         "readings": 3}
    if last_hash is not None:
        d["last_hash"] = last_hash.hex()
    d.update(over)
    return Event("gateway", "data_dropped", T0, d)


def chain_kinds(frames: list[Frame]) -> tuple[list[tuple[str, int]], list[tuple[int, int]]]:
    t = ChainTracker("gw-demo-1")
    kinds = [(i.kind, i.seq) for f in frames for i in t.observe(f, now=0.0)[1]]
    gaps = [(g.detail["first_seq"], g.detail["last_seq"]) for g in t.overdue_gaps(1.0, 0.0)]
    return kinds, gaps


def _dropped_chain(**over: Any) -> tuple[list[Frame], Chain]:
    c = Chain()
    a = [c.next(T0 + k) for k in range(3)]  # seqs 1..3
    hidden = [c.next(T0 + 3 + k) for k in range(3)]  # 4..6, never delivered
    b = c.next(T0 + 7, events=[drop(4, 6, hidden[-1].frame_hash, **over)])
    return [*a, b], c


def test_a_signed_drop_with_last_hash_covers_its_gap() -> None:
    frames, _ = _dropped_chain()
    assert chain_kinds(frames) == ([], [])
    assert chain_kinds(list(reversed(frames))) == ([], [])  # order does not matter


@pytest.mark.parametrize("over,why", [
    ({"last_hash": None}, "last_hash"),
    ({"frames": 99}, "frames"),
    ({"first_seq": 4.0}, "first_seq"),
    ({"readings": -1}, "readings"),
    ({"last_seq": 7}, "within"),  # claims the carrying frame itself
])
def test_a_drop_without_what_it_must_carry_covers_nothing(over: dict[str, Any],
                                                          why: str) -> None:
    frames, _ = _dropped_chain()
    d = frames[-1].events[0].detail
    for k, v in over.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    c = Chain()
    a = [c.next(T0 + k) for k in range(3)]
    c.seq = 6
    c.prev = frames[-1].prev_hash
    b = c.next(T0 + 7, events=[Event("gateway", "data_dropped", T0, d)])
    kinds, gaps = chain_kinds([*a, b])
    assert kinds == [("bad_drop_event", 7)] and gaps == [(4, 6)]
    t = ChainTracker("gw-demo-1")
    for f in (*a, b):
        issues = t.observe(f, now=0.0)[1]
    assert why in issues[0].detail["error"]


def test_one_event_may_excuse_at_most_the_cap() -> None:
    c = Chain()
    a = c.next(T0)
    n = MAX_DROP_SPAN + 1
    c.seq += n
    c.prev = b"\x55" * 32
    b = c.next(T0 + 1, events=[drop(2, n + 1, b"\x55" * 32)])
    kinds, gaps = chain_kinds([a, b])
    assert kinds == [("bad_drop_event", b.seq)] and gaps == [(2, n + 1)]
    c2 = Chain()
    a2 = c2.next(T0)
    c2.seq += MAX_DROP_SPAN
    c2.prev = b"\x55" * 32
    b2 = c2.next(T0 + 1, events=[drop(2, MAX_DROP_SPAN + 1, b"\x55" * 32)])
    assert chain_kinds([a2, b2]) == ([], [])


def test_a_drop_contradicting_a_frame_present_is_a_fork() -> None:
    """The drop names a last_hash, but frame last_seq is in the file with another hash."""
    c = Chain()
    a = [c.next(T0 + k) for k in range(6)]  # 1..6 all delivered
    b = c.next(T0 + 7, events=[drop(4, 6, b"\x66" * 32)])
    for order in ([*a, b], [b, *a]):
        kinds, gaps = chain_kinds(order)
        assert ("fork", 6) in kinds and gaps == []
    # Delivered anyway and consistent (sent, then dropped before its ack): no finding.
    b_ok = Chain()
    a2 = [b_ok.next(T0 + k) for k in range(6)]
    b2 = b_ok.next(T0 + 7, events=[drop(4, 6, a2[-1].frame_hash)])
    assert chain_kinds([*a2, b2]) == ([], [])


def test_instrument_level_drops_are_not_chain_drops() -> None:
    c = Chain()
    ev = Event("serial-1", "data_dropped", T0, {"error": "queue full", "frames": 3})
    assert chain_kinds([c.next(T0, events=[ev]), c.next(T0 + 1)]) == ([], [])


def _pipeline(tmp: Path, detection: bool, **chain: Any) -> Pipeline:
    """gw-demo-1's pipeline, detection on (all rules) or off."""
    a = Authority.generate(tmp / "authority.key")
    registry().save(tmp / "registry.json", a)
    (tmp / "SITES.yaml").write_text(json.dumps({"sites": {"S": {
        "kind": "stack_cems", "location": {"lat": 31.0, "lon": 121.0}}}}))
    raw: dict[str, Any] = {"registry": str(tmp / "registry.json"),
                           "registry_authority": str(tmp / "authority.pub.pem"),
                           "state_dir": str(tmp / "state"),
                           "detection": {"enabled": detection, "sites": str(tmp / "SITES.yaml")}}
    if chain:
        raw["chain"] = chain
    cfg = parse_config(raw)
    from ingest.engine_hook import make_engine

    (tmp / "state").mkdir()
    return Pipeline(cfg, Store(tmp / "state" / "s.db"), Metrics(),
                    engine=make_engine(cfg.detection))


def _drop_alerts(p: Pipeline) -> list[dict[str, Any]]:
    return [u.doc for u in p.batch.alert_updates
            if u.doc["rule"] == "I-DROP" or u.doc["evidence"].get("kind") == "data_dropped"]


@pytest.mark.parametrize("detection", [False, True])
def test_every_signed_drop_is_one_ingest_alert_with_or_without_detection(
        tmp_path: Path, detection: bool) -> None:
    """A drop is an integrity finding of the ingest itself: alerted with detection off,
    and with detection on not a second time by I-DROP."""
    frames, _ = _dropped_chain()
    p = _pipeline(tmp_path, detection)
    assert (p.engine is not None) == detection
    for f in frames:
        p.handle(TOPIC, f.payload, f.created + 1)
    p.finish_detection()
    drops = _drop_alerts(p)
    assert [(d["rule"], d["severity"], d["evidence"]["seq"], d["evidence"]["first_seq"],
             d["evidence"]["last_seq"]) for d in drops] == [("integrity", "medium", 7, 4, 6)]
    assert "frames 4–6" in drops[0]["summary_en"] and "in frame 7" in drops[0]["summary_en"]
    kinds = [ln.split("kind=")[1].split(",")[0] for ln in p.batch.lines
             if ln.startswith("integrity,")]
    assert kinds == ["data_dropped"]
    # Delivered again (QoS 1): no second alert.
    p.handle(TOPIC, frames[-1].payload, frames[-1].created + 2)
    assert len(_drop_alerts(p)) == 1


@pytest.mark.parametrize("detection", [False, True])
def test_an_instrument_level_drop_is_alerted_and_a_bad_drop_only_once(
        tmp_path: Path, detection: bool) -> None:
    p = _pipeline(tmp_path, detection)
    c = Chain()
    ev = Event("serial-1", "data_dropped", T0, {"error": "queue full", "frames": 3})
    p.handle(TOPIC, c.next(T0, events=[ev]).payload, T0 + 1)
    bad = c.next(T0 + 5, skip=3, events=[drop(2, 4, None)])  # no last_hash: covers nothing
    p.handle(TOPIC, bad.payload, T0 + 6)
    p.finish_detection()
    drops = _drop_alerts(p)
    assert [(d["rule"], d["evidence"]["instrument"]) for d in drops] == [
        ("integrity", "serial-1")]
    assert "queue full" in drops[0]["summary_en"]
    kinds = sorted(u.doc["evidence"].get("kind") for u in p.batch.alert_updates
                   if u.doc["rule"] == "integrity")
    assert kinds == ["bad_drop_event", "data_dropped"]


def test_the_engine_does_not_run_i_drop_in_the_ingest(tmp_path: Path) -> None:
    from ingest.engine_hook import RAISED_BY_INGEST

    p = _pipeline(tmp_path, True)
    assert p.engine is not None
    rules = p.engine.engine.rules  # type: ignore[attr-defined]
    assert "I-DROP" in RAISED_BY_INGEST and "I-DROP" not in rules and "I-GAP" in rules


def test_the_outbox_splits_runs_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    import agent.outbox as ob_mod

    monkeypatch.setattr(ob_mod, "MAX_DROP_SPAN", 4)
    ob = ob_mod.Outbox(tmp_path / "o.sqlite", gateway_id="gw-demo-1", max_bytes=10**9,
                       max_age_s=10.0)
    c = Chain()
    for k in range(10):
        f = c.next(T0 + k)
        ob.append(seq=f.seq, created=f.created, readings=1, frame_hash=f.frame_hash,
                  payload=f.payload, boot_id=f.boot_id)
    runs = ob.plan_drops(0, T0 + 1000)
    assert [(r.first_seq, r.last_seq) for r in runs] == [(1, 4), (5, 8), (9, 10)]
    hashes = {f.seq: f.frame_hash for f in c.frames}
    assert all(r.last_hash == hashes[r.last_seq] for r in runs)
    ob.close()


def test_poisoned_drop_is_filed_by_name_in_the_live_ingest(tmp_path: Path) -> None:
    """first_seq=inf used to be filed as internal_error, with no gap reported."""
    p = pipeline(tmp_path, registry())
    c = Chain()
    p.handle(TOPIC, c.next(T0).payload, T0 + 1)
    bad = c.next(T0 + 5, skip=3, events=[drop(2, 4, c.prev, first_seq=float("inf"))])
    assert p.handle(TOPIC, bad.payload, T0 + 6) == "accepted"
    p.check_gaps(now=T0 + 10**6, grace_s=0.0, force=True)
    kinds = sorted(ln.split("kind=")[1].split(",")[0] for ln in p.batch.lines
                   if ln.startswith("integrity,"))
    assert kinds == ["bad_drop_event", "gap"]
    assert p.store.quarantine_counts() == {}


# --------------------------------------------------------------------------- bounds


def pipeline_with(tmp: Path, reg: KeyRegistry, **chain: Any) -> Pipeline:
    a = Authority.generate(tmp / "authority.key")
    reg.save(tmp / "registry.json", a)
    cfg = parse_config({"registry": str(tmp / "registry.json"),
                        "registry_authority": str(tmp / "authority.pub.pem"),
                        "state_dir": str(tmp / "state"), "chain": chain,
                        "detection": {"enabled": False}})
    (tmp / "state").mkdir(exist_ok=True)
    return Pipeline(cfg, Store(tmp / "state" / "s.db"), Metrics())


def test_the_ingest_bounds_default_to_the_specification() -> None:
    from stationseal.chain import SPEC_LIMITS

    cfg = parse_config({"registry": "r.json", "registry_authority": "0" * 64, "state_dir": "s"})
    assert cfg.chain.limits() == SPEC_LIMITS
    assert SPEC_LIMITS.to_json() == {"future_tolerance_ms": 120_000,
                                     "max_unsynced_ms": 3_600_000, "max_drop_span": 100_000}


@pytest.mark.parametrize("key,bad,good", [
    ("future_tolerance_s", [0, 3601, 1.5, "x"], [1, 3600]),
    ("max_unsynced_s", [59, 7 * 86400 + 1], [60, 7 * 86400]),
    ("max_drop_span", [0, 1_000_001], [1, 1_000_000]),
])
def test_the_ingest_bounds_are_validated(key: str, bad: list[Any], good: list[Any]) -> None:
    from ingest.config import ConfigError

    base = {"registry": "r.json", "registry_authority": "0" * 64, "state_dir": "s"}
    for v in bad:
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, "chain": {key: v}})
    for v in good:
        assert getattr(parse_config({**base, "chain": {key: v}}).chain, key) == v


def test_a_configured_future_tolerance_is_used_on_both_sides_of_it(tmp_path: Path) -> None:
    p = pipeline_with(tmp_path, registry(), future_tolerance_s=600)
    c = Chain()
    p.handle(TOPIC, c.next(T0 + 599.9).payload, T0)  # beyond the spec's 120 s, within 600
    assert findings(p) == []
    p.handle(TOPIC, c.next(T0 + 601).payload, T0)
    assert findings(p) == [("created_future", "high")]
    assert p.batch.alert_updates[0].doc["evidence"]["tolerance_s"] == 600


def test_a_configured_unsynced_limit_is_used_on_both_sides_of_it(tmp_path: Path) -> None:
    p = pipeline_with(tmp_path, registry(), max_unsynced_s=6 * 3600)
    c = Chain()
    lim = 6 * 3600
    p.handle(TOPIC, c.next(T0, clock="unsynced").payload, T0)
    p.handle(TOPIC, c.next(T0 + lim, clock="unsynced").payload, T0 + lim)
    assert findings(p) == []  # 6 h: beyond the spec's hour, at the configured limit
    p.handle(TOPIC, c.next(T0 + lim + 1, clock="unsynced").payload, T0 + lim + 1)
    assert findings(p) == [("clock_unsynced", "medium")]
    # A tracker restored from its state keeps judging with the configured value.
    t = p.trackers["gw-demo-1"]
    assert ChainTracker.from_json(t.to_json(), p.limits).max_unsynced_ms == lim * 1000


def test_a_configured_drop_span_is_used_on_both_sides_of_it(tmp_path: Path) -> None:
    frames, _ = _dropped_chain()  # one drop of 3 sequence numbers (4..6)
    for cap, kinds in ((3, ["data_dropped"]), (2, ["bad_drop_event", "gap"])):
        p = pipeline_with(tmp_path / str(cap), registry(), max_drop_span=cap)
        for f in frames:
            p.handle(TOPIC, f.payload, f.created + 1)
        p.check_gaps(now=T0 + 10**6, grace_s=0.0, force=True)
        got = sorted(ln.split("kind=")[1].split(",")[0] for ln in p.batch.lines
                     if ln.startswith("integrity,"))
        assert got == kinds, cap


def test_stationseal_verify_keeps_the_spec_bounds_unless_told(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    from stationseal.chain import Limits
    from stationseal.cli import main

    reg = registry()
    c = Chain()
    f1 = c.next(T0)
    f2 = c.next(T0 + 300)  # 5 minutes ahead of its arrival
    path = tmp_path / "f.jsonl"
    path.write_text("".join(line_for(TOPIC, f.payload) + "\n" for f in (f1, f2)))
    receipts = {f1.frame_hash: int(T0 * 1000), f2.frame_hash: int(T0 * 1000) + 1000}
    rep = verify_file(path, reg, receipts)
    assert [i["kind"] for i in rep.gateways["gw-demo-1"].issues] == ["created_future"]
    rep = verify_file(path, reg, receipts, Limits(future_tolerance_ms=600_000))
    assert rep.ok
    # The command line: spec values by default, the deployment's when given, and named.
    a = Authority.generate(tmp_path / "authority.key")
    reg.save(tmp_path / "registry.json", a)
    (tmp_path / "receipts.jsonl").write_text("".join(
        json.dumps({"frame_hash": h.hex(), "received_ms": t}) + "\n"
        for h, t in receipts.items()))
    args = [str(path), "--registry", str(tmp_path / "registry.json"), "--authority",
            str(tmp_path / "authority.pub.pem"), "--receipts", str(tmp_path / "receipts.jsonl")]
    assert main(["verify", *args]) == 1
    assert main(["verify", *args, "--future-tolerance", "600"]) == 0
    out = capsys.readouterr().out
    assert "future_tolerance_ms 600000 (specification 120000)" in out and "VERIFIED" in out
    assert main(["verify", *args, "--max-drop-span", "0"]) == 2
    assert "max_drop_span" in capsys.readouterr().err


def test_an_evidence_package_reproduces_the_drop_finding(tmp_path: Path) -> None:
    """The drop alert is reproduced from the packaged frames (evidence/reproduce.py)."""
    from evidence.reproduce import reproduce

    frames, _ = _dropped_chain()
    p = _pipeline(tmp_path, False)
    for f in frames:
        p.handle(TOPIC, f.payload, f.created + 1)
    doc = _drop_alerts(p)[0]
    rep = reproduce(doc, [], frames, {}, {})
    assert rep.reproduced, rep
    assert not reproduce(doc, [], frames[:3], {}, {}).reproduced  # without the carrier
