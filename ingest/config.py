"""Configuration of the central ingest service (CENTRAL.yaml).

Every section forbids unknown keys: a misspelt key in a production config must stop the
service at start with the path of the key, not leave a default silently in force. Secrets
may be given inline (tests, demos) or as ``*_file`` paths (production: the file is
readable only by the service account, so the YAML can be shared for review).
"""

from __future__ import annotations

import reprlib
import zlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stationseal.chain import Limits


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file, key and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret(inline: str | None, path: Path | None, what: str) -> str | None:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{what}: cannot read {path}: {e}") from None
    return inline


class TLSConfig(_Strict):
    ca_file: Path | None = None
    """CA bundle to trust; None uses the system trust store."""
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    """Skip hostname checking (never in production; for brokers reached by IP)."""


class MQTTConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8883, ge=1, le=65535)
    tls: TLSConfig | None = TLSConfig()
    username: str | None = "ingest"
    """Broker account. ``{shard}`` is replaced by the worker index: with several workers
    each needs its own account, because the broker replaces client ids by account names
    (docs/security.md, "Client ids")."""
    password: str | None = None
    password_file: Path | None = None
    """May contain ``{shard}`` like ``username``."""
    client_id: str = Field(default="stationseal-ingest", min_length=1, max_length=64)
    """Fixed: the broker keeps the persistent session (subscriptions and queued QoS 1
    frames) under this id while ingest is down. With several workers ``-<index>`` is
    appended (or ``{shard}`` replaced). A broker configured as docs/security.md says
    replaces it by the account name anyway."""
    topic_prefix: str = "stationseal/v1"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    """How long the broker keeps the session (and queues frames) after ingest goes away."""
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    """Unacknowledged frames the broker may have in flight to this worker: the bound on
    what ingest holds in memory before it stops reading (backpressure)."""
    alerts_qos: Literal[0, 1] = 1
    acks: bool = True
    """Publish end-to-end acknowledgements on ``<topic_prefix>/<gateway>/acks`` after each
    commit (docs/acks.md); gateways configured with ``confirm: ingest`` delete frames
    only on them."""
    max_message_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Largest payload taken in. A bigger one is never queued: its SHA-256 digest and
    first bytes go to the quarantine (reason ``oversize``). Keep it equal to the broker's
    ``message_size_limit`` (docs/security.md, "Bounds")."""
    inflight_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """Payload bytes received and not yet processed, at most; beyond it the network
    thread waits (TCP backpressure), so memory stays bounded whatever the broker sends."""
    gateway_inflight_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    """Share of ``inflight_bytes`` one gateway's topic may hold. QoS 0 messages beyond it
    are summarised into the quarantine (digest, first bytes, reason ``overload``): a
    gateway flooding without flow control cannot crowd out the others."""

    def resolved_password(self) -> str | None:
        return _secret(self.password, self.password_file, "mqtt.password_file")


class InfluxConfig(_Strict):
    version: Literal[1, 2] = 1
    """1: InfluxDB 1.x HTTP API v1 (/write, database + retention policy). 2: the v2 write
    API (/api/v2/write, org + bucket + token), served by InfluxDB 2.x and 3.x."""
    url: str = "http://127.0.0.1:8086"
    database: str = "stationseal"
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    create_database: bool = False
    """v1 only: ``CREATE DATABASE`` at start (idempotent); needs admin rights."""
    org: str | None = None
    bucket: str | None = None
    token: str | None = None
    token_file: Path | None = None
    batch_lines: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_ms: int = Field(default=200, ge=1, le=60_000)
    timeout_s: float = Field(default=10.0, gt=0)
    max_backoff_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _v2_needs(self) -> InfluxConfig:
        if self.version == 2:
            missing = [k for k in ("org", "bucket") if not getattr(self, k)]
            if not (self.token or self.token_file):
                missing.append("token or token_file")
            if missing:
                raise ValueError(f"version 2 needs {', '.join(missing)}")
        return self

    def resolved_password(self) -> str | None:
        return _secret(self.password, self.password_file, "influx.password_file")

    def resolved_token(self) -> str | None:
        return _secret(self.token, self.token_file, "influx.token_file")


class ShardConfig(_Strict):
    count: int = Field(default=1, ge=1, le=1024)
    """Worker processes. Each gateway is owned by exactly one worker (crc32 of the gateway
    id modulo count), so its frames are processed in order by one chain tracker."""
    mode: Literal["filter", "shared"] = "filter"
    """filter: every worker subscribes to all frames with its own persistent session and
    acknowledges other workers' gateways unprocessed (works on any broker). shared: one
    shared subscription ``$share/<group>/...``; only correct on a broker that dispatches
    shared subscriptions by topic hash (EMQX ``hash_topic``), see docs/scaling.md."""
    share_group: str = "stationseal-ingest"


class NatsConfig(_Strict):
    """Consume frames from a NATS JetStream cluster instead of MQTT (ingest/nats_source.py).

    The gateways still speak MQTT, to the cluster's MQTT listeners; the cluster maps each
    gateway's frames onto one of ``partitions`` subjects and keeps them in ``stream``.
    ``shard.count`` worker processes share the partitions through leases in a key-value
    bucket; a dead worker's partitions move to the others after ``lease_ttl_s``."""

    servers: list[str] = Field(min_length=1)
    """Client URLs of the cluster's nodes, e.g. ``tls://10.0.0.5:4222``; any one suffices."""
    tls: TLSConfig | None = TLSConfig()
    username: str | None = "ingest"
    password: str | None = None
    password_file: Path | None = None
    stream: str = "FRAMES"
    partition_subject: str = "stationseal.frames"
    """Frames arrive on ``<partition_subject>.<partition>.<gateway>``."""
    partitions: int = Field(default=16, ge=1, le=1024)
    """Must equal P in the cluster's ``partition(P, 1)`` mapping; a frame on a partition
    its gateway does not hash to is quarantined (``partition_mismatch``)."""
    leases_bucket: str = "stationseal-ingest"
    lease_ttl_s: float = Field(default=10.0, ge=1.0, le=600.0)
    """A worker that stops renewing its leases for this long loses its partitions."""
    fetch_batch: int = Field(default=500, ge=1, le=10_000)
    max_ack_pending: int = Field(default=500, ge=1, le=512)
    """Frames per partition delivered and not yet acknowledged: with the inbox's byte
    bound, what a worker holds in memory before the stream stops delivering. At most the
    chain tracker's hash window (512 frames per gateway), so frames a killed worker had
    committed but not acknowledged come back to the next owner as recognised
    duplicates, never as replays."""
    ack_wait_s: float = Field(default=120.0, ge=1.0)
    """Redelivery of an unacknowledged frame to the same owner (long: InfluxDB outages
    hold acknowledgements back on purpose)."""

    def resolved_password(self) -> str | None:
        return _secret(self.password, self.password_file, "nats.password_file")


class ChainConfig(_Strict):
    gap_grace_s: float = Field(default=300.0, ge=0)
    """A missing sequence is reported after this long: live frames overtake backfill."""
    gap_check_interval_s: float = Field(default=5.0, gt=0)
    # The integrity bounds below default to the specification's values
    # (docs/wire-format.md §7.4, §8); `stationseal verify` uses those unless told
    # otherwise (--future-tolerance, --max-unsynced, --max-drop-span), so a deployment that
    # changes them passes the same values to verify its archive the way its ingest did.
    future_tolerance_s: int = Field(default=120, ge=1, le=3600)
    """created_future: how far (seconds) a frame's creation time may lie after its first
    arrival. Raise it only for gateways whose clocks legitimately drift further between
    synchronisations; beyond an hour it is no longer clock skew."""
    max_unsynced_s: int = Field(default=3600, ge=60, le=7 * 86400)
    """clock_unsynced: longest stretch (seconds of frame time) a gateway may seal frames
    saying its clock is not synchronised, e.g. longer for sites whose only time source is
    reachable a few times a day."""
    max_drop_span: int = Field(default=100_000, ge=1, le=1_000_000)
    """Most sequence numbers one signed data_dropped event may excuse. Lower: a longer
    drop (this agent splits at 100 000) becomes bad_drop_event and its range a gap. Higher:
    accepts gateways of another make that split their drops more coarsely."""

    def limits(self) -> Limits:
        return Limits(future_tolerance_ms=self.future_tolerance_s * 1000,
                      max_unsynced_ms=self.max_unsynced_s * 1000,
                      max_drop_span=self.max_drop_span)


class WebhookConfig(_Strict):
    url: str
    secret: str | None = None
    secret_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    def resolved_secret(self) -> str | None:
        return _secret(self.secret, self.secret_file, f"webhook {self.url}: secret_file")


class AlertsConfig(_Strict):
    mqtt: bool = True
    """Publish alerts on ``<topic_prefix>/alerts/<site>`` (JSON, QoS 1)."""
    influx: bool = True
    jsonl: Path | None = None
    webhooks: list[WebhookConfig] = []
    webhook_max_backoff_s: float = Field(default=600.0, gt=0)
    integrity_min_severity: Literal["low", "medium", "high"] = "medium"
    """Integrity events at or above this severity raise an alert (duplicates are low: they
    are counted and stored, not alerted)."""


class DetectionConfig(_Strict):
    enabled: bool = False
    """Feed verified samples and events to ingest.detectors.engine.DetectionEngine."""
    sites: Path | None = None
    """SITES.yaml (site kinds, limits, neighbours); required when enabled."""
    params: Path | None = None
    """PARAMS.yaml with per-rule parameter overrides."""
    rules: list[str] | None = None
    """Rule ids to run (default: all)."""
    reorder_s: float = Field(default=120.0, ge=0)
    """Samples are held this long per instrument and released in time order, because
    backfill arrives behind live data."""
    merge_gap_s: float = Field(default=6 * 3600.0, gt=0)
    finish_on_stop: bool = False
    """At stop, judge open tests and windows as if the data ended (demo, replays). Off in
    production: a test cut by a restart of the service is not the station's doing."""

    @model_validator(mode="after")
    def _sites_needed(self) -> DetectionConfig:
        if self.enabled and self.sites is None:
            raise ValueError("enabled detection needs sites (path of SITES.yaml)")
        return self


class MetricsConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)
    """0 picks a free port (tests). With several workers, worker k listens on port+1+k
    and the supervisor on port serves all workers' metrics and the combined health."""


class HJ212LoggerConfig(_Strict):
    """One legacy site's data logger, known by its MN."""

    mn: str = Field(min_length=1, max_length=64)
    site: str = Field(min_length=1, max_length=64)
    instrument: str = Field(default="logger", min_length=1, max_length=64)
    sm4_key: str | None = None
    """HJ 212-2025 SM4 key, 32 hex digits (or ``sm4_key_file``)."""
    sm4_key_file: Path | None = None

    def resolved_key(self) -> bytes | None:
        text = _secret(self.sm4_key, self.sm4_key_file, f"hj212.loggers[{self.mn}].sm4_key_file")
        if text is None:
            return None
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 16:
            raise ConfigError(f"hj212.loggers[{self.mn}]: SM4 key must be 32 hex digits")
        return key


class HJ212IngestConfig(_Strict):
    """Legacy sites without a gateway send HJ 212 straight to ingest (ingest/hj212_ingest.py).
    Their readings are stored unsigned (tag ``trust=unsigned``, docs/influx-schema.md)."""

    host: str = "127.0.0.1"
    """Loopback unless set: the listener accepts unauthenticated data, so exposing it to a
    network is a decision the config must state (``0.0.0.0``, or one interface)."""
    port: int = Field(default=9212, ge=0, le=65535)
    """0 picks a free port (tests)."""
    idle_timeout_s: float = Field(default=300.0, gt=0)
    """A connection that sends nothing for this long is closed (loggers reconnect)."""
    frame_timeout_s: float = Field(default=30.0, gt=0)
    """A frame must be complete this long after its first byte; else its bytes are
    quarantined as a truncated frame and the connection is closed."""
    max_connections: int = Field(default=256, ge=1, le=65535)
    """Open connections in total (also kept below the open-file limit minus a reserve,
    so a flood never starves /healthz or the state database of descriptors)."""
    max_per_address: int = Field(default=8, ge=1, le=65535)
    """Open connections from one remote address."""
    loggers: list[HJ212LoggerConfig] = []
    """MN -> site. Frames from an MN not listed are quarantined (and answered)."""
    dedup_days: float = Field(default=30.0, gt=0)
    """(MN, CN, QN, PNO) of stored frames are remembered this long: a resend is not
    stored twice."""

    @model_validator(mode="after")
    def _unique_mn(self) -> HJ212IngestConfig:
        seen: set[str] = set()
        for lg in self.loggers:
            if lg.mn in seen:
                raise ValueError(f"MN {lg.mn} listed twice")
            seen.add(lg.mn)
        return self


class CustodyConfig(_Strict):
    """The receipt log is always kept; checkpoints are signed when ``key_file`` is set
    (docs/evidence.md, deploy/ingest/README.md "central signing key")."""

    key_file: Path | None = None
    """The central service's Ed25519 private key (PEM, mode 0600), from
    ``stationseal evidence key generate``."""
    origin: str = Field(default="stationseal-central", min_length=1, max_length=64,
                        pattern=r"^[A-Za-z0-9._-]+$")
    """Names this central service in every checkpoint."""
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    checkpoint_max_receipts: int = Field(default=100_000, ge=1, le=10_000_000)


class QuarantineConfig(_Strict):
    """Bounds of the quarantine per source (a gateway's topic, an HJ 212 peer address):
    full payloads up to a byte budget and a rate; beyond them a SHA-256 digest and the
    first bytes of each payload; beyond a second rate only a count per source and hour.
    Nothing is dropped unrecorded, and no source can fill the disk (docs/security.md)."""

    max_bytes_per_source_day: int = Field(default=64 * 1024 * 1024, ge=0)
    """Full payload bytes kept per source in any 24 hours."""
    max_per_source_minute: int = Field(default=120, ge=0)
    """Full payloads kept per source per minute (burst up to this many)."""
    digest_per_source_minute: int = Field(default=600, ge=0)
    """Digest rows per source per minute; beyond, an hourly count per source and reason."""
    head_bytes: int = Field(default=256, ge=0, le=65536)
    """First bytes of a payload kept beside its digest (enough to recognise the content)."""


class SeriesConfig(_Strict):
    max_new_per_gateway_day: int = Field(default=2000, ge=1)
    """New InfluxDB series (measurement + tag set) one gateway may create per UTC day.
    Lines for further new series are kept in the state database (``write_rejects``) with
    an integrity alert instead of being written: a gateway, valid key or not, cannot
    exhaust the database's series or tag-value limits for everyone else. Existing series
    are never affected. A station has a few dozen series; a new instrument adds a few."""


class DiskConfig(_Strict):
    min_free_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    """Alert when a watched filesystem has less free space than this..."""
    min_free_pct: float = Field(default=5.0, ge=0, le=100)
    """...or less than this share free (whichever is reached first)."""
    check_interval_s: float = Field(default=30.0, gt=0)
    paths: list[Path] = []
    """Watched besides ``state_dir`` and ``archive_dir``: e.g. the data directory of a
    local InfluxDB (/var/lib/influxdb)."""


class EvidenceConfig(_Strict):
    """Evidence packages served on the metrics port (evidence/serve.py)."""

    token: str | None = None
    token_file: Path | None = None
    """Bearer token officers' tools send; without one, packages are not served."""
    cache_dir: Path | None = None
    """Where built packages are kept (default: state_dir/evidence)."""

    def resolved_token(self) -> str | None:
        return _secret(self.token, self.token_file, "evidence.token_file")


class IngestConfig(_Strict):
    mqtt: MQTTConfig = MQTTConfig()
    influx: InfluxConfig = InfluxConfig()
    registry: Path
    """The signed key registry (docs/wire-format.md §9)."""
    registry_authority: Path | None = None
    """The registry authority's public key (PEM): the registry must be signed by it."""
    registry_authority_fingerprint: str | None = Field(
        default=None, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")
    """Instead of the key file: its SHA-256 fingerprint (``keys authority fingerprint``)."""
    registry_check_s: float = Field(default=2.0, gt=0)
    """How often the key registry's mtime is checked; a changed file is reloaded."""
    state_dir: Path
    """SQLite state: chain trackers, quarantine, webhook outbox, rejected writes, alerts."""
    archive_dir: Path | None = None
    """If set, every accepted frame is appended to a daily frames file (export format)
    there, so the evidence a court needs survives independently of InfluxDB."""
    shard: ShardConfig = ShardConfig()
    chain: ChainConfig = ChainConfig()
    alerts: AlertsConfig = AlertsConfig()
    detection: DetectionConfig = DetectionConfig()
    metrics: MetricsConfig = MetricsConfig()
    custody: CustodyConfig = CustodyConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    series: SeriesConfig = SeriesConfig()
    disk: DiskConfig = DiskConfig()
    hj212: HJ212IngestConfig | None = None
    """TCP listener for HJ 212 loggers of legacy sites (started by worker 0)."""
    nats: NatsConfig | None = None
    """If set, frames come from this NATS JetStream cluster; ``mqtt`` is then unused."""

    @property
    def db_path(self) -> Path:
        return self.state_dir / "ingest.db"

    @model_validator(mode="after")
    def _registry_pinned(self) -> IngestConfig:
        if (self.registry_authority is None) == (self.registry_authority_fingerprint is None):
            raise ValueError("give exactly one of registry_authority (the registry "
                             "authority's public key file) and registry_authority_fingerprint:"
                             " the key registry is only trusted if that authority signed it")
        return self

    def registry_pin(self) -> str:
        """What stationseal.registry.AuthorityPin.parse takes."""
        if self.registry_authority is not None:
            return str(self.registry_authority)
        assert self.registry_authority_fingerprint is not None
        return self.registry_authority_fingerprint

    @model_validator(mode="after")
    def _worker_accounts(self) -> IngestConfig:
        if (self.shard.count > 1 and self.shard.mode == "filter" and self.nats is None
                and self.mqtt.username and "{shard}" not in self.mqtt.username):
            raise ValueError(
                "mqtt.username: with shard.count > 1 each worker keeps its own persistent "
                "session, and the broker ties sessions to accounts "
                "(use_username_as_clientid): use one account per worker, e.g. "
                "'ingest-{shard}' with password_file '/etc/stationseal/ingest-{shard}.pw'")
        return self


def shard_of(gateway_id: str, count: int) -> int:
    """Stable across processes and Python versions (unlike ``hash()``)."""
    return zlib.crc32(gateway_id.encode("utf-8")) % count if count > 1 else 0


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring = 3, 8, 8, 120


def parse_config(data: Any, source: str = "<config>", base: Path | None = None) -> IngestConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    try:
        cfg = IngestConfig.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            where = _loc(tuple(err["loc"]))
            val = err.get("input")
            # bounded: a YAML alias bomb expands to billions of items, and a full repr
            # of it would never finish
            shown = "" if isinstance(val, dict) else f" (got {_REPR.repr(val)})"
            msgs.append(f"{source}: {where}: {err['msg']}{shown}")
        raise ConfigError("\n".join(msgs)) from None
    if base is not None:
        cfg = _rebase(cfg, base)
    return cfg


def _rebase(cfg: IngestConfig, base: Path) -> IngestConfig:
    """Relative paths in a config file are relative to that file, not to the cwd."""

    def fix(model: BaseModel) -> BaseModel:
        upd: dict[str, Any] = {}
        for name in type(model).model_fields:
            v = getattr(model, name)
            if isinstance(v, Path) and not v.is_absolute():
                upd[name] = base / v
            elif isinstance(v, BaseModel):
                upd[name] = fix(v)
            elif isinstance(v, list) and v and isinstance(v[0], BaseModel):
                upd[name] = [fix(x) for x in v]
        return model.model_copy(update=upd) if upd else model

    out = fix(cfg)
    assert isinstance(out, IngestConfig)
    return out


def load_config(path: str | Path) -> IngestConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text: byte 0x{e.object[e.start]:02x} at "
                          f"offset {e.start}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    return parse_config(data, str(p), p.resolve().parent)


def config_from_stack(info: Any, registry: Path, state_dir: Path, **over: Any) -> IngestConfig:
    """A config that talks to a local stack (``stack.manager.StackInfo``): used by the
    demo, tests and benchmarks so they need not write YAML."""
    data: dict[str, Any] = {
        "mqtt": {
            "host": info.mqtt_host,
            "port": info.mqtt_port,
            "tls": {"ca_file": str(info.ca_file)},
            "username": info.ingest.username,
            "password_file": str(info.ingest.password_file),
            "topic_prefix": info.topic_prefix,
        },
        "influx": {"version": 1, "url": info.influx_url, "database": info.influx_database},
        "registry": str(registry),
        # Demos and tests keep the authority's key beside the registry
        # (stationseal.registry.Authority.beside); production configs name it.
        "registry_authority": str(Path(str(registry) + ".authority.pub.pem")),
        "state_dir": str(state_dir),
        "metrics": {"port": 0},
    }
    nats = getattr(info, "nats", None)
    if nats is not None:
        data["nats"] = {
            "servers": [f"tls://{info.mqtt_host}:{n['client_port']}" for n in nats["nodes"]],
            "tls": {"ca_file": str(info.ca_file)},
            "username": info.ingest.username,
            "password_file": str(info.ingest.password_file),
            "stream": nats["stream"],
            "partition_subject": nats["partition_subject"],
            "partitions": nats["partitions"],
            "leases_bucket": nats["leases_bucket"],
        }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    if "username" not in (over.get("mqtt") or {}):
        _stack_account(info, data)
    return parse_config(data, "<stack config>")


def _stack_account(info: Any, data: dict[str, Any]) -> None:
    """The broker ties each session to an account (use_username_as_clientid): a
    ``client_id`` of the form ``ingest-<name>`` gets an account of that name (created in
    the stack if missing), and with several filter-mode workers one account per worker
    (``<name>-<k>``, ``mqtt.username`` / ``password_file`` templates with ``{shard}``)."""
    from stack.manager import INGEST_ACCOUNT_RE, INGEST_USER, add_ingest_account

    m = data["mqtt"]
    cid = m.get("client_id")
    shard = data.get("shard") or {}
    count = int(shard.get("count", 1)) if isinstance(shard, dict) else 1
    mode = shard.get("mode", "filter") if isinstance(shard, dict) else "filter"
    several = count > 1 and mode == "filter" and not data.get("nats")
    if not isinstance(cid, str) or not INGEST_ACCOUNT_RE.match(cid.replace("{shard}", "0")):
        if not several or getattr(info, "dir", None) is None:
            return
        cid = INGEST_USER  # several workers need accounts of their own: ingest-<k>
    if several and "{shard}" not in cid:
        cid = f"{cid}-{{shard}}"
    creds = [add_ingest_account(info.dir, cid.replace("{shard}", str(k)))
             for k in range(count if "{shard}" in cid else 1)]
    m["client_id"] = cid
    m["username"] = cid
    # clients/<account>/password: a template with {shard} when there are several.
    m["password_file"] = str(creds[0].password_file.parent.parent / cid / "password")


def dump_config(cfg: IngestConfig) -> dict[str, Any]:
    """JSON-able form, e.g. to hand the same config to worker processes."""
    return cfg.model_dump(mode="json")


def preflight(cfg: IngestConfig) -> tuple[list[str], list[str]]:
    """Every file and directory the config refers to, checked before anything starts
    (``check-config`` and ``run``): ``(errors, warnings)``, one line each, naming the
    setting and the path. Errors stop the service with exit code 2."""
    from stationseal import preflight as pf

    errs: list[str | None] = []
    warns: list[str | None] = []

    def secret(path: Path | None, what: str) -> None:
        if path is None:
            return
        errs.append(pf.secret_file(path, what))
        warns.append(pf.secret_mode_warning(path, what))

    m = cfg.mqtt
    if m.tls is not None:
        if m.tls.ca_file is not None:
            errs.append(pf.ca_file(m.tls.ca_file, "mqtt.tls.ca_file"))
        errs += pf.cert_and_key(m.tls.cert_file, m.tls.key_file, "mqtt.tls.cert_file/key_file")
        if m.tls.key_file is not None:
            warns.append(pf.secret_mode_warning(m.tls.key_file, "mqtt.tls.key_file"))
    if m.password_file is not None and "{shard}" in str(m.password_file):
        for k in range(cfg.shard.count):
            secret(Path(str(m.password_file).replace("{shard}", str(k))),
                   f"mqtt.password_file (worker {k})")
    else:
        secret(m.password_file, "mqtt.password_file")
    if cfg.nats is not None:
        if cfg.nats.tls is not None and cfg.nats.tls.ca_file is not None:
            errs.append(pf.ca_file(cfg.nats.tls.ca_file, "nats.tls.ca_file"))
        secret(cfg.nats.password_file, "nats.password_file")
    secret(cfg.influx.password_file, "influx.password_file")
    secret(cfg.influx.token_file, "influx.token_file")
    secret(cfg.custody.key_file, "custody.key_file")
    errs.append(pf.readable_file(cfg.registry, "registry"))
    if cfg.registry_authority is not None:
        errs.append(pf.readable_file(cfg.registry_authority, "registry_authority"))
    errs.append(pf.writable_dir(cfg.state_dir, "state_dir"))
    if cfg.db_path.exists():
        errs.append(pf.writable_file(cfg.db_path, "state_dir (state database)"))
    if cfg.archive_dir is not None:
        errs.append(pf.writable_dir(cfg.archive_dir, "archive_dir"))
    if cfg.alerts.jsonl is not None:
        errs.append(pf.writable_file(cfg.alerts.jsonl, "alerts.jsonl"))
    for i, h in enumerate(cfg.alerts.webhooks):
        secret(h.secret_file, f"alerts.webhooks[{i}].secret_file")
    if cfg.detection.enabled:
        if cfg.detection.sites is not None:
            errs.append(pf.readable_file(cfg.detection.sites, "detection.sites"))
        if cfg.detection.params is not None:
            errs.append(pf.readable_file(cfg.detection.params, "detection.params"))
    if cfg.hj212 is not None:
        for i, lg in enumerate(cfg.hj212.loggers):
            what = f"hj212.loggers[{i}] (MN {lg.mn})"
            if lg.sm4_key_file is not None:
                err = pf.secret_file(lg.sm4_key_file, f"{what}.sm4_key_file")
                errs.append(err)
                warns.append(pf.secret_mode_warning(lg.sm4_key_file, f"{what}.sm4_key_file"))
                if err is None:
                    bad = pf.sm4_key_text(lg.sm4_key_file.read_text(encoding="utf-8"))
                    if bad:
                        errs.append(f"{what}.sm4_key_file: {lg.sm4_key_file}: {bad}")
            elif lg.sm4_key is not None:
                bad = pf.sm4_key_text(lg.sm4_key)
                if bad:
                    errs.append(f"{what}.sm4_key: {bad}")
    return [e for e in errs if e], [w for w in warns if w]
