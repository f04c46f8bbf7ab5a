"""Helpers for the agent runtime tests: keys + registry, a fake instrument, an agent
wired to a file or the stack's broker, and a subscriber that records frames."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import OutboxConfig
from agent.runtime import Agent, RuntimeOptions
from agent.uplink import FileTransport, MqttTransport
from stack.manager import Credential, StackInfo
from stationseal.export import frames_topic, line_for
from stationseal.frame import decode
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.records import Event, Reading
from stationseal.registry import authority_pub_path
from stationseal.signing import Signer, load_signer
from stationseal.verify_cli import Report, verify_file


def make_keys(tmp: Path, gateway_id: str) -> tuple[Signer, Path]:
    """A gateway key and a registry (JSON file) holding its public key."""
    kf = generate_keypair(gateway_id, tmp / "keys")
    reg = KeyRegistry()
    # Bound to the sites the agent tests configure.
    reg.add(gateway_id, kf.public_key.read_bytes(), valid_from=0.0,
            sites=["s1", "site-sim", "site-t", "site-u", "x"])
    reg_path = tmp / "registry.json"
    reg.save(reg_path)
    return load_signer(kf.private_key), reg_path


class FakeInstrument:
    """Implements agent.instruments.Instrument: ``n`` signals per poll, counted values,
    optional failure on chosen polls (raise, or return a fault event)."""

    def __init__(self, iid: str, n: int = 10, interval: float = 0.05,
                 raise_on: Callable[[int], bool] | None = None) -> None:
        self.id = iid
        self.config: Any = SimpleNamespace(poll_interval_s=interval)
        self.n = n
        self.polls = 0
        self.produced = 0
        self.raise_on = raise_on
        self.closed = False

    async def poll(self) -> tuple[list[Reading], list[Event]]:
        self.polls += 1
        if self.raise_on is not None and self.raise_on(self.polls):
            raise RuntimeError(f"bug in reader of {self.id}")
        t = time.time()
        k = self.polls
        self.produced += self.n
        return [Reading(self.id, f"s{i}", float(k * 100 + i), "mg/m3", t, "N",
                        k.to_bytes(4, "big")) for i in range(self.n)], []

    async def close(self) -> None:
        self.closed = True


def outbox_cfg(tmp: Path, **kw: Any) -> OutboxConfig:
    base: dict[str, Any] = {"path": tmp / "state" / "outbox.sqlite", "batch_max_ms": 200}
    base.update(kw)
    return OutboxConfig(**base)


def file_agent(tmp: Path, signer: Signer, gateway_id: str, instruments: list[Any],
               out: Path, **outbox_kw: Any) -> Agent:
    return Agent(
        gateway_id=gateway_id, site="site-t", signer=signer,
        outbox=outbox_cfg(tmp, **outbox_kw), instruments=instruments,
        transport=lambda birth: FileTransport(out, gateway_id=gateway_id,
                                              topic=frames_topic(gateway_id)),
        config_hash="c" * 64, options=RuntimeOptions(status_interval_s=0.5),
    )


def mqtt_agent(tmp: Path, signer: Signer, info: StackInfo, cred: Credential,
               instruments: list[Any], *, mtls: bool = False,
               options: RuntimeOptions | None = None, **outbox_kw: Any) -> Agent:
    """An agent publishing to the stack's broker; ``options.confirm == "ingest"`` makes it
    subscribe to its acknowledgements and delete frames only on them (docs/acks.md)."""
    gw = cred.username
    acks = options is not None and options.confirm == "ingest"

    def transport(birth: dict[str, Any]) -> MqttTransport:
        return MqttTransport(
            host=info.mqtt_host, port=info.mqtt_mtls_port if mtls else info.mqtt_port,
            gateway_id=gw, frames_topic=info.topic(gw, "frames"),
            status_topic=info.topic(gw, "status"), birth=birth,
            tls=info.tls_context(cred if mtls else None),
            username=None if mtls else gw, password=None if mtls else cred.password(),
            keepalive=10, backoff_min_s=0.2, backoff_max_s=2.0,
            acks_topic=info.topic(gw, "acks") if acks else None,
        )

    return Agent(
        gateway_id=gw, site="site-t", signer=signer, outbox=outbox_cfg(tmp, **outbox_kw),
        instruments=instruments, transport=transport, config_hash="c" * 64,
        options=options or RuntimeOptions(status_interval_s=0.5),
    )


class FrameCollector:
    """Subscribes to a gateway's frames with a persistent session (the broker queues for
    it while it reconnects after a broker restart) and records every payload."""

    def __init__(self, info: StackInfo, gateway_id: str, client_id: str) -> None:
        self.topic = info.topic(gateway_id, "frames")
        self.status_topic = info.topic(gateway_id, "status")
        self.payloads: list[bytes] = []
        self.status: list[tuple[bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        clean_session=False, protocol=mqtt.MQTTv311)
        c.reconnect_delay_set(1, 1)
        c.tls_set_context(info.tls_context())
        # Its own account: the broker ties client ids (and so sessions) to accounts.
        from stack.manager import add_ingest_account

        cred = add_ingest_account(info.dir, f"ingest-{client_id}")
        c.username_pw_set(cred.username, cred.password())
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.client = c
        c.connect(info.mqtt_host, info.mqtt_port, keepalive=10)
        c.loop_start()
        assert self._subscribed.wait(10), "collector: no SUBACK"

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        c.subscribe([(self.topic, 1), (self.status_topic, 1)])

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            if msg.topic == self.topic:
                self.payloads.append(bytes(msg.payload))
            else:
                self.status.append((bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def seqs(self) -> set[int]:
        with self._cond:
            return {decode(p).seq for p in self.payloads}

    def write(self, path: Path) -> tuple[int, int]:
        """Write unique frames (what ingest would keep) as a frames file; returns
        (unique, exact duplicates). QoS 1 may deliver a frame twice: only an exact copy
        of the same payload is a duplicate."""
        with self._cond:
            payloads = list(self.payloads)
        seen: set[bytes] = set()
        dup = 0
        with open(path, "w") as f:
            for p in payloads:
                if p in seen:
                    dup += 1
                    continue
                seen.add(p)
                f.write(line_for(self.topic, p) + "\n")
        return len(seen), dup

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def frames_of(path: Path) -> list[Any]:
    return [decode(base64.b64decode(json.loads(line)["payload"]))
            for line in path.read_text().splitlines() if line.strip()]


def verify(path: Path, registry: Path) -> Report:
    return verify_file(path, KeyRegistry.load(registry, authority_pub_path(registry)))


def report_text(rep: Report) -> str:
    return json.dumps({"failures": rep.failures,
                       "gateways": [g.to_json() for g in rep.gateways.values()]},
                      indent=1, default=str)[:4000]
