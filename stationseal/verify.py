"""Verification of one payload: envelope, header, key, signature, then the body.

The order matters for evidence and for safety: the signature is checked over the exact
signed bytes before the body is decoded, so nothing an attacker controls is parsed
unauthenticated beyond the hand-read envelope and the five header items needed to find
the key (docs/wire-format.md §6 gives the order; the first failing step is the verdict).
"""

from __future__ import annotations

from stationseal import frame as fr
from stationseal.registry import KeyLookupError, KeyRegistry
from stationseal.signing import verify_with_key

#: Every verdict on a single payload, in the order the checks run.
REASONS = (
    "oversize",
    "malformed",
    "schema",
    "unknown_key",
    "gateway_mismatch",
    "bad_signature",
    "revoked_key",
    "key_not_yet_valid",
    "key_expired",
    "site_mismatch",
    "instrument_mismatch",
    "topic_mismatch",
)


class Rejected(Exception):
    """A payload that must go to quarantine; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str, frame: fr.Frame | None = None,
                 header: fr.Header | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.frame = frame
        self.header = header


def verify_payload(
    payload: bytes,
    registry: KeyRegistry,
    topic_gateway: str | None = None,
    materialize: bool = True,
    received_ms: int | None = None,
) -> fr.Frame:
    """Verify one payload; ``materialize=False`` leaves readings in ``Frame.rows``.

    ``received_ms``: when the central side first received this frame (the receipt log);
    key validity is then judged on that time as well as on the frame's own ``created_ms``.
    """
    hdr: fr.Header | None = None
    try:
        body, sig = fr.split_payload(payload)
        hdr = fr.peek_header(body)
    except fr.FrameError as e:
        raise Rejected(e.reason, e.detail, None, hdr) from None
    try:
        entry = registry.key_for(hdr.gateway_id, hdr.key_id)
    except KeyLookupError as e:
        raise Rejected(e.reason, e.detail, None, hdr) from None
    if entry.alg != hdr.alg or entry.public is None or not verify_with_key(
            hdr.alg, entry.public, body, sig):
        raise Rejected("bad_signature", f"signature does not verify under key {hdr.key_id}",
                       None, hdr)
    try:
        f = fr.decode_body(body, sig, payload, materialize, hdr)
    except fr.FrameError as e:
        raise Rejected(e.reason, e.detail, None, hdr) from None
    try:
        registry.check_validity(entry, f.created_ms, received_ms)
        registry.check_binding(entry, f)
    except KeyLookupError as e:
        raise Rejected(e.reason, e.detail, f, hdr) from None
    if topic_gateway is not None and topic_gateway != f.gateway_id:
        raise Rejected(
            "topic_mismatch",
            f"published on the topic of {topic_gateway} but signed by {f.gateway_id}",
            f,
            hdr,
        )
    return f
