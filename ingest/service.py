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

import json
import logging
import queue
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ingest.alerts import AlertUpdate, JsonlSink, WebhookDelivery
from ingest.config import IngestConfig, shard_of
from ingest.custody.service import open_receipt_log
from ingest.engine_hook import make_engine
from ingest.influx import ReliableWriter, Stopped, make_writer
from ingest.metrics import Metrics, MetricsServer
from ingest.pipeline import Batch, Pipeline, write_archive
from ingest.store import Store
from stationseal.export import gateway_of_topic

log = logging.getLogger("stationseal.ingest")

_Item = tuple[int, int, int, str, bytes, float]  # (conn gen, mid, qos, topic, payload, t)


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
        metrics.set("influx_up", 1)

    def _on_state(self, up: bool, err: str | None) -> None:
        self.metrics.set("influx_up", 1 if up else 0)

    def prepare(self) -> None:
        if self.cfg.influx.version == 1 and self.cfg.influx.create_database:
            from ingest.influx import V1Writer, wait_until

            assert isinstance(self.raw, V1Writer)
            wait_until(self.raw.ping, 30)
            self.raw.create_database()

    def commit(self, b: Batch) -> list[AlertUpdate]:
        """Write, then record locally. Raises :class:`Stopped` if shut down while
        InfluxDB is unreachable (the batch then stays unacknowledged)."""
        t0 = time.monotonic()
        retries0 = self.writer.retries
        rejected = self.writer.write(b.lines)
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
        self.store.commit_batch(b.chain, b.outbox, rejected, b.alert_rows, b.receipts)
        try:
            self.custody.maybe_checkpoint()
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
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.db_path)
        self.metrics = Metrics({"shard": str(shard_index)} if self.shard_count > 1 else None)
        self.pipeline = Pipeline(cfg, self.store, self.metrics, source="mqtt",
                                 engine=make_engine(cfg.detection))
        self.committer = Committer(cfg, self.store, self.metrics, self.stop_event)
        self.webhooks = WebhookDelivery(self.store, cfg.alerts, self.stop_event, self.metrics)
        self.inbox: queue.Queue[_Item] = queue.Queue()
        self.writer_q: queue.Queue[Batch | None] = queue.Queue(maxsize=2)
        self.writer_idle = threading.Event()
        self.writer_idle.set()
        self.gen = 0
        self.connected = threading.Event()
        self.unacked = 0
        self._unacked_lock = threading.Lock()
        self.last_commit = time.time()
        self.client = self._make_client()
        self._threads: list[threading.Thread] = []
        self.metrics_server: MetricsServer | None = None
        self._metrics_port = cfg.metrics.port if metrics_port is None else metrics_port
        self.metrics.gauge_fn("backlog_messages", lambda: self.unacked)
        self.metrics.gauge_fn("mqtt_connected", lambda: 1 if self.connected.is_set() else 0)
        self.metrics.gauge_fn("webhook_outbox", self.store.outbox_size)
        #: HJ 212 listener for legacy sites (ingest/hj212_ingest.py): one per service
        self.hj212: Any = None
        if cfg.hj212 is not None and shard_index == 0:
            from ingest.hj212_ingest import HJ212Ingest

            self.hj212 = HJ212Ingest(cfg, self.store, self.metrics, self.stop_event)

    # -- MQTT -----------------------------------------------------------------------
    @property
    def client_id(self) -> str:
        base = self.cfg.mqtt.client_id
        return base if self.shard_count == 1 or self.cfg.shard.mode == "shared" \
            else f"{base}-{self.shard_index}"

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
        if m.username:
            c.username_pw_set(m.username, m.resolved_password())
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
        log.info("connected to %s:%d as %s (session present: %s)", self.cfg.mqtt.host,
                 self.cfg.mqtt.port, self.client_id, flags.session_present)
        c.subscribe(self.topic, options=SubscribeOptions(qos=1))

    def _on_disconnect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        self.connected.clear()
        if not self.stop_event.is_set():
            log.warning("disconnected from broker (%s); reconnecting", rc)

    def _on_publish(self, c: mqtt.Client, u: Any, mid: int, rc: Any, props: Any) -> None:
        # MQTT 5 PUBACK reason: a broker ACL refusing the alerts topic shows up here.
        ok = not getattr(rc, "is_failure", False)
        self.metrics.inc("alerts_published_total", result="ok" if ok else "refused")
        if not ok:
            log.error("broker refused an alert publish: %s", rc)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._unacked_lock:
            self.unacked += 1
        self.inbox.put((self.gen, msg.mid, msg.qos, msg.topic, bytes(msg.payload),
                        time.time()))

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
                gen, mid, qos, topic, payload, t = self.inbox.get(timeout=timeout)
            except queue.Empty:
                gen = -1
            if gen >= 0:
                ack = (gen, mid, qos)
                if self._owns(topic):
                    try:
                        p.handle(topic, payload, t, ack)
                    except Exception:
                        # A bug must not lose the frame: keep it in quarantine as evidence.
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
                self.writer_q.put(p.seal())
        if self.cfg.detection.finish_on_stop:
            p.finish_detection()
        if not p.batch.empty():
            self.writer_q.put(p.seal())
        self.writer_q.put(None)

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
            except Exception:
                log.exception("committing a batch failed; stopping without acknowledging")
                self.stop_event.set()
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
            now = time.time()
            self.last_commit = now
            if b.created:
                for c in b.created:
                    self.metrics.observe("reading_latency_seconds", max(0.0, now - c))
            self._publish_alerts(updates)
            if updates and self.webhooks.hooks:
                self.webhooks.wake.set()
            if self.writer_q.empty():
                self.writer_idle.set()

    def _publish_alerts(self, updates: list[AlertUpdate]) -> None:
        if not self.cfg.alerts.mqtt:
            return
        for u in updates:
            self.client.publish(f"{self.cfg.mqtt.topic_prefix}/alerts/{u.site}", u.body(),
                                qos=self.cfg.mqtt.alerts_qos)

    # -- lifecycle ------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        influx_ok = self.committer.writer.up
        ok = self.connected.is_set() and influx_ok and not self.stop_event.is_set()
        return {
            "ok": ok,
            "shard": f"{self.shard_index}/{self.shard_count}",
            "mqtt_connected": self.connected.is_set(),
            "influx_ok": influx_ok,
            "backlog": self.unacked,
            "last_commit_age_s": round(time.time() - self.last_commit, 3),
        }

    def start(self) -> IngestService:
        self.committer.prepare()
        if self.cfg.metrics.enabled:
            self.metrics_server = MetricsServer(self.cfg.metrics.host, self._metrics_port,
                                                self.metrics.render, self.health).start()
        for name, fn in (("processor", self._processor), ("writer", self._writer)):
            t = threading.Thread(target=fn, name=name, daemon=True)
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
