"""The agent in-process with fake instruments and the export-file uplink."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import FakeInstrument, file_agent, frames_of, make_keys, verify

from agent.run_cli import cmd_status
from agent.runtime import Agent
from agent.sdnotify import Notifier
from agent.status import format_status, read_status, status_path_for
from agent.uplink import FileTransport, backoff_delay
from stationseal.export import frames_topic, line_for

GW = "gw-file"


async def run_for(agent: Agent, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 20)


def test_file_output_restart_no_loss_and_verifies(tmp_path: Path) -> None:
    signer, reg = make_keys(tmp_path, GW)
    out = tmp_path / "export" / "frames.jsonl"
    produced = 0
    boots: list[str] = []
    for _run in range(2):
        good = FakeInstrument("ana-1", n=10, interval=0.02)
        bad = FakeInstrument("ana-2", n=5, interval=0.02, raise_on=lambda k: k % 5 == 0)
        agent = file_agent(tmp_path, signer, GW, [good, bad], out)
        asyncio.run(run_for(agent, 1.2))
        assert good.closed and bad.closed
        produced += good.produced + bad.produced
        assert agent.sealer is not None
        boots.append(agent.sealer.boot_id.hex())
        # a reader that raises costs its own polls only
        assert bad.polls > 20 and abs(good.polls - bad.polls) <= 3
    rep = verify(out, reg)
    assert rep.ok, rep.failures or rep.gateways[GW].issues
    frames = frames_of(out)
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert sum(len(f.readings) for f in frames) == produced  # nothing lost, nothing twice
    boot_events = [e for f in frames for e in f.events if e.kind == "gateway_boot"]
    assert [e.detail["previous_boot_id"] for e in boot_events] == [None, boots[0]]
    faults = [e for f in frames for e in f.events if e.instrument == "ana-2"
              and e.kind == "instrument_fault"]
    assert faults and "bug in reader" in faults[0].detail["error"]
    recovered = [e for f in frames for e in f.events if e.instrument == "ana-2"
                 and e.kind == "instrument_recovered"]
    assert len(recovered) >= len(faults) - 2  # each fault ends (bar one per run at stop)
    # batching: many readings per frame, not a frame per poll
    assert len(frames) < sum(len(f.readings) for f in frames) / 20


def test_status_file_and_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer, _ = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    agent = file_agent(tmp_path, signer, GW, [FakeInstrument("ana-1", n=3, interval=0.05)],
                       out)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.3)
        seen.update(read_status(status_path_for(agent.outbox_cfg.path)))
        stop.set()
        await task

    asyncio.run(scenario())
    doc = seen
    assert doc["gateway_id"] == GW
    inst = doc["instruments"]["ana-1"]
    assert inst["health"] == "ok" and set(inst["last"]) == {"s0", "s1", "s2"}
    assert doc["uplink"]["kind"] == "file" and doc["uplink"]["state"] == "connected"
    ob = doc["outbox"]
    assert {"frames", "bytes", "oldest_unsent_age_s", "dropped_frames"} <= set(ob)
    text = format_status(doc)
    assert "instrument ana-1: ok" in text and "uplink file" in text
    # after the stop the file is stale: the command says so with exit status 1
    ns = type("A", (), {"status_file": str(status_path_for(agent.outbox_cfg.path)),
                        "config": None, "json": True})()
    assert cmd_status(ns) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["running"] is False


def test_file_transport_cuts_torn_line_and_skips_frames_already_written(tmp_path: Path) -> None:
    """What a kill -9 between write+fsync and the outbox deletion leaves behind."""
    signer, reg = make_keys(tmp_path, GW)
    out = tmp_path / "frames.jsonl"
    agent = file_agent(tmp_path, signer, GW, [FakeInstrument("ana-1", n=4, interval=0.05)],
                       out)
    asyncio.run(run_for(agent, 0.8))
    lines = out.read_text().splitlines()
    assert len(lines) >= 3
    # Re-create the crash state: the last two frames are in the file but still in the
    # outbox (not deleted), and a torn half line follows them.
    frames = frames_of(out)
    import sqlite3

    db = sqlite3.connect(agent.outbox_cfg.path)
    db.executemany("INSERT INTO frames (seq, created, readings, hash, payload) "
                   "VALUES (?,?,?,?,?)",
                   [(f.seq, f.created, len(f.readings), f.frame_hash, f.payload)
                    for f in frames[-2:]])
    db.commit()
    db.close()
    with open(out, "a") as fh:
        fh.write(line_for(frames_topic(GW), frames[0].payload)[:40])
    agent2 = file_agent(tmp_path, signer, GW, [FakeInstrument("ana-1", n=4, interval=0.05)],
                        out)
    asyncio.run(run_for(agent2, 0.8))
    rep = verify(out, reg)
    assert rep.ok, rep.failures or rep.gateways[GW].issues  # no torn line, no duplicate
    seqs = [f.seq for f in frames_of(out)]
    assert seqs == sorted(set(seqs))


def test_file_transport_reports_write_errors_and_recovers(tmp_path: Path) -> None:
    """An unwritable export path is a link failure: frames wait in the outbox and are
    written, in order, once the path works."""
    signer, reg = make_keys(tmp_path, GW)
    blocker = tmp_path / "notadir"
    blocker.write_text("x")
    out = blocker / "frames.jsonl"  # parent is a file: open fails
    inst = FakeInstrument("ana-1", n=2, interval=0.05)
    agent = file_agent(tmp_path, signer, GW, [inst], out)
    agent.open()
    assert isinstance(agent.transport, FileTransport)
    agent.transport.retry_s = 0.2

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(0.8)
        assert agent.transport is not None and agent.outbox is not None
        st = agent.transport.state()
        assert st["state"] == "backoff" and "notadir" in str(st["last_error"])
        assert agent.outbox.frames >= 2
        blocker.unlink()
        blocker.mkdir()
        await asyncio.sleep(1.0)
        assert agent.transport.state()["state"] == "connected"
        stop.set()
        await task

    asyncio.run(scenario())
    rep = verify(out, reg)
    assert rep.ok, rep.failures or rep.gateways[GW].issues
    assert rep.gateways[GW].readings == inst.produced
    assert agent.outbox is not None and agent.outbox.frames == 0


def test_backoff_has_jitter_and_a_cap() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(a, 1.0, 60.0, rng) for a in range(1, 12) for _ in range(20)]
    assert max(delays) <= 60.0 and min(delays) >= 1.0
    late = [backoff_delay(10, 1.0, 60.0, rng) for _ in range(50)]
    assert len({round(d, 3) for d in late}) > 40  # spread out, not lock-step
    early = [backoff_delay(1, 1.0, 60.0, rng) for _ in range(50)]
    assert max(early) <= 2.0


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(path))
    srv.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000"})
    assert n.watchdog_s == 20.0
    assert n.ready("3 instruments")
    assert srv.recv(100) == b"READY=1\nSTATUS=3 instruments"
    assert n.watchdog()
    assert srv.recv(100) == b"WATCHDOG=1"
    n.close()
    srv.close()
    assert Notifier({}).ready() is False
