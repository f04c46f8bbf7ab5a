"""Signed frames -> the offline records the detectors judge, the same way everywhere.

The ingest service, the demo's offline reproduction, the package builder and the package
verifier derive records from verified frames by this one function: per gateway in
sequence order, ``frame_records`` then the lane controller's test context
(ingest/testcontext.py). Only then is "the packaged records are what the frames say"
a check that can be made byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable

from ingest.convert import frame_records
from ingest.testcontext import LaneContexts
from stationseal.frame import Frame
from stationseal.records import Sample, SiteEvent

Record = Sample | SiteEvent


def records_from_frames(frames: Iterable[Frame]) -> list[Record]:
    ordered = sorted(frames, key=lambda f: (f.gateway_id, f.seq))
    lanes = LaneContexts()
    out: list[Record] = []
    for f in ordered:
        out += lanes.annotate(f, frame_records(f))
    out += lanes.flush()
    return out
