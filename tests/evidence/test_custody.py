"""Receipt log and checkpoints: RFC 9162 tree hashing, inclusion proofs, the log committed
with the batch, append-only guards and the recomputation that finds an edited row."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from ingest_support import Gateway

from evidence import custody_cli  # noqa: F401  (the CLI module imports)
from ingest.config import parse_config
from ingest.custody.log import ReceiptLog, check_log
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from stationseal import merkle
from stationseal.checkpoint import (
    CheckpointError,
    InclusionProof,
    check_inclusion,
    parse_checkpoint,
    receipt_leaf,
    verify_checkpoint,
)
from stationseal.cli import main
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.signing import load_public_key, load_signer

CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
             bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
#: Roots of the first n CT test leaves (certificate-transparency merkle tree tests).
CT_ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, recursively, as the reference."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_tree_hash_matches_ct_vectors_and_the_recursive_definition() -> None:
    hs = [merkle.leaf_hash(x) for x in CT_LEAVES]
    for n, root in CT_ROOTS.items():
        assert merkle.root_from_leaf_hashes(hs[:n]).hex() == root
    leaves = [os.urandom(i % 7) for i in range(40)]
    for n in range(0, 41):
        assert merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in leaves[:n]]) \
            == _mth(leaves[:n])


def test_every_inclusion_proof_verifies_and_a_changed_one_does_not() -> None:
    for n in range(1, 34):
        hs = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
        root = merkle.root_from_leaf_hashes(hs)
        for i in range(n):
            path = merkle.inclusion_path(hs, i)
            assert merkle.root_from_inclusion(i, n, hs[i], path) == root
            if path:
                bad = [*path]
                bad[0] = bytes(32)
                assert merkle.root_from_inclusion(i, n, hs[i], bad) != root
                with pytest.raises(merkle.ProofError):
                    merkle.root_from_inclusion(i, n, hs[i], path[:-1])
            if n > 1:
                j = (i + 1) % n
                assert merkle.root_from_inclusion(i, n, hs[j], path) != root
    with pytest.raises(merkle.ProofError):
        merkle.root_from_inclusion(5, 5, hs[0], [])


def _setup(tmp_path: Path, interval: float = 3600.0) -> tuple[Pipeline, Store, Gateway,
                                                               ReceiptLog]:
    reg = KeyRegistry()
    g = Gateway("gw-c", tmp_path / "k", reg, site="S1", t0=1_700_000_000.0)
    reg.save(tmp_path / "registry.json")
    kf = generate_keypair("central", tmp_path / "central")
    cfg = parse_config({"registry": str(tmp_path / "registry.json"),
                        "registry_authority": str(tmp_path / "registry.json.authority.pub.pem"),
                        "state_dir": str(tmp_path / "state"),
                        "custody": {"key_file": str(kf.private_key),
                                    "checkpoint_interval_s": interval}})
    store = Store(cfg.db_path)
    pipe = Pipeline(cfg, store, Metrics())
    rl = ReceiptLog(store._db, load_signer(kf.private_key), interval_s=interval)
    return pipe, store, g, rl


def _commit(pipe: Pipeline, store: Store) -> None:
    b = pipe.seal()
    store.commit_batch(b.chain, b.outbox, [], b.alert_rows, b.receipts)


def test_receipts_are_committed_with_the_batch_once_per_frame(tmp_path: Path) -> None:
    pipe, store, g, rl = _setup(tmp_path)
    frames = [g.next_frame(5) for _ in range(6)]
    for i, f in enumerate(frames[:4]):
        pipe.handle(g.topic, f.payload, 1_700_000_100.0 + i)
    _commit(pipe, store)
    # A redelivered frame (QoS 1) is not a new receipt: the first arrival counts.
    pipe.handle(g.topic, frames[1].payload, 1_700_000_200.0)
    pipe.handle(g.topic, frames[4].payload, 1_700_000_201.0)
    _commit(pipe, store)
    # Crash before the commit of frame 6: no receipt, chain state not committed either.
    pipe.handle(g.topic, frames[5].payload, 1_700_000_202.0)
    pipe.batch = type(pipe.batch)()
    rows = list(rl.rows())
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[1].received_ms == 1_700_000_101_000
    assert [r.index for r in rows] == list(range(5))
    # After the restart the broker redelivers frame 6: it is new and receipted.
    pipe2 = Pipeline(pipe.cfg, Store(pipe.cfg.db_path), Metrics())
    assert pipe2.handle(g.topic, frames[5].payload, 1_700_000_300.0) == "accepted"
    _commit(pipe2, pipe2.store)
    assert [r.seq for r in rl.rows()] == [1, 2, 3, 4, 5, 6]
    assert rl.by_frame(frames[5].frame_hash).received_ms == 1_700_000_300_000  # type: ignore[union-attr]


def test_checkpoints_prove_inclusion_and_chain_to_each_other(tmp_path: Path) -> None:
    pipe, store, g, rl = _setup(tmp_path, interval=60.0)
    pub = load_public_key((tmp_path / "central" / "central.pub.pem").read_bytes())
    for i in range(5):
        pipe.handle(g.topic, g.next_frame(3).payload, 1_700_000_000.0 + i)
    _commit(pipe, store)
    cp0 = rl.maybe_checkpoint(now=1_700_000_010.0, force=True)
    assert cp0 is not None and (cp0.number, cp0.first, cp0.size) == (0, 0, 5)
    # Not due yet: the interval has not elapsed.
    for i in range(3):
        pipe.handle(g.topic, g.next_frame(3).payload, 1_700_000_020.0 + i)
    _commit(pipe, store)
    rl._last_try = 0.0
    assert rl.maybe_checkpoint(now=1_700_000_030.0) is None
    rl._last_try = 0.0
    cp1 = rl.maybe_checkpoint(now=1_700_000_071.0)
    assert cp1 is not None and (cp1.first, cp1.size) == (5, 3)
    assert cp1.previous == cp0.hash
    for cp in rl.checkpoints():
        verify_checkpoint(parse_checkpoint(cp.dumps()), pub)
    for idx in range(8):
        got = rl.proof(idx)
        assert got is not None
        proof, cp = got
        check_inclusion(InclusionProof.from_json(json.loads(json.dumps(proof.to_json()))), cp)
    # Wrong receipt time, wrong checkpoint, changed signature: each refused by name.
    proof, cp = rl.proof(6)  # type: ignore[misc]
    moved = InclusionProof(proof.checkpoint, proof.index, proof.frame_hash,
                           proof.received_ms + 1, proof.path)
    with pytest.raises(CheckpointError, match="proof_mismatch"):
        check_inclusion(moved, cp)
    with pytest.raises(CheckpointError, match="proof_mismatch"):
        check_inclusion(proof, cp0)
    doc = cp.to_json()
    doc["body"] = doc["body"].replace(f"size: {cp.size}", f"size: {cp.size + 1}")
    with pytest.raises(CheckpointError, match="checkpoint_signature"):
        verify_checkpoint(parse_checkpoint(doc), pub)
    assert receipt_leaf(proof.frame_hash, proof.received_ms)[:1] == b"\x01"
    assert check_log(rl, pub).problems == []


def test_log_is_append_only_and_an_edited_row_is_found(tmp_path: Path) -> None:
    pipe, store, g, rl = _setup(tmp_path)
    for i in range(4):
        pipe.handle(g.topic, g.next_frame(2).payload, 1_700_000_000.0 + i)
    _commit(pipe, store)
    rl.maybe_checkpoint(force=True)
    db = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE receipts SET received_ms = 1 WHERE idx = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM receipts WHERE idx = 1")
    # Whoever owns the database can drop the guard; the recomputation still sees it.
    db.execute("DROP TRIGGER receipts_append_only_u")
    db.execute("UPDATE receipts SET received_ms = received_ms - 86400000 WHERE idx = 1")
    db.commit()
    problems = check_log(rl).problems or []
    assert any("receipt 1: leaf hash" in p for p in problems)


def test_key_generate_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipe, store, g, _ = _setup(tmp_path)
    for i in range(3):
        pipe.handle(g.topic, g.next_frame(2).payload, 1_700_000_000.0 + i)
    _commit(pipe, store)
    cfgp = tmp_path / "central.yaml"
    cfgp.write_text(json.dumps({"registry": str(tmp_path / "registry.json"),
                                "registry_authority": str(tmp_path /
                                                          "registry.json.authority.pub.pem"),
                                "state_dir": str(tmp_path / "state"),
                                "custody": {"key_file": str(tmp_path / "central" /
                                                            "central.key")}}))
    assert main(["evidence", "key", "generate", "--out", str(tmp_path / "k2")]) == 0
    assert os.stat(tmp_path / "k2" / "central.key").st_mode & 0o777 == 0o600
    assert main(["evidence", "checkpoints", "--config", str(cfgp), "--sign-now",
                 "--out", str(tmp_path / "cps.jsonl")]) == 0
    assert len((tmp_path / "cps.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["evidence", "receipts", "--config", str(cfgp)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [sorted(x) for x in lines] == [["frame_hash", "received_ms"]] * 3
    assert lines[0]["received_ms"] == 1_700_000_000_000
    assert main(["evidence", "log-check", "--config", str(cfgp), "--public-key",
                 str(tmp_path / "central" / "central.pub.pem")]) == 0


def test_custody_vectors_regenerate_byte_for_byte_and_verify() -> None:
    from evidence.vectors import PATH, render

    assert PATH.read_text() == render()
    v = json.loads(PATH.read_text())
    pub = load_public_key(v["central_public_key"].encode())
    cps = [parse_checkpoint(d) for d in v["checkpoints"]]
    for cp in cps:
        verify_checkpoint(cp, pub)
    assert cps[1].previous == cps[0].hash
    for p in v["inclusion_proofs"]:
        check_inclusion(InclusionProof.from_json(p), cps[1])
    for t in v["tree_hash_ct"]:
        assert merkle.root_from_leaf_hashes(
            [merkle.leaf_hash(bytes.fromhex(x)) for x in t["leaves"]]).hex() == t["root"]


def test_gateway_keeps_only_the_latest_valid_checkpoint(tmp_path: Path) -> None:
    from agent.checkpoint import keep_latest, load_latest
    from evidence.vectors import PATH

    v = json.loads(PATH.read_text())
    pub = load_public_key(v["central_public_key"].encode())
    keep = tmp_path / "gw" / "checkpoint.json"
    assert keep_latest(keep, v["checkpoints"][1], pub)
    assert not keep_latest(keep, v["checkpoints"][0], pub)  # older: kept file unchanged
    assert load_latest(keep).number == 1  # type: ignore[union-attr]
    forged = dict(v["checkpoints"][1])
    forged["body"] = forged["body"].replace("number: 1", "number: 9")
    with pytest.raises(CheckpointError, match="checkpoint_signature"):
        keep_latest(keep, forged, pub)
    with pytest.raises(CheckpointError, match="checkpoint_malformed"):
        keep_latest(keep, {"body": "x", "signature": ""}, pub)
    assert load_latest(keep).number == 1  # type: ignore[union-attr]


def test_acknowledgement_carries_the_checkpoint_the_gateway_keeps(tmp_path: Path) -> None:
    from agent.checkpoint import load_latest
    from agent.uplink import keep_checkpoint
    from evidence.vectors import PATH
    from stationseal.acks import build_acks, parse_acks

    v = json.loads(PATH.read_text())
    msg = next(build_acks("gw-1", [(5, bytes(32))], when=1.0, by="ingest",
                          extra={"checkpoint": v["checkpoints"][1]}))
    assert parse_acks(msg, "gw-1") == [(5, bytes(32))]  # the ack itself is unchanged
    keep = tmp_path / "central-checkpoint.json"
    keep_checkpoint(keep, msg)
    assert load_latest(keep).number == 1  # type: ignore[union-attr]
    keep_checkpoint(keep, next(build_acks("gw-1", [(6, bytes(32))], when=2.0, by="i")))
    keep_checkpoint(keep, b'{"checkpoint": {"body": "junk", "signature": ""}}')
    assert load_latest(keep).number == 1  # type: ignore[union-attr]
