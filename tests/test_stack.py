"""The local stack: TLS and authentication required, per-gateway ACLs, queued QoS 1 for
an offline ingest, InfluxDB reachable, and a lifecycle that leaves no process behind."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from stack_helpers import MqttTestClient, stack_binaries_missing, start_test_stack

from stack import manager as st
from stationseal.cli import main as cli_main

GW1, GW2 = "gw-test-1", "gw-test-2"

Clients = Callable[..., MqttTestClient]


def _uid() -> bytes:
    return uuid.uuid4().hex.encode()


def _procs_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line mentions ``text``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmd and state != "Z":
            found.append(int(p.name))
    return found


def _influx_write(info: st.StackInfo, line: str) -> None:
    q = urllib.parse.urlencode({"db": info.influx_database, "precision": "s"})
    req = urllib.request.Request(f"{info.influx_url}/write?{q}", data=line.encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204


def _influx_select(info: st.StackInfo, query: str) -> list[list[object]]:
    q = urllib.parse.urlencode({"db": info.influx_database, "q": query})
    with urllib.request.urlopen(f"{info.influx_url}/query?{q}", timeout=10) as r:
        res = json.loads(r.read())["results"][0]
    assert "error" not in res, res
    series = res.get("series", [])
    return series[0]["values"] if series else []


# --------------------------------------------------------------------------- no stack


@pytest.mark.parametrize("bad", ["", "a/b", "gw+", "gw#", "-gw", "a b", "x" * 65, "gw:1",
                                 "ingest", "alerts", "$SYS"])
def test_invalid_gateway_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="gateway id"):
        st.validate_gateway_id(bad)


def test_load_info_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(st.StackError, match=r"stack\.json not found"):
        st.load_info(tmp_path)


def test_load_info_names_bad_key(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps({"schema": st.SCHEMA, "mqtt": {}}))
    with pytest.raises(st.StackError, match="'influxdb'"):
        st.load_info(tmp_path)


def test_down_without_stack_is_a_noop(tmp_path: Path) -> None:
    st.down(tmp_path / "never-started")
    assert not (tmp_path / "never-started").exists()


# --------------------------------------------------------------------------- settings


@pytest.mark.stack
def test_stack_json_round_trips(stack: st.StackInfo) -> None:
    # Other tests may add gateways to the shared stack: compare with the file as it is now.
    current = st.load_info(stack.dir)
    assert st.load_info(stack.json_path) == current
    assert st.StackInfo.from_json(current.to_json(), current.json_path) == current
    assert {k: v for k, v in current.gateways.items() if k in stack.gateways} == dict(
        stack.gateways)
    assert set(stack.gateways) >= {GW1, GW2, "gw-test-3"}
    data = json.loads(stack.json_path.read_text())
    assert data["schema"] == "stationseal-stack/1"
    assert data["mqtt"]["host"] == "127.0.0.1"
    assert data["influxdb"]["database"] == "stationseal"


@pytest.mark.stack
def test_secret_files_are_0600(stack: st.StackInfo) -> None:
    secrets = [stack.dir / "ca" / "ca.key", stack.dir / "mosquitto" / "server.key",
               stack.dir / "mosquitto" / "passwd", stack.ingest.key_file,
               stack.ingest.password_file]
    for cred in stack.gateways.values():
        secrets += [cred.key_file, cred.password_file]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.stack
def test_servers_listen_on_loopback_only(stack: st.StackInfo) -> None:
    for port in (stack.mqtt_port, stack.mqtt_mtls_port, stack.influx_port,
                 stack.influx_rpc_port):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    text = (stack.dir / "influxdb" / "influxdb.conf").read_text()
    assert f'bind-address = "127.0.0.1:{stack.influx_rpc_port}"' in text
    assert f'bind-address = "127.0.0.1:{stack.influx_port}"' in text


# --------------------------------------------------------------------------- auth


@pytest.mark.stack
@pytest.mark.parametrize("port_attr", ["mqtt_port", "mqtt_mtls_port"])
def test_plain_tcp_mqtt_gets_no_connack(stack: st.StackInfo, port_attr: str) -> None:
    # A 3.1.1 CONNECT without TLS: the broker expects a TLS ClientHello and hangs up.
    body = b"\x00\x04MQTT\x04\x02\x00\x0a\x00\x05plain"
    with socket.create_connection(("127.0.0.1", getattr(stack, port_attr)), timeout=5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        try:
            resp = s.recv(16)
        except (ConnectionResetError, TimeoutError):
            resp = b""
    assert not resp.startswith(b"\x20"), resp


@pytest.mark.stack
def test_anonymous_login_refused(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    c = mqtt_clients(stack, None, wait=False)
    assert c.connected.wait(10)
    assert c.connect_rc.is_failure
    assert c.connect_rc == "Not authorized"


@pytest.mark.stack
def test_wrong_password_refused(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    c = mqtt_clients(stack, stack.gateway(GW1), password="not-the-password", wait=False)
    assert c.connected.wait(10)
    assert c.connect_rc.is_failure


@pytest.mark.stack
def test_gateway_and_ingest_log_in_with_password(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    for cred in (stack.gateway(GW1), stack.ingest):
        c = mqtt_clients(stack, cred)
        assert not c.connect_rc.is_failure


@pytest.mark.stack
def test_server_certificate_must_match_stack_ca(stack: st.StackInfo) -> None:
    ctx = ssl.create_default_context()  # system CAs only: the stack CA is unknown
    with socket.create_connection(("127.0.0.1", stack.mqtt_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.stack
def test_mutual_tls_uses_certificate_cn_as_username(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    ingest = mqtt_clients(stack, stack.ingest, mtls=True)
    ingest.subscribe(f"{st.TOPIC_PREFIX}/+/frames")
    gw = mqtt_clients(stack, stack.gateway(GW1), mtls=True)
    forged, own = _uid(), _uid()
    gw.publish(stack.topic(GW2, "frames"), forged)
    gw.publish(stack.topic(GW1, "frames"), own)
    assert ingest.wait_payload(own)
    assert forged not in ingest.payloads()


@pytest.mark.stack
def test_mutual_tls_port_requires_client_certificate(stack: st.StackInfo) -> None:
    ctx = stack.tls_context()  # trusts the CA but has no client certificate

    def connect_without_cert() -> None:
        with socket.create_connection(("127.0.0.1", stack.mqtt_mtls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            # TLS 1.3 reports the missing certificate after the handshake: on first read.
            s.sendall(b"\x10\x00")
            if not s.recv(4):
                raise ConnectionResetError("closed without a word")

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        connect_without_cert()


# --------------------------------------------------------------------------- ACL


@pytest.mark.stack
def test_gateway_publish_to_other_gateway_is_dropped(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    ingest = mqtt_clients(stack, stack.ingest)
    ingest.subscribe(f"{st.TOPIC_PREFIX}/+/frames")
    gw = mqtt_clients(stack, stack.gateway(GW1))
    forged, marker = _uid(), _uid()
    gw.publish(stack.topic(GW2, "frames"), forged)  # 3.1.1: acknowledged, then dropped
    gw.publish(stack.topic(GW1, "frames"), marker)
    # Same publisher, same QoS: the broker delivers in order, so once the marker is here
    # the forged message would have been too.
    assert ingest.wait_payload(marker)
    assert forged not in ingest.payloads()


@pytest.mark.stack
def test_mqtt5_denied_publish_gets_not_authorized(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    gw = mqtt_clients(stack, stack.gateway(GW1), protocol=mqtt.MQTTv5)
    denied = gw.publish(stack.topic(GW2, "frames"), b"x")
    assert denied.is_failure and denied == "Not authorized"
    for topic in (f"{st.TOPIC_PREFIX}/alerts/site-1", "other/topic", f"{st.TOPIC_PREFIX}/x"):
        assert gw.publish(topic, b"x") == "Not authorized", topic
    assert not gw.publish(stack.topic(GW1, "frames"), b"x").is_failure


@pytest.mark.stack
def test_gateway_cannot_read_other_gateways(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    spy = mqtt_clients(stack, stack.gateway(GW2))
    spy.subscribe("#")  # mosquitto accepts the subscription, filters on delivery
    gw = mqtt_clients(stack, stack.gateway(GW1))
    secret = _uid()
    gw.publish(stack.topic(GW1, "frames"), secret)
    # A gateway reads only its own acknowledgements, written by ingest accounts: the
    # marker is published after `secret`, so it arrives after it if `secret` did.
    ingest = mqtt_clients(stack, stack.ingest)
    marker = _uid()
    ingest.publish(stack.topic(GW2, "acks"), marker)
    assert spy.wait_payload(marker)
    assert secret not in spy.payloads()
    other_acks = _uid()
    ingest.publish(stack.topic(GW1, "acks"), other_acks)
    last = _uid()
    ingest.publish(stack.topic(GW2, "acks"), last)
    assert spy.wait_payload(last)
    assert other_acks not in spy.payloads()


@pytest.mark.stack
def test_ingest_reads_frames_and_status_and_writes_alerts_only(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    ingest = mqtt_clients(stack, stack.ingest, protocol=mqtt.MQTTv5)
    ingest.subscribe(f"{st.TOPIC_PREFIX}/+/status")
    gw = mqtt_clients(stack, stack.gateway(GW1))
    status = _uid()
    gw.publish(stack.topic(GW1, "status"), status)
    assert ingest.wait_payload(status)
    assert not ingest.publish(f"{st.TOPIC_PREFIX}/alerts/site-1", b"{}").is_failure
    assert ingest.publish(stack.topic(GW1, "frames"), b"forged") == "Not authorized"
    assert ingest.publish(f"{st.TOPIC_PREFIX}/{GW1}/cmd", b"x") == "Not authorized"


@pytest.mark.stack
def test_ingest_shared_subscription_splits_messages(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    group = f"$share/ingest-{uuid.uuid4().hex[:8]}/{st.TOPIC_PREFIX}/+/frames"
    # Two workers, two accounts: the broker ties each client id to its account.
    workers = [mqtt_clients(stack, st.add_ingest_account(stack.dir, f"ingest-share-{k}"))
               for k in range(2)]
    for w in workers:
        assert w.subscribe(group) == [1]  # granted QoS 1, not a failure code
    gw = mqtt_clients(stack, stack.gateway(GW1))
    sent = [_uid() for _ in range(20)]
    for p in sent:
        gw.publish(stack.topic(GW1, "frames"), p)

    def got() -> list[bytes]:
        return [p for w in workers for p in w.payloads() if p in sent]

    assert workers[0].wait_for(lambda: len(got()) >= len(sent))
    assert sorted(got()) == sorted(sent)  # each message to exactly one worker
    assert all(w.payloads() for w in workers)


@pytest.mark.stack
def test_qos1_queued_while_ingest_offline(stack: st.StackInfo, mqtt_clients: Clients) -> None:
    cid = f"ingest-{uuid.uuid4().hex[:8]}"
    ingest = mqtt_clients(stack, stack.ingest, client_id=cid, clean=False)
    ingest.subscribe(stack.topic(GW1, "frames"))
    ingest.close()
    gw = mqtt_clients(stack, stack.gateway(GW1))
    sent = [_uid() for _ in range(5)]
    for p in sent:
        gw.publish(stack.topic(GW1, "frames"), p)
    back = mqtt_clients(stack, stack.ingest, client_id=cid, clean=False)
    assert back.wait_for(lambda: len(back.payloads()) >= len(sent))
    assert back.payloads() == sent


# --------------------------------------------------------------------------- gateways


@pytest.mark.stack
def test_add_gateway_reloads_without_restart(stack: st.StackInfo, mqtt_clients: Clients, new_gateway: Callable[..., st.Credential]) -> None:
    pid_before = st.status(stack.dir)["components"]["mosquitto"]["pid"]
    ingest = mqtt_clients(stack, stack.ingest)
    ingest.subscribe(f"{st.TOPIC_PREFIX}/+/frames")
    cred = new_gateway()
    assert st.status(stack.dir)["components"]["mosquitto"]["pid"] == pid_before
    assert ingest.client.is_connected()  # existing sessions survive the reload
    gw = mqtt_clients(stack, cred)
    own, forged = _uid(), _uid()
    gw.publish(stack.topic(GW1, "frames"), forged)
    gw.publish(stack.topic(cred.username, "frames"), own)
    assert ingest.wait_payload(own)
    assert forged not in ingest.payloads()
    assert st.add_gateway(stack.dir, cred.username) == cred  # idempotent
    assert st.load_info(stack.dir).gateway(cred.username) == cred


@pytest.mark.stack
def test_up_again_returns_existing_stack(stack: st.StackInfo) -> None:
    before = st.status(stack.dir)
    again = st.up(stack.dir, [GW1, GW2])
    assert again.mqtt_port == stack.mqtt_port and again.influx_url == stack.influx_url
    assert again.ingest == stack.ingest and again.gateway(GW1) == stack.gateway(GW1)
    after = st.status(stack.dir)
    for name in st.COMPONENTS:
        assert after["components"][name]["pid"] == before["components"][name]["pid"]
    with pytest.raises(ValueError, match="database"):
        st.up(stack.dir, database="other")


# --------------------------------------------------------------------------- influx


@pytest.mark.stack
def test_influx_write_and_query(stack: st.StackInfo) -> None:
    tag = uuid.uuid4().hex[:8]
    _influx_write(stack, f"stack_test,run={tag} value=42.5 1700000000")
    rows = _influx_select(stack, f"SELECT value FROM stack_test WHERE run='{tag}'")
    assert rows == [["2023-11-14T22:13:20Z", 42.5]]


# --------------------------------------------------------------------------- CLI


@pytest.mark.stack
def test_cli_status_env_and_up(stack: st.StackInfo, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["stack", "status", "--dir", str(stack.dir)]) == 0
    assert cli_main(["stack", "status", "--dir", str(stack.dir), "--json"]) == 0
    out = capsys.readouterr().out
    st_json = json.loads(out[out.index("{"):])
    assert st_json["running"] is True
    assert cli_main(["stack", "env", "--dir", str(stack.dir)]) == 0
    assert f"export STATIONSEAL_MQTT_PORT={stack.mqtt_port}" in capsys.readouterr().out
    assert cli_main(["stack", "up", "--dir", str(stack.dir), "--gateways", "bad/id"]) == 2


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.stack
def test_lifecycle_outages_and_down(tmp_path: Path, mqtt_clients: Clients) -> None:
    d = tmp_path / "life"
    info = start_test_stack(d, ("gw-life",))
    try:
        cred = info.gateway("gw-life")
        pids = {n: st.status(d)["components"][n]["pid"] for n in st.COMPONENTS}
        assert all(pids.values())

        # Broker outage: queued QoS 1 messages for an offline persistent session survive a
        # clean broker restart on the same port.
        ingest = mqtt_clients(info, info.ingest, client_id="ingest-life", clean=False)
        ingest.subscribe(info.topic("gw-life", "frames"))
        ingest.close()
        gw = mqtt_clients(info, cred)
        sent = [_uid() for _ in range(3)]
        for p in sent:
            gw.publish(info.topic("gw-life", "frames"), p)
        gw.close()
        st.stop_component(d, "mosquitto")
        assert not _procs_mentioning(str(d / "mosquitto"))
        assert st.status(d)["components"]["mosquitto"]["running"] is False
        assert cli_main(["stack", "status", "--dir", str(d)]) == 1
        st.start_component(d, "mosquitto")
        assert st.load_info(d).mqtt_port == info.mqtt_port
        back = mqtt_clients(info, info.ingest, client_id="ingest-life", clean=False)
        assert back.wait_for(lambda: len(back.payloads()) >= len(sent))
        assert back.payloads() == sent

        # InfluxDB outage: data written before is there after a restart on the same port.
        _influx_write(info, "life value=1 1700000000")
        st.stop_component(d, "influxdb", kill=True)
        assert st.status(d)["components"]["influxdb"]["running"] is False
        st.start_component(d, "influxdb")
        assert st.load_info(d).influx_url == info.influx_url
        assert _influx_select(info, "SELECT value FROM life") == [["2023-11-14T22:13:20Z", 1.0]]

        pids = {n: st.status(d)["components"][n]["pid"] for n in st.COMPONENTS}
    finally:
        st.down(d)
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in (
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1])
    assert _procs_mentioning(str(d)) == []
    assert not list((d / "run").glob("*.json"))
    assert st.status(d)["running"] is False
    st.down(d)  # twice is harmless

    # Up after down reuses CA, credentials and data.
    ca = info.ca_file.read_bytes()
    again = start_test_stack(d, ("gw-life",))
    try:
        assert again.ca_file.read_bytes() == ca
        assert again.gateway("gw-life") == cred
        assert _influx_select(again, "SELECT value FROM life") == [["2023-11-14T22:13:20Z", 1.0]]
    finally:
        st.down(d)
    assert _procs_mentioning(str(d)) == []


@pytest.mark.stack
def test_up_as_other_processes_see_it(tmp_path: Path) -> None:
    """The CLI path: `stack up` in a child process, state readable by this one."""
    import subprocess
    import sys

    d = tmp_path / "cli"
    missing = stack_binaries_missing()
    if missing:
        pytest.skip(missing)
    r = subprocess.run([sys.executable, "-m", "stationseal.cli", "stack", "up", "--dir", str(d),
                        "--gateways", "gw-cli"], capture_output=True, text=True, timeout=120,
                       check=False)
    try:
        assert r.returncode == 0, r.stderr
        assert st.status(d)["running"] is True
        assert "gw-cli" in st.load_info(d).gateways
    finally:
        r2 = subprocess.run([sys.executable, "-m", "stationseal.cli", "stack", "down", "--dir",
                             str(d)], capture_output=True, text=True, timeout=60, check=False)
    assert r2.returncode == 0, r2.stderr
    assert _procs_mentioning(str(d)) == []
    assert os.path.exists(d / "stack.json")


# --------------------------------------------------------------------------- client ids


@pytest.mark.stack
@pytest.mark.parametrize("mtls", [False, True], ids=["password", "mtls"])
def test_gateway_cannot_take_over_the_ingest_session(stack: st.StackInfo,
                                                     mqtt_clients: Clients,
                                                     mtls: bool) -> None:
    """Client ids are tied to accounts: a gateway that connects with the ingest's client id
    and a clean start gets its own id instead, and the ingest's persistent session, with
    the frames queued in it, survives (it used to be wiped: 60 of 121 frames lost)."""
    acct = st.add_ingest_account(stack.dir, f"ingest-victim-{'m' if mtls else 'p'}")
    cid = acct.username
    ingest = mqtt_clients(stack, acct, client_id=cid, clean=False,
                          protocol=mqtt.MQTTv5)
    ingest.subscribe(stack.topic(GW1, "frames"))
    ingest.close()
    thief = mqtt_clients(stack, stack.gateway(GW1), client_id=cid, clean=True,
                         protocol=mqtt.MQTTv5, mtls=mtls)
    sent = [_uid() for _ in range(5)]
    for p in sent:
        # The gateway's own frames still go through (its account's rights are intact).
        assert not thief.publish(stack.topic(GW1, "frames"), p).is_failure
    thief.close()
    back = mqtt_clients(stack, acct, client_id=cid, clean=False, protocol=mqtt.MQTTv5)
    assert back.wait_for(lambda: len(back.payloads()) >= len(sent))
    assert back.payloads() == sent
    back.close()
    # A publish nobody subscribes to is answered "no matching subscribers", which the
    # agent must not take for a delivery.
    lonely = mqtt_clients(stack, stack.gateway("gw-test-3"), protocol=mqtt.MQTTv5)
    rc = lonely.publish(stack.topic("gw-test-3", "frames"), b"x")
    assert not rc.is_failure and rc.value == 0x10


@pytest.mark.stack
def test_broker_bounds_message_size_both_sides(stack: st.StackInfo,
                                               mqtt_clients: Clients) -> None:
    acct = st.add_ingest_account(stack.dir, "ingest-size")
    ingest = mqtt_clients(stack, acct, protocol=mqtt.MQTTv5)
    ingest.subscribe(stack.topic(GW1, "frames"))
    gw = mqtt_clients(stack, stack.gateway(GW1), protocol=mqtt.MQTTv5)
    at_limit = b"a" * st.MAX_MESSAGE_BYTES
    assert not gw.publish(stack.topic(GW1, "frames"), at_limit).is_failure
    assert ingest.wait_for(lambda: at_limit in ingest.payloads(), 20)
    # One byte over the packet limit: the broker disconnects the sender before reading
    # the payload, and nothing is delivered.
    flood = mqtt_clients(stack, stack.gateway(GW2))  # 3.1.1: not told the limit
    ingest.subscribe(stack.topic(GW2, "frames"))
    dropped = threading.Event()
    flood.client.on_disconnect = lambda *a: dropped.set()
    over = b"b" * (st.MAX_PACKET_BYTES + 1)
    flood.client.publish(stack.topic(GW2, "frames"), over, qos=0)
    assert dropped.wait(10), "the broker did not disconnect the sender"
    marker = _uid()
    assert not gw.publish(stack.topic(GW1, "frames"), marker).is_failure
    assert ingest.wait_payload(marker)
    assert over not in ingest.payloads()
