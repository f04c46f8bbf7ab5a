"""Test vectors of docs/evidence.md: receipts, tree hashes, inclusion proofs, a signed
checkpoint and a signed manifest, from a fixed Ed25519 key (deterministic signatures).

``python -m evidence.vectors --write`` regenerates docs/test-vectors/custody.json; a test
checks it byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from stationseal import merkle
from stationseal.checkpoint import (
    ZERO32,
    chain_next,
    receipt_leaf,
    receipt_leaf_hash,
    sign_checkpoint,
)
from stationseal.signing import Ed25519Signer

PATH = Path(__file__).resolve().parent.parent / "docs" / "test-vectors" / "custody.json"
SEED = bytes([0x11] * 32)
T_MS = 1767225600000  # 2026-01-01T00:00:00Z


def vectors() -> dict[str, Any]:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(SEED)
    signer = Ed25519Signer(key)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    receipts: list[dict[str, Any]] = []
    heads: list[bytes] = []
    head = ZERO32
    hashes = []
    for i in range(7):
        fh = hashlib.sha256(f"frame {i}".encode()).digest()
        ms = T_MS + 1000 * i
        lh = receipt_leaf_hash(fh, ms)
        head = chain_next(head, lh)
        hashes.append(lh)
        heads.append(head)
        receipts.append({"index": i, "frame_hash": fh.hex(), "received_ms": ms,
                         "leaf": receipt_leaf(fh, ms).hex(), "leaf_hash": lh.hex(),
                         "log_head": head.hex()})
    # Checkpoint 0 covers receipts 0..1, checkpoint 1 receipts 2..6.
    cp0 = sign_checkpoint(signer, origin="vector-central", number=0, first=0, size=2,
                          root=merkle.root_from_leaf_hashes(hashes[:2]),
                          log_head=heads[1], previous=ZERO32,
                          time_ms=T_MS + 60_000)
    cp1 = sign_checkpoint(signer, origin="vector-central", number=1, first=2, size=5,
                          root=merkle.root_from_leaf_hashes(hashes[2:]),
                          log_head=head, previous=cp0.hash, time_ms=T_MS + 120_000)
    proofs = []
    for i in range(2, 7):
        path = merkle.inclusion_path(hashes[2:], i - 2)
        proofs.append({"checkpoint": 1, "index": i, "frame_hash": receipts[i]["frame_hash"],
                       "received_ms": receipts[i]["received_ms"],
                       "path": [p.hex() for p in path]})
    manifest = (json.dumps({"alert_id": "E4|S1|stack1.cems|so2_mgm3|flat#1",
                            "files": [{"bytes": 3, "path": "a.txt",
                                       "sha256": hashlib.sha256(b"abc").hexdigest()}],
                            "format": "stationseal-evidence/1"},
                           indent=2, sort_keys=True) + "\n").encode()
    ct = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
    return {
        "description": "docs/evidence.md test vectors; regenerate: python -m evidence.vectors "
                       "--write",
        "ed25519_seed": SEED.hex(),
        "central_public_key": pub.decode(),
        "central_key_id": signer.key_id,
        "tree_hash_ct": [{"leaves": [x.hex() for x in ct[:n]],
                          "root": merkle.root_from_leaf_hashes(
                              [merkle.leaf_hash(x) for x in ct[:n]]).hex()}
                         for n in (0, 1, 2, 3, 5, 7, 8)],
        "receipts": receipts,
        "checkpoints": [cp0.to_json(), cp1.to_json()],
        "checkpoint_hashes": [cp0.hash.hex(), cp1.hash.hex()],
        "inclusion_proofs": proofs,
        "manifest": {"manifest_json": manifest.decode(),
                     "manifest_sig": {"key_id": signer.key_id, "alg": "ed25519",
                                      "signature": base64.b64encode(
                                          signer.sign(manifest)).decode()}},
    }


def render() -> str:
    return json.dumps(vectors(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--write" in argv:
        PATH.write_text(text, encoding="utf-8")
        print(f"wrote {PATH}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
