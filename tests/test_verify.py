"""Offline verifier and chain tracking: what a third party runs on an exported file."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stationseal import vectors
from stationseal.chain import ChainTracker
from stationseal.export import frames_topic, line_for
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.records import Event, Reading
from stationseal.signing import Ed25519Signer
from stationseal.verify_cli import verify_file

ED = Ed25519Signer(vectors.ed_key())
T0 = vectors.T0


def chain(n: int, start: int = 1, boot: bytes = vectors.BOOT, prev: bytes = ZERO_HASH,
          drop: tuple[int, int, bytes] | None = None) -> list[Frame]:
    out = []
    for seq in range(start, start + n):
        evs = []
        if drop is not None and seq == start:
            evs = [Event("gateway", "data_dropped", T0 + seq,
                         {"first_seq": drop[0], "last_seq": drop[1], "frames": drop[1] - drop[0] + 1,
                          "readings": 10, "last_hash": drop[2].hex()})]
        f = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=boot, seq=seq, prev_hash=prev,
                 created=T0 + seq, clock_sync="synced",
                 readings=[Reading("a", "co_pct", 0.5 + seq, "%vol", T0 + seq, "N", None)],
                 events=evs)
        prev = f.frame_hash
        out.append(f)
    return out


def write(path: Path, frames: list[Frame]) -> Path:
    path.write_text("".join(line_for(frames_topic(f.gateway_id), f.payload) + "\n"
                            for f in frames))
    return path


@pytest.fixture()
def reg_path(tmp_path: Path) -> Path:
    p = tmp_path / "registry.json"
    reg = vectors.registry_for(vectors.build())
    assert reg.document is not None
    p.write_bytes(reg.document)
    (tmp_path / "authority.pub.pem").write_bytes(vectors.authority().public_pem())
    return p


def reg_args(reg_path: Path) -> list[str]:
    return ["--registry", str(reg_path), "--authority",
            str(reg_path.parent / "authority.pub.pem")]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stationseal.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_untouched_file_verifies(tmp_path: Path, reg_path: Path) -> None:
    p = write(tmp_path / "f.jsonl", chain(20))
    r = cli("verify", str(p), *reg_args(reg_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERIFIED" in r.stdout and "20 frames" in r.stdout


def test_single_changed_character_rejected(tmp_path: Path, reg_path: Path) -> None:
    p = write(tmp_path / "f.jsonl", chain(10))
    lines = p.read_text().splitlines()
    rng = random.Random(5)
    for _ in range(10):
        i = rng.randrange(len(lines))
        obj = json.loads(lines[i])
        s = obj["payload"]
        j = rng.randrange(len(s) - 4)
        alt = "A" if s[j] != "A" else "B"
        bad = lines.copy()
        bad[i] = json.dumps({"topic": obj["topic"], "payload": s[:j] + alt + s[j + 1:]})
        q = tmp_path / "bad.jsonl"
        q.write_text("\n".join(bad) + "\n")
        r = cli("verify", str(q), *reg_args(reg_path))
        assert r.returncode == 1
        assert f"FAIL line {i + 1}" in r.stdout


def test_deleted_and_duplicated_lines_rejected(tmp_path: Path, reg_path: Path) -> None:
    lines = write(tmp_path / "f.jsonl", chain(10)).read_text().splitlines(keepends=True)
    q = tmp_path / "del.jsonl"
    q.write_text("".join(lines[:4] + lines[5:]))
    r = cli("verify", str(q), *reg_args(reg_path))
    assert r.returncode == 1 and "gap" in r.stdout and "'first_seq': 5" in r.stdout
    q.write_text("".join(lines[:6] + [lines[3]] + lines[6:]))
    r = cli("verify", str(q), *reg_args(reg_path))
    assert r.returncode == 1 and "duplicate" in r.stdout and "line 7" in r.stdout


def test_fork_and_reset_detected(tmp_path: Path, reg_path: Path) -> None:
    a = chain(6)
    # Same boot, seq 4 sealed twice with different content: a fork.
    alt = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=4,
               prev_hash=a[2].frame_hash, created=T0 + 99, clock_sync="synced",
               readings=[], events=[])
    rep = verify_file(write(tmp_path / "fork.jsonl", [*a, alt]), vectors.registry_for(
        vectors.build()))
    kinds = [i["kind"] for i in rep.gateways["gw-demo-1"].issues]
    assert "fork" in kinds and not rep.ok
    # A new boot restarting the counter at 1: sequence reset.
    b = chain(3, boot=bytes([9]) * 16)
    rep = verify_file(write(tmp_path / "reset.jsonl", a + b), vectors.registry_for(
        vectors.build()))
    assert "sequence_reset" in [i["kind"] for i in rep.gateways["gw-demo-1"].issues]


def test_signed_drop_event_covers_gap(tmp_path: Path, reg_path: Path) -> None:
    a = chain(5)
    dropped = chain(5, start=6, prev=a[-1].frame_hash)  # never delivered
    b = chain(5, start=11, prev=dropped[-1].frame_hash, drop=(6, 10, dropped[-1].frame_hash))
    rep = verify_file(write(tmp_path / "drop.jsonl", a + b), vectors.registry_for(
        vectors.build()))
    assert rep.ok, rep.gateways["gw-demo-1"].issues
    assert rep.gateways["gw-demo-1"].dropped_ranges == [(6, 10)]
    # Without the drop event the same hole is a gap.
    rep = verify_file(write(tmp_path / "hole.jsonl", a + chain(5, 11, prev=dropped[-1].frame_hash)),
                      vectors.registry_for(vectors.build()))
    assert [i["kind"] for i in rep.gateways["gw-demo-1"].issues] == ["gap"]


def test_malformed_lines_named(tmp_path: Path, reg_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    good = write(tmp_path / "g.jsonl", chain(1)).read_text()
    p.write_text(good + "not json\n" + '{"payload": "!!!"}\n')
    r = cli("verify", str(p), *reg_args(reg_path))
    assert r.returncode == 1
    assert "line 2: bad_json: not JSON" in r.stdout
    assert "line 3: bad_base64: payload is not valid base64" in r.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    r = cli("verify", str(tmp_path / "nope.jsonl"), "--registry", str(tmp_path / "r.json"),
            "--authority", "0" * 64)
    assert r.returncode == 2 and "registry file not found" in r.stderr
    assert cli("verify").returncode == 2


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(12))), st.sets(st.integers(0, 11), max_size=3))
def test_tracker_out_of_order(order: list[int], missing: set[int]) -> None:
    """Any arrival order gives the same verdict: exactly the missing seqs are gaps."""
    frames = chain(12)
    t = ChainTracker("gw-demo-1")
    issues = []
    for i in order:
        if i in missing:
            continue
        _, iss = t.observe(frames[i], now=0.0)
        issues += iss
    assert issues == []
    gaps = t.overdue_gaps(now=1.0, grace_s=0.0)
    got = set()
    for g in gaps:
        got |= set(range(g.detail["first_seq"], g.detail["last_seq"] + 1))
    received = [i for i in range(12) if i not in missing]
    expect = {i + 1 for i in missing if received and min(received) < i < max(received)}
    assert got == expect
    restored = ChainTracker.from_json(json.loads(json.dumps(t.to_json())))
    assert restored.received.iv == t.received.iv


def test_tracker_snapshot_does_not_follow_later_frames() -> None:
    """The ingest commits a batch's chain snapshot on its writer thread while the
    tracker already observes the next batch: frames of that batch must not be in it,
    or a crash before their write makes their redelivery look like a replay."""
    frames = chain(4)
    t = ChainTracker("gw-demo-1")
    for f in frames[:2]:
        t.observe(f)
    snap = t.to_json()
    for f in frames[2:]:
        t.observe(f)
    assert snap["received"] == [[1, 2]]
    restored = ChainTracker.from_json(json.loads(json.dumps(snap)))
    is_new, issues = restored.observe(frames[2])
    assert is_new and not issues
