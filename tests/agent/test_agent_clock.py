"""The gateway's clock state is its own measurement against SNTP servers, sealed in every
frame, and every change of it is sealed as an event."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from agent_helpers import FakeInstrument, file_agent, frames_of, make_keys

from agent.clock import ClockMonitor, measure, sntp_offset
from agent.runtime import Agent
from sim.sntp import SntpServer


def test_measure_synced_unsynced_unknown() -> None:
    with SntpServer() as good, SntpServer(offset_s=5.0) as off, \
            SntpServer(unsynchronised=True) as lost:
        state, d = measure([good.address], 1.0)
        assert state == "synced" and abs(d["offset_s"]) < 0.5 and d["answered"] == 1
        state, d = measure([off.address], 1.0)
        assert state == "unsynced" and 4.5 < d["offset_s"] < 5.5
        # Both sides of the threshold.
        assert measure([off.address], 5.5)[0] == "synced"
        assert measure([off.address], 4.5)[0] == "unsynced"
        assert measure([lost.address], 1.0)[0] == "unsynced"
        # The median of three: one bad server does not decide.
        state, d = measure([good.address, off.address, good.address], 1.0)
        assert state == "synced" and d["answered"] == 3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never answers
        state, d = measure([dead], 1.0, timeout=0.3)
    assert state == "unknown" and d["answered"] == 0


def test_an_answer_must_echo_the_request() -> None:
    """A datagram that does not carry the request's transmit time is not an answer."""
    import threading

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]

        def forge() -> None:
            _, peer = srv.recvfrom(512)
            # Mode 4, stratum 2, but an originate timestamp of zeros.
            srv.sendto(bytes([0x24, 2]) + bytes(46), peer)

        t = threading.Thread(target=forge)
        t.start()
        with pytest.raises(ValueError, match="originate"):
            sntp_offset("127.0.0.1", port, 2.0)
        t.join()


def test_state_changes_are_sealed_once() -> None:
    c = ClockMonitor(sync_source=None)
    c.set_sync("synced", {"offset_s": 0.01})
    c.set_sync("synced", {"offset_s": 0.02})
    c.set_sync("unsynced", {"offset_s": 9.0})
    evs = c.take_events()
    assert [(e.kind, e.detail["state"], e.detail["previous"]) for e in evs] == [
        ("clock_state", "synced", "unknown"), ("clock_state", "unsynced", "synced")]
    assert c.take_events() == []


async def _run(agent: Agent, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


@pytest.mark.parametrize("offset,expect", [(0.0, "synced"), (30.0, "unsynced")])
def test_agent_seals_its_measured_clock_state(tmp_path: Path, offset: float,
                                             expect: str) -> None:
    signer, _ = make_keys(tmp_path, "gw-clock")
    out = tmp_path / "frames.jsonl"
    with SntpServer(offset_s=offset) as ntp:
        agent = file_agent(tmp_path, signer, "gw-clock", [FakeInstrument("ana-1", n=2)], out)
        agent.clock = ClockMonitor(sync_source=None)  # not the kernel's say-so
        agent.ntp_servers = [ntp.address]
        asyncio.run(_run(agent, 1.5))
        assert ntp.requests >= 1
    frames = frames_of(out)
    states = [f.clock_sync for f in frames]
    assert states[-1] == expect and states[0] in ("unknown", expect)
    ev = [e for f in frames for e in f.events if e.kind == "clock_state"]
    assert len(ev) == 1 and ev[0].detail["state"] == expect
    assert (abs(ev[0].detail["offset_s"] - offset) < 1.0)
