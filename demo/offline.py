"""What a third party can reproduce from the evidence alone: frames.jsonl, the signed
registry.json and the registry authority's public key.

After the run the demo verifies every recorded frame, turns the verified frames into the
offline record format (docs/records.md) with the lane controller's test context applied
(ingest/testcontext.py), and runs the detectors over them with the public command,
``stationseal detect``. The alerts it writes (``alerts-offline.jsonl``) owe nothing to the
live service: anyone holding the signed frames gets the same ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ingest.convert import frame_records
from ingest.detectors.io import write_records
from ingest.testcontext import LaneContexts
from stationseal.export import gateway_of_topic, read_frames
from stationseal.frame import Frame
from stationseal.keys import KeyRegistry
from stationseal.records import Sample, SiteEvent
from stationseal.verify import Rejected, verify_payload


def records_from_frames(frames: Path, registry: Path, authority: Path
                        ) -> tuple[list[Sample | SiteEvent], int]:
    """Records of every verified frame (per gateway in sequence order), with lane context;
    and the number of frames that did not verify (left out)."""
    reg = KeyRegistry.load(registry, authority)
    verified: list[Frame] = []
    rejected = 0
    for ff in read_frames(frames):
        if ff.payload is None:
            rejected += 1
            continue
        try:
            verified.append(verify_payload(ff.payload, reg,
                                           gateway_of_topic(ff.topic) if ff.topic else None))
        except Rejected:
            rejected += 1
    verified.sort(key=lambda f: (f.gateway_id, f.seq))
    lanes = LaneContexts()
    out: list[Sample | SiteEvent] = []
    for f in verified:
        out += lanes.annotate(f, frame_records(f))
    out += lanes.flush()
    return out, rejected


def export_receipts(out_dir: Path, central: Path) -> int:
    """``receipts.jsonl``: when the central side first received each frame (the receipt
    log), so a third party can judge key validity and time on the arrival, not only on
    the gateway's clock (`stationseal verify --receipts`). Returns the exit status."""
    proc = subprocess.run(
        [sys.executable, "-m", "stationseal.cli", "evidence", "receipts", "--config",
         str(central), "--out", str(out_dir / "receipts.jsonl")],
        capture_output=True, text=True, timeout=120)
    return proc.returncode


def reproduce(out_dir: Path, sites: Path, params: Path) -> dict[str, Any]:
    """Write ``records.jsonl`` and ``alerts-offline.jsonl`` in ``out_dir``."""
    records, rejected = records_from_frames(out_dir / "frames.jsonl", out_dir / "registry.json",
                                            out_dir / "registry-authority.pub.pem")
    rec_path = out_dir / "records.jsonl"
    alerts_path = out_dir / "alerts-offline.jsonl"
    n = write_records(rec_path, records)
    proc = subprocess.run(
        [sys.executable, "-m", "stationseal.cli", "detect", "--in", str(rec_path),
         "--sites", str(sites), "--params", str(params), "--out", str(alerts_path)],
        capture_output=True, text=True, timeout=300)
    return {"records": n, "frames_not_verified": rejected, "exit_status": proc.returncode,
            "command": f"stationseal detect --in {rec_path.name} --sites {sites.name} "
                       f"--params {params.name} --out {alerts_path.name}",
            "stderr": proc.stderr[-2000:] if proc.returncode else ""}
