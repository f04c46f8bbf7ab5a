"""Offline verification of an exported frames file, for a third party.

Checks every line's signature and key validity against the registry, then each gateway's
chain (gaps not covered by a signed drop event, duplicates, forks, sequence resets) and
prints a per-gateway summary. Exit status 0 only if everything verifies; otherwise every
failing frame is named with its line number and the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stationseal.chain import ChainIssue, ChainTracker
from stationseal.export import gateway_of_topic, read_frames
from stationseal.frame import Frame
from stationseal.keys import KeyRegistry, RegistryError
from stationseal.records import to_rfc3339
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
            "issues": self.issues,
        }


@dataclass(slots=True)
class Report:
    lines: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    gateways: dict[str, GatewaySummary] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures and all(not g.issues for g in self.gateways.values())


def verify_file(path: str | Path, registry: KeyRegistry) -> Report:
    rep = Report()
    by_gw: dict[str, list[tuple[int, Frame]]] = {}
    for ff in read_frames(path):
        rep.lines += 1
        if ff.error is not None or ff.payload is None:
            rep.failures.append({"line": ff.line, "reason": "malformed", "detail": ff.error})
            continue
        topic_gw = gateway_of_topic(ff.topic) if ff.topic else None
        if ff.topic and topic_gw is None:
            rep.failures.append(
                {"line": ff.line, "reason": "topic_mismatch", "detail": f"topic {ff.topic!r}"}
            )
            continue
        try:
            f = verify_payload(ff.payload, registry, topic_gw)
        except Rejected as e:
            fail: dict[str, Any] = {"line": ff.line, "reason": e.reason, "detail": e.detail}
            if e.frame is not None:
                fail["gateway_id"] = e.frame.gateway_id
                fail["seq"] = e.frame.seq
            rep.failures.append(fail)
            continue
        by_gw.setdefault(f.gateway_id, []).append((ff.line, f))

    for gw, frames in sorted(by_gw.items()):
        s = rep.gateways[gw] = GatewaySummary(gw)
        tracker = ChainTracker(gw)
        frames.sort(key=lambda lf: (lf[1].seq, lf[0]))
        seen_line: dict[int, int] = {}
        for line, f in frames:
            is_new, issues = tracker.observe(f, now=0.0)
            for iss in issues:
                s.issues.append(_issue_json(iss, line, seen_line.get(iss.seq)))
            if not is_new:
                continue
            seen_line.setdefault(f.seq, line)
            s.frames += 1
            s.readings += len(f.readings)
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
            s.issues.append(_issue_json(iss, None, None))
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
            where += f" ({f['gateway_id']} seq {f['seq']})"
        print(f"FAIL {where}: {f['reason']}: {f['detail']}", file=out)
    for g in rep.gateways.values():
        for i in g.issues:
            extra = {k: v for k, v in i.items() if k not in ("kind", "seq", "line")}
            where = f"line {i['line']}: " if "line" in i else ""
            print(f"FAIL {g.gateway_id} seq {i['seq']}: {where}{i['kind']} {extra}", file=out)
    print(f"{rep.lines} line(s) read", file=out)
    for g in rep.gateways.values():
        j = g.to_json()
        state = "OK" if not g.issues else f"{len(g.issues)} chain issue(s)"
        drops = (
            f", dropped at gateway (signed): {j['dropped_at_gateway']}"
            if g.dropped_ranges else ""
        )
        print(
            f"{g.gateway_id}: {g.frames} frames, {g.readings} readings, {g.events} events, "
            f"seq {g.first_seq}..{g.last_seq}, {j['created_range'][0]} .. "
            f"{j['created_range'][1]}, keys {','.join(sorted(g.keys))}, "
            f"{len(g.boots)} boot(s){drops}: {state}",
            file=out,
        )
    print("VERIFIED" if rep.ok else "NOT VERIFIED", file=out)


def run(args: argparse.Namespace) -> int:
    from stationseal.cli import UsageError

    try:
        registry = KeyRegistry.load(args.registry)
    except RegistryError as e:
        raise UsageError(str(e)) from None
    if not Path(args.frames).is_file():
        raise UsageError(f"{args.frames}: frames file not found")
    rep = verify_file(args.frames, registry)
    if args.json:
        json.dump(
            {
                "ok": rep.ok,
                "lines": rep.lines,
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
    p.add_argument("--registry", required=True, help="key registry JSON file")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)
