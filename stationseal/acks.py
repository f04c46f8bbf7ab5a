"""End-to-end acknowledgements from the ingest to a gateway (docs/acks.md).

The broker's PUBACK says only that the broker took a frame; a broker crash inside its
save interval, a lost persistent session or a full queue can still lose it. So the
gateway keeps every frame until the ingest itself says, after the InfluxDB write and the
commit of its chain state, "I hold frame ``seq`` whose hash is ``h``". That message is
JSON on ``<prefix>/<gateway_id>/acks`` (QoS 1; the broker ACL lets only ingest accounts
write it and only that gateway read it):

    {"v": 1, "gateway_id": "gw-lane1", "frames": [[17, "9f2c...64 hex"], ...],
     "time": 1767225600.123, "by": "ingest-0"}

``frames`` names at most :data:`MAX_FRAMES` frames. A reader ignores keys it does not
know (the format grows: signed checkpoints may be attached later), and deletes a frame
only if both its sequence number and its hash match what it stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

SCHEMA_VERSION = 1
#: Frames one acknowledgement message may name.
MAX_FRAMES = 1000
#: Bounds a reader applies (a larger message is refused as a whole).
MAX_FRAMES_READ = 10_000


def acks_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix.rstrip('/')}/{gateway_id}/acks"


def build_acks(gateway_id: str, frames: Iterable[tuple[int, bytes]], *, when: float,
               by: str, extra: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The acknowledgement messages naming ``frames`` ((seq, hash) pairs), at most
    :data:`MAX_FRAMES` per message."""
    items = [[seq, h.hex()] for seq, h in frames]
    for i in range(0, len(items), MAX_FRAMES):
        doc: dict[str, Any] = {"v": SCHEMA_VERSION, "gateway_id": gateway_id,
                               "frames": items[i:i + MAX_FRAMES],
                               "time": round(when, 3), "by": by}
        if extra:
            doc.update(extra)
        yield json.dumps(doc, separators=(",", ":")).encode()


def parse_acks(payload: bytes, gateway_id: str) -> list[tuple[int, bytes]]:
    """The (seq, frame hash) pairs of one acknowledgement message, or ValueError naming
    what is wrong. Unknown keys are ignored."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("v") != SCHEMA_VERSION:
        raise ValueError(f"not an object with v = {SCHEMA_VERSION}")
    if doc.get("gateway_id") != gateway_id:
        raise ValueError(f"for gateway {doc.get('gateway_id')!r}, not {gateway_id!r}")
    frames = doc.get("frames")
    if not isinstance(frames, list) or len(frames) > MAX_FRAMES_READ:
        raise ValueError(f"frames: not a list of at most {MAX_FRAMES_READ}")
    out: list[tuple[int, bytes]] = []
    for i, item in enumerate(frames):
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int
                or not 1 <= item[0] < 2**64 or not isinstance(item[1], str)
                or len(item[1]) != 64):
            raise ValueError(f"frames[{i}]: not [seq, 64 hex digits]")
        try:
            out.append((item[0], bytes.fromhex(item[1])))
        except ValueError:
            raise ValueError(f"frames[{i}]: hash is not hex") from None
    return out
