"""What a simulated instrument says: value models and the profile-driven encoders.

Values flow as ``values_fn(t) -> {canonical signal: value}`` with ``t`` in Unix seconds
(one clock for every simulator of a site, so the dynamometer, analyzer and OBD adapter of
a lane stay coherent). A simulator merges, in order of precedence:

1. overrides set at run time (``set_value`` / ``set:`` faults),
2. the plugged model (``--values-from module:function``, e.g. sim/vehicle.py),
3. the built-in default model of the profile (so a partial model is enough).

The reserved key ``"status"`` carries the raw status word (0 = normal).

``--values-from module:function`` names a *factory*:
``function(instrument_id: str, profile: Profile, lane: str | None) -> values_fn | None``;
returning None keeps the default model for that instrument.

The encoders are the exact inverse of the reader's decoders (same word orders, same
checksums), so a test that reads a simulator checks both directions.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from agent.checksums import CHECKSUMS
from agent.codec import NUMERIC_TYPES, encode_number, encode_string
from agent.profiles import DelimiterFraming, Profile, SerialMessage, SerialSpec

ValuesFn = Callable[[float], Mapping[str, Any]]
ValuesFactory = Callable[[str, Profile, "str | None"], "ValuesFn | None"]


def _wave(base: float, amp: float, period: float, phase: float = 0.0) -> Callable[[float], float]:
    return lambda t: base + amp * math.sin(2 * math.pi * t / period + phase)


def _const(v: float) -> Callable[[float], float]:
    return lambda t: v


#: Built-in models: a plausible, slowly varying operating point per instrument, enough to
#: exercise the agent without a physics model (sim/vehicle.py, sim/cems.py plug in later).
_MODELS: dict[str, dict[str, Callable[[float], float]]] = {
    "five_gas": {
        "hc_ppm": _wave(45, 8, 17),
        "co_pct": _wave(0.32, 0.05, 23),
        "co2_pct": _wave(14.6, 0.2, 29),
        "o2_pct": _wave(0.45, 0.1, 19),
        "no_ppm": _wave(160, 25, 31),
        "lambda": _wave(1.005, 0.01, 37),
        "rpm": _wave(810, 25, 7),
        "oil_temp_c": _wave(86, 1.5, 300),
    },
    "opacimeter": {
        "opacity_pct": _wave(6.0, 3.0, 11),
        "k_m1": _wave(0.16, 0.08, 11),
        "rpm": _wave(760, 30, 9),
        "oil_temp_c": _wave(82, 1.0, 300),
    },
    "chassis_dyno": {
        "speed_kmh": _wave(25.0, 0.6, 13),
        "target_speed_kmh": _const(25.0),
        "force_n": _wave(1250, 60, 13, 1.0),
        # power follows force x speed, so V8 (power != F*v) stays quiet on simulated data
        "power_kw": lambda t: (1250 + 60 * math.sin(2 * math.pi * t / 13 + 1.0))
        * (25.0 + 0.6 * math.sin(2 * math.pi * t / 13)) / 3600,
    },
    "weather_station": {
        "ambient_temp_c": _wave(22.0, 1.5, 3600),
        "ambient_rh_pct": _wave(55, 5, 2400),
        "ambient_kpa": _wave(101.3, 0.2, 7200),
    },
    "obd_adapter": {
        "obd_rpm": _wave(805, 25, 7),
        "obd_speed_kmh": _const(0.0),
        "obd_throttle_pct": _wave(12, 2, 7),
        "obd_lambda": _wave(1.0, 0.01, 37),
        "obd_load_pct": _wave(24, 3, 7),
        "obd_odometer_km": _const(123456.7),
    },
    "stack_cems": {
        "so2_mgm3": _wave(35, 6, 600),
        "nox_mgm3": _wave(82, 10, 900),
        "pm_mgm3": _wave(4.5, 1.0, 700),
        "o2_stack_pct": _wave(9.2, 0.6, 500),
        "flow_m3h": _wave(120000, 6000, 800),
        "flue_temp_c": _wave(55, 2, 1800),
        "flue_kpa": _wave(-0.3, 0.05, 400),
        "moisture_pct": _wave(8.0, 0.5, 1200),
    },
    "air_quality": {
        "pm25_ugm3": _wave(35, 10, 5400),
        "pm10_ugm3": _wave(62, 15, 5400),
        "so2_ugm3": _wave(8, 2, 3600),
        "no2_ugm3": _wave(31, 8, 4000),
        "o3_ugm3": _wave(60, 20, 7200),
        "co_mgm3": _wave(0.6, 0.1, 3600),
    },
    "water_analyzer": {
        "cod_mgl": _wave(30, 4, 3600),
        "nh3n_mgl": _wave(1.2, 0.3, 3600),
        "tp_mgl": _wave(0.3, 0.05, 3600),
        "tn_mgl": _wave(8, 1, 3600),
        "ph": _wave(7.2, 0.1, 1800),
        "water_flow_ls": _wave(25, 3, 900),
        "water_temp_c": _wave(18, 0.5, 7200),
    },
}


def _generic(signal: str, rng: tuple[float, float] | None) -> Callable[[float], float]:
    if signal.startswith("span_coeff."):
        return _const(1.0)
    if signal.startswith("zero_offset."):
        return _const(0.0)
    if rng is not None:
        lo, hi = rng
        return _wave(lo + 0.3 * (hi - lo), 0.05 * (hi - lo), 60)
    return _const(1.0)


def signal_ranges(profile: Profile) -> dict[str, tuple[float, float] | None]:
    if profile.protocol == "modbus":
        return {p.signal: p.range for p in profile.points}
    assert profile.serial is not None
    return {f.signal: f.range for m in profile.serial.messages for f in m.fields}


def default_values_fn(profile: Profile) -> ValuesFn:
    """The built-in model: the profile's own model if there is one, else each signal at
    30 % of its range with a slow wave; span coefficients 1, zero offsets 0, status 0."""
    model = _MODELS.get(profile.id, {})
    fns = {s: model.get(s) or _generic(s, r) for s, r in signal_ranges(profile).items()}

    def values(t: float) -> dict[str, Any]:
        out: dict[str, Any] = {s: f(t) for s, f in fns.items()}
        out["status"] = 0
        return out

    return values


def load_values_factory(spec: str) -> ValuesFactory:
    """``module:function`` -> the factory it names (see module docstring)."""
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"--values-from {spec!r}: expected module:function")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--values-from {spec!r}: cannot import {mod_name}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--values-from {spec!r}: {mod_name} has no callable {fn_name}")
    factory: ValuesFactory = fn
    return factory


class ValueSource:
    """Merges overrides, plugged model and default model (precedence in that order)."""

    def __init__(self, profile: Profile, values_fn: ValuesFn | None = None) -> None:
        self.profile = profile
        self._default = default_values_fn(profile)
        self._fn = values_fn
        self.overrides: dict[str, Any] = {}

    def at(self, t: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        v = dict(self._default(t))
        if self._fn is not None:
            v.update(self._fn(t))
        if extra:
            v.update(extra)
        v.update(self.overrides)
        return v


# --------------------------------------------------------------------------- Modbus


def encode_registers(profile: Profile, values: Mapping[str, Any]) -> dict[str, dict[int, int]]:
    """Register image of a Modbus profile: register type -> {address: 16-bit word} for
    holding/input, {address: 0|1} for coil/discrete."""
    img: dict[str, dict[int, int]] = {"coil": {}, "discrete": {}, "holding": {}, "input": {}}
    for p in profile.points:
        v = values.get(p.signal, 0.0)
        table = img[p.table]
        if p.data_type == "bits":
            bit = int(v) & 1
            if p.table in ("coil", "discrete"):
                table[p.address] = bit
            else:
                word = table.get(p.address, 0) & ~(1 << (p.bit or 0))
                table[p.address] = word | bit << (p.bit or 0)
            continue
        if p.data_type == "string":
            data = encode_string(str(v), p.register_count * 2, p.word_order)
        else:
            data = encode_number(p.data_type, p.word_order, (float(v) - p.offset) / p.scale)
        for i in range(0, len(data), 2):
            table[p.address + i // 2] = data[i] << 8 | data[i + 1]
    s = profile.status
    if s is not None:
        word = int(values.get("status", 0))
        if s.table in ("coil", "discrete"):
            for i in range(s.count):
                img[s.table][s.address + i] = word >> i & 1
        else:
            data = encode_number(s.data_type, s.word_order, word)
            for i in range(0, len(data), 2):
                img[s.table][s.address + i // 2] = data[i] << 8 | data[i + 1]
    return img


# --------------------------------------------------------------------------- serial


def _checksum_bytes(spec: SerialSpec, covered: bytes) -> bytes:
    cs = spec.checksum
    if cs.type == "none":
        return b""
    fn, size, order = CHECKSUMS[cs.type]
    value = fn(covered)
    if cs.encoding == "hex":
        return f"{value:0{size * 2}X}".encode("ascii")
    return value.to_bytes(size, cs.byte_order or order)  # type: ignore[arg-type]


def encode_frame(spec: SerialSpec, message: SerialMessage, values: Mapping[str, Any],
                 *, bad_checksum: bool = False) -> bytes:
    """One complete frame of ``message`` carrying ``values``, framed and checksummed."""
    status = int(values.get("status", 0))
    if spec.encoding == "ascii":
        if message.format is not None:
            text = message.format_payload(dict(values), status)
        else:
            text = _join_tokens(spec, message, values, status)
        payload = text.encode("ascii")
    else:
        payload = _binary_payload(spec, message, values, status)
    cs = _checksum_bytes(spec, payload[spec.checksum.cover_from:])
    # what sits between payload and checksum (NMEA's '*') is not covered by it
    gap = (b"*" if spec.encoding == "ascii" else b"\x00") * spec.checksum.gap if cs else b""
    if bad_checksum and cs:
        cs = _corrupt(cs, spec.checksum.encoding == "hex")
    body = payload + gap + cs
    if isinstance(spec.framing, DelimiterFraming):
        return spec.framing.start + body + spec.framing.end
    return body


def _corrupt(cs: bytes, hexed: bool) -> bytes:
    if hexed:
        v = int(cs, 16) ^ 0x5A
        return f"{v:0{len(cs)}X}".encode("ascii")
    return bytes([cs[0] ^ 0x5A]) + cs[1:]


def _join_tokens(spec: SerialSpec, message: SerialMessage, values: Mapping[str, Any],
                 status: int) -> str:
    sep = spec.separator or ","
    tokens = message.match.decode("latin-1").split(sep)[:1] if message.match else []
    width = max([f.index or 0 for f in message.fields]
                + [message.status.index or 0 if message.status else 0]) + 1
    tokens += [""] * (width - len(tokens))
    for f in message.fields:
        assert f.index is not None
        tokens[f.index] = f"{(float(values.get(f.signal, 0.0)) - f.offset) / f.scale:.3f}"
    if message.status is not None and message.status.index is not None:
        tokens[message.status.index] = f"{status:X}" if message.status.base == 16 else str(status)
    return sep.join(tokens)


def _binary_payload(spec: SerialSpec, message: SerialMessage, values: Mapping[str, Any],
                    status: int) -> bytes:
    cs_len = 0
    if spec.checksum.type != "none":
        size = CHECKSUMS[spec.checksum.type][1]
        cs_len = size if spec.checksum.encoding == "binary" else 2 * size
    length = message.length
    if length is None:
        ends = [(f.byte_offset or 0) + NUMERIC_TYPES[f.data_type or "uint8"][0]
                for f in message.fields]
        if message.status is not None:
            ends.append((message.status.byte_offset or 0)
                        + NUMERIC_TYPES[message.status.data_type or "uint8"][0])
        length = max(ends) + spec.checksum.gap + cs_len
    start = len(spec.framing.start) if isinstance(spec.framing, DelimiterFraming) else 0
    buf = bytearray(length - spec.checksum.gap - cs_len)
    buf[0:len(message.match)] = message.match

    def put(off: int, data: bytes) -> None:
        buf[off - start:off - start + len(data)] = data

    for f in message.fields:
        assert f.byte_offset is not None and f.data_type is not None
        raw = (float(values.get(f.signal, 0.0)) - f.offset) / f.scale
        put(f.byte_offset, encode_number(f.data_type, f.byte_order, raw))
    st = message.status
    if st is not None and st.byte_offset is not None and st.data_type is not None:
        put(st.byte_offset, encode_number(st.data_type, st.byte_order, status))
    return bytes(buf)


def garbage(n: int, rng: random.Random) -> bytes:
    """Line noise: random bytes, never empty."""
    return bytes(rng.getrandbits(8) for _ in range(max(n, 4)))
