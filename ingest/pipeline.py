"""One frame in: verified, chain-checked, converted; shared by live ingest and import.

The pipeline is single-threaded by design: a gateway's frames must pass the chain
tracker and the detectors in order, and the tracker state that is persisted with a batch
must describe exactly the frames in the batches written so far. It accumulates a
:class:`Batch` (lines, acknowledgements, state changes); the caller writes the batch and
only then commits it (see ingest/service.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.alerts import SEVERITY_RANK, AlertBook, AlertUpdate, integrity_alert
from ingest.config import IngestConfig
from ingest.convert import LineBuilder, alert_line, frame_records, integrity_event, integrity_line
from ingest.detectors.base import Alert
from ingest.engine_hook import EngineAlert
from ingest.metrics import Metrics
from ingest.store import Store
from ingest.testcontext import LaneContexts
from stationseal.chain import ChainIssue, ChainTracker, arrival_findings, jsonable, parse_drop
from stationseal.export import frames_topic, gateway_of_topic, line_for
from stationseal.frame import Frame
from stationseal.records import Sample, SiteEvent, to_rfc3339
from stationseal.registry import AcceptedRegistry, AuthorityPin, KeyRegistry, RegistryError
from stationseal.verify import Rejected, verify_payload

log = logging.getLogger("stationseal.ingest")

#: Severity of each integrity finding. Duplicates are what QoS 1 does by design; a
#: verification failure or a second history is what tampering looks like.
SEVERITY: dict[str, str] = {
    "duplicate": "low",
    "gap": "medium",
    "bad_drop_event": "medium",
    "replay": "high",
    "fork": "high",
    "sequence_reset": "high",
    "oversize": "medium",
    "malformed": "medium",
    "schema": "medium",
    "bad_signature": "high",
    "unknown_key": "high",
    "revoked_key": "high",
    "key_not_yet_valid": "medium",
    "key_expired": "medium",
    "gateway_mismatch": "high",
    "site_mismatch": "high",
    "instrument_mismatch": "high",
    "topic_mismatch": "high",
    "bad_topic": "medium",
    "storage_rejected": "medium",
    "clock_unsynced": "medium",
    # Raised to high when the frame claims a synchronised clock (see _time_findings).
    "created_future": "medium",
    "created_too_old": "medium",
    # Every signed drop: honest, but a hole in the record (see _drop_findings).
    "data_dropped": "medium",
}

#: Engine adapter: records in, alert updates out (ingest.engine_hook.EngineHook).
EngineFn = Callable[[list[Sample | SiteEvent]], list[EngineAlert]]


@dataclass(slots=True)
class Batch:
    lines: list[str] = field(default_factory=list)
    acks: list[tuple[int, int, int]] = field(default_factory=list)
    chain: dict[str, dict[str, Any]] = field(default_factory=dict)
    outbox: list[tuple[str, bytes]] = field(default_factory=list)
    alert_rows: list[tuple[str, str, int, float, float]] = field(default_factory=list)
    alert_updates: list[AlertUpdate] = field(default_factory=list)
    archive: list[tuple[float, str]] = field(default_factory=list)
    #: Receipt log entries (frame_hash, gateway, seq, received_ms) of the new frames,
    #: committed with the chain state (ingest/custody/log.py).
    receipts: list[tuple[bytes, str, int, int]] = field(default_factory=list)
    #: Lines held back instead of written (line, reason): kept in write_rejects
    #: (ingest/series.py, the per-gateway cap on new series).
    held: list[tuple[str, str]] = field(default_factory=list)
    #: New series admitted by that cap (key, gateway, time), recorded with the commit.
    series: list[tuple[str, str, float]] = field(default_factory=list)
    #: Frames whose fate this batch settles for good (gateway, seq, frame hash): stored,
    #: duplicate, second history or replay. Acknowledged to the gateway end to end once
    #: the batch is committed (docs/acks.md).
    settled: list[tuple[str, int, bytes]] = field(default_factory=list)
    messages: int = 0
    frames: int = 0
    readings: int = 0
    created: list[float] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)

    def empty(self) -> bool:
        return not (self.lines or self.acks or self.chain or self.alert_rows)


class RegistryWatcher:
    """The signed key registry, reloaded when its file changes (mtime, size or inode:
    ``save`` replaces the file atomically, so the inode changes even within one mtime
    tick).

    A version is used only if the pinned authority signed it and it extends the last
    version this service accepted (kept in the state directory, so a restart cannot be
    rolled back either). Otherwise the last good version stays in force, and the refusal
    is logged, counted (``registry_reloads_total{result="refused"}``), shown as
    ``registry_state`` (1 current, 0 a newer file was refused) and in ``/healthz``
    (:meth:`status`), and raised as the integrity finding ``registry_refused`` by the
    pipeline.
    """

    def __init__(self, path: Path, interval_s: float, metrics: Metrics, pin: str,
                 state_dir: Path):
        self.path = path
        self.interval = interval_s
        self.metrics = metrics
        self.pin = AuthorityPin.parse(pin)
        self.accepted = AcceptedRegistry(state_dir)
        self.error: str | None = None
        #: Why the latest refusal happened (kept after a later version is accepted).
        self.last_refusal: str | None = None
        #: Wall-clock time of the latest refusal and how many there were (the pipeline
        #: raises one finding per refusal it has not reported yet).
        self.refused_at: float | None = None
        self.refusals = 0
        self._sig = self._stat()
        self._checked = time.monotonic()
        try:
            reg = KeyRegistry.load(path, self.pin)
            why = self.accepted.accept(reg, self.pin)
            if why is not None:
                raise RegistryError(f"{path}: {why}")
        except RegistryError as e:
            last = self._last_good()
            if last is None:
                raise
            self.registry = last
            self._refused(str(e))
            reg = last
        else:
            self.metrics.set("registry_state", 1)
        self.registry = reg
        self.loaded_at = time.time()
        self.metrics.set("registry_serial", reg.serial)

    def _last_good(self) -> KeyRegistry | None:
        try:
            return self.accepted.load(self.pin)
        except RegistryError as e:
            log.error("the last accepted key registry cannot be used either: %s", e)
            return None

    def _refused(self, why: str) -> None:
        self.error = why
        self.last_refusal = why
        self.refused_at = time.time()
        self.refusals += 1
        log.error("key registry refused, keeping serial %s: %s",
                  getattr(getattr(self, "registry", None), "serial", "?"), why)
        self.metrics.inc("registry_reloads_total", result="refused")
        self.metrics.set("registry_state", 0)

    def status(self) -> dict[str, Any]:
        """For ``/healthz``. A refused file does not make the service unhealthy: the last
        accepted registry keeps verifying frames correctly, and a restart would refuse
        the same file again (a restart loop helps no one). It is shown here, in the
        metrics and as a high integrity alert instead."""
        reg = self.registry
        out: dict[str, Any] = {
            "state": "refused" if self.error is not None else "current",
            "file": str(self.path),
            "serial": reg.serial,
            "keys": len(reg.entries),
            "authority": (reg.authority_fingerprint or "")[:16] or None,
            "in_force_since": to_rfc3339(self.loaded_at),
        }
        if self.error is not None and self.refused_at is not None:
            out["refused"] = {"at": to_rfc3339(self.refused_at), "reason": self.error,
                              "refusals": self.refusals}
        return out

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def maybe_reload(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._checked < self.interval:
            return False
        self._checked = now
        sig = self._stat()
        if sig == self._sig or sig is None:
            return False
        self._sig = sig
        try:
            reg = KeyRegistry.load(self.path, self.pin)
            why = reg.extends(self.registry.serial, len(self.registry.changes),
                              self.registry.head) or self.accepted.accept(reg, self.pin)
            if why is not None:
                raise RegistryError(f"{self.path}: {why}")
        except RegistryError as e:
            # Keep verifying with the last good registry: a half-edited, forged or older
            # file must not turn every frame into "unknown key" or revive a revoked key.
            self._refused(str(e))
            return False
        self.registry = reg
        self.loaded_at = time.time()
        self.error = None
        self.metrics.inc("registry_reloads_total", result="ok")
        self.metrics.set("registry_state", 1)
        self.metrics.set("registry_serial", reg.serial)
        log.info("key registry serial %d loaded from %s (%d keys)", reg.serial, self.path,
                 len(reg.entries))
        return True


class Pipeline:
    def __init__(
        self,
        cfg: IngestConfig,
        store: Store,
        metrics: Metrics,
        *,
        source: str = "mqtt",
        engine: EngineFn | None = None,
    ):
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.source = source
        self.engine = engine
        self.registry = RegistryWatcher(cfg.registry, cfg.registry_check_s, metrics,
                                        cfg.registry_pin(), cfg.state_dir)
        #: The time and drop bounds (the specification's unless configured otherwise).
        self.limits = cfg.chain.limits()
        diff = self.limits.differences()
        if diff:
            log.warning("integrity bounds differ from the specification: %s", ", ".join(
                f"{k} {v} (specification {spec})" for k, (v, spec) in diff.items()))
        self.trackers: dict[str, ChainTracker] = {}
        #: Last site each gateway reported (gaps are found between frames).
        self.sites: dict[str, str] = {}
        self.dirty: set[str] = set()
        self.builder = LineBuilder()
        self.book = AlertBook(store)
        self.batch = Batch()
        self.webhook_urls = [h.url for h in cfg.alerts.webhooks]
        self.min_rank = SEVERITY_RANK[cfg.alerts.integrity_min_severity]
        self._ts_tiebreak = 0
        self._last_gap_check = time.monotonic()
        #: Vehicle test context from lane-controller readings, applied before detection.
        self.lanes = LaneContexts()
        #: Registry refusals already raised as findings; whether the latest was refused.
        self._registry_reported = 0
        self._registry_was_refused = False
        self._registry_findings()

    # -- per message ----------------------------------------------------------------
    def skip(self, ack: tuple[int, int, int]) -> None:
        """A message this worker does not own: acknowledged in order with the others."""
        self.batch.acks.append(ack)
        self.batch.messages += 1
        self.metrics.inc("frames_total", result="other_shard")

    def handle(
        self,
        topic: str | None,
        payload: bytes,
        received: float,
        ack: tuple[int, int, int] | None = None,
    ) -> str:
        """Process one message; returns the outcome (for import statistics)."""
        b = self.batch
        b.messages += 1
        if ack is not None:
            b.acks.append(ack)
        if self.registry.maybe_reload() or self.registry.refusals != self._registry_reported:
            self._registry_findings()
        topic_gw = gateway_of_topic(topic) if topic else None
        if topic and topic_gw is None:
            self._quarantine(topic, payload, received, "bad_topic",
                             f"topic {topic!r} is not stationseal/v1/<gateway_id>/frames", None)
            return "quarantined"
        received_ms = int(received * 1000)
        try:
            f = verify_payload(payload, self.registry.registry, topic_gw, materialize=False,
                               received_ms=received_ms)
        except Rejected as e:
            if not self._redelivered(e):
                self._quarantine(topic, payload, received, e.reason, e.detail, e.frame,
                                 header=e.header)
                return "quarantined"
            assert e.frame is not None
            f = e.frame

        gw = f.gateway_id
        self.sites[gw] = f.site
        tracker = self._tracker(gw)
        conflict = f.seq in tracker.received
        is_new, issues = tracker.observe(f, now=received)
        self.dirty.add(gw)
        if not is_new and issues and issues[0].kind == "replay" and self._receipted(f):
            # Older than the tracker's hash window but the very frame already received:
            # a broker redelivery after a crash (up to receive_maximum frames were in
            # flight), which is a duplicate, not a replay.
            issues = [ChainIssue("duplicate", gw, f.seq, dict(issues[0].detail))]
        kinds = {i.kind for i in issues}
        for iss in issues:
            self._integrity(iss.kind, f.site, gw, iss.seq, received, iss.detail)
        if is_new:
            self._time_findings(f, received_ms, received)
            if not conflict and f.events:
                self._drop_findings(f, received)
        if "replay" in kinds:
            # The sequence was received long ago and its hash is no longer remembered:
            # the readings are not stored again, the frame is kept as evidence.
            self._quarantine(topic, payload, received, "replay",
                             f"seq {f.seq} already received", f, integrity=False)
            b.settled.append((gw, f.seq, f.frame_hash))
            return "replay"
        branch = ""
        if is_new and conflict:
            # A second history for sequence numbers already stored: stored apart (own
            # series via the branch tag), never over the first one.
            branch = (f"reset-{f.boot_id.hex()[:8]}" if "sequence_reset" in kinds
                      else f"fork-{f.frame_hash.hex()[:8]}")
        # Duplicates are written again on purpose: the points are identical, so this
        # costs nothing in the database and guarantees that a frame whose first write
        # was interrupted by a crash is stored.
        b.lines += self.builder.frame_lines(f, branch)
        b.settled.append((gw, f.seq, f.frame_hash))
        b.frames += 1
        b.readings += f.reading_count
        b.created.append(f.created)
        if not is_new:
            self.metrics.inc("frames_total", result="duplicate")
            return "duplicate"
        self.metrics.inc("frames_total", result="fork" if branch else "accepted")
        b.receipts.append((f.frame_hash, gw, f.seq, int(received * 1000)))
        if self.cfg.archive_dir is not None:
            b.archive.append((received, line_for(topic or frames_topic(gw), payload)))
        if self.engine is not None and not branch:
            self._feed(self.lanes.annotate(f, frame_records(f)))
        return "fork" if branch else "accepted"

    def _receipted(self, f: Frame) -> bool:
        h = f.frame_hash
        if any(r[0] == h for r in self.batch.receipts):
            return True
        return self.store.received_before(f.gateway_id, f.seq, h)

    def _redelivered(self, e: Rejected) -> bool:
        """A frame refused only because its key's validity ended before *this* delivery,
        though the same frame (same hash) was accepted before: a broker redelivery, not a
        new frame. Validity is judged on the first arrival."""
        f = e.frame
        if f is None or e.reason not in ("revoked_key", "key_expired"):
            return False
        known = self._tracker(f.gateway_id).recent.get(f.seq)
        if (known is None or known[0] != f.frame_hash) and not self._receipted(f):
            return False
        try:
            entry = self.registry.registry.key_for(f.gateway_id, f.key_id)
            self.registry.registry.check_validity(entry, f.created_ms)
        except Exception:
            return False
        return True

    def _time_findings(self, f: Frame, received_ms: int, received: float) -> None:
        """Clock plausibility against the arrival: a finding of the ingest itself, made
        whether or not detection runs."""
        entry = self.registry.registry.entries.get(f.key_id)
        if entry is None:
            return
        for kind, detail in arrival_findings(f, received_ms, entry.backfill_s,
                                             self.limits.future_tolerance_ms):
            detail = {**detail, "clock_sync": f.clock_sync}
            sev = "high" if f.clock_sync == "synced" else None
            self._integrity(kind, f.site, f.gateway_id, f.seq, received, detail,
                            severity=sev)

    def _registry_findings(self) -> None:
        """A refused registry file is an integrity finding about the central side itself
        (high: either someone tried to install a forged or rolled-back registry, or the
        authority's latest changes, revocations included, are not in force); a version
        accepted after a refusal closes it (low)."""
        r = self.registry
        serial = r.registry.serial
        if r.refusals != self._registry_reported:
            self._registry_reported = r.refusals
            self._registry_was_refused = True
            why = r.last_refusal or "?"
            self._central_finding("registry_refused", "high", {
                "file": str(r.path), "reason": why, "serial_in_force": serial,
                "refusals": r.refusals,
            }, (f"The key registry file {r.path} was refused: {why}. The ingest keeps "
                f"verifying frames with the last registry it accepted (serial {serial}). "
                "Changes the registry authority made after that version (new keys, "
                "revocations) are not in force until a version signed by the pinned "
                "authority that extends it is installed. A forged, altered or older "
                "registry is what a refusal looks like; so is an installation mistake.",
                f"密钥登记文件{r.path}被拒绝：{why}。接收服务继续使用上一次接受的登记"
                f"（序号{serial}）验证数据帧。在安装由受信登记机构签名且延续该版本的登记之前，"
                "登记机构此后所做的变更（新增密钥、吊销）均不生效。伪造、篡改或回滚的登记会"
                "导致此拒绝，安装错误亦然。"))
        if r.error is None and self._registry_was_refused:
            self._registry_was_refused = False
            self._central_finding("registry_current", "low", {
                "file": str(r.path), "serial_in_force": serial,
            }, (f"The key registry file {r.path} was accepted again (serial {serial}).",
                f"密钥登记文件{r.path}已重新被接受（序号{serial}）。"))

    def _central_finding(self, kind: str, sev: str, detail: dict[str, Any],
                         summary: tuple[str, str]) -> None:
        """An integrity finding about the central service, not about a gateway's frame:
        an ``integrity`` point and an alert for site ``central`` (as
        ingest/service_events.py raises its own), not fed to the detectors."""
        now = time.time()
        self._ts_tiebreak = (self._ts_tiebreak + 1) % 1000
        self.batch.lines.append(integrity_line(
            kind=kind, severity=sev, site=None, gateway=None, seq=None, detail=detail,
            ts_ns=int(now * 1000) * 1_000_000 + self._ts_tiebreak * 1000))
        self.metrics.inc("chain_events_total", kind=kind)
        if SEVERITY_RANK[sev] < self.min_rank:
            return
        self.emit(Alert(rule="integrity", severity=sev,  # type: ignore[arg-type]
                        site="central", instrument="", start=now, end=now,
                        summary_en=summary[0], summary_zh=summary[1],
                        evidence={"kind": kind, **detail},
                        key=f"integrity|central|central|{kind}"))

    def _drop_findings(self, f: Frame, received: float) -> None:
        """Every signed ``data_dropped`` event is an integrity finding of the ingest
        itself, alerted whether or not detection runs (the detection engine does not run
        I-DROP in the ingest: ingest/engine_hook.py). A drop that cannot cover anything is
        already a ``bad_drop_event`` of the chain tracker and is not reported twice."""
        for e in f.events:
            if e.kind != "data_dropped":
                continue
            drop = parse_drop(e, f.seq, self.limits.max_drop_span)
            if isinstance(drop, str):
                continue
            detail: dict[str, Any] = {"instrument": e.instrument, **jsonable(e.detail)}
            gw = f.gateway_id
            if drop is not None:
                en = (f"Gateway {gw} dropped frames {drop.first_seq}–{drop.last_seq} "
                      f"({detail.get('frames', '?')} frames, {detail.get('readings', '?')} "
                      f"readings) from its outbox before they could be delivered, and "
                      f"signed the drop in frame {f.seq}. The readings of those frames "
                      "are missing for good: an honest, declared hole in the record.")
                zh = (f"网关{gw}在数据帧送达前从其缓存中丢弃了序号{drop.first_seq}至"
                      f"{drop.last_seq}的数据帧（{detail.get('frames', '?')}帧，"
                      f"{detail.get('readings', '?')}条读数），并在序号{f.seq}的数据帧中签名"
                      "记录。这些读数永久缺失：这是已声明的数据缺口。")
            else:
                en = (f"Gateway {gw}: instrument {e.instrument} lost data before it could "
                      f"be sealed ({detail.get('error', 'no reason given')}; "
                      f"{detail.get('frames', '?')} lost), recorded in signed frame "
                      f"{f.seq}.")
                zh = (f"网关{gw}：仪器{e.instrument}的数据在签名前丢失"
                      f"（{detail.get('error', '未说明原因')}；丢失{detail.get('frames', '?')}），"
                      f"已记录于签名数据帧{f.seq}。")
            self._integrity("data_dropped", f.site, gw, f.seq, received, detail,
                            summary=(en, zh))

    def _tracker(self, gw: str) -> ChainTracker:
        t = self.trackers.get(gw)
        if t is None:
            st = self.store.load_chain(gw)
            t = (ChainTracker.from_json(st, self.limits) if st is not None
                 else ChainTracker(gw, self.limits))
            self.trackers[gw] = t
        return t

    def _quarantine(
        self,
        topic: str | None,
        payload: bytes,
        received: float,
        reason: str,
        detail: str,
        f: Frame | None,
        integrity: bool = True,
        header: Any = None,
    ) -> None:
        # Without a frame, the header the payload claims (unauthenticated when the
        # signature failed) still says which gateway and site to look at.
        src = f if f is not None else header
        gw = src.gateway_id if src is not None else (
            gateway_of_topic(topic) if topic else None)
        site = src.site if src is not None else None
        seq = src.seq if src is not None else None
        qid = self.store.quarantine(
            received=received, source=self.source, topic=topic, reason=reason,
            detail=detail, payload=payload, gateway_id=gw, site=site, seq=seq,
            key_id=src.key_id if src is not None else None,
        )
        self.metrics.inc("verification_failures_total", reason=reason)
        self.metrics.inc("frames_total", result="quarantined")
        log.warning("quarantined #%d from %s: %s: %s", qid, topic or self.source, reason,
                    detail)
        if integrity:
            self._integrity(reason, site, gw, seq, received,
                            {"detail": detail, "quarantine_id": qid}, quarantine_id=qid)

    def _integrity(
        self,
        kind: str,
        site: str | None,
        gw: str | None,
        seq: int | None,
        when: float,
        detail: dict[str, Any],
        quarantine_id: int | None = None,
        severity: str | None = None,
        summary: tuple[str, str] | None = None,
    ) -> None:
        sev = severity or SEVERITY.get(kind, "medium")
        self._ts_tiebreak = (self._ts_tiebreak + 1) % 1000
        ts = int(when * 1000) * 1_000_000 + self._ts_tiebreak * 1000
        self.batch.lines.append(integrity_line(
            kind=kind, severity=sev, site=site, gateway=gw, seq=seq, detail=detail,
            ts_ns=ts, quarantine_id=quarantine_id))
        if quarantine_id is None:
            self.metrics.inc("chain_events_total", kind=kind)
        if SEVERITY_RANK[sev] >= self.min_rank:
            alert = integrity_alert(kind, sev, site, gw, seq, when, detail)
            if summary is not None:
                alert = replace(alert, summary_en=summary[0], summary_zh=summary[1])
            self.emit(alert)
        if self.engine is not None:
            self._feed([integrity_event(kind, site, gw, seq, when, detail)])

    def finish_detection(self) -> None:
        """End of stream: judge what is still open (tests, windows) and deliver it.

        Only on an explicit end of the data (``detection.finish_on_stop``, an import):
        on an ordinary restart a test cut by the restart is not the station's doing.
        """
        if self.engine is None:
            return
        self._feed(self.lanes.flush())
        finish = getattr(self.engine, "finish", None)
        if finish is None:
            return
        try:
            out = finish()
        except Exception:
            log.exception("detection engine failed at end of stream")
            return
        for ea in out:
            self.deliver(self.book.upsert(ea.id, ea.doc, ea.start, ea.is_new))

    def _feed(self, records: list[Sample | SiteEvent]) -> None:
        assert self.engine is not None
        try:
            out = self.engine(records)
        except Exception:
            log.exception("detection engine failed on %d record(s)", len(records))
            self.metrics.inc("alerts_total", rule="engine_error", state="error")
            return
        for ea in out:
            self.deliver(self.book.upsert(ea.id, ea.doc, ea.start, ea.is_new))

    def emit(self, alert: Alert) -> AlertUpdate:
        return self.deliver(self.book.update(alert))

    def deliver(self, u: AlertUpdate) -> AlertUpdate:
        b = self.batch
        b.alert_updates.append(u)
        b.alert_rows.append(self.book.row(u))
        if self.cfg.alerts.influx:
            b.lines.append(alert_line(u.doc, u.start))
        body = u.body()
        for url in self.webhook_urls:
            b.outbox.append((url, body))
        self.metrics.inc("alerts_total", rule=str(u.doc.get("rule")), state=str(u.doc["state"]))
        return u

    # -- periodic -------------------------------------------------------------------
    def check_gaps(self, now: float | None = None, grace_s: float | None = None,
                   force: bool = False) -> int:
        """Periodic checks: overdue gaps, and the registry file (so that a new version,
        or its refusal, takes effect while no frame arrives)."""
        if self.registry.maybe_reload() or self.registry.refusals != self._registry_reported:
            self._registry_findings()
        mono = time.monotonic()
        if not force and mono - self._last_gap_check < self.cfg.chain.gap_check_interval_s:
            return 0
        self._last_gap_check = mono
        now = time.time() if now is None else now
        grace = self.cfg.chain.gap_grace_s if grace_s is None else grace_s
        n = 0
        for gw, t in self.trackers.items():
            if not t.pending:
                continue
            for iss in t.overdue_gaps(now, grace):
                self._integrity("gap", self.sites.get(gw), gw, iss.seq, now, iss.detail)
                n += 1
            self.dirty.add(gw)
        return n

    def seal(self) -> Batch:
        """Close the current batch, with a snapshot of the trackers it changed."""
        b = self.batch
        for gw in self.dirty:
            b.chain[gw] = self.trackers[gw].to_json()
        self.dirty.clear()
        self.batch = Batch()
        return b


def archive_path(archive_dir: Path, when: float) -> Path:
    return archive_dir / f"frames-{datetime.fromtimestamp(when, UTC):%Y-%m-%d}.jsonl"


def write_archive(archive_dir: Path, items: list[tuple[float, str]]) -> None:
    """Append accepted frames to the daily frames files (export format)."""
    if not items:
        return
    archive_dir.mkdir(parents=True, exist_ok=True)
    by_file: dict[Path, list[str]] = {}
    for when, ln in items:
        by_file.setdefault(archive_path(archive_dir, when), []).append(ln)
    for p, lines in by_file.items():
        with open(p, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
