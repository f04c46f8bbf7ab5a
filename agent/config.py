"""Site configuration: which instruments a gateway reads, how, and where frames go.

One YAML file per gateway (``firmware-config/sites/*.yaml``, reference in
docs/site-config.md). It is validated strictly, all at once, before anything starts: a
wrong baud rate found at 3 a.m. on a remote stack costs a site visit, so unknown keys,
dangling profile references, two instruments answering to one unit id on one bus, or a
serial port used with two line settings are all rejected with the file and the path
(``instruments[2].transport.baudrate``).

Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from agent import siteplan
from agent.profiles import Profile, load_profile, profile_file
from agent.signer import make_signer
from agent.yamlcfg import ConfigError, StrictModel, read_yaml, validate

__all__ = ["ConfigError", "InstrumentConfig", "SiteConfig", "config_hash", "load_site_config",
           "make_signer", "to_plan"]

SiteKind = Literal["vehicle_inspection", "stack_cems", "air_quality", "water_quality"]
ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _resolve(v: Any, info: ValidationInfo) -> Any:
    base = (info.context or {}).get("base_dir")
    if base is None or not isinstance(v, str | Path):
        return v  # None, or a wrong type that the Path validator names
    p = Path(v).expanduser()
    return p if p.is_absolute() else (Path(base) / p).resolve()


SitePath = Annotated[Path, BeforeValidator(_resolve)]


class ModbusTcpTransport(StrictModel):
    type: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)


class _SerialLine(StrictModel):
    port: str = Field(min_length=1)
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @property
    def line(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


class ModbusRtuTransport(_SerialLine):
    type: Literal["modbus_rtu"]


class SerialTransport(_SerialLine):
    type: Literal["serial"]


Transport = Annotated[ModbusTcpTransport | ModbusRtuTransport | SerialTransport,
                      Field(discriminator="type")]


class InstrumentConfig(StrictModel):
    id: str = Field(pattern=ID)
    #: file name in the profiles directory, with or without .yaml
    profile: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.ya?ml)?$")
    transport: Transport
    #: Modbus slave / unit id (ignored for raw serial)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    #: quiet time after each request before the bus is used again
    pause_s: float = Field(default=0.0, ge=0, le=10)
    #: largest block read in one request (registers; coils/discrete inputs: x16)
    max_registers: int = Field(default=125, ge=1, le=125)
    #: calibration/configuration registers are read this often, not every poll
    parameter_interval_s: float = Field(default=10.0, ge=0, le=86400)
    backoff_initial_s: float = Field(default=1.0, gt=0, le=3600)
    backoff_max_s: float = Field(default=60.0, gt=0, le=86400)
    lane: str | None = Field(default=None, pattern=ID)

    @property
    def profile_name(self) -> str:
        return self.profile.rsplit(".", 1)[0] if self.profile.endswith((".yaml", ".yml")) \
            else self.profile

    @model_validator(mode="after")
    def _backoff(self) -> InstrumentConfig:
        if self.transport.type == "modbus_rtu" and not 1 <= self.unit_id <= 247:
            raise ValueError("unit_id: RTU slave addresses are 1..247 (0 is broadcast)")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s: smaller than backoff_initial_s")
        return self


class TlsConfig(StrictModel):
    ca: SitePath
    cert: SitePath | None = None
    key: SitePath | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (client certificate authentication)")
        return self


class MqttUplink(StrictModel):
    type: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: SitePath | None = None
    topic_prefix: str = Field(default="stationseal/v1", pattern=r"^[^#+]+[^/#+]$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    #: MQTT version: "5" (refused publishes are reported in the PUBACK), "3.1.1" (brokers
    #: without 5, such as NATS 2.9's MQTT listener), or "auto": 5, and 3.1.1 from the
    #: first connection the broker refuses with "unsupported protocol version" on.
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    #: What lets the agent delete a frame (docs/acks.md): "ingest", the central
    #: service's acknowledgement after it stored the frame for good (end to end), or
    #: "broker", the broker's PUBACK "success" (for a central side without acks).
    confirm: Literal["ingest", "broker"] = "ingest"
    #: An accepted but unconfirmed frame is sent again after this long (doubling).
    confirm_timeout_s: float = Field(default=900.0, ge=10, le=7 * 86400)
    #: The broker keeps the acknowledgements for the gateway this long while it is away.
    session_expiry_s: int = Field(default=86400, ge=60, le=30 * 86400)


class FileUplink(StrictModel):
    """Air-gapped sites: frames appended to a JSON Lines export file."""

    type: Literal["file"]
    path: SitePath


def _uplink_shorthand(v: Any) -> Any:
    if isinstance(v, str):
        if v.startswith("file:") and len(v) > 5:
            return {"type": "file", "path": v[5:]}
        raise ValueError("uplink: a string uplink must be 'file:PATH'")
    return v


Uplink = Annotated[MqttUplink | FileUplink, Field(discriminator="type"),
                   BeforeValidator(_uplink_shorthand)]


def _byte_size(v: Any) -> Any:
    if isinstance(v, str):
        units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6,
                 "gb": 10**9, "b": 1}
        s = v.strip().lower().replace(" ", "")
        for suffix, mult in units.items():
            if s.endswith(suffix) and s[: -len(suffix)].replace(".", "", 1).isdigit():
                return int(float(s[: -len(suffix)]) * mult)
        raise ValueError(f"size {v!r}: use bytes or a number with KiB/MiB/GiB/kB/MB/GB")
    return v


class OutboxConfig(StrictModel):
    """Local store-and-forward buffer (the runtime's SQLite outbox)."""

    path: SitePath
    max_bytes: Annotated[int, BeforeValidator(_byte_size)] = Field(default=512 * 2**20,
                                                                     ge=2**20)
    max_age_s: float = Field(default=30 * 86400, gt=0)
    batch_max_readings: int = Field(default=500, ge=1, le=100_000)
    batch_max_ms: int = Field(default=1000, ge=10, le=600_000)
    #: "batch": fsync once per sealed batch; "interval": at most every fsync_interval_s;
    #: "off": leave it to the OS (lose the last seconds on power cut)
    fsync: Literal["batch", "interval", "off"] = "batch"
    fsync_interval_s: float = Field(default=1.0, gt=0, le=300)


class Hj212Serial(_SerialLine):
    """The logger's upper-platform port wired to the gateway (RS-232/485)."""


class Hj212Listener(StrictModel):
    """Accept HJ 212 frames from the site's data logger (reported-vs-measured checks).
    agent/hj212_source.py reads it; docs/hj212.md, "The gateway as upper platform"."""

    host: str = "0.0.0.0"
    #: TCP port the logger connects to (required unless ``serial`` is given)
    port: int | None = Field(default=None, ge=1, le=65535)
    #: MN codes accepted (empty: any)
    mn: list[str] = Field(default_factory=list)
    #: instrument id of the reported values (aggregates: ``<id>.minute/.hour/.day``)
    instrument: str = Field(default="logger", pattern=ID)
    #: how often buffered frames are handed to the sealer (answers wait for sealing)
    poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    #: a frame not sealed within this time is not answered (the logger resends it)
    ack_timeout_s: float = Field(default=10.0, gt=0, le=600)
    #: file holding the logger's SM4 key (32 hex digits), HJ 212-2025 encrypted CP
    sm4_key_file: SitePath | None = None
    serial: Hj212Serial | None = None

    @model_validator(mode="after")
    def _endpoint(self) -> Hj212Listener:
        if self.port is None and self.serial is None:
            raise ValueError("port: required (or serial: for a logger on a serial line)")
        return self


class ClockConfig(StrictModel):
    ntp_check: bool = True
    #: SNTP servers ("host", "host:port") the agent measures its own offset against; the
    #: clock state sealed in frames then rests on that measurement (agent/clock.py).
    #: Empty: the kernel's NTP state (adjtimex) decides.
    ntp_servers: list[str] = Field(default_factory=list)
    #: One server (older configs): the same as a one-element ntp_servers
    ntp_server: str | None = None
    max_offset_s: float = Field(default=1.0, gt=0)
    check_interval_s: float = Field(default=600.0, ge=10)

    def servers(self) -> list[str]:
        return [*self.ntp_servers, *([self.ntp_server] if self.ntp_server else [])]


class Pkcs11Key(StrictModel):
    """A P-256 key that lives in a PKCS#11 token and never leaves it: a TPM 2.0 through
    tpm2-pkcs11, an ATECC608 through cryptoauthlib, SoftHSM in tests (deploy/agent/
    hardware-keys.md). The PIN only authorises use of the key on this device."""

    module: SitePath
    token_label: str = Field(min_length=1)
    key_label: str = Field(min_length=1)
    pin_file: SitePath


class SiteConfig(StrictModel):
    site: str = Field(pattern=ID)
    gateway_id: str = Field(pattern=ID)
    kind: SiteKind
    #: the gateway's private key in a file (PKCS#8 PEM, 0600) ...
    key_file: SitePath | None = None
    #: ... or in a hardware token (exactly one of the two)
    key_pkcs11: Pkcs11Key | None = None
    #: where instrument profiles live (default: firmware-config/instruments beside sites/)
    profiles_dir: SitePath = Field(default=Path("../instruments"), validate_default=True)
    uplink: Uplink
    outbox: OutboxConfig
    instruments: list[InstrumentConfig] = Field(min_length=1)
    hj212: Hj212Listener | None = None
    clock: ClockConfig = ClockConfig()

    _source: Path | None = PrivateAttr(default=None)
    _profiles: dict[str, Profile] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_checks(self) -> SiteConfig:
        if (self.key_file is None) == (self.key_pkcs11 is None):
            raise ValueError("give exactly one of key_file (a key file) and key_pkcs11 (a "
                             "key in a hardware token)")
        ids: dict[str, int] = {}
        units: dict[tuple[str, int], int] = {}
        lines: dict[str, tuple[int, str, tuple[int, str, int, int]]] = {}
        for i, inst in enumerate(self.instruments):
            where = f"instruments[{i}]"
            if inst.id in ids:
                raise ValueError(f"{where}.id: {inst.id!r} already used by "
                                 f"instruments[{ids[inst.id]}]")
            ids[inst.id] = i
            t = inst.transport
            if isinstance(t, ModbusTcpTransport):
                bus = f"tcp://{t.host}:{t.port}"
            else:
                bus = t.port
                prev = lines.get(bus)
                if prev is not None and (prev[1] != t.type or prev[2] != t.line):
                    j = prev[0]
                    raise ValueError(f"{where}.transport: port {bus} is already used by "
                                     f"instruments[{j}] as {prev[1]} with line settings "
                                     f"{prev[2]}; one port, one protocol and one setting")
                lines.setdefault(bus, (i, t.type, t.line))
                if isinstance(t, SerialTransport) and prev is not None:
                    raise ValueError(f"{where}.transport.port: raw serial port {bus} is "
                                     f"already used by instruments[{prev[0]}]")
            if not isinstance(t, SerialTransport):
                key = (bus, inst.unit_id)
                if key in units:
                    raise ValueError(f"{where}.unit_id: unit {inst.unit_id} on {bus} is "
                                     f"already instruments[{units[key]}]")
                units[key] = i
        return self

    @property
    def source(self) -> Path | None:
        return self._source

    def profile(self, inst: InstrumentConfig | str) -> Profile:
        """The validated profile of an instrument (loaded by :func:`load_site_config`)."""
        name = inst.profile_name if isinstance(inst, InstrumentConfig) else \
            self.instrument(inst).profile_name
        if name not in self._profiles:
            self._profiles[name] = load_profile(profile_file(self.profiles_dir, name))
        return self._profiles[name]

    def instrument(self, inst_id: str) -> InstrumentConfig:
        for inst in self.instruments:
            if inst.id == inst_id:
                return inst
        raise KeyError(inst_id)

    @property
    def site_dir(self) -> Path:
        return self._source.parent if self._source else Path.cwd()


def parse_site_config(data: Any, source: str, base_dir: Path) -> SiteConfig:
    """Validate an already-parsed config (the simulator rewrites transports in memory)."""
    cfg = validate(SiteConfig, data, source, context={"base_dir": base_dir})
    errors = []
    for i, inst in enumerate(cfg.instruments):
        path = profile_file(cfg.profiles_dir, inst.profile_name)
        if not path.exists():
            errors.append(f"{source}: instruments[{i}].profile: no profile file {path}")
            continue
        try:
            prof = cfg.profile(inst)
        except ConfigError as e:
            errors.append(f"{source}: instruments[{i}].profile: invalid profile:\n  "
                          + str(e).replace("\n", "\n  "))
            continue
        serial = inst.transport.type == "serial"
        if (prof.protocol == "serial") != serial:
            errors.append(f"{source}: instruments[{i}].transport.type: profile {prof.id} speaks "
                          f"{prof.protocol}, transport is {inst.transport.type}")
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def load_site_config(path: str | Path) -> SiteConfig:
    """Load, validate and cross-check a site config and the profiles it references.

    Raises :class:`ConfigError` whose message names the file, the path inside it and the
    problem, one line per problem.
    """
    p = Path(path)
    cfg = parse_site_config(read_yaml(p), str(p), p.resolve().parent)
    cfg._source = p.resolve()
    return cfg


def config_hash(cfg: SiteConfig) -> str:
    """SHA-256 over the validated config and the profiles it uses (canonical JSON), so
    comments and key order do not change it but any effective setting does."""
    # Profiles hold raw bytes (binary serial requests such as b"\xa5\x01\xa6") that JSON
    # mode would try to read as UTF-8: dump them as Python objects, bytes as hex.
    doc = {
        "site": cfg.model_dump(mode="json"),
        "profiles": {i.profile_name: cfg.profile(i).model_dump(mode="python")
                     for i in cfg.instruments},
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"),
                     default=lambda o: o.hex() if isinstance(o, bytes) else str(o)).encode()
    return hashlib.sha256(raw).hexdigest()


def to_plan(cfg: SiteConfig) -> siteplan.SiteConfig:
    """The validated config as the plain frozen copy the runtime works on (agent/
    siteplan.py): every field, every instrument's profile, the config hash."""
    plain: siteplan.SiteConfig = siteplan.to_plain(cfg)
    profiles = {i.profile_name: siteplan.to_plain(cfg.profile(i)) for i in cfg.instruments}
    return dataclasses.replace(plain, source=cfg.source, profiles=profiles,
                               config_hash=config_hash(cfg))


def preflight(cfg: SiteConfig, *, uplink: bool = True) -> tuple[list[str], list[str]]:
    """Every file and directory the site config refers to, checked before the agent
    starts (``agent check-config`` and ``agent run``): ``(errors, warnings)``, one line
    each naming the setting and the path. Errors stop the agent with exit code 2: a
    gateway that cannot sign, store or connect must say why at once, not after a
    traceback in the journal."""
    from stationseal import preflight as pf
    from stationseal.signing import SigningError, load_signer

    errs: list[str | None] = []
    warns: list[str | None] = []
    if cfg.key_file is not None:
        err = pf.secret_file(cfg.key_file, "key_file")
        if err is None:
            try:
                load_signer(cfg.key_file)
            except SigningError as e:
                err = f"key_file: {e}"
    else:
        assert cfg.key_pkcs11 is not None
        k = cfg.key_pkcs11
        err = pf.readable_file(k.module, "key_pkcs11.module") or \
            pf.secret_file(k.pin_file, "key_pkcs11.pin_file")
        warns.append(pf.secret_mode_warning(k.pin_file, "key_pkcs11.pin_file"))
        if err is None:
            try:
                getattr(make_signer(cfg), "close", lambda: None)()
            except SigningError as e:
                err = f"key_pkcs11: {e}"
    errs.append(err)
    up = cfg.uplink
    if not uplink:
        pass
    elif isinstance(up, MqttUplink):
        if up.tls is not None:
            errs.append(pf.ca_file(up.tls.ca, "uplink.tls.ca"))
            errs += pf.cert_and_key(up.tls.cert, up.tls.key, "uplink.tls.cert/key")
            if up.tls.key is not None:
                warns.append(pf.secret_mode_warning(up.tls.key, "uplink.tls.key"))
        if up.password_file is not None:
            errs.append(pf.secret_file(up.password_file, "uplink.password_file"))
            warns.append(pf.secret_mode_warning(up.password_file, "uplink.password_file"))
    else:
        errs.append(pf.writable_file(up.path, "uplink.path"))
    errs.append(pf.writable_dir(cfg.outbox.path.parent, "outbox.path (its directory)"))
    if cfg.outbox.path.exists():
        errs.append(pf.writable_file(cfg.outbox.path, "outbox.path"))
    if cfg.hj212 is not None and cfg.hj212.sm4_key_file is not None:
        kf = cfg.hj212.sm4_key_file
        err = pf.secret_file(kf, "hj212.sm4_key_file")
        if err is None:
            bad = pf.sm4_key_text(kf.read_text(encoding="utf-8"))
            err = None if bad is None else f"hj212.sm4_key_file: {kf}: {bad}"
        errs.append(err)
        warns.append(pf.secret_mode_warning(kf, "hj212.sm4_key_file"))
    for i, inst in enumerate(cfg.instruments):
        t = inst.transport
        if not isinstance(t, ModbusTcpTransport) and not Path(t.port).exists():
            # An unplugged USB adapter is a fault the agent reports and rides out, not a
            # reason to refuse to start: a warning only.
            warns.append(f"instruments[{i}].transport.port: {t.port}: no such device now")
    if cfg.hj212 is not None and cfg.hj212.serial is not None \
            and not Path(cfg.hj212.serial.port).exists():
        warns.append(f"hj212.serial.port: {cfg.hj212.serial.port}: no such device now")
    return [e for e in errs if e], [w for w in warns if w]
