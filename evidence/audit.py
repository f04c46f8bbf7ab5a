"""`stationseal audit`: the central database checked against the receipt log and the
frames it receipted (docs/evidence.md §7).

Every `reading` point InfluxDB holds for a signed gateway must be what a receipted frame
says, at the timestamp ingest derives from that frame (docs/influx-schema.md), and every
reading of every receipted frame must be there. The expected points are rebuilt with the
ingest's own line builder from the archived frames (exactly as received), so a reading
edited in the database, deleted from it, or inserted into it shows up as ``changed``,
``missing`` or ``unreceipted``. A frame with a receipt but absent from the archive is
``unarchived`` (its readings cannot be checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.config import ConfigError, IngestConfig, load_config
from ingest.convert import LineBuilder
from ingest.custody.log import ReceiptLog
from ingest.lineproto import parse_line
from ingest.store import Store
from stationseal.errors import UsageError
from stationseal.export import gateway_of_topic, read_frames
from stationseal.frame import Frame, FrameError, decode
from stationseal.records import from_rfc3339, to_rfc3339

#: (branch, site, gateway, instrument, signal, unit, timestamp ns)
Key = tuple[str, str, str, str, str, str, int]
#: what a point holds: (value or None, text or None, quality, seq, frame hash prefix)
Point = tuple[float | None, str | None, str, int, str]


@dataclass(slots=True)
class AuditResult:
    gateways: list[str] = field(default_factory=list)
    frames: int = 0
    expected: int = 0
    stored: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.differences:
            out[d["kind"]] = out.get(d["kind"], 0) + 1
        return out


def _frames_of(archive: list[Path], wanted: dict[str, dict[bytes, int]]
               ) -> Iterator[Frame]:
    for p in archive:
        for ff in read_frames(p):
            if ff.payload is None or ff.topic is None:
                continue
            gw = gateway_of_topic(ff.topic)
            if gw not in wanted:
                continue
            try:
                f = decode(ff.payload)
            except FrameError:
                continue
            if f.frame_hash in wanted[gw]:
                yield f


def expected_points(frames: list[Frame], t0: float | None, t1: float | None
                    ) -> dict[Key, Point]:
    """Reading points ingest writes for these frames (a second history of a sequence
    number, in receipt order, gets its branch tag as ingest gives it)."""
    out: dict[Key, Point] = {}
    lb = LineBuilder()
    seen: dict[tuple[str, int], Frame] = {}
    for f in frames:
        first = seen.get((f.gateway_id, f.seq))
        branch = ""
        if first is not None and first.frame_hash != f.frame_hash:
            branch = (f"reset-{f.boot_id.hex()[:8]}" if first.boot_id != f.boot_id
                      else f"fork-{f.frame_hash.hex()[:8]}")
        else:
            seen[(f.gateway_id, f.seq)] = f
        for ln in lb.frame_lines(f, branch):
            if not ln.startswith("reading"):
                continue
            _, tags, fields, ts = parse_line(ln)
            if (t0 is not None and ts < t0 * 1e9) or (t1 is not None and ts > t1 * 1e9):
                continue
            out[_key(tags, ts)] = _point(fields)
    return out


def _key(tags: dict[str, str], ts: int) -> Key:
    return (tags.get("branch", ""), tags.get("site", ""), tags.get("gateway", ""),
            tags.get("instrument", ""), tags.get("signal", ""), tags.get("unit", ""), ts)


def _point(fields: dict[str, Any]) -> Point:
    v = fields.get("value")
    t = fields.get("text")
    return (None if v is None else float(v), None if t is None else str(t),
            str(fields.get("quality", "")), int(fields.get("seq", -1)),
            str(fields.get("frame", "")))


def stored_points(cfg: IngestConfig, gateway: str, lo_ns: int, hi_ns: int
                  ) -> dict[Key, Point]:
    from ingest.influx import V1Writer

    if cfg.influx.version != 1:
        raise UsageError("stationseal audit reads InfluxDB through the 1.x query API "
                         "(influx.version 1); a 2.x/3.x deployment: query its v1 "
                         "compatibility endpoint with a version-1 config")
    w = V1Writer(cfg.influx)
    q = (f"SELECT * FROM \"reading\" WHERE \"gateway\" = '{gateway.replace(chr(39), '')}' "
         f"AND time >= {lo_ns} AND time <= {hi_ns}")
    params = urllib.parse.urlencode({"q": q, "db": cfg.influx.database, "epoch": "ns"})
    hdrs = {k: v for k, v in w._headers.items() if k == "Authorization"}
    hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        status, text = w._request("POST", f"{w._base}/query", params.encode(), hdrs)
    finally:
        w.close()
    if status != 200:
        raise RuntimeError(f"InfluxDB query failed: HTTP {status}: {text[:300]}")
    doc = json.loads(text)
    res = doc["results"][0]
    if "error" in res:
        raise RuntimeError(f"InfluxDB query failed: {res['error']}")
    out: dict[Key, Point] = {}
    for s in res.get("series", []):
        cols = s["columns"]
        for row in s["values"]:
            d = dict(zip(cols, row, strict=True))
            tags = {k: (d.get(k) or "") for k in ("branch", "site", "gateway", "instrument",
                                                  "signal", "unit")}
            if d.get("trust"):
                continue  # unsigned legacy readings are not the log's business
            out[_key(tags, int(d["time"]))] = _point(
                {k: d.get(k) for k in ("value", "text", "quality", "seq", "frame")})
    return out


def _show(k: Key) -> dict[str, Any]:
    return {"branch": k[0] or None, "site": k[1], "gateway": k[2], "instrument": k[3],
            "signal": k[4], "unit": k[5], "time": to_rfc3339(k[6] / 1e9), "ts_ns": k[6]}


def audit(cfg: IngestConfig, *, gateways: list[str] | None = None, t0: float | None = None,
          t1: float | None = None) -> AuditResult:
    if cfg.archive_dir is None:
        raise UsageError("audit needs archive_dir in the config: the frames as received")
    rl = ReceiptLog(Store(cfg.db_path)._db)
    wanted: dict[str, dict[bytes, int]] = {}
    for r in rl.rows():
        if gateways and r.gateway_id not in gateways:
            continue
        wanted.setdefault(r.gateway_id, {}).setdefault(r.frame_hash, r.index)
    archive = sorted(Path(cfg.archive_dir).glob("frames-*.jsonl"))
    frames = sorted(_frames_of(archive, wanted),
                    key=lambda f: wanted[f.gateway_id][f.frame_hash])
    res = AuditResult(gateways=sorted(wanted), frames=len(frames))
    found = {(f.gateway_id, f.frame_hash) for f in frames}
    for gw, hs in sorted(wanted.items()):
        for h, idx in hs.items():
            if (gw, h) not in found:
                res.differences.append({"kind": "unarchived", "gateway": gw,
                                        "frame_hash": h.hex(), "receipt": idx})
    for gw in sorted(wanted):
        mine = [f for f in frames if f.gateway_id == gw]
        exp = expected_points(mine, t0, t1)
        if not exp and t0 is None:
            continue
        times = [k[6] for k in exp]
        lo = int(t0 * 1e9) if t0 is not None else (min(times) if times else 0)
        hi = int(t1 * 1e9) if t1 is not None else (max(times) if times else 0)
        got = stored_points(cfg, gw, lo, hi)
        res.expected += len(exp)
        res.stored += len(got)
        for k, p in exp.items():
            q = got.get(k)
            if q is None:
                res.differences.append({"kind": "missing", **_show(k), "signed": _val(p),
                                        "seq": p[3], "frame": p[4]})
            elif q != p:
                res.differences.append({"kind": "changed", **_show(k), "signed": _val(p),
                                        "stored": _val(q), "seq": p[3], "frame": p[4]})
        for k, q in got.items():
            if k not in exp:
                res.differences.append({"kind": "unreceipted", **_show(k),
                                        "stored": _val(q), "seq": q[3], "frame": q[4]})
    return res


def _val(p: Point) -> dict[str, Any]:
    return {"value": p[0], "text": p[1], "quality": p[2], "seq": p[3], "frame": p[4]}


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not cfg.db_path.exists():
        raise UsageError(f"{cfg.db_path}: no ingest state (state_dir of {args.config})")
    try:
        t0 = from_rfc3339(args.time_from) if args.time_from else None
        t1 = from_rfc3339(args.time_to) if args.time_to else None
    except ValueError as e:
        raise UsageError(f"--from/--to: {e}") from None
    try:
        res = audit(cfg, gateways=args.gateway or None, t0=t0, t1=t1)
    except (OSError, RuntimeError) as e:
        print(f"stationseal audit: {e}", file=sys.stderr)
        return 1
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for d in res.differences:
            out.write(json.dumps(d, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    summary = {"gateways": res.gateways, "frames": res.frames, "readings_expected":
               res.expected, "readings_stored": res.stored, "differences": res.counts(),
               "result": "CONSISTENT" if res.ok else "DIFFERENCES"}
    print(json.dumps(summary), file=sys.stderr)
    return 0 if res.ok else 1


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="CENTRAL.yaml (InfluxDB, state, archive)")
    p.add_argument("--gateway", action="append", help="only this gateway (repeatable)")
    p.add_argument("--from", dest="time_from", help="reading time from (RFC 3339)")
    p.add_argument("--to", dest="time_to", help="reading time to (RFC 3339)")
    p.add_argument("--out", default="-", help="differences, JSON Lines (default: stdout)")
    p.set_defaults(func=run)
