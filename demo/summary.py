"""summary.json: the run's figures, the planted patterns against the alerts, and what the
demo could not show (said, not hidden)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from demo import plan
from demo.report import count_frames, load_alerts, planted_vs_found, unplanted, verification
from stationseal.records import to_rfc3339

if TYPE_CHECKING:
    from demo.run import Demo

#: Findings the demo cannot show, and why.
LEFT_OUT = [
    "E1, E2, E3 (lockstep channels), E5, E7 judge hourly means over days to weeks of real "
    "hours: the gateway stamps readings in real time, so no compression of the simulated "
    "plant makes them observable in minutes.",
    "V10 (results clustered under the limit) needs dozens of station tests; V4/V7 are not "
    "in the default scenario (see --scenario); V2 rpm copying cannot be shown bit-identical "
    "through an analyzer whose rpm register holds whole rpm while OBD rpm has 0.25 rpm steps.",
]


def test_context_mode() -> str:
    if plan.lane_context_applied():
        return "lane controller readings (ingest/testcontext.py, applied by ingest)"
    return ("inferred from signals by the detectors: ingest does not apply the lane "
            "controller's context yet (ingest/testcontext.py exists, not hooked in), so the "
            f"lanes pause {plan.GAP_INFERRED[0]:.0f}-{plan.GAP_INFERRED[1]:.0f} s between "
            "tests for the detectors to tell tests apart (their test gap is 30 s of quiet)")


def _planted_lanes(demo: Demo) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not demo.t_go:
        return out
    stop = demo.t_stop or demo.t_go
    for driver in demo.lanes.values():
        for t in driver.tests():
            if t.patterns and t.start < stop:
                lab = t.label()
                lab["finished"] = not t.aborted and t.end <= stop
                out.append(lab)
    return out


def build(demo: Demo, scenario: plan.Scenario) -> dict[str, Any]:
    frames = count_frames(demo.p("frames.jsonl"))
    alerts = load_alerts(demo.p("alerts.jsonl"))
    ver = verification(demo.p("frames.jsonl"), demo.p("registry.json"),
                       demo.p("registry-authority.pub.pem"), demo.p("receipts.jsonl")) \
        if demo.p("registry.json").exists() else {"ok": False, "error": "no registry"}
    signed = sum(frames.readings.values())
    stored = sum(demo.stored.values())
    missing = {gw: n - demo.stored.get(gw, 0) for gw, n in frames.readings.items()
               if demo.stored.get(gw, 0) < n}
    sites: dict[str, Any] = {}
    for site, gw in ((plan.STATION, plan.STATION_GW), (plan.CEMS, plan.CEMS_GW)):
        sites[site] = {
            "gateway": gw, "frames_signed": frames.frames.get(gw, 0),
            "readings_signed": frames.readings.get(gw, 0),
            "readings_stored": demo.stored.get(gw, 0),
            "events_signed": frames.events.get(gw, 0),
            "outbox_left": demo.outbox_left.get(gw),
            "alerts_by_rule": dict(Counter(str(a.get("rule")) for a in alerts
                                           if a.get("site") == site)),
        }
    offline_alerts = load_alerts(demo.p("alerts-offline.jsonl"))
    lane_truth = _planted_lanes(demo)
    planted = planted_vs_found(lane_truth, alerts, offline_alerts)
    stack_planted = []
    for d in demo.stacks.values():
        if not demo.t_go:
            break
        for lab in d.labels():
            same = [a["id"] for a in alerts if a.get("rule") == lab["pattern"]
                    and a.get("site") == lab["site"]]
            stack_planted.append({**lab, "start_rel_s": lab["start"] - d.start, "alerts": same})
    for lab in demo.logger_labels:
        same = [a["id"] for a in alerts if a.get("rule") == lab["pattern"]
                and a.get("site") == lab["site"]
                and str(a.get("instrument", "")).startswith("logger")]
        stack_planted.append({**lab, "start_rel_s": lab["start"] - demo.t_go, "alerts": same})
    notes = [f"test context: {test_context_mode()}",
             f"demo detector parameters (config/PARAMS.yaml): {plan.detector_params(demo.seconds)}"]
    unfinished = sorted({p["rule"] for p in planted if not p["finished"]})
    if unfinished:
        notes.append(f"patterns planted in tests that had not finished when the lanes closed "
                     f"({', '.join(unfinished)}) need a longer run, e.g. make demo "
                     "DEMO_SECONDS=900")
    ok = (not demo.interrupted and bool(ver.get("ok")) and signed > 0 and not missing
          and frames.undecodable == 0 and not demo.problems)
    return {
        "schema": "stationseal-demo-summary/1",
        "ok": ok,
        "interrupted": demo.interrupted,
        "out": str(demo.out),
        "seconds": demo.seconds,
        "started": to_rfc3339(demo.t_go) if demo.t_go else None,
        "stopped": to_rfc3339(demo.t_stop) if demo.t_stop else None,
        "readings_signed": signed,
        "readings_stored": stored,
        "readings_missing": missing,
        "frames_signed": sum(frames.frames.values()),
        "frames_undecodable": frames.undecodable,
        "frames_rejected": None if demo.quarantine is None else sum(demo.quarantine.values()),
        "frames_rejected_by_reason": demo.quarantine,
        "verification": ver,
        "sites": sites,
        "test_context": test_context_mode(),
        "alerts": {
            "total": len(alerts),
            "by_rule": dict(Counter(str(a.get("rule")) for a in alerts)),
            "items": [{k: a.get(k) for k in ("id", "rule", "severity", "site", "instrument",
                                              "test_id", "start", "end", "summary_en",
                                              "summary_zh")} for a in alerts],
        },
        "offline": None if demo.offline is None else {
            **demo.offline, "alerts_total": len(offline_alerts),
            "by_rule": dict(Counter(str(a.get("rule")) for a in offline_alerts))},
        "scenario": {"vehicle": scenario.vehicle_text, "stack": scenario.stack_text,
                     "seconds_per_simulated_hour": demo.seconds_per_hour,
                     "planted": planted, "stack_planted": stack_planted,
                     "unplanted_live": unplanted(lane_truth, alerts, plan.STATION),
                     "unplanted_offline": unplanted(lane_truth, offline_alerts, plan.STATION)},
        "evidence": None if demo.evidence is None else {
            k: v for k, v in demo.evidence.items() if k != "items"} | {
            "not_accepted": [i for i in demo.evidence["items"]
                             if i.get("verdict") != "ACCEPTED"]},
        "left_out": LEFT_OUT,
        "notes": notes,
        "problems": demo.problems,
    }
