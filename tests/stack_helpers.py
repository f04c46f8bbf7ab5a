"""Helpers for tests that need the real broker and database (stack.manager).

Imported by tests/conftest.py (fixtures) and by test modules (types, extra stacks);
kept out of conftest.py because ``import conftest`` is ambiguous once another
directory has one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from stack.manager import (
    Credential,
    StackError,
    StackInfo,
    down,
    influxd_binary,
    mosquitto_binary,
    mosquitto_passwd_binary,
    up,
)

#: Gateways that have credentials in the session stack from the start.
STACK_GATEWAYS: tuple[str, ...] = ("gw-test-1", "gw-test-2", "gw-test-3")

def stack_binaries_missing() -> str | None:
    """Reason to skip stack tests on a machine without the servers, else None."""
    try:
        mosquitto_binary()
        mosquitto_passwd_binary()
        influxd_binary()
    except StackError as e:
        return str(e)
    return None


def start_test_stack(path: Path, gateways: tuple[str, ...] = STACK_GATEWAYS) -> StackInfo:
    missing = stack_binaries_missing()
    if missing:
        pytest.skip(missing)
    try:
        return up(path, gateways)
    except BaseException:
        down(path)  # a half-started stack must not outlive the session
        raise


class MqttTestClient:
    """A paho 2.x client wired for tests: connect result and received messages are
    collected so tests can wait on them instead of sleeping."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.connected = threading.Event()
        self.connect_rc: Any = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.puback: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connect_rc = rc
        self.connected.set()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_publish(self, c: mqtt.Client, u: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self.puback[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self.subacks[mid] = list(rcs)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        assert self.wait_for(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        """Publish and wait for the PUBACK; returns its reason code (MQTT 5 carries
        "not authorized" there; 3.1.1 acknowledges even a publish the broker drops)."""
        info = self.client.publish(topic, payload, qos)
        assert self.wait_for(lambda: info.mid in self.puback), f"no PUBACK for {topic}"
        return self.puback[info.mid]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self._cond:
            return [bytes(m.payload) for m in self.messages if topic is None or m.topic == topic]

    def wait_payload(self, payload: bytes, timeout: float = 10.0) -> bool:
        return self.wait_for(lambda: any(m.payload == payload for m in self.messages), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_connect(
    info: StackInfo,
    cred: Credential | None,
    *,
    client_id: str = "",
    protocol: int = mqtt.MQTTv311,
    clean: bool = True,
    mtls: bool = False,
    password: str | None = None,
    wait: bool = True,
) -> MqttTestClient:
    """Connect to the stack's broker over TLS. ``cred=None`` connects anonymously; with
    ``mtls=True`` the client certificate is presented on the mutual-TLS port and no
    username is sent. Raises AssertionError if the broker refuses (when ``wait``)."""
    kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = clean
    client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
    client.reconnect_delay_set(1, 1)
    client.tls_set_context(info.tls_context(cred if mtls else None))
    if cred is not None and not mtls:
        client.username_pw_set(cred.username, password if password is not None
                               else cred.password())
    t = MqttTestClient(client)
    port = info.mqtt_mtls_port if mtls else info.mqtt_port
    if protocol == mqtt.MQTTv5:
        make_props: Any = Properties  # untyped in paho
        props = make_props(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean else 3600
        client.connect(info.mqtt_host, port, keepalive=30, clean_start=clean, properties=props)
    else:
        client.connect(info.mqtt_host, port, keepalive=30)
    client.loop_start()
    if wait:
        assert t.connected.wait(10), "no CONNACK from broker"
        if t.connect_rc.is_failure:
            t.close()
            raise AssertionError(f"broker refused connection: {t.connect_rc}")
    return t
