"""Opening the receipt log for a running ingest (signing key from the config)."""

from __future__ import annotations

import logging

from ingest.config import ConfigError, IngestConfig
from ingest.custody.log import ReceiptLog
from ingest.store import Store
from stationseal.signing import Signer, SigningError, load_signer

log = logging.getLogger("stationseal.ingest.custody")


def load_central_signer(cfg: IngestConfig) -> Signer | None:
    path = cfg.custody.key_file
    if path is None:
        return None
    try:
        signer = load_signer(path)
    except SigningError as e:
        raise ConfigError(f"custody.key_file: {e}") from None
    if signer.alg != "ed25519":
        raise ConfigError(f"custody.key_file: {path}: the central key must be Ed25519")
    return signer


def open_receipt_log(cfg: IngestConfig, store: Store) -> ReceiptLog:
    signer = load_central_signer(cfg)
    if signer is None:
        log.warning("custody.key_file is not set: receipts are logged but no checkpoint is "
                    "signed (see deploy/ingest/README.md, central signing key)")
    c = cfg.custody
    return ReceiptLog(store._db, signer, origin=c.origin, interval_s=c.checkpoint_interval_s,
                      max_receipts=c.checkpoint_max_receipts)
