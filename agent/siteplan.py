"""The validated site config and profiles as plain frozen dataclasses: what the runtime uses.

The pydantic models of agent/config.py and agent/profiles.py are the *validation*: strict,
all at once, errors naming file and path. They cost the gateway ~11 MB of resident memory
(pydantic, its core library, the built schemas) for as long as the process lives, on a
budget of 35 MB. So `agent run` validates in a short-lived child process (agent/
configproc.py) and the long-running agent works on these copies, made field by field from
the validated models (:func:`to_plain`); this module never imports pydantic.

Classes mirror the models one to one, with the same names and field names (a test keeps
them in step: a key added to a model and forgotten here fails it). Lists become tuples.
Only what the runtime reads is kept as behaviour (``line``, ``profile_name``,
``register_count``, ``out_unit``, ``flag_for``...); validators stay on the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.codec import NUMERIC_TYPES
from stationseal.signals import BY_NAME

__all__ = ["ConfigError", "InstrumentConfig", "Profile", "SiteConfig", "to_plain"]


class ConfigError(Exception):
    """A profile or site configuration that cannot be used; the message names file,
    path inside the file, and problem."""


_D = {"frozen": True, "slots": True, "kw_only": True}

#: Modbus function code that reads each register type.
FUNCTION_CODES: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: When several conditions hold, the reading carries the most severe flag.
FLAG_PRIORITY = "DFMCST"


def canonical_unit(signal: str) -> str:
    sig = BY_NAME.get(signal) or BY_NAME[signal.split(".", 1)[0]]
    return sig.unit


def decimals_of(*numbers: float) -> int | None:
    """Decimal places a scaled integer can carry, so 0.001 * 1234 is stored as 1.234 and
    not 1.2340000000000002 (the raw bytes are signed alongside, nothing is lost).

    Read from the shortest repr of each float (what ``Decimal(repr(x))`` would see)."""
    places = 0
    for n in numbers:
        text = repr(float(n)).lower()
        if text in ("inf", "-inf", "nan"):
            continue
        mant, _, exp = text.partition("e")
        frac = mant.partition(".")[2].rstrip("0")
        places = max(places, len(frac) - int(exp or 0))
    return places if places <= 12 else None


# ------------------------------------------------------------------------ site config


@dataclass(**_D)
class ModbusTcpTransport:
    type: str
    host: str
    port: int


@dataclass(**_D)
class _SerialLine:
    port: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int

    @property
    def line(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


@dataclass(**_D)
class ModbusRtuTransport(_SerialLine):
    type: str


@dataclass(**_D)
class SerialTransport(_SerialLine):
    type: str


Transport = ModbusTcpTransport | ModbusRtuTransport | SerialTransport


@dataclass(**_D)
class InstrumentConfig:
    id: str
    profile: str
    transport: Transport
    unit_id: int
    poll_interval_s: float
    timeout_s: float
    pause_s: float
    max_registers: int
    parameter_interval_s: float
    backoff_initial_s: float
    backoff_max_s: float
    lane: str | None

    @property
    def profile_name(self) -> str:
        return self.profile.rsplit(".", 1)[0] if self.profile.endswith((".yaml", ".yml")) \
            else self.profile


@dataclass(**_D)
class TlsConfig:
    ca: Path
    cert: Path | None
    key: Path | None


@dataclass(**_D)
class MqttUplink:
    type: str
    host: str
    port: int
    tls: TlsConfig | None
    username: str | None
    password_file: Path | None
    topic_prefix: str
    keepalive_s: int
    protocol: str
    confirm: str
    confirm_timeout_s: float
    session_expiry_s: int


@dataclass(**_D)
class FileUplink:
    type: str
    path: Path


@dataclass(**_D)
class OutboxConfig:
    path: Path
    max_bytes: int
    max_age_s: float
    batch_max_readings: int
    batch_max_ms: int
    fsync: str
    fsync_interval_s: float


@dataclass(**_D)
class Hj212Serial(_SerialLine):
    pass


@dataclass(**_D)
class Hj212Listener:
    host: str
    port: int | None
    mn: tuple[str, ...]
    instrument: str
    poll_interval_s: float
    ack_timeout_s: float
    sm4_key_file: Path | None
    serial: Hj212Serial | None


@dataclass(**_D)
class ClockConfig:
    ntp_check: bool
    ntp_servers: tuple[str, ...]
    ntp_server: str | None
    max_offset_s: float
    check_interval_s: float

    def servers(self) -> list[str]:
        return [*self.ntp_servers, *([self.ntp_server] if self.ntp_server else [])]


@dataclass(**_D)
class Pkcs11Key:
    module: Path
    token_label: str
    key_label: str
    pin_file: Path


@dataclass(**_D)
class SiteConfig:
    site: str
    gateway_id: str
    kind: str
    key_file: Path | None
    key_pkcs11: Pkcs11Key | None
    profiles_dir: Path
    uplink: MqttUplink | FileUplink
    outbox: OutboxConfig
    instruments: tuple[InstrumentConfig, ...]
    hj212: Hj212Listener | None
    clock: ClockConfig
    # -- not in the YAML: what validation established about it
    #: the config file (None when validated from memory)
    source: Path | None = None
    #: profile name -> its validated profile, for every instrument
    profiles: dict[str, Profile] = field(default_factory=dict)
    #: SHA-256 of the validated config and its profiles (agent.config.config_hash)
    config_hash: str = ""

    def profile(self, inst: InstrumentConfig | str) -> Profile:
        name = inst.profile_name if isinstance(inst, InstrumentConfig) else \
            self.instrument(inst).profile_name
        return self.profiles[name]

    def instrument(self, inst_id: str) -> InstrumentConfig:
        for inst in self.instruments:
            if inst.id == inst_id:
                return inst
        raise KeyError(inst_id)

    @property
    def site_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()


# ------------------------------------------------------------------------ profiles


@dataclass(**_D)
class _Valued:
    signal: str
    scale: float
    offset: float
    unit: str | None
    range: tuple[float, float] | None
    role: str
    note: str

    @property
    def out_unit(self) -> str:
        return self.unit or canonical_unit(self.signal)


@dataclass(**_D)
class StatusFlags:
    bits: dict[int, str]
    values: dict[int, str]

    def flag_for(self, word: int) -> str:
        """Most severe flag the word implies, '' for none."""
        found = {f for b, f in self.bits.items() if word >> b & 1}
        if word in self.values:
            found.add(self.values[word])
        for f in FLAG_PRIORITY:
            if f in found:
                return f
        return ""


@dataclass(**_D)
class ModbusStatus(StatusFlags):
    table: str
    address: int
    data_type: str
    word_order: str
    count: int

    @property
    def register_count(self) -> int:
        if self.table in ("coil", "discrete"):
            return self.count
        return 2 if self.data_type == "uint32" else 1


@dataclass(**_D)
class ModbusPoint(_Valued):
    table: str
    address: int
    data_type: str
    word_order: str
    length: int | None
    bit: int | None

    @property
    def register_count(self) -> int:
        if self.data_type == "bits":
            return 1
        if self.data_type == "string":
            assert self.length is not None
            return self.length
        return NUMERIC_TYPES[self.data_type][0] // 2


@dataclass(**_D)
class DelimiterFraming:
    type: str
    start: bytes
    end: bytes
    max_length: int


@dataclass(**_D)
class LengthFraming:
    type: str


@dataclass(**_D)
class Checksum:
    type: str
    encoding: str
    byte_order: str | None
    cover_from: int
    gap: int


@dataclass(**_D)
class SerialStatus(StatusFlags):
    index: int | None
    group: str | None
    byte_offset: int | None
    data_type: str | None
    byte_order: str
    base: int


@dataclass(**_D)
class SerialField(_Valued):
    index: int | None
    group: str | None
    byte_offset: int | None
    data_type: str | None
    byte_order: str


@dataclass(**_D)
class SerialMessage:
    name: str
    request: bytes | None
    match: bytes
    length: int | None
    regex: str | None
    format: str | None
    fields: tuple[SerialField, ...]
    status: SerialStatus | None


@dataclass(**_D)
class SerialSpec:
    mode: str
    encoding: str
    framing: DelimiterFraming | LengthFraming
    checksum: Checksum
    separator: str | None
    output_interval_s: float
    messages: tuple[SerialMessage, ...]


@dataclass(**_D)
class Profile:
    id: str
    version: str
    vendor: str
    model: str
    description: str
    protocol: str
    points: tuple[ModbusPoint, ...]
    status: ModbusStatus | None
    serial: SerialSpec | None

    @property
    def measurement_signals(self) -> list[str]:
        if self.protocol == "modbus":
            return [p.signal for p in self.points if p.role == "measurement"]
        assert self.serial is not None
        return [f.signal for m in self.serial.messages for f in m.fields
                if f.role == "measurement"]


# ------------------------------------------------------------------------ conversion

#: The model classes mirrored here, by name (the pydantic model of the same name).
MIRRORED: tuple[type, ...] = (
    ModbusTcpTransport, ModbusRtuTransport, SerialTransport, InstrumentConfig, TlsConfig,
    MqttUplink, FileUplink, OutboxConfig, Hj212Serial, Hj212Listener, ClockConfig,
    Pkcs11Key, SiteConfig, ModbusStatus, ModbusPoint, DelimiterFraming, LengthFraming,
    Checksum, SerialStatus, SerialField, SerialMessage, SerialSpec, Profile,
)
_BY_NAME: dict[str, type] = {c.__name__: c for c in MIRRORED}


def is_model(obj: object) -> bool:
    """A pydantic model instance (told without importing pydantic)."""
    return hasattr(type(obj), "model_fields") and hasattr(obj, "model_dump")


def to_plain(obj: Any) -> Any:
    """The plain copy of a validated model (recursively): same class name and fields,
    lists as tuples. Anything that is not a model is returned as it is."""
    if is_model(obj):
        cls = _BY_NAME.get(type(obj).__name__)
        if cls is None:
            raise TypeError(f"no plain mirror of {type(obj).__name__}")
        names = type(obj).model_fields
        return cls(**{n: to_plain(getattr(obj, n)) for n in names})
    if isinstance(obj, list | tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def plain_site(cfg: Any) -> SiteConfig:
    """A validated site config (pydantic, agent.config.SiteConfig) as the plain copy the
    runtime uses, with every instrument's profile and the config hash; a plain copy is
    returned as it is. Imports the pydantic side only when handed a model."""
    if isinstance(cfg, SiteConfig):
        return cfg
    from agent.config import to_plan

    return to_plan(cfg)
