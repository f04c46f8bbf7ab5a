"""The live ingest worker: MQTT in, InfluxDB out, acknowledged only when durable.

Threads (one worker process):

* paho's network loop receives frames and queues them (it never blocks, so keepalive
  pings continue while InfluxDB is down);
* the processor verifies, chain-checks and converts them in arrival order and seals
  batches by size and time, or as soon as the writer is idle (low latency at low rates,
  big batches at high rates);
* the writer writes a batch to InfluxDB (retrying with back-off as long as needed),
  commits the local state the batch changed, and only then acknowledges the batch's MQTT
  messages, in the order they were received.

Backpressure: the writer's queue is short, so a stuck InfluxDB stops the processor, then
the broker, which sends at most ``receive_maximum`` unacknowledged messages, stops
sending; frames wait in the broker's persistent session. A ``kill -9`` at any point loses
nothing: whatever was not acknowledged is redelivered on reconnect, and writes are
idempotent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.alerts import AlertUpdate, JsonlSink, WebhookDelivery
from ingest.config import IngestConfig, _secret, shard_of
from ingest.custody.service import open_receipt_log
from ingest.engine_hook import make_engine
from ingest.inbox import FairInbox
from ingest.influx import ReliableWriter, Stopped, make_writer
from ingest.metrics import Metrics, MetricsServer
from ingest.pipeline import Batch, Pipeline, write_archive
from ingest.series import SeriesGuard
from ingest.service_events import service_event
from ingest.store import Digested, QuarantineLimits, Store
from stationseal.acks import acks_topic, build_acks
from stationseal.export import gateway_of_topic

log = logging.getLogger("stationseal.ingest")

#: (conn gen, mid, qos, topic, payload, t, refusal reason or None): the payload is a
#: :class:`Digested` summary when refused for size or load, b"" for other shards' topics.
_Item = tuple[int, int, int, str, bytes, float, str | None]
#: Work another thread hands to the processor (it alone touches the pipeline).
_Control = Callable[[Pipeline], None]

#: Exit code of a worker whose thread died (EX_SOFTWARE): systemd / the supervisor
#: restart it; whatever it held unacknowledged is redelivered by the broker.
EXIT_FATAL = 70


def _read_secret(path: Path, what: str) -> str | None:
    return _secret(None, path, what)


class Committer:
    """Writes sealed batches and commits them; shared by the live service and import."""

    def __init__(self, cfg: IngestConfig, store: Store, metrics: Metrics,
                 stop: threading.Event):
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.raw = make_writer(cfg.influx)
        self.writer = ReliableWriter(self.raw, max_backoff_s=cfg.influx.max_backoff_s,
                                     stop=stop, on_state=self._on_state)
        self.jsonl = JsonlSink(cfg.alerts.jsonl) if cfg.alerts.jsonl else None
        self.custody = open_receipt_log(cfg, store)
        #: The latest signed checkpoint (docs/evidence.md §3), to attach to what the ingest
        #: sends gateways (``{"checkpoint": ...}`` in the acknowledgements).
        latest = self.custody.latest_checkpoint()
        self.latest_checkpoint: dict[str, str] | None = latest.to_json() if latest else None
        self.series = SeriesGuard(store, cfg.series.max_new_per_gateway_day)
        metrics.set("influx_up", 1)

    def _on_state(self, up: bool, err: str | None) -> None:
        self.metrics.set("influx_up", 1 if up else 0)

    def prepare(self) -> None:
        if self.cfg.influx.version == 1 and self.cfg.influx.create_database:
            from ingest.influx import V1Writer, wait_until

            assert isinstance(self.raw, V1Writer)
            wait_until(self.raw.ping, 30)
            self.raw.create_database()

    def seal(self, p: Pipeline) -> Batch:
        """Close the pipeline's batch, lines of series over the per-gateway cap held
        back (ingest/series.py). On the pipeline's thread."""
        self.series.filter(p.batch, p)
        return p.seal()

    def commit(self, b: Batch) -> list[AlertUpdate]:
        """Write, then record locally. Raises :class:`Stopped` if shut down while
        InfluxDB is unreachable (the batch then stays unacknowledged)."""
        t0 = time.monotonic()
        retries0 = self.writer.retries
        try:
            rejected = self.writer.write(b.lines)
        except BaseException:
            self.series.forget(b)
            raise
        dt = time.monotonic() - t0
        self.metrics.observe("write_latency_seconds", dt)
        self.metrics.inc("write_retries_total", self.writer.retries - retries0)
        self.metrics.inc("write_batches_total", result="ok" if not rejected else "partial")
        if rejected:
            self.metrics.inc("write_rejected_lines_total", len(rejected))
            for ln, err in rejected[:5]:
                log.error("InfluxDB refused a line (kept in state db): %s: %s", err, ln[:200])
        if self.cfg.archive_dir is not None:
            write_archive(self.cfg.archive_dir, b.archive)
        self.store.commit_batch(b.chain, b.outbox, rejected + b.held, b.alert_rows,
                                b.receipts, b.series)
        try:
            cp = self.custody.maybe_checkpoint()
            if cp is not None:
                self.latest_checkpoint = cp.to_json()
        except Exception:
            # The receipts are committed; the next commit tries the checkpoint again.
            log.exception("signing a checkpoint failed")
        if self.jsonl is not None:
            self.jsonl.write(b.alert_updates)
        self.metrics.inc("readings_total", b.readings)
        return b.alert_updates

    def close(self) -> None:
        """A last checkpoint, so everything received so far is covered when the service
        stops (an export or evidence package made now need not wait for the next one)."""
        try:
            self.custody.maybe_checkpoint(force=True)
        except Exception:
            log.exception("signing the final checkpoint failed")
        self.raw.close()


class IngestService:
    """One worker. ``shard_index`` / ``shard_count`` select the gateways it owns."""

    def __init__(self, cfg: IngestConfig, shard_index: int = 0,
                 shard_count: int | None = None, metrics_port: int | None = None):
        self.cfg = cfg
        self.shard_index = shard_index
        self.shard_count = cfg.shard.count if shard_count is None else shard_count
        if not 0 <= shard_index < self.shard_count:
            raise ValueError(f"shard index {shard_index} outside 0..{self.shard_count - 1}")
        self.stop_event = threading.Event()
        #: Why the worker stopped on its own (a thread died): health false, exit non-zero.
        self.fatal: str | None = None
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.db_path)
        self.store.limits = QuarantineLimits.from_config(cfg.quarantine)
        self.metrics = Metrics({"shard": str(shard_index)} if self.shard_count > 1 else None)
        self.pipeline = Pipeline(cfg, self.store, self.metrics, source="mqtt",
                                 engine=make_engine(cfg.detection))
        self.committer = Committer(cfg, self.store, self.metrics, self.stop_event)
        self.webhooks = WebhookDelivery(self.store, cfg.alerts, self.stop_event, self.metrics)
        self.inbox: FairInbox[_Item | _Control] = FairInbox(
            cfg.mqtt.inflight_bytes, cfg.mqtt.gateway_inflight_bytes, self.stop_event)
        #: Filesystems below their free-space bound: path -> free bytes (disk watch).
        self.disk_low: dict[str, int] = {}
        self.writer_q: queue.Queue[Batch | None] = queue.Queue(maxsize=2)
        self.writer_idle = threading.Event()
        self.writer_idle.set()
        self.gen = 0
        #: Last time this worker was known connected (the broker's session expiry runs
        #: from the disconnect): persisted in the state database.
        self._last_seen: float | None = None
        self.connected = threading.Event()
        self.unacked = 0
        self._unacked_lock = threading.Lock()
        #: packet ids of acknowledgement publishes (told apart from alerts on PUBACK)
        self._ack_mids: set[int] = set()
        #: gateway -> the checkpoint last attached to its acknowledgements
        self._cp_sent: dict[str, str] = {}
        self.last_commit = time.time()
        self.client = self._make_client()
        self._threads: list[threading.Thread] = []
        self.metrics_server: MetricsServer | None = None
        self._metrics_port = cfg.metrics.port if metrics_port is None else metrics_port
        self.metrics.gauge_fn("backlog_messages", lambda: self.unacked)
        self.metrics.gauge_fn("mqtt_connected", lambda: 1 if self.connected.is_set() else 0)
        self.metrics.gauge_fn("webhook_outbox", self.store.outbox_size)
        self.metrics.gauge_fn("inbox_bytes", lambda: self.inbox.bytes)
        #: HJ 212 listener for legacy sites (ingest/hj212_ingest.py): one per service
        self.hj212: Any = None
        if cfg.hj212 is not None and shard_index == 0:
            from ingest.hj212_ingest import HJ212Ingest

            self.hj212 = HJ212Ingest(cfg, self.store, self.metrics, self.stop_event)

    # -- MQTT -----------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        base = self.cfg.mqtt.client_id
        if "{shard}" in base:
            return base.replace("{shard}", str(self.shard_index))
        return base if self.shard_count == 1 or self.cfg.shard.mode == "shared" \
            else f"{base}-{self.shard_index}"

    @property
    def username(self) -> str | None:
        """This worker's broker account: ``mqtt.username`` with ``{shard}`` replaced.
        The broker ties client ids to accounts (use_username_as_clientid), so workers
        with persistent sessions of their own need accounts of their own."""
        u = self.cfg.mqtt.username
        return None if u is None else u.replace("{shard}", str(self.shard_index))

    @property
    def session_key(self) -> str:
        """What the broker keeps the session under: the account (the broker replaces the
        client id with it) and, for brokers that do not, the client id."""
        return f"{self.username or ''}|{self.client_id}"

    @property
    def topic(self) -> str:
        t = f"{self.cfg.mqtt.topic_prefix}/+/frames"
        if self.cfg.shard.mode == "shared" and self.shard_count > 1:
            return f"$share/{self.cfg.shard.share_group}/{t}"
        return t

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client_id = self.client_id if self.cfg.shard.mode == "filter" \
            else f"{self.client_id}-{self.shard_index}"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        if m.tls is not None:
            ctx = ssl.create_default_context(
                cafile=str(m.tls.ca_file) if m.tls.ca_file else None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if m.tls.cert_file:
                ctx.load_cert_chain(str(m.tls.cert_file),
                                    str(m.tls.key_file) if m.tls.key_file else None)
            if m.tls.insecure:
                ctx.check_hostname = False
            c.tls_set_context(ctx)
        if self.username:
            pw_file = m.password_file
            if pw_file is not None and "{shard}" in str(pw_file):
                pw: str | None = _read_secret(Path(str(pw_file).replace(
                    "{shard}", str(self.shard_index))), "mqtt.password_file")
            else:
                pw = m.resolved_password()
            c.username_pw_set(self.username, pw)
        c.reconnect_delay_set(1, 30)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        return c

    def _connect_props(self) -> Properties:
        make: Any = Properties
        p = make(PacketTypes.CONNECT)
        p.SessionExpiryInterval = self.cfg.mqtt.session_expiry_s
        p.ReceiveMaximum = self.cfg.mqtt.receive_maximum
        return p  # type: ignore[no-any-return]

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            return
        self.gen += 1
        self.connected.set()
        present = bool(flags.session_present)
        log.info("connected to %s:%d as %s (session present: %s)", self.cfg.mqtt.host,
                 self.cfg.mqtt.port, self.client_id, present)
        self._check_session(present)
        c.subscribe(self.topic, options=SubscribeOptions(qos=1))

    def _check_session(self, present: bool) -> None:
        """The broker must still hold this worker's persistent session when it comes
        back within the session expiry: if CONNACK says it does not, whatever was queued
        for the ingest meanwhile is gone at the broker (a crash without persistence, a
        restored backup, another client that connected under the same id with a clean
        start). Raise an integrity alert: gateways resend what the ingest never
        confirmed (docs/acks.md), and remaining gaps are reported per gateway."""
        now = time.time()
        expiry = self.cfg.mqtt.session_expiry_s
        last = self.store.mqtt_session(self.session_key)
        if self.gen > 1 and self._last_seen is not None:
            last = (expiry, self._last_seen)
        if last is not None and not present and now - last[1] < last[0]:
            detail = {"client_id": self.client_id, "username": self.username,
                      "away_s": round(now - last[1], 1), "expiry_s": last[0]}
            log.error("the broker lost this worker's persistent session %s (away %.0f s, "
                      "expiry %d s)", self.session_key, now - last[1], last[0])
            self.metrics.inc("sessions_lost_total")
            self.inbox.put_control(lambda p: service_event(
                p, "mqtt_session_lost", detail, scope=self.session_key, when=now))
        self._last_seen = now
        self.store.touch_mqtt_session(self.session_key, expiry, now)

    def _touch_session(self, force: bool = False) -> None:
        now = time.time()
        if self.connected.is_set() and (force or self._last_seen is None
                                         or now - self._last_seen >= 10):
            self._last_seen = now
            self.store.touch_mqtt_session(self.session_key, self.cfg.mqtt.session_expiry_s,
                                          now)

    def _on_disconnect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        if self.connected.is_set():
            with contextlib.suppress(Exception):
                self._touch_session(force=True)
        self.connected.clear()
        if not self.stop_event.is_set():
            log.warning("disconnected from broker (%s); reconnecting", rc)

    def _on_publish(self, c: mqtt.Client, u: Any, mid: int, rc: Any, props: Any) -> None:
        # MQTT 5 PUBACK reason: a broker ACL refusing the alerts topic shows up here.
        ok = not getattr(rc, "is_failure", False)
        if mid in self._ack_mids:
            self._ack_mids.discard(mid)
            self.metrics.inc("acks_published_total", result="ok" if ok else "refused")
            if not ok:
                log.error("broker refused an acknowledgement publish: %s (the ACL must let "
                          "ingest accounts write <prefix>/+/acks)", rc)
            return
        self.metrics.inc("alerts_published_total", result="ok" if ok else "refused")
        if not ok:
            log.error("broker refused an alert publish: %s", rc)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        """Runs in paho's network thread: size checks before anything is kept, then the
        fair, byte-bounded inbox (which may make this thread wait: backpressure)."""
        with self._unacked_lock:
            self.unacked += 1
        t = time.time()
        topic = msg.topic
        raw = msg.payload
        item: _Item
        if not self._owns(topic):
            # Acknowledged in order with the others, never processed here: keep no bytes.
            self.inbox.put(topic, (self.gen, msg.mid, msg.qos, topic, b"", t, None), 0)
            return
        head = self.cfg.quarantine.head_bytes
        if len(raw) > self.cfg.mqtt.max_message_bytes:
            item = (self.gen, msg.mid, msg.qos, topic, Digested(raw, head), t, "oversize")
            self.inbox.put(topic, item, head)
            return
        payload = bytes(raw)
        item = (self.gen, msg.mid, msg.qos, topic, payload, t, None)
        if not self.inbox.put(topic, item, len(payload), droppable=msg.qos == 0):
            item = (self.gen, msg.mid, msg.qos, topic, Digested(payload, head), t, "overload")
            self.inbox.put(topic, item, head)

    # -- threads --------------------------------------------------------------------
    def _owns(self, topic: str) -> bool:
        if self.shard_count == 1 or self.cfg.shard.mode == "shared":
            return True
        gw = gateway_of_topic(topic)
        # A topic without a gateway level cannot be routed; worker 0 quarantines it.
        return shard_of(gw, self.shard_count) == self.shard_index if gw else \
            self.shard_index == 0

    def _processor(self) -> None:
        p = self.pipeline
        icfg = self.cfg.influx
        max_lines = icfg.batch_lines
        max_msgs = max(1, self.cfg.mqtt.receive_maximum // 2)
        interval = icfg.flush_interval_ms / 1000
        while True:
            b = p.batch
            timeout = 0.5 if b.empty() else max(0.0, b.opened + interval - time.monotonic())
            try:
                got = self.inbox.get(timeout=timeout)
            except queue.Empty:
                got = None
            if callable(got):
                got(p)
            elif got is not None:
                gen, mid, qos, topic, payload, t, refused = got
                ack = (gen, mid, qos)
                if refused is not None:
                    self._refuse(topic, payload, t, ack, refused)
                elif self._owns(topic):
                    try:
                        p.handle(topic, payload, t, ack)
                    except Exception:
                        # A bug must not lose the frame: keep it in quarantine as evidence.
                        # If even that fails (disk full) the worker stops: nothing of
                        # this batch is acknowledged, the broker redelivers it.
                        log.exception("processing a frame from %s failed", topic)
                        p._quarantine(topic, payload, t, "internal_error",
                                      "exception while processing; see the service log",
                                      None)
                else:
                    p.skip(ack)
            if self.stop_event.is_set():
                # What is still queued stays unacknowledged: the broker redelivers it.
                break
            p.check_gaps()
            b = p.batch
            if b.empty():
                if b.messages == 0:
                    b.opened = time.monotonic()
                continue
            due = (len(b.lines) >= max_lines or b.messages >= max_msgs
                   or time.monotonic() - b.opened >= interval
                   or (self.writer_idle.is_set() and self.inbox.empty()))
            if due:
                self.writer_q.put(self.committer.seal(p))
        if self.cfg.detection.finish_on_stop:
            p.finish_detection()
        if not p.batch.empty():
            self.writer_q.put(self.committer.seal(p))
        self.writer_q.put(None)

    def _refuse(self, topic: str, payload: bytes, t: float, ack: tuple[int, int, int],
                reason: str) -> None:
        """A message refused before processing (``oversize``, ``overload``): its digest
        and first bytes go to the quarantine, with an integrity event, and it is
        acknowledged with its batch (the broker must not redeliver it for ever)."""
        p = self.pipeline
        b = p.batch
        b.messages += 1
        b.acks.append(ack)
        size = payload.size if isinstance(payload, Digested) else len(payload)
        if reason == "oversize":
            detail = (f"{size} bytes exceed mqtt.max_message_bytes "
                      f"({self.cfg.mqtt.max_message_bytes}); only the digest and first "
                      "bytes are kept")
        else:
            detail = (f"QoS 0 message of {size} bytes while this topic already had "
                      f"{self.cfg.mqtt.gateway_inflight_bytes} bytes waiting "
                      "(mqtt.gateway_inflight_bytes); only the digest and first bytes are "
                      "kept")
        p._quarantine(topic, payload, t, reason, detail, None)

    def _writer(self) -> None:
        while True:
            b = self.writer_q.get()
            if b is None:
                return
            self.writer_idle.clear()
            try:
                updates = self.committer.commit(b)
            except Stopped:
                log.warning("stopping with %d message(s) not written; the broker keeps "
                            "them for the next run", b.messages)
                while self.writer_q.get() is not None:
                    pass
                return
            except Exception as e:
                log.exception("committing a batch failed; stopping without acknowledging")
                self._fail(f"writer: committing a batch failed: {type(e).__name__}: {e}")
                while self.writer_q.get() is not None:
                    pass
                return
            gen = self.gen
            for g, mid, qos in b.acks:
                # Messages of an earlier connection are redelivered by the broker after
                # the reconnect; acknowledging their old packet id now would be wrong.
                if g == gen and qos > 0:
                    self.client.ack(mid, qos)
            with self._unacked_lock:
                self.unacked -= len(b.acks)
            self._publish_acks(b)
            now = time.time()
            self.last_commit = now
            self._touch_session()
            if b.created:
                for c in b.created:
                    self.metrics.observe("reading_latency_seconds", max(0.0, now - c))
            self._publish_alerts(updates)
            if updates and self.webhooks.hooks:
                self.webhooks.wake.set()
            if self.writer_q.empty():
                self.writer_idle.set()

    def _publish_acks(self, b: Batch) -> None:
        """End-to-end acknowledgements (docs/acks.md): after the write and the commit,
        tell each gateway which of its frames the ingest now holds for good, so it may
        delete them. Only while connected: a batch committed after its connection died
        is redelivered by the broker and acknowledged then."""
        if not self.cfg.mqtt.acks or not b.settled or not self.connected.is_set():
            return
        by_gw: dict[str, list[tuple[int, bytes]]] = {}
        for gw, seq, h in b.settled:
            by_gw.setdefault(gw, []).append((seq, h))
        now = time.time()
        prefix = self.cfg.mqtt.topic_prefix
        cp = self.committer.latest_checkpoint
        cp_key = json.dumps(cp, sort_keys=True) if cp is not None else None
        for gw, frames in by_gw.items():
            # The latest signed checkpoint rides along when it changed since this gateway's
            # last acknowledgement (docs/acks.md, docs/evidence.md §3).
            extra = None
            if cp_key is not None and self._cp_sent.get(gw) != cp_key:
                extra = {"checkpoint": cp}
                self._cp_sent[gw] = cp_key
            for msg in build_acks(gw, frames, when=now, by=self.username or self.client_id,
                                  extra=extra):
                info = self.client.publish(acks_topic(prefix, gw), msg, qos=1)
                mid = getattr(info, "mid", None)  # None on the NATS link (no PUBACK)
                if mid is not None:
                    self._ack_mids.add(mid)
            self.metrics.inc("acks_frames_total", len(frames))

    def _publish_alerts(self, updates: list[AlertUpdate]) -> None:
        if not self.cfg.alerts.mqtt:
            return
        for u in updates:
            self.client.publish(f"{self.cfg.mqtt.topic_prefix}/alerts/{u.site}", u.body(),
                                qos=self.cfg.mqtt.alerts_qos)

    # -- lifecycle ------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        influx_ok = self.committer.writer.up
        self.check_threads()
        threads_ok = all(t.is_alive() for t in self._threads) or self.stop_event.is_set()
        ok = (self.connected.is_set() and influx_ok and threads_ok and self.fatal is None
              and not self.stop_event.is_set())
        out: dict[str, Any] = {
            "ok": ok,
            "shard": f"{self.shard_index}/{self.shard_count}",
            "mqtt_connected": self.connected.is_set(),
            "influx_ok": influx_ok,
            "backlog": self.unacked,
            "inbox_bytes": self.inbox.bytes,
            "last_commit_age_s": round(time.time() - self.last_commit, 3),
        }
        # Informational, not part of "ok": a refused registry file leaves the last
        # accepted one verifying frames (docs/security.md, "Key registry").
        out["registry"] = self.pipeline.registry.status()
        if self.fatal is not None:
            out["fatal"] = self.fatal
        if self.disk_low:
            out["disk_low"] = dict(self.disk_low)
        return out

    def _fail(self, why: str) -> None:
        """A worker thread died: stop the whole worker, visibly. Its health turns false
        at once and the process exits with :data:`EXIT_FATAL`, so systemd (or the
        supervisor) restarts it; nothing unacknowledged is lost, the broker redelivers."""
        if self.fatal is None:
            self.fatal = why
        log.critical("worker stops: %s", why)
        self.metrics.inc("fatal_errors_total")
        self.stop_event.set()
        self.inbox.wake()

    def _guarded(self, name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                log.critical("thread %s died", name, exc_info=True)
                self._fail(f"thread {name} died: {type(e).__name__}: {e}")
                if name == "processor":
                    # Let the writer finish what it holds (unacknowledged: redelivered).
                    with contextlib.suppress(queue.Full):
                        self.writer_q.put(None, timeout=30)
                return
            if not self.stop_event.is_set():
                self._fail(f"thread {name} ended unexpectedly")
        return run

    def start(self) -> IngestService:
        self.committer.prepare()
        if self.cfg.metrics.enabled:
            from evidence.serve import EvidenceServer

            self.metrics_server = MetricsServer(self.cfg.metrics.host, self._metrics_port,
                                                self.metrics.render, self.health,
                                                EvidenceServer(self.cfg)).start()
        for name, fn in (("processor", self._processor), ("writer", self._writer),
                         ("watchdog", self._disk_watch)):
            t = threading.Thread(target=self._guarded(name, fn), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self.webhooks.start()
        if self.hj212 is not None:
            self.hj212.start()
        m = self.cfg.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                  properties=self._connect_props())
        self.client.loop_start()
        return self

    # -- disk ---------------------------------------------------------------------
    def _watched_paths(self) -> list[Path]:
        paths = [self.cfg.state_dir]
        if self.cfg.archive_dir is not None:
            paths.append(self.cfg.archive_dir)
        paths += self.cfg.disk.paths
        return paths

    def check_disk(self) -> dict[str, int]:
        """Free bytes of each watched path's filesystem that is below its bound; each
        filesystem going low raises one integrity alert, and one more when it recovers."""
        d = self.cfg.disk
        low: dict[str, int] = {}
        for p in self._watched_paths():
            probe = p
            while not probe.exists() and probe.parent != probe:
                probe = probe.parent
            try:
                st = shutil.disk_usage(probe)
            except OSError:
                continue
            self.metrics.set("disk_free_bytes", st.free, path=str(p))
            bound = max(d.min_free_bytes, st.total * d.min_free_pct / 100)
            if st.free < bound:
                low[str(p)] = st.free
        for path, free in low.items():
            if path not in self.disk_low:
                self._alert_disk(path, free, True)
        for path in self.disk_low:
            if path not in low:
                self._alert_disk(path, None, False)
        self.disk_low = low
        return low

    def _alert_disk(self, path: str, free: int | None, low: bool) -> None:
        d = self.cfg.disk
        detail: dict[str, Any] = {"path": path, "min_free_bytes": d.min_free_bytes,
                                  "min_free_pct": d.min_free_pct}
        if low:
            detail["free_bytes"] = free
            log.error("low disk space: %s has %s bytes free", path, free)
        else:
            detail["recovered"] = True
            log.warning("disk space recovered on %s", path)
        kind = "low_disk" if low else "disk_recovered"
        now = time.time()
        self.inbox.put_control(
            lambda p: service_event(p, kind, detail, scope=path, when=now))

    def _other_threads(self) -> dict[str, threading.Thread | None]:
        """Threads started by others (paho, webhooks, HJ 212, metrics): watched too."""
        out: dict[str, threading.Thread | None] = {
            "mqtt network": getattr(self.client, "_thread", None),
            "webhooks": getattr(self.webhooks, "_thread", None),
        }
        if self.hj212 is not None:
            out["hj212 listener"] = getattr(self.hj212, "_thread", None)
        if self.metrics_server is not None:
            out["metrics"] = getattr(self.metrics_server, "_thread", None)
        return out

    def check_threads(self) -> None:
        """Any thread of the worker that ended while the worker runs stops the worker
        (health false, exit code 70): a half-working ingest is worse than a restart."""
        if self.stop_event.is_set():
            return
        for name, t in self._other_threads().items():
            if t is not None and t.ident is not None and not t.is_alive():
                self._fail(f"thread {name} ended unexpectedly")
                return

    def _disk_watch(self) -> None:
        interval = min(self.cfg.disk.check_interval_s, 2.0)
        last_disk = 0.0
        while not self.stop_event.is_set():
            self.check_threads()
            if time.monotonic() - last_disk >= self.cfg.disk.check_interval_s:
                last_disk = time.monotonic()
                self.check_disk()
            self.stop_event.wait(interval)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server else None

    def stop(self, timeout: float = 30.0) -> None:
        """Write and acknowledge what was received, then disconnect. If InfluxDB is down
        the unwritten frames stay unacknowledged in the broker."""
        self.stop_event.set()
        if self.hj212 is not None:
            self.hj212.stop()
        for t in self._threads:
            t.join(timeout)
        self.webhooks.join()
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.committer.close()
        self.store.close()

    def wait(self) -> None:
        while not self.stop_event.wait(1.0):
            pass

    def status_line(self) -> str:
        return json.dumps(self.health())
