"""Uplinks: MQTT over TLS, or a JSON Lines export file for air-gapped sites.

Each runs in its own thread, so a slow TLS handshake over a cellular link, a DNS lookup
without a time-out or an fsync on a worn SD card never delays polling. A transport
publishes only what the :class:`agent.dispatch.Dispatcher` hands it and reports back
through the event loop: ``link_up(gen)``, ``delivered(gen, seqs)``, ``link_down(gen)``.
``gen`` numbers connections, so nothing from a dead connection is mistaken for the
current one.

MQTT specifics, checked against paho-mqtt 2.2's source:

* paho keeps unacknowledged QoS 1 messages in its own memory and re-sends them after
  ``reconnect()``, and ``publish()`` while disconnected returns ``MQTT_ERR_NO_CONN`` yet
  still queues the message. Both would make paho a second, unbounded, volatile buffer.
  So every connection uses a fresh ``Client``: when it fails, the client and whatever it
  held are discarded, and the frames, still in the outbox, are handed to the next one.
* paho's ``reconnect_delay_set`` doubles the delay without jitter, so a site's gateways
  that lost the broker together would reconnect together. The loop here waits a random
  time in ``[min, min(max, min * 2**attempt)]`` ("full jitter") between attempts.
* MQTT 5 is used because its PUBACK carries a reason code: Mosquitto answers a publish
  the ACL refuses with 0x87 "not authorized" instead of 3.1.1's silent success, so a
  refused frame stays in the outbox instead of being deleted as delivered, and a
  publish nobody subscribed to with 0x10 "no matching subscribers", which is not a
  delivery either (the broker dropped it): reported as ``unrouted``, kept, sent again
  later. Brokers without MQTT 5 (NATS 2.9) get 3.1.1 (``protocol="3.1.1"``, or
  ``"auto"``, which falls back when the broker answers "unsupported protocol version");
  there a publish the broker's permissions refuse is acknowledged like any other, and
  the gap it leaves in the chain is what the ingest reports (with ``confirm: ingest``
  the frame is not deleted either: no acknowledgement comes).
* With ``acks_topic`` set the session subscribes to the ingest's end-to-end
  acknowledgements (docs/acks.md) with a persistent session (clean start off, expiry
  ``session_expiry_s``), so acknowledgements published while the gateway is offline wait
  in the broker for it. PUBACKs are then reported as ``published`` (at the broker), and
  only the acknowledgements as ``confirmed``.
* The client is driven with ``loop_read/loop_write/loop_misc`` around our own
  ``select`` (paho's documented external-loop API), all in this one thread; the event
  loop wakes it through a socket pair when it hands over frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from stationseal.acks import parse_acks
from stationseal.export import line_for, read_frames
from stationseal.frame import FrameError, decode, split_payload

if TYPE_CHECKING:
    from agent.dispatch import Dispatcher

log = logging.getLogger("stationseal.agent")


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential back-off: uniform in [min, min(max, min * 2**attempt)]."""
    cap = min(max_s, min_s * 2.0 ** min(attempt, 30))
    return rng.uniform(min_s, max(min_s, cap))


class _Link:
    """State shared by both transports: generation, counters, the status snapshot."""

    kind = "?"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, bytes]] = deque()
        self._gen = 0
        self._up_gen: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._disp: Dispatcher | None = None
        self._state: dict[str, Any] = {"kind": self.kind, "state": "starting",
                                       "since": time.time(), "last_error": None,
                                       "connects": 0, "delivered_frames": 0}

    def start(self, dispatcher: Dispatcher) -> None:
        self._disp = dispatcher
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name=f"uplink-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def _set(self, state: str | None = None, **kw: Any) -> None:
        with self._lock:
            if state is not None and state != self._state["state"]:
                self._state["state"] = state
                self._state["since"] = time.time()
            self._state.update(kw)

    def _post(self, method: str, *args: Any) -> None:
        loop, disp = self._loop, self._disp
        if loop is None or disp is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(getattr(disp, method), *args)

    def _up(self) -> int:
        with self._lock:
            self._gen += 1
            self._up_gen = self._gen
            self._queue.clear()
            gen = self._gen
        self._post("link_up", gen)
        return gen

    def _down(self, error: str | None) -> None:
        with self._lock:
            gen, self._up_gen = self._up_gen, None
            self._queue.clear()
        if gen is not None:
            self._post("link_down", gen)
        if error:
            self._set(last_error=error, last_error_at=time.time())

    def _take(self, gen: int) -> list[tuple[int, bytes]]:
        with self._lock:
            if self._up_gen != gen or not self._queue:
                return []
            items = list(self._queue)
            self._queue.clear()
            return items

    def _enqueue(self, gen: int, items: list[tuple[int, bytes]]) -> bool:
        with self._lock:
            if gen != self._up_gen:
                return False  # handed over for a connection that is gone: dispatcher resets
            self._queue.extend(items)
            return True


class MqttTransport(_Link):
    kind = "mqtt"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        gateway_id: str,
        frames_topic: str,
        status_topic: str,
        birth: dict[str, Any],
        tls: ssl.SSLContext | None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        max_inflight: int = 16,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 300.0,
        connect_timeout_s: float = 15.0,
        ack_timeout_s: float = 60.0,
        rng: random.Random | None = None,
        protocol: str = "5",
        acks_topic: str | None = None,
        session_expiry_s: int = 86400,
        checkpoint_path: Path | None = None,
    ) -> None:
        super().__init__()
        self.acks_topic = acks_topic
        #: Where the latest central checkpoint riding on the acknowledgements is kept
        #: (agent/checkpoint.py, docs/evidence.md §3).
        self.checkpoint_path = checkpoint_path
        self.session_expiry_s = session_expiry_s
        self.host = host
        self.port = port
        self.gateway_id = gateway_id
        self.frames_topic = frames_topic
        self.status_topic = status_topic
        self.birth = birth
        self.tls = tls
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        if protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"MQTT protocol {protocol!r}: use auto, 5 or 3.1.1")
        #: The version the next connection uses; "auto" starts with 5.
        self.protocol = "5" if protocol == "auto" else protocol
        self._auto = protocol == "auto"
        self._fell_back = False
        self._rng = rng or random.Random()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._state.update(broker=f"{host}:{port}", reconnect_in_s=None)

    # -- called from the event loop ------------------------------------------------
    def submit(self, gen: int, items: list[tuple[int, bytes]]) -> None:
        if self._enqueue(gen, items):
            self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- uplink thread -------------------------------------------------------------
    def _main(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            healthy = self._session()
            if self._stop.is_set():
                break
            if self._fell_back:
                self._fell_back = False
                continue  # the broker spoke: try 3.1.1 at once, not after a back-off
            attempt = 0 if healthy else attempt + 1
            delay = backoff_delay(attempt, self.backoff_min_s, self.backoff_max_s, self._rng)
            self._set("backoff", reconnect_in_s=round(delay, 3))
            self._stop.wait(delay)

    def _status_payload(self, online: bool) -> bytes:
        doc = {**self.birth, "online": online, "time": time.time()}
        if not online:
            doc = {k: doc[k] for k in ("online", "gateway_id", "boot_id", "time") if k in doc}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    def _session(self) -> bool:
        """One connection, from connect to failure. True if it got far enough to count
        as healthy (a delivery acknowledged, or a minute connected), which resets the
        back-off."""
        s = _Session(self.gateway_id, self.acks_topic, self.checkpoint_path)
        v5 = self.protocol == "5"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.gateway_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             # 3.1.1: a persistent session keeps acknowledgements too
                             clean_session=None if v5 else self.acks_topic is None)
        client.connect_timeout = self.connect_timeout_s
        if self.tls is not None:
            client.tls_set_context(self.tls)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        # The broker publishes this (retained) if the gateway vanishes without a clean
        # disconnect: power cut, cellular loss beyond 1.5 x keepalive, kill -9.
        client.will_set(self.status_topic, self._status_payload(False), qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight + 2)
        client.on_connect = s.on_connect
        client.on_publish = s.on_publish
        client.on_disconnect = s.on_disconnect
        client.on_message = s.on_message
        self._set("connecting", reconnect_in_s=None)
        props: Any = None
        if self.acks_topic is not None:
            make: Any = Properties  # untyped in paho
            props = make(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
        try:
            if v5:
                client.connect(self.host, self.port, self.keepalive,
                               clean_start=self.acks_topic is None, properties=props)
            else:
                client.connect(self.host, self.port, self.keepalive)
        except (OSError, ValueError) as e:
            self._down(f"connect to {self.host}:{self.port}: {e}")
            return False
        sock: Any = client.socket()
        if sock is None:
            self._down(f"connect to {self.host}:{self.port}: no socket")
            return False
        deadline = time.monotonic() + self.connect_timeout_s
        gen: int | None = None
        up_since: float | None = None
        mids: dict[int, tuple[int, float]] = {}  # mid -> (seq, monotonic time sent)
        error: str | None = None
        try:
            while True:
                if self._stop.is_set():
                    if gen is not None:
                        self._goodbye(client, sock, s)
                        self._deliver(s, mids, gen)
                    break
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
                want_w = client.want_write()
                timeout = 0.0 if pending else 1.0
                try:
                    rl, wl, _ = select.select([sock, self._wake_r],
                                              [sock] if want_w else [], [], timeout)
                except (OSError, ValueError) as e:
                    error = f"socket: {e}"
                    break
                if self._wake_r in rl:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                if sock in rl or pending:
                    rc = client.loop_read()
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and sock in wl:
                    rc = client.loop_write()
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    rc = client.loop_misc()
                if s.refused is not None:
                    error = s.refused
                    if self._auto and v5 and s.unsupported_version:
                        log.info("broker %s:%d has no MQTT 5; using 3.1.1", self.host,
                                 self.port)
                        self.protocol = "3.1.1"
                        self._fell_back = True
                    break
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                    error = s.disconnect_reason or f"connection lost ({mqtt.error_string(rc)})"
                    break
                if gen is None:
                    if not s.connected:
                        if time.monotonic() > deadline:
                            error = f"no CONNACK within {self.connect_timeout_s:g} s"
                            break
                        continue
                    client.publish(self.status_topic, self._status_payload(True), qos=1,
                                   retain=True)
                    if self.acks_topic is not None:
                        client.subscribe(self.acks_topic, qos=1)
                    with self._lock:
                        self._state["connects"] += 1
                    self._set("connected", reconnect_in_s=None)
                    gen = self._up()
                    up_since = time.monotonic()
                    log.info("uplink connected to %s:%d", self.host, self.port)
                if s.acked or s.unrouted:
                    self._deliver(s, mids, gen)
                if s.confirmed:
                    items, s.confirmed = s.confirmed, []
                    self._post("confirmed", items)
                if s.rejected:
                    m, reason = s.rejected[0]
                    what = f"frame seq {mids[m][0]}" if m in mids else "the status message"
                    error = f"broker refused {what}: {reason}"
                    break
                now = time.monotonic()
                too_big: list[int] = []
                for seq, payload in self._take(gen):
                    if s.max_packet and len(payload) + len(self.frames_topic) + 16 > \
                            s.max_packet:
                        # The broker would disconnect us, and we would resend it after
                        # every reconnect: keep it in the outbox instead, and say so.
                        too_big.append(seq)
                        continue
                    info = client.publish(self.frames_topic, payload, qos=1)
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        error = f"publish: {mqtt.error_string(info.rc)}"
                        break
                    mids[info.mid] = (seq, now)
                if too_big:
                    log.error("frame(s) %s exceed the broker's maximum packet size %d: kept "
                              "in the outbox, not sent", too_big, s.max_packet)
                    with self._lock:
                        self._state["oversize_frames"] = \
                            self._state.get("oversize_frames", 0) + len(too_big)
                    self._post("unrouted", gen, too_big)
                if error:
                    break
                if mids and now - min(t for _, t in mids.values()) > self.ack_timeout_s:
                    error = f"no PUBACK within {self.ack_timeout_s:g} s"
                    break
        finally:
            if error:
                log.warning("uplink %s:%d: %s", self.host, self.port, error)
            self._down(error)
            with contextlib.suppress(Exception):
                sock.close()
        return s.healthy or (up_since is not None and time.monotonic() - up_since >= 60)

    def _deliver(self, s: _Session, mids: dict[int, tuple[int, float]], gen: int) -> None:
        done = [mids.pop(m)[0] for m in s.acked if m in mids]
        s.acked.clear()
        unrouted = [mids.pop(m)[0] for m in s.unrouted if m in mids]
        s.unrouted.clear()
        if done:
            s.healthy = True
            with self._lock:
                self._state["delivered_frames"] += len(done)
            self._post("published", gen, done)
        if unrouted:
            with self._lock:
                self._state["unrouted_frames"] = self._state.get("unrouted_frames", 0) + \
                    len(unrouted)
            self._post("unrouted", gen, unrouted)

    def _goodbye(self, client: mqtt.Client, sock: Any, s: _Session) -> None:
        """Clean stop: replace the retained birth with "offline" (a clean DISCONNECT
        does not trigger the will), wait briefly for its PUBACK, disconnect."""
        info = client.publish(self.status_topic, self._status_payload(False), qos=1,
                              retain=True)
        s.watch = info.mid
        end = time.monotonic() + 2.0
        while time.monotonic() < end and not s.watch_acked:
            rl, wl, _ = select.select([sock], [sock] if client.want_write() else [], [], 0.1)
            if (sock in rl and client.loop_read()) or (sock in wl and client.loop_write()):
                break
        client.disconnect()
        with contextlib.suppress(Exception):
            client.loop_write()


#: PUBACK reason 0x10: accepted, but no subscription matched, so the broker dropped it.
NO_MATCHING_SUBSCRIBERS = 0x10
class _Session:
    """Callback sink of one paho client (runs in the uplink thread)."""

    def __init__(self, gateway_id: str = "", acks_topic: str | None = None,
                 checkpoint_path: Path | None = None) -> None:
        self.gateway_id = gateway_id
        self.acks_topic = acks_topic
        self.checkpoint_path = checkpoint_path
        self.connected = False
        self.refused: str | None = None
        self.unsupported_version = False
        self.disconnect_reason: str | None = None
        self.acked: list[int] = []
        self.unrouted: list[int] = []
        self.confirmed: list[tuple[int, bytes]] = []
        self.watch: int | None = None  # a status message whose PUBACK is awaited
        self.watch_acked = False
        self.rejected: list[tuple[int, str]] = []
        self.healthy = False
        self.max_packet = 0

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                   props: Any) -> None:
        if rc.is_failure:
            self.refused = f"broker refused connection: {rc}"
            # 0x84 in MQTT 5; paho maps a 3.1.1-style refusal (code 1) to the same.
            self.unsupported_version = rc.value == 0x84
        else:
            self.connected = True
            # MQTT 5 CONNACK: the largest packet the broker accepts (it disconnects a
            # client that sends a bigger one). paho does not check it itself.
            self.max_packet = int(getattr(props, "MaximumPacketSize", 0) or 0)

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode,
                   props: Any) -> None:
        if mid == self.watch:
            self.watch_acked = True
            return
        if rc.is_failure:
            self.rejected.append((mid, str(rc)))
        elif rc.value == NO_MATCHING_SUBSCRIBERS:
            self.unrouted.append(mid)
        else:
            self.acked.append(mid)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.acks_topic:
            return
        try:
            self.confirmed += parse_acks(bytes(msg.payload), self.gateway_id)
        except ValueError as e:
            log.warning("acknowledgement on %s ignored: %s", msg.topic, e)
            return
        if self.checkpoint_path is not None:
            keep_checkpoint(self.checkpoint_path, bytes(msg.payload))

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode,
                      props: Any) -> None:
        self.disconnect_reason = f"disconnected: {rc}"


def keep_checkpoint(path: Path, payload: bytes) -> None:
    """The ``checkpoint`` member of an acknowledgement, if any, kept when newer."""
    from agent.checkpoint import keep_latest
    from stationseal.checkpoint import CheckpointError

    try:
        doc = json.loads(payload).get("checkpoint")
        if doc is not None:
            keep_latest(path, doc)
    except (CheckpointError, ValueError, AttributeError, OSError) as e:
        log.warning("central checkpoint in an acknowledgement not kept: %s", e)


class FileTransport(_Link):
    """``--output file:PATH``: a frame is delivered once its line is fsynced.

    On start, a partial last line (the process died mid-write) is cut off and the
    sequence numbers already in the file's tail are remembered, so that frames written
    but not yet deleted from the outbox when the process died are not written twice.
    """

    kind = "file"
    #: How far back the tail is read at start, and how many of its frames are kept to
    #: compare against: frames written but not yet deleted when the process died are at
    #: most the inflight window plus the deletions not yet committed.
    TAIL_BYTES = 4 * 2**20
    TAIL_FRAMES = 256

    def __init__(self, path: str | Path, *, gateway_id: str, topic: str,
                 retry_s: float = 5.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.gateway_id = gateway_id
        self.topic = topic
        self.retry_s = retry_s
        self._cv = threading.Condition(self._lock)
        self._written: dict[int, bytes] = {}
        self._state.update(path=str(self.path))

    def submit(self, gen: int, items: list[tuple[int, bytes]]) -> None:
        if self._enqueue(gen, items):
            with self._cv:
                self._cv.notify()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                fd = self._open()
            except OSError as e:
                self._down(f"{self.path}: {e.strerror or e}")
                self._set("backoff")
                self._stop.wait(self.retry_s)
                continue
            try:
                self._serve(fd)
            except OSError as e:
                self._down(f"{self.path}: {e.strerror or e}")
                self._set("backoff")
                self._stop.wait(self.retry_s)
            finally:
                os.close(fd)

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - self.TAIL_BYTES)
            tail = os.pread(fd, size - start, start)
            cut = tail.rfind(b"\n") + 1
            if cut < len(tail):  # a torn line from a crash: that frame was never acked
                os.ftruncate(fd, start + cut)
                os.fsync(fd)
                tail = tail[:cut]
            self._written = self._tail_frames(tail[tail.find(b"\n") + 1:] if start else tail)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _tail_frames(self, tail: bytes) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for ff in read_frames(io.StringIO(tail.decode("utf-8", errors="replace"))):
            if ff.payload is None:
                continue
            try:
                f = decode(ff.payload)
            except FrameError:
                continue
            if f.gateway_id == self.gateway_id:
                out[f.seq] = f.frame_hash
                if len(out) > self.TAIL_FRAMES:
                    del out[next(iter(out))]
        return out

    def _serve(self, fd: int) -> None:
        gen = self._up()
        self._set("connected")
        while not self._stop.is_set():
            with self._cv:
                if self._up_gen == gen and not self._queue:
                    self._cv.wait(1.0)
            items = self._take(gen)
            if not items:
                continue
            buf = bytearray()
            for seq, payload in items:
                if self._written and self._written.pop(seq, None) == _frame_hash(payload):
                    continue  # already in the file from before a crash
                buf += line_for(self.topic, payload).encode()
                buf += b"\n"
            if buf:
                _write_all(fd, bytes(buf))
                os.fsync(fd)
            with self._lock:
                self._state["delivered_frames"] += len(items)
            self._post("delivered", gen, [seq for seq, _ in items])


def _frame_hash(payload: bytes) -> bytes | None:
    try:
        return hashlib.sha256(split_payload(payload)[0]).digest()
    except FrameError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
