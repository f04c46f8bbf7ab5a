"""`stationseal evidence key|checkpoints|receipts|log-check`: the central key and the
receipt log's exports for third parties."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stationseal.errors import UsageError


def _cfg(path: str) -> Any:
    from ingest.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _log(args: argparse.Namespace, signer: bool = False) -> Any:
    from ingest.config import ConfigError
    from ingest.custody.log import ReceiptLog
    from ingest.custody.service import load_central_signer
    from ingest.store import Store

    cfg = _cfg(args.config)
    if not cfg.db_path.exists():
        raise UsageError(f"{cfg.db_path}: no ingest state yet (state_dir of {args.config})")
    try:
        sg = load_central_signer(cfg) if signer else None
    except ConfigError as e:
        raise UsageError(str(e)) from None
    c = cfg.custody
    return ReceiptLog(Store(cfg.db_path)._db(), sg, origin=c.origin,
                      interval_s=c.checkpoint_interval_s,
                      max_receipts=c.checkpoint_max_receipts)


def _out(path: str) -> Any:
    return sys.stdout if path == "-" else open(path, "w", encoding="utf-8")


def cmd_key_generate(args: argparse.Namespace) -> int:
    """Write ``central.key`` (0600) and ``central.pub.pem`` in DIR."""
    from stationseal.keys import RegistryError, generate_keypair

    try:
        kf = generate_keypair(args.name, args.out, "ed25519", overwrite=False)
    except RegistryError as e:
        raise UsageError(str(e)) from None
    print(json.dumps({"key_id": kf.key_id, "private_key": str(kf.private_key),
                      "public_key": str(kf.public_key)}))
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    rl = _log(args, signer=args.sign_now)
    if args.sign_now:
        rl.maybe_checkpoint(force=True)
    out = _out(args.out)
    n = 0
    try:
        for cp in rl.checkpoints(args.since):
            out.write(cp.dumps() + "\n")
            n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} checkpoint(s)", file=sys.stderr)
    return 0


def cmd_receipts(args: argparse.Namespace) -> int:
    rl = _log(args)
    out = _out(args.out)
    n = 0
    try:
        for r in rl.rows(args.first):
            d: dict[str, Any] = {"frame_hash": r.frame_hash.hex(), "received_ms": r.received_ms}
            if args.full:
                d.update({"index": r.index, "gateway_id": r.gateway_id, "seq": r.seq})
            out.write(json.dumps(d, separators=(",", ":")) + "\n")
            n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} receipt(s)", file=sys.stderr)
    return 0


def cmd_log_check(args: argparse.Namespace) -> int:
    from ingest.custody.log import check_log
    from stationseal.signing import load_public_key

    rl = _log(args)
    pub = load_public_key(Path(args.public_key).read_bytes()) if args.public_key else None
    res = check_log(rl, pub)
    print(json.dumps({"receipts": res.receipts, "checkpoints": res.checkpoints,
                      "problems": res.problems}, indent=2))
    return 0 if not res.problems else 1


def register_custody(sub: Any) -> None:
    k = sub.add_parser("key", help="the central service's signing key")
    ks = k.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    sp = ks.add_parser("generate", help="write NAME.key (0600) and NAME.pub.pem")
    sp.add_argument("--out", required=True, help="directory (e.g. /etc/stationseal/central)")
    sp.add_argument("--name", default="central", help="file name stem (default: central)")
    sp.set_defaults(func=cmd_key_generate)

    sp = sub.add_parser("checkpoints", help="export signed checkpoints (JSON Lines)")
    sp.add_argument("--config", required=True, help="CENTRAL.yaml")
    sp.add_argument("--since", type=int, default=0, help="from this checkpoint number")
    sp.add_argument("--sign-now", action="store_true",
                    help="first sign a checkpoint over receipts not yet covered")
    sp.add_argument("--out", default="-", help="file (default: stdout)")
    sp.set_defaults(func=cmd_checkpoints)

    sp = sub.add_parser("receipts", help="export receipts: {frame_hash, received_ms} lines")
    sp.add_argument("--config", required=True, help="CENTRAL.yaml")
    sp.add_argument("--first", type=int, default=0, help="from this log index")
    sp.add_argument("--full", action="store_true", help="also index, gateway_id and seq")
    sp.add_argument("--out", default="-", help="file (default: stdout)")
    sp.set_defaults(func=cmd_receipts)

    sp = sub.add_parser("log-check", help="recompute the receipt log's chain and roots")
    sp.add_argument("--config", required=True, help="CENTRAL.yaml")
    sp.add_argument("--public-key", help="central public key PEM: also check signatures")
    sp.set_defaults(func=cmd_log_check)
