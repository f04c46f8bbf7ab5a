"""A hostile gateway: valid credentials and (optionally) a valid key, any payload.

The site operator holds the gateway, its MQTT password and its signing key. This class is
what they can do with them from a laptop in the cabinet: seal frames with any content
(another site's name, dates 40 days ahead, poisoned events), publish bytes that are not
frames at all, replay, and connect with any client id.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from stack.manager import StackInfo
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.records import Event, Reading
from stationseal.signing import load_signer


class Sealer:
    """Seals a chain of frames with a gateway's real key (what the operator can do)."""

    def __init__(self, gateway_id: str, site: str, key_file: Path) -> None:
        self.gateway_id = gateway_id
        self.site = site
        self.key_file = key_file
        self.signer = load_signer(key_file)
        self.boot = os.urandom(16)
        self.seq = 0
        self.prev = ZERO_HASH

    def frame(self, n: int = 10, *, site: str | None = None, created: float | None = None,
              events: list[Event] | None = None, instrument: str = "ana1",
              signal_fmt: str = "co_pct") -> Frame:
        self.seq += 1
        t = time.time() if created is None else created
        readings = [Reading(instrument.format(i=i, seq=self.seq),
                            signal_fmt.format(i=i, seq=self.seq), round(0.1 * i, 3), "%vol",
                            t - 0.5 + i * 1e-3, "N", None) for i in range(n)]
        f = seal(self.signer, gateway_id=self.gateway_id, site=site or self.site,
                 boot_id=self.boot, seq=self.seq, prev_hash=self.prev, created=t,
                 clock_sync="synced", readings=readings, events=events or [])
        self.prev = f.frame_hash
        return f


#: CBOR encodings a signed event detail can carry that no well-behaved encoder writes.
POISON = {
    "inf": b"\xf9\x7c\x00",
    "nan": b"\xf9\x7e\x00",
    "2**80": b"\xc2\x4b\x01" + bytes(10),
    "2**64-1": b"\x1b" + b"\xff" * 8,
    "-2**64": b"\x3b" + b"\xff" * 8,
}


def poisoned_drop_frame(sealer: Sealer, values: dict[str, str]) -> bytes:
    """A frame with a ``data_dropped`` event whose fields (first_seq, last_seq, frames,
    readings) carry the given :data:`POISON` encodings, signed with the gateway's key:
    sealed with sentinel integers, the sentinels swapped for the poison in the signed
    body, and the body signed again, as an operator holding the key can do."""
    import hashlib

    from stationseal.cbor import head

    fields = ("first_seq", "last_seq", "frames", "readings")
    sentinel = {k: 0x5EA1_0000 + i for i, k in enumerate(fields)}
    detail = {k: sentinel[k] for k in fields}
    f = sealer.frame(2, events=[Event("gateway", "data_dropped", time.time(), detail)])
    body = f.body
    for k, code in values.items():
        enc = b"\x1a" + sentinel[k].to_bytes(4, "big")
        assert body.count(enc) == 1, k
        body = body.replace(enc, POISON[code])
    sig = sealer.signer.sign(body)
    sealer.prev = hashlib.sha256(body).digest() if body != f.body else f.frame_hash
    return b"\x82" + head(2, len(body)) + body + head(2, len(sig)) + sig


class Client:
    """A paho MQTT 5 client with a gateway's credentials; any client id."""

    def __init__(self, info: StackInfo, username: str, password: str, client_id: str,
                 *, clean_start: bool = True, session_expiry: int = 0,
                 timeout: float = 10.0) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        self.c.tls_set_context(info.tls_context())
        self.c.username_pw_set(username, password)
        self.c.max_inflight_messages_set(20)
        self.rc: Any = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        make: Any = Properties
        props = make(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        try:
            self.c.connect(info.mqtt_host, info.mqtt_port, keepalive=30,
                           clean_start=clean_start, properties=props)
        except OSError:
            self.disconnected.set()
            return
        self.c.loop_start()
        self.connected.wait(timeout)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.rc = rc
        if not rc.is_failure:
            self.connected.set()
        else:
            self.disconnected.set()

    @property
    def accepted(self) -> bool:
        return self.connected.is_set() and self.rc is not None and not self.rc.is_failure

    def publish(self, topic: str, payload: bytes, qos: int = 1, wait: float = 10.0) -> bool:
        """True if the broker took the message (PUBACK for QoS 1, written for QoS 0)."""
        if self.disconnected.is_set():
            return False
        try:
            info = self.c.publish(topic, payload, qos=qos)
            info.wait_for_publish(wait)
            return bool(info.is_published())
        except (RuntimeError, ValueError, OSError):
            return False

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


# --------------------------------------------------------------------------- payloads

#: A CBOR text string holding invalid UTF-8: the 2-byte payload that leaked the decoder's
#: exception, and the batch with it, in the pinned cbor2 release.
CBOR_BAD_UTF8 = b"\x61\xff"


def hostile_payloads(sealer: Sealer, victim: str, rng: random.Random) -> Iterator[
        tuple[str, bytes]]:
    """An endless mix of hostile inputs, each labelled: undecodable and malformed CBOR,
    forged and tampered signatures, replays, another gateway's name, oversize bodies."""
    replay: list[bytes] = []
    kinds = ("cbor_bad_utf8", "cbor_bad_utf8_in_map", "garbage", "deep_nesting",
             "huge_length", "forged_signature", "tampered_body", "replay",
             "claims_other_gateway", "valid", "big_garbage")
    while True:
        kind = rng.choice(kinds)
        if kind == "cbor_bad_utf8":
            yield kind, CBOR_BAD_UTF8
        elif kind == "cbor_bad_utf8_in_map":
            yield kind, b"\xa2\x61a\x01\x62b\xff\x02"
        elif kind == "garbage":
            yield kind, rng.randbytes(rng.randint(1, 4000))
        elif kind == "deep_nesting":
            yield kind, b"\x81" * rng.randint(1000, 100_000) + b"\x00"
        elif kind == "huge_length":
            yield kind, b"\x5b" + b"\xff" * 8 + rng.randbytes(16)
        elif kind == "big_garbage":
            yield kind, rng.randbytes(rng.randint(100_000, 900_000))
        elif kind in ("forged_signature", "tampered_body"):
            p = bytearray(sealer.frame(5).payload)
            i = len(p) - 5 if kind == "forged_signature" else len(p) // 3
            p[i] ^= 0x01
            yield kind, bytes(p)
        elif kind == "replay" and replay:
            yield kind, rng.choice(replay)
        elif kind == "claims_other_gateway":
            s = Sealer(victim, f"site-{victim}", sealer.key_file)
            yield kind, s.frame(5).payload
        else:
            f = sealer.frame(5)
            if len(replay) < 50:
                replay.append(f.payload)
            yield "valid", f.payload
