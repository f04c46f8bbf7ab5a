"""A small central side with a real receipt log, for evidence package tests: one stack
CEMS gateway whose SO2 reads one value for three minutes (an E4 finding), frames received
through the ingest pipeline (receipts committed with each batch, checkpoints signed), the
frames archived as received, and the alert the detectors raise on them."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from evidence.records import records_from_frames
from evidence.reproduce import run_rules
from ingest.config import parse_config
from ingest.custody.log import ReceiptLog
from ingest.detectors.sites import load_params, load_sites
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from stationseal.export import frames_topic, line_for
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.records import Reading
from stationseal.signing import load_signer

T0 = 1_700_000_000.0
GW = "gw-stack-1"
SITE = "S1"
FRAME_S = 5
FLAT = (60, 240)  # seconds of the run in which SO2 is frozen


@dataclass
class Central:
    root: Path
    config: Path
    frames: Path
    alerts: Path
    alert_id: str
    frames_list: list[Frame]

    def build_args(self) -> list[str]:
        return ["--config", str(self.config), "--alerts", str(self.alerts),
                "--frames", str(self.frames)]


def so2(i: int, flat: tuple[int, int] = FLAT) -> float:
    if flat[0] <= i < flat[1]:
        return 12.3
    return round(20 + 5 * math.sin(i / 7) + (i % 3) * 0.37, 2)


def make_central(root: Path, seconds: int = 600, readings_per_s: int = 1,
                 flat: tuple[int, int] = FLAT) -> Central:
    root.mkdir(parents=True, exist_ok=True)
    reg = KeyRegistry()
    kf = generate_keypair(GW, root / "keys")
    reg.add(GW, kf.public_key.read_bytes(), valid_from=T0 - 86400, sites=[SITE])
    reg.save(root / "registry.json")
    signer = load_signer(kf.private_key)
    ck = generate_keypair("central", root / "keys")
    (root / "SITES.yaml").write_text(yaml.safe_dump({"sites": {
        SITE: {"kind": "stack_cems", "location": {"lat": 31.2, "lon": 121.5},
               "limits": {"so2_mgm3": 35.0}}}}))
    (root / "PARAMS.yaml").write_text(yaml.safe_dump({"E4": {"window_h": 0.0125}}))
    cfg_doc = {"registry": str(root / "registry.json"),
               "registry_authority": str(root / "registry.json.authority.pub.pem"),
               "state_dir": str(root / "state"),
               "archive_dir": str(root / "archive"),
               "detection": {"enabled": False, "sites": str(root / "SITES.yaml"),
                             "params": str(root / "PARAMS.yaml")},
               "custody": {"key_file": str(ck.private_key), "origin": "test-central",
                           "checkpoint_interval_s": 60.0}}
    (root / "central.yaml").write_text(yaml.safe_dump(cfg_doc))
    cfg = parse_config(cfg_doc)
    boot = os.urandom(16)
    prev = ZERO_HASH
    frames: list[Frame] = []
    per = readings_per_s
    for seq, s0 in enumerate(range(0, seconds, FRAME_S), start=1):
        rs = []
        created = T0 + s0 + FRAME_S
        for i in range(s0, s0 + FRAME_S):
            for k in range(per):
                t = T0 + i + k / per
                rs.append(Reading("stack1.cems", "so2_mgm3", so2(i, flat), "mg/m3", t, "N",
                                  None))
                rs.append(Reading("stack1.cems", "nox_mgm3",
                                  round(30 + 3 * math.cos((i + k / per) / 5), 2), "mg/m3",
                                  t, "N", None))
        f = seal(signer, gateway_id=GW, site=SITE, boot_id=boot, seq=seq, prev_hash=prev,
                 created=created, clock_sync="synced", readings=rs, events=[])
        prev = f.frame_hash
        frames.append(f)
    store = Store(cfg.db_path)
    pipe = Pipeline(cfg, store, Metrics())
    rl = ReceiptLog(store._db, load_signer(ck.private_key), origin="test-central",
                    interval_s=60.0)
    lines = []
    for n, f in enumerate(frames):
        received = f.created + 0.5
        pipe.handle(frames_topic(GW), f.payload, received)
        lines.append(line_for(frames_topic(GW), f.payload))
        if n % 10 == 9:
            b = pipe.seal()
            store.commit_batch(b.chain, b.outbox, [], b.alert_rows, b.receipts)
            rl.maybe_checkpoint(now=received, force=True)
    b = pipe.seal()
    store.commit_batch(b.chain, b.outbox, [], b.alert_rows, b.receipts)
    rl.maybe_checkpoint(force=True)
    (root / "frames.jsonl").write_text("\n".join(lines) + "\n")
    # The ingest's archive holds the same lines (frames as received).
    (root / "archive").mkdir(exist_ok=True)
    (root / "archive" / "frames-2023-11-14.jsonl").write_text("\n".join(lines) + "\n")
    recs = records_from_frames(frames)
    alerts = run_rules(recs, load_sites(root / "SITES.yaml"), load_params(root / "PARAMS.yaml"))
    with open(root / "alerts.jsonl", "w") as fh:
        for a in alerts:
            fh.write(json.dumps(a) + "\n")
    flat = next(a for a in alerts if a["id"].endswith("|flat#1"))
    store.close()
    return Central(root, root / "central.yaml", root / "frames.jsonl", root / "alerts.jsonl",
                   flat["id"], frames)
