"""Receipts and signed checkpoints of the central receipt log (docs/evidence.md §2–§4).

Every frame the central service accepts gets a *receipt*: its frame hash and the time the
central side first received it, appended to a hash-chained log. Periodically the service
signs a *checkpoint*: the Merkle root (RFC 9162) over the receipts appended since the
previous checkpoint, the log's chain head, and the hash of the previous checkpoint.
Checkpoints go to gateways and to third parties; once one is held outside, the central
operator can no longer drop, add or back-date a receipt before it without the published
checkpoint contradicting the log.

This module is the format contract, small and dependency-free beyond ``cryptography``, so
a gateway or an auditor can check checkpoints and inclusion proofs without the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from stationseal import merkle
from stationseal.signing import Signer, verify_with_key

RECEIPT_VERSION = 1
CHECKPOINT_HEADER = "stationseal-checkpoint/1"
ZERO32 = bytes(32)
_FIELDS = ("origin", "number", "first", "size", "root", "log_head", "previous", "time_ms",
           "key_id")


class CheckpointError(ValueError):
    """A checkpoint or proof that cannot be accepted; ``reason`` names why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def receipt_leaf(frame_hash: bytes, received_ms: int) -> bytes:
    """The Merkle leaf input of one receipt: ``0x01 ‖ frame_hash(32) ‖ received_ms(u64 BE)``."""
    if len(frame_hash) != 32:
        raise ValueError("frame hash must be 32 bytes")
    return struct.pack(">B32sQ", RECEIPT_VERSION, frame_hash, received_ms)


def receipt_leaf_hash(frame_hash: bytes, received_ms: int) -> bytes:
    return merkle.leaf_hash(receipt_leaf(frame_hash, received_ms))


def chain_next(head: bytes, leaf_hash: bytes) -> bytes:
    """Hash chain of the log: ``head_i = SHA-256(head_{i-1} ‖ leaf_hash_i)``, head_{-1} = 0³²."""
    return hashlib.sha256(head + leaf_hash).digest()


@dataclass(slots=True, frozen=True)
class Checkpoint:
    """One signed checkpoint. ``body`` holds the exact signed bytes."""

    origin: str
    number: int
    first: int
    size: int
    root: bytes
    log_head: bytes
    previous: bytes
    time_ms: int
    key_id: str
    signature: bytes
    body: bytes

    @property
    def hash(self) -> bytes:
        """What the next checkpoint names as ``previous``."""
        return hashlib.sha256(self.body).digest()

    @property
    def end(self) -> int:
        """Log index one past the last receipt covered."""
        return self.first + self.size

    def to_json(self) -> dict[str, Any]:
        return {"body": self.body.decode("ascii"),
                "signature": base64.b64encode(self.signature).decode("ascii")}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))


def checkpoint_body(*, origin: str, number: int, first: int, size: int, root: bytes,
                    log_head: bytes, previous: bytes, time_ms: int, key_id: str) -> bytes:
    if not origin or any(c in origin for c in "\n:") or not origin.isascii():
        raise ValueError(f"origin {origin!r}: ASCII without newline or ':'")
    vals = {"origin": origin, "number": str(number), "first": str(first), "size": str(size),
            "root": root.hex(), "log_head": log_head.hex(), "previous": previous.hex(),
            "time_ms": str(time_ms), "key_id": key_id}
    lines = [CHECKPOINT_HEADER] + [f"{k}: {vals[k]}" for k in _FIELDS]
    return ("\n".join(lines) + "\n").encode("ascii")


def sign_checkpoint(signer: Signer, *, origin: str, number: int, first: int, size: int,
                    root: bytes, log_head: bytes, previous: bytes, time_ms: int) -> Checkpoint:
    body = checkpoint_body(origin=origin, number=number, first=first, size=size, root=root,
                           log_head=log_head, previous=previous, time_ms=time_ms,
                           key_id=signer.key_id)
    return Checkpoint(origin, number, first, size, root, log_head, previous, time_ms,
                      signer.key_id, signer.sign(body), body)


def _hex32(v: str, name: str) -> bytes:
    try:
        b = bytes.fromhex(v)
    except ValueError:
        b = b""
    if len(b) != 32 or v != b.hex():
        raise CheckpointError("checkpoint_malformed", f"{name}: not 64 lowercase hex digits")
    return b


def _uint(v: str, name: str) -> int:
    if not v.isdigit() or (len(v) > 1 and v[0] == "0") or len(v) > 20:
        raise CheckpointError("checkpoint_malformed", f"{name}: not a decimal integer")
    return int(v)


def parse_checkpoint(doc: Any) -> Checkpoint:
    """From ``{"body": text, "signature": base64}`` (a dict or its JSON text). Checks the
    syntax only; :func:`verify_checkpoint` checks the signature."""
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError as e:
            raise CheckpointError("checkpoint_malformed", f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), str) \
            or not isinstance(doc.get("signature"), str):
        raise CheckpointError("checkpoint_malformed",
                              'expected {"body": text, "signature": base64}')
    text = doc["body"]
    if not text.isascii() or not text.endswith("\n"):
        raise CheckpointError("checkpoint_malformed", "body must be ASCII lines ending in \\n")
    lines = text[:-1].split("\n")
    if lines[0] != CHECKPOINT_HEADER:
        raise CheckpointError("checkpoint_malformed", f"first line is not {CHECKPOINT_HEADER}")
    if len(lines) != 1 + len(_FIELDS):
        raise CheckpointError("checkpoint_malformed", f"expected {len(_FIELDS)} field lines")
    vals: dict[str, str] = {}
    for want, ln in zip(_FIELDS, lines[1:], strict=True):
        k, sep, v = ln.partition(": ")
        if k != want or not sep:
            raise CheckpointError("checkpoint_malformed", f"expected field {want!r}, got {ln!r}")
        vals[k] = v
    try:
        sig = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("checkpoint_malformed", "signature is not base64") from None
    kid = vals["key_id"]
    if len(kid) != 16 or any(c not in "0123456789abcdef" for c in kid):
        raise CheckpointError("checkpoint_malformed", "key_id: not 16 lowercase hex digits")
    cp = Checkpoint(
        origin=vals["origin"], number=_uint(vals["number"], "number"),
        first=_uint(vals["first"], "first"), size=_uint(vals["size"], "size"),
        root=_hex32(vals["root"], "root"), log_head=_hex32(vals["log_head"], "log_head"),
        previous=_hex32(vals["previous"], "previous"),
        time_ms=_uint(vals["time_ms"], "time_ms"), key_id=kid, signature=sig,
        body=text.encode("ascii"))
    if checkpoint_body(origin=cp.origin, number=cp.number, first=cp.first, size=cp.size,
                       root=cp.root, log_head=cp.log_head, previous=cp.previous,
                       time_ms=cp.time_ms, key_id=cp.key_id) != cp.body:
        raise CheckpointError("checkpoint_malformed", "body is not in canonical form")
    return cp


def verify_checkpoint(cp: Checkpoint, public_key: Any, alg: str = "ed25519") -> None:
    """Raises :class:`CheckpointError` ``checkpoint_signature`` if the signature fails."""
    if not verify_with_key(alg, public_key, cp.body, cp.signature):
        raise CheckpointError("checkpoint_signature",
                              f"checkpoint {cp.number}: signature does not verify "
                              f"under key {cp.key_id}")


@dataclass(slots=True, frozen=True)
class InclusionProof:
    """That the receipt ``(frame_hash, received_ms)`` at log index ``index`` is under
    checkpoint ``checkpoint``'s root."""

    checkpoint: int
    index: int
    frame_hash: bytes
    received_ms: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "index": self.index,
                "frame_hash": self.frame_hash.hex(), "received_ms": self.received_ms,
                "path": [p.hex() for p in self.path]}

    @classmethod
    def from_json(cls, d: Any) -> InclusionProof:
        try:
            path = tuple(bytes.fromhex(p) for p in d["path"])
            fh = bytes.fromhex(d["frame_hash"])
            out = cls(int(d["checkpoint"]), int(d["index"]), fh, int(d["received_ms"]), path)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError("proof_malformed", f"{e}") from None
        if len(fh) != 32 or any(len(p) != 32 for p in path):
            raise CheckpointError("proof_malformed", "hashes must be 32 bytes")
        return out


def check_inclusion(proof: InclusionProof, cp: Checkpoint) -> None:
    """Raises :class:`CheckpointError` ``proof_mismatch`` if the proof does not lead to
    the checkpoint's root (or names another checkpoint / an index outside it)."""
    if proof.checkpoint != cp.number:
        raise CheckpointError("proof_mismatch",
                              f"proof names checkpoint {proof.checkpoint}, not {cp.number}")
    if not cp.first <= proof.index < cp.end:
        raise CheckpointError("proof_mismatch",
                              f"log index {proof.index} outside checkpoint {cp.number} "
                              f"[{cp.first}, {cp.end})")
    leaf = receipt_leaf_hash(proof.frame_hash, proof.received_ms)
    try:
        root = merkle.root_from_inclusion(proof.index - cp.first, cp.size, leaf, proof.path)
    except merkle.ProofError as e:
        raise CheckpointError("proof_mismatch", str(e)) from None
    if root != cp.root:
        raise CheckpointError("proof_mismatch",
                              f"receipt of frame {proof.frame_hash.hex()[:16]} at index "
                              f"{proof.index} does not lead to checkpoint {cp.number}'s root")
