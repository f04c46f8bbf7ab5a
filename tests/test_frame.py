"""The signed frame format: round trips, tamper evidence, canonical encoding, vectors."""

from __future__ import annotations

import math
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stationseal import cbor, vectors
from stationseal.frame import ZERO_HASH, FrameError, decode, seal
from stationseal.keys import KeyRegistry
from stationseal.records import Event, Reading
from stationseal.signing import Ed25519Signer, P256Signer
from stationseal.verify import Rejected, verify_payload

ED = Ed25519Signer(vectors.ed_key())
P256 = P256Signer(vectors.p256_key())
T0 = vectors.T0


def registry() -> KeyRegistry:
    return vectors.registry_for(vectors.build())


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,11}", fullmatch=True)
signals = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,11}", fullmatch=True)
values = st.one_of(
    st.floats(allow_nan=False, width=64),
    st.floats(width=32, allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=8),
)
readings = st.builds(
    Reading,
    instrument=names,
    signal=signals,
    value=values,
    unit=st.sampled_from(["ppm", "%vol", "mg/m³", "µg/m³", "1/min", ""]),
    time=st.integers(min_value=0, max_value=10_000_000).map(lambda ms: T0 - 5000 + ms / 1000),
    quality=st.sampled_from(list("NMDCFSTB")),
    raw=st.one_of(st.none(), st.binary(max_size=8)),
)
detail = st.dictionaries(
    st.text(max_size=6),
    st.one_of(st.integers(-1000, 1000), st.text(max_size=5), st.booleans(), st.none(),
              st.floats(allow_nan=False)),
    max_size=4,
)
events = st.builds(
    Event,
    instrument=names,
    kind=st.sampled_from(["test_start", "calibration_change", "data_dropped", "x1"]),
    time=st.just(T0),
    detail=detail,
)


def make(readings_: list[Reading], events_: list[Event], seq: int = 1, signer=ED):  # type: ignore[no-untyped-def]
    return seal(
        signer,
        gateway_id="gw-demo-1" if signer is ED else "gw-demo-2",
        site="S",
        boot_id=vectors.BOOT,
        seq=seq,
        prev_hash=ZERO_HASH if seq == 1 else bytes([0x11]) * 32,
        created=T0,
        clock_sync="synced",
        readings=readings_,
        events=events_,
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, max_size=30), st.lists(events, max_size=4),
       st.integers(1, 2**64 - 1))
def test_round_trip(rs: list[Reading], es: list[Event], seq: int) -> None:
    f = make(rs, es, seq)
    d = verify_payload(f.payload, registry())
    assert d.seq == seq and d.body == f.body
    assert len(d.readings) == len(rs)
    for a, b in zip(d.readings, rs, strict=True):
        assert (a.instrument, a.signal, a.unit, a.quality, a.raw) == (
            b.instrument, b.signal, b.unit, b.quality, b.raw)
        assert round(a.time * 1000) == round(b.time * 1000)
        if isinstance(b.value, float) and math.isnan(b.value):
            assert isinstance(a.value, float) and math.isnan(a.value)
        else:
            assert a.value == b.value and type(a.value) is type(b.value)
    assert [(e.instrument, e.kind, e.detail) for e in d.events] == [
        (e.instrument, e.kind, e.detail) for e in es]
    # The hand-inlined readings encoder must agree with the generic canonical encoder.
    assert cbor.is_canonical(f.body, cbor.decode(f.body))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, min_size=1, max_size=5), st.data())
def test_any_changed_byte_is_detected(rs: list[Reading], data: st.DataObject) -> None:
    f = make(rs, [])
    pos = data.draw(st.integers(0, len(f.payload) - 1))
    flip = data.draw(st.integers(1, 255))
    bad = bytearray(f.payload)
    bad[pos] ^= flip
    with pytest.raises(Rejected) as ei:
        verify_payload(bytes(bad), registry())
    assert ei.value.reason in ("malformed", "schema", "bad_signature", "unknown_key",
                               "gateway_mismatch")


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, min_size=1, max_size=5), st.data())
def test_truncation_and_extension_detected(rs: list[Reading], data: st.DataObject) -> None:
    f = make(rs, [])
    cut = data.draw(st.integers(0, len(f.payload) - 1))
    for bad in (f.payload[:cut], f.payload + data.draw(st.binary(min_size=1, max_size=4))):
        with pytest.raises(Rejected):
            verify_payload(bad, registry())


def test_p256_frames_verify_and_tamper_fails() -> None:
    f = make([Reading("c", "so2_mgm3", 1.5, "mg/m³", T0, "N", None)], [], signer=P256)
    assert verify_payload(f.payload, registry()).alg == "p256"
    bad = bytearray(f.payload)
    bad[20] ^= 1
    with pytest.raises(Rejected):
        verify_payload(bytes(bad), registry())


def test_unknown_and_revoked_keys_rejected() -> None:
    f = make([Reading("a", "co_pct", 0.1, "%vol", T0, "N", None)], [])
    empty = KeyRegistry()
    with pytest.raises(Rejected) as ei:
        verify_payload(f.payload, empty)
    assert ei.value.reason == "unknown_key"
    reg = registry()
    reg.revoke(ED.key_id, T0 + 10, "retired")
    assert verify_payload(f.payload, reg).seq == 1  # sealed before retirement: still valid
    reg.revoke(ED.key_id, T0 + 10, "compromised")
    with pytest.raises(Rejected) as ei:
        verify_payload(f.payload, reg)
    assert ei.value.reason == "revoked_key"
    reg2 = registry()
    reg2.revoke(ED.key_id, T0 - 1, "retired")
    with pytest.raises(Rejected) as ei:
        verify_payload(f.payload, reg2)
    assert ei.value.reason == "revoked_key"


def test_topic_and_gateway_mismatch() -> None:
    f = make([], [])
    with pytest.raises(Rejected) as ei:
        verify_payload(f.payload, registry(), topic_gateway="gw-other")
    assert ei.value.reason == "topic_mismatch"
    # A key registered for gw-demo-1 cannot sign for another gateway id.
    g = seal(ED, gateway_id="gw-demo-2", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced", readings=[], events=[])
    with pytest.raises(Rejected) as ei:
        verify_payload(g.payload, registry())
    assert ei.value.reason == "gateway_mismatch"


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(FrameError, match="seq"):
        make([], [], seq=0)
    with pytest.raises(FrameError, match="quality"):
        make([Reading("a", "b", 1, "u", T0, "NN", None)], [])
    with pytest.raises(FrameError, match="malformed"):
        decode(b"\x00garbage")


def test_compactness() -> None:
    """A typical reading (float32 value, 4 raw bytes) costs well under 20 bytes on the wire."""
    f32 = [struct.unpack(">f", struct.pack(">f", 0.1 * i))[0] for i in range(400)]
    rs = [Reading(f"inst-{i % 8}", "co_pct", f32[i], "%vol", T0 + i / 10, "N",
                  os.urandom(4)) for i in range(400)]
    f = make(rs, [])
    per_reading = (len(f.payload) - len(make([], []).payload)) / len(rs)
    assert per_reading < 20, per_reading


@pytest.mark.parametrize("value", [40000.0, 65504.0, -32768.0, 1.0, 0.1, 123456.75])
def test_float_encoding_edge_cases(value: float) -> None:
    """Floats where libraries disagree on the shortest form: only the RFC 8949 form passes."""
    f = make([Reading("a", "co_pct", value, "%vol", T0, "N", None)], [])
    assert verify_payload(f.payload, registry()).readings[0].value == value
    shortest = cbor.encode_float(value)
    for longer in (b"\xfa" + struct.pack(">f", value), b"\xfb" + struct.pack(">d", value)):
        if len(longer) <= len(shortest) or longer[0] < shortest[0]:
            continue
        i = f.body.index(shortest + b"\x61N")
        body = f.body[:i] + longer + f.body[i + len(shortest):]
        payload = cbor.encode([body, ED.sign(body)])
        with pytest.raises(Rejected) as ei:
            verify_payload(payload, registry())
        assert ei.value.reason == "malformed"
