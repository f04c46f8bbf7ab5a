"""Instrument profiles: what an instrument says on the wire and what it means.

A profile (``firmware-config/instruments/<id>.yaml``, schema in docs/profiles.md) maps
registers or serial frame fields to canonical signals (:mod:`stationseal.signals`), so the
same reader code serves every analyzer brand and a detector written for ``co_pct`` works
whichever analyzer a station bought. Validation is strict and happens once at load time;
the hot path (agent/modbus.py, agent/serial_reader.py) works on plain precompiled
structures derived from these models, never on pydantic objects.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent.codec import NUMERIC_TYPES
from agent.siteplan import FLAG_PRIORITY, FUNCTION_CODES, canonical_unit, decimals_of
from agent.yamlcfg import ConfigError, StrictModel, read_yaml, validate
from stationseal.records import QUALITY_FLAGS
from stationseal.signals import is_known

__all__ = ["FLAG_PRIORITY", "FUNCTION_CODES", "Profile", "canonical_unit", "decimals_of",
           "load_profile", "profile_file"]

RegisterType = Literal["coil", "discrete", "holding", "input"]
WordOrder = Literal["ABCD", "BADC", "CDAB", "DCBA"]
Role = Literal["measurement", "calibration", "configuration"]
ModbusDataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32",
                         "float64", "string", "bits"]
BinaryDataType = Literal["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                         "uint64", "float32", "float64"]

#: Status flags an instrument may declare; "N" is the absence of a flag, "B" and "T" are
#: set by the gateway itself (communication failure, over range).
STATUS_FLAGS = tuple(f for f in QUALITY_FLAGS if f not in ("N", "B", "T"))

PROFILE_ID = r"^[a-z][a-z0-9_]{0,47}$"


def _latin1(v: Any) -> Any:
    """Byte strings are written as YAML strings, one character per byte (``"\\xA5\\x01"``
    in double quotes), because YAML has no byte literal that people can read."""
    if isinstance(v, str):
        try:
            return v.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("byte strings may only contain characters \\x00-\\xff; use "
                             "\\xNN escapes in a double-quoted YAML string") from None
    return v


Bytes = Annotated[bytes, BeforeValidator(_latin1)]


class _Valued(StrictModel):
    """What every point and field shares: the canonical signal and how to scale it."""

    signal: str
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    range: tuple[float, float] | None = None
    role: Role = "measurement"
    note: str = ""

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str) -> str:
        if not is_known(v):
            raise ValueError(f"unknown signal {v!r}: not in stationseal.signals "
                             "(parameters are '<parameter>.<signal>', e.g. span_coeff.co_pct)")
        return v

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v

    @field_validator("range")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError("range must be [low, high] with low < high")
        return v

    @model_validator(mode="after")
    def _unit_and_role(self) -> _Valued:
        want = canonical_unit(self.signal)
        if self.unit is not None and self.unit != want:
            raise ValueError(f"unit {self.unit!r} differs from the canonical unit {want!r} of "
                             f"{self.signal}: scale/offset must convert to the canonical unit")
        is_param = "." in self.signal
        if is_param and self.role == "measurement":
            raise ValueError(f"{self.signal} is an instrument parameter: role must be "
                             "calibration or configuration")
        if not is_param and self.role != "measurement":
            raise ValueError(f"role {self.role} needs a parameter signal such as "
                             f"span_coeff.{self.signal}")
        return self

    @property
    def out_unit(self) -> str:
        return self.unit or canonical_unit(self.signal)


class StatusFlags(StrictModel):
    """Bits or whole values of a status word that mean maintenance, calibration, fault."""

    bits: dict[int, str] = Field(default_factory=dict)
    values: dict[int, str] = Field(default_factory=dict)

    @field_validator("bits")
    @classmethod
    def _bit_numbers(cls, v: dict[int, str]) -> dict[int, str]:
        for bit in v:
            if not 0 <= bit <= 63:
                raise ValueError(f"bit {bit} outside 0..63")
        return v

    @field_validator("bits", "values")
    @classmethod
    def _flags(cls, v: dict[int, str]) -> dict[int, str]:
        for key, flag in v.items():
            if flag not in STATUS_FLAGS:
                raise ValueError(f"{key}: flag {flag!r} is not one of {', '.join(STATUS_FLAGS)}")
        return v

    @model_validator(mode="after")
    def _something(self) -> StatusFlags:
        if not self.bits and not self.values:
            raise ValueError("status needs 'bits' or 'values'")
        return self

    def flag_for(self, word: int) -> str:
        """Most severe flag the word implies, '' for none."""
        found = {f for b, f in self.bits.items() if word >> b & 1}
        if word in self.values:
            found.add(self.values[word])
        for f in FLAG_PRIORITY:
            if f in found:
                return f
        return ""


class ModbusStatus(StatusFlags):
    """A status register (or run of coils/discrete inputs read as one bit field)."""

    #: register type; the attribute is ``table`` because pydantic models already have a
    #: ``register`` (ABC) method
    table: RegisterType = Field(alias="register")
    address: int = Field(ge=0, le=65535)
    data_type: Literal["uint16", "uint32"] = "uint16"
    word_order: WordOrder = "ABCD"
    #: coils / discrete inputs: how many (bit n = address + n)
    count: int = Field(default=16, ge=1, le=64)

    @property
    def register_count(self) -> int:
        if self.table in ("coil", "discrete"):
            return self.count
        return 2 if self.data_type == "uint32" else 1


class ModbusPoint(_Valued):
    table: RegisterType = Field(alias="register")
    #: 0-based protocol (PDU) address, as sent in the request. Manuals that count from 1
    #: or print 40001-style numbers must be converted: see docs/profiles.md.
    address: int = Field(ge=0, le=65535)
    data_type: ModbusDataType
    word_order: WordOrder = "ABCD"
    #: strings: number of registers
    length: int | None = Field(default=None, ge=1, le=125)
    #: bits read from a holding/input register: bit number, 0 = least significant
    bit: int | None = Field(default=None, ge=0, le=15)

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        bitwise = self.table in ("coil", "discrete")
        if bitwise and self.data_type != "bits":
            raise ValueError(f"{self.table} registers hold single bits: data_type must be "
                             "bits")
        if self.data_type == "bits" and not bitwise and self.bit is None:
            raise ValueError("data_type bits on a holding/input register needs 'bit' (0-15)")
        if self.bit is not None and (bitwise or self.data_type != "bits"):
            raise ValueError("'bit' only applies to data_type bits on holding/input registers")
        if self.data_type == "string":
            if self.length is None:
                raise ValueError("data_type string needs 'length' (registers)")
            if self.word_order not in ("ABCD", "BADC"):
                raise ValueError("strings keep registers in order: word_order ABCD or BADC")
        elif self.length is not None:
            raise ValueError("'length' only applies to data_type string")
        if self.address + self.register_count > 65536:
            raise ValueError("point extends past register 65535")
        return self

    @property
    def register_count(self) -> int:
        if self.data_type == "bits":
            return 1
        if self.data_type == "string":
            assert self.length is not None
            return self.length
        return NUMERIC_TYPES[self.data_type][0] // 2


class DelimiterFraming(StrictModel):
    type: Literal["delimiter"]
    #: bytes that open a frame; anything before them is line noise
    start: Bytes = b""
    end: Bytes = Field(min_length=1)
    max_length: int = Field(default=512, ge=8, le=65536)


class LengthFraming(StrictModel):
    """Fixed-length frames; each message declares its header (``match``) and ``length``."""

    type: Literal["length"]


class Checksum(StrictModel):
    type: Literal["none", "sum8", "xor8", "lrc", "crc16_modbus", "crc16_hj212"] = "none"
    #: binary: appended as 1/2 raw bytes; hex: as 2/4 ASCII hex digits
    encoding: Literal["binary", "hex"] = "binary"
    #: binary 16-bit checksums: default little for crc16_modbus, big otherwise
    byte_order: Literal["big", "little"] | None = None
    #: first byte of the frame body the checksum covers
    cover_from: int = Field(default=0, ge=0)
    #: bytes between the covered region and the checksum (e.g. 1 for NMEA's '*')
    gap: int = Field(default=0, ge=0)


class SerialStatus(StatusFlags):
    index: int | None = Field(default=None, ge=0)
    group: str | None = None
    byte_offset: int | None = Field(default=None, ge=0)
    data_type: BinaryDataType | None = None
    byte_order: WordOrder = "ABCD"
    #: ASCII status tokens: 10 or 16
    base: Literal[10, 16] = 10


class SerialField(_Valued):
    #: ASCII: position in the payload split by ``separator`` (0 = first token)
    index: int | None = Field(default=None, ge=0)
    #: ASCII: named group of the message's ``regex``
    group: str | None = None
    #: binary: position in the frame, counted from its first byte (header included)
    byte_offset: int | None = Field(default=None, ge=0)
    data_type: BinaryDataType | None = None
    byte_order: WordOrder = "ABCD"


class SerialMessage(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    #: request/response mode: bytes to send to get this message
    request: Bytes | None = None
    #: bytes the frame body starts with (after framing ``start``); identifies the message.
    #: Length framing: the frame header.
    match: Bytes = b""
    #: length framing: total frame length in bytes, header and checksum included
    length: int | None = Field(default=None, ge=1, le=4096)
    #: ASCII: regular expression with named groups, matched against the whole payload
    regex: str | None = None
    #: ASCII: how the instrument writes the payload, as a Python format string over the
    #: group names (``{rpm:.1f}``) or token indexes (``{1:.2f}``); the simulator writes
    #: frames with it, and it is checked against ``regex``/``separator`` at load time
    format: str | None = None
    fields: list[SerialField] = Field(min_length=1)
    status: SerialStatus | None = None

    def format_payload(self, values: dict[str, float], status: int) -> str:
        """Render the payload text per ``format`` (simulator; load-time check)."""
        assert self.format is not None
        by_group: dict[str, float | int] = {}
        by_index: dict[int, float | int] = {}
        for f in self.fields:
            v = values.get(f.signal, 0.0)
            raw = (v - f.offset) / f.scale
            if f.group is not None:
                by_group[f.group] = raw
            elif f.index is not None:
                by_index[f.index] = raw
        if self.status is not None:
            if self.status.group is not None:
                by_group[self.status.group] = status
            elif self.status.index is not None:
                by_index[self.status.index] = status
        args = [by_index.get(i, "") for i in range(max(by_index, default=-1) + 1)]
        return self.format.format(*args, **by_group)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"regex does not compile: {e}") from None
        return v


class SerialSpec(StrictModel):
    mode: Literal["request_response", "free_running"]
    encoding: Literal["ascii", "binary"]
    framing: Annotated[DelimiterFraming | LengthFraming, Field(discriminator="type")]
    checksum: Checksum = Checksum()
    #: ASCII: token separator for ``index`` fields
    separator: str | None = None
    #: free-running instruments: how often the instrument emits (used by the simulator
    #: and to size the receive buffer)
    output_interval_s: float = Field(default=1.0, gt=0)
    messages: list[SerialMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> SerialSpec:
        names = set()
        for i, m in enumerate(self.messages):
            where = f"messages[{i}]"
            if m.name in names:
                raise ValueError(f"{where}.name: duplicate message name {m.name!r}")
            names.add(m.name)
            if self.mode == "request_response" and not m.request:
                raise ValueError(f"{where}.request: request_response mode needs a request")
            if self.mode == "free_running" and m.request:
                raise ValueError(f"{where}.request: free_running instruments are not asked")
            if isinstance(self.framing, LengthFraming):
                if not m.match or m.length is None:
                    raise ValueError(f"{where}: length framing needs 'match' (header) and "
                                     "'length'")
                if len(m.match) >= m.length:
                    raise ValueError(f"{where}.length: shorter than the header")
            elif m.length is not None:
                raise ValueError(f"{where}.length: only for length framing")
            if len(self.messages) > 1 and not m.match:
                raise ValueError(f"{where}.match: needed to tell {len(self.messages)} "
                                 "messages apart")
            if self.encoding == "ascii" and m.status and m.status.data_type:
                raise ValueError(f"{where}.status.data_type: only for binary encoding")
            locators: list[tuple[str, SerialField | SerialStatus]] = [
                (f"{where}.fields[{j}]", f) for j, f in enumerate(m.fields)]
            if m.status is not None:
                locators.append((f"{where}.status", m.status))
            for loc, f in locators:
                self._check_locator(loc, f, m)
            if m.format is not None:
                self._check_format(where, m)
            signals = [f.signal for f in m.fields]
            dup = {s for s in signals if signals.count(s) > 1}
            if dup:
                raise ValueError(f"{where}.fields: signal {sorted(dup)[0]} appears twice")
        return self

    def _check_format(self, where: str, m: SerialMessage) -> None:
        if self.encoding != "ascii":
            raise ValueError(f"{where}.format: only for ASCII messages")
        try:
            text = m.format_payload({f.signal: f.offset + 1.0 * f.scale for f in m.fields}, 1)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{where}.format: cannot be filled from the fields: {e!r}") \
                from None
        if not text.startswith(m.match.decode("latin-1")):
            raise ValueError(f"{where}.format: output {text!r} does not start with match")
        if m.regex is not None and re.fullmatch(m.regex, text) is None:
            raise ValueError(f"{where}.format: output {text!r} does not match regex")

    def _check_locator(self, loc: str, f: SerialField | SerialStatus,
                       m: SerialMessage) -> None:
        given = [k for k in ("index", "group", "byte_offset") if getattr(f, k) is not None]
        if len(given) != 1:
            raise ValueError(f"{loc}: give exactly one of index, group, byte_offset")
        kind = given[0]
        if self.encoding == "binary":
            if kind != "byte_offset" or f.data_type is None:
                raise ValueError(f"{loc}: binary fields need byte_offset and data_type")
            size = NUMERIC_TYPES[f.data_type][0]
            if m.length is not None and f.byte_offset is not None and \
                    f.byte_offset + size > m.length:
                raise ValueError(f"{loc}.byte_offset: field ends past the {m.length}-byte frame")
            if size > 1 and f.byte_order in ("BADC", "CDAB") and size % 2:
                raise ValueError(f"{loc}.byte_order: word swap needs an even size")
        else:
            if kind == "byte_offset" or (isinstance(f, SerialField) and f.data_type):
                raise ValueError(f"{loc}: ASCII fields use index or group, no data_type")
            if kind == "index" and not self.separator:
                raise ValueError(f"{loc}.index: needs 'separator' in the serial section")
            if kind == "group":
                if not m.regex:
                    raise ValueError(f"{loc}.group: message has no regex")
                if f.group not in re.compile(m.regex).groupindex:
                    raise ValueError(f"{loc}.group: regex has no group {f.group!r}")


class Profile(StrictModel):
    id: str = Field(pattern=PROFILE_ID)
    version: str
    vendor: str
    model: str
    description: str = ""
    protocol: Literal["modbus", "serial"]
    points: list[ModbusPoint] = Field(default_factory=list)
    status: ModbusStatus | None = None
    serial: SerialSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.protocol == "modbus":
            if not self.points:
                raise ValueError("points: a modbus profile needs at least one point")
            if self.serial is not None:
                raise ValueError("serial: only for protocol serial")
            self._check_points()
        else:
            if self.serial is None:
                raise ValueError("serial: protocol serial needs a serial section")
            if self.points or self.status is not None:
                raise ValueError("points/status: only for protocol modbus (serial status "
                                 "belongs to a message)")
        return self

    def _check_points(self) -> None:
        seen: dict[str, int] = {}
        spans: dict[str, list[tuple[int, int, int]]] = {}
        for i, p in enumerate(self.points):
            if p.signal in seen:
                raise ValueError(f"points[{i}].signal: {p.signal} already mapped by "
                                 f"points[{seen[p.signal]}]")
            seen[p.signal] = i
            if p.data_type == "bits" and p.table in ("holding", "input"):
                continue  # several bits may share one register
            spans.setdefault(p.table, []).append((p.address, p.address + p.register_count, i))
        for reg, items in spans.items():
            items.sort()
            for (a0, a1, i0), (b0, _b1, i1) in pairwise(items):
                if b0 < a1:
                    raise ValueError(f"points[{i1}].address: {reg} {b0} overlaps points[{i0}] "
                                     f"({reg} {a0}..{a1 - 1})")

    @property
    def measurement_signals(self) -> list[str]:
        if self.protocol == "modbus":
            return [p.signal for p in self.points if p.role == "measurement"]
        assert self.serial is not None
        return [f.signal for m in self.serial.messages for f in m.fields
                if f.role == "measurement"]


def load_profile(path: str | Path) -> Profile:
    """Load and validate one profile file; raises ConfigError naming file and path."""
    p = Path(path)
    prof = validate(Profile, read_yaml(p), str(p))
    if prof.id != p.stem:
        raise ConfigError(f"{p}: id: {prof.id!r} must equal the file name {p.stem!r}, so a "
                          "site config's profile reference is unambiguous")
    return prof


def profile_file(profiles_dir: Path, name: str) -> Path:
    return profiles_dir / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
