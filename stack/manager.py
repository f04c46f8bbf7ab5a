"""Start, stop and inspect the local Mosquitto + InfluxDB stack.

The agent, ingest, demo, benchmarks and tests all talk to a real broker and a real time
series database, because the properties StationSeal depends on (TLS, per-gateway ACLs,
QoS 1 messages queued while ingest is down, data surviving an InfluxDB outage) are broker
and database behaviour that a mock would only pretend to have. Everything a stack owns
(configuration, certificates, credentials, data, logs, pid records) lives under one
directory, so several stacks can run side by side and ``rm -rf DIR`` after ``down``
leaves nothing behind. Connection settings are written to ``DIR/stack.json``
(schema in docs/stack.md); read them with :func:`load_info`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCHEMA: Final = "stationseal-stack/1"
TOPIC_PREFIX: Final = "stationseal/v1"
INGEST_USER: Final = "ingest"
DEFAULT_DATABASE: Final = "stationseal"
HOST: Final = "127.0.0.1"
COMPONENTS: Final = ("mosquitto", "influxdb")
#: Every component name the CLI accepts (a NATS stack has nats-1..3 instead of mosquitto).
ALL_COMPONENTS: Final = ("mosquitto", "nats-1", "nats-2", "nats-3", "influxdb")

#: Gateway ids become MQTT usernames, ACL topic levels and directory names, so they must
#: not contain topic wildcards, separators or anything a shell or the password file
#: (``user:hash``) would misread.
GATEWAY_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: ``alerts`` is a topic level owned by ingest (stationseal/v1/alerts/#) and ``ingest`` is
#: the service account; a gateway with either name would gain rights it must not have.
RESERVED_IDS: Final = frozenset({INGEST_USER, "alerts"})
#: Accounts of the ingest role: ``ingest`` and ``ingest-<name>`` (one per worker, test or
#: recorder). The broker replaces every client id with the account name
#: (use_username_as_clientid), so no gateway can take over an ingest session, and each
#: persistent session needs an account of its own. Gateway ids may not start so.
INGEST_ACCOUNT_RE: Final = re.compile(r"^ingest(-[A-Za-z0-9][A-Za-z0-9._-]{0,56})?$")
#: Account of the health probe (``status``, ``up``): it may log in and nothing else. A
#: probe logging in as ``ingest`` would, with client ids tied to accounts and a clean
#: start, wipe the ingest's persistent session.
PROBE_USER: Final = "ingest-probe"
_DATABASE_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Broker limits. A gateway may be offline from ingest's point of view for hours (ingest
#: restart, network split at the central site), and every frame it sends in that time
#: must wait in the broker: 1e6 queued QoS 1 messages per client is ~24 h of one frame/s
#: from 10 gateways. Inflight 100 lets ingest drain a backlog without a round trip per
#: message while keeping redelivery after a reconnect bounded.
MAX_QUEUED_MESSAGES: Final = 1_000_000
MAX_INFLIGHT_MESSAGES: Final = 100
#: Seconds between saves of the broker's in-memory state. A clean stop always saves; a
#: SIGKILLed broker loses what arrived since the last save (Mosquitto has no write-ahead
#: log: each save rewrites the whole state, so it cannot be per message). What it loses
#: the gateways still hold: they delete frames only on the ingest's end-to-end
#: acknowledgement (docs/acks.md) and send them again. docs/security.md has the numbers.
AUTOSAVE_INTERVAL: Final = 5
#: Largest payload meant to pass (the ingest's mqtt.max_message_bytes; an agent frame of
#: 500 readings is ~9 kB) and the broker's max_packet_size: a client sending a bigger
#: packet is disconnected as soon as the broker has read its length, before the payload
#: is read. MQTT 5 clients are told the limit in CONNACK; the agent keeps to it. (Not
#: message_size_limit: Mosquitto 2.0.11 answers an MQTT 5 publish it refuses for size
#: with a PUBACK paho-mqtt cannot parse, and paho then reconnects and resends for ever.)
MAX_MESSAGE_BYTES: Final = 1024 * 1024
MAX_PACKET_BYTES: Final = MAX_MESSAGE_BYTES + 1024

START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0

_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 825

#: Popen objects of processes started by this interpreter, kept so they can be reaped
#: (a killed child stays a zombie, i.e. "alive" to kill(pid, 0), until its parent waits).
_CHILDREN: dict[int, tuple[subprocess.Popen[bytes], list[str]]] = {}


class StackError(Exception):
    """The stack could not be started, stopped or read; the message names the file at fault."""


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Credential:
    """One MQTT account: username + password file, and a client certificate for mutual TLS.

    The certificate's CN equals the username, so the mutual-TLS listener (which takes the
    username from the certificate) applies the same ACL as the password listener.
    """

    username: str
    password_file: Path
    cert_file: Path
    key_file: Path

    def password(self) -> str:
        return self.password_file.read_text(encoding="utf-8").strip()

    def to_json(self) -> dict[str, str]:
        return {
            "username": self.username,
            "password_file": str(self.password_file),
            "cert_file": str(self.cert_file),
            "key_file": str(self.key_file),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: Path, where: str) -> Credential:
        return cls(
            username=_req_str(data, "username", where),
            password_file=_path(base, _req_str(data, "password_file", where)),
            cert_file=_path(base, _req_str(data, "cert_file", where)),
            key_file=_path(base, _req_str(data, "key_file", where)),
        )


@dataclass(frozen=True)
class StackInfo:
    """Connection settings of one stack, as stored in ``DIR/stack.json``."""

    dir: Path
    mqtt_host: str
    mqtt_port: int
    """TLS listener; clients authenticate with username + password."""
    mqtt_mtls_port: int
    """TLS listener requiring a client certificate; its CN is the username."""
    ca_file: Path
    gateways: Mapping[str, Credential]
    ingest: Credential
    ingest_accounts: Mapping[str, Credential]
    """More accounts of the ingest role (``ingest-<name>``): one per persistent session."""
    influx_url: str
    influx_database: str
    influx_rpc_port: int
    topic_prefix: str = TOPIC_PREFIX
    created: str = ""
    influx_username: str | None = None
    """None while InfluxDB auth is off (the local stack); set in production configs."""
    influx_password_file: Path | None = None
    broker: str = "mosquitto"
    """``mosquitto`` (one broker) or ``nats`` (a JetStream cluster, stack/nats.py)."""
    nats: Mapping[str, Any] | None = None
    """Nodes, ports and stream of a NATS stack (docs/stack.md); None on Mosquitto."""

    @property
    def json_path(self) -> Path:
        return self.dir / "stack.json"

    @property
    def influx_port(self) -> int:
        port = urllib.parse.urlsplit(self.influx_url).port
        if port is None:
            raise StackError(f"{self.json_path}: influxdb.url {self.influx_url!r} has no port")
        return port

    def gateway(self, gateway_id: str) -> Credential:
        try:
            return self.gateways[gateway_id]
        except KeyError:
            known = ", ".join(sorted(self.gateways)) or "none"
            raise KeyError(
                f"gateway {gateway_id!r} has no credentials in {self.json_path} "
                f"(known: {known}); add it with `stationseal stack add-gateway`"
            ) from None

    def topic(self, gateway_id: str, kind: str) -> str:
        """``stationseal/v1/<gateway_id>/<kind>``; kind is ``frames`` or ``status``."""
        return f"{self.topic_prefix}/{gateway_id}/{kind}"

    def tls_context(self, cred: Credential | None = None) -> ssl.SSLContext:
        """Client TLS context trusting this stack's CA; with ``cred`` it also presents
        that account's client certificate (needed on ``mqtt_mtls_port``)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cred is not None:
            ctx.load_cert_chain(str(cred.cert_file), str(cred.key_file))
        return ctx

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema": SCHEMA,
            "created": self.created,
            "dir": str(self.dir),
            "broker": self.broker,
            "mqtt": {
                "host": self.mqtt_host,
                "port": self.mqtt_port,
                "mtls_port": self.mqtt_mtls_port,
                "tls": True,
                "ca_file": str(self.ca_file),
                "topic_prefix": self.topic_prefix,
            },
            "gateways": {gw: c.to_json() for gw, c in sorted(self.gateways.items())},
            "ingest": self.ingest.to_json(),
            "ingest_accounts": {u: c.to_json() for u, c in sorted(self.ingest_accounts.items())},
            "influxdb": {
                "url": self.influx_url,
                "database": self.influx_database,
                "api": "v1",
                "auth": self.influx_username is not None,
                "username": self.influx_username,
                "password_file": (None if self.influx_password_file is None
                                  else str(self.influx_password_file)),
                "rpc_bind": f"{HOST}:{self.influx_rpc_port}",
            },
        }
        if self.nats is not None:
            out["nats"] = dict(self.nats)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], json_path: Path) -> StackInfo:
        where = str(json_path)
        if data.get("schema") != SCHEMA:
            raise StackError(
                f"{where}: schema is {data.get('schema')!r}, expected {SCHEMA!r}"
            )
        base = json_path.parent
        mqtt = _req_map(data, "mqtt", where)
        influx = _req_map(data, "influxdb", where)
        gws = _req_map(data, "gateways", where)
        rpc = _req_str(influx, "rpc_bind", f"{where}: influxdb")
        try:
            rpc_port = int(rpc.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            raise StackError(f"{where}: influxdb.rpc_bind {rpc!r} is not HOST:PORT") from None
        return cls(
            dir=_path(base, str(data.get("dir", base))),
            mqtt_host=_req_str(mqtt, "host", f"{where}: mqtt"),
            mqtt_port=_req_int(mqtt, "port", f"{where}: mqtt"),
            mqtt_mtls_port=_req_int(mqtt, "mtls_port", f"{where}: mqtt"),
            ca_file=_path(base, _req_str(mqtt, "ca_file", f"{where}: mqtt")),
            topic_prefix=str(mqtt.get("topic_prefix", TOPIC_PREFIX)),
            gateways={
                gw: Credential.from_json(_req_map(gws, gw, f"{where}: gateways"), base,
                                         f"{where}: gateways.{gw}")
                for gw in gws
            },
            ingest=Credential.from_json(_req_map(data, "ingest", where), base,
                                        f"{where}: ingest"),
            ingest_accounts={
                u: Credential.from_json(c, base, f"{where}: ingest_accounts.{u}")
                for u, c in dict(data.get("ingest_accounts") or {}).items()
            },
            influx_url=_req_str(influx, "url", f"{where}: influxdb"),
            influx_database=_req_str(influx, "database", f"{where}: influxdb"),
            influx_rpc_port=rpc_port,
            created=str(data.get("created", "")),
            influx_username=_opt_str(influx, "username", f"{where}: influxdb"),
            influx_password_file=(None if influx.get("password_file") is None else _path(
                base, _req_str(influx, "password_file", f"{where}: influxdb"))),
            broker=str(data.get("broker", "mosquitto")),
            nats=_req_map(data, "nats", where) if data.get("broker") == "nats" else None,
        )


def _req_map(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = data.get(key)
    if not isinstance(v, Mapping):
        raise StackError(f"{where}: key {key!r} missing or not an object")
    return v


def _req_str(data: Mapping[str, Any], key: str, where: str) -> str:
    v = data.get(key)
    if not isinstance(v, str) or not v:
        raise StackError(f"{where}: key {key!r} missing or not a string")
    return v


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    v = data.get(key)
    if v is not None and not isinstance(v, str):
        raise StackError(f"{where}: key {key!r} must be a string or null, not {v!r}")
    return v


def _req_int(data: Mapping[str, Any], key: str, where: str) -> int:
    v = data.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 65536:
        raise StackError(f"{where}: key {key!r} missing or not a port number: {v!r}")
    return v


def _path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class _Layout:
    root: Path

    @property
    def json(self) -> Path:
        return self.root / "stack.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def mq(self) -> Path:
        return self.root / "mosquitto"

    @property
    def influx(self) -> Path:
        return self.root / "influxdb"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def client_dir(self, username: str) -> Path:
        return self.root / "clients" / username

    def pid_record(self, component: str) -> Path:
        return self.run / f"{component}.json"

    def log(self, component: str) -> Path:
        if component.startswith("nats-"):
            return self.root / "nats" / f"n{component.rsplit('-', 1)[1]}" / "nats.log"
        if component == "mosquitto":
            return self.mq / "mosquitto.log"
        return self.influx / "influxd.log"

    def console_log(self, component: str) -> Path:
        if component == "mosquitto":
            return self.mq / "console.log"
        return self.influx / "influxd.log"

    def config(self, component: str) -> Path:
        if component == "mosquitto":
            return self.mq / "mosquitto.conf"
        return self.influx / "influxdb.conf"


def _layout(dir: str | os.PathLike[str]) -> _Layout:
    p = Path(dir)
    if p.name == "stack.json" and not p.is_dir():
        p = p.parent
    return _Layout(p.resolve())


@contextlib.contextmanager
def _locked(lay: _Layout) -> Iterator[None]:
    """Serialise up/down/add_gateway on one directory (two CI steps, pytest + CLI)."""
    lay.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(lay.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Atomic replace, so a broker reloading on SIGHUP never reads half a file; the mode
    is set on the temporary file before any byte is written, so secrets are never
    briefly world-readable."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


# --------------------------------------------------------------------------- binaries


def _binary(env: str, default: str, name: str) -> str:
    override = os.environ.get(env)
    if override:
        return override
    if os.access(default, os.X_OK):
        return default
    found = shutil.which(name)
    if found is None:
        raise StackError(
            f"{name} not found at {default} or on PATH; install it or set {env}=/path/to/{name}"
        )
    return found


def mosquitto_binary() -> str:
    return _binary("STATIONSEAL_MOSQUITTO", "/usr/sbin/mosquitto", "mosquitto")


def mosquitto_passwd_binary() -> str:
    return _binary("STATIONSEAL_MOSQUITTO_PASSWD", "/usr/bin/mosquitto_passwd", "mosquitto_passwd")


def influxd_binary() -> str:
    return _binary("STATIONSEAL_INFLUXD", "/usr/bin/influxd", "influxd")


# --------------------------------------------------------------------------- certificates


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(lay: _Layout) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "StationSeal local stack"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"StationSeal stack CA {secrets.token_hex(4)}"),
    ])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _mkdir_private(lay.ca_dir)
    _write_file(lay.ca_key, _key_pem(key), 0o600)
    _write_file(lay.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _issue(lay: _Layout, common_name: str, cert_path: Path, key_path: Path, *,
           server: bool, client_too: bool = False) -> None:
    """``client_too``: also valid as a TLS client (cluster routes, where each node dials
    the others with its own certificate)."""
    ca_key = serialization.load_pem_private_key(lay.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise StackError(f"{lay.ca_key}: not an EC private key")
    ca_cert = x509.load_pem_x509_certificate(lay.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if client_too else
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_file(key_path, _key_pem(key), 0o600)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _make_credential(lay: _Layout, username: str) -> Credential:
    d = lay.client_dir(username)
    cred = Credential(
        username=username,
        password_file=d / "password",
        cert_file=d / "client.crt",
        key_file=d / "client.key",
    )
    _mkdir_private(d)
    if not cred.password_file.exists():
        _write_file(cred.password_file, secrets.token_urlsafe(24) + "\n", 0o600)
    if not (cred.cert_file.exists() and cred.key_file.exists()):
        _issue(lay, username, cred.cert_file, cred.key_file, server=False)
    return cred


def validate_gateway_id(gateway_id: str) -> str:
    """Raise ValueError naming the id unless it is usable as username and topic level."""
    if not isinstance(gateway_id, str) or not GATEWAY_ID_RE.match(gateway_id):
        raise ValueError(
            f"gateway id {gateway_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    if gateway_id in RESERVED_IDS or INGEST_ACCOUNT_RE.match(gateway_id):
        raise ValueError(f"gateway id {gateway_id!r} is reserved (reserved: "
                         f"{', '.join(sorted(RESERVED_IDS))} and ingest-*)")
    return gateway_id


def validate_ingest_account(username: str) -> str:
    if (not isinstance(username, str) or not INGEST_ACCOUNT_RE.match(username)
            or username == PROBE_USER):
        raise ValueError(f"ingest account {username!r} is invalid: use 'ingest' or "
                         "'ingest-<name>' (A-Z a-z 0-9 . _ -)")
    return username


# --------------------------------------------------------------------------- configs


def _acl_text(info: StackInfo) -> str:
    p = info.topic_prefix
    lines = [
        "# Generated by `stationseal stack`; rewritten whenever a gateway is added.",
        "# No lines before the first `user`: anonymous clients get nothing (and are refused).",
        "",
        "# Central ingest accounts: read every gateway's frames and status, write alerts and",
        "# the end-to-end acknowledgements (docs/acks.md).",
    ]
    for user in (INGEST_USER, *sorted(info.ingest_accounts)):
        lines += [f"user {user}", f"topic read {p}/+/frames", f"topic read {p}/+/status",
                  f"topic write {p}/alerts/#", f"topic write {p}/+/acks", ""]
    lines.append("# Gateways: write their own frames and status, read their own acknowledgements.")
    for gw in sorted(info.gateways):
        lines += [f"user {gw}", f"topic write {p}/{gw}/frames",
                  f"topic write {p}/{gw}/status", f"topic read {p}/{gw}/acks", ""]
    return "\n".join(lines)


def _mosquitto_conf(lay: _Layout, info: StackInfo) -> str:
    tls = [
        f"cafile {info.ca_file}",
        f"certfile {lay.mq / 'server.crt'}",
        f"keyfile {lay.mq / 'server.key'}",
        "tls_version tlsv1.2",
    ]
    # Run as whoever started us. As root, mosquitto would otherwise switch to the
    # 'mosquitto' user, which cannot read the 0600 keys and data under DIR.
    user = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []
    lines = [
        "# Generated by `stationseal stack` on every start; edit stack/manager.py instead.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {lay.mq / 'passwd'}",
        f"acl_file {lay.mq / 'acl'}",
        *user,
        "",
        "persistence true",
        f"persistence_location {lay.mq / 'data'}/",
        "persistence_file mosquitto.db",
        f"autosave_interval {AUTOSAVE_INTERVAL}",
        "autosave_on_changes false",
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "max_queued_bytes 0",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        "queue_qos0_messages false",
        "",
        f"log_dest file {lay.log('mosquitto')}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        "# TLS, username + password (what agent and ingest use by default).",
        "# use_username_as_clientid: the client id is replaced by the account name, so",
        "# one account can never take over another's session (or the ingest's).",
        f"listener {info.mqtt_port} {HOST}",
        *tls,
        "require_certificate false",
        "use_username_as_clientid true",
        "",
        "# Mutual TLS: a client certificate signed by the stack CA is required and its CN",
        "# is the username, so the same ACL applies; no password is asked.",
        f"listener {info.mqtt_mtls_port} {HOST}",
        *tls,
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "",
    ]
    return "\n".join(lines)


def _influx_conf(lay: _Layout, info: StackInfo) -> str:
    d = lay.influx
    return f"""# Generated by `stationseal stack` on every start; edit stack/manager.py instead.
# Upstream 1.x key is reporting-disabled; some distribution builds read reporting-enabled.
reporting-disabled = true
reporting-enabled = false
# RPC (backup/restore) service: influxd binds :8088 on all interfaces unless told.
bind-address = "{HOST}:{info.influx_rpc_port}"

[meta]
  dir = "{d / 'meta'}"
  retention-autocreate = true
  logging-enabled = true

[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  index-version = "inmem"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{info.influx_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "info"
  suppress-logo = true

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false

[continuous_queries]
  enabled = true
  log-enabled = false
"""


def _write_passwd(lay: _Layout, info: StackInfo) -> None:
    """Rebuild the broker password file from the per-account password files, which are
    the source of truth; mosquitto_passwd -U hashes a ``user:password`` file in place."""
    creds = [info.ingest, _make_credential(lay, PROBE_USER),
             *(info.ingest_accounts[u] for u in sorted(info.ingest_accounts)),
             *(info.gateways[g] for g in sorted(info.gateways))]
    plain = "".join(f"{c.username}:{c.password()}\n" for c in creds)
    tmp = lay.mq / ".passwd.plain"
    _write_file(tmp, plain, 0o600)
    try:
        r = subprocess.run([mosquitto_passwd_binary(), "-U", str(tmp)],
                           capture_output=True, text=True, check=False, timeout=60)
        if r.returncode != 0:
            raise StackError(f"mosquitto_passwd -U {tmp} failed: {(r.stderr or r.stdout).strip()}")
        os.chmod(tmp, 0o600)
        os.replace(tmp, lay.mq / "passwd")
    finally:
        tmp.unlink(missing_ok=True)


def _write_configs(lay: _Layout, info: StackInfo) -> None:
    _mkdir_private(lay.mq)
    (lay.mq / "data").mkdir(exist_ok=True)
    for sub in ("meta", "data", "wal"):
        (lay.influx / sub).mkdir(parents=True, exist_ok=True)
    lay.run.mkdir(exist_ok=True)
    _write_file(lay.mq / "acl", _acl_text(info), 0o600)
    _write_passwd(lay, info)
    _write_file(lay.config("mosquitto"), _mosquitto_conf(lay, info), 0o600)
    _write_file(lay.config("influxdb"), _influx_conf(lay, info))


def _save_info(info: StackInfo) -> None:
    _write_file(info.json_path, json.dumps(info.to_json(), indent=2) + "\n")


# --------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the servers set, so a port with only TIME_WAIT leftovers counts
        # as free, as it is for them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def components(info: StackInfo | None) -> tuple[str, ...]:
    """The processes of this stack: its broker node(s), then InfluxDB."""
    if info is not None and info.broker == "nats":
        from stack import nats

        return (*nats.COMPONENTS, "influxdb")
    return COMPONENTS


def _component_ports(info: StackInfo, component: str) -> list[int]:
    if component.startswith("nats-"):
        from stack import nats

        return nats.node_ports(info, component)
    if component == "mosquitto":
        return [info.mqtt_port, info.mqtt_mtls_port]
    return [info.influx_port, info.influx_rpc_port]


def _with_new_ports(info: StackInfo, component: str) -> StackInfo:
    a, b = _free_ports(2)
    if component == "mosquitto":
        return _replace(info, mqtt_port=a, mqtt_mtls_port=b)
    return _replace(info, influx_url=f"http://{HOST}:{a}", influx_rpc_port=b)


def _replace(info: StackInfo, **changes: Any) -> StackInfo:
    fields = {k: getattr(info, k) for k in info.__dataclass_fields__}
    fields.update(changes)
    return StackInfo(**fields)


# --------------------------------------------------------------------------- processes


def _read_record(lay: _Layout, component: str) -> dict[str, Any] | None:
    path = lay.pid_record(component)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StackError(f"{path}: unreadable pid record: {e}") from e
    if not isinstance(rec, dict) or not isinstance(rec.get("pid"), int):
        raise StackError(f"{path}: pid record lacks an integer 'pid'")
    return rec


def _is_alive(rec: Mapping[str, Any]) -> bool:
    """True if the recorded process still runs and is the one we started: a pid is
    only trusted if its command line still matches, so a recycled pid is never signalled."""
    pid = int(rec["pid"])
    child, child_argv = _CHILDREN.get(pid, (None, []))
    if child is not None and child_argv == list(rec.get("argv", [])):
        # Our own unreaped child: its pid cannot have been reused, and poll() is exact.
        # (Its /proc cmdline is briefly empty right after exec, so don't look there.)
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # exists but belongs to someone else: not ours
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no procfs: the best we can do
    argv = [str(a).encode() for a in rec.get("argv", [])]
    for _ in range(3):
        try:
            stat = (proc / "stat").read_text()
            state = stat.rsplit(")", 1)[1].split()[0]
            cmdline = [a for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        if cmdline:
            return not argv or cmdline == argv
        time.sleep(0.05)  # empty while a process is exec'ing: look again
    return False


def _spawn(lay: _Layout, component: str, argv: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
    with open(lay.console_log(component), "ab") as log:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the calling shell must not kill the stack
            close_fds=True,
            cwd=lay.root,
            env=env,
        )
    _CHILDREN[p.pid] = (p, list(argv))
    rec = {"pid": p.pid, "argv": argv, "started": time.time()}
    _write_file(lay.pid_record(component), json.dumps(rec) + "\n")
    return rec


def _argv(lay: _Layout, component: str) -> list[str]:
    if component == "mosquitto":
        return [mosquitto_binary(), "-c", str(lay.config("mosquitto"))]
    return [influxd_binary(), "run", "-config", str(lay.config("influxdb"))]


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _wait_dead(rec: Mapping[str, Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_alive(rec):
            return True
        time.sleep(0.05)
    return not _is_alive(rec)


def _stop_record(rec: Mapping[str, Any], timeout: float, kill: bool) -> None:
    pid = int(rec["pid"])
    if not _is_alive(rec):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    if _wait_dead(rec, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_dead(rec, 5.0):
        raise StackError(f"pid {pid} ({rec.get('argv', ['?'])[0]}) survived SIGKILL")


# --------------------------------------------------------------------------- health


def _mqtt_connack(host: str, port: int, ca_file: Path, cred: Credential,
                  timeout: float = 3.0) -> int:
    """CONNECT over TLS and return the CONNACK code (0 = accepted). A hand-rolled MQTT
    3.1.1 CONNECT keeps health checks free of client threads and of paho state."""

    def utf8(s: str) -> bytes:
        b = s.encode("utf-8")
        return len(b).to_bytes(2, "big") + b

    body = (utf8("MQTT") + bytes([4, 0xC2]) + (10).to_bytes(2, "big")
            + utf8(f"stationseal-probe-{secrets.token_hex(4)}")
            + utf8(cred.username) + utf8(cred.password()))
    rl = len(body)
    enc = bytearray()
    while True:
        byte, rl = rl % 128, rl // 128
        enc.append(byte | (0x80 if rl else 0))
        if not rl:
            break
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(bytes([0x10]) + bytes(enc) + body)
        resp = b""
        while len(resp) < 4:
            chunk = s.recv(4 - len(resp))
            if not chunk:
                raise ConnectionError(f"broker {host}:{port} closed before CONNACK")
            resp += chunk
        if resp[0] != 0x20:
            raise ConnectionError(f"broker {host}:{port} sent {resp!r} instead of CONNACK")
        if resp[3] == 0:
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")
        return resp[3]


def _probe_credential(info: StackInfo) -> Credential:
    d = info.dir / "clients" / PROBE_USER
    return Credential(PROBE_USER, d / "password", d / "client.crt", d / "client.key")


def _mqtt_ok(info: StackInfo, cred: Credential | None = None) -> bool:
    try:
        return _mqtt_connack(info.mqtt_host, info.mqtt_port, info.ca_file,
                             cred or _probe_credential(info)) == 0
    except (OSError, ssl.SSLError):
        return False


def _influx_ok(info: StackInfo) -> bool:
    try:
        with urllib.request.urlopen(f"{info.influx_url}/ping", timeout=2) as r:
            return int(r.status) == 204
    except (OSError, urllib.error.URLError):
        return False


def _healthy(info: StackInfo, component: str) -> bool:
    if component.startswith("nats-"):
        from stack import nats

        return nats.node_healthy(info, component)
    return _mqtt_ok(info) if component == "mosquitto" else _influx_ok(info)


def _influx_query(info: StackInfo, q: str) -> dict[str, Any]:
    data = urllib.parse.urlencode({"q": q}).encode()
    req = urllib.request.Request(f"{info.influx_url}/query", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            out: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise StackError(f"InfluxDB {info.influx_url} rejected {q!r}: HTTP {e.code} "
                         f"{e.read()[:300]!r}") from e
    except OSError as e:
        raise StackError(f"InfluxDB {info.influx_url} unreachable for {q!r}: {e}") from e
    for res in out.get("results", []):
        if "error" in res:
            raise StackError(f"InfluxDB {info.influx_url}: {q!r} failed: {res['error']}")
    return out


# --------------------------------------------------------------------------- start/stop


class _PortInUse(StackError):
    pass


def _start(lay: _Layout, info: StackInfo, component: str, timeout: float) -> None:
    """Start one component on the ports in ``info`` and wait until it serves requests."""
    busy = [p for p in _component_ports(info, component) if not _port_free(p)]
    if busy:
        raise _PortInUse(f"{component}: port(s) {busy} on {HOST} already in use")
    log = lay.console_log(component)
    offset = log.stat().st_size if log.exists() else 0
    rec = _spawn(lay, component, _argv(lay, component))
    deadline = time.monotonic() + timeout
    while True:
        if not _is_alive(rec):
            lay.pid_record(component).unlink(missing_ok=True)
            text = ""
            with contextlib.suppress(OSError), open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", errors="replace")
            if component == "mosquitto":
                text += "\n" + _log_tail(lay.log("mosquitto"))
            if "address already in use" in text.lower():
                raise _PortInUse(f"{component}: port taken while starting:\n{text.strip()}")
            raise StackError(f"{component} exited during start (config "
                             f"{lay.config(component)}); log {log}:\n{text.strip()[-2000:]}")
        if _healthy(info, component):
            return
        if time.monotonic() > deadline:
            _stop_record(rec, STOP_TIMEOUT, kill=False)
            lay.pid_record(component).unlink(missing_ok=True)
            raise StackError(f"{component} did not become ready within {timeout:.0f} s; "
                             f"log {lay.log(component)}:\n{_log_tail(lay.log(component))}")
        time.sleep(0.05)


def _running(lay: _Layout, component: str) -> dict[str, Any] | None:
    rec = _read_record(lay, component)
    if rec is None:
        return None
    if _is_alive(rec):
        return rec
    lay.pid_record(component).unlink(missing_ok=True)
    return None


def _reload_mosquitto(lay: _Layout, info: StackInfo, new: Iterable[Credential],
                      timeout: float) -> None:
    """SIGHUP makes mosquitto re-read password and ACL files; the reload happens on its
    next loop turn, so wait until every new account can log in before returning."""
    rec = _running(lay, "mosquitto")
    if rec is None:
        return
    os.kill(int(rec["pid"]), signal.SIGHUP)
    for cred in new:
        deadline = time.monotonic() + timeout
        while not _mqtt_ok(info, cred):
            if time.monotonic() > deadline:
                raise StackError(f"mosquitto did not accept new account {cred.username!r} "
                                 f"{timeout:.0f} s after SIGHUP; log {lay.log('mosquitto')}")
            time.sleep(0.05)


def _init_info(lay: _Layout, database: str) -> StackInfo:
    if not _DATABASE_RE.match(database):
        raise ValueError(f"database name {database!r} is invalid: use 1-64 of A-Z a-z 0-9 _ -")
    _make_ca(lay)
    _mkdir_private(lay.mq)
    _issue(lay, "localhost", lay.mq / "server.crt", lay.mq / "server.key", server=True)
    mq, mtls, http, rpc = _free_ports(4)
    return StackInfo(
        dir=lay.root,
        mqtt_host=HOST,
        mqtt_port=mq,
        mqtt_mtls_port=mtls,
        ca_file=lay.ca_cert,
        gateways={},
        ingest=_make_credential(lay, INGEST_USER),
        ingest_accounts={},
        influx_url=f"http://{HOST}:{http}",
        influx_database=database,
        influx_rpc_port=rpc,
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


def _gateway_list(gateways: Iterable[str] | str) -> list[str]:
    items = gateways.split(",") if isinstance(gateways, str) else list(gateways)
    return [validate_gateway_id(g.strip()) for g in items if g.strip()]


# --------------------------------------------------------------------------- public API


def load_info(dir_or_json_path: str | os.PathLike[str]) -> StackInfo:
    """Read ``stack.json`` from a stack directory or from the file's own path."""
    p = Path(dir_or_json_path)
    json_path = p if p.suffix == ".json" or p.is_file() else p / "stack.json"
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StackError(f"{json_path} not found; start a stack with "
                         f"`stationseal stack up --dir {json_path.parent}`") from None
    except (OSError, ValueError) as e:
        raise StackError(f"{json_path}: unreadable: {e}") from e
    if not isinstance(data, dict):
        raise StackError(f"{json_path}: top level is not a JSON object")
    return StackInfo.from_json(data, json_path.resolve())


def up(dir: str | os.PathLike[str], gateways: Iterable[str] | str = (), *,
       database: str | None = None, timeout: float = START_TIMEOUT,
       broker: str = "mosquitto", partitions: int | None = None) -> StackInfo:
    """Start the stack in ``dir`` (created if needed) and return its settings.

    Safe to repeat: running healthy components are left alone, missing gateways get
    credentials (and the running broker reloads), stopped components restart on their
    recorded ports, or on new ones if those were taken meanwhile. Certificates,
    credentials and data are reused from a previous run in the same directory.
    ``database`` (default ``stationseal``) is fixed when the stack is first created.
    ``broker="nats"`` starts a three-node NATS JetStream cluster instead of Mosquitto
    (stack/nats.py); ``partitions`` applies to it only.
    """
    if broker == "nats":
        from stack import nats

        return nats.up(dir, gateways, database=database, timeout=timeout,
                       partitions=partitions or nats.DEFAULT_PARTITIONS)
    if broker != "mosquitto":
        raise ValueError(f"broker {broker!r}: choose mosquitto or nats")
    wanted = _gateway_list(gateways)
    lay = _layout(dir)
    if not lay.root.exists():
        lay.root.mkdir(parents=True, mode=0o700)
    with _locked(lay):
        if lay.json.exists():
            info = load_info(lay.root)
            if info.broker != "mosquitto":
                raise ValueError(f"{lay.json} is a {info.broker} stack; pass broker="
                                 f"{info.broker!r} or use a new --dir")
            if database is not None and database != info.influx_database:
                raise ValueError(f"{lay.json} was created with database "
                                 f"{info.influx_database!r}, not {database!r}; use a new --dir")
        else:
            info = _init_info(lay, database or DEFAULT_DATABASE)
        new = [_make_credential(lay, g) for g in wanted if g not in info.gateways]
        if new:
            info = _replace(info, gateways={**info.gateways, **{c.username: c for c in new}})
        _write_configs(lay, info)
        _save_info(info)
        for component in COMPONENTS:
            if _running(lay, component) is not None:
                if component == "mosquitto" and new:
                    _reload_mosquitto(lay, info, new, timeout)
                elif not _wait_healthy(info, component, timeout):
                    raise StackError(f"{component} is running (record "
                                     f"{lay.pid_record(component)}) but not answering; "
                                     f"see {lay.log(component)} or run `stationseal stack down`")
                continue
            for attempt in range(3):
                try:
                    _start(lay, info, component, timeout)
                    break
                except _PortInUse:
                    if attempt == 2:
                        raise
                    info = _with_new_ports(info, component)
                    _write_configs(lay, info)
                    _save_info(info)
        _influx_query(info, f'CREATE DATABASE "{info.influx_database}"')
        return info


def _wait_healthy(info: StackInfo, component: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _healthy(info, component):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def down(dir: str | os.PathLike[str], *, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the processes ``up`` started in ``dir`` (SIGTERM, then SIGKILL after
    ``timeout`` seconds). Data, credentials and certificates stay for the next ``up``."""
    lay = _layout(dir)
    if not lay.root.exists():
        return
    with _locked(lay):
        # Broker first: it saves its queue on SIGTERM, and nothing should be writing
        # into InfluxDB through it while InfluxDB goes away.
        from stack.nats import COMPONENTS as NATS_NODES

        for component in (*NATS_NODES, *COMPONENTS):
            _stop_component(lay, component, timeout=timeout, kill=False)


def _stop_component(lay: _Layout, component: str, *, timeout: float, kill: bool) -> None:
    rec = _read_record(lay, component)
    if rec is not None:
        _stop_record(rec, timeout, kill)
        _CHILDREN.pop(int(rec["pid"]), None)
        lay.pid_record(component).unlink(missing_ok=True)


def _check_component(component: str, info: StackInfo | None = None) -> None:
    known = components(info) if info is not None else ALL_COMPONENTS
    if component not in known:
        raise ValueError(f"unknown component {component!r}; choose from {', '.join(known)}")


def stop_component(dir: str | os.PathLike[str], component: str, *, kill: bool = False,
                   timeout: float = STOP_TIMEOUT) -> None:
    """Stop only ``mosquitto``, one ``nats-N`` node or ``influxdb`` (outage drills).
    ``kill=True`` sends SIGKILL at once, simulating a crash instead of a clean shutdown."""
    _check_component(component)
    lay = _layout(dir)
    with _locked(lay):
        _stop_component(lay, component, timeout=timeout, kill=kill)


def start_component(dir: str | os.PathLike[str], component: str, *,
                    timeout: float = START_TIMEOUT) -> None:
    """Restart one component on the ports recorded in stack.json, so clients holding
    the old settings reconnect to it. No-op if it already runs."""
    _check_component(component)
    lay = _layout(dir)
    with _locked(lay):
        info = load_info(lay.root)
        _check_component(component, info)
        if _running(lay, component) is not None:
            return
        _write_configs(lay, info)
        if component.startswith("nats-"):
            from stack import nats

            nats.write_configs(lay, info)
            nats.start_nodes(lay, info, [component], timeout)
            return
        try:
            _start(lay, info, component, timeout)
        except _PortInUse as e:
            raise StackError(f"{e}; cannot restart on the same ports recorded in "
                             f"{lay.json}") from e
        if component == "influxdb":
            _influx_query(info, f'CREATE DATABASE "{info.influx_database}"')


def add_gateway(dir: str | os.PathLike[str], gateway_id: str, *,
                timeout: float = START_TIMEOUT) -> Credential:
    """Create credentials for one more gateway and let a running broker pick them up
    (SIGHUP, no restart: connected clients and queued messages are untouched).
    Returns the existing credential if the gateway is already known."""
    validate_gateway_id(gateway_id)
    lay = _layout(dir)
    with _locked(lay):
        info = load_info(lay.root)
        if gateway_id in info.gateways:
            return info.gateways[gateway_id]
        cred = _make_credential(lay, gateway_id)
        info = _replace(info, gateways={**info.gateways, gateway_id: cred})
        _write_configs(lay, info)
        _save_info(info)
        if info.broker == "nats":
            from stack import nats

            nats.add_gateway(lay, info, cred, timeout)
        else:
            _reload_mosquitto(lay, info, [cred], timeout)
        return cred


def add_ingest_account(dir: str | os.PathLike[str], username: str, *,
                       timeout: float = START_TIMEOUT) -> Credential:
    """One more account of the ingest role (``ingest-<name>``), for a worker, a test or a
    recorder with a persistent session of its own; the running broker reloads. Returns
    the existing credential if the account is known."""
    validate_ingest_account(username)
    lay = _layout(dir)
    with _locked(lay):
        info = load_info(lay.root)
        if username == INGEST_USER:
            return info.ingest
        if username in info.ingest_accounts:
            return info.ingest_accounts[username]
        cred = _make_credential(lay, username)
        info = _replace(info, ingest_accounts={**info.ingest_accounts, username: cred})
        _write_configs(lay, info)
        _save_info(info)
        _reload_mosquitto(lay, info, [cred], timeout)
        return cred


def status(dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-component state: ``running`` means the recorded process is alive *and* answers
    (an MQTT login as ingest over TLS, InfluxDB /ping)."""
    lay = _layout(dir)
    out: dict[str, Any] = {"dir": str(lay.root), "stack_json": None, "running": False,
                           "components": {}, "gateways": []}
    info: StackInfo | None = None
    try:
        info = load_info(lay.root)
        out["stack_json"] = str(lay.json)
        out["gateways"] = sorted(info.gateways)
    except StackError as e:
        out["error"] = str(e)
    all_ok = info is not None
    out["broker"] = info.broker if info is not None else None
    for component in components(info):
        rec = _read_record(lay, component) if lay.run.exists() else None
        alive = rec is not None and _is_alive(rec)
        healthy = bool(alive and info is not None and _healthy(info, component))
        entry: dict[str, Any] = {
            "running": healthy,
            "pid": int(rec["pid"]) if rec is not None and alive else None,
            "process_alive": alive,
            "log": str(lay.log(component)),
        }
        if info is not None:
            entry["ports"] = _component_ports(info, component)
        out["components"][component] = entry
        all_ok = all_ok and healthy
    out["running"] = all_ok
    return out


# --------------------------------------------------------------------------- CLI


def default_dir() -> str:
    return os.environ.get("STATIONSEAL_STACK_DIR", ".stack")


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=default_dir(),
                   help="stack directory (default: $STATIONSEAL_STACK_DIR or .stack)")


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="stack_command", metavar="ACTION", required=True)

    sp = sub.add_parser("up", help="start (or reuse) the stack and write DIR/stack.json")
    _add_dir(sp)
    sp.add_argument("--gateways", default="",
                    help="comma-separated gateway ids to create MQTT credentials for")
    sp.add_argument("--database", default=None,
                    help=f"InfluxDB database to create (default {DEFAULT_DATABASE}; "
                         "fixed when the stack is first created)")
    sp.add_argument("--broker", choices=("mosquitto", "nats"), default="mosquitto",
                    help="mosquitto (one broker, the default) or nats (a 3-node JetStream "
                         "cluster with partitioned frames; fixed when the stack is created)")
    sp.add_argument("--partitions", type=int, default=None,
                    help="NATS only: partitions of the frames stream (default 16)")
    sp.add_argument("--json", action="store_true", help="print stack.json instead of a summary")
    sp.set_defaults(func=_cmd_up)

    sp = sub.add_parser("down", help="stop the processes started by `up`; keep data")
    _add_dir(sp)
    sp.set_defaults(func=_cmd_down)

    sp = sub.add_parser("status", help="show component state; exit 0 only if all are up")
    _add_dir(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_cmd_status)

    sp = sub.add_parser("env", help="print shell exports of the connection settings")
    _add_dir(sp)
    sp.set_defaults(func=_cmd_env)

    sp = sub.add_parser("add-gateway", help="create credentials for one more gateway")
    _add_dir(sp)
    sp.add_argument("gateway_id")
    sp.set_defaults(func=_cmd_add_gateway)

    for name, help_ in (("start", "start one component on its recorded ports"),
                        ("stop", "stop one component (outage drills)")):
        sp = sub.add_parser(name, help=help_)
        _add_dir(sp)
        sp.add_argument("component", choices=ALL_COMPONENTS)
        if name == "stop":
            sp.add_argument("--kill", action="store_true", help="SIGKILL (simulate a crash)")
        sp.set_defaults(func=_cmd_start if name == "start" else _cmd_stop)


def _usage(e: ValueError) -> Exception:
    from stationseal.cli import UsageError

    return UsageError(str(e))


def _fail(e: StackError) -> int:
    print(f"stationseal stack: {e}", file=sys.stderr)
    return 1


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        info = up(args.dir, _gateway_list(args.gateways), database=args.database,
                  broker=args.broker, partitions=args.partitions)
    except ValueError as e:
        raise _usage(e) from e
    except StackError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
    else:
        print(f"stack up: {info.json_path}")
        if info.nats is not None:
            from stack import nats

            ports = ", ".join(str(p) for p in nats.mqtt_ports(info))
            print(f"  mqtt      mqtts://{info.mqtt_host}:{{{ports}}} (MQTT 3.1.1, password); "
                  f"CA {info.ca_file}")
            print(f"  nats      {', '.join(nats.client_urls(info))} stream "
                  f"{info.nats['stream']} ({info.nats['partitions']} partitions, 3 replicas)")
        else:
            print(f"  mqtt      mqtts://{info.mqtt_host}:{info.mqtt_port} (password), "
                  f":{info.mqtt_mtls_port} (client cert); CA {info.ca_file}")
        print(f"  influxdb  {info.influx_url} database {info.influx_database}")
        print(f"  gateways  {', '.join(sorted(info.gateways)) or '(none)'}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        down(args.dir)
    except StackError as e:
        return _fail(e)
    print(f"stack down: {Path(args.dir).resolve()}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        st = status(args.dir)
    except StackError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"stack {st['dir']}: {'running' if st['running'] else 'NOT running'}")
        if "error" in st:
            print(f"  {st['error']}")
        for name, c in st["components"].items():
            state = "running" if c["running"] else (
                "not answering" if c["process_alive"] else "stopped")
            print(f"  {name:<10} {state:<14} pid {c['pid'] or '-'} ports {c.get('ports', '-')}")
    return 0 if st["running"] else 1


def _cmd_env(args: argparse.Namespace) -> int:
    try:
        info = load_info(args.dir)
    except StackError as e:
        return _fail(e)
    values = {
        "STATIONSEAL_STACK": str(info.json_path),
        "STATIONSEAL_MQTT_HOST": info.mqtt_host,
        "STATIONSEAL_MQTT_PORT": str(info.mqtt_port),
        "STATIONSEAL_MQTT_MTLS_PORT": str(info.mqtt_mtls_port),
        "STATIONSEAL_MQTT_CA": str(info.ca_file),
        "STATIONSEAL_INFLUX_URL": info.influx_url,
        "STATIONSEAL_INFLUX_DB": info.influx_database,
    }
    for k, v in values.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def _cmd_add_gateway(args: argparse.Namespace) -> int:
    try:
        cred = add_gateway(args.dir, args.gateway_id)
    except ValueError as e:
        raise _usage(e) from e
    except StackError as e:
        return _fail(e)
    print(json.dumps(cred.to_json(), indent=2))
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    try:
        start_component(args.dir, args.component)
    except StackError as e:
        return _fail(e)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        stop_component(args.dir, args.component, kill=args.kill)
    except StackError as e:
        return _fail(e)
    return 0
