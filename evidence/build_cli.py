"""`stationseal evidence build` and `stationseal evidence verify`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stationseal.errors import UsageError


def sources(args: argparse.Namespace) -> Any:
    """From CENTRAL.yaml (the ingest's stored alerts, archive, receipt log), each part
    replaceable by a flag (offline: --alerts and --frames files)."""
    from ingest.config import ConfigError, load_config

    cfg = None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            raise UsageError(str(e)) from None
    return sources_for(cfg, alerts=args.alerts, frames=args.frames, registry=args.registry,
                       sites=args.sites, params=args.params, key=args.key,
                       central_public_key=args.central_public_key,
                       registry_authority=getattr(args, "registry_authority", None))


def sources_for(cfg: Any, *, alerts: str | None = None, frames: list[str] | None = None,
                registry: str | None = None, sites: str | None = None,
                params: str | None = None, key: str | None = None,
                central_public_key: str | None = None,
                registry_authority: str | None = None) -> Any:
    from evidence.package import BuildError, Sources, load_alerts_file
    from ingest.custody.log import ReceiptLog
    from ingest.store import Store
    from stationseal.signing import SigningError, load_signer

    store = Store(cfg.db_path) if cfg is not None and cfg.db_path.exists() else None
    # Alerts: a file, or the ingest's alert book (current state of each alert).
    if alerts:
        try:
            alert_docs = load_alerts_file(Path(alerts))
        except (OSError, BuildError) as e:
            raise UsageError(f"--alerts: {e}") from None
    elif store is not None:
        alert_docs = {}
        for k, body in store._db().execute("SELECT key, alert FROM alerts"):
            alert_docs[str(k)] = json.loads(body)
    else:
        raise UsageError("give --alerts ALERTS.jsonl or --config CENTRAL.yaml")
    # Frames: files, or the ingest's archive.
    if frames:
        frame_paths = [Path(p) for p in frames]
    elif cfg is not None and cfg.archive_dir is not None:
        frame_paths = sorted(Path(cfg.archive_dir).glob("frames-*.jsonl"))
    else:
        raise UsageError("give --frames FRAMES.jsonl or a CENTRAL.yaml with archive_dir")
    for p in frame_paths:
        if not p.is_file():
            raise UsageError(f"{p}: frames file not found")

    def pick(flag: str | None, from_cfg: Any, what: str) -> Path:
        if flag:
            return Path(flag)
        if from_cfg is None:
            raise UsageError(f"give --{what} or --config CENTRAL.yaml that names it")
        return Path(from_cfg)

    reg_path = pick(registry, cfg.registry if cfg else None, "registry")
    authority = registry_authority or (cfg.registry_pin() if cfg else None)
    if not authority:
        raise UsageError("give --registry-authority or --config CENTRAL.yaml that names it")
    sites_path = pick(sites, cfg.detection.sites if cfg else None, "sites")
    params_path = Path(params) if params else (cfg.detection.params if cfg else None)
    key_path = pick(key, cfg.custody.key_file if cfg else None, "key")
    try:
        signer = load_signer(key_path)
    except SigningError as e:
        raise UsageError(f"central key: {e}") from None
    pub = Path(central_public_key) if central_public_key else \
        Path(str(key_path).removesuffix(".key") + ".pub.pem")
    if not pub.is_file():
        raise UsageError(f"{pub}: central public key not found (--central-public-key)")
    log = None
    if store is not None:
        c = cfg.custody
        log = ReceiptLog(store._db, signer, origin=c.origin,
                         interval_s=c.checkpoint_interval_s,
                         max_receipts=c.checkpoint_max_receipts)
    origin = cfg.custody.origin if cfg is not None else "stationseal-central"
    return Sources(alert_docs, frame_paths, reg_path, sites_path, params_path, signer,
                   pub.read_bytes(), log, origin, registry_authority=authority)


def cmd_build(args: argparse.Namespace) -> int:
    from evidence.package import BuildError, build

    src = sources(args)
    ids = list(src.alerts) if args.all else args.alert_id
    if not ids:
        raise UsageError("name ALERT_ID(s) or --all")
    out = Path(args.out)
    failed = 0
    for aid in ids:
        dest = out
        if len(ids) > 1 or args.all:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in aid)
            dest = out / (safe + (".zip" if args.zip else ""))
        try:
            res = build(aid, src, dest, plots=not args.no_plots, report=not args.no_report,
                        pdf=not args.no_pdf)
        except BuildError as e:
            print(f"stationseal evidence build: {aid}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps({"alert_id": aid, "package": str(res.path), "frames": res.frames,
                          "records": res.records, "context_s": res.context_s,
                          "seconds": round(res.seconds, 2)}, ensure_ascii=False))
    return 1 if failed else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from evidence.verify import verify_package

    pem = Path(args.central_key).read_bytes() if args.central_key else None
    rep = verify_package(args.package, pem, args.registry_authority)
    if args.json:
        print(json.dumps(rep.to_json(), indent=2, ensure_ascii=False))
    else:
        print(f"{args.package}: {'ACCEPTED' if rep.ok else 'REJECTED'}")
        print(f"  alert {rep.alert_id} ({rep.rule}); {rep.frames} frames verified, "
              f"{rep.receipts} receipts proven against {rep.checkpoints} checkpoint(s) of "
              f"central key {rep.central_key_id}")
        print(f"  finding {'reproduced' if rep.reproduced else 'NOT reproduced'} from "
              f"{rep.records} records: {rep.reproduction}")
        for f in rep.failures:
            print(f"  FAIL {f.reason}: {f.detail}")
        if args.central_key is None:
            print("  note: checked against the package's own central.pub.pem; compare its key "
                  "id with the published one, or pass --central-key")
        if args.registry_authority is None:
            print(f"  note: key registry signed by authority sha256:{rep.registry_authority}; "
                  "compare it with the published one, or pass --registry-authority")
    return 0 if rep.ok else 1


def register_build(sub: Any) -> None:
    sp = sub.add_parser("build", help="build the evidence package of an alert")
    sp.add_argument("alert_id", nargs="*", metavar="ALERT_ID")
    sp.add_argument("--all", action="store_true", help="every alert (--out is a directory)")
    sp.add_argument("--out", required=True, help="DIR or FILE.zip (a directory with --all)")
    sp.add_argument("--zip", action="store_true", help="with --all: one ZIP per alert")
    sp.add_argument("--config", help="CENTRAL.yaml: stored alerts, archive, receipt log, key")
    sp.add_argument("--alerts", help="alerts file (JSON Lines) instead of the stored alerts")
    sp.add_argument("--frames", nargs="+", help="frames file(s) instead of the archive")
    sp.add_argument("--registry", help="key registry (default: the config's)")
    sp.add_argument("--registry-authority",
                    help="registry authority public key or sha256 fingerprint (default: "
                         "the config's)")
    sp.add_argument("--sites", help="SITES.yaml (default: the config's detection.sites)")
    sp.add_argument("--params", help="PARAMS.yaml (default: the config's detection.params)")
    sp.add_argument("--key", help="central private key (default: custody.key_file)")
    sp.add_argument("--central-public-key", help="its public key (default: KEY.pub.pem)")
    sp.add_argument("--no-plots", action="store_true")
    sp.add_argument("--no-report", action="store_true")
    sp.add_argument("--no-pdf", action="store_true",
                    help="HTML report only (no WeasyPrint: the evidence extra not installed)")
    sp.set_defaults(func=cmd_build)

    sp = sub.add_parser("verify", help="verify an evidence package (exit 0 only if accepted)")
    sp.add_argument("package", help="package directory or ZIP")
    sp.add_argument("--central-key", help="central public key PEM to trust (recommended)")
    sp.add_argument("--registry-authority",
                    help="registry authority public key or sha256 fingerprint to trust")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_verify)
