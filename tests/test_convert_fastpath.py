"""The common-case line builder must write exactly what the general path writes."""

from __future__ import annotations

import re

from ingest.convert import LineBuilder
from stationseal import vectors
from stationseal.frame import decode, seal
from stationseal.records import Reading
from stationseal.signing import Ed25519Signer


def test_fast_and_general_paths_write_the_same_lines() -> None:
    signer = Ed25519Signer(vectors.ed_key())
    t0 = vectors.T0
    rs = [Reading(f"a{i % 3}", f"s{i % 5}", 0.5 * i + 0.125, "u", t0 + i / 10, "NM"[i % 2], None)
          for i in range(40)]

    def lines(readings: list[Reading]) -> list[str]:
        f = seal(signer, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=7,
                 prev_hash=bytes([7]) * 32, created=t0 + 5, clock_sync="synced",
                 readings=readings, events=[])
        return LineBuilder().frame_lines(decode(f.payload, materialize=False))

    def same(ls: list[str]) -> list[str]:  # the frames differ, so their hashes do
        return [re.sub(r'frame="[0-9a-f]+"', 'frame="H"', x) for x in ls]

    fast = lines(rs)
    # A NaN sends the whole frame through the general loop; every other line must match.
    general = lines([*rs, Reading("a0", "s9", float("nan"), "u", t0, "N", None)])
    assert same(fast[:40]) == same(general[:40])
    assert "text=" in general[40] and len(fast) == 41  # 40 readings + the frame line
