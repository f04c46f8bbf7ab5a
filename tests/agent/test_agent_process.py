"""The real `stationseal agent run` process against Modbus simulators and the broker:
kill -9 and restart lose no sequence number; malformed answers become events."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import FrameCollector, frames_of, make_keys, report_text, verify
from sim_helpers import SimLoop, mqtt_uplink, site_config, tcp_instrument

from sim.faults import Fault
from stack.manager import Credential, StackInfo

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def agent_proc(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "STATIONSEAL_LOG_LEVEL": "INFO"}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "stationseal.cli", "agent", "run", "--config", str(config),
         *extra],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=env)


def status_cmd(config: Path) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "agent", "status",
                        "--config", str(config), "--json"], capture_output=True, timeout=30)
    return r.returncode, json.loads(r.stdout) if r.stdout else {}


def wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_kill9_restart_loses_no_frame_and_faults_are_events(
        tmp_path: Path, stack: StackInfo, new_gateway: Callable[..., Credential]) -> None:
    cred = new_gateway()
    gw = cred.username
    _, reg = make_keys(tmp_path, gw)
    key_file = tmp_path / "keys" / f"{gw}.key"
    sims = SimLoop()
    try:
        # the analyzer answers garbage, then an exception, then nothing, at known times
        bad_faults = [Fault("garbage", 1.5, 2.5), Fault("exception", 3.0, 4.0, code=2),
                      Fault("timeout", 7.0, 8.0)]
        ports = {"cems-1": sims.start("cems-1", "stack_cems", bad_faults),
                 "aq-1": sims.start("aq-1", "air_quality"),
                 "water-1": sims.start("water-1", "water_analyzer")}
        insts = [tcp_instrument("cems-1", "stack_cems", ports["cems-1"]),
                 tcp_instrument("aq-1", "air_quality", ports["aq-1"]),
                 tcp_instrument("water-1", "water_analyzer", ports["water-1"], 0.2)]
        config = site_config(tmp_path, gateway_id=gw, key_file=key_file, instruments=insts,
                             uplink=mqtt_uplink(tmp_path, stack, cred))
        col = FrameCollector(stack, gw, f"col-{gw}")
        log = tmp_path / "agent.log"

        first = agent_proc(config, log)
        wait(lambda: len(col.payloads) >= 5, 20, "frames from the first run")
        rc, st = status_cmd(config)
        assert rc == 0 and st["running"] is True, st
        assert set(st["instruments"]) == {"cems-1", "aq-1", "water-1"}
        time.sleep(2.5)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # the broker publishes the will for the vanished gateway (retained)
        assert col.wait_for(lambda: any(not json.loads(p)["online"] for p, _ in col.status),
                            10), "no last-will offline status after kill -9"
        second = agent_proc(config, log)
        wait(lambda: len(col.status) >= 3, 20, "birth message of the second run")
        time.sleep(5)
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, log.read_text()[-3000:]
        rc, st = status_cmd(config)
        assert rc == 1 and st["running"] is False
        last_seq = int(st["outbox"]["seq"])
        assert col.wait_for(lambda: last_seq in col.seqs(), 15), "last frame not received"
    finally:
        sims.close()
    out = tmp_path / "received.jsonl"
    unique, _ = col.write(out)
    col.close()
    rep = verify(out, reg)
    assert rep.ok, report_text(rep)
    g = rep.gateways[gw]
    # every sequence number arrived, across the kill: no gap, no reuse (verify: no
    # sequence_reset, no fork), and the chain links through the restart
    assert (g.first_seq, g.last_seq, g.frames) == (1, last_seq, last_seq) == \
        (1, last_seq, unique)
    assert len(g.boots) == 2
    frames = frames_of(out)
    boots = [e for f in frames for e in f.events if e.kind == "gateway_boot"]
    assert len(boots) == 2 and boots[1].detail["previous_boot_id"] == frames[0].boot_id.hex()
    # malformed answers and the silence are events of that instrument, not crashes
    kinds = {e.kind for f in frames for e in f.events if e.instrument == "cems-1"}
    assert {"malformed_response", "instrument_recovered"} <= kinds
    assert "instrument_fault" in kinds
    # and the other instruments kept delivering throughout
    aq_times = sorted(r.time for f in frames for r in f.readings if r.instrument == "aq-1")
    cems_times = sorted(r.time for f in frames for r in f.readings if r.instrument == "cems-1")
    assert len(aq_times) > 50 and len(cems_times) > 20
    gaps = [b - a for a, b in itertools.pairwise(aq_times)]
    restart_gap = max(gaps)
    assert sorted(gaps)[-2] < 1.0, "aq-1 stalled while cems-1 misbehaved"
    assert restart_gap < 10.0


def test_agent_run_file_output_and_usage_errors(tmp_path: Path) -> None:
    gw = "gw-file-proc"
    _, reg = make_keys(tmp_path, gw)
    sims = SimLoop()
    try:
        port = sims.start("aq-1", "air_quality")
        config = site_config(tmp_path, gateway_id=gw, key_file=tmp_path / "keys" / f"{gw}.key",
                             instruments=[tcp_instrument("aq-1", "air_quality", port)],
                             uplink={"type": "file", "path": str(tmp_path / "unused.jsonl")})
        out = tmp_path / "export" / "frames.jsonl"
        p = agent_proc(config, tmp_path / "agent.log", "--output", f"file:{out}")
        wait(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, 20, "frames")
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        sims.close()
    rep = verify(out, reg)
    assert rep.ok, report_text(rep)
    assert not (tmp_path / "unused.jsonl").exists()
    # a bad --output and a second agent on the same outbox are usage errors (exit 2)
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "agent", "run", "--config",
                        str(config), "--output", "mqtt:x"], capture_output=True, timeout=30)
    assert r.returncode == 2 and b"file:PATH" in r.stderr
    from agent.outbox import Outbox

    held = Outbox(tmp_path / "state" / "outbox.sqlite", gateway_id=gw, max_bytes=2**20,
                  max_age_s=1e6)
    try:
        r = subprocess.run([sys.executable, "-m", "stationseal.cli", "agent", "run",
                            "--config", str(config)], capture_output=True, timeout=30)
        assert r.returncode == 2 and b"another agent" in r.stderr
    finally:
        held.close()
