"""A local NATS JetStream cluster as the stack's broker (``stationseal stack up --broker nats``).

Three ``nats-server`` processes on loopback form one JetStream cluster. Gateways speak
MQTT 3.1.1 to any node's MQTT listener (NATS 2.9 has no MQTT 5), over TLS with the same
per-gateway username, password and topic rights as on Mosquitto. The account maps each
gateway's frames subject ``stationseal.v1.<gw>.frames`` deterministically onto one of P
partition subjects ``stationseal.frames.<p>.<gw>`` (``partition()`` subject mapping), and
the ``FRAMES`` stream keeps them on all three nodes (replicas 3), so a node may die without
losing a stored frame. Ingest workers consume partitions over the NATS protocol
(ingest/nats_source.py). Layout, ports and the meaning of each setting: docs/stack.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from stack import manager as m

NODES: Final = 3
COMPONENTS: Final = tuple(f"nats-{i}" for i in range(1, NODES + 1))
#: Partitions of the frames stream: the most ingest workers that can share the load.
#: 16 lets a deployment grow to 16 workers without re-partitioning (which re-maps
#: gateways and so must drain the stream first).
DEFAULT_PARTITIONS: Final = 16
STREAM: Final = "FRAMES"
#: Subject prefix of the partitioned frames: ``stationseal.frames.<partition>.<gateway>``.
PARTITIONED: Final = "stationseal.frames"
#: Key-value bucket the ingest workers use for membership and partition leases.
LEASES_BUCKET: Final = "stationseal-ingest"
#: How long the stream keeps frames whether or not they were consumed: the longest
#: ingest outage the central site rides out without relying on the gateways' outboxes.
STREAM_MAX_AGE_S: Final = 7 * 86400
#: Upper bound on the stream's disk use per node (10 GiB ≈ 10 M frames of ~1 KB).
STREAM_MAX_BYTES: Final = 10 * 2**30
#: JetStream resource limits per node.
JS_MAX_MEM: Final = "256MB"
JS_MAX_FILE: Final = "20GB"
#: MQTT QoS 1 deliveries NATS keeps unacknowledged per subscription (not used by
#: publishing gateways, bounded for any MQTT subscriber such as dashboards).
MQTT_MAX_ACK_PENDING: Final = 1000


def node_dir(lay: m._Layout, i: int) -> Path:
    return lay.root / "nats" / f"n{i}"


def log_path(lay: m._Layout, component: str) -> Path:
    return node_dir(lay, int(component.rsplit("-", 1)[1])) / "nats.log"


def frames_subject(gateway_id: str, prefix: str = m.TOPIC_PREFIX) -> str:
    """NATS subject of a gateway's MQTT frames topic (``/`` becomes ``.``)."""
    return f"{prefix.replace('/', '.')}.{gateway_id}.frames"


def partition_of(gateway_id: str, partitions: int) -> int:
    """The partition NATS's ``partition(P, 1)`` mapping puts a gateway in: FNV-1a 32 of
    the token, modulo P (nats-server's subject transform)."""
    h = 0x811C9DC5
    for b in gateway_id.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def _validate_nats_gateway(gateway_id: str) -> None:
    # NATS 2.9 maps MQTT topic levels to subject tokens and refuses a '.' inside a
    # level (2.10 maps it to '//'); such an id could not publish at all.
    if "." in gateway_id:
        raise ValueError(f"gateway id {gateway_id!r}: NATS 2.9's MQTT listener refuses '.' in "
                         "a topic level; use an id without dots on a NATS stack")


def _q(s: str) -> str:
    """A NATS config string literal (JSON string syntax is accepted)."""
    return json.dumps(s)


def _permissions(info: m.StackInfo) -> dict[str, str]:
    """Per-user permission blocks, the NATS form of the Mosquitto ACL (manager._acl_text)."""
    p = info.topic_prefix.replace("/", ".")
    out: dict[str, str] = {}
    # Ingest: consumes the partitioned stream through the JetStream API, keeps leases in
    # a KV bucket, publishes alerts. Publishing to a gateway's subjects is not allowed.
    out[m.INGEST_USER] = (
        "{ publish: { allow: ["
        + ", ".join(_q(s) for s in (
            "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", f"$KV.{LEASES_BUCKET}.>",
            f"{p}.alerts.>", f"{p}.*.acks"))
        + "] }, subscribe: { allow: ["
        + ", ".join(_q(s) for s in ("_INBOX.>", f"{p}.*.status", f"{p}.*.frames",
                                    f"{PARTITIONED}.>"))
        + "] } }")
    for gw in sorted(info.gateways):
        # NATS checks a publish against the subject *after* the account's mapping, so
        # the frames right is on the partitioned form; the gateway id is its last token,
        # which the ingest also checks against the partition it must hash to
        # (ingest/nats_source.py), so naming another partition gains nothing. A gateway
        # reads its acknowledgements but may not write them (docs/acks.md).
        # $MQTT.sub.> carries QoS 1 deliveries to the gateway's own subscriptions.
        pub = [f"{p}.{gw}.status", f"{p}.{gw}.frames", f"{PARTITIONED}.*.{gw}"]
        sub = [f"{p}.{gw}.acks", "$MQTT.sub.>"]
        out[gw] = ("{ publish: { allow: [" + ", ".join(_q(x) for x in pub)
                   + "] }, subscribe: { allow: [" + ", ".join(_q(x) for x in sub) + "] } }")
    return out


def _conf(lay: m._Layout, info: m.StackInfo, i: int) -> str:
    nats = _nats(info)
    nodes = nats["nodes"]
    me = nodes[i - 1]
    nd = node_dir(lay, i)
    tls = (f"cert_file: {_q(str(lay.root / 'nats' / 'node.crt'))}\n"
           f"    key_file: {_q(str(lay.root / 'nats' / 'node.key'))}\n"
           f"    ca_file: {_q(str(info.ca_file))}\n"
           "    timeout: 5")
    perms = _permissions(info)
    users = [
        f"      {{ user: {_q(m.INGEST_USER)}, password: {_q(info.ingest.password())}, "
        f"permissions: {perms[m.INGEST_USER]}, "
        "allowed_connection_types: [\"STANDARD\"] }"
    ]
    for gw in sorted(info.gateways):
        users.append(
            f"      {{ user: {_q(gw)}, password: {_q(info.gateways[gw].password())}, "
            f"permissions: {perms[gw]}, allowed_connection_types: [\"MQTT\"] }}")
    p = info.topic_prefix.replace("/", ".")
    parts = int(nats["partitions"])
    rauth = f"route:{nats['route_password']}@"
    routes = ", ".join(_q(f"nats-route://{rauth}{m.HOST}:{n['route_port']}") for n in nodes)
    return f"""# Generated by `stationseal stack` on every start; edit stack/nats.py instead.
server_name: {_q(f"n{i}")}
listen: {_q(f"{m.HOST}:{me['client_port']}")}
http: {_q(f"{m.HOST}:{me['monitor_port']}")}
max_payload: 1MB
log_file: {_q(str(nd / 'nats.log'))}
logtime: true

# Clients (ingest workers): TLS, username + password.
tls {{
    {tls}
}}

jetstream {{
    store_dir: {_q(str(nd / 'js'))}
    max_memory_store: {JS_MAX_MEM}
    max_file_store: {JS_MAX_FILE}
}}

cluster {{
    name: "stationseal"
    listen: {_q(f"{m.HOST}:{me['route_port']}")}
    routes: [{routes}]
    no_advertise: true
    authorization {{
        user: "route"
        password: {_q(nats["route_password"])}
    }}
    tls {{
    {tls}
    }}
}}

# Gateways: MQTT 3.1.1 over TLS, username + password, QoS 0/1.
mqtt {{
    listen: {_q(f"{m.HOST}:{me['mqtt_port']}")}
    max_ack_pending: {MQTT_MAX_ACK_PENDING}
    tls {{
    {tls}
    }}
}}

system_account: SYS
accounts {{
  SYS {{
    users: [ {{ user: "sys", password: {_q(nats["sys_password"])} }} ]
  }}
  STATIONSEAL {{
    jetstream: enabled
    users: [
{chr(10).join(users)}
    ]
    # Every frame of one gateway lands in the same partition, so one worker sees them
    # all, in order; the gateway id stays the last token for the chain tracker.
    mappings: {{
      {_q(f"{p}.*.frames")}: {_q(f"{PARTITIONED}.{{{{partition({parts},1)}}}}.{{{{wildcard(1)}}}}")}
    }}
  }}
}}
"""


def _nats(info: m.StackInfo) -> Mapping[str, Any]:
    if info.nats is None:
        raise m.StackError(f"{info.json_path}: not a NATS stack (no 'nats' section)")
    return info.nats


def client_urls(info: m.StackInfo) -> list[str]:
    """``tls://`` URLs of every node's client listener (ingest connects to any)."""
    return [f"tls://{m.HOST}:{n['client_port']}" for n in _nats(info)["nodes"]]


def mqtt_ports(info: m.StackInfo) -> list[int]:
    return [int(n["mqtt_port"]) for n in _nats(info)["nodes"]]


def node_ports(info: m.StackInfo, component: str) -> list[int]:
    n = _nats(info)["nodes"][int(component.rsplit("-", 1)[1]) - 1]
    return [int(n[k]) for k in ("client_port", "route_port", "mqtt_port", "monitor_port")]


def write_configs(lay: m._Layout, info: m.StackInfo) -> None:
    base = lay.root / "nats"
    m._mkdir_private(base)
    if not (base / "node.crt").exists():
        # Server and client usage: routes are mutual TLS between the nodes.
        m._issue(lay, "localhost", base / "node.crt", base / "node.key", server=True,
                 client_too=True)
    for i in range(1, NODES + 1):
        nd = node_dir(lay, i)
        m._mkdir_private(nd)
        (nd / "js").mkdir(exist_ok=True)
        m._write_file(nd / "nats.conf", _conf(lay, info, i), 0o600)


def argv(lay: m._Layout, component: str) -> list[str]:
    i = int(component.rsplit("-", 1)[1])
    return [nats_binary(), "-c", str(node_dir(lay, i) / "nats.conf")]


def nats_binary() -> str:
    return m._binary("STATIONSEAL_NATS_SERVER", "/usr/sbin/nats-server", "nats-server")


def _monitor(info: m.StackInfo, component: str, path: str) -> dict[str, Any] | None:
    port = node_ports(info, component)[3]
    try:
        with urllib.request.urlopen(f"http://{m.HOST}:{port}{path}", timeout=2) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out
    except (OSError, urllib.error.URLError, ValueError):
        return None


def node_healthy(info: m.StackInfo, component: str) -> bool:
    """The node's own /healthz (JetStream up and caught up with the meta leader)."""
    h = _monitor(info, component, "/healthz")
    return h is not None and h.get("status") == "ok"


def node_listening(info: m.StackInfo, component: str) -> bool:
    """Serving its monitor port: enough while the cluster forms (healthz waits for a
    JetStream meta leader, which needs a quorum of nodes)."""
    return _monitor(info, component, "/varz") is not None


def varz(info: m.StackInfo, component: str) -> dict[str, Any] | None:
    """The node's /varz (cpu %, mem bytes, connections): for benchmarks."""
    return _monitor(info, component, "/varz")


def init_section(partitions: int) -> dict[str, Any]:
    import secrets

    ports = m._free_ports(4 * NODES)
    nodes = [{"name": f"n{i + 1}", "client_port": ports[4 * i],
              "route_port": ports[4 * i + 1], "mqtt_port": ports[4 * i + 2],
              "monitor_port": ports[4 * i + 3]} for i in range(NODES)]
    return {"nodes": nodes, "partitions": partitions, "stream": STREAM,
            "partition_subject": PARTITIONED, "leases_bucket": LEASES_BUCKET,
            "mqtt_protocol": "3.1.1",
            "route_password": secrets.token_urlsafe(24),
            "sys_password": secrets.token_urlsafe(24)}


def start_nodes(lay: m._Layout, info: m.StackInfo, components: Iterable[str],
                timeout: float) -> None:
    """Start the given nodes (not yet running) and wait until each serves; then, if a
    quorum runs, until JetStream answers on every running node."""
    started = []
    for c in components:
        if m._running(lay, c) is not None:
            continue
        busy = [p for p in node_ports(info, c) if not m._port_free(p)]
        if busy:
            raise m._PortInUse(f"{c}: port(s) {busy} on {m.HOST} already in use")
        started.append((c, m._spawn(lay, c, argv(lay, c))))
    deadline = time.monotonic() + timeout
    for c, rec in started:
        while not node_listening(info, c):
            if not m._is_alive(rec):
                lay.pid_record(c).unlink(missing_ok=True)
                raise m.StackError(f"{c} exited during start; log {log_path(lay, c)}:\n"
                                   f"{m._log_tail(log_path(lay, c))}\n"
                                   f"{m._log_tail(lay.console_log(c))}")
            if time.monotonic() > deadline:
                raise m.StackError(f"{c} did not serve within {timeout:.0f} s; log "
                                   f"{log_path(lay, c)}:\n{m._log_tail(log_path(lay, c))}")
            time.sleep(0.05)
    running = [c for c in COMPONENTS if m._running(lay, c) is not None]
    if len(running) * 2 > NODES:
        for c in running:
            while not node_healthy(info, c):
                if time.monotonic() > deadline:
                    raise m.StackError(f"{c}: JetStream not ready within {timeout:.0f} s; "
                                       f"log {log_path(lay, c)}:\n"
                                       f"{m._log_tail(log_path(lay, c))}")
                time.sleep(0.1)


def reload_nodes(lay: m._Layout) -> None:
    """SIGHUP: nats-server re-reads its config (new gateway accounts) without a restart."""
    import signal

    for c in COMPONENTS:
        rec = m._running(lay, c)
        if rec is not None:
            os.kill(int(rec["pid"]), signal.SIGHUP)


# --------------------------------------------------------------------------- JetStream


async def _ensure_stream_async(info: m.StackInfo, timeout: float) -> dict[str, Any]:
    import nats
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    nc = await nats.connect(client_urls(info), user=info.ingest.username,
                            password=info.ingest.password(), tls=info.tls_context(),
                            connect_timeout=5, max_reconnect_attempts=3,
                            allow_reconnect=True)
    try:
        js = nc.jetstream(timeout=timeout)
        cfg = StreamConfig(
            name=STREAM, subjects=[f"{PARTITIONED}.*.*"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=NODES, max_age=STREAM_MAX_AGE_S,
            max_bytes=STREAM_MAX_BYTES, discard=DiscardPolicy.OLD,
            duplicate_window=120.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                try:
                    si = await js.stream_info(STREAM)
                except NotFoundError:
                    si = await js.add_stream(cfg)
                return {"stream": si.config.name, "replicas": si.config.num_replicas}
            except Exception:
                # Right after start the meta leader may not be elected yet.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


def ensure_stream(info: m.StackInfo, timeout: float = m.START_TIMEOUT) -> dict[str, Any]:
    """Create the replicated frames stream if missing (the workers create their lease
    bucket themselves, with their lease time-out). Done by the stack, not first by the
    ingest, so frames that arrive before any worker ever ran are kept too."""
    try:
        return asyncio.run(_ensure_stream_async(info, timeout))
    except m.StackError:
        raise
    except Exception as e:
        raise m.StackError(f"creating stream {STREAM} on {client_urls(info)}: "
                           f"{type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- public


def up(dir: str | os.PathLike[str], gateways: Iterable[str] | str = (), *,
       database: str | None = None, partitions: int = DEFAULT_PARTITIONS,
       timeout: float = m.START_TIMEOUT) -> m.StackInfo:
    """Start (or reuse) a NATS stack in ``dir``: three nodes, InfluxDB, the stream."""
    wanted = m._gateway_list(gateways)
    for g in wanted:
        _validate_nats_gateway(g)
    if not 1 <= partitions <= 1024:
        raise ValueError(f"partitions {partitions}: use 1..1024")
    lay = m._layout(dir)
    if not lay.root.exists():
        lay.root.mkdir(parents=True, mode=0o700)
    with m._locked(lay):
        if lay.json.exists():
            info = m.load_info(lay.root)
            if info.nats is None:
                raise ValueError(f"{lay.json} is a Mosquitto stack; use a new --dir for NATS")
            if database is not None and database != info.influx_database:
                raise ValueError(f"{lay.json} was created with database "
                                 f"{info.influx_database!r}, not {database!r}; use a new --dir")
        else:
            info = m._init_info(lay, database or m.DEFAULT_DATABASE)
            sec = init_section(partitions)
            info = m._replace(info, broker="nats", nats=sec,
                              mqtt_port=sec["nodes"][0]["mqtt_port"],
                              mqtt_mtls_port=sec["nodes"][1]["mqtt_port"])
        new = [m._make_credential(lay, g) for g in wanted if g not in info.gateways]
        if new:
            info = m._replace(info, gateways={**info.gateways, **{c.username: c for c in new}})
        m._write_configs(lay, info)
        write_configs(lay, info)
        m._save_info(info)
        if new:
            reload_nodes(lay)
        start_nodes(lay, info, COMPONENTS, timeout)
        if m._running(lay, "influxdb") is None:
            m._start(lay, info, "influxdb", timeout)
        ensure_stream(info, timeout)
        if new:
            _wait_accounts(info, new, timeout)
        m._influx_query(info, f'CREATE DATABASE "{info.influx_database}"')
        return info


def _wait_accounts(info: m.StackInfo, creds: Iterable[m.Credential], timeout: float) -> None:
    for cred in creds:
        deadline = time.monotonic() + timeout
        while not m._mqtt_ok(info, cred):
            if time.monotonic() > deadline:
                raise m.StackError(f"NATS did not accept new account {cred.username!r} "
                                   f"within {timeout:.0f} s")
            time.sleep(0.1)


def add_gateway(lay: m._Layout, info: m.StackInfo, cred: m.Credential,
                timeout: float) -> None:
    """Rewrite the node configs with the new account and reload them (under the lock)."""
    write_configs(lay, info)
    reload_nodes(lay)
    _wait_accounts(info, [cred], timeout)
