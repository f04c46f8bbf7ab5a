"""Re-running the rule of an alert on records, and deciding whether it found the same thing.

Used at build time (to choose how much context a package needs) and by the verifier (to
decide whether the finding is reproduced from the package alone). "The same finding"
means: an alert with the same key (rule, site and instrument or test) whose interval
overlaps the packaged alert's interval. For integrity alerts (rule ``integrity``) the rule
is the chain check itself: the same chain issue kind at the same sequence number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evidence.records import Record
from ingest.detectors.base import SiteInfo
from ingest.detectors.engine import DetectionEngine
from stationseal.chain import ChainTracker, parse_drop
from stationseal.frame import Frame
from stationseal.records import from_rfc3339

#: Slack when comparing the reproduced interval with the packaged one (clock rounding).
SLACK_S = 1.0


@dataclass(slots=True)
class Reproduction:
    reproduced: bool
    alerts: list[dict[str, Any]]
    match: dict[str, Any] | None
    detail: str


def detectors_for(rule: str) -> list[str] | None:
    """The detector ids that can raise alerts of ``rule``: the rule itself, or detectors
    that say they raise it (the HJ 212 reconciliation raises E3 and E6); None: all."""
    import re

    from ingest.detectors import registry

    reg = registry.discover()
    out = [rule] if rule in reg.rules else []
    pat = re.compile(r"\(alerts [^)]*\b" + re.escape(rule) + r"\b")
    out += [rid for rid, info in reg.rules.items() if rid != rule and pat.search(info.title)]
    return out or None


def run_rules(records: list[Record], sites: dict[str, SiteInfo],
              params: dict[str, dict[str, Any]], rules: list[str] | None = None
              ) -> list[dict[str, Any]]:
    """Like ``stationseal detect`` (``--rules``): time order, stable for equal times.
    Only the detectors that can raise the alert need to run: each detector judges the
    records independently of the others."""
    engine = DetectionEngine(sites, {k: v for k, v in params.items()
                                     if rules is None or k in rules}, rules)
    order = sorted(range(len(records)), key=lambda i: records[i].time)
    for i in order:
        engine.feed(records[i])
    engine.finish()
    return [u.to_json() for u in engine.alerts()]


def chain_issues(frames: list[Frame]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    trackers: dict[str, ChainTracker] = {}
    for f in sorted(frames, key=lambda f: (f.gateway_id, f.seq)):
        t = trackers.setdefault(f.gateway_id, ChainTracker(f.gateway_id))
        conflict = f.seq in t.received
        new, issues = t.observe(f)
        out += [{"kind": i.kind, "gateway": f.gateway_id, "seq": i.seq} for i in issues]
        if new and not conflict:
            # Every signed drop is the ingest's integrity finding data_dropped (at the
            # frame carrying it), unless it covers nothing (then it is a bad_drop_event).
            out += [{"kind": "data_dropped", "gateway": f.gateway_id, "seq": f.seq}
                    for e in f.events if e.kind == "data_dropped"
                    and not isinstance(parse_drop(e, f.seq), str)]
    for gw, t in trackers.items():
        out += [{"kind": "gap", "gateway": gw, "seq": a} for a, _ in t.open_gaps()]
    return out


def matches(alert: dict[str, Any], found: dict[str, Any]) -> bool:
    if found.get("key") != alert.get("key"):
        return False
    a0, a1 = from_rfc3339(alert["start"]), from_rfc3339(alert["end"])
    b0, b1 = from_rfc3339(found["start"]), from_rfc3339(found["end"])
    return b0 <= a1 + SLACK_S and b1 >= a0 - SLACK_S


def reproduce(alert: dict[str, Any], records: list[Record], frames: list[Frame],
              sites: dict[str, SiteInfo], params: dict[str, dict[str, Any]]
              ) -> Reproduction:
    rule = str(alert.get("rule"))
    if rule == "integrity":
        ev = alert.get("evidence") or {}
        kind, gw, seq = ev.get("kind"), ev.get("gateway"), ev.get("seq")
        issues = chain_issues(frames)
        for i in issues:
            if i["kind"] == kind and i["gateway"] == gw and (seq is None or i["seq"] == seq):
                return Reproduction(True, issues, i, f"chain check finds {kind} at seq {seq}")
        return Reproduction(False, issues, None,
                            f"the chain check of the packaged frames finds no {kind} of "
                            f"{gw} at seq {seq}")
    found = run_rules(records, sites, params, detectors_for(rule))
    for a in found:
        if matches(alert, a):
            return Reproduction(True, found, a, f"{rule} fires again: {a.get('id')}")
    return Reproduction(False, found, None,
                        f"{rule} on the packaged records raises {len(found)} alert(s), none "
                        f"with key {alert.get('key')!r} over {alert.get('start')} .. "
                        f"{alert.get('end')}")
