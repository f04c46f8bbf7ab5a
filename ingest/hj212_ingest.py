"""HJ 212 straight into ingest, for legacy sites that have no gateway.

Such a site's data logger is configured with the ingest host as one more upper platform.
Its frames carry no signature (the HJ 212 CRC catches line noise only), so their readings
are stored **unsigned**: same measurement and canonical signals as signed readings, the
tag ``trust=unsigned`` and the logger's MN instead of a gateway (docs/influx-schema.md).
They are useful for supervision dashboards and a migration path, never evidence of the
kind a signed reading is.

Per frame, in this order: the MN is looked up (unknown MN: the raw frame goes to the
quarantine, source ``hj212``); a repeat of a stored (MN, CN, QN, PNO) is not stored again;
the readings (stationseal/hj212/readings.py, the same mapping as the gateway's), an
``hj212_frame`` event with the raw frame and, for data re-sent for a time already
reported, ``flag_changed`` / ``reported_revision`` events are written to InfluxDB
(retrying while it is down); the frame is recorded as stored; and only then does the
listener answer (9014 when the Flag A bit asks for it). A logger therefore resends
whatever was not stored, and nothing is stored twice.

The listener runs on its own thread and event loop beside the MQTT worker threads;
worker 0 of a sharded service runs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import zlib
from pathlib import Path

from ingest.config import ConfigError, HJ212IngestConfig, HJ212LoggerConfig, IngestConfig
from ingest.influx import ReliableWriter, Stopped, make_writer
from ingest.lineproto import line
from ingest.metrics import Metrics
from ingest.store import Store
from stationseal.hj212 import (
    Frame,
    HJ212Connection,
    HJ212Error,
    HJ212Listener,
    Reassembler,
    StreamError,
)
from stationseal.hj212.readings import (
    RevisionTracker,
    convert,
    frame_event,
    instrument_for,
    is_data_command,
)
from stationseal.records import Event, Reading

log = logging.getLogger("stationseal.ingest.hj212")

TRUST_UNSIGNED = "unsigned"
_MAX_EXACT = 2**53


def point_ts(t: float, qn: str, k: int = 0) -> int:
    """Reading time in ms, plus a sub-millisecond part from the QN: a resend (same QN)
    overwrites its own points, a revision (new QN, same DataTime) is stored beside them."""
    return round(t * 1000) * 1_000_000 + (zlib.crc32(qn.encode()) % 1000) * 1000 + min(k, 999)


def reading_line(r: Reading, *, site: str, mn: str, cn: str, qn: str, k: int = 0) -> str:
    tags = {"site": site, "instrument": r.instrument, "signal": r.signal, "unit": r.unit,
            "mn": mn, "trust": TRUST_UNSIGNED}
    fields: dict[str, float | int | str] = {}
    v = r.value
    if isinstance(v, float | int) and not isinstance(v, bool) and abs(v) <= _MAX_EXACT:
        fields["value"] = float(v)
    else:
        fields["text"] = str(v)
    fields["quality"] = r.quality
    fields["qn"] = qn
    fields["cn"] = cn
    if r.raw is not None:
        fields["raw"] = r.raw.decode("utf-8", "backslashreplace")
    return line("reading", tags, fields, point_ts(r.time, qn, k))


def event_line(e: Event, *, site: str, mn: str, qn: str, k: int = 0) -> str:
    tags = {"site": site, "instrument": e.instrument, "kind": e.kind, "mn": mn,
            "trust": TRUST_UNSIGNED}
    detail = json.dumps(e.detail, sort_keys=True, default=str, separators=(",", ":"),
                        ensure_ascii=False)
    return line("event", tags, {"detail": detail, "qn": qn}, point_ts(e.time, qn, k))


def _src(conn: HJ212Connection) -> str:
    """Quarantine accounting source of an unauthenticated peer: its address (not the
    port, which a flooder changes with every connection)."""
    return f"hj212:{conn.peer.rsplit(':', 1)[0]}"


class _Seen:
    """(MN, CN, QN, PNO) of stored frames, in a small SQLite file of the state dir."""

    def __init__(self, path: Path, keep_s: float) -> None:
        self.path = path
        self.keep_s = keep_s
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (mn TEXT NOT NULL, cn TEXT NOT NULL,"
                        " qn TEXT NOT NULL, pno INTEGER NOT NULL, received REAL NOT NULL,"
                        " PRIMARY KEY (mn, cn, qn, pno))")
        self._pruned = 0.0
        self.lock = threading.Lock()

    def has(self, key: tuple[str, str, str, int]) -> bool:
        with self.lock:
            row = self.db.execute("SELECT 1 FROM seen WHERE mn=? AND cn=? AND qn=? AND pno=?",
                                  key).fetchone()
        return row is not None

    def add(self, key: tuple[str, str, str, int], now: float) -> None:
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, ?)", (*key, now))
            if now - self._pruned > 3600:
                self._pruned = now
                self.db.execute("DELETE FROM seen WHERE received < ?", (now - self.keep_s,))

    def close(self) -> None:
        with self.lock:
            self.db.close()


class HJ212Ingest:
    """The listener for legacy sites; ``start()`` / ``stop()`` from the ingest service."""

    def __init__(self, cfg: IngestConfig, store: Store, metrics: Metrics,
                 stop: threading.Event | None = None) -> None:
        if cfg.hj212 is None:
            raise ConfigError("hj212: section missing")
        self.cfg: HJ212IngestConfig = cfg.hj212
        self.store = store
        self.metrics = metrics
        self.stop_event = stop or threading.Event()
        self.loggers: dict[str, HJ212LoggerConfig] = {lg.mn: lg for lg in self.cfg.loggers}
        self.keys = {lg.mn: lg.resolved_key() for lg in self.cfg.loggers}
        self.raw = make_writer(cfg.influx)
        self.writer = ReliableWriter(self.raw, max_backoff_s=cfg.influx.max_backoff_s,
                                     stop=self.stop_event)
        self.seen = _Seen(cfg.state_dir / "hj212.db", self.cfg.dedup_days * 86400)
        self.revisions = RevisionTracker()
        self.reassembler = Reassembler()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: HJ212Listener | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = asyncio.Lock()

    @property
    def port(self) -> int:
        return self._listener.port if self._listener is not None else self.cfg.port

    def _key(self, mn: str) -> bytes | None:
        return self.keys.get(mn)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> HJ212Ingest:
        self._thread = threading.Thread(target=self._run, name="hj212", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ConfigError(f"hj212: cannot listen on {self.cfg.host}:{self.cfg.port}: "
                              f"{self._error}")
        log.info("HJ 212 listener for legacy sites on %s:%d (%d loggers)", self.cfg.host,
                 self.port, len(self.loggers))
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        c = self.cfg
        lst = HJ212Listener(self._on_frame, host=c.host, port=c.port,
                            on_error=self._on_error, sm4_key=self._key,
                            idle_timeout_s=c.idle_timeout_s, frame_timeout_s=c.frame_timeout_s,
                            max_connections=c.max_connections,
                            max_per_address=c.max_per_address)
        try:
            loop.run_until_complete(lst.start())
        except OSError as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._listener = lst
        self.metrics.gauge_fn("hj212_connections", lambda: len(lst.connections))
        self.metrics.gauge_fn("hj212_refused_connections", lambda: lst.refused)
        self.metrics.gauge_fn("hj212_evicted_connections", lambda: lst.evicted)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(lst.stop(timeout=2.0))
            loop.close()

    def stop(self) -> None:
        self.stop_event.set()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        for inc in self.reassembler.flush():
            log.warning("HJ 212: split frame QN=%s of %s incomplete at shutdown (packets are "
                        "stored as hj212_frame events)", inc.key[2], inc.key[0])
        self.raw.close()
        self.seen.close()

    # -- frames --------------------------------------------------------------------
    async def _on_error(self, err: StreamError, conn: HJ212Connection) -> None:
        self.metrics.inc("hj212_frames_total", result="undecodable")
        qid = await asyncio.to_thread(
            self.store.quarantine, received=time.time(), source="hj212", topic=None,
            reason="malformed", detail=f"HJ 212 from {conn.peer}: {err.error}",
            payload=err.raw, gateway_id=None, site=self._site_of(conn.mn), seq=None,
            key_id=None, src=_src(conn))
        log.warning("HJ 212 from %s: undecodable bytes quarantined (#%d): %s", conn.peer, qid,
                    err.error)

    def _site_of(self, mn: str | None) -> str | None:
        lg = self.loggers.get(mn or "")
        return lg.site if lg is not None else None

    async def _on_frame(self, frame: Frame, conn: HJ212Connection) -> None:
        """Store, then return (the listener answers); raising leaves it unanswered."""
        if frame.cn == "9015" or frame.cn.startswith("90"):
            return
        now = time.time()
        lg = self.loggers.get(frame.mn)
        if lg is None:
            conn.trusted = False  # first to go when the listener is full
            qid = await asyncio.to_thread(
                self.store.quarantine, received=now, source="hj212", topic=None,
                reason="unknown_mn", detail=f"MN {frame.mn} is not in hj212.loggers "
                f"(CN={frame.cn} QN={frame.qn} from {conn.peer})", payload=frame.raw,
                gateway_id=None, site=None, seq=None, key_id=None, src=_src(conn))
            self.metrics.inc("hj212_frames_total", result="unknown_mn")
            log.warning("HJ 212 frame from unknown MN %s quarantined (#%d)", frame.mn, qid)
            return
        key = (frame.mn, frame.cn, frame.qn or "", frame.pno or 0)
        async with self._lock:  # one frame at a time: dedup and revisions stay exact
            if frame.qn:
                dup: bool = await asyncio.to_thread(self.seen.has, key)
                if dup:
                    self.metrics.inc("hj212_frames_total", result="duplicate")
                    return
            lines = self._lines(frame, lg, now)
            try:
                rejected = await asyncio.to_thread(self.writer.write, lines)
            except Stopped:
                raise RuntimeError("shutting down before the frame was stored") from None
            if rejected:
                await asyncio.to_thread(self.store.commit_batch, {}, [], rejected, [])
                for ln, err in rejected[:3]:
                    log.error("InfluxDB refused an HJ 212 line (kept in state db): %s: %s",
                              err, ln[:200])
            if frame.qn:
                await asyncio.to_thread(self.seen.add, key, now)
            self.metrics.inc("hj212_frames_total", result="stored")

    def _lines(self, frame: Frame, lg: HJ212LoggerConfig, now: float) -> list[str]:
        site, mn, qn = lg.site, frame.mn, frame.qn or f"rx{round(now * 1000)}"
        inst = instrument_for(lg.instrument, frame.cn)
        events: list[Event] = []
        readings: list[Reading] = []
        conv = None
        if is_data_command(frame.cn):
            merged: Frame | None
            try:
                merged = self.reassembler.add(frame)
            except HJ212Error as e:
                merged = None
                events.append(Event(inst, "malformed_response", now, {"error": str(e)}))
            for inc in self.reassembler.expire():
                events.append(Event(inst, "malformed_response", now, {
                    "error": f"split frame QN={inc.key[2]} incomplete: {inc.reason}",
                    "missing": inc.missing}))
            if merged is not None:
                try:
                    conv = convert(merged, instrument=lg.instrument, received=now)
                except ValueError as e:
                    events.append(Event(inst, "malformed_response", now, {"error": str(e)}))
            if conv is not None:
                readings = conv.readings
                for rev in self.revisions.observe(mn, qn, conv, frame.resent):
                    events.append(rev.event(now))
                    self.metrics.inc("hj212_revisions_total",
                                     kind="flag" if rev.flag_changed else "value")
        events.insert(0, frame_event(frame, conv, now, inst))
        out: list[str] = []
        seen: dict[tuple[str, str, float], int] = {}
        for r in readings:
            k = seen.get((r.instrument, r.signal, r.time), 0)
            seen[(r.instrument, r.signal, r.time)] = k + 1
            out.append(reading_line(r, site=site, mn=mn, cn=frame.cn, qn=qn, k=k))
        for i, ev in enumerate(events):
            out.append(event_line(ev, site=site, mn=mn, qn=qn, k=i))
        self.metrics.inc("hj212_readings_total", len(readings))
        return out

