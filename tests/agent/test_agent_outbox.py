"""Outbox, sealer and dispatcher without any network: bounds, drop events, restarts."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import make_keys, verify

from agent.clock import ClockMonitor
from agent.dispatch import Dispatcher
from agent.outbox import Outbox, OutboxError
from agent.sealer import MAX_BACKLOG_BATCHES, Sealed, Sealer
from stationseal.export import frames_topic, line_for
from stationseal.frame import Frame, decode
from stationseal.records import Reading

GW = "gw-unit"


class Recorder:
    """Forwarder that records sealed frames and delivers nothing."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.protect: set[int] = set()
        self.forgotten: list[tuple[int, int]] = []

    def on_sealed(self, s: Sealed) -> None:
        self.frames.append(decode(s.payload))

    def protected(self) -> set[int]:
        return self.protect

    def take_delivered(self) -> list[tuple[int, int]]:
        return []

    def deleted(self, items: list[tuple[int, int]]) -> None:
        pass

    def forget(self, ranges: list[tuple[int, int]]) -> None:
        self.forgotten += ranges


class Clock:
    def __init__(self, t: float = 1_767_225_600.0) -> None:
        self.t = t
        self.m = 100.0

    def wall(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.m

    def advance(self, s: float) -> None:
        self.t += s
        self.m += s


def readings(n: int, t: float, tag: int = 0) -> list[Reading]:
    return [Reading("ana-1", f"s{i % 10}", float(tag * 1000 + i), "ppm", t, "N",
                    bytes([i % 256, tag % 256])) for i in range(n)]


def make(tmp: Path, signer: Any, clock: Clock, *, max_bytes: int = 10**9,
         max_age_s: float = 1e9, sync: str = "full", sync_state: str = "synced",
         batch: int = 50) -> tuple[Outbox, Sealer, Recorder]:
    ob = Outbox(tmp / "ob.sqlite", gateway_id=GW, max_bytes=max_bytes, max_age_s=max_age_s,
                sync=sync)
    rec = Recorder()
    cm = ClockMonitor(0.5, wall=clock.wall, mono=clock.mono, sync_source=lambda: sync_state)
    s = Sealer(signer, ob, gateway_id=GW, site="site-u", max_readings=batch,
               max_delay_s=1.0, clock=cm, forwarder=rec, wall=clock.wall)
    return ob, s, rec


def seal_batches(s: Sealer, clock: Clock, n: int, batch: int = 50) -> None:
    for k in range(n):
        clock.advance(1.0)
        s.add(readings(batch, clock.t, k))  # full batch: sealed at once


def drop_events(frames: list[Frame]) -> list[tuple[int, dict[str, Any]]]:
    return [(f.seq, e.detail) for f in frames for e in f.events if e.kind == "data_dropped"]


def write_frames(path: Path, frames: list[Frame]) -> None:
    with open(path, "w") as fh:
        for f in frames:
            fh.write(line_for(frames_topic(f.gateway_id), f.payload) + "\n")


def received_without_drops(frames: list[Frame]) -> list[Frame]:
    """What a receiver gets: every sealed frame except those a drop event covers."""
    dropped: set[int] = set()
    for _, d in drop_events(frames):
        dropped.update(range(d["first_seq"], d["last_seq"] + 1))
    return [f for f in frames if f.seq not in dropped]


def test_byte_bound_drops_oldest_with_exact_signed_range(tmp_path: Path) -> None:
    signer, reg = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock, max_bytes=40_000)
    seal_batches(s, clock, 60)
    evs = drop_events(rec.frames)
    assert evs, "the outbox went over its byte bound without a drop event"
    by_seq = {f.seq: f for f in rec.frames}
    expected_first = 1
    for carrier, d in evs:
        assert set(d) == {"first_seq", "last_seq", "frames", "readings", "last_hash"}
        assert d["first_seq"] == expected_first  # oldest first, nothing skipped
        assert d["frames"] == d["last_seq"] - d["first_seq"] + 1
        assert d["readings"] == 50 * d["frames"]
        assert d["last_hash"] == by_seq[d["last_seq"]].frame_hash.hex()
        assert carrier > d["last_seq"]
        expected_first = d["last_seq"] + 1
    # The bound holds and the counters match the events.
    assert ob.bytes <= 40_000
    assert ob.dropped_frames == sum(d["frames"] for _, d in evs)
    assert ob.dropped_readings == sum(d["readings"] for _, d in evs)
    stored = {r[0] for r in ob._db.execute("SELECT seq FROM frames")}
    assert stored == {f.seq for f in received_without_drops(rec.frames)}
    # A receiver holding every frame not dropped verifies the whole chain.
    out = tmp_path / "recv.jsonl"
    write_frames(out, received_without_drops(rec.frames))
    rep = verify(out, reg)
    assert rep.ok, rep.gateways[GW].issues
    assert rep.gateways[GW].dropped_ranges
    ob.close()


def test_without_the_drop_event_the_verifier_sees_a_gap(tmp_path: Path) -> None:
    """Guards the test above: the drop event is what makes the missing range legal."""
    signer, reg = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock, max_bytes=40_000)
    seal_batches(s, clock, 60)
    kept = [f for f in received_without_drops(rec.frames)
            if not any(e.kind == "data_dropped" for e in f.events)]
    out = tmp_path / "recv.jsonl"
    write_frames(out, kept)
    rep = verify(out, reg)
    assert not rep.ok
    assert any(i["kind"] in ("gap", "fork") for i in rep.gateways[GW].issues)
    ob.close()


def test_age_bound_drops_old_frames_only_with_a_trusted_clock(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock, max_age_s=3600, sync_state="unsynced")
    seal_batches(s, clock, 5)
    clock.advance(7200)
    seal_batches(s, clock, 1)
    assert not drop_events(rec.frames), "an unsynchronised clock must not age frames out"
    ob.close()
    ob, s, rec = make(tmp_path, signer, clock, max_age_s=3600, sync_state="synced")
    seal_batches(s, clock, 1)
    evs = drop_events(rec.frames)
    assert len(evs) == 1
    d = evs[0][1]
    assert (d["first_seq"], d["last_seq"], d["frames"]) == (1, 5, 5)
    assert ob.frames == 2  # frame 6 is a second old, frame 7 carries the event
    ob.close()


def test_drops_skip_frames_in_flight_and_split_the_range(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock, max_bytes=40_000)
    seal_batches(s, clock, 10)
    rec.protect = {3, 4}
    seal_batches(s, clock, 40)
    evs = drop_events(rec.frames)
    ranges = [(d["first_seq"], d["last_seq"]) for _, d in evs]
    assert ranges[0] == (1, 2) and ranges[1][0] == 5
    assert all(not (a <= 3 <= b or a <= 4 <= b) for a, b in ranges)
    stored = {r[0] for r in ob._db.execute("SELECT seq FROM frames")}
    assert {3, 4} <= stored
    assert rec.forgotten == ranges
    ob.close()


def crash(ob: Outbox) -> None:
    """What a kill -9 leaves: no checkpoint, no final sync, the lock released."""
    ob._db.close()
    os.close(ob._lock_fd)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sequence_and_chain_continue_across_restarts(tmp_path: Path, sync: str) -> None:
    signer, reg = make_keys(tmp_path, GW)
    clock = Clock()
    all_frames: list[Frame] = []
    boots: list[bytes] = []
    for run in range(3):
        ob, s, rec = make(tmp_path, signer, clock, sync=sync)
        s.boot("9.9.9", "ab" * 32)
        seal_batches(s, clock, 4)
        boots.append(s.boot_id)
        first = rec.frames[0]
        boot_ev = [e for e in first.events if e.kind == "gateway_boot"]
        assert len(boot_ev) == 1 and first.events[0].kind == "gateway_boot"
        assert boot_ev[0].detail["previous_boot_id"] == (boots[-2].hex() if run else None)
        assert boot_ev[0].detail["agent_version"] == "9.9.9"
        if all_frames:
            assert first.seq == all_frames[-1].seq + 1
            assert first.prev_hash == all_frames[-1].frame_hash
        all_frames += rec.frames
        if sync == "normal":
            ob.sync()
        if run == 1:
            crash(ob)
        else:
            ob.close()
    seqs = [f.seq for f in all_frames]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(set(boots)) == 3
    out = tmp_path / "all.jsonl"
    write_frames(out, all_frames)
    rep = verify(out, reg)
    assert rep.ok, rep.gateways[GW].issues
    assert rep.gateways[GW].boots == {b.hex() for b in boots}


def test_normal_sync_hands_out_only_durable_frames(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob = Outbox(tmp_path / "ob.sqlite", gateway_id=GW, max_bytes=10**9, max_age_s=1e9,
                sync="normal", sync_interval_s=3600.0)
    disp = Dispatcher(ob, max_inflight=8, live_reserve=1)
    tr = FakeTransport()
    disp.attach(tr)
    disp.link_up(1)
    cm = ClockMonitor(0.5, wall=clock.wall, mono=clock.mono, sync_source=lambda: "synced")
    s = Sealer(signer, ob, gateway_id=GW, site="x", max_readings=5, max_delay_s=1,
               clock=cm, forwarder=disp, wall=clock.wall)
    seal_batches(s, clock, 3, batch=5)
    assert ob.seq == 3 and ob.durable_seq == 0
    assert ob.sync_due() is False  # interval not elapsed
    assert tr.submitted == [], "a frame that a power cut could still erase was sent"
    ob.sync()
    assert ob.durable_seq == 3
    disp.pump()
    assert tr.submitted == [(1, [1, 2, 3])]
    ob.close()


def test_one_agent_per_outbox_and_per_gateway(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "ob.sqlite", gateway_id=GW, max_bytes=10**6, max_age_s=1e6)
    with pytest.raises(OutboxError, match="another agent"):
        Outbox(tmp_path / "ob.sqlite", gateway_id=GW, max_bytes=10**6, max_age_s=1e6)
    ob.close()
    with pytest.raises(OutboxError, match="belongs to gateway 'gw-unit'"):
        Outbox(tmp_path / "ob.sqlite", gateway_id="gw-other", max_bytes=10**6, max_age_s=1e6)


def test_unsealable_reading_becomes_an_event_not_a_lost_batch(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock)
    batch = readings(10, clock.t)
    batch[3] = Reading("ana-1", "broken", None, "ppm", clock.t)  # type: ignore[arg-type]
    batch[5] = Reading("ana-1", "flag", 1.0, "ppm", clock.t, "NN")
    s.add(batch)
    s.flush()
    (f,) = rec.frames
    assert len(f.readings) == 8
    bad = [e for e in f.events if e.kind == "malformed_response"]
    assert sorted(e.detail["signal"] for e in bad) == ["broken", "flag"]
    ob.close()


def test_clock_jump_is_sealed(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock)
    s.add(readings(5, clock.t))
    clock.t += 3600.0  # wall clock stepped, monotonic did not
    clock.m += 1.0
    s.flush()
    (f,) = rec.frames
    (ev,) = [e for e in f.events if e.kind == "clock_jump"]
    assert ev.detail["jump_s"] == pytest.approx(3599.0)
    assert ev.detail["mono_delta_s"] == pytest.approx(1.0)
    ob.close()


def test_storage_failure_keeps_readings_then_seals_them(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob, s, rec = make(tmp_path, signer, clock, batch=10)
    real = ob.append

    def full(**kw: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ob, "append", full)
    cap = 10 * MAX_BACKLOG_BATCHES
    for k in range(cap // 10 + 5):
        s.add(readings(10, clock.t, k))
    assert s.storage_error and "disk is full" in s.storage_error
    assert s.pending_readings == cap and s.lost_readings == 50
    monkeypatch.setattr(ob, "append", real)
    s.flush()
    assert s.storage_error is None and s.pending == 0
    assert sum(len(f.readings) for f in rec.frames) == cap
    lost = [e for f in rec.frames for e in f.events if e.kind == "readings_lost"]
    assert len(lost) == 1 and lost[0].detail["readings"] == 50
    assert [f.seq for f in rec.frames] == list(range(1, len(rec.frames) + 1))
    ob.close()


class FakeTransport:
    kind = "fake"

    def __init__(self) -> None:
        self.submitted: list[tuple[int, list[int]]] = []

    def start(self, d: Dispatcher) -> None:
        pass

    def submit(self, gen: int, items: list[tuple[int, bytes]]) -> None:
        self.submitted.append((gen, [s for s, _ in items]))

    def stop(self, timeout: float) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}


def test_dispatcher_live_first_then_backlog_oldest_first(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob = Outbox(tmp_path / "ob.sqlite", gateway_id=GW, max_bytes=10**9, max_age_s=1e9)
    disp = Dispatcher(ob, max_inflight=6, live_reserve=2)
    tr = FakeTransport()
    disp.attach(tr)
    cm = ClockMonitor(0.5, wall=clock.wall, mono=clock.mono, sync_source=lambda: "synced")
    s = Sealer(signer, ob, gateway_id=GW, site="x", max_readings=5, max_delay_s=1,
               clock=cm, forwarder=disp, wall=clock.wall)
    seal_batches(s, clock, 40, batch=5)  # link down: 40 frames of backlog
    assert tr.submitted == []
    disp.link_up(1)
    # The newest LIVE_CAP frames are still in memory and count as live: they go first.
    assert tr.submitted == [(1, list(range(9, 15)))]
    new_live: list[int] = []
    for _ in range(60):
        seal_batches(s, clock, 1, batch=5)
        new_live.append(ob.seq)
        disp.delivered(1, list(disp.inflight))
        if not disp.live and disp.cursor >= ob.seq:
            break
    disp.delivered(1, list(disp.inflight))
    flat = [x for _, xs in tr.submitted for x in xs]
    assert sorted(flat) == list(range(1, ob.seq + 1)), "each frame sent exactly once"
    backlog = [x for x in flat if x <= 8]
    assert backlog == list(range(1, 9)), "backlog goes oldest first"
    # live frames sealed during the drain were never left behind the backlog
    assert flat.index(new_live[0]) < flat.index(1)
    # deletions ride on frame transactions: only undelivered or pending rows remain
    assert ob.frames <= len(disp.delivered_pending) + len(disp.inflight)
    # a link drop returns in-flight frames to the queue; they are re-sent on link up
    seal_batches(s, clock, 1, batch=5)
    inflight = set(disp.inflight)
    assert inflight
    disp.link_down(1)
    assert disp.inflight == {}
    disp.link_up(2)
    assert tr.submitted[-1][0] == 2 and inflight <= set(tr.submitted[-1][1])
    ob.close()


def test_dispatcher_backlog_reserve_leaves_room_for_live(tmp_path: Path) -> None:
    signer, _ = make_keys(tmp_path, GW)
    clock = Clock()
    ob = Outbox(tmp_path / "ob.sqlite", gateway_id=GW, max_bytes=10**9, max_age_s=1e9)
    disp = Dispatcher(ob, max_inflight=4, live_reserve=1)
    tr = FakeTransport()
    disp.attach(tr)
    cm = ClockMonitor(0.5, wall=clock.wall, mono=clock.mono, sync_source=lambda: "synced")
    s = Sealer(signer, ob, gateway_id=GW, site="x", max_readings=5, max_delay_s=1,
               clock=cm, forwarder=disp, wall=clock.wall)
    seal_batches(s, clock, 50, batch=5)
    disp.live.clear()  # pretend these are all old: backlog only
    disp.live_seqs.clear()
    disp.link_up(1)
    assert tr.submitted[-1][1] == [1, 2, 3]  # backlog oldest first, one slot kept free
    seal_batches(s, clock, 1, batch=5)
    assert tr.submitted[-1][1] == [51]  # the live frame takes the reserved slot at once
    n = len(tr.submitted)
    disp.delivered(1, [1])
    assert len(tr.submitted) == n  # 2, 3, 51 in flight: backlog may not take the last slot
    disp.delivered(1, [51])
    assert tr.submitted[-1][1] == [4]
    ob.close()
