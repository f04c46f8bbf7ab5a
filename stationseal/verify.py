"""Verification of one payload: envelope, signature, key validity, then structure.

The order matters for evidence: the signature is checked over the exact signed bytes
before the body is interpreted, so nothing an attacker controls is parsed unauthenticated
beyond the envelope and the handful of header fields needed to find the key.
"""

from __future__ import annotations

from stationseal import frame as fr
from stationseal.keys import KeyLookupError, KeyRegistry
from stationseal.signing import verify_with_key

REASONS = (
    "malformed",
    "schema",
    "bad_signature",
    "unknown_key",
    "revoked_key",
    "key_not_yet_valid",
    "key_expired",
    "gateway_mismatch",
    "topic_mismatch",
)


class Rejected(Exception):
    """A payload that must go to quarantine; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str, frame: fr.Frame | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.frame = frame


def verify_payload(
    payload: bytes,
    registry: KeyRegistry,
    topic_gateway: str | None = None,
    materialize: bool = True,
) -> fr.Frame:
    """Verify one payload; ``materialize=False`` leaves readings in ``Frame.rows``."""
    try:
        f = fr.decode(payload, materialize)
    except fr.FrameError as e:
        raise Rejected(e.reason, e.detail) from None
    try:
        _, pub = registry.lookup(f.gateway_id, f.key_id, f.created)
    except KeyLookupError as e:
        raise Rejected(e.reason, e.detail, f) from None
    if not verify_with_key(f.alg, pub, f.body, f.signature):
        raise Rejected("bad_signature", f"signature does not verify under key {f.key_id}", f)
    if topic_gateway is not None and topic_gateway != f.gateway_id:
        raise Rejected(
            "topic_mismatch",
            f"published on the topic of {topic_gateway} but signed by {f.gateway_id}",
            f,
        )
    return f
