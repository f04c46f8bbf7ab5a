"""The dispatcher's confirmation rules without a network (docs/acks.md): what a PUBACK,
a PUBACK 0x10 and the ingest's acknowledgement each do to a frame in the outbox."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import make_keys

from agent.clock import ClockMonitor
from agent.dispatch import Dispatcher
from agent.outbox import Outbox
from agent.sealer import Sealer
from stationseal.acks import build_acks, parse_acks
from stationseal.frame import decode
from stationseal.records import Reading

GW = "gw-confirm"


class FakeTransport:
    kind = "fake"

    def __init__(self) -> None:
        self.sent: list[int] = []

    def start(self, d: Any) -> None: ...

    def submit(self, gen: int, items: list[tuple[int, bytes]]) -> None:
        self.sent += [s for s, _ in items]

    def stop(self, timeout: float) -> None: ...

    def state(self) -> dict[str, Any]:
        return {}


class Clock:
    def __init__(self) -> None:
        self.t = 1_767_225_600.0

    def __call__(self) -> float:
        return self.t


def _setup(tmp: Path, confirm: str = "ingest", n: int = 6
           ) -> tuple[Outbox, Dispatcher, FakeTransport, Clock, Sealer]:
    signer, _ = make_keys(tmp, GW)
    clock = Clock()
    ob = Outbox(tmp / "ob.sqlite", gateway_id=GW, max_bytes=10**9, max_age_s=1e9)
    d = Dispatcher(ob, max_inflight=16, live_reserve=2, confirm=confirm,
                   confirm_timeout_s=100.0, retry_s=5.0, overtaken_grace_s=5.0, clock=clock)
    tr = FakeTransport()
    d.attach(tr)
    cm = ClockMonitor(0.5, sync_source=lambda: "synced")
    s = Sealer(signer, ob, gateway_id=GW, site="s", max_readings=10, max_delay_s=1.0,
               clock=cm, forwarder=d)
    for k in range(n):
        s.add([Reading("a", "x", float(k), "ppm", clock.t, "N", None)])
        s.flush()
    return ob, d, tr, clock, s


def _hash(ob: Outbox, seq: int) -> bytes:
    info = ob.lookup(seq)
    assert info is not None
    return info[0]


def _flush(ob: Outbox, d: Dispatcher) -> None:
    items = d.take_delivered()
    ob.delete_delivered(items)
    d.deleted(items)


def test_puback_is_not_a_deletion_and_a_confirmation_with_the_right_hash_is(tmp_path: Path
                                                                           ) -> None:
    ob, d, tr, _clock, _ = _setup(tmp_path)
    d.link_up(1)
    assert tr.sent == [1, 2, 3, 4, 5, 6]
    d.published(1, [1, 2, 3, 4, 5, 6])
    _flush(ob, d)
    assert ob.frames == 6 and ob.awaiting() == 6
    # A reconnect does not resend frames the broker accepted.
    d.link_down(1)
    d.link_up(2)
    assert tr.sent == [1, 2, 3, 4, 5, 6]
    # Wrong hash (another frame with that seq: a fork, a forger): nothing deleted.
    d.confirmed([(1, b"\x00" * 32)])
    _flush(ob, d)
    assert ob.frames == 6
    d.confirmed([(1, _hash(ob, 1)), (2, _hash(ob, 2))])
    _flush(ob, d)
    assert ob.frames == 4 and d.confirmed_frames == 2
    assert ob.lookup(1) is None and ob.lookup(3) is not None


def test_broker_mode_deletes_on_puback(tmp_path: Path) -> None:
    ob, d, _tr, _, _ = _setup(tmp_path, confirm="broker")
    d.link_up(1)
    d.published(1, [1, 2, 3])
    _flush(ob, d)
    assert ob.frames == 3 and ob.lookup(1) is None


@pytest.mark.parametrize("confirm", ["ingest", "broker"])
def test_no_matching_subscribers_keeps_the_frame_and_retries_later(tmp_path: Path,
                                                                   confirm: str) -> None:
    ob, d, tr, clock, _ = _setup(tmp_path, confirm=confirm)
    d.link_up(1)
    d.unrouted(1, [1, 2, 3, 4, 5, 6])
    _flush(ob, d)
    assert ob.frames == 6 and ob.awaiting() == 0 and d.unrouted_frames == 6
    n = len(tr.sent)
    clock.t += 4.9  # before the retry is due: not sent
    d.pump()
    assert len(tr.sent) == n
    clock.t += 0.2  # due (5 s after the first attempt)
    d.pump()
    assert sorted(tr.sent[n:]) == [1, 2, 3, 4, 5, 6]
    # Second refusal: the wait doubles.
    d.unrouted(1, [1, 2, 3, 4, 5, 6])
    _flush(ob, d)
    n = len(tr.sent)
    clock.t += 9.9
    d.pump()
    assert len(tr.sent) == n
    clock.t += 0.2
    d.pump()
    assert len(tr.sent) == n + 6


def test_overtaken_frames_are_sent_again_soon(tmp_path: Path) -> None:
    ob, d, tr, clock, _ = _setup(tmp_path)
    d.link_up(1)
    d.published(1, [1, 2, 3])  # accepted at t0: then lost in a broker crash
    _flush(ob, d)
    clock.t += 10
    d.published(1, [4, 5, 6])  # accepted 10 s later
    _flush(ob, d)
    n = len(tr.sent)
    d.confirmed([(5, _hash(ob, 5))])  # a later frame confirmed first
    _flush(ob, d)
    clock.t += 4.9
    d.pump()
    assert len(tr.sent) == n  # grace not over
    clock.t += 0.2
    d.pump()
    # 1..3 were accepted more than 5 s before 5: overtaken, resent. 4 and 6 not (yet).
    assert sorted(tr.sent[n:]) == [1, 2, 3]


def test_unconfirmed_frames_are_resent_after_the_timeout_doubling(tmp_path: Path) -> None:
    ob, d, tr, clock, _ = _setup(tmp_path, n=2)
    d.link_up(1)
    d.published(1, [1, 2])
    _flush(ob, d)
    n = len(tr.sent)
    clock.t += 99
    d.pump()
    assert len(tr.sent) == n
    clock.t += 2
    d.pump()
    assert sorted(tr.sent[n:]) == [1, 2]
    d.published(1, [1, 2])
    _flush(ob, d)
    n = len(tr.sent)
    clock.t += 199
    d.pump()
    assert len(tr.sent) == n  # second attempt: 200 s
    clock.t += 2
    d.pump()
    assert len(tr.sent) == n + 2


def test_version_1_outbox_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "ob.sqlite")
    db.executescript("""
        CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), gateway_id TEXT NOT NULL,
            seq INTEGER NOT NULL, last_hash BLOB NOT NULL, boot_id BLOB,
            dropped_frames INTEGER NOT NULL DEFAULT 0,
            dropped_readings INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
        CREATE TABLE frames (seq INTEGER PRIMARY KEY, created REAL NOT NULL,
            readings INTEGER NOT NULL, hash BLOB NOT NULL, payload BLOB NOT NULL);
        PRAGMA user_version=1;
    """)
    db.execute("INSERT INTO meta VALUES (1, ?, 1, ?, NULL, 0, 0, 1.0)", (GW, b"h" * 32))
    db.execute("INSERT INTO frames VALUES (1, 1.0, 1, ?, x'00')", (b"h" * 32,))
    db.commit()
    db.close()
    ob = Outbox(tmp_path / "ob.sqlite", gateway_id=GW, max_bytes=10**9, max_age_s=1e9)
    assert ob.lookup(1) == (b"h" * 32, 1, None)
    assert ob.fetch_after(0, 10, 1, now=2.0) == [(1, b"\x00")]
    ob.close()


def test_ack_messages_round_trip_and_refuse_garbage() -> None:
    frames = [(k, bytes([k % 256]) * 32) for k in range(1, 2502)]
    msgs = list(build_acks(GW, frames, when=1.5, by="ingest-0", extra={"x": 1}))
    assert len(msgs) == 3  # at most 1000 frames per message
    assert [p for m in msgs for p in parse_acks(m, GW)] == frames
    assert json.loads(msgs[0])["x"] == 1  # unknown keys travel, and are ignored
    for bad, why in [(b"{", "JSON"), (b'{"v": 2}', "v = 1"),
                     (msgs[0], "not 'gw-other'"),
                     (json.dumps({"v": 1, "gateway_id": GW, "frames": [[0, "00" * 32]]}
                                 ).encode(), "frames[0]"),
                     (json.dumps({"v": 1, "gateway_id": GW, "frames": [[1, "zz" * 32]]}
                                 ).encode(), "hex")]:
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_acks(bad, "gw-other" if why.startswith("not") else GW)


def test_sealed_frames_are_what_the_outbox_confirms(tmp_path: Path) -> None:
    ob, _d, _tr, _, _ = _setup(tmp_path, n=1)
    payload = ob.fetch_after(0, 1, 1)[0][1]
    assert decode(payload).frame_hash == _hash(ob, 1)
