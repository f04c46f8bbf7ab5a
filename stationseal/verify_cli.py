"""Offline verification of an exported frames file, for a third party.

Needs the frames file, the signed key registry and the registry authority's public key
(or its SHA-256 fingerprint); optionally the central receipt log (``stationseal evidence
receipts``), which says when the central side first received each frame: key validity is
then judged on that time too, and frames created far from their arrival are findings.

Checks every line (docs/wire-format.md §6-§8), then each gateway's chain (gaps not covered
by a signed drop event, duplicates, forks, sequence resets, bad drop events, clock
state) and prints a per-gateway summary. Exit status 0 only if at least one frame was read
and everything verifies; otherwise every failing line is named with its reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stationseal.chain import SPEC_LIMITS, ChainIssue, ChainTracker, Limits, arrival_findings
from stationseal.export import gateway_of_topic, read_frames
from stationseal.frame import Frame, FrameError, split_payload
from stationseal.records import to_rfc3339
from stationseal.registry import AuthorityPin, KeyRegistry, RegistryError
from stationseal.verify import Rejected, verify_payload


@dataclass(slots=True)
class GatewaySummary:
    gateway_id: str
    frames: int = 0
    readings: int = 0
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_created: float | None = None
    last_created: float | None = None
    keys: set[str] = field(default_factory=set)
    boots: set[str] = field(default_factory=set)
    dropped_ranges: list[tuple[int, int]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    without_receipt: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "frames": self.frames,
            "readings": self.readings,
            "events": self.events,
            "seq_range": [self.first_seq, self.last_seq],
            "created_range": [
                None if self.first_created is None else to_rfc3339(self.first_created),
                None if self.last_created is None else to_rfc3339(self.last_created),
            ],
            "keys": sorted(self.keys),
            "boots": len(self.boots),
            "dropped_at_gateway": [list(r) for r in self.dropped_ranges],
            "frames_without_receipt": self.without_receipt,
            "issues": self.issues,
        }


@dataclass(slots=True)
class Report:
    lines: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    gateways: dict[str, GatewaySummary] = field(default_factory=dict)
    receipts: bool = False
    registry_serial: int | None = None
    authority: str | None = None
    limits: Limits = SPEC_LIMITS

    @property
    def ok(self) -> bool:
        return (self.lines > 0 and not self.failures
                and all(not g.issues for g in self.gateways.values()))


class ReceiptError(Exception):
    """A receipts file that cannot be used; the message names the line."""


def load_receipts(path: str | Path) -> dict[bytes, int]:
    """frame hash -> first ``received_ms``, from JSON Lines ``{"frame_hash": <64 hex>,
    "received_ms": <int>}`` (the format of ``stationseal evidence receipts``; other
    members are ignored). The earliest time of a hash counts."""
    out: dict[bytes, int] = {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ReceiptError(f"{p}: {e.strerror}") from None
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            h, t = obj["frame_hash"], obj["received_ms"]
            if type(h) is not str or len(h) != 64 or type(t) is not int or t < 0:
                raise ValueError
            key = bytes.fromhex(h)
        except (ValueError, KeyError, TypeError):
            raise ReceiptError(f"{p}:{n}: not {{\"frame_hash\": <64 hex>, "
                               "\"received_ms\": <int>}") from None
        if key not in out or t < out[key]:
            out[key] = t
    return out


def verify_file(path: str | Path, registry: KeyRegistry,
                receipts: dict[bytes, int] | None = None,
                limits: Limits = SPEC_LIMITS) -> Report:
    """``limits``: the specification's bounds unless the caller judges by a deployment's
    own (the same values its ingest is configured with); the report names them."""
    rep = Report(receipts=receipts is not None, registry_serial=registry.serial or None,
                 authority=registry.authority_fingerprint, limits=limits)
    by_gw: dict[str, list[tuple[int, Frame]]] = {}
    received: dict[tuple[str, int, bytes], int] = {}
    for ff in read_frames(path):
        rep.lines += 1
        if ff.payload is None:
            rep.failures.append({"line": ff.line, "reason": ff.reason or "bad_line",
                                 "detail": ff.error})
            continue
        topic_gw = gateway_of_topic(ff.topic) if ff.topic else None
        if ff.topic and topic_gw is None:
            rep.failures.append({"line": ff.line, "reason": "bad_topic",
                                 "detail": f"topic {ff.topic!r} is not "
                                           "stationseal/v1/<gateway_id>/frames"})
            continue
        rms: int | None = None
        if receipts is not None:
            try:
                body, _ = split_payload(ff.payload)
                rms = receipts.get(hashlib.sha256(body).digest())
            except FrameError:
                rms = None
        try:
            f = verify_payload(ff.payload, registry, topic_gw, received_ms=rms)
        except Rejected as e:
            fail: dict[str, Any] = {"line": ff.line, "reason": e.reason, "detail": e.detail}
            hdr = e.frame or e.header
            if hdr is not None:
                fail["gateway_id"] = hdr.gateway_id
                if hdr.seq is not None:
                    fail["seq"] = hdr.seq
            rep.failures.append(fail)
            continue
        by_gw.setdefault(f.gateway_id, []).append((ff.line, f))
        if rms is not None:
            received[(f.gateway_id, f.seq, f.frame_hash)] = rms

    for gw, frames in sorted(by_gw.items()):
        s = rep.gateways[gw] = GatewaySummary(gw)
        tracker = ChainTracker(gw, limits)
        frames.sort(key=lambda lf: (lf[1].seq, lf[0]))
        seen_line: dict[int, int] = {}
        for line, f in frames:
            is_new, issues = tracker.observe(f, now=0.0)
            for iss in issues:
                s.issues.append(_issue_json(iss, line, seen_line.get(iss.seq)))
            if not is_new:
                continue
            seen_line.setdefault(f.seq, line)
            rms = received.get((gw, f.seq, f.frame_hash))
            if receipts is not None:
                if rms is None:
                    s.without_receipt += 1
                else:
                    entry = registry.entries[f.key_id]
                    for kind, det in arrival_findings(f, rms, entry.backfill_s,
                                                      limits.future_tolerance_ms):
                        s.issues.append({"kind": kind, "seq": f.seq, "line": line, **det})
            s.frames += 1
            s.readings += f.reading_count
            s.events += len(f.events)
            s.keys.add(f.key_id)
            s.boots.add(f.boot_id.hex())
            s.first_seq = f.seq if s.first_seq is None else min(s.first_seq, f.seq)
            s.last_seq = f.seq if s.last_seq is None else max(s.last_seq, f.seq)
            s.first_created = f.created if s.first_created is None else min(
                s.first_created, f.created)
            s.last_created = f.created if s.last_created is None else max(
                s.last_created, f.created)
        for iss in tracker.overdue_gaps(now=1.0, grace_s=0.0):
            # A gap is charged to the first frame after it (the one that revealed it).
            after = [sq for sq in seen_line if sq > iss.detail["last_seq"]]
            s.issues.append(_issue_json(iss, seen_line[min(after)] if after else None, None))
        s.issues.sort(key=lambda i: (i.get("seq", 0), i["kind"]))
        s.dropped_ranges = [(a, b) for a, b in tracker.dropped.iv]
    return rep


def _issue_json(iss: ChainIssue, line: int | None, first_line: int | None) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": iss.kind, "seq": iss.seq, **iss.detail}
    if line is not None:
        d["line"] = line
    if first_line is not None and first_line != line:
        d["first_line"] = first_line
    return d


def _print_text(rep: Report, out: Any) -> None:
    for f in rep.failures:
        where = f"line {f['line']}"
        if "gateway_id" in f:
            where += f" ({f['gateway_id']}" + (f" seq {f['seq']})" if "seq" in f else ")")
        print(f"FAIL {where}: {f['reason']}: {f['detail']}", file=out)
    for g in rep.gateways.values():
        for i in g.issues:
            extra = {k: v for k, v in i.items() if k not in ("kind", "seq", "line")}
            where = f"line {i['line']}: " if "line" in i else ""
            print(f"FAIL {g.gateway_id} seq {i['seq']}: {where}{i['kind']} {extra}", file=out)
    print(f"{rep.lines} line(s) read; registry serial {rep.registry_serial}, authority "
          f"{(rep.authority or '-')[:16]}; receipts: {'yes' if rep.receipts else 'no'}",
          file=out)
    for g in rep.gateways.values():
        j = g.to_json()
        state = "OK" if not g.issues else f"{len(g.issues)} chain issue(s)"
        drops = (
            f", dropped at gateway (signed): {j['dropped_at_gateway']}"
            if g.dropped_ranges else ""
        )
        norec = f", {g.without_receipt} without receipt" if g.without_receipt else ""
        print(
            f"{g.gateway_id}: {g.frames} frames, {g.readings} readings, {g.events} events, "
            f"seq {g.first_seq}..{g.last_seq}, {j['created_range'][0]} .. "
            f"{j['created_range'][1]}, keys {','.join(sorted(g.keys))}, "
            f"{len(g.boots)} boot(s){drops}{norec}: {state}",
            file=out,
        )
    if rep.lines == 0:
        print("no frame in the file", file=out)
    diff = rep.limits.differences()
    if diff:
        print("note: judged with bounds other than the specification's: " + ", ".join(
            f"{k} {v} (specification {spec})" for k, (v, spec) in diff.items()), file=out)
    if not rep.receipts:
        print("note: without --receipts, key validity is judged on the gateways' own "
              "clocks and arrival times are not checked", file=out)
    print("VERIFIED" if rep.ok else "NOT VERIFIED", file=out)


def run(args: argparse.Namespace) -> int:
    from stationseal.cli import UsageError

    try:
        pin = AuthorityPin.parse(args.authority)
        registry = KeyRegistry.load(args.registry, pin)
    except RegistryError as e:
        raise UsageError(str(e)) from None
    if not Path(args.frames).is_file():
        raise UsageError(f"{args.frames}: frames file not found")
    receipts = None
    if args.receipts:
        try:
            receipts = load_receipts(args.receipts)
        except ReceiptError as e:
            raise UsageError(str(e)) from None
    try:
        limits = Limits(
            future_tolerance_ms=round(args.future_tolerance * 1000)
            if args.future_tolerance is not None else SPEC_LIMITS.future_tolerance_ms,
            max_unsynced_ms=round(args.max_unsynced * 1000)
            if args.max_unsynced is not None else SPEC_LIMITS.max_unsynced_ms,
            max_drop_span=args.max_drop_span
            if args.max_drop_span is not None else SPEC_LIMITS.max_drop_span)
    except (ValueError, OverflowError) as e:
        raise UsageError(str(e)) from None
    rep = verify_file(args.frames, registry, receipts, limits)
    if args.json:
        json.dump(
            {
                "ok": rep.ok,
                "lines": rep.lines,
                "registry_serial": rep.registry_serial,
                "authority": rep.authority,
                "receipts": rep.receipts,
                "limits": rep.limits.to_json(),
                "limits_differ_from_spec": sorted(rep.limits.differences()),
                "failures": rep.failures,
                "gateways": [g.to_json() for g in rep.gateways.values()],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        _print_text(rep, sys.stdout)
    return 0 if rep.ok else 1


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", help="frames file (JSON Lines, one frame per line as sent)")
    p.add_argument("--registry", required=True, help="signed key registry document")
    p.add_argument("--authority", required=True,
                   help="the registry authority's public key (PEM file) or its SHA-256 "
                        "fingerprint (64 hex digits, optionally prefixed sha256:)")
    p.add_argument("--receipts",
                   help="central receipts (JSON Lines {frame_hash, received_ms}, from "
                        "`stationseal evidence receipts`): judge key validity and time "
                        "on the first arrival")
    p.add_argument("--future-tolerance", type=float, metavar="SECONDS",
                   help="created_future bound (default: the specification's 120 s); give "
                        "the deployment's value to judge as its ingest does")
    p.add_argument("--max-unsynced", type=float, metavar="SECONDS",
                   help="clock_unsynced bound (default: the specification's 3600 s)")
    p.add_argument("--max-drop-span", type=int, metavar="N",
                   help="most sequence numbers one signed drop may excuse (default: the "
                        "specification's 100000)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)
