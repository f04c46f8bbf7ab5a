"""Test vectors for docs/test-vectors/: frames with known keys and expected verdicts.

Ed25519 signatures are deterministic, so the Ed25519 vectors regenerate byte for byte and a
test pins them; P-256 signatures are randomised, so those vectors are pinned as committed
(``python -m stationseal.vectors --write`` regenerates everything).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stationseal import cbor
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.records import Event, Reading
from stationseal.registry import Authority, KeyRegistry
from stationseal.signing import Ed25519Signer, P256Signer

VECTOR_DIR = Path(__file__).resolve().parent.parent / "docs" / "test-vectors"
T0 = 1767225600.0  # 2026-01-01T00:00:00Z
BOOT = bytes(range(16))


def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(0x5EA1_5EA1_5EA1_5EA1, ec.SECP256R1())


def _pub_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def raw_payload(sign: Any, items: list[Any], *, sig: bytes | None = None) -> bytes:
    """A payload around the deterministic CBOR of ``items`` (the 13 body items, or any
    other value), signed with ``sign(body)`` unless ``sig`` is given: how the vectors
    build frames no honest encoder would write."""
    body = cbor.encode(items)
    s = sign(body) if sig is None else sig
    return cbor.head(4, 2) + cbor.head(2, len(body)) + body + cbor.head(2, len(s)) + s


def body_items(f: Frame) -> list[Any]:
    """The 13 body items of a frame, decoded (a starting point for altered vectors)."""
    items: list[Any] = cbor.decode(f.body)
    return items


def sample_frames() -> list[Frame]:
    s = Ed25519Signer(ed_key())
    f1 = seal(
        s,
        gateway_id="gw-demo-1",
        site="V-3201-001",
        boot_id=BOOT,
        seq=1,
        prev_hash=ZERO_HASH,
        created=T0 + 1.0,
        clock_sync="synced",
        readings=[
            Reading("analyzer-1", "co_pct", 0.25, "%vol", T0 + 0.5, "N", bytes.fromhex("3e800000")),
            Reading("analyzer-1", "hc_ppm", 42, "ppm", T0 + 0.5, "N", bytes.fromhex("002a")),
        ],
        events=[Event("lane-1", "test_start", T0 + 0.2, {"test_id": "T1", "method": "asm5025"})],
    )
    f2 = seal(
        s,
        gateway_id="gw-demo-1",
        site="V-3201-001",
        boot_id=BOOT,
        seq=2,
        prev_hash=f1.frame_hash,
        created=T0 + 2.0,
        clock_sync="synced",
        readings=[Reading("analyzer-1", "co_pct", 0.3, "%vol", T0 + 1.5, "M", None)],
        events=[],
    )
    return [f1, f2]


def build() -> dict[str, Any]:
    ed = ed_key()
    p2 = p256_key()
    f1, f2 = sample_frames()
    p = seal(
        P256Signer(p2),
        gateway_id="gw-demo-2",
        site="E-1101-007",
        boot_id=BOOT,
        seq=7,
        prev_hash=bytes([0xAA]) * 32,
        created=T0 + 3.0,
        clock_sync="unsynced",
        readings=[Reading("cems-1", "so2_mgm3", 35.5, "mg/m³", T0 + 2.0, "N", None)],
        events=[],
    )
    tampered = bytearray(f1.payload)
    tampered[-70] ^= 0x01  # last byte of the body: inside the events array
    # Non-canonical: the sequence number 1 written with a 1-byte extra head (18 01).
    body = bytearray(f1.body)
    seq_pos = body.index(bytes(BOOT)) + 16
    assert body[seq_pos] == 0x01
    nc_body = bytes(body[:seq_pos]) + b"\x18\x01" + bytes(body[seq_pos + 1 :])
    nc = (
        cbor.head(4, 2) + cbor.head(2, len(nc_body)) + nc_body + cbor.head(2, 64)
        + ed.sign(nc_body)
    )
    other = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
    stranger = seal(
        Ed25519Signer(other),
        gateway_id="gw-demo-1",
        site="V-3201-001",
        boot_id=BOOT,
        seq=3,
        prev_hash=f2.frame_hash,
        created=T0 + 3.0,
        clock_sync="synced",
        readings=[],
        events=[],
    )
    keys = {
        "ed25519": {"alg": "ed25519", "key_id": f1.key_id, "public_key": _pub_pem(ed),
                    "private_key_seed_hex": bytes(range(1, 33)).hex()},
        "p256": {"alg": "p256", "key_id": p.key_id, "public_key": _pub_pem(p2)},
    }

    def v(name: str, payload: bytes, key: str, expected: str, note: str) -> dict[str, Any]:
        return {"name": name, "key": key, "payload_hex": payload.hex(), "expected": expected,
                "note": note}

    return {
        "keys": keys,
        "vectors": [
            v("ed25519-valid-seq1", f1.payload, "ed25519", "valid",
              f"frame_hash {f1.frame_hash.hex()}"),
            v("ed25519-valid-seq2", f2.payload, "ed25519", "valid",
              f"prev_hash = frame_hash of seq 1; frame_hash {f2.frame_hash.hex()}"),
            v("p256-valid", p.payload, "p256", "valid", "ECDSA P-256, raw r||s signature"),
            v("ed25519-tampered", bytes(tampered), "ed25519", "bad_signature",
              "one bit of the body flipped"),
            v("ed25519-non-canonical", nc, "ed25519", "malformed",
              "seq encoded as 18 01 instead of 01; correctly signed but not canonical"),
            v("unknown-key", stranger.payload, "ed25519", "unknown_key",
              f"signed by key {stranger.key_id}, which is not in the registry"),
        ],
    }


def authority() -> Authority:
    """The vectors' registry authority (a fixed seed, so the registry regenerates)."""
    return Authority(ed25519.Ed25519PrivateKey.from_private_bytes(bytes([0xA5]) * 32))


def registry_for(doc: dict[str, Any]) -> KeyRegistry:
    reg = KeyRegistry()
    reg.add("gw-demo-1", doc["keys"]["ed25519"]["public_key"].encode(), T0 - 86400,
            sites=["V-3201-001", "S"], at=T0 - 86400)
    reg.add("gw-demo-2", doc["keys"]["p256"]["public_key"].encode(), T0 - 86400,
            sites=["E-1101-007", "S"], at=T0 - 86400)
    reg.sign(authority(), issued=T0 - 86400)
    return reg


def write(dir_: Path = VECTOR_DIR) -> None:
    from stationseal.export import frames_topic, line_for

    dir_.mkdir(parents=True, exist_ok=True)
    doc = build()
    (dir_ / "vectors.json").write_text(json.dumps(doc, indent=2) + "\n")
    reg = KeyRegistry()
    for c in registry_for(doc).changes:
        reg._apply(c, "vector registry")
    (dir_ / "registry.json").write_bytes(reg.sign(authority(), issued=T0 - 86400))
    (dir_ / "registry-authority.pub.pem").write_bytes(authority().public_pem())
    f1, f2 = sample_frames()
    with open(dir_ / "frames.jsonl", "w") as fh:
        for f in (f1, f2):
            fh.write(line_for(frames_topic(f.gateway_id), f.payload) + "\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        json.dump(build(), sys.stdout, indent=2)
