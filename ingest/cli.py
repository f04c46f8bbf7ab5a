"""Central ingest: verify signed frames, store them in InfluxDB, raise integrity alerts.

  stationseal ingest run --config CENTRAL.yaml            the service (all workers)
  stationseal ingest run --config CENTRAL.yaml --shard K  one worker (systemd template)
  stationseal ingest import FRAMES.jsonl --config CENTRAL.yaml
  stationseal ingest quarantine list|show|export --config CENTRAL.yaml
  stationseal ingest check-config --config CENTRAL.yaml
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ingest.config import ConfigError, IngestConfig, load_config


def _usage(msg: str) -> Exception:
    from stationseal.cli import UsageError

    return UsageError(msg)


def _load(args: argparse.Namespace) -> IngestConfig:
    try:
        return load_config(args.config)
    except ConfigError as e:
        raise _usage(str(e)) from None


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _preflight(cfg: IngestConfig, where: str) -> None:
    """Every referenced file and directory checked up front: exit 2 naming each one that
    is wrong, instead of a traceback from deep inside the first connect or commit."""
    from ingest.config import preflight

    errors, warnings = preflight(cfg)
    for w in warnings:
        print(f"stationseal ingest: warning: {where}: {w}", file=sys.stderr)
    if errors:
        raise _usage("\n".join(f"{where}: {e}" for e in errors))


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    _preflight(cfg, args.config)
    _logging(args.log_level)
    if cfg.shard.count > 1 and args.shard is None:
        from ingest.supervisor import Supervisor

        return Supervisor(cfg, args.config, ["--log-level", args.log_level]).run()
    return run_worker(cfg, args.shard or 0)


def run_worker(cfg: IngestConfig, shard: int = 0) -> int:
    """Run one worker until SIGTERM/SIGINT. Returns the exit code."""
    from ingest.influx import WriteError
    from ingest.service import IngestService
    from ingest.supervisor import worker_port, write_worker_info
    from stationseal.keys import RegistryError

    if not 0 <= shard < cfg.shard.count:
        raise _usage(f"--shard {shard}: outside 0..{cfg.shard.count - 1} (shard.count)")
    port = cfg.metrics.port if cfg.shard.count == 1 else worker_port(cfg, shard)
    svc: IngestService
    try:
        if cfg.nats is not None:
            from ingest.nats_source import NatsIngestService

            svc = NatsIngestService(cfg, shard, metrics_port=port)
        else:
            svc = IngestService(cfg, shard, metrics_port=port)
    except (RegistryError, ConfigError, ValueError) as e:
        raise _usage(str(e)) from None
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    try:
        svc.start()
    except (OSError, WriteError) as e:
        print(f"stationseal ingest: cannot start: {e}", file=sys.stderr)
        svc.stop()
        return 1
    write_worker_info(cfg, shard, svc.metrics_port)
    logging.getLogger("stationseal.ingest").info(
        "ingest worker %d/%d running; metrics on %s:%s", shard, cfg.shard.count,
        cfg.metrics.host, svc.metrics_port)
    while not stop.wait(1.0):
        if svc.stop_event.is_set():
            break
    failed = svc.stop_event.is_set() and not stop.is_set()
    svc.stop()
    if svc.fatal is not None:
        from ingest.service import EXIT_FATAL

        print(f"stationseal ingest: worker {shard} stopped: {svc.fatal}", file=sys.stderr)
        return EXIT_FATAL
    return 1 if failed else 0


def cmd_import(args: argparse.Namespace) -> int:
    from ingest.importer import run_import
    from stationseal.keys import RegistryError

    cfg = _load(args)
    _logging(args.log_level)
    if not Path(args.frames).is_file():
        raise _usage(f"{args.frames}: frames file not found")
    try:
        res = run_import(cfg, args.frames, progress=not args.no_progress)
    except (RegistryError, ConfigError) as e:
        raise _usage(str(e)) from None
    except KeyboardInterrupt:
        print("import interrupted; frames committed so far are stored, re-run to "
              "finish (already stored frames count as duplicates)", file=sys.stderr)
        return 130
    summary = {"lines": res.lines, **res.outcomes, "readings": res.readings,
               "rejected_lines": res.rejected_lines, "alerts": res.alerts,
               "seconds": round(res.seconds, 2)}
    print(json.dumps(summary))
    return 0 if res.quarantined == 0 and res.rejected_lines == 0 else 1


def _store(args: argparse.Namespace) -> Any:
    from ingest.store import Store

    cfg = _load(args)
    if not cfg.db_path.exists():
        raise _usage(f"{cfg.db_path}: no ingest state yet (state_dir of {args.config})")
    return Store(cfg.db_path)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    from stationseal.records import from_rfc3339

    since = None
    if getattr(args, "since", None):
        try:
            since = from_rfc3339(args.since)
        except ValueError as e:
            raise _usage(f"--since {args.since!r}: {e}") from None
    return {"reason": args.reason, "gateway_id": args.gateway, "since": since}


def cmd_q_list(args: argparse.Namespace) -> int:
    st = _store(args)
    rows = list(st.quarantine_rows(**_filters(args), limit=args.limit))
    if args.json:
        for r in rows:
            print(json.dumps(r.summary(), ensure_ascii=False))
        return 0
    if not rows:
        print("quarantine is empty" if not any(vars(args).get(k) for k in
                                              ("reason", "gateway", "since"))
              else "no quarantined frame matches")
        return 0
    print(f"{'ID':>6}  {'RECEIVED':<24} {'REASON':<18} {'GATEWAY':<20} {'SEQ':>8}  DETAIL")
    for r in rows:
        s = r.summary()
        print(f"{s['id']:>6}  {s['received']:<24} {s['reason']:<18} "
              f"{(s['gateway_id'] or '-'):<20} {s['seq'] if s['seq'] is not None else '-':>8}"
              f"  {s['detail'][:80]}")
    counts = st.quarantine_counts()
    print("total: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    over = st.quarantine_overflow()
    if over:
        print(f"of which only counted (rate bound of the quarantine): "
              f"{sum(o[3] for o in over)} payloads, {sum(o[4] for o in over)} bytes from "
              f"{len({o[0] for o in over})} source(s)")
    return 0


def cmd_q_show(args: argparse.Namespace) -> int:
    st = _store(args)
    rows = list(st.quarantine_rows(ids=[args.id]))
    if not rows:
        print(f"no quarantined frame with id {args.id}", file=sys.stderr)
        return 1
    r = rows[0]
    d = r.summary()
    if r.truncated:
        d["note"] = (f"only the first {len(r.payload)} of {r.size} bytes were kept (size or "
                     "rate bound of the quarantine); sha256 is of the whole payload")
    d["payload_base64"] = base64.b64encode(r.payload).decode()
    if args.hex:
        d["payload_hex"] = r.payload.hex()
    try:
        from stationseal.frame import decode

        f = decode(r.payload)
        d["decoded"] = {
            "gateway_id": f.gateway_id, "site": f.site, "key_id": f.key_id, "alg": f.alg,
            "seq": f.seq, "created": f.created, "clock_sync": f.clock_sync,
            "readings": len(f.readings), "events": len(f.events),
            "frame_hash": f.frame_hash.hex(), "prev_hash": f.prev_hash.hex(),
        }
    except Exception as e:
        d["decoded"] = None
        d["decode_error"] = str(e)
    print(json.dumps(d, indent=2, ensure_ascii=False))
    return 0


def cmd_q_export(args: argparse.Namespace) -> int:
    from stationseal.export import frames_topic, line_for

    st = _store(args)
    n = skipped = 0
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for r in st.quarantine_rows(**_filters(args), ids=args.ids or None):
            if r.truncated:
                skipped += 1  # a head and a digest are no frame `verify` could check
                continue
            topic = r.topic or (frames_topic(r.gateway_id) if r.gateway_id else "")
            obj = json.loads(line_for(topic, r.payload))
            obj.update({"quarantine_id": r.id, "reason": r.reason, "detail": r.detail})
            out.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
            n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} quarantined frame(s)" + (
        f"; {skipped} kept only as digest and first bytes not exported" if skipped else ""),
        file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ingest.config import dump_config
    from ingest.engine_hook import make_engine
    from stationseal.keys import KeyRegistry, RegistryError

    cfg = _load(args)
    _preflight(cfg, args.config)
    try:
        reg = KeyRegistry.load(cfg.registry, cfg.registry_pin())
        make_engine(cfg.detection)
        if cfg.hj212 is not None:
            for lg in cfg.hj212.loggers:
                lg.resolved_key()
    except (RegistryError, ConfigError) as e:
        raise _usage(str(e)) from None
    print(json.dumps(dump_config(cfg), indent=2, default=str))
    print(f"{args.config}: OK ({len(reg.entries)} keys in the registry, serial {reg.serial})",
          file=sys.stderr)
    return 0


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ingest_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True, help="CENTRAL.yaml")

    sp = sub.add_parser("run", help="run the ingest service")
    common(sp)
    sp.add_argument("--shard", type=int, default=None,
                    help="run only worker K of shard.count (default: all, supervised)")
    sp.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("import", help="ingest an exported frames file (air-gapped gateway)")
    common(sp)
    sp.add_argument("frames", help="frames file (JSON Lines, as written by the agent)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sp.add_argument("--log-level", default="warning",
                    choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("check-config", help="validate the config, registry and SITES")
    common(sp)
    sp.set_defaults(func=cmd_check)

    q = sub.add_parser("quarantine", help="inspect frames that failed verification")
    qs = q.add_subparsers(dest="q_command", metavar="ACTION", required=True)

    def filters(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--reason", help="only this reason (e.g. bad_signature)")
        sp.add_argument("--gateway", help="only this gateway id")
        sp.add_argument("--since", help="only received at/after this RFC 3339 time")

    sp = qs.add_parser("list", help="one line per quarantined frame")
    common(sp)
    filters(sp)
    sp.add_argument("--limit", type=int, default=None)
    sp.add_argument("--json", action="store_true", help="JSON Lines")
    sp.set_defaults(func=cmd_q_list)

    sp = qs.add_parser("show", help="everything about one quarantined frame")
    common(sp)
    sp.add_argument("id", type=int)
    sp.add_argument("--hex", action="store_true", help="also the payload in hex")
    sp.set_defaults(func=cmd_q_show)

    sp = qs.add_parser("export", help="as a frames file, for `stationseal verify`")
    common(sp)
    filters(sp)
    sp.add_argument("out", help="output frames file (- for stdout)")
    sp.add_argument("--ids", type=int, nargs="*", help="only these quarantine ids")
    sp.set_defaults(func=cmd_q_export)
