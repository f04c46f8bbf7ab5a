"""A sealed batch's chain snapshot must describe exactly the frames of the batches sealed
so far. It is serialised later, when the batch commits, while the pipeline goes on: a
snapshot sharing the tracker's lists recorded frames of later, uncommitted batches as
received, so after a kill -9 their redelivery was taken for a replay and their readings
were never stored (found by tests/test_ingest_faults.py under load)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from stationseal.chain import ChainTracker
from stationseal.frame import ZERO_HASH, seal
from stationseal.keys import generate_keypair
from stationseal.signing import load_signer


def test_snapshot_does_not_follow_the_tracker(tmp_path: Path) -> None:
    kf = generate_keypair("gw-snap", tmp_path)
    signer = load_signer(kf.private_key)
    t = ChainTracker("gw-snap")
    prev, boot = ZERO_HASH, os.urandom(16)
    frames = []
    for seq in range(1, 6):
        f = seal(signer, gateway_id="gw-snap", site="s", boot_id=boot, seq=seq,
                 prev_hash=prev, created=1_700_000_000.0 + seq, clock_sync="synced",
                 readings=[], events=[])
        prev = f.frame_hash
        frames.append(f)
    for f in frames[:3]:
        t.observe(f, now=0.0)
    snap = t.to_json()
    before = json.dumps(snap, sort_keys=True)
    for f in frames[3:]:
        t.observe(f, now=0.0)  # the pipeline goes on while the batch is being written
    assert json.dumps(snap, sort_keys=True) == before
    assert snap["received"] == [[1, 3]]
    restored = ChainTracker.from_json(json.loads(before))
    is_new, issues = restored.observe(frames[3], now=0.0)
    assert is_new and not issues  # redelivered after a crash: new, not a replay
