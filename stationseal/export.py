"""Frames files: JSON Lines, one frame per line exactly as sent.

Used for air-gapped gateways (``--output file:PATH``), the demo's ``frames.jsonl``, the
offline verifier and ``stationseal ingest import``. A line is
``{"topic": "stationseal/v1/<gateway>/frames", "payload": "<base64 of the payload>"}``;
other keys are ignored, so a receiver may add its own metadata (e.g. ``received``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stationseal.frame import NAME_RE

TOPIC_PREFIX = "stationseal/v1/"


def frames_topic(gateway_id: str) -> str:
    return f"{TOPIC_PREFIX}{gateway_id}/frames"


def gateway_of_topic(topic: str) -> str | None:
    """``stationseal/v1/<gw>/frames`` -> ``<gw>``; anything else -> None."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    parts = topic[len(TOPIC_PREFIX):].split("/")
    if len(parts) != 2 or parts[1] != "frames" or NAME_RE.match(parts[0]) is None:
        return None
    return parts[0]


def line_for(topic: str, payload: bytes) -> str:
    return json.dumps(
        {"topic": topic, "payload": base64.b64encode(payload).decode("ascii")},
        separators=(",", ":"),
    )


#: Verdicts on a line of a frames file that does not hold a frame (docs/wire-format.md §7).
LINE_REASONS = ("bad_json", "bad_line", "bad_base64")
#: A line longer than this cannot hold a payload of at most frame.MAX_PAYLOAD bytes.
MAX_LINE = 4 * 1024 * 1024 * 4 // 3 + 4096


@dataclass(slots=True)
class FileFrame:
    line: int
    topic: str | None
    payload: bytes | None
    error: str | None = None
    #: One of :data:`LINE_REASONS` (or ``oversize``) when ``payload`` is None.
    reason: str | None = None


def read_frames(path: str | Path | IO[str]) -> Iterator[FileFrame]:
    """Yield every line; a line that cannot be read is yielded with ``error`` set, never
    skipped, so that a verifier can name it."""
    if isinstance(path, str | Path):
        with open(path, encoding="utf-8", errors="replace") as fh:
            yield from read_frames(fh)
        return
    for n, raw in enumerate(path, start=1):
        text = raw.strip()
        if not text:
            continue
        if len(text) > MAX_LINE:
            yield FileFrame(n, None, None, f"line of {len(text)} characters cannot hold a "
                            "payload within the size limit", "oversize")
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) \
                else "nested too deeply"
            yield FileFrame(n, None, None, f"not JSON ({msg})", "bad_json")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("payload"), str):
            yield FileFrame(n, None, None, "not an object with a \"payload\" text member",
                            "bad_line")
            continue
        topic = obj.get("topic")
        if topic is not None and not isinstance(topic, str):
            yield FileFrame(n, None, None, "\"topic\" is not a text", "bad_line")
            continue
        try:
            payload = base64.b64decode(obj["payload"], validate=True)
        except (binascii.Error, ValueError) as e:
            yield FileFrame(n, topic, None, f"payload is not valid base64 ({e})", "bad_base64")
            continue
        yield FileFrame(n, topic, payload)
