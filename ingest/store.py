"""Durable local state of the ingest service, in one SQLite file (WAL mode).

Holds what must survive a ``kill -9`` and is not time series: chain tracker state, the
quarantine of refused frames (raw bytes kept as evidence), the webhook outbox, lines the
database refused, and the alert book used to merge repeated firings. Several worker
processes share the file; each transaction is short, and ``synchronous=FULL`` because an
MQTT message is acknowledged only after the transaction that records it has committed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
CREATE TABLE IF NOT EXISTS quarantine_overflow (
    src        TEXT NOT NULL,
    hour       INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    count      INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    last_digest BLOB NOT NULL,
    PRIMARY KEY (src, hour, reason)
);
CREATE TABLE IF NOT EXISTS series (
    key        TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL,
    first_seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_gateway ON series(gateway_id, first_seen);
CREATE TABLE IF NOT EXISTS mqtt_session (
    client_id  TEXT PRIMARY KEY,
    expiry_s   INTEGER NOT NULL,
    last_seen  REAL NOT NULL
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


#: Columns added after the first release (migrated in place by :meth:`Store._migrate`).
_QUARANTINE_EXTRA = (
    ("src", "TEXT"),  # accounting source: "mqtt:<topic gateway>", "hj212:<peer address>"
    ("size", "INTEGER"),  # full payload size (the payload column may hold only the head)
    ("digest", "BLOB"),  # SHA-256 of the full payload
    ("truncated", "INTEGER NOT NULL DEFAULT 0"),  # 1: payload holds only the first bytes
)


class Digested(bytes):
    """The first bytes of a payload too large (or too many) to keep, with the full size and
    SHA-256: what the quarantine stores instead of the payload. A ``bytes`` so it passes
    through code that only forwards payloads."""

    size: int
    digest: bytes

    def __new__(cls, payload: bytes | bytearray, head: int) -> Digested:
        self = super().__new__(cls, payload[:head])
        self.size = len(payload)
        self.digest = hashlib.sha256(payload).digest()
        return self


@dataclass(slots=True)
class QuarantineLimits:
    """Per-source bounds of the quarantine (ingest.config.QuarantineConfig)."""

    max_bytes_per_source_day: int = 64 * 1024 * 1024
    max_per_source_minute: int = 120
    digest_per_source_minute: int = 600
    head_bytes: int = 256

    @classmethod
    def from_config(cls, cfg: Any) -> QuarantineLimits:
        return cls(cfg.max_bytes_per_source_day, cfg.max_per_source_minute,
                   cfg.digest_per_source_minute, cfg.head_bytes)


@dataclass(slots=True)
class _Budget:
    """One source's budgets: bytes of full payloads per hour for the last 24 hours, and
    two token buckets (full rows, digest rows) refilled per minute."""

    hours: dict[int, int] = field(default_factory=dict)
    full_tokens: float = 0.0
    digest_tokens: float = 0.0
    t: float = 0.0

    def day_bytes(self, hour: int) -> int:
        for h in [h for h in self.hours if h <= hour - 24]:
            del self.hours[h]
        return sum(self.hours.values())


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
    size: int | None = None
    digest: bytes | None = None
    truncated: bool = False

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
            "bytes": len(self.payload) if self.size is None else self.size,
            "sha256": (self.digest or hashlib.sha256(self.payload).digest()).hex(),
            "truncated": self.truncated,
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
        self._migrate()
        ensure_schema(self._db())
        self.limits = QuarantineLimits()
        self._budgets: dict[str, _Budget] = {}
        self._budget_lock = threading.Lock()

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

    def _migrate(self) -> None:
        # In one write transaction: several workers starting together on a new state
        # database would otherwise both see a column missing and the second ALTER fail.
        with self.tx() as db:
            have = {r[1] for r in db.execute("PRAGMA table_info(quarantine)")}
            for name, decl in _QUARANTINE_EXTRA:
                if name not in have:
                    db.execute(f"ALTER TABLE quarantine ADD COLUMN {name} {decl}")
            db.execute("CREATE INDEX IF NOT EXISTS quarantine_src ON quarantine(src, received)")

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
        series: list[tuple[str, str, float]] | None = None,
    ) -> None:
        """Everything a written batch changes locally, in one transaction (the receipts
        too: nothing acknowledged is missing from the receipt log)."""
        from ingest.custody.log import append

        now = time.time()
        with self.tx() as db:
            append(db, receipts or [])
            if series:
                db.executemany("INSERT OR IGNORE INTO series(key, gateway_id, first_seen) "
                               "VALUES (?, ?, ?)", series)
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

    def received_before(self, gateway_id: str, seq: int, frame_hash: bytes) -> bool:
        """Whether this exact frame has a receipt: a redelivery, not a replay."""
        return self._db().execute(
            "SELECT 1 FROM receipts WHERE gateway_id = ? AND seq = ? AND frame_hash = ? "
            "LIMIT 1", (gateway_id, seq, frame_hash)).fetchone() is not None
    # -- MQTT session bookkeeping --------------------------------------------------
    def mqtt_session(self, key: str) -> tuple[int, float] | None:
        """(session expiry, last time connected) of a worker's broker session."""
        row = self._db().execute("SELECT expiry_s, last_seen FROM mqtt_session WHERE "
                                 "client_id = ?", (key,)).fetchone()
        return None if row is None else (int(row[0]), float(row[1]))

    def touch_mqtt_session(self, key: str, expiry_s: int, now: float) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO mqtt_session(client_id, expiry_s, last_seen) VALUES "
                       "(?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET expiry_s = "
                       "excluded.expiry_s, last_seen = excluded.last_seen",
                       (key, expiry_s, now))

    # -- series -----------------------------------------------------------------------
    def known_series(self, gateway_id: str) -> set[str]:
        return {str(r[0]) for r in self._db().execute(
            "SELECT key FROM series WHERE gateway_id = ?", (gateway_id,))}

    def series_created_since(self, gateway_id: str, since: float) -> int:
        return int(self._db().execute(
            "SELECT COUNT(*) FROM series WHERE gateway_id = ? AND first_seen >= ?",
            (gateway_id, since)).fetchone()[0])

    # -- quarantine -----------------------------------------------------------------
    def _budget(self, src: str, now: float) -> _Budget:
        b = self._budgets.get(src)
        if b is None:
            lim = self.limits
            b = _Budget(full_tokens=lim.max_per_source_minute,
                        digest_tokens=lim.digest_per_source_minute, t=now)
            # What this source already has in the last 24 hours counts (a restart must
            # not reset the budget).
            for hour, nbytes in self._db().execute(
                    "SELECT CAST(received / 3600 AS INTEGER), SUM(length(payload)) "
                    "FROM quarantine WHERE src = ? AND received >= ? AND truncated = 0 "
                    "GROUP BY 1", (src, now - 86400)):
                b.hours[int(hour)] = int(nbytes or 0)
            if len(self._budgets) > 100_000:  # unauthenticated sources: bound the map
                self._budgets.clear()
            self._budgets[src] = b
        return b

    def _admit(self, src: str, size: int, now: float, digested: bool) -> str:
        """``full``, ``digest`` or ``count``: how much of this payload is kept."""
        lim = self.limits
        with self._budget_lock:
            b = self._budget(src, now)
            dt = max(0.0, now - b.t)
            b.t = now
            b.full_tokens = min(lim.max_per_source_minute,
                                b.full_tokens + dt * lim.max_per_source_minute / 60)
            b.digest_tokens = min(lim.digest_per_source_minute,
                                  b.digest_tokens + dt * lim.digest_per_source_minute / 60)
            hour = int(now // 3600)
            if (not digested and b.full_tokens >= 1
                    and b.day_bytes(hour) + size <= lim.max_bytes_per_source_day):
                b.full_tokens -= 1
                b.hours[hour] = b.hours.get(hour, 0) + size
                return "full"
            if b.digest_tokens >= 1:
                b.digest_tokens -= 1
                return "digest"
            return "count"

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
        src: str | None = None,
    ) -> int:
        """Keep a refused payload as evidence, within the per-source bounds: the full
        payload; past the budget or rate its digest and first bytes (``truncated``);
        past a second rate only a count per source, hour and reason. Returns the row id
        (0 when only counted). ``src`` is the accounting source; by default the gateway
        of the topic (authenticated by the broker), not the one the payload claims."""
        if src is None:
            from stationseal.export import gateway_of_topic

            src = f"{source}:{(gateway_of_topic(topic) if topic else None) or gateway_id or '-'}"
        digested = isinstance(payload, Digested)
        size = payload.size if isinstance(payload, Digested) else len(payload)
        mode = self._admit(src, size, received, digested)
        if mode == "full":
            keep, digest, truncated = bytes(payload), hashlib.sha256(payload).digest(), 0
        else:
            d = payload if isinstance(payload, Digested) else Digested(payload,
                                                                       self.limits.head_bytes)
            keep, digest, truncated = bytes(d[: self.limits.head_bytes]), d.digest, 1
        if mode == "count":
            with self.tx() as db:
                db.execute(
                    "INSERT INTO quarantine_overflow(src, hour, reason, count, bytes, "
                    "last_digest) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(src, hour, reason) "
                    "DO UPDATE SET count = count + 1, bytes = bytes + excluded.bytes, "
                    "last_digest = excluded.last_digest",
                    (src, int(received // 3600), reason, size, digest))
            return 0
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO quarantine(received, source, topic, reason, detail, gateway_id,"
                " site, seq, key_id, payload, src, size, digest, truncated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (received, source, topic, reason, detail, gateway_id, site, seq, key_id,
                 keep, src, size, digest, truncated),
            )
            return int(cur.lastrowid or 0)

    def quarantine_overflow(self) -> list[tuple[str, int, str, int, int, bytes]]:
        """(src, hour, reason, count, bytes, last digest) of payloads only counted."""
        return [(str(r[0]), int(r[1]), str(r[2]), int(r[3]), int(r[4]), bytes(r[5]))
                for r in self._db().execute(
                    "SELECT src, hour, reason, count, bytes, last_digest "
                    "FROM quarantine_overflow ORDER BY hour, src, reason")]

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
               "key_id, payload, size, digest, truncated FROM quarantine")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        for r in self._db().execute(sql, args):
            yield QuarantineRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                                bytes(r[10]), r[11], None if r[12] is None else bytes(r[12]),
                                bool(r[13]))

    def quarantine_counts(self) -> dict[str, int]:
        """Payloads quarantined per reason, whether kept whole, as a digest or counted."""
        out: dict[str, int] = {}
        for r in self._db().execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason UNION ALL "
                "SELECT reason, SUM(count) FROM quarantine_overflow GROUP BY reason"):
            out[r[0]] = out.get(r[0], 0) + int(r[1])
        return dict(sorted(out.items()))

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
