"""Hostile payloads: the decoder refuses them by name, leaks nothing, and checks the
signature before it decodes a body. Each test reproduces a failure that was found in the
field (issue reports of the reliability and trust reviews) and shows the named verdict."""

from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stationseal import cbor, vectors
from stationseal import frame as fr
from stationseal.chain import ChainTracker
from stationseal.export import frames_topic, line_for
from stationseal.frame import MAX_PAYLOAD, MAX_TIME_MS, ZERO_HASH, FrameError, seal
from stationseal.records import Event, Reading
from stationseal.signing import ED25519_L, P256_N, Ed25519Signer, P256Signer
from stationseal.verify import Rejected, verify_payload
from stationseal.verify_cli import verify_file

ED = Ed25519Signer(vectors.ed_key())
P256 = P256Signer(vectors.p256_key())
T0 = vectors.T0
T0_MS = int(T0 * 1000)


def reg() -> Any:
    return vectors.registry_for(vectors.build())


def items(seq: int = 1, **over: Any) -> list[Any]:
    """Body items of a valid gw-demo-1 frame, with fields replaced."""
    base: dict[str, Any] = {
        "ver": 1, "gw": "gw-demo-1", "site": "S", "key": ED.key_id, "alg": 1,
        "boot": vectors.BOOT, "seq": seq, "prev": ZERO_HASH if seq == 1 else b"\x11" * 32,
        "created": T0_MS, "clock": 1, "chans": [["a1", "co_pct", "%vol"]],
        "recs": [[0, -5, 0.5, "N", None]], "evs": [],
    }
    base.update(over)
    return list(base.values())


def verdict(payload: bytes, registry: Any = None, **kw: Any) -> str:
    try:
        verify_payload(payload, registry if registry is not None else reg(), **kw)
    except Rejected as e:
        return e.reason
    return "valid"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 1e6


# Inputs on which the pinned cbor2's C decoder leaks its exception (and with it the
# traceback and every frame on the stack): invalid UTF-8 in a text string, semantic tags
# with a bad content. Found by a measurement loop; kept as a corpus.
LEAKY = [
    b"\x61\xff",                      # text string, invalid UTF-8
    b"\x82\x61\xff\x01",              # ... inside an array
    b"\xa1\x61\x41\x61\xff",          # ... as a map value
    b"\xc1\xf9\x7e\x00",              # epoch datetime of NaN
    b"\xc1\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd8\x1e\x82\x01\x61\xff",      # rational
    b"\xd8\x24\x41\xff",              # MIME message
    b"\xd8\x25\x61\x41",              # UUID
    b"\xc2\x41\x01",                  # bignum: not a frame type either
    b"\x7f\x61\x41\xff",              # indefinite-length text
    b"\x81" * 40 + b"\x00",           # nesting beyond the limit
    b"\xa1\x01\x02",                  # integer map key
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # an array announcing 2^64-1 items
]


@pytest.mark.parametrize("data", LEAKY, ids=[d[:6].hex() for d in LEAKY])
def test_inputs_outside_the_frame_subset_never_pass(data: bytes) -> None:
    """Refused before cbor2 sees them, or (invalid UTF-8) decoded with replacement
    characters, which never re-encode to the input: not canonical, so malformed."""
    try:
        obj = cbor.decode(data)
    except cbor.CBORError:
        return
    assert "\ufffd" in json.dumps(obj, ensure_ascii=False)
    assert not cbor.is_canonical(data, obj)


def test_hostile_cbor_leaves_memory_flat() -> None:
    """1500 rounds of every leaky input, each call with 200 kB live on the caller's stack:
    the pinned cbor2 alone grows by about that much per call (hundreds of MB here)."""

    def one(data: bytes, ballast: bytearray) -> None:
        with contextlib.suppress(cbor.CBORError):
            cbor.decode(data)

    for data in LEAKY:  # warm-up: regex caches, allocator arenas
        one(data, bytearray(1))
    gc.collect()
    before = rss_mb()
    for _ in range(1500):
        for data in LEAKY:
            one(data, bytearray(200_000))
    gc.collect()
    grown = rss_mb() - before
    assert grown < 20, f"RSS grew by {grown:.1f} MB"


def test_signed_body_with_invalid_utf8_is_malformed_and_does_not_leak() -> None:
    """The site operator holds a gateway key: a correctly signed body carrying invalid
    UTF-8 reaches the body decoder, and must be refused by name without leaking."""
    body = cbor.encode(items(evs=[["a1", 0, "note", {"k": "x"}]]))
    bad = body.replace(b"\x61x", b"\x61\xff")
    assert bad != body
    payload = cbor.head(4, 2) + cbor.head(2, len(bad)) + bad + cbor.head(2, 64) + ED.sign(bad)
    registry = reg()
    assert verdict(payload, registry) == "malformed"
    gc.collect()
    before = rss_mb()
    for _ in range(2000):
        ballast = bytearray(100_000)
        with contextlib.suppress(Rejected):
            verify_payload(payload, registry)
        del ballast
    gc.collect()
    assert rss_mb() - before < 20


def test_signature_is_checked_before_the_body_is_decoded(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    f = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced",
             readings=[Reading("a1", "co_pct", 0.5, "%vol", T0, "N", None)], events=[])
    bad = bytearray(f.payload)
    bad[-1] ^= 1  # the signature, not the body

    def no_decoding(*args: Any) -> Any:
        raise AssertionError("the body was decoded before its signature was checked")

    monkeypatch.setattr(cbor, "decode", no_decoding)
    monkeypatch.setattr(cbor, "check_wellformed", no_decoding)
    monkeypatch.setattr(cbor, "item_ends", no_decoding)
    assert verdict(bytes(bad)) == "bad_signature"


def test_oversize_payload_has_its_own_reason() -> None:
    with pytest.raises(FrameError) as ei:
        fr.split_payload(bytes(MAX_PAYLOAD + 1))
    assert ei.value.reason == "oversize"
    assert verdict(bytes(MAX_PAYLOAD + 1)) == "oversize"
    # At the limit, the size is not the problem.
    assert verdict(bytes(MAX_PAYLOAD)) == "malformed"


@pytest.mark.parametrize("over,field", [
    ({"seq": 0}, "seq"),
    ({"created": MAX_TIME_MS + 1}, "created_ms"),
    ({"created": -1}, "created_ms"),
    ({"recs": [[0, -T0_MS - 1, 0.5, "N", None]]}, "time_offset"),
    ({"recs": [[0, -5, 0.5, "X", None]]}, "quality"),
    ({"recs": [[0, -5, 0.5, "n", None]]}, "quality"),
    ({"recs": [[1, -5, 0.5, "N", None]]}, "channel"),
    ({"recs": [[0, -5, True, "N", None]]}, "value"),
    ({"recs": [[0, -5, "x" * 1025, "N", None]]}, "value"),
    ({"chans": [["a#1", "co_pct", "%vol"]]}, "instrument"),
    ({"chans": [["a1", "co pct", "%vol"]]}, "signal"),
    ({"chans": [["a1", "co_pct", "%\x00vol"]]}, "unit"),
    ({"chans": [["a1", "co_pct", "%vol"], ["a1", "co_pct", "%vol"]]}, "twice"),
    ({"evs": [["gateway", 0, "Clock_Jump", {}]]}, "kind"),
    ({"evs": [["gate/way", 0, "clock_jump", {}]]}, "instrument"),
    ({"evs": [["gateway", 2**63, "clock_jump", {}]]}, "time_offset"),
    ({"clock": 3}, "clock_sync"),
    ({"prev": b"\x22" * 32}, "prev_hash"),  # seq 1 with a non-zero prev_hash
], ids=lambda x: str(x)[:40])
def test_every_field_is_range_checked_with_a_named_schema_rejection(
        over: dict[str, Any], field: str) -> None:
    p = vectors.raw_payload(ED.sign, items(**over))
    with pytest.raises(Rejected) as ei:
        verify_payload(p, reg())
    assert ei.value.reason == "schema", ei.value
    assert field in ei.value.detail


def test_seq_above_one_with_zero_prev_hash_is_schema() -> None:
    p = vectors.raw_payload(ED.sign, items(seq=5, prev=ZERO_HASH))
    assert verdict(p) == "schema"


@pytest.mark.parametrize("gw", ["gw#1", "gw+1", "gw/1", "gw 1", "gw\n1", ".gw", "g" * 65])
def test_gateway_ids_outside_the_name_set_are_schema(gw: str) -> None:
    """Header names are checked before the key is even looked up."""
    p = vectors.raw_payload(ED.sign, items(gw=gw))
    assert verdict(p) == "schema"
    with pytest.raises(FrameError, match="gateway_id"):
        seal(ED, gateway_id=gw, site="S", boot_id=vectors.BOOT, seq=1, prev_hash=ZERO_HASH,
             created=T0, clock_sync="synced", readings=[], events=[])


def test_only_hj212_flags_are_sealed() -> None:
    with pytest.raises(FrameError, match="HJ 212 flag"):
        seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced",
             readings=[Reading("a1", "co_pct", 1.0, "%vol", T0, "x", None)], events=[])


def test_huge_integers_travel_and_bignums_do_not() -> None:
    ev = ["gateway", 0, "note", {"big": 2**64 - 1, "neg": -(2**64), "inf": float("inf")}]
    p = vectors.raw_payload(ED.sign, items(recs=[[0, -5, 2**64 - 1, "N", None]], evs=[ev]))
    f = verify_payload(p, reg())
    assert f.readings[0].value == 2**64 - 1 and f.events[0].detail["neg"] == -(2**64)
    # A bignum (tag 2) is not part of the frame subset.
    body = cbor.encode(items())
    i = body.index(b"\xf9\x38\x00")  # the value 0.5
    bad = body[:i] + b"\xc2\x49\x01" + bytes(8) + body[i + 3:]
    bad_payload = cbor.head(4, 2) + cbor.head(2, len(bad)) + bad + cbor.head(2, 64) + \
        ED.sign(bad)
    assert verdict(bad_payload) == "malformed"


def test_high_s_p256_and_non_canonical_ed25519_signatures_are_rejected() -> None:
    f = seal(P256, gateway_id="gw-demo-2", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced", readings=[], events=[])
    r, s = int.from_bytes(f.signature[:32], "big"), int.from_bytes(f.signature[32:], "big")
    assert s <= P256_N // 2  # signers normalise to low S
    high = r.to_bytes(32, "big") + (P256_N - s).to_bytes(32, "big")
    assert verdict(f.payload) == "valid"
    assert verdict(f.payload[:-64] + high) == "bad_signature"
    # RFC 6979: the same body gives the same signature.
    g = seal(P256, gateway_id="gw-demo-2", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced", readings=[], events=[])
    assert g.payload == f.payload
    e = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced", readings=[], events=[])
    big_s = int.from_bytes(e.signature[32:], "little") + ED25519_L
    assert big_s < 2**256
    alt = e.signature[:32] + big_s.to_bytes(32, "little")
    assert verdict(e.payload) == "valid"
    assert verdict(e.payload[:-64] + alt) == "bad_signature"


def test_many_p256_signatures_are_all_low_s() -> None:
    for i in range(40):
        sig = P256.sign(i.to_bytes(4, "big"))
        assert int.from_bytes(sig[32:], "big") <= P256_N // 2


def _drop_frames(detail: dict[str, Any]) -> list[fr.Frame]:
    a = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced", readings=[], events=[])
    b = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=5,
             prev_hash=b"\x33" * 32, created=T0 + 5, clock_sync="synced", readings=[],
             events=[Event("gateway", "data_dropped", T0 + 5, detail)])
    return [a, b]


def test_poisoned_drop_event_gets_a_verdict_everywhere(tmp_path: Path) -> None:
    """first_seq=inf and a 2^64-1 last_seq used to stop `stationseal verify` and `ingest
    import` with a traceback and be filed as internal_error by the live ingest."""
    for detail in ({"first_seq": float("inf"), "last_seq": 4, "frames": 3, "readings": 0,
                    "last_hash": "33" * 32},
                   {"first_seq": 2, "last_seq": 2**64 - 1, "frames": 1, "readings": 0,
                    "last_hash": "33" * 32}):
        frames = _drop_frames(detail)
        t = ChainTracker("gw-demo-1")
        kinds = [i.kind for f in frames for i in t.observe(f, now=0.0)[1]]
        assert kinds == ["bad_drop_event"]
        assert [g.kind for g in t.overdue_gaps(1.0, 0.0)] == ["gap"]  # nothing excused
        p = tmp_path / "poison.jsonl"
        p.write_text("".join(line_for(frames_topic("gw-demo-1"), f.payload) + "\n"
                             for f in frames))
        rep = verify_file(p, reg())
        assert not rep.ok
        assert [i["kind"] for i in rep.gateways["gw-demo-1"].issues] == ["gap",
                                                                         "bad_drop_event"]
        json.dumps(rep.gateways["gw-demo-1"].to_json())  # reportable as JSON


def test_empty_frames_file_is_not_verified(tmp_path: Path) -> None:
    reg_path = tmp_path / "registry.json"
    r = reg()
    reg_path.write_bytes(r.document)
    (tmp_path / "a.pem").write_bytes(vectors.authority().public_pem())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    proc = subprocess.run([sys.executable, "-m", "stationseal.cli", "verify", str(empty),
                           "--registry", str(reg_path), "--authority", str(tmp_path / "a.pem")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no frame in the file" in proc.stdout and "NOT VERIFIED" in proc.stdout
    assert not verify_file(empty, r).ok


@pytest.mark.parametrize("topic", ["stationseal/v1/gw-demo-1/status", "stationseal/v1/frames",
                                   "stationseal/v2/gw-demo-1/frames",
                                   "stationseal/v1/gw#1/frames", "x"])
def test_topics_of_the_wrong_shape_are_named(tmp_path: Path, topic: str) -> None:
    f = _drop_frames({})[0]
    p = tmp_path / "t.jsonl"
    p.write_text(line_for(topic, f.payload) + "\n")
    rep = verify_file(p, reg())
    assert [x["reason"] for x in rep.failures] == ["bad_topic"]


def _accepts(data: bytes) -> bool:
    try:
        cbor.check_wellformed(data)
    except cbor.CBORError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_structural_walk_fast_path_agrees_with_the_item_walk(data: st.DataObject) -> None:
    """The regex block path for readings and channels accepts exactly what the item-by-item
    walk accepts, and whatever it accepts, cbor2 decodes without raising."""
    n = data.draw(st.integers(1, 150))
    rs = [Reading(f"i{k % 7}", f"s{k % 11}", data.draw(st.one_of(
        st.floats(width=32, allow_nan=False), st.integers(-2**40, 2**40),
        st.text(max_size=70))), "u", T0 - k / 10, "N",
        data.draw(st.one_of(st.none(), st.binary(max_size=70)))) for k in range(n)]
    f = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=T0, clock_sync="synced", readings=rs, events=[])
    body = bytearray(f.body)
    for _ in range(data.draw(st.integers(0, 3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    fast = _accepts(bytes(body))
    saved = dict(cbor._BLOCKS)
    cbor._BLOCKS.clear()
    try:
        slow = _accepts(bytes(body))
    finally:
        cbor._BLOCKS.update(saved)
    assert fast == slow
    if fast:
        cbor2.loads(bytes(body), str_errors="replace")


# --------------------------------------------------------------------------- part-wise decoding


def _good_body(chans: list[list[str]] | None = None) -> bytes:
    return cbor.encode(items(chans=chans or [["a1", "co_pct", "%vol"], ["a2", "o2", "%"]],
                             recs=[[0, -5, 0.5, "N", None], [1, -4, 20.9, "N", b"\x01"]]))


def _non_canonical_variants(body: bytes) -> dict[str, bytes]:
    """The same content, each time one part written with a longer head than needed."""
    out: dict[str, bytes] = {}
    site = b"\x61S"
    assert body.count(site) == 1
    out["header"] = body.replace(site, b"\x78\x01S")
    chan = b"\x62a2"
    assert body.count(chan) == 1
    out["channels"] = body.replace(chan, b"\x78\x02a2")
    rec = b"\x85\x01\x23"  # [1, -4, ...
    assert body.count(rec) == 1
    out["readings"] = body.replace(rec, b"\x85\x18\x01\x23")
    assert body.endswith(b"\x80")
    out["events"] = body[:-1] + b"\x98\x00"
    return out


@pytest.mark.parametrize("part", ["header", "channels", "readings", "events"])
def test_each_part_of_the_body_must_be_canonical_even_with_a_known_table(part: str) -> None:
    body = _good_body()
    good = vectors.envelope(body, ED.sign(body))
    assert verdict(good) == "valid"  # its channel table is now known
    bad = _non_canonical_variants(body)[part]
    assert verdict(vectors.envelope(bad, ED.sign(bad))) == "malformed", part
    with pytest.raises(FrameError) as ei:
        fr.decode(vectors.envelope(bad, ED.sign(bad)))
    assert ei.value.reason == "malformed" and ("canonical" in ei.value.detail
                                               or "array" in ei.value.detail)
    assert verdict(good) == "valid"


def test_a_known_channel_table_decodes_to_the_same_unshared_table() -> None:
    body = _good_body([["a1", "co_pct", "%vol"], ["a2", "o2", "%"]])
    p = vectors.envelope(body, ED.sign(body))
    f1 = fr.decode(p)
    f1.channels.append(("x", "y", "z"))  # a receiver's own list
    f2 = fr.decode(p)
    assert f2.channels == [("a1", "co_pct", "%vol"), ("a2", "o2", "%")]
    assert [r.instrument for r in f2.readings] == ["a1", "a2"]
    # The table is only remembered once valid: an invalid one is refused every time.
    bad_body = cbor.encode(items(chans=[["a#1", "co_pct", "%vol"]]))
    for _ in range(2):
        with pytest.raises(FrameError) as ei:
            fr.decode(vectors.envelope(bad_body, ED.sign(bad_body)))
        assert ei.value.reason == "schema" and "instrument" in ei.value.detail


def test_the_channel_table_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = fr._ChannelTables()
    monkeypatch.setattr(fr, "_CHANNEL_TABLES", tables)
    monkeypatch.setattr(fr._ChannelTables, "MAX_ENTRIES", 8)
    for k in range(50):
        body = cbor.encode(items(chans=[[f"i{k}", "co_pct", "%vol"]]))
        fr.decode(vectors.envelope(body, ED.sign(body)))
        assert len(tables.tables) <= 8 and tables.nbytes <= tables.MAX_BYTES
    huge = [[f"i{k}", "s" * 60, "u"] for k in range(3000)]  # one table above MAX_BYTES/64
    body = cbor.encode(items(chans=huge, recs=[[0, -5, 0.5, "N", None]]))
    before = dict(tables.tables)
    assert len(fr.decode(vectors.envelope(body, ED.sign(body))).channels) == 3000
    assert tables.tables == before


def test_schema_errors_keep_body_order_with_a_known_table() -> None:
    """A header field out of its domain is named first even though the channel table
    is already known (remembered tables skip work, not checks)."""
    body = _good_body()
    assert verdict(vectors.envelope(body, ED.sign(body))) == "valid"
    bad = cbor.encode(items(chans=[["a1", "co_pct", "%vol"], ["a2", "o2", "%"]],
                            recs=[[7, -5, 0.5, "N", None]], clock=9))
    with pytest.raises(FrameError) as ei:
        fr.decode(vectors.envelope(bad, ED.sign(bad)))
    assert ei.value.reason == "schema" and "clock_sync" in ei.value.detail
