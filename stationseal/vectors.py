"""Test vectors for docs/test-vectors/ (docs/wire-format.md §12): one or more for every
verdict, with the keys, the signed registry and, where a verdict depends on it, the
central arrival time.

Everything regenerates byte for byte: Ed25519 is deterministic and P-256 signatures are
RFC 6979 deterministic (``stationseal.signing.P256_DETERMINISTIC``); the registry's change
and issue times are fixed. ``python -m stationseal.vectors --write`` rewrites the files;
``tests/test_vectors.py`` checks that they are what this module builds and that the
library, ``stationseal verify`` and the ingest pipeline all give the expected verdicts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stationseal import cbor
from stationseal.chain import MAX_DROP_SPAN, MAX_UNSYNCED_MS
from stationseal.frame import MAX_PAYLOAD, MAX_TIME_MS, ZERO_HASH, Frame, seal
from stationseal.records import Event, Reading
from stationseal.registry import Authority, KeyRegistry
from stationseal.signing import (
    ED25519_L,
    P256_N,
    Ed25519Signer,
    P256Signer,
    Signer,
    key_id_for,
)

VECTOR_DIR = Path(__file__).resolve().parent.parent / "docs" / "test-vectors"
T0 = 1767225600.0  # 2026-01-01T00:00:00Z
T0_MS = int(T0 * 1000)
BOOT = bytes(range(16))
BOOT_B = bytes([0xB0]) * 16
DAY_MS = 86_400_000
#: The vector gateways' sites and the instruments gw-demo-1's key is bound to.
SITE1 = "V-3201-001"
SITE2 = "E-1101-007"
INSTRUMENTS1 = ["analyzer-1", "lane-1"]


def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(0x5EA1_5EA1_5EA1_5EA1, ec.SECP256R1())


def seed_key(b: int) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes([b]) * 32)


def authority() -> Authority:
    """The vectors' registry authority (a fixed seed, so the registry regenerates)."""
    return Authority(seed_key(0xA5))


#: name -> (gateway it is registered for, private key seed byte) of the extra Ed25519
#: keys, each in one validity state; "stranger" is in no registry.
EXTRA_KEYS = {
    "retired": ("gw-demo-3", 0x03),
    "compromised": ("gw-demo-4", 0x04),
    "not-yet-valid": ("gw-demo-5", 0x05),
    "expired": ("gw-demo-6", 0x06),
    "stranger": ("gw-demo-7", 0x07),
}
SITES = {"gw-demo-1": SITE1, "gw-demo-2": SITE2, "gw-demo-3": "V-3201-003",
         "gw-demo-4": "V-3201-004", "gw-demo-5": "V-3201-005", "gw-demo-6": "V-3201-006",
         "gw-demo-7": "V-3201-007"}


def _pub_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def signers() -> dict[str, Signer]:
    out: dict[str, Signer] = {"ed25519": Ed25519Signer(ed_key()),
                              "p256": P256Signer(p256_key())}
    for name, (_, b) in EXTRA_KEYS.items():
        out[name] = Ed25519Signer(seed_key(b))
    return out


def registry() -> KeyRegistry:
    """The vectors' registry: every key but "stranger", each in its state. Change and
    issue times are fixed, so the signed document is reproducible."""
    s = signers()
    reg = KeyRegistry()
    at = T0 - 2 * 86400

    def pem(name: str) -> bytes:
        key = ed_key() if name == "ed25519" else p256_key() if name == "p256" \
            else seed_key(EXTRA_KEYS[name][1])
        return _pub_pem(key).encode()

    reg.add("gw-demo-1", pem("ed25519"), T0 - 86400, sites=[SITE1],
            instruments=INSTRUMENTS1, backfill_s=7 * 86400, at=at)
    reg.add("gw-demo-2", pem("p256"), T0 - 86400, sites=[SITE2], at=at)
    reg.add("gw-demo-3", pem("retired"), T0 - 86400, sites=[SITES["gw-demo-3"]], at=at)
    reg.add("gw-demo-4", pem("compromised"), T0 - 86400, sites=[SITES["gw-demo-4"]], at=at)
    reg.add("gw-demo-5", pem("not-yet-valid"), T0 + 86400, sites=[SITES["gw-demo-5"]], at=at)
    reg.add("gw-demo-6", pem("expired"), T0 - 86400, T0, sites=[SITES["gw-demo-6"]],
            backfill_s=3600, at=at)
    reg.revoke(s["retired"].key_id, T0 + 10, "retired", recorded=at + 1)
    reg.revoke(s["compromised"].key_id, T0 + 86400, "compromised", recorded=at + 2)
    reg.sign(authority(), issued=at + 3)
    return reg


def registry_for(doc: dict[str, Any] | None = None) -> KeyRegistry:
    """A registry for unit tests (not the documented one): the keys of gw-demo-1 and
    gw-demo-2 bound to their vector site and to the test site ``S``, for any
    instrument, signed by the vectors' authority. ``doc`` is ignored (older callers)."""
    reg = KeyRegistry()
    at = T0 - 2 * 86400
    reg.add("gw-demo-1", _pub_pem(ed_key()).encode(), T0 - 86400, sites=[SITE1, "S"], at=at)
    reg.add("gw-demo-2", _pub_pem(p256_key()).encode(), T0 - 86400, sites=[SITE2, "S"],
            at=at)
    reg.sign(authority(), issued=at)
    return reg


def raw_payload(sign: Any, items: list[Any], *, sig: bytes | None = None) -> bytes:
    """A payload around the deterministic CBOR of ``items`` (the 13 body items, or any
    other value), signed with ``sign(body)`` unless ``sig`` is given: how the vectors
    build frames no honest encoder would write."""
    body = cbor.encode(items)
    return envelope(body, sign(body) if sig is None else sig)


def envelope(body: bytes, sig: bytes) -> bytes:
    return cbor.head(4, 2) + cbor.head(2, len(body)) + body + cbor.head(2, len(sig)) + sig


def body_items(f: Frame) -> list[Any]:
    """The 13 body items of a frame, decoded (a starting point for altered vectors)."""
    items: list[Any] = cbor.decode(f.body)
    return items


def _frame(s: Signer, gw: str, seq: int, prev: bytes, created_ms: int, *,
           clock: str = "synced", events: list[Event] | None = None,
           boot: bytes = BOOT, instrument: str = "analyzer-1", value: float = 0.25,
           site: str | None = None) -> Frame:
    t = created_ms / 1000
    return seal(s, gateway_id=gw, site=site or SITES[gw], boot_id=boot, seq=seq,
                prev_hash=prev, created=t, clock_sync=clock,
                readings=[Reading(instrument, "co_pct", value, "%vol", t - 0.5, "N",
                                  bytes.fromhex("3e800000"))],
                events=events or [])


def sample_frames() -> list[Frame]:
    """Two linked frames of gw-demo-1: ``frames.jsonl``."""
    s = Ed25519Signer(ed_key())
    f1 = seal(
        s, gateway_id="gw-demo-1", site=SITE1, boot_id=BOOT, seq=1, prev_hash=ZERO_HASH,
        created=T0 + 1.0, clock_sync="synced",
        readings=[
            Reading("analyzer-1", "co_pct", 0.25, "%vol", T0 + 0.5, "N",
                    bytes.fromhex("3e800000")),
            Reading("analyzer-1", "hc_ppm", 42, "ppm", T0 + 0.5, "N", bytes.fromhex("002a")),
        ],
        events=[Event("lane-1", "test_start", T0 + 0.2, {"test_id": "T1", "method": "asm5025"})],
    )
    f2 = seal(
        s, gateway_id="gw-demo-1", site=SITE1, boot_id=BOOT, seq=2,
        prev_hash=f1.frame_hash, created=T0 + 2.0, clock_sync="synced",
        readings=[Reading("analyzer-1", "co_pct", 0.3, "%vol", T0 + 1.5, "M", None)],
        events=[],
    )
    return [f1, f2]


def frames_topic(gw: str) -> str:
    return f"stationseal/v1/{gw}/frames"


def line_of(f: Frame | bytes, topic: str | None = None, gw: str = "gw-demo-1") -> str:
    payload = f if isinstance(f, bytes) else f.payload
    return json.dumps({"topic": topic or frames_topic(gw),
                       "payload": base64.b64encode(payload).decode("ascii")},
                      separators=(",", ":"))


def _items(**over: Any) -> list[Any]:
    """Body items of a valid gw-demo-1 frame at T0, with fields replaced."""
    base: dict[str, Any] = {
        "version": 1, "gateway_id": "gw-demo-1", "site": SITE1,
        "key_id": key_id_for(ed_key().public_key()), "alg": 1, "boot_id": BOOT, "seq": 1,
        "prev_hash": ZERO_HASH, "created_ms": T0_MS, "clock_sync": 1,
        "channels": [["analyzer-1", "co_pct", "%vol"]],
        "readings": [[0, -500, 0.25, "N", None]], "events": [],
    }
    base.update(over)
    return list(base.values())


def single_vectors() -> list[dict[str, Any]]:
    s = signers()
    ed, p256 = s["ed25519"], s["p256"]
    f1, f2 = sample_frames()
    p = _frame(p256, "gw-demo-2", 7, bytes([0xAA]) * 32, T0_MS + 3000)
    out: list[dict[str, Any]] = []

    def v(name: str, payload: bytes | None, expected: str, note: str, *, key: str = "ed25519",
          gw: str = "gw-demo-1", topic: str | None = None, received_ms: int | None = None,
          fill: dict[str, Any] | None = None) -> None:
        d: dict[str, Any] = {"name": name, "key": key, "topic": topic or frames_topic(gw)}
        if payload is not None:
            d["payload_hex"] = payload.hex()
        if fill is not None:
            d["payload_fill"] = fill
        if received_ms is not None:
            d["received_ms"] = received_ms
        d["expected"] = expected
        d["note"] = note
        out.append(d)

    def signed(**over: Any) -> bytes:
        return raw_payload(ed.sign, _items(**over))

    # -- valid ------------------------------------------------------------------------
    v("valid-ed25519-seq1", f1.payload, "valid", f"frame_hash {f1.frame_hash.hex()}")
    v("valid-ed25519-seq2", f2.payload, "valid",
      f"prev_hash = frame_hash of seq 1; frame_hash {f2.frame_hash.hex()}")
    v("valid-p256", p.payload, "valid",
      "ECDSA P-256, RFC 6979 deterministic, low S, raw r||s", key="p256", gw="gw-demo-2")
    # -- oversize / malformed -----------------------------------------------------------
    v("oversize", None, "oversize", f"{MAX_PAYLOAD + 1} zero bytes: the size is checked first",
      fill={"byte": "00", "length": MAX_PAYLOAD + 1})
    v("malformed-envelope-not-array", b"\x00", "malformed", "not an array of 2")
    v("malformed-envelope-trailing", f1.payload + b"\x00", "malformed",
      "one byte after the signature")
    v("malformed-truncated", f1.payload[:-1], "malformed", "the signature is cut short")
    v("malformed-signature-63", envelope(f1.body, f1.signature[:63]), "malformed",
      "a 63-byte signature")
    v("malformed-envelope-length-not-shortest",
      b"\x82\x59" + len(f1.body).to_bytes(2, "big") + f1.body + b"\x58\x40" + f1.signature,
      "malformed", "the body length written as 59 00 nn although it fits 58 nn")
    body = bytearray(f1.body)
    seq_pos = body.index(BOOT) + 16
    nc_body = bytes(body[:seq_pos]) + b"\x18\x01" + bytes(body[seq_pos + 1:])
    v("malformed-body-not-canonical", envelope(nc_body, ed.sign(nc_body)), "malformed",
      "seq encoded as 18 01 instead of 01; correctly signed but not canonical")
    utf = cbor.encode(_items(events=[["lane-1", 0, "note", {"k": "x"}]]))
    utf = utf.replace(b"\x61x", b"\x61\xff")
    v("malformed-body-invalid-utf8", envelope(utf, ed.sign(utf)), "malformed",
      "text string with the byte ff; correctly signed")
    i = cbor.encode(_items()).index(b"\xf9\x34\x00")  # the value 0.25
    base = cbor.encode(_items())
    tag = base[:i] + b"\xc2\x41\x01" + base[i + 3:]
    v("malformed-body-tag", envelope(tag, ed.sign(tag)), "malformed",
      "a bignum (tag 2) as value; correctly signed")
    indef = base[:i] + b"\x7f\x61\x41\xff" + base[i + 3:]
    v("malformed-body-indefinite", envelope(indef, ed.sign(indef)), "malformed",
      "an indefinite-length text string; correctly signed")
    twelve = cbor.encode(_items()[:12])
    v("malformed-body-12-items", envelope(twelve, ed.sign(twelve)), "malformed",
      "the body is an array of 12 items")
    # -- schema -------------------------------------------------------------------------
    v("schema-version-2", signed(version=2), "schema", "format version 2 (header)")
    v("schema-gateway-id-hash", signed(gateway_id="gw#1"), "schema",
      "gateway_id outside the name set (header, checked before the key is looked up)",
      gw="gw-demo-1")
    v("schema-key-id-uppercase", signed(key_id=key_id_for(ed_key().public_key()).upper()),
      "schema", "key_id must be 16 lowercase hex (header)")
    v("schema-alg-3", signed(alg=3), "schema", "alg 3 is not assigned (header)")
    v("schema-seq-0", signed(seq=0), "schema", "seq 0; correctly signed")
    v("schema-seq1-nonzero-prev", signed(prev_hash=bytes([0x22]) * 32), "schema",
      "seq 1 with a non-zero prev_hash; correctly signed")
    v("schema-quality-x", signed(readings=[[0, -500, 0.25, "X", None]]), "schema",
      "quality X is not an HJ 212 flag; correctly signed")
    v("schema-unit-control", signed(channels=[["analyzer-1", "co_pct", "%\nvol"]]), "schema",
      "a control character in a unit; correctly signed")
    v("schema-created-beyond", signed(created_ms=MAX_TIME_MS + 1), "schema",
      f"created_ms {MAX_TIME_MS + 1} beyond the range; correctly signed")
    v("schema-channel-out-of-range", signed(readings=[[1, -500, 0.25, "N", None]]), "schema",
      "a reading names channel 1 of a 1-channel table; correctly signed")
    v("schema-event-kind", signed(events=[["gateway", 0, "Clock-Jump", {}]]), "schema",
      "event kind outside [a-z][a-z0-9_]*; correctly signed")
    # -- keys ---------------------------------------------------------------------------
    stranger = _frame(s["stranger"], "gw-demo-1", 3, f2.frame_hash, T0_MS + 3000,
                      site=SITE1)
    v("unknown-key", stranger.payload, "unknown_key",
      f"signed by key {stranger.key_id} (seed 07..07), which is not in the registry",
      key="stranger")
    mismatch = _frame(ed, "gw-demo-2", 1, ZERO_HASH, T0_MS + 1000, site=SITE2)
    v("gateway-mismatch", mismatch.payload, "gateway_mismatch",
      "gw-demo-1's key signing for gw-demo-2", gw="gw-demo-2")
    tampered = bytearray(f1.payload)
    tampered[-70] ^= 0x01  # last byte of the body: inside the events array
    v("bad-signature-tampered", bytes(tampered), "bad_signature", "one bit of the body flipped")
    pt = bytearray(p.payload)
    pt[-70] ^= 0x01
    v("bad-signature-p256-tampered", bytes(pt), "bad_signature",
      "a failing P-256 frame: one bit of the body flipped", key="p256", gw="gw-demo-2")
    r, sv = int.from_bytes(p.signature[:32], "big"), int.from_bytes(p.signature[32:], "big")
    high = r.to_bytes(32, "big") + (P256_N - sv).to_bytes(32, "big")
    v("bad-signature-p256-high-s", p.payload[:-64] + high, "bad_signature",
      "the valid P-256 frame with s replaced by n - s (mathematically valid, not low S)",
      key="p256", gw="gw-demo-2")
    big_s = int.from_bytes(f1.signature[32:], "little") + ED25519_L
    alt = f1.signature[:32] + big_s.to_bytes(32, "little")
    v("bad-signature-ed25519-s-plus-l", f1.payload[:-64] + alt, "bad_signature",
      "the valid Ed25519 frame with S + L as S (not canonical)")
    retired_after = _frame(s["retired"], "gw-demo-3", 1, ZERO_HASH, T0_MS + 10_000,
                           instrument="x1")
    v("revoked-key-retired-created-after", retired_after.payload, "revoked_key",
      "created at the retirement time (T0+10 s)", key="retired", gw="gw-demo-3")
    backdated = _frame(s["retired"], "gw-demo-3", 1, ZERO_HASH, T0_MS + 5000,
                       instrument="x1")
    v("revoked-key-retired-received-after", backdated.payload, "revoked_key",
      "created before the retirement, first received after it (valid without the "
      "arrival time)", key="retired", gw="gw-demo-3", received_ms=T0_MS + 10_000)
    v("valid-retired-received-before", backdated.payload, "valid",
      "created and first received before the retirement", key="retired", gw="gw-demo-3",
      received_ms=T0_MS + 9_999)
    comp = _frame(s["compromised"], "gw-demo-4", 1, ZERO_HASH, T0_MS, instrument="x1")
    v("revoked-key-compromised", comp.payload, "revoked_key",
      "a compromised key rejects every frame, even one dated before the revocation",
      key="compromised", gw="gw-demo-4")
    early = _frame(s["not-yet-valid"], "gw-demo-5", 1, ZERO_HASH, T0_MS, instrument="x1")
    v("key-not-yet-valid", early.payload, "key_not_yet_valid", "created before valid_from",
      key="not-yet-valid", gw="gw-demo-5")
    late = _frame(s["expired"], "gw-demo-6", 1, ZERO_HASH, T0_MS, instrument="x1")
    v("key-expired", late.payload, "key_expired", "created at valid_until", key="expired",
      gw="gw-demo-6")
    before = _frame(s["expired"], "gw-demo-6", 1, ZERO_HASH, T0_MS - 1, instrument="x1")
    v("key-expired-received-late", before.payload, "key_expired",
      "created before valid_until, first received a backfill horizon (1 h) after it",
      key="expired", gw="gw-demo-6", received_ms=T0_MS + 3_600_000)
    v("valid-expired-forwarded-in-horizon", before.payload, "valid",
      "created before valid_until, first received within the backfill horizon after it",
      key="expired", gw="gw-demo-6", received_ms=T0_MS + 3_599_999)
    other_site = _frame(ed, "gw-demo-1", 1, ZERO_HASH, T0_MS, site=SITE2)
    v("site-mismatch", other_site.payload, "site_mismatch",
      f"gw-demo-1's key is bound to {SITE1}; the frame says {SITE2}")
    other_inst = _frame(ed, "gw-demo-1", 1, ZERO_HASH, T0_MS, instrument="dyno-9")
    v("instrument-mismatch", other_inst.payload, "instrument_mismatch",
      f"gw-demo-1's key speaks for {', '.join(INSTRUMENTS1)} (and gateway); not dyno-9")
    v("topic-mismatch", f1.payload, "topic_mismatch", "gw-demo-1's frame on gw-demo-2's topic",
      topic=frames_topic("gw-demo-2"))
    return out


def line_vectors() -> list[dict[str, Any]]:
    f1 = sample_frames()[0]
    good = base64.b64encode(f1.payload).decode()
    return [
        {"name": "bad-json", "line": '{"topic": "stationseal/v1/gw-demo-1/frames", "pay',
         "expected": "bad_json", "note": "not JSON"},
        {"name": "bad-line-no-payload", "line": '{"topic": "stationseal/v1/gw-demo-1/frames"}',
         "expected": "bad_line", "note": "no payload member"},
        {"name": "bad-line-array", "line": f'["{good}"]', "expected": "bad_line",
         "note": "not an object"},
        {"name": "bad-base64", "line": json.dumps({"topic": frames_topic("gw-demo-1"),
                                                   "payload": good[:-2] + "*="}),
         "expected": "bad_base64", "note": "a character outside base64"},
        {"name": "bad-topic-status", "line": line_of(f1, "stationseal/v1/gw-demo-1/status"),
         "expected": "bad_topic", "note": "not a frames topic"},
        {"name": "bad-topic-name", "line": line_of(f1, "stationseal/v1/gw#1/frames"),
         "expected": "bad_topic", "note": "the gateway level is not a name"},
    ]


def _drop(first: int, last: int, last_hash: bytes | None, frames: int | None = None
          ) -> Event:
    d: dict[str, Any] = {"first_seq": first, "last_seq": last,
                         "frames": frames if frames is not None else last - first + 1,
                         "readings": 3}
    if last_hash is not None:
        d["last_hash"] = last_hash.hex()
    return Event("gateway", "data_dropped", T0, d)


def chain_vectors() -> list[dict[str, Any]]:
    ed = Ed25519Signer(ed_key())
    gw = "gw-demo-1"

    def run(n: int, start_ms: int = T0_MS, clock: str = "synced", step_ms: int = 1000,
            boot: bytes = BOOT) -> list[Frame]:
        out: list[Frame] = []
        prev = ZERO_HASH
        for k in range(1, n + 1):
            f = _frame(ed, gw, k, prev, start_ms + k * step_ms, clock=clock, boot=boot)
            prev = f.frame_hash
            out.append(f)
        return out

    a = run(6)
    out: list[dict[str, Any]] = []

    def c(name: str, frames: list[Frame], issues: list[tuple[str, int]], note: str,
          receipts: dict[int, int] | None = None) -> None:
        d: dict[str, Any] = {"name": name, "lines": [line_of(f) for f in frames]}
        if receipts is not None:
            d["receipts"] = [{"frame_hash": frames[i].frame_hash.hex(), "received_ms": t}
                             for i, t in sorted(receipts.items())]
        d["expected_issues"] = [{"kind": k, "seq": s} for k, s in issues]
        d["verified"] = not issues and bool(frames)
        d["note"] = note
        out.append(d)

    c("chain-ok", a[:3], [], "three linked frames")
    c("gap", [a[0], a[1], a[3]], [("gap", 3)],
      "seq 3 missing: a gap, charged to seq 4 (the first frame after it)")
    c("duplicate", [a[0], a[1], a[1]], [("duplicate", 2)], "seq 2 twice, same hash")
    alt2 = _frame(ed, gw, 2, a[0].frame_hash, T0_MS + 2500, value=0.5)
    c("fork-same-seq", [a[0], a[1], alt2], [("fork", 2)],
      "seq 2 twice with different content, same boot id")
    bad_link = _frame(ed, gw, 2, bytes([0x99]) * 32, T0_MS + 2000)
    c("fork-broken-link", [a[0], bad_link], [("fork", 2)],
      "seq 2's prev_hash is not seq 1's frame_hash")
    reset = _frame(ed, gw, 1, ZERO_HASH, T0_MS + 9000, boot=BOOT_B)
    c("sequence-reset", [a[0], a[1], reset], [("sequence_reset", 1)],
      "a new boot id seals seq 1 again")
    carrier = _frame(ed, gw, 6, a[4].frame_hash, T0_MS + 6000,
                     events=[_drop(3, 5, a[4].frame_hash)])
    c("drop-covers-gap", [a[0], a[1], carrier], [],
      "seqs 3..5 missing, covered by a signed drop carrying last_hash")
    no_hash = _frame(ed, gw, 6, a[4].frame_hash, T0_MS + 6000, events=[_drop(3, 5, None)])
    c("drop-without-last-hash", [a[0], a[1], no_hash], [("gap", 3), ("bad_drop_event", 6)],
      "a drop without last_hash covers nothing: bad_drop_event and the gap")
    n = MAX_DROP_SPAN + 1
    far = _frame(ed, gw, n + 2, bytes([0x55]) * 32, T0_MS + 9000,
                 events=[_drop(2, n + 1, bytes([0x55]) * 32)])
    c("drop-over-cap", [a[0], far], [("gap", 2), ("bad_drop_event", n + 2)],
      f"one event claiming {n} dropped frames (the cap is {MAX_DROP_SPAN})")
    liar = _frame(ed, gw, 7, a[5].frame_hash, T0_MS + 7000,
                  events=[_drop(4, 6, bytes([0x66]) * 32)])
    c("drop-contradicts-frame", [*a, liar], [("fork", 6), ("fork", 7)],
      "seqs 4..6 are present but the drop names another last_hash for seq 6")
    unsynced = run(3, clock="unsynced", step_ms=MAX_UNSYNCED_MS // 2 + 1)
    c("clock-unsynced", unsynced, [("clock_unsynced", 3)],
      "frames saying 'not synchronised' for more than an hour")
    b = run(2)
    c("created-future", b, [("created_future", 2)],
      "seq 2 created a day after the centre first received it (receipts)",
      receipts={0: T0_MS + 1500, 1: T0_MS + 2000 - DAY_MS})
    c("created-too-old", b, [("created_too_old", 2)],
      "seq 2 first received 7 days + 1 s after it was created (backfill horizon 7 d)",
      receipts={0: T0_MS + 1500, 1: T0_MS + 2000 + 7 * DAY_MS + 1000})
    c("empty-file", [], [], "no frame: never VERIFIED")
    return out


def build() -> dict[str, Any]:
    keys: dict[str, Any] = {
        "ed25519": {"alg": "ed25519", "gateway_id": "gw-demo-1",
                    "key_id": key_id_for(ed_key().public_key()),
                    "public_key": _pub_pem(ed_key()),
                    "private_key_seed_hex": bytes(range(1, 33)).hex()},
        "p256": {"alg": "p256", "gateway_id": "gw-demo-2",
                 "key_id": key_id_for(p256_key().public_key()),
                 "public_key": _pub_pem(p256_key()),
                 "private_scalar_hex": f"{0x5EA1_5EA1_5EA1_5EA1:064x}"},
    }
    for name, (gw, b) in EXTRA_KEYS.items():
        keys[name] = {"alg": "ed25519", "gateway_id": gw,
                      "key_id": key_id_for(seed_key(b).public_key()),
                      "public_key": _pub_pem(seed_key(b)),
                      "private_key_seed_hex": (bytes([b]) * 32).hex()}
    auth = authority()
    return {
        "format": "stationseal-test-vectors/2",
        "registry": "registry.json",
        "authority": {"public_key": auth.public_pem().decode(),
                      "fingerprint": auth.fingerprint,
                      "private_key_seed_hex": (bytes([0xA5]) * 32).hex()},
        "keys": keys,
        "vectors": single_vectors(),
        "lines": line_vectors(),
        "chains": chain_vectors(),
    }


def payload_of(v: dict[str, Any]) -> bytes:
    """A single vector's payload (``payload_hex``, or ``payload_fill`` for big ones)."""
    if "payload_hex" in v:
        return bytes.fromhex(v["payload_hex"])
    fill = v["payload_fill"]
    return bytes.fromhex(fill["byte"]) * int(fill["length"])


def receipts_lines(receipts: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in receipts)


def files() -> dict[str, bytes]:
    """Every file of docs/test-vectors/ this module owns, by name."""
    doc = build()
    reg = registry()
    assert reg.document is not None
    f1, f2 = sample_frames()
    return {
        "vectors.json": (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(),
        "registry.json": reg.document,
        "registry-authority.pub.pem": authority().public_pem(),
        "frames.jsonl": "".join(line_of(f) + "\n" for f in (f1, f2)).encode(),
        "receipts.jsonl": receipts_lines([
            {"frame_hash": f1.frame_hash.hex(), "received_ms": T0_MS + 1200},
            {"frame_hash": f2.frame_hash.hex(), "received_ms": T0_MS + 2300}]).encode(),
    }


def write(dir_: Path = VECTOR_DIR) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    for name, data in files().items():
        (dir_ / name).write_bytes(data)


def digest() -> str:
    return hashlib.sha256(b"".join(files().values())).hexdigest()


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        json.dump(build(), sys.stdout, indent=2)
