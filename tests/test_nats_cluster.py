"""Partitioned scale-out on a real three-node NATS JetStream cluster (stack/nats.py,
ingest/nats_source.py): gateways publish MQTT 3.1.1 to the cluster, ingest workers
consume partitions, and a killed worker, a killed node or a day of backfill lose
nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ingest_support import (
    Gateway,
    create_db,
    gateway_publisher,
    influx_count,
    influx_query,
    publish_all,
    wait_for,
)

from ingest.config import config_from_stack, dump_config
from ingest.metrics import fetch
from ingest.nats_source import owner_of, partition_of
from stack import nats as sn
from stack.manager import StackInfo, down, stop_component, up
from stationseal.keys import KeyRegistry

pytestmark = [pytest.mark.stack, pytest.mark.slow]

READINGS = 10


@pytest.fixture
def nats_stack(tmp_path: Path) -> Iterator[StackInfo]:
    d = tmp_path / "nats-stack"
    gws = [f"ngw{i}" for i in range(8)]
    info = up(d, gws, broker="nats", timeout=60)
    try:
        yield info
    finally:
        down(d)


def _config(info: StackInfo, tmp: Path, reg: Path, *, workers: int, db: str) -> Path:
    create_db(info.influx_url, db)
    cfg = config_from_stack(
        info, reg, tmp / "state", influx={"database": db},
        shard={"count": workers}, nats={"lease_ttl_s": 3.0, "fetch_batch": 200})
    p = tmp / "central.yaml"
    p.write_text(yaml.safe_dump(dump_config(cfg)))
    return p


def _worker(cfg: Path, k: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "stationseal.cli", "ingest", "run", "--config", str(cfg),
         "--shard", str(k)], stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def _health(state: Path, k: int) -> dict[str, Any] | None:
    try:
        port = json.loads((state / "run" / f"worker-{k}.json").read_text())["metrics_port"]
        _, text = fetch(f"http://127.0.0.1:{port}/healthz")
        return dict(json.loads(text))
    except (OSError, ValueError, KeyError):
        return None


def _owned(state: Path, k: int) -> list[int]:
    h = _health(state, k)
    return list(h.get("nats_partitions", [])) if h else []


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _gateways(info: StackInfo, tmp: Path) -> tuple[list[Gateway], Path]:
    reg = KeyRegistry()
    gws = [Gateway(g, tmp / "keys" / g, reg) for g in sorted(info.gateways)]
    path = tmp / "registry.json"
    reg.save(path)
    return gws, path


def _integrity(info: StackInfo, db: str, kinds: tuple[str, ...]) -> int:
    where = " OR ".join(f"\"kind\" = '{k}'" for k in kinds)
    rows = influx_query(info.influx_url, db, f'SELECT count("count") FROM "integrity" '
                                             f"WHERE {where}")
    return sum(int(s["values"][0][1]) for s in rows)


def test_partition_mapping_matches_the_cluster(nats_stack: StackInfo) -> None:
    """The ingest's partition_of is the cluster's partition(P,1): a frame published over
    MQTT lands on exactly the subject the ingest expects; a gateway cannot publish
    another gateway's frames, and a wrong partition subject is refused at the ingest."""
    info = nats_stack
    parts = int(info.nats["partitions"])  # type: ignore[index]

    async def subjects() -> list[str]:
        import nats

        nc = await nats.connect(sn.client_urls(info), user="ingest",
                                password=info.ingest.password(), tls=info.tls_context())
        js = nc.jetstream()
        sub = await js.pull_subscribe("stationseal.frames.>", stream=sn.STREAM)
        msgs = await sub.fetch(10, timeout=5)
        out = [m.subject for m in msgs]
        await nc.close()
        return out

    pub = gateway_publisher(info, "ngw3")
    publish_all(pub, [("stationseal/v1/ngw3/frames", b"x"), ("stationseal/v1/ngw4/frames", b"y")])
    pub.disconnect()
    pub.loop_stop()
    got = asyncio.run(subjects())
    assert got == [f"stationseal.frames.{partition_of('ngw3', parts)}.ngw3"]
    # Rendezvous hashing moves only the departed member's partitions.
    before = {p: owner_of(p, ["a", "b", "c"]) for p in range(parts)}
    after = {p: owner_of(p, ["a", "c"]) for p in range(parts)}
    assert {p for p in range(parts) if before[p] != after[p]} == \
        {p for p in range(parts) if before[p] == "b"}


def test_worker_killed_partitions_move_nothing_lost(nats_stack: StackInfo,
                                                    tmp_path: Path) -> None:
    info = nats_stack
    gws, reg = _gateways(info, tmp_path)
    cfg = _config(info, tmp_path, reg, workers=2, db="nats_kill_worker")
    state = tmp_path / "state"
    procs = [_worker(cfg, k, tmp_path / f"w{k}.log") for k in range(2)]
    try:
        # Both workers hold part of the 16 partitions, none twice.
        assert wait_for(lambda: len(_owned(state, 0)) + len(_owned(state, 1)) == 16
                        and _owned(state, 0) and _owned(state, 1), 60), \
            (tmp_path / "w0.log").read_text()[-3000:]
        assert not set(_owned(state, 0)) & set(_owned(state, 1))
        victim = _owned(state, 1)
        frames_per_gw = 150
        pubs = {g.id: gateway_publisher(info, g.id) for g in gws}
        sent: list[Any] = []

        # Frames keep coming while worker 1 is killed half-way through.
        def publish(n: int) -> None:
            for _ in range(n):
                for g in gws:
                    f = g.next_frame(READINGS)
                    sent.append(pubs[g.id].publish(g.topic, f.payload, qos=1))
                time.sleep(0.01)
        publish(frames_per_gw // 2)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        publish(frames_per_gw - frames_per_gw // 2)
        for i in sent:
            i.wait_for_publish(60)
        expected = len(gws) * frames_per_gw * READINGS
        assert wait_for(lambda: influx_count(info.influx_url, "nats_kill_worker")
                        == expected, 120), (
            influx_count(info.influx_url, "nats_kill_worker"), expected,
            (tmp_path / "w0.log").read_text()[-3000:])
        # The survivor took over the dead worker's partitions.
        assert set(victim) <= set(_owned(state, 0))
        assert len(_owned(state, 0)) == 16
        # Taken over in stream order from the acknowledgement floor: no gaps or forks.
        assert _integrity(info, "nats_kill_worker", ("gap", "fork", "replay",
                                                      "sequence_reset")) == 0
        for c in pubs.values():
            c.disconnect()
            c.loop_stop()
    finally:
        _stop(procs)


async def _stream_state(info: StackInfo) -> tuple[int, str]:
    import nats

    nc = await nats.connect(sn.client_urls(info), user="ingest",
                            password=info.ingest.password(), tls=info.tls_context(),
                            max_reconnect_attempts=5)
    try:
        js = nc.jetstream(timeout=10)
        si = await js.stream_info(sn.STREAM)
        return si.state.messages, si.cluster.leader if si.cluster else ""
    finally:
        await nc.close()


def test_stream_survives_a_killed_node(nats_stack: StackInfo, tmp_path: Path) -> None:
    """Frames stored before the stream leader's node is killed are all still there, and
    frames published through a surviving node while it is down are stored too."""
    info = nats_stack
    gws, reg = _gateways(info, tmp_path)
    cfg = _config(info, tmp_path, reg, workers=1, db="nats_kill_node")
    n0, _ = asyncio.run(_stream_state(info))
    before = 50
    _publish(info, gws, before)
    assert wait_for(lambda: asyncio.run(_stream_state(info))[0] >= n0 + before * len(gws), 60), \
        (asyncio.run(_stream_state(info)), n0)
    _, leader = asyncio.run(_stream_state(info))
    victim = f"nats-{leader[1:]}"
    stop_component(info.dir, victim, kill=True)
    # Gateways reach a node that is still up (the one the victim is not).
    alive_port = next(p for i, p in enumerate(sn.mqtt_ports(info), 1) if f"nats-{i}" != victim)
    live = StackInfo(**{**{k: getattr(info, k) for k in info.__dataclass_fields__},
                        "mqtt_port": alive_port})
    assert wait_for(lambda: _leader_elected(info, leader), 60)
    procs = [_worker(cfg, 0, tmp_path / "w0.log")]
    try:
        after = 50
        _publish(live, gws, after)
        expected = len(gws) * (before + after) * READINGS
        assert wait_for(lambda: influx_count(info.influx_url, "nats_kill_node") == expected,
                        120), (influx_count(info.influx_url, "nats_kill_node"), expected,
                               (tmp_path / "w0.log").read_text()[-3000:])
        assert _integrity(info, "nats_kill_node", ("gap", "fork")) == 0
    finally:
        _stop(procs)


def _connect(info: StackInfo, gw: str, timeout: float = 90) -> Any:
    """A gateway connection, retried as an agent would: right after a node dies the
    cluster answers MQTT CONNECTs only once the MQTT session streams have new leaders."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return gateway_publisher(info, gw)
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _publish(info: StackInfo, gws: list[Gateway], n: int) -> None:
    """``n`` frames per gateway, each gateway on its own connection, all acknowledged."""
    for g in gws:
        c = _connect(info, g.id)
        publish_all(c, [(g.topic, g.next_frame(READINGS).payload) for _ in range(n)])
        c.disconnect()
        c.loop_stop()


def _leader_elected(info: StackInfo, old: str) -> bool:
    try:
        _, leader = asyncio.run(_stream_state(info))
    except Exception:
        return False
    return bool(leader) and leader != old


def test_gateway_backfilling_a_day(nats_stack: StackInfo, tmp_path: Path) -> None:
    """A gateway back from a day offline sends its outbox (one frame per 10 s for 24 h)
    while another keeps sending live: both arrive complete and in order."""
    info = nats_stack
    gws, reg = _gateways(info, tmp_path)
    back, live = gws[0], gws[1]
    cfg = _config(info, tmp_path, reg, workers=2, db="nats_backfill")
    procs = [_worker(cfg, k, tmp_path / f"w{k}.log") for k in range(2)]
    try:
        day = 8640
        start = time.time() - 86400
        frames = [back.next_frame(READINGS, created=start + 10 * i).payload
                  for i in range(day)]
        stop_live = threading.Event()
        live_frames = [0]

        def live_loop() -> None:
            c = gateway_publisher(info, live.id)
            while not stop_live.is_set():
                c.publish(live.topic, live.next_frame(READINGS).payload, qos=1)
                live_frames[0] += 1
                time.sleep(0.2)
            publish_all(c, [])
            c.disconnect()
            c.loop_stop()

        t = threading.Thread(target=live_loop)
        t.start()
        c = gateway_publisher(info, back.id)
        for i in range(0, day, 500):
            publish_all(c, [(back.topic, p) for p in frames[i:i + 500]], timeout=120)
        c.disconnect()
        c.loop_stop()
        stop_live.set()
        t.join()
        db = "nats_backfill"
        assert wait_for(lambda: influx_count(info.influx_url, db, f"WHERE gateway = '{back.id}'")
                        == day * READINGS, 300), influx_count(
                            info.influx_url, db, f"WHERE gateway = '{back.id}'")
        assert wait_for(lambda: influx_count(info.influx_url, db, f"WHERE gateway = '{live.id}'")
                        == live_frames[0] * READINGS, 60)
        assert _integrity(info, db, ("gap", "fork", "replay", "sequence_reset")) == 0
    finally:
        _stop(procs)


def test_stack_refuses_dotted_gateway_ids_on_nats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dots"):
        up(tmp_path / "s", ["gw.1"], broker="nats")
    assert not (tmp_path / "s" / "stack.json").exists()


def test_agent_falls_back_to_mqtt_311_and_ingest_stores_everything(
        nats_stack: StackInfo, tmp_path: Path) -> None:
    """The real agent (protocol "auto") meets NATS's MQTT listener, which refuses MQTT 5:
    it reconnects with 3.1.1 at once and every reading reaches InfluxDB through the
    stream and an in-process NATS worker; the ingest's end-to-end acknowledgements
    (docs/acks.md) reach the agent through the cluster, which then empties its outbox."""
    sys.path.insert(0, str(Path(__file__).parent / "agent"))
    from agent_helpers import FakeInstrument, make_keys, outbox_cfg

    from agent.runtime import Agent, RuntimeOptions
    from agent.uplink import MqttTransport
    from ingest.nats_source import NatsIngestService

    info = nats_stack
    gw = "ngw5"
    signer, reg = make_keys(tmp_path, gw)
    create_db(info.influx_url, "nats_agent")
    cfg = config_from_stack(info, reg, tmp_path / "state", influx={"database": "nats_agent"},
                            nats={"lease_ttl_s": 3.0})
    svc = NatsIngestService(cfg).start()
    transports: list[MqttTransport] = []

    def transport(birth: dict[str, Any]) -> MqttTransport:
        t = MqttTransport(host=info.mqtt_host, port=sn.mqtt_ports(info)[2], gateway_id=gw,
                          frames_topic=info.topic(gw, "frames"),
                          status_topic=info.topic(gw, "status"), birth=birth,
                          tls=info.tls_context(), username=gw,
                          password=info.gateway(gw).password(), keepalive=10,
                          backoff_min_s=0.2, backoff_max_s=2.0, protocol="auto",
                          acks_topic=info.topic(gw, "acks"))
        transports.append(t)
        return t

    insts = [FakeInstrument("ana-1", 10, 0.05)]
    agent = Agent(gateway_id=gw, site="site-t", signer=signer, outbox=outbox_cfg(tmp_path),
                  instruments=insts, transport=transport, config_hash="c" * 64,
                  options=RuntimeOptions(status_interval_s=0.5))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 30
        while not (transports and transports[-1].state().get("delivered_frames", 0) > 5):
            assert time.monotonic() < deadline, transports[0].state() if transports else None
            await asyncio.sleep(0.1)
        # Frames leave the outbox only on the ingest's acknowledgements: they arrive.
        while not (agent.outbox is not None and agent.outbox.seq >= 10
                   and agent.outbox.frames <= 2):
            assert time.monotonic() < deadline + 30, (
                agent.outbox.seq if agent.outbox else None,
                agent.outbox.frames if agent.outbox else None)
            await asyncio.sleep(0.1)
        stop.set()
        await task

    try:
        asyncio.run(scenario())
        assert transports[0].protocol == "3.1.1"
        produced = sum(i.produced for i in insts)
        assert wait_for(lambda: influx_count(info.influx_url, "nats_agent") == produced, 60), \
            (influx_count(info.influx_url, "nats_agent"), produced)
    finally:
        svc.stop()
