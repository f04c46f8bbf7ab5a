"""Helpers for ingest tests and benchmarks: gateways that seal real frames, InfluxDB
queries, and dropping a persistent MQTT session after a test."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.records import Event, Reading
from stationseal.signing import Signer, load_signer

SIGNALS = (("ana-1", "co_pct", "%vol"), ("ana-1", "hc_ppm", "ppm"), ("ana-1", "co2_pct", "%vol"),
           ("ana-1", "o2_pct", "%vol"), ("dyn-1", "speed_kmh", "km/h"))


class Gateway:
    """A gateway with its own key and chain: ``next_frame()`` seals the next frame."""

    def __init__(self, gateway_id: str, key_dir: Path, registry: KeyRegistry,
                 site: str | None = None, t0: float | None = None):
        self.id = gateway_id
        self.site = site or f"site-{gateway_id}"
        kf = generate_keypair(gateway_id, key_dir, overwrite=True)
        self.signer: Signer = load_signer(kf.private_key)
        self.key_id = kf.key_id
        registry.add(gateway_id, kf.public_key.read_bytes(), valid_from=0.0, sites=[self.site])
        self.boot = os.urandom(16)
        self.seq = 0
        self.prev = ZERO_HASH
        self.t = t0 if t0 is not None else time.time() - 3600
        self.frames: list[Frame] = []

    @property
    def topic(self) -> str:
        return f"stationseal/v1/{self.id}/frames"

    def next_frame(self, n_readings: int = 10, events: list[Event] | None = None,
                   created: float | None = None) -> Frame:
        self.seq += 1
        self.t += 1.0
        t = self.t if created is None else created
        readings = []
        for i in range(n_readings):
            inst, sig, unit = SIGNALS[i % len(SIGNALS)]
            readings.append(Reading(inst, sig, round(0.1 * self.seq + i, 3), unit,
                                    t - 1 + (i // len(SIGNALS)) * 0.1, "N", None))
        f = seal(self.signer, gateway_id=self.id, site=self.site, boot_id=self.boot,
                 seq=self.seq, prev_hash=self.prev, created=t, clock_sync="synced",
                 readings=readings, events=events or [])
        self.prev = f.frame_hash
        self.frames.append(f)
        return f


def influx_query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """Series of an InfluxQL query (empty list when there is no data)."""
    qs = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{qs}", timeout=10) as r:
        doc = json.loads(r.read())
    res = doc["results"][0]
    if "error" in res:
        raise AssertionError(f"{q}: {res['error']}")
    return list(res.get("series", []))


def influx_count(url: str, db: str, where: str = "", field: str = "seq",
                 measurement: str = "reading") -> int:
    series = influx_query(url, db, f'SELECT count("{field}") FROM "{measurement}" {where}')
    return sum(int(s["values"][0][1]) for s in series)


def create_db(url: str, db: str) -> None:
    data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{db}"'}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=10) as r:
        r.read()


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def ingest_credential(info: Any, name: str) -> Any:
    """The ingest-role account a test's persistent session lives under: ``name`` itself
    if it is of the form ``ingest-<x>`` (created if missing), else ``ingest``. The broker
    ties client ids to accounts, so concurrent sessions need accounts of their own."""
    from stack.manager import INGEST_ACCOUNT_RE, add_ingest_account

    if INGEST_ACCOUNT_RE.match(name):
        return add_ingest_account(info.dir, name)
    return info.ingest


def drop_session(info: Any, client_id: str) -> None:
    """Connect once with a clean start and session expiry 0, so the broker forgets the
    persistent session (and stops queueing every later test's frames for it)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set_context(info.tls_context())
    cred = ingest_credential(info, client_id)
    c.username_pw_set(cred.username, cred.password())
    make: Any = Properties
    props = make(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    done: list[bool] = []
    c.on_connect = lambda *a: done.append(True)
    c.connect(info.mqtt_host, info.mqtt_port, clean_start=True, properties=props)
    c.loop_start()
    wait_for(lambda: bool(done), 10, 0.05)
    c.disconnect()
    c.loop_stop()


def gateway_publisher(info: Any, gateway_id: str, client_id: str = "") -> mqtt.Client:
    """A connected paho client with the gateway's credentials (QoS 1 publishes)."""
    cred = info.gateway(gateway_id)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{gateway_id}",
                    protocol=mqtt.MQTTv311)
    c.tls_set_context(info.tls_context())
    c.username_pw_set(cred.username, cred.password())
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.reconnect_delay_set(1, 2)
    ok: list[bool] = []
    c.on_connect = lambda *a: ok.append(True)
    c.connect(info.mqtt_host, info.mqtt_port, keepalive=30)
    c.loop_start()
    assert wait_for(lambda: bool(ok), 10, 0.05), f"{gateway_id}: no CONNACK"
    return c


def publish_all(c: mqtt.Client, items: list[tuple[str, bytes]], timeout: float = 60) -> None:
    infos = [c.publish(t, p, qos=1) for t, p in items]
    deadline = time.monotonic() + timeout
    for i in infos:
        i.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert i.is_published(), "publish not acknowledged by the broker"
