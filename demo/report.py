"""The demo's figures: what was signed, what was stored, what was rejected, what fired.

Every figure is measured from an independent source, never from the component's own
claim: signed readings are counted in the recorded frames file, stored readings by
querying InfluxDB, rejected frames in ingest's quarantine, alerts in the alerts file;
the frames file is checked with the offline verifier a third party would use.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from stationseal.export import read_frames
from stationseal.frame import FrameError, decode
from stationseal.keys import KeyRegistry
from stationseal.verify_cli import verify_file


@dataclass
class FrameCounts:
    frames: Counter[str] = field(default_factory=Counter)
    readings: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    sites: dict[str, str] = field(default_factory=dict)
    undecodable: int = 0


def count_frames(path: Path) -> FrameCounts:
    """Frames, readings and events per gateway in a frames file (decoded, not verified)."""
    out = FrameCounts()
    if not path.exists():
        return out
    for ff in read_frames(path):
        if ff.payload is None:
            out.undecodable += 1
            continue
        try:
            f = decode(ff.payload)
        except FrameError:
            out.undecodable += 1
            continue
        out.frames[f.gateway_id] += 1
        out.readings[f.gateway_id] += len(f.readings)
        out.events[f.gateway_id] += len(f.events)
        out.sites[f.gateway_id] = f.site
    return out


def influx_readings(url: str, database: str, gateway: str, timeout: float = 10.0) -> int:
    """Readings stored for one gateway (every reading point carries a quality field)."""
    q = f"SELECT count(\"quality\") FROM \"reading\" WHERE \"gateway\" = '{gateway}'"
    qs = urllib.parse.urlencode({"db": database, "q": q})
    with urllib.request.urlopen(f"{url}/query?{qs}", timeout=timeout) as r:
        doc = json.loads(r.read())
    res = doc["results"][0]
    if "error" in res:
        raise RuntimeError(f"InfluxDB: {q}: {res['error']}")
    return sum(int(s["values"][0][1]) for s in res.get("series", []))


def load_alerts(path: Path) -> list[dict[str, Any]]:
    """The latest state of every alert in an alerts file (one JSON update per line)."""
    latest: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)
        latest[str(doc.get("id") or doc.get("key"))] = doc
    return sorted(latest.values(), key=lambda a: (str(a.get("start")), str(a.get("rule"))))


def quarantine_counts(db: Path) -> dict[str, int] | None:
    if not db.exists():
        return None
    from ingest.store import Store

    store = Store(db)
    try:
        return dict(store.quarantine_counts())
    finally:
        store.close()


def verification(frames: Path, registry: Path, authority: Path,
                 receipts: Path | None = None) -> dict[str, Any]:
    if not frames.exists():
        return {"ok": False, "error": f"{frames} was not written"}
    from stationseal.verify_cli import load_receipts

    rec = load_receipts(receipts) if receipts is not None and receipts.exists() else None
    rep = verify_file(frames, KeyRegistry.load(registry, authority), rec)
    return {
        "ok": rep.ok and rep.lines > 0,
        "lines": rep.lines,
        "failures": rep.failures[:20],
        "failures_total": len(rep.failures),
        "receipts": rep.receipts,
        "gateways": {gw: {"frames": g.frames, "readings": g.readings, "events": g.events,
                          "seq_range": [g.first_seq, g.last_seq], "issues": g.issues[:20]}
                     for gw, g in rep.gateways.items()},
    }


def _matches(rule: str, p: dict[str, Any], alerts: list[dict[str, Any]]
             ) -> tuple[list[str], str]:
    same_rule = [a for a in alerts if a.get("rule") == rule and a.get("site") == p["site"]]
    by_test = [str(a["id"]) for a in same_rule if a.get("test_id") == p.get("test_id")]
    if by_test:
        return by_test, "test"
    return [str(a["id"]) for a in same_rule], "site" if same_rule else ""


def planted_vs_found(planted: list[dict[str, Any]], live: list[dict[str, Any]],
                     offline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each planted pattern: the alerts of that rule naming the test, or failing that
    any alert of that rule at the site (lane-wide findings); live and reproduced offline."""
    out = []
    for p in planted:
        for rule, variant in (p.get("patterns") or {}).items():
            ids, how = _matches(rule, p, live)
            off_ids, off_how = _matches(rule, p, offline)
            out.append({"site": p["site"], "lane": p.get("lane"), "test_id": p.get("test_id"),
                        "vehicle": p.get("vehicle"), "method": p.get("method"), "rule": rule,
                        "variant": variant, "finished": p.get("finished", True),
                        "alerts": ids, "matched_by": how,
                        "alerts_offline": off_ids, "matched_by_offline": off_how})
    return out


def unplanted(planted: list[dict[str, Any]], alerts: list[dict[str, Any]], site: str
              ) -> list[dict[str, Any]]:
    """Vehicle alerts on a test that did not carry that rule: false alarms to look at."""
    carried = {(p.get("test_id"), r) for p in planted for r in p.get("patterns") or {}}
    lane_wide = {(p.get("lane"), r) for p in planted for r in p.get("patterns") or {}
                 if r in ("V9",)}
    out = []
    for a in alerts:
        tid = a.get("test_id")
        if a.get("site") != site or not str(a.get("rule", "")).startswith("V"):
            continue
        if (tid, a.get("rule")) in carried:
            continue
        lane = (a.get("evidence") or {}).get("lane")
        if (lane, a.get("rule")) in lane_wide:
            continue
        out.append({k: a.get(k) for k in ("id", "rule", "test_id", "summary_en")})
    return out


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n",
                   encoding="utf-8")
    tmp.replace(path)


def print_summary(s: dict[str, Any], out: IO[str]) -> None:
    w = out.write
    w("\n=== StationSeal demo station: summary ===\n")
    w(f"run: {s['seconds']:.0f} s of lane and stack operation, output in {s['out']}"
      + (" (INTERRUPTED: figures are partial)" if s.get("interrupted") else "") + "\n")
    w(f"readings signed (frames.jsonl): {s['readings_signed']}   "
      f"stored (InfluxDB): {s['readings_stored']}   "
      f"frames: {s['frames_signed']}   rejected frames (quarantine): {s['frames_rejected']}\n")
    v = s["verification"]
    w(f"offline verification of frames.jsonl: {'OK' if v.get('ok') else 'FAILED'}"
      f" ({v.get('lines', 0)} frames)\n")
    for site, f in s["sites"].items():
        w(f"  {site} ({f['gateway']}): {f['readings_signed']} signed, "
          f"{f['readings_stored']} stored, {f['frames_signed']} frames, "
          f"left in gateway outbox: {f.get('outbox_left', '?')}\n")
    w(f"test context: {s['test_context']}\n")
    a = s["alerts"]
    w(f"\nalerts: {a['total']}  by rule: "
      + (", ".join(f"{r} {n}" for r, n in sorted(a["by_rule"].items())) or "none") + "\n")
    for it in a["items"]:
        scope = f" test {it['test_id']}" if it.get("test_id") else ""
        w(f"  [{it['rule']} {it['severity']}] {it['site']}{scope}\n")
        w(f"      {it['summary_en']}\n      {it['summary_zh']}\n")
    off = s.get("offline") or {}
    if off:
        w(f"\nreproduced offline from frames.jsonl ({off.get('command')}): "
          f"{off.get('alerts_total', 0)} alerts, by rule: "
          + (", ".join(f"{r} {n}" for r, n in sorted(off.get("by_rule", {}).items()))
             or "none") + "\n")
    w("\nplanted patterns (ground truth) and what the detectors found (live / offline):\n")
    for p in s["scenario"]["planted"]:
        state = "test finished" if p["finished"] else "test cut short"
        live = ", ".join(p["alerts"]) or "no alert"
        offl = ", ".join(p["alerts_offline"]) or "no alert"
        w(f"  {p['rule']:<4} {p.get('test_id') or ''} ({p.get('method') or ''}, {state}): "
          f"live: {live}; offline: {offl}\n")
    for u in s["scenario"].get("unplanted_offline", []):
        w(f"  unplanted: {u['rule']} on {u['test_id']}: {u['summary_en']}\n")
    for p in s["scenario"]["stack_planted"]:
        found = f"alert {', '.join(p['alerts'])}" if p["alerts"] else "no alert"
        w(f"  {p['pattern']:<4} {p['site']} {p['instrument']} from {p['start_rel_s']:.0f} s: "
          f"{found}\n")
    if s.get("notes"):
        w("\nnotes:\n" + "".join(f"  - {n}\n" for n in s["notes"]))
    if s.get("problems"):
        w("\nPROBLEMS:\n" + "".join(f"  - {p}\n" for p in s["problems"]))
    w(f"\nresult: {'OK' if s['ok'] else 'FAILED'}\n")
