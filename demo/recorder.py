"""Records every frame the gateways publish, as sent, to a frames file (export format).

The recorder is a second, independent subscriber (ingest's account, its own client id and
persistent session, QoS 1), so the evidence file does not depend on ingest having stored
anything: the demo compares the two. A frame redelivered by QoS 1 is written once (exact
payload bytes compared), so the file verifies without duplicate findings.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from stack.manager import StackInfo
from stationseal.export import line_for


class Recorder:
    def __init__(self, info: StackInfo, out: Path, client_id: str = "demo-recorder") -> None:
        self.out = out
        self.topic = f"{info.topic_prefix}/+/frames"
        self.frames = 0
        self.duplicates = 0
        self.last_message = 0.0
        self._seen: set[bytes] = set()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._fh: IO[str] = open(out, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        c.tls_set_context(info.tls_context())
        # An account of its own: the broker ties client ids (sessions) to accounts, and
        # the demo's ingest uses "ingest".
        from stack.manager import add_ingest_account

        cred = add_ingest_account(info.dir, "ingest-demo-recorder")
        c.username_pw_set(cred.username, cred.password())
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        make: Any = Properties  # paho's Properties is untyped
        props = make(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._host, self._port, self._props = info.mqtt_host, info.mqtt_port, props

    def start(self, timeout: float = 15.0) -> None:
        self.client.connect(self._host, self._port, clean_start=False,
                            properties=self._props)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"frame recorder: no subscription to {self.topic} within "
                               f"{timeout:.0f} s")

    def _on_connect(self, c: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        if not rc.is_failure:
            c.subscribe(self.topic, qos=1)

    def _on_subscribe(self, c: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any = None) -> None:
        if all(not r.is_failure for r in rcs):
            self._subscribed.set()

    def _on_message(self, c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        digest = hashlib.sha256(msg.topic.encode() + b"\0" + payload).digest()
        with self._lock:
            self.last_message = time.monotonic()
            if digest in self._seen:
                self.duplicates += 1
                return
            self._seen.add(digest)
            self._fh.write(line_for(msg.topic, payload) + "\n")
            self._fh.flush()
            self.frames += 1

    def quiet_for(self) -> float:
        """Seconds since the last message arrived."""
        with self._lock:
            return time.monotonic() - self.last_message if self.last_message else 0.0

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            with self._lock:
                self._fh.close()
