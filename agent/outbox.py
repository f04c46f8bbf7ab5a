"""The gateway's store-and-forward queue: sealed frames in SQLite (WAL), nothing else.

Durability contract (docs/agent.md, "Durability"):

* A frame is inserted in the same transaction that advances the persisted sequence number
  and last frame hash, so after any crash the counter and the chain agree with the
  stored frames and a sequence number is never sealed twice for frames anyone has seen.
* With ``sync="full"`` every frame's commit is fsynced before it can be sent. With
  ``sync="normal"`` commits are fsynced at most every ``sync_interval_s`` (one fsync for
  several frames, fewer SD-card writes); frames are handed to the uplink only once
  durable (:attr:`Outbox.durable_seq`), so a frame lost to a power cut was never sent
  and its sequence number, sealed again after the restart, was never seen outside.
  ``sync="off"`` leaves writing back to the kernel and sends at once: a power cut may
  then lose frames already sent and re-use their sequence numbers (the central side
  reports a ``sequence_reset``). A process crash (kill -9) loses nothing in any mode:
  committed pages are in the kernel's cache.
* A frame is deleted only when it is confirmed delivered: by the ingest's end-to-end
  acknowledgement naming its sequence number and hash (docs/acks.md; the default), by
  the broker's PUBACK with reason "success" when the site is configured so (``confirm:
  broker``; "no matching subscribers" is never a delivery), or by the fsync of the
  export file. A frame the broker accepted but the ingest has not confirmed stays, with
  the time it was sent and when it is due to be sent again (``sent``, ``due``,
  ``attempts``): see :meth:`Outbox.mark_published`. Deletions and these marks are not
  fsynced on their own: losing one to a power cut means a frame is sent twice, which
  QoS 1 allows and the chain tracker recognises.
* The queue is bounded by bytes (payload plus a fixed per-row estimate) and by age. When
  either bound is exceeded, the oldest frames not currently in flight are removed in the
  same transaction that stores a frame carrying a signed ``data_dropped`` event per
  contiguous sequence range, so a drop is never silent and never unsigned.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import GATEWAY
from stationseal.chain import MAX_DROP_SPAN
from stationseal.frame import ZERO_HASH
from stationseal.records import Event

SCHEMA_VERSION = 2
#: Bytes a row costs beyond its payload (hash, integers, b-tree cell): counted against
#: ``max_bytes`` so a queue of tiny frames is bounded too.
ROW_OVERHEAD = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    gateway_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    boot_id BLOB,
    dropped_frames INTEGER NOT NULL DEFAULT 0,
    dropped_readings INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS frames (
    seq INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    readings INTEGER NOT NULL,
    hash BLOB NOT NULL,
    payload BLOB NOT NULL,
    sent REAL,
    due REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
"""

#: Columns of ``frames`` added in schema version 2 (end-to-end confirmation).
_V2_COLUMNS = (("sent", "REAL"), ("due", "REAL"), ("attempts", "INTEGER NOT NULL DEFAULT 0"))
#: Resend back-off doubles per attempt up to this many doublings.
MAX_DOUBLINGS = 6


class OutboxError(Exception):
    """The outbox file cannot be used (locked by another agent, other gateway, newer
    schema); the message names the file."""


@dataclass(slots=True, frozen=True)
class DropRun:
    """A contiguous range of sequence numbers removed from the outbox unsent."""

    first_seq: int
    last_seq: int
    frames: int
    readings: int
    last_hash: bytes
    nbytes: int

    def event(self, t: float) -> Event:
        # Exactly the keys docs/wire-format.md names: the chain tracker links the frame
        # after ``last_seq`` to ``last_hash``.
        return Event(
            GATEWAY,
            "data_dropped",
            t,
            {
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "frames": self.frames,
                "readings": self.readings,
                "last_hash": self.last_hash.hex(),
            },
        )


@dataclass(slots=True)
class OutboxStats:
    frames: int
    bytes: int
    oldest_created: float | None
    seq: int
    durable_seq: int
    dropped_frames: int
    dropped_readings: int

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "oldest_unsent_age_s": None if self.oldest_created is None
            else round(max(0.0, now - self.oldest_created), 3),
            "seq": self.seq,
            "durable_seq": self.durable_seq,
            "dropped_frames": self.dropped_frames,
            "dropped_readings": self.dropped_readings,
        }


class Outbox:
    """Single-threaded: every method runs on the agent's event loop thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        gateway_id: str,
        max_bytes: int,
        max_age_s: float,
        sync: str = "full",
        sync_interval_s: float = 1.0,
        low_water: float = 0.9,
    ) -> None:
        if sync not in ("full", "normal", "off"):
            raise ValueError(f"outbox sync {sync!r}: choose 'full', 'normal' or 'off'")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.sync_mode = sync
        self.sync_interval_s = sync_interval_s
        #: After a byte-bound drop the queue is cut to this share of ``max_bytes``, so
        #: drops come in a few large signed ranges, not one event per frame.
        self.low_water = low_water
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.path)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None)
            self._open(gateway_id)
        except sqlite3.DatabaseError as e:
            os.close(self._lock_fd)
            raise OutboxError(f"{self.path}: not a usable outbox database: {e}") from None
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self, gateway_id: str) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise OutboxError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        # Keep the WAL file from growing past a few MB on the SD card after a long burst.
        db.execute("PRAGMA journal_size_limit=4194304")
        # The access pattern is append at the tail, read and delete at the head: a small
        # page cache does (the default would take 2 MB of the gateway's RAM).
        db.execute("PRAGMA cache_size=-256")
        ver = db.execute("PRAGMA user_version").fetchone()[0]
        if ver not in (0, 1, SCHEMA_VERSION):
            raise OutboxError(f"{self.path}: schema version {ver} is newer than this agent "
                              f"({SCHEMA_VERSION})")
        db.executescript(_SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(frames)")}
        for name, decl in _V2_COLUMNS:
            if name not in have:  # an outbox written by a version-1 agent
                db.execute(f"ALTER TABLE frames ADD COLUMN {name} {decl}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        row = db.execute(
            "SELECT gateway_id, seq, last_hash, boot_id, dropped_frames, dropped_readings "
            "FROM meta WHERE id = 1"
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO meta (id, gateway_id, seq, last_hash, created) VALUES (1,?,0,?,?)",
                (gateway_id, ZERO_HASH, time.time()),
            )
            row = (gateway_id, 0, ZERO_HASH, None, 0, 0)
        if row[0] != gateway_id:
            raise OutboxError(
                f"{self.path}: outbox belongs to gateway {row[0]!r}, not {gateway_id!r}; "
                "a gateway's chain must never continue under another identity"
            )
        self.gateway_id = gateway_id
        #: Sending state changes not yet written, applied with the next transaction:
        #: seq -> (sent time or None, time of the mark, base delay before it is due).
        self._marks: dict[int, tuple[float | None, float, float]] = {}
        #: (sent before, due): frames overtaken by a confirmed later one, due soon.
        self._expedite: tuple[float, float] | None = None
        self.seq: int = int(row[1])
        self.last_hash: bytes = bytes(row[2])
        self.previous_boot_id: bytes | None = None if row[3] is None else bytes(row[3])
        self.dropped_frames: int = int(row[4])
        self.dropped_readings: int = int(row[5])
        n, b = db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames"
                          ).fetchone()
        self.frames: int = int(n)
        self.bytes: int = int(b) + ROW_OVERHEAD * self.frames
        # Whatever a previous (killed) process committed may still sit in the page cache
        # only: make it durable before any of it is sent.
        self._commit_synced("UPDATE meta SET created = created WHERE id = 1")
        self.durable_seq: int = self.seq
        self._last_sync = time.monotonic()
        db.execute("PRAGMA synchronous=" + ("FULL" if self.sync_mode == "full" else "NORMAL"))

    def _commit_synced(self, sql: str) -> None:
        db = self._db
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        db.execute(sql)
        db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------
    def append(
        self,
        *,
        seq: int,
        created: float,
        readings: int,
        frame_hash: bytes,
        payload: bytes,
        boot_id: bytes,
        drops: Iterable[DropRun] = (),
        delivered: Iterable[tuple[int, int]] = (),
    ) -> None:
        """Store one sealed frame, advance the chain state, remove ``drops`` (the frame
        carries their events) and delivered frames ``(seq, payload length)``: one
        transaction."""
        if seq != self.seq + 1:
            raise OutboxError(f"{self.path}: frame seq {seq} does not follow {self.seq}")
        db = self._db
        sync_now = self.sync_mode == "normal" and (
            time.monotonic() - self._last_sync >= self.sync_interval_s
        )
        if sync_now:
            db.execute("PRAGMA synchronous=FULL")
        drops = list(drops)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._delete_delivered(delivered)
                self._apply_marks()
                dropped_frames = dropped_readings = dropped_bytes = 0
                for r in drops:
                    db.execute("DELETE FROM frames WHERE seq BETWEEN ? AND ?",
                               (r.first_seq, r.last_seq))
                    dropped_frames += r.frames
                    dropped_readings += r.readings
                    dropped_bytes += r.nbytes
                db.execute(
                    "INSERT INTO frames (seq, created, readings, hash, payload) "
                    "VALUES (?,?,?,?,?)",
                    (seq, created, readings, frame_hash, payload),
                )
                db.execute(
                    "UPDATE meta SET seq = ?, last_hash = ?, boot_id = ?, "
                    "dropped_frames = dropped_frames + ?, "
                    "dropped_readings = dropped_readings + ? WHERE id = 1",
                    (seq, frame_hash, boot_id, dropped_frames, dropped_readings),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            if sync_now:
                db.execute("PRAGMA synchronous=NORMAL")
        self.seq = seq
        self.last_hash = frame_hash
        self.frames += 1 - dropped_frames - gone[0]
        self.bytes += len(payload) + ROW_OVERHEAD - dropped_bytes - gone[1]
        self.dropped_frames += dropped_frames
        self.dropped_readings += dropped_readings
        if self.sync_mode != "normal" or sync_now:
            self.durable_seq = seq
            self._last_sync = time.monotonic()

    def _delete_delivered(self, delivered: Iterable[tuple[int, int]]) -> tuple[int, int]:
        n = b = 0
        for seq, size in delivered:
            self._marks.pop(seq, None)
            if self._db.execute("DELETE FROM frames WHERE seq = ?", (seq,)).rowcount:
                n += 1
                b += size + ROW_OVERHEAD
        return n, b

    def delete_delivered(self, delivered: Iterable[tuple[int, int]]) -> None:
        """Remove delivered frames (and write pending sending marks) when no frame is
        being sealed to carry them."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            n, b = self._delete_delivered(delivered)
            self._apply_marks()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.frames -= n
        self.bytes -= b

    def sync_due(self) -> bool:
        return self.sync_mode == "normal" and self.durable_seq < self.seq and (
            time.monotonic() - self._last_sync >= self.sync_interval_s
        )

    def sync(self) -> None:
        """Make every committed frame durable (``sync="normal"``: the periodic fsync)."""
        if self.durable_seq == self.seq:
            return
        self._commit_synced("UPDATE meta SET created = created WHERE id = 1")
        self._db.execute("PRAGMA synchronous=" + ("FULL" if self.sync_mode == "full"
                                                  else "NORMAL"))
        self.durable_seq = self.seq
        self._last_sync = time.monotonic()

    # -- sending state (end-to-end confirmation) -------------------------------------
    def mark_published(self, seq: int, now: float, timeout_s: float) -> None:
        """The broker accepted frame ``seq`` (PUBACK "success") and the ingest has not
        confirmed it yet: it is not sent again before ``timeout_s * 2**attempts`` (or
        sooner, when a later frame is confirmed first: :meth:`expedite`)."""
        self._marks[seq] = (now, now, timeout_s)

    def mark_unrouted(self, seq: int, now: float, retry_s: float) -> None:
        """The broker had no subscriber for frame ``seq`` (PUBACK 0x10): nobody holds it;
        it is due again after ``retry_s * 2**attempts``."""
        self._marks[seq] = (None, now, retry_s)

    def expedite(self, sent_before: float, due: float) -> None:
        """Frames sent before ``sent_before`` and still unconfirmed were overtaken by a
        confirmed later frame: the ingest sees one gateway's frames in order, so they
        (or their confirmations) were lost; due again at ``due``."""
        cur = self._expedite
        self._expedite = (max(sent_before, cur[0]) if cur else sent_before,
                          min(due, cur[1]) if cur else due)

    @property
    def pending_marks(self) -> bool:
        return bool(self._marks) or self._expedite is not None

    def _apply_marks(self) -> None:
        """Inside the caller's transaction."""
        db = self._db
        for seq, (sent, at, delay) in self._marks.items():
            db.execute(
                "UPDATE frames SET sent = ?, due = ? + ? * (1 << min(attempts, ?)), "
                "attempts = attempts + 1 WHERE seq = ?",
                (sent, at, delay, MAX_DOUBLINGS, seq))
        self._marks.clear()
        if self._expedite is not None:
            before, due = self._expedite
            db.execute("UPDATE frames SET due = ? WHERE sent IS NOT NULL AND sent < ? "
                       "AND (due IS NULL OR due > ?)", (due, before, due))
            self._expedite = None

    def lookup(self, seq: int) -> tuple[bytes, int, float | None] | None:
        """(frame hash, payload length, time the broker accepted it) of a stored frame."""
        row = self._db.execute("SELECT hash, length(payload), sent FROM frames WHERE seq = ?",
                               (seq,)).fetchone()
        if row is None:
            return None
        mark = self._marks.get(seq)
        sent = mark[0] if mark is not None else (None if row[2] is None else float(row[2]))
        return bytes(row[0]), int(row[1]), sent

    def next_due(self, now: float) -> float | None:
        """Earliest time a frame waiting for its resend becomes due (after ``now``)."""
        row = self._db.execute("SELECT min(due) FROM frames WHERE due > ?", (now,)).fetchone()
        return None if row[0] is None else float(row[0])

    def awaiting(self) -> int:
        """Frames the broker accepted that the ingest has not confirmed yet."""
        n = int(self._db.execute("SELECT count(*) FROM frames WHERE sent IS NOT NULL"
                                 ).fetchone()[0])
        return n + sum(1 for m in self._marks.values() if m[0] is not None)

    # -- bounds --------------------------------------------------------------------
    def plan_drops(
        self,
        incoming: int,
        now: float,
        protect: Container[int] = (),
        *,
        check_age: bool = True,
    ) -> list[DropRun]:
        """Oldest frames to remove so that a new frame of ``incoming`` payload bytes fits
        the byte bound, plus frames older than ``max_age_s`` (when ``check_age``: the
        caller passes False while the wall clock is known to be wrong). Frames in
        ``protect`` (in flight) are kept: the broker may be acknowledging them."""
        need = self.bytes + incoming + ROW_OVERHEAD - self.max_bytes
        if need > 0:
            need = self.bytes + incoming + ROW_OVERHEAD - int(self.max_bytes * self.low_water)
        cutoff = now - self.max_age_s if check_age else None
        if need <= 0:
            if cutoff is None:
                return []
            oldest = self.oldest_created()
            if oldest is None or oldest >= cutoff:
                return []
        runs: list[DropRun] = []
        cur: list[Any] | None = None  # [first, last, frames, readings, hash, bytes]
        rows = self._db.execute(
            "SELECT seq, length(payload), readings, hash, created FROM frames ORDER BY seq"
        )
        for seq, size, nread, h, created in rows:
            if need <= 0 and (cutoff is None or created >= cutoff):
                break
            if seq in protect:
                continue
            cost = size + ROW_OVERHEAD
            need -= cost
            # A run is one signed drop event; one event may excuse at most MAX_DROP_SPAN
            # sequence numbers (docs/wire-format.md), so longer runs are split.
            if cur is not None and cur[1] == seq - 1 and cur[2] < MAX_DROP_SPAN:
                cur[1] = seq
                cur[2] += 1
                cur[3] += nread
                cur[4] = h
                cur[5] += cost
            else:
                if cur is not None:
                    runs.append(DropRun(cur[0], cur[1], cur[2], cur[3], bytes(cur[4]), cur[5]))
                cur = [seq, seq, 1, nread, h, cost]
        rows.close()
        if cur is not None:
            runs.append(DropRun(cur[0], cur[1], cur[2], cur[3], bytes(cur[4]), cur[5]))
        return runs

    # -- reading -------------------------------------------------------------------
    def fetch_after(self, after_seq: int, limit: int, up_to: int,
                    now: float | None = None) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored frames with ``after_seq < seq <= up_to``, oldest first;
        with ``now``, only those due to be sent (never sent, or their resend time has
        come) and not just marked."""
        if now is None:
            rows = self._db.execute(
                "SELECT seq, payload FROM frames WHERE seq > ? AND seq <= ? ORDER BY seq "
                "LIMIT ?", (after_seq, up_to, limit))
        else:
            rows = self._db.execute(
                "SELECT seq, payload FROM frames WHERE seq > ? AND seq <= ? "
                "AND (due IS NULL OR due <= ?) ORDER BY seq LIMIT ?",
                (after_seq, up_to, now, limit + len(self._marks)))
        marks = self._marks
        return [(int(s), bytes(p)) for s, p in rows if int(s) not in marks][:limit]

    def oldest_created(self) -> float | None:
        row = self._db.execute("SELECT created FROM frames ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def stats(self) -> OutboxStats:
        return OutboxStats(
            frames=self.frames,
            bytes=self.bytes,
            oldest_created=self.oldest_created(),
            seq=self.seq,
            durable_seq=self.durable_seq,
            dropped_frames=self.dropped_frames,
            dropped_readings=self.dropped_readings,
        )

    def close(self) -> None:
        """Sync, fold the WAL into the database and release the lock."""
        try:
            self.sync()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        finally:
            os.close(self._lock_fd)


def _lock(path: Path) -> int:
    """One agent per outbox: two processes appending would fork the chain."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutboxError(
            f"{path}: another agent process holds {lock_path}; stop it first"
        ) from None
    return fd
