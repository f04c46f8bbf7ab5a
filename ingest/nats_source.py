"""Ingest worker that consumes frames from a partitioned NATS JetStream stream.

The broker side (stack/nats.py, docs/scaling.md): gateways publish over MQTT to any node;
the account maps ``stationseal.v1.<gw>.frames`` to ``stationseal.frames.<p>.<gw>`` with
``p = fnv1a32(gw) % P``, and the replicated ``FRAMES`` stream keeps them. This module is
the worker side. Everything after a frame is received — verification, chain tracking,
detection, batching, the InfluxDB write, the local commit — is the MQTT worker's
(:class:`ingest.service.IngestService`); only where frames come from and how they are
acknowledged differ:

* **Partition leases.** ``shard.count`` workers share the P partitions. Each worker
  announces itself with a key ``members.<id>`` and holds ``lease.<p>`` for every
  partition it consumes, in a key-value bucket whose entries expire after
  ``nats.lease_ttl_s``; both are renewed every third of that. A partition's owner is
  chosen by rendezvous hashing over the live members, so a joining or leaving worker
  moves only its share. Leases are taken with compare-and-set (create / update at a
  revision): at most one worker holds a partition. A worker that must hand a partition
  over stops fetching it, lets its frames be written and acknowledged, then deletes the
  lease; a worker that dies simply stops renewing, and its leases expire.
* **Consumers per ownership.** Taking a partition creates a new durable pull consumer
  for its subject, starting after the highest *acknowledgement floor* of the earlier
  consumers of that partition, then deletes those: frames the previous owner received
  but never acknowledged are delivered again at once, in stream order, and late
  acknowledgements from a previous owner can never touch the new consumer. Chain
  trackers of the partition's gateways are reloaded from the state database, where the
  previous owner committed them.
* **Acknowledged after the durable write.** A frame's JetStream acknowledgement is sent
  only after its batch was written to InfluxDB and committed locally (the writer thread
  of the base class), explicitly per frame (frames of one partition may be committed
  out of order across gateways: the inbox is fair per gateway).
* **Backpressure.** At most ``max_ack_pending`` frames per partition are delivered and
  unacknowledged; a full inbox stops the fetch loop. The stream keeps the rest.

nats-py's client is asyncio; it runs on its own thread and event loop, and the
processor and writer threads of the base class talk to it through thread-safe calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import paho.mqtt.client as mqtt

from ingest.config import IngestConfig
from ingest.metrics import HELP
from ingest.pipeline import Pipeline
from ingest.service import IngestService
from ingest.store import Digested

log = logging.getLogger("stationseal.ingest.nats")

HELP.update({
    "nats_acks_total": ("counter", "JetStream acknowledgements sent after the durable write."),
    "nats_partitions_owned": ("gauge", "Stream partitions this worker holds the lease of."),
    "nats_members": ("gauge", "Live ingest workers this worker sees in the lease bucket."),
    "nats_partition_changes_total": ("counter", "Partitions acquired, released and lost."),
})


def partition_of(gateway_id: str, partitions: int) -> int:
    """The partition nats-server's ``partition(P, 1)`` mapping gives a gateway: FNV-1a
    32 of the token modulo P (same as stack.nats.partition_of; the ingest must not
    import development tooling)."""
    h = 0x811C9DC5
    for b in gateway_id.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def owner_of(partition: int, members: list[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: a member's departure moves only the
    partitions it owned, a new member takes about 1/n of each other's."""
    best: tuple[bytes, str] | None = None
    for m in members:
        w = hashlib.blake2b(f"{partition}/{m}".encode(), digest_size=8).digest()
        if best is None or w > best[0]:
            best = (w, m)
    return best[1] if best else None


@dataclass
class _Ownership:
    partition: int
    epoch: int
    revision: int
    consumer: str
    task: asyncio.Task[None] | None = None
    releasing: bool = False
    alive: bool = True
    #: Monotonic time until which the lease is surely still ours (renewal start + 0.8
    #: TTL): no frame of the partition is fetched or acknowledged after it.
    valid_until: float = 0.0
    pending: set[int] = field(default_factory=set)


class _NatsLink:
    """Stands where the base class keeps its paho client: the writer acknowledges
    through :meth:`ack`, alerts go out through :meth:`publish`, and start/stop map to
    ``connect_async``/``loop_start``/``disconnect``/``loop_stop``."""

    def __init__(self, svc: NatsIngestService):
        self.svc = svc
        self.cfg = svc.cfg
        n = svc.cfg.nats
        assert n is not None
        self.n = n
        self.worker_id = (f"w{svc.shard_index}-{socket.gethostname()}-{os.getpid()}-"
                          f"{os.urandom(3).hex()}")
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="nats-put")
        self.owned: dict[int, _Ownership] = {}
        #: mid -> (epoch, partition, message)
        self.msgs: dict[int, tuple[int, int, Any]] = {}
        self._mid = 0
        self._epoch = 0
        self._lock = threading.Lock()
        self._acks: deque[Any] = deque()
        self._stopping = threading.Event()
        self.nc: Any = None
        self.js: Any = None
        self.kv: Any = None
        self.members: list[str] = []
        self.rebalances = 0

    # -- the paho-shaped surface the base class uses ----------------------------------
    def connect_async(self, *a: Any, **kw: Any) -> None:
        pass

    def loop_start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self.thread.start()

    def ack(self, mid: int, qos: int) -> None:
        with self._lock:
            entry = self.msgs.pop(mid, None)
            if entry is None:
                return
            epoch, part, msg = entry
            own = self.owned.get(part)
            if own is None or own.epoch != epoch or not own.alive \
                    or time.monotonic() > own.valid_until:
                # Its partition moved on: the new owner's consumer delivers it again.
                return
            own.pending.discard(mid)
            self._acks.append(msg)
        if len(self._acks) == 1:
            self._call(self._flush_acks)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        subject = topic.replace("/", ".")
        self._call(lambda: self.loop.create_task(self.nc.publish(subject, payload)))

    def disconnect(self) -> None:
        self._stopping.set()

    def loop_stop(self) -> None:
        if self.thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- event loop ------------------------------------------------------------------
    def _call(self, fn: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn)

    def _flush_acks(self) -> None:
        while True:
            with self._lock:
                if not self._acks:
                    return
                msgs = list(self._acks)
                self._acks.clear()
            for msg in msgs:
                self.loop.create_task(self._ack_one(msg))

    async def _ack_one(self, msg: Any) -> None:
        try:
            await msg.ack()
            self.svc.metrics.inc("nats_acks_total")
        except Exception as e:
            # Not acknowledged: redelivered after ack_wait or to the next owner (a
            # duplicate, which the chain tracker and the idempotent writes absorb).
            log.warning("acknowledging a frame failed: %s", e)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._main())
        self.loop.run_forever()

    def _tls(self) -> ssl.SSLContext | None:
        t = self.n.tls
        if t is None:
            return None
        ctx = ssl.create_default_context(cafile=str(t.ca_file) if t.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if t.cert_file:
            ctx.load_cert_chain(str(t.cert_file), str(t.key_file) if t.key_file else None)
        if t.insecure:
            ctx.check_hostname = False
        return ctx

    async def _main(self) -> None:
        import nats
        from nats.js.api import StorageType

        svc = self.svc

        async def on_disc() -> None:
            svc.connected.clear()
            if not self._stopping.is_set():
                log.warning("disconnected from NATS; reconnecting")

        async def on_reconn() -> None:
            svc.connected.set()
            log.info("reconnected to NATS at %s", self.nc.connected_url.netloc)

        async def on_err(e: Exception) -> None:
            log.warning("NATS: %s", e)

        while not self._stopping.is_set():
            try:
                self.nc = await nats.connect(
                    self.n.servers, user=self.n.username, password=self.n.resolved_password(),
                    tls=self._tls(), name=self.worker_id, connect_timeout=5,
                    max_reconnect_attempts=-1, reconnect_time_wait=1,
                    disconnected_cb=on_disc, reconnected_cb=on_reconn, error_cb=on_err)
                break
            except Exception as e:
                log.error("cannot connect to NATS %s: %s; retrying", self.n.servers, e)
                await asyncio.sleep(2)
        if self._stopping.is_set():
            return
        svc.gen = 1  # the base class acknowledges only items of the current generation
        svc.connected.set()
        log.info("connected to NATS %s as %s", self.nc.connected_url.netloc, self.worker_id)
        self.js = self.nc.jetstream(timeout=10)
        while not self._stopping.is_set():
            try:
                try:
                    self.kv = await self.js.key_value(self.n.leases_bucket)
                except Exception:
                    self.kv = await self.js.create_key_value(
                        bucket=self.n.leases_bucket, history=1, ttl=self.n.lease_ttl_s,
                        replicas=min(3, len(self.n.servers)), storage=StorageType.FILE)
                break
            except Exception as e:
                log.error("lease bucket %s: %s; retrying", self.n.leases_bucket, e)
                await asyncio.sleep(2)
        self.loop.create_task(self._renew_loop())
        # Workers started together (a supervisor, a rolling deploy) first see each other,
        # then take partitions: each takes its own share at once instead of one worker
        # taking all and handing most over a moment later.
        await asyncio.sleep(min(self.n.lease_ttl_s, 5.0) / 2)
        while not self._stopping.is_set():
            try:
                await self._tick()
            except Exception as e:
                # Typically the lease bucket without a leader for a moment (just created,
                # or a node died): the next round tries again.
                log.warning("partition lease round failed: %s: %s", type(e).__name__, e)
            await asyncio.sleep(self.n.lease_ttl_s / 3)

    async def _renew_loop(self) -> None:
        """Renews membership and leases on its own schedule, so slow consumer creation
        while partitions are being taken never lets a held lease lapse."""
        from nats.js.errors import KeyWrongLastSequenceError

        while not self._stopping.is_set():
            t0 = time.monotonic()
            try:
                doc = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "owned": sorted(self.owned), "t": time.time()}).encode()
                await self.kv.put(f"members.{self.worker_id}", doc)
                for own in list(self.owned.values()):
                    if not own.alive:
                        continue
                    t1 = time.monotonic()
                    try:
                        own.revision = await self.kv.update(
                            f"lease.{own.partition}", self.worker_id.encode(),
                            last=own.revision)
                        own.valid_until = t1 + 0.8 * self.n.lease_ttl_s
                    except KeyWrongLastSequenceError:
                        log.error("lost the lease of partition %d (not renewed in time)",
                                  own.partition)
                        await self._drop(own)
            except Exception as e:
                log.warning("renewing leases: %s", e)
            await asyncio.sleep(max(0.0, self.n.lease_ttl_s / 4 - (time.monotonic() - t0)))

    # -- leases ------------------------------------------------------------------------
    async def _live_members(self) -> list[str]:
        from nats.js.errors import NoKeysError

        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        return sorted(k.split(".", 1)[1] for k in keys if k.startswith("members."))

    async def _tick(self) -> None:
        """One rebalancing round: hand over what another member should own, take what
        is ours and free."""
        from nats.js.errors import KeyWrongLastSequenceError

        members = await self._live_members()
        if self.worker_id not in members:
            members = sorted([*members, self.worker_id])
        self.members = members
        take: list[tuple[int, int, float]] = []
        for p in range(self.n.partitions):
            target = owner_of(p, members)
            own = self.owned.get(p)
            if own is not None:
                if not own.releasing and target != self.worker_id:
                    own.releasing = True
                    self.loop.create_task(self._release(own))
            elif target == self.worker_id:
                t0 = time.monotonic()
                try:
                    rev = await self.kv.create(f"lease.{p}", self.worker_id.encode())
                except KeyWrongLastSequenceError:
                    continue  # still held: its owner hands it over or its lease expires
                take.append((p, rev, t0))
        if take:
            await asyncio.gather(*(self._acquire(p, rev, t0) for p, rev, t0 in take))
        self.svc.metrics.set("nats_members", len(members))

    async def _acquire(self, p: int, revision: int, t0: float) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        self._epoch += 1
        name = f"ingest-p{p}-{os.urandom(4).hex()}"
        own = _Ownership(p, self._epoch, revision, name,
                         valid_until=t0 + 0.8 * self.n.lease_ttl_s)
        self.owned[p] = own  # renewed from now on, while the consumer is being set up
        try:
            subject = f"{self.n.partition_subject}.{p}.*"
            floor = 0
            old: list[str] = []
            for ci in await self.js.consumers_info(self.n.stream):
                if ci.config.filter_subject == subject:
                    old.append(ci.name)
                    if ci.ack_floor is not None:
                        floor = max(floor, ci.ack_floor.stream_seq)
            cfg = ConsumerConfig(
                durable_name=name, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if floor else DeliverPolicy.ALL,
                opt_start_seq=floor + 1 if floor else None, ack_wait=self.n.ack_wait_s,
                max_ack_pending=self.n.max_ack_pending, max_deliver=-1)
            # New consumer first, then the old ones go: a crash in between leaves two
            # consumers (the next owner takes the higher floor), never none.
            await self.js.add_consumer(self.n.stream, cfg)
            for o in old:
                with contextlib.suppress(Exception):
                    await self.js.delete_consumer(self.n.stream, o)
            psub = await self.js.pull_subscribe_bind(durable=name, stream=self.n.stream)
        except Exception as e:
            log.error("taking partition %d failed: %s; releasing it", p, e)
            own.alive = False
            self.owned.pop(p, None)
            with contextlib.suppress(Exception):
                await self.kv.delete(f"lease.{p}", last=own.revision)
            return
        # Gateways of this partition may have been processed elsewhere meanwhile: their
        # chain state is reloaded from the state database before the first new frame.
        parts = self.n.partitions
        self.svc.inbox.put_control(lambda pl: _forget_partition(pl, p, parts))
        own.task = self.loop.create_task(self._fetch(own, psub))
        self.rebalances += 1
        self.svc.metrics.inc("nats_partition_changes_total", change="acquired")
        log.info("partition %d acquired (consumer %s, from stream seq %d)", p, name,
                 floor + 1)

    def _forget(self, partition: int) -> None:
        """Drop this worker's in-memory chain trackers of a partition it no longer owns:
        kept, they would go stale, and a periodic gap check marking one dirty would
        commit its old state over the new owner's in the shared state database."""
        parts = self.n.partitions
        self.svc.inbox.put_control(lambda pl: _forget_partition(pl, partition, parts))

    async def _drop(self, own: _Ownership) -> None:
        own.alive = False
        self.owned.pop(own.partition, None)
        if own.task is not None:
            own.task.cancel()
        self._forget(own.partition)
        self.svc.metrics.inc("nats_partition_changes_total", change="lost")

    async def _release(self, own: _Ownership) -> None:
        """Hand a partition over: stop fetching, wait until what was fetched is written
        and acknowledged (bounded), then delete the lease for the new owner."""
        if own.task is not None:
            own.task.cancel()
        # No time limit: while InfluxDB is down nothing drains, and handing the partition
        # over then would only have two workers writing its frames. The lease stays
        # renewed meanwhile; a dead worker loses it by expiry instead.
        while own.pending and own.alive and not self._stopping.is_set():
            await asyncio.sleep(0.05)
        if not own.alive:
            return
        own.alive = False
        self.owned.pop(own.partition, None)
        self._forget(own.partition)
        # The control item is handled before anything queued after it; what this worker
        # committed is in the state database before the lease goes.
        with contextlib.suppress(Exception):
            await self.kv.delete(f"lease.{own.partition}", last=own.revision)
        self.svc.metrics.inc("nats_partition_changes_total", change="released")
        log.info("partition %d released", own.partition)

    async def _fetch(self, own: _Ownership, psub: Any) -> None:
        import nats.errors

        while own.alive and not own.releasing and not self._stopping.is_set():
            if time.monotonic() > own.valid_until:
                await asyncio.sleep(0.05)  # renewal late: fetch nothing we may not own
                continue
            try:
                # A pull request for n frames is answered when n are there or it expires:
                # wait for the first only, then take at once what else is there (a
                # long batch wait would add up to its time-out to every frame's latency).
                msgs = await psub.fetch(1, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("fetch from partition %d: %s", own.partition, e)
                await asyncio.sleep(1.0)
                continue
            if self.n.fetch_batch > 1:
                with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                    msgs += await psub.fetch(self.n.fetch_batch - 1, timeout=0.01)
            if not own.alive:
                return
            # The inbox may block (backpressure): on a thread, never on the event loop.
            await self.loop.run_in_executor(self.pool, self._enqueue, own, msgs)

    def _enqueue(self, own: _Ownership, msgs: list[Any]) -> None:
        svc = self.svc
        cfg = self.cfg
        prefix = cfg.mqtt.topic_prefix
        parts = self.n.partitions
        head = cfg.quarantine.head_bytes
        for msg in msgs:
            t = time.time()
            subj: str = msg.subject
            tokens = subj.rsplit(".", 2)
            gw = tokens[-1] if len(tokens) == 3 else ""
            topic = f"{prefix}/{gw}/frames"
            with self._lock:
                self._mid += 1
                mid = self._mid
                self.msgs[mid] = (own.epoch, own.partition, msg)
                own.pending.add(mid)
            with svc._unacked_lock:
                svc.unacked += 1
            raw: bytes = msg.data
            refused: str | None = None
            payload: Any = raw
            if not gw or partition_of(gw, parts) != own.partition:
                refused = "partition_mismatch"
                payload = (subj, raw)
            elif len(raw) > cfg.mqtt.max_message_bytes:
                refused = "oversize"
                payload = Digested(raw, head)
            item = (svc.gen, mid, 1, topic, payload, t, refused)
            svc.inbox.put(topic, item, head if refused == "oversize" else len(raw))

    async def _shutdown(self) -> None:
        self._stopping.set()
        for own in list(self.owned.values()):
            if own.task is not None:
                own.task.cancel()
        # Flush acknowledgements the writer sent last, then leave: the leases expire
        # (or are deleted here) and the partitions move to the other workers.
        self._flush_acks()
        await asyncio.sleep(0.2)
        for own in list(self.owned.values()):
            with contextlib.suppress(Exception):
                await self.kv.delete(f"lease.{own.partition}", last=own.revision)
        if self.kv is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(f"members.{self.worker_id}")
        me = asyncio.current_task()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)  # the last acknowledgements
        for t in [t for t in asyncio.all_tasks() if t is not me]:
            if t.get_coro().__qualname__.startswith("_NatsLink"):  # type: ignore[union-attr]
                t.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


def _forget_partition(p: Pipeline, partition: int, partitions: int) -> None:
    """On the processor thread: the partition's gateways are reloaded from the state
    database the next time one of their frames arrives (and nothing of them is in the
    next snapshot: their state is not this worker's to commit now)."""
    for gw in [g for g in p.trackers if partition_of(g, partitions) == partition]:
        del p.trackers[gw]
        p.dirty.discard(gw)


class NatsIngestService(IngestService):
    """One worker consuming the partitions it holds leases for (see module doc)."""

    def __init__(self, cfg: IngestConfig, shard_index: int = 0,
                 shard_count: int | None = None, metrics_port: int | None = None):
        if cfg.nats is None:
            raise ValueError("NatsIngestService needs a `nats:` section in the config")
        super().__init__(cfg, shard_index, shard_count, metrics_port)
        self.metrics.gauge_fn("nats_partitions_owned", lambda: len(self.link.owned))

    @property
    def link(self) -> _NatsLink:
        return cast(_NatsLink, self.client)

    def _make_client(self) -> mqtt.Client:
        # The base class drives its broker client through ack/publish/connect_async/
        # loop_start/disconnect/loop_stop; _NatsLink offers exactly those.
        return cast(mqtt.Client, _NatsLink(self))

    def _owns(self, topic: str) -> bool:
        # Ownership is per partition (leases), decided before a frame is queued.
        return True

    def _refuse(self, topic: str, payload: bytes, t: float, ack: tuple[int, int, int],
                reason: str) -> None:
        if reason != "partition_mismatch":
            super()._refuse(topic, payload, t, ack, reason)
            return
        subject, raw = cast(tuple[str, bytes], payload)
        p = self.pipeline
        b = p.batch
        b.messages += 1
        b.acks.append(ack)
        n = self.cfg.nats
        assert n is not None
        p._quarantine(topic, raw, t, "partition_mismatch",
                      f"frame on subject {subject!r}, but its gateway maps to partition "
                      f"{partition_of(topic.split('/')[-2], n.partitions)} of "
                      f"{n.partitions}: published to a partition subject directly, or "
                      "nats.partitions differs from the cluster's mapping", None)

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["nats_partitions"] = sorted(self.link.owned)
        out["nats_worker"] = self.link.worker_id
        return out
