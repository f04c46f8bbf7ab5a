"""Evidence packages and the chain of custody (docs/evidence.md).

  stationseal evidence build ALERT_ID --out DIR|FILE.zip [--config CENTRAL.yaml]
  stationseal evidence verify PACKAGE [--central-key central.pub.pem]
  stationseal evidence key generate --out DIR             the central signing key
  stationseal evidence checkpoints --config CENTRAL.yaml  signed checkpoints, for third parties
  stationseal evidence receipts --config CENTRAL.yaml     {frame_hash, received_ms} lines
  stationseal evidence log-check --config CENTRAL.yaml    recompute the log's chain and roots
"""

from __future__ import annotations

import argparse

from evidence.build_cli import register_build
from evidence.custody_cli import register_custody


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    register_build(sub)
    register_custody(sub)
