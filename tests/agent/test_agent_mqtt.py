"""The agent against the real broker (TLS, per-gateway credentials, ACL), in-process."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    FakeInstrument,
    FrameCollector,
    make_keys,
    mqtt_agent,
    report_text,
    verify,
)

from agent.dispatch import LIVE_CAP
from agent.runtime import RuntimeOptions
from agent.uplink import MqttTransport
from stack.manager import Credential, StackInfo, start_component, stop_component
from stationseal.frame import decode

#: Broker outage in the outage test: minutes, as a cellular dropout lasts.
OUTAGE_S = float(os.environ.get("STATIONSEAL_TEST_OUTAGE_S", "120"))

pytestmark = pytest.mark.stack


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def check_all_arrived(tmp: Path, col: FrameCollector, reg: Path, gw: str, last_seq: int,
                      produced: int) -> None:
    out = tmp / "received.jsonl"
    unique, _dups = col.write(out)
    rep = verify(out, reg)
    assert rep.ok, report_text(rep)
    g = rep.gateways[gw]
    assert (g.first_seq, g.last_seq, g.frames) == (1, last_seq, last_seq)
    assert g.readings == produced, "a reading was lost or sealed twice"
    assert unique == last_seq


def test_frames_birth_and_offline_status(tmp_path: Path, stack: StackInfo,
                                         new_gateway: Callable[..., Credential]) -> None:
    cred = new_gateway()
    gw = cred.username
    signer, reg = make_keys(tmp_path, gw)
    col = FrameCollector(stack, gw, f"col-{gw}")
    insts = [FakeInstrument("ana-1", 10, 0.05), FakeInstrument("ana-2", 10, 0.05)]
    agent = mqtt_agent(tmp_path, signer, stack, cred, insts)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await wait_until(lambda: len(col.status) >= 1, 10, "birth message")
        await asyncio.sleep(1.5)
        stop.set()
        await task

    asyncio.run(scenario())
    assert col.wait_for(lambda: len(col.status) >= 2, 10), "no offline status"
    birth = json.loads(col.status[0][0])
    assert birth["online"] is True
    assert agent.sealer is not None and birth["boot_id"] == agent.sealer.boot_id.hex()
    assert birth["key_id"] == signer.key_id and birth["gateway_id"] == gw
    assert {"agent_version", "config_hash", "profiles"} <= set(birth)
    offline = json.loads(col.status[-1][0])
    assert offline["online"] is False and offline["boot_id"] == birth["boot_id"]
    assert agent.outbox is not None
    check_all_arrived(tmp_path, col, reg, gw, agent.outbox.seq,
                      sum(i.produced for i in insts))
    # delivered frames are deleted from the outbox
    assert agent.outbox.frames == 0
    col.close()
    # the offline status is retained: a late subscriber sees it at once
    late = FrameCollector(stack, gw, f"late-{gw}")
    assert late.wait_for(lambda: bool(late.status), 5)
    payload, retained = late.status[0]
    assert retained and json.loads(payload)["online"] is False
    late.close()


def test_mutual_tls_client_certificate(tmp_path: Path, stack: StackInfo,
                                       new_gateway: Callable[..., Credential]) -> None:
    cred = new_gateway()
    gw = cred.username
    signer, reg = make_keys(tmp_path, gw)
    col = FrameCollector(stack, gw, f"col-{gw}")
    inst = FakeInstrument("ana-1", 5, 0.05)
    agent = mqtt_agent(tmp_path, signer, stack, cred, [inst], mtls=True)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.5)
        stop.set()
        await task

    asyncio.run(scenario())
    assert agent.outbox is not None
    last = agent.outbox.seq
    assert col.wait_for(lambda: last in col.seqs(), 10)
    check_all_arrived(tmp_path, col, reg, gw, last, inst.produced)
    col.close()


def test_frame_refused_by_acl_stays_in_outbox(tmp_path: Path, stack: StackInfo,
                                              new_gateway: Callable[..., Credential]) -> None:
    """MQTT 5 PUBACK 0x87: the frame is not deleted as if delivered."""
    cred = new_gateway()
    gw = cred.username
    signer, _ = make_keys(tmp_path, gw)
    inst = FakeInstrument("ana-1", 5, 0.05)
    agent = mqtt_agent(tmp_path, signer, stack, cred, [inst])
    make = agent.make_transport

    def wrong_topic(birth: dict[str, Any]) -> Any:
        t = make(birth)
        assert isinstance(t, MqttTransport)
        t.frames_topic = stack.topic("gw-test-1", "frames")  # another gateway's topic
        return t

    agent.make_transport = wrong_topic
    errors: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(2.0)
        assert agent.transport is not None
        errors.append(str(agent.transport.state()["last_error"]))
        stop.set()
        await task

    asyncio.run(scenario())
    assert "refused" in errors[0] and "authori" in errors[0].lower()
    assert agent.outbox is not None and agent.dispatcher is not None
    assert agent.dispatcher.delivered_frames == 0
    assert agent.outbox.frames == agent.outbox.seq  # every frame still queued


def test_broker_outage_loses_nothing_and_polling_goes_on(
        tmp_path: Path, make_stack: Callable[..., StackInfo]) -> None:
    gw = "gw-outage"
    info = make_stack(gateways=(gw,), name="outage")
    cred = info.gateway(gw)
    signer, reg = make_keys(tmp_path, gw)
    col = FrameCollector(info, gw, "col-outage")
    insts = [FakeInstrument(f"ana-{k}", 10, 0.1) for k in range(4)]
    # Back-off capped at 20 s so the reconnect after a two-minute outage is bounded.
    agent = mqtt_agent(tmp_path, signer, info, cred, insts,
                       options=RuntimeOptions(status_interval_s=0.5, reconnect_max_s=20.0))
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        assert agent is not None
        await wait_until(lambda: len(col.payloads) > 3, 10, "first frames")
        await asyncio.to_thread(stop_component, info.dir, "mosquitto")
        polls_at_stop = insts[0].polls
        seq_at_stop = agent.outbox.seq if agent.outbox else 0
        await asyncio.sleep(OUTAGE_S)
        assert agent.transport is not None and agent.outbox is not None
        seen["state"] = agent.transport.state()
        seen["polls_during"] = insts[0].polls - polls_at_stop
        seen["sealed_during"] = agent.outbox.seq - seq_at_stop
        seen["queued"] = agent.outbox.frames
        seen["received_before"] = len(col.payloads)
        target = seen["target"] = agent.outbox.seq
        await asyncio.to_thread(start_component, info.dir, "mosquitto")
        await wait_until(lambda: target in col.seqs() and agent.outbox is not None
                         and agent.outbox.frames <= agent.options.max_inflight, 90,
                         "backlog delivered")
        stop.set()
        await task

    asyncio.run(scenario())
    # polling went on at its rate while the broker was down
    assert seen["polls_during"] >= 7 * OUTAGE_S
    assert seen["state"]["state"] in ("backoff", "connecting")
    assert seen["state"]["last_error"]
    assert seen["sealed_during"] > 10 and seen["queued"] >= seen["sealed_during"]
    assert agent.outbox is not None
    last = agent.outbox.seq
    assert col.wait_for(lambda: last in col.seqs(), 10)
    check_all_arrived(tmp_path, col, reg, gw, last, sum(i.produced for i in insts))
    assert agent.transport is not None and agent.transport.state()["connects"] >= 2
    # Backfill policy: after the reconnect the newest frames (still in memory) go
    # first, then the backlog oldest first.
    after = [decode(p).seq for p in col.payloads[seen["received_before"]:]]
    newest = seen["target"] - LIVE_CAP
    assert after[0] > newest
    backlog = [s for s in after if s <= newest]
    assert backlog and backlog == sorted(backlog)
    col.close()
