"""The receipt log: append-only, hash-chained, in the ingest's SQLite state file.

Receipts are inserted in the same transaction that commits a batch's chain state (ingest
store ``commit_batch``), which commits before any of the batch's MQTT messages is
acknowledged: so every acknowledged frame has a receipt, and a crash before the commit
leaves neither (the broker redelivers the frame, which is then new again and receipted
with its second arrival time: it was never acknowledged before). Log indexes are assigned
inside that ``BEGIN IMMEDIATE`` transaction, so several worker processes sharing the file
append to one log without gaps.

Checkpoints (stationseal/checkpoint.py) are signed over the receipts appended since the
previous one, after the batch's commit, in their own transaction. Triggers refuse UPDATE
and DELETE on both tables: not a defence against the database's owner (the published
checkpoints are), but against a maintenance script that "cleans up".
"""

from __future__ import annotations

import bisect
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stationseal import merkle
from stationseal.checkpoint import (
    ZERO32,
    Checkpoint,
    InclusionProof,
    chain_next,
    parse_checkpoint,
    receipt_leaf_hash,
    sign_checkpoint,
)
from stationseal.signing import Signer

log = logging.getLogger("stationseal.ingest.custody")

SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    idx         INTEGER PRIMARY KEY,
    frame_hash  BLOB NOT NULL,
    gateway_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    leaf_hash   BLOB NOT NULL,
    head        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_frame ON receipts(frame_hash);
CREATE INDEX IF NOT EXISTS receipts_gw_seq ON receipts(gateway_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    number  INTEGER PRIMARY KEY,
    first   INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    hash    BLOB NOT NULL,
    doc     TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS receipts_append_only_u BEFORE UPDATE ON receipts
    BEGIN SELECT RAISE(ABORT, 'receipt log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS receipts_append_only_d BEFORE DELETE ON receipts
    BEGIN SELECT RAISE(ABORT, 'receipt log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_u BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_append_only_d BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
"""

#: (frame_hash, gateway_id, seq, received_ms) of one accepted frame.
Receipt = tuple[bytes, str, int, int]


@dataclass(slots=True, frozen=True)
class ReceiptRow:
    index: int
    frame_hash: bytes
    gateway_id: str
    seq: int
    received_ms: int
    leaf_hash: bytes
    head: bytes


def ensure_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def append(db: sqlite3.Connection, receipts: Sequence[Receipt]) -> None:
    """Append inside the caller's (immediate) transaction."""
    if not receipts:
        return
    row = db.execute("SELECT idx, head FROM receipts ORDER BY idx DESC LIMIT 1").fetchone()
    idx, head = (-1, ZERO32) if row is None else (int(row[0]), bytes(row[1]))
    rows = []
    for fh, gw, seq, ms in receipts:
        idx += 1
        lh = receipt_leaf_hash(fh, ms)
        head = chain_next(head, lh)
        rows.append((idx, fh, gw, seq, ms, lh, head))
    db.executemany("INSERT INTO receipts(idx, frame_hash, gateway_id, seq, received_ms, "
                   "leaf_hash, head) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def _row(r: Sequence[Any]) -> ReceiptRow:
    return ReceiptRow(int(r[0]), bytes(r[1]), str(r[2]), int(r[3]), int(r[4]), bytes(r[5]),
                      bytes(r[6]))


_COLS = "idx, frame_hash, gateway_id, seq, received_ms, leaf_hash, head"


class ReceiptLog:
    """Reads the log and makes checkpoints; one per process, on the ingest store's file."""

    def __init__(self, db: sqlite3.Connection | Callable[[], sqlite3.Connection],
                 signer: Signer | None = None, origin: str = "stationseal-central",
                 interval_s: float = 60.0, max_receipts: int = 100_000):
        #: A connection, or a function returning this thread's connection (the ingest
        #: store keeps one per thread).
        self._conn = db
        self.signer = signer
        self.origin = origin
        self.interval_s = interval_s
        self.max_receipts = max_receipts
        self._last_try = 0.0
        ensure_schema(self.db)

    @property
    def db(self) -> sqlite3.Connection:
        c = self._conn
        return c if isinstance(c, sqlite3.Connection) else c()

    # -- reading ------------------------------------------------------------------------
    def size(self) -> int:
        r = self.db.execute("SELECT MAX(idx) FROM receipts").fetchone()
        return 0 if r is None or r[0] is None else int(r[0]) + 1

    def rows(self, first: int = 0, end: int | None = None) -> Iterator[ReceiptRow]:
        sql = f"SELECT {_COLS} FROM receipts WHERE idx >= ?"
        args: list[int] = [first]
        if end is not None:
            sql += " AND idx < ?"
            args.append(end)
        for r in self.db.execute(sql + " ORDER BY idx", args):
            yield _row(r)

    def by_frame(self, frame_hash: bytes) -> ReceiptRow | None:
        """The first receipt of a frame (its first arrival)."""
        r = self.db.execute(f"SELECT {_COLS} FROM receipts WHERE frame_hash = ? "
                            "ORDER BY idx LIMIT 1", (frame_hash,)).fetchone()
        return None if r is None else _row(r)

    def by_gateway(self, gateway_id: str, seq_lo: int, seq_hi: int) -> list[ReceiptRow]:
        return [_row(r) for r in self.db.execute(
            f"SELECT {_COLS} FROM receipts WHERE gateway_id = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq, idx", (gateway_id, seq_lo, seq_hi))]

    def checkpoints(self, since: int = 0) -> list[Checkpoint]:
        return [parse_checkpoint(r[0]) for r in self.db.execute(
            "SELECT doc FROM checkpoints WHERE number >= ? ORDER BY number", (since,))]

    def latest_checkpoint(self) -> Checkpoint | None:
        r = self.db.execute("SELECT doc FROM checkpoints ORDER BY number DESC LIMIT 1"
                            ).fetchone()
        return None if r is None else parse_checkpoint(r[0])

    def checkpoint_for(self, index: int) -> Checkpoint | None:
        r = self.db.execute("SELECT doc FROM checkpoints WHERE first <= ? AND ? < first + size",
                            (index, index)).fetchone()
        return None if r is None else parse_checkpoint(r[0])

    def proof(self, index: int) -> tuple[InclusionProof, Checkpoint] | None:
        """The inclusion proof of receipt ``index`` in its checkpoint (None: not yet
        checkpointed)."""
        cp = self.checkpoint_for(index)
        if cp is None:
            return None
        hashes = [bytes(r[0]) for r in self.db.execute(
            "SELECT leaf_hash FROM receipts WHERE idx >= ? AND idx < ? ORDER BY idx",
            (cp.first, cp.end))]
        rows = list(self.rows(index, index + 1))
        r = rows[0]
        path = merkle.inclusion_path(hashes, index - cp.first)
        return InclusionProof(cp.number, index, r.frame_hash, r.received_ms, tuple(path)), cp

    def proofs(self, indexes: list[int]) -> dict[int, tuple[InclusionProof, Checkpoint]]:
        """Inclusion proofs of many receipts, each checkpoint's leaves read once."""
        out: dict[int, tuple[InclusionProof, Checkpoint]] = {}
        if not indexes:
            return out
        rows = {r.index: r for r in self.rows(min(indexes), max(indexes) + 1)}
        cps = [parse_checkpoint(r[0]) for r in self.db.execute(
            "SELECT doc FROM checkpoints WHERE first + size > ? AND first <= ? ORDER BY number",
            (min(indexes), max(indexes)))]
        idx = sorted(indexes)
        for cp in cps:
            mine = idx[bisect.bisect_left(idx, cp.first):bisect.bisect_left(idx, cp.end)]
            if not mine:
                continue
            hashes = [bytes(r[0]) for r in self.db.execute(
                "SELECT leaf_hash FROM receipts WHERE idx >= ? AND idx < ? ORDER BY idx",
                (cp.first, cp.end))]
            for i in mine:
                r = rows[i]
                path = merkle.inclusion_path(hashes, i - cp.first)
                out[i] = (InclusionProof(cp.number, i, r.frame_hash, r.received_ms,
                                         tuple(path)), cp)
        return out

    # -- checkpoints --------------------------------------------------------------------
    def maybe_checkpoint(self, now: float | None = None, force: bool = False
                         ) -> Checkpoint | None:
        """Sign a checkpoint if one is due (interval elapsed, or many receipts waiting)."""
        if self.signer is None:
            return None
        now = time.time() if now is None else now
        mono = time.monotonic()
        if not force and mono - self._last_try < min(1.0, self.interval_s):
            return None
        self._last_try = mono
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cp = self._checkpoint(now, force)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        if cp is not None:
            log.info("checkpoint %d: receipts %d..%d, root %s", cp.number, cp.first,
                     cp.end - 1, cp.root.hex()[:16])
        return cp

    def _checkpoint(self, now: float, force: bool) -> Checkpoint | None:
        assert self.signer is not None
        last = self.db.execute("SELECT number, first + size, time_ms, hash FROM checkpoints "
                               "ORDER BY number DESC LIMIT 1").fetchone()
        if last is None:
            number, first, last_ms, previous = 0, 0, 0, ZERO32
        else:
            number, first, last_ms = int(last[0]) + 1, int(last[1]), int(last[2])
            previous = bytes(last[3])
        end = self.size()
        n = end - first
        if n <= 0:
            return None
        due = force or n >= self.max_receipts or now * 1000 - last_ms >= self.interval_s * 1000
        if not due:
            return None
        end = min(end, first + self.max_receipts)
        hashes: list[bytes] = []
        head = ZERO32
        for lh, hd in self.db.execute("SELECT leaf_hash, head FROM receipts WHERE idx >= ? "
                                      "AND idx < ? ORDER BY idx", (first, end)):
            hashes.append(bytes(lh))
            head = bytes(hd)
        cp = sign_checkpoint(self.signer, origin=self.origin, number=number, first=first,
                             size=len(hashes), root=merkle.root_from_leaf_hashes(hashes),
                             log_head=head, previous=previous, time_ms=int(now * 1000))
        self.db.execute("INSERT INTO checkpoints(number, first, size, time_ms, hash, doc) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (cp.number, cp.first, cp.size,
                                                      cp.time_ms, cp.hash, cp.dumps()))
        return cp


@dataclass(slots=True)
class LogCheck:
    """Result of re-deriving the log: chain heads, leaf hashes and checkpoint roots."""

    receipts: int = 0
    checkpoints: int = 0
    problems: list[str] | None = None


def check_log(rl: ReceiptLog, public_key: object | None = None) -> LogCheck:
    """Recompute every leaf hash, chain head and checkpoint root from the rows."""
    from stationseal.checkpoint import CheckpointError, verify_checkpoint

    out = LogCheck(problems=[])
    assert out.problems is not None
    head = ZERO32
    expect = 0
    leaf_hashes: list[bytes] = []
    for r in rl.rows():
        if r.index != expect:
            out.problems.append(f"receipt index {expect} missing (next is {r.index})")
            expect = r.index
        lh = receipt_leaf_hash(r.frame_hash, r.received_ms)
        if lh != r.leaf_hash:
            out.problems.append(f"receipt {r.index}: leaf hash does not match its content")
        head = chain_next(head, lh)
        if head != r.head:
            out.problems.append(f"receipt {r.index}: chain head does not match")
            head = r.head
        leaf_hashes.append(lh)
        expect += 1
    out.receipts = expect
    prev = ZERO32
    for cp in rl.checkpoints():
        out.checkpoints += 1
        if public_key is not None:
            try:
                verify_checkpoint(cp, public_key)
            except CheckpointError as e:
                out.problems.append(str(e))
        if cp.previous != prev:
            out.problems.append(f"checkpoint {cp.number}: previous does not name "
                                f"checkpoint {cp.number - 1}")
        prev = cp.hash
        if cp.end > len(leaf_hashes):
            out.problems.append(f"checkpoint {cp.number}: covers receipts the log lacks")
            continue
        if merkle.root_from_leaf_hashes(leaf_hashes[cp.first:cp.end]) != cp.root:
            out.problems.append(f"checkpoint {cp.number}: root does not match the log")
        if cp.size and cp.log_head != rl_head_at(rl, cp.end - 1):
            out.problems.append(f"checkpoint {cp.number}: log head does not match the log")
    return out


def rl_head_at(rl: ReceiptLog, index: int) -> bytes:
    r = rl.db.execute("SELECT head FROM receipts WHERE idx = ?", (index,)).fetchone()
    return ZERO32 if r is None else bytes(r[0])
