"""Durable local state of the ingest service, in one SQLite file (WAL mode).

Holds what must survive a ``kill -9`` and is not time series: chain tracker state, the
quarantine of refused frames (raw bytes kept as evidence), the webhook outbox, lines the
database refused, and the alert book used to merge repeated firings. Several worker
processes share the file; each transaction is short, and ``synchronous=FULL`` because an
MQTT message is acknowledged only after the transaction that records it has committed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_state (
    gateway_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    received   REAL NOT NULL,
    source     TEXT NOT NULL,
    topic      TEXT,
    reason     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    gateway_id TEXT,
    site       TEXT,
    seq        INTEGER,
    key_id     TEXT,
    payload    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_reason ON quarantine(reason);
CREATE INDEX IF NOT EXISTS quarantine_gateway ON quarantine(gateway_id);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    target     TEXT NOT NULL,
    body       BLOB NOT NULL,
    created    REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_try   REAL NOT NULL,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS write_rejects (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    line    TEXT NOT NULL,
    error   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    key        TEXT PRIMARY KEY,
    alert      TEXT NOT NULL,
    count      INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL
);
"""


@dataclass(slots=True)
class QuarantineRow:
    id: int
    received: float
    source: str
    topic: str | None
    reason: str
    detail: str
    gateway_id: str | None
    site: str | None
    seq: int | None
    key_id: str | None
    payload: bytes

    def summary(self) -> dict[str, Any]:
        from stationseal.records import to_rfc3339

        return {
            "id": self.id,
            "received": to_rfc3339(self.received),
            "source": self.source,
            "topic": self.topic,
            "reason": self.reason,
            "detail": self.detail,
            "gateway_id": self.gateway_id,
            "site": self.site,
            "seq": self.seq,
            "key_id": self.key_id,
            "bytes": len(self.payload),
        }


@dataclass(slots=True)
class OutboxRow:
    id: int
    target: str
    body: bytes
    created: float
    attempts: int
    next_try: float
    last_error: str | None


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        from ingest.custody.log import ensure_schema

        self._db().executescript(_SCHEMA)
        ensure_schema(self._db())

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, et: object, ev: object, tb: object) -> None:
            if et is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def tx(self) -> Store._Tx:
        return Store._Tx(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- chain state ----------------------------------------------------------------
    def load_chain(self, gateway_id: str) -> dict[str, Any] | None:
        row = self._db().execute(
            "SELECT state FROM chain_state WHERE gateway_id = ?", (gateway_id,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    # -- commit of one batch ---------------------------------------------------------
    def commit_batch(
        self,
        chain: dict[str, dict[str, Any]],
        outbox: list[tuple[str, bytes]],
        rejects: list[tuple[str, str]],
        alerts: list[tuple[str, str, int, float, float]],
        receipts: list[tuple[bytes, str, int, int]] | None = None,
    ) -> None:
        """Everything a written batch changes locally, in one transaction (the receipts
        too: nothing acknowledged is missing from the receipt log)."""
        from ingest.custody.log import append

        now = time.time()
        with self.tx() as db:
            append(db, receipts or [])
            db.executemany(
                "INSERT INTO chain_state(gateway_id, state, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(gateway_id) DO UPDATE SET state = excluded.state, "
                "updated = excluded.updated",
                [(gw, json.dumps(st, separators=(",", ":")), now) for gw, st in chain.items()],
            )
            db.executemany(
                "INSERT INTO outbox(target, body, created, next_try) VALUES (?, ?, ?, ?)",
                [(t, b, now, now) for t, b in outbox],
            )
            db.executemany(
                "INSERT INTO write_rejects(created, line, error) VALUES (?, ?, ?)",
                [(now, ln, err) for ln, err in rejects],
            )
            db.executemany(
                "INSERT INTO alerts(key, alert, count, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET alert = excluded.alert,"
                " count = excluded.count, last_seen = excluded.last_seen",
                alerts,
            )

    # -- quarantine -----------------------------------------------------------------
    def quarantine(
        self,
        *,
        received: float,
        source: str,
        topic: str | None,
        reason: str,
        detail: str,
        payload: bytes,
        gateway_id: str | None = None,
        site: str | None = None,
        seq: int | None = None,
        key_id: str | None = None,
    ) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO quarantine(received, source, topic, reason, detail, gateway_id,"
                " site, seq, key_id, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (received, source, topic, reason, detail, gateway_id, site, seq, key_id,
                 payload),
            )
            return int(cur.lastrowid or 0)

    def quarantine_rows(
        self,
        *,
        reason: str | None = None,
        gateway_id: str | None = None,
        since: float | None = None,
        ids: list[int] | None = None,
        limit: int | None = None,
    ) -> Iterator[QuarantineRow]:
        where: list[str] = []
        args: list[Any] = []
        if reason:
            where.append("reason = ?")
            args.append(reason)
        if gateway_id:
            where.append("gateway_id = ?")
            args.append(gateway_id)
        if since is not None:
            where.append("received >= ?")
            args.append(since)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args += ids
        sql = ("SELECT id, received, source, topic, reason, detail, gateway_id, site, seq, "
               "key_id, payload FROM quarantine")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        for r in self._db().execute(sql, args):
            yield QuarantineRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                                bytes(r[10]))

    def quarantine_counts(self) -> dict[str, int]:
        return {
            r[0]: int(r[1])
            for r in self._db().execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason")
        }

    # -- webhook outbox -------------------------------------------------------------
    def outbox_due(self, now: float, limit: int = 50) -> list[OutboxRow]:
        return [
            OutboxRow(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6])
            for r in self._db().execute(
                "SELECT id, target, body, created, attempts, next_try, last_error FROM outbox"
                " WHERE next_try <= ? ORDER BY id LIMIT ?", (now, limit))
        ]

    def outbox_done(self, row_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def outbox_retry(self, row_id: int, next_try: float, error: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ?, last_error = ? "
                "WHERE id = ?", (next_try, error[:1000], row_id))

    def outbox_size(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # -- alerts / rejects -----------------------------------------------------------
    def alert_state(self, key: str) -> tuple[int, float] | None:
        row = self._db().execute(
            "SELECT count, first_seen FROM alerts WHERE key = ?", (key,)).fetchone()
        return None if row is None else (int(row[0]), float(row[1]))

    def rejects(self) -> list[tuple[int, float, str, str]]:
        return [(int(r[0]), float(r[1]), str(r[2]), str(r[3])) for r in self._db().execute(
            "SELECT id, created, line, error FROM write_rejects ORDER BY id")]
