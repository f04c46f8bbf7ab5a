"""`python -m demo` end to end, shortened: every signed reading stored, the evidence file
verifies, planted patterns that complete within the run are alerted, nothing is left
running."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import stack_binaries_missing

# The demo package lives at the repository root and runs as `python -m demo` from there
# (it is not part of the installed distribution), so the test runs it the same way.
ROOT = Path(__file__).resolve().parents[1]
SECONDS = 50
STATION, STATION_GW = "demo-station", "gw-demo-station"
CEMS, CEMS_GW = "demo-cems", "gw-demo-cems"


def _pids_with(text: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append(int(p.name))
    return pids


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    missing = stack_binaries_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    proc = subprocess.run([sys.executable, "-m", "demo", "--seconds", str(SECONDS),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return out, proc


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.timeout(300)
def test_demo_stores_and_verifies_every_signed_reading(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = demo_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert s["ok"] and not s["problems"]
    assert s["readings_signed"] > 1000
    assert s["readings_stored"] == s["readings_signed"]
    assert s["frames_rejected"] == 0
    assert s["verification"]["ok"]
    assert set(s["verification"]["gateways"]) == {STATION_GW, CEMS_GW}
    for site in s["sites"].values():
        assert site["readings_signed"] > 0
        assert site["readings_stored"] == site["readings_signed"]
        assert site["outbox_left"] == 0
    for name in ("frames.jsonl", "registry.json", "alerts.jsonl"):
        assert (out / name).stat().st_size > 0
    assert "OK" in proc.stdout.splitlines()[-1]
    # the offline verifier a third party would run agrees, also judged on the centre's
    # receipts (first arrival of every frame)
    assert s["verification"]["receipts"]
    v = subprocess.run([sys.executable, "-m", "stationseal.cli", "verify",
                        str(out / "frames.jsonl"), "--registry", str(out / "registry.json"),
                        "--authority", str(out / "registry-authority.pub.pem"),
                        "--receipts", str(out / "receipts.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr
    # a deployed gateway measures its clock: the demo's say so (SNTP on loopback)
    frames = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines() if x]
    from stationseal.frame import decode

    states = [decode(base64.b64decode(x["payload"])).clock_sync for x in frames]
    assert states.count("synced") >= len(states) - 4, states[:10]


@pytest.mark.slow
@pytest.mark.stack
def test_demo_alerts_the_planted_patterns(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = demo_run
    alerts = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines() if x]
    rules = {(a["rule"], a["site"]) for a in alerts}
    # stack patterns (samples, events) and the tampering HJ 212 logger: shown in any run
    assert {("E4", CEMS), ("E8", CEMS), ("E3", CEMS)} <= rules
    s = json.loads((out / "summary.json").read_text())
    finished = [p for p in s["scenario"]["planted"] if p["finished"]]
    assert {p["rule"] for p in finished} >= {"V8", "V9", "V5"}
    # reproduced by a third party from frames.jsonl, with the lane controller's context:
    # every planted pattern of a finished test alerted on its test, and nothing else
    assert s["offline"]["exit_status"] == 0 and s["offline"]["frames_not_verified"] == 0
    for p in finished:
        assert p["matched_by_offline"] == "test", p
    assert s["scenario"]["unplanted_offline"] == []
    if s["test_context"].startswith("lane controller"):  # ingest applies it live too
        # Live, the per-test analyzer and dyno rules must hit their tests. V9 judges the
        # station's shared weather instrument and, in a run this short, can be merged into
        # or miss the first test live; the offline re-run above holds it to its test.
        live = {p["rule"] for p in finished if p["matched_by"] == "test"}
        assert live >= {p["rule"] for p in finished} & {"V1", "V3", "V5", "V8"}, finished
    for a in alerts:
        assert a["summary_en"] and a["summary_zh"]


@pytest.mark.slow
@pytest.mark.stack
def test_demo_leaves_nothing_running(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = demo_run
    assert _pids_with(str(out)) == []
    assert json.loads((out / "run" / "children.json").read_text()) == []


@pytest.mark.slow
@pytest.mark.stack
@pytest.mark.timeout(300)
def test_demo_builds_an_accepted_evidence_package_for_every_alert(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "evidence"))
    from test_report import check_pages_and_plots

    from evidence.verify import verify_package

    out, _ = demo_run
    s: dict[str, Any] = json.loads((out / "summary.json").read_text())
    ev = s["evidence"]
    assert ev["packages"] == len({a["id"] for a in s["alerts"]["items"]}) > 0
    assert ev["accepted"] == ev["packages"] and not ev["not_accepted"], ev
    index = json.loads((out / "evidence" / "index.json").read_text())
    pub = (out / "keys" / "central.pub.pem").read_bytes()
    for item in index["items"]:
        pkg = out / item["package"]
        assert verify_package(pkg, pub, str(out / "registry-authority.pub.pem")).ok, item
        alert = json.loads((pkg / "alert.json").read_text())
        check_pages_and_plots(pkg, [str(alert["rule"]), alert["summary_zh"][:6],
                                    alert["summary_en"][:20]])
