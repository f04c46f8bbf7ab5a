"""End to end: the agent deletes a frame only when the ingest confirms it (docs/acks.md).

Real broker, real InfluxDB, the real agent runtime and ingest service in this process.
Each test is a failure the broker alone could not prevent: the ingest away for a while,
its persistent session lost at the broker, the broker killed with frames it had
acknowledged but not saved, a publish nobody subscribed to. In every case every
sequence number must end up in InfluxDB, and the agent's outbox must hold what the
ingest has not confirmed, not less.

The helpers (``AgentRun``, ``stored_seqs``) are meant for the long-running scenarios of
``make chaos`` too.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import FakeInstrument, FrameCollector, make_keys, mqtt_agent
from ingest_support import create_db, drop_session, influx_query, wait_for

from agent import uplink
from agent.runtime import Agent, RuntimeOptions
from ingest.config import config_from_stack
from ingest.service import IngestService
from stack.manager import Credential, StackInfo, start_component, stop_component
from stationseal.keys import generate_keypair

pytestmark = pytest.mark.stack


class AgentRun:
    """An agent running on its own event loop thread, with the seqs its transport was
    handed (a seq handed over twice was sent again)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.submitted: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_ev = asyncio.Event()
            self.agent.open()
            tr: Any = self.agent.transport
            orig = tr.submit

            def spy(gen: int, items: list[tuple[int, bytes]]) -> None:
                self.submitted += [s for s, _ in items]
                orig(gen, items)

            tr.submit = spy
            self._ready.set()
            await self.agent.run(self.stop_ev)

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # surfaced by stop()
            self.error = e
            self._ready.set()

    def start(self) -> AgentRun:
        self._thread.start()
        assert self._ready.wait(20)
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the agent's loop (the outbox is single-threaded)."""
        fut = asyncio.run_coroutine_threadsafe(_wrap(fn), self.loop)
        return fut.result(20)

    def outbox(self) -> tuple[int, int, int]:
        """(seq, frames in the outbox, frames awaiting the ingest)."""
        ob = self.agent.outbox
        assert ob is not None
        return self.call(lambda: (ob.seq, ob.frames, ob.awaiting()))  # type: ignore[no-any-return]

    def resent(self) -> set[int]:
        seen: set[int] = set()
        again: set[int] = set()
        for s in list(self.submitted):
            (again if s in seen else seen).add(s)
        return again

    def stop(self) -> None:
        if self.stop_ev is not None:
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self._thread.join(30)
        if self.error is not None:
            raise self.error


async def _wrap(fn: Callable[[], Any]) -> Any:
    return fn()


def stored_seqs(info: StackInfo, db: str, gw: str) -> set[int]:
    rows = influx_query(info.influx_url, db,
                        f"SELECT seq FROM \"frame\" WHERE gateway = '{gw}'")
    return {int(v[1]) for r in rows for v in r["values"]}


def _ingest(info: StackInfo, tmp: Path, reg: Path, db: str, account: str,
            **over: Any) -> IngestService:
    create_db(info.influx_url, db)
    cfg = config_from_stack(info, reg, tmp / "state", mqtt={"client_id": account},
                            influx={"database": db, "flush_interval_ms": 50},
                            registry_check_s=0.2, **over)
    return IngestService(cfg).start()


def _agent(tmp: Path, info: StackInfo, cred: Credential, *, confirm: str = "ingest",
           timeout_s: float = 30.0, interval: float = 0.2) -> AgentRun:
    signer, _ = make_keys(tmp, cred.username)
    opts = RuntimeOptions(status_interval_s=0.5, confirm=confirm,
                          confirm_timeout_s=timeout_s, unrouted_retry_s=0.5)
    agent = mqtt_agent(tmp, signer, info, cred, [FakeInstrument("ana-1", 3, interval)],
                       options=opts, batch_max_ms=100)
    return AgentRun(agent)


def _complete(info: StackInfo, db: str, gw: str, run: AgentRun, timeout: float) -> int:
    """Wait, with the agent still running (it is what recovers losses), until InfluxDB
    holds every seq sealed so far; then stop it and wait for the last few too."""
    target = run.outbox()[0]

    def check(last: int) -> bool:
        return stored_seqs(info, db, gw) >= set(range(1, last + 1))

    ok = wait_for(lambda: check(target), timeout, 0.5)
    run.stop()
    last = run.agent.outbox.seq if run.agent.outbox else 0
    ok = ok and wait_for(lambda: check(last), 30, 0.5)
    missing = sorted(set(range(1, last + 1)) - stored_seqs(info, db, gw))
    assert ok, f"seqs never stored: {missing[:20]} ({len(missing)} of {last})"
    return last


def test_outbox_keeps_frames_until_the_ingest_confirms(
        tmp_path: Path, stack: StackInfo, new_gateway: Callable[..., Credential]) -> None:
    cred = new_gateway()
    gw = cred.username
    run = _agent(tmp_path, stack, cred)
    reg = tmp_path / "registry.json"
    acct = "ingest-e2e-confirm"
    central = generate_keypair("central", tmp_path / "central")
    custody = {"key_file": str(central.private_key), "checkpoint_interval_s": 1.0}
    svc = _ingest(stack, tmp_path, reg, "t_e2e_confirm", acct, custody=custody)
    # What the agent receives on its acks topic (only it may read it: ACL).
    seen: list[dict[str, Any]] = []
    orig_parse = uplink.parse_acks

    def spy(payload: bytes, gateway_id: str) -> list[tuple[int, bytes]]:
        seen.append(json.loads(payload))
        return orig_parse(payload, gateway_id)

    uplink.parse_acks = spy  # type: ignore[assignment]
    run.start()
    try:
        assert wait_for(lambda: len(stored_seqs(stack, "t_e2e_confirm", gw)) >= 10, 30)
        # Acknowledgements name (seq, hash) pairs; the latest signed checkpoint rides along
        # once per change, not in every message.
        assert wait_for(lambda: any("checkpoint" in d for d in seen), 15), seen[:3]
        assert all(d["gateway_id"] == gw and d["v"] == 1 for d in seen)
        n_cp = sum(1 for d in seen if "checkpoint" in d)
        assert n_cp < len(seen)
        # Confirmed frames leave the outbox: only the last moments' frames remain.
        assert wait_for(lambda: run.outbox()[1] <= 5, 15), run.outbox()
        assert svc.metrics.get("acks_published_total", result="ok") > 0
        assert svc.metrics.get("acks_published_total", result="refused") == 0
        svc.stop()
        # The broker accepts everything (the ingest's persistent session queues it), yet
        # the agent keeps it all: nobody has confirmed it.
        seq0 = run.outbox()[0]
        assert wait_for(lambda: run.outbox()[0] >= seq0 + 15, 20)
        seq, frames, awaiting = run.outbox()
        assert frames >= seq - seq0 and awaiting >= 10, (seq, seq0, frames, awaiting)
        st = run.call(run.agent.status)
        assert st["outbox"]["awaiting_confirmation"] >= 10
        assert st["uplink"]["confirm"] == "ingest"
        svc = _ingest(stack, tmp_path, reg, "t_e2e_confirm", acct)
        assert wait_for(lambda: run.outbox()[1] <= 5, 30), run.outbox()
        last = _complete(stack, "t_e2e_confirm", gw, run, 30)
        assert not run.resent(), "nothing was lost, so nothing needed sending again"
        assert last >= 25
    finally:
        uplink.parse_acks = orig_parse  # type: ignore[assignment]
        run.stop()
        svc.stop()
        drop_session(stack, acct)


def test_lost_ingest_session_is_alerted_and_resent(
        tmp_path: Path, stack: StackInfo, new_gateway: Callable[..., Credential]) -> None:
    """The broker forgets the ingest's session while the ingest is away (here the ingest's
    own account connects with a clean start, as a broker restored without its state
    would): frames queued in it are gone, later ones find no subscriber (PUBACK 0x10).
    The ingest notices on reconnect (session present = 0) and raises an integrity alert;
    the agent, holding everything unconfirmed, sends it again: nothing is lost."""
    cred = new_gateway()
    gw = cred.username
    run = _agent(tmp_path, stack, cred, timeout_s=10.0)
    reg = tmp_path / "registry.json"
    acct = "ingest-e2e-lost"
    alerts = tmp_path / "alerts.jsonl"
    db = "t_e2e_lost"
    svc = _ingest(stack, tmp_path, reg, db, acct, alerts={"jsonl": str(alerts)})
    run.start()
    try:
        assert wait_for(lambda: len(stored_seqs(stack, db, gw)) >= 5, 30)
        svc.stop()
        time.sleep(2.0)  # frames queued in the session
        drop_session(stack, acct)  # ... and the session is gone, with them
        time.sleep(2.0)  # frames with no subscriber at all: 0x10
        assert run.agent.dispatcher is not None
        assert wait_for(lambda: run.agent.dispatcher.unrouted_frames > 0, 10)
        svc = _ingest(stack, tmp_path, reg, db, acct, alerts={"jsonl": str(alerts)})
        last = _complete(stack, db, gw, run, 60)
        assert run.resent(), "the lost frames must have been sent again"
        assert wait_for(lambda: svc.metrics.get("sessions_lost_total") == 1, 10)
        assert wait_for(lambda: alerts.exists() and "mqtt_session_lost" in alerts.read_text(),
                        10)
        doc = next(json.loads(x) for x in alerts.read_text().splitlines()
                   if "mqtt_session_lost" in x)
        assert doc["severity"] == "high" and acct in doc["summary_en"]
        assert last > 10
    finally:
        run.stop()
        svc.stop()
        drop_session(stack, acct)


def test_no_matching_subscribers_is_not_a_delivery(
        tmp_path: Path, stack: StackInfo, new_gateway: Callable[..., Credential]) -> None:
    """Even when confirming by broker PUBACK: reason 0x10 used to delete the frame."""
    cred = new_gateway()
    gw = cred.username
    run = _agent(tmp_path, stack, cred, confirm="broker")
    run.start()
    col: FrameCollector | None = None
    try:
        assert wait_for(lambda: run.outbox()[0] >= 10, 20)
        assert run.agent.dispatcher is not None
        assert run.agent.dispatcher.unrouted_frames > 0
        seq, frames, _ = run.outbox()
        assert frames >= seq - 1, (seq, frames)  # nothing deleted without a subscriber
        col = FrameCollector(stack, gw, f"col-e2e-{gw}")
        # Sent again once someone subscribes (each after its back-off): all arrive.
        target = run.outbox()[0]
        col.wait_for(lambda: set(range(1, target + 1)) <= col.seqs(), 60)
        assert set(range(1, target + 1)) <= col.seqs(), \
            sorted(set(range(1, target + 1)) - col.seqs())
        assert wait_for(lambda: run.outbox()[1] <= 5, 30), run.outbox()
    finally:
        run.stop()
        if col is not None:
            col.close()


def test_broker_crash_with_ingest_away_loses_nothing(tmp_path: Path, make_stack: Any) -> None:
    """kill -9 of the broker while the ingest is away: what the broker had acknowledged
    since its last save is gone from it (Mosquitto saves every AUTOSAVE_INTERVAL s), but
    the gateway still holds it and sends it again once later frames are confirmed."""
    info = make_stack(gateways=("gw-crash",), name="crash")
    cred = info.gateway("gw-crash")
    run = _agent(tmp_path, info, cred, timeout_s=60.0, interval=0.1)
    reg = tmp_path / "registry.json"
    acct = "ingest-crash"
    db = "t_e2e_crash"
    svc = _ingest(info, tmp_path, reg, db, acct)
    run.start()
    mlog = info.dir / "mosquitto" / "mosquitto.log"

    def saves() -> int:
        return mlog.read_text(errors="replace").count("Saving in-memory database")

    try:
        assert wait_for(lambda: len(stored_seqs(info, db, "gw-crash")) >= 5, 30)
        svc.stop()
        # Kill 1 s after a save: frames the broker acknowledged in that second exist
        # only in its memory.
        n = saves()
        assert wait_for(lambda: saves() > n, 15, 0.05)
        time.sleep(1.0)
        before_kill = run.outbox()[0]
        stop_component(info.dir, "mosquitto", kill=True)
        time.sleep(1.0)
        start_component(info.dir, "mosquitto")
        svc = _ingest(info, tmp_path, reg, db, acct)
        last = _complete(info, db, "gw-crash", run, 120)
        resent = run.resent()
        lost_at_broker = {s for s in resent if s <= before_kill}
        print(f"broker crash: {last} frames, {len(lost_at_broker)} acknowledged by the broker "
              f"and lost in the crash, all sent again and stored")
        assert lost_at_broker, "the crash lost nothing: the scenario did not test anything"
    finally:
        run.stop()
        svc.stop()
