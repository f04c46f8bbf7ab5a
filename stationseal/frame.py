"""The signed frame: one batch of readings and events from one gateway.

This is the one contract the gateway and the central side share; docs/wire-format.md
describes it byte for byte and gives test vectors. In short::

    payload = CBOR [ body: bstr, signature: bstr(64) ]
    body    = CBOR [ 1, gateway_id, site, key_id, alg, boot_id, seq, prev_hash,
                     created_ms, clock_sync, channels, readings, events ]
    frame_hash = SHA-256(body)         # the next frame's prev_hash

The body is carried as a byte string so a verifier hashes and checks the signature over
exactly the bytes that were signed, before interpreting any of them. Readings refer to a
per-frame channel table (instrument, signal, unit) and carry their time as milliseconds
relative to ``created_ms``: on a metered cellular link, this keeps a typical reading at
about a dozen bytes instead of a hundred.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import cbor2

from stationseal import cbor
from stationseal.records import Event, Reading
from stationseal.signing import ALG_IDS, ALG_NAMES, SIGNATURE_LEN, Signer

FORMAT_VERSION = 1
CLOCK_STATES: dict[str, int] = {"unknown": 0, "synced": 1, "unsynced": 2}
CLOCK_NAMES: dict[int, str] = {v: k for k, v in CLOCK_STATES.items()}
ZERO_HASH = bytes(32)
MAX_SEQ = 2**64 - 1
#: Upper bound on a frame's payload: far above any sane batch, low enough that a hostile
#: peer cannot make the ingest allocate without limit.
MAX_PAYLOAD = 4 * 1024 * 1024
_ID_MAX = 64
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


class FrameError(Exception):
    """A payload that is not a well-formed frame.

    ``reason`` is ``malformed`` (not decodable / not canonical CBOR) or ``schema`` (decodes
    but a field has the wrong type or value); ``detail`` names the field.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Frame:
    gateway_id: str
    site: str
    key_id: str
    alg: str
    boot_id: bytes
    seq: int
    prev_hash: bytes
    created: float
    clock_sync: str
    readings: list[Reading]
    events: list[Event]
    body: bytes = b""
    signature: bytes = b""
    frame_hash: bytes = b""
    payload: bytes = field(default=b"", repr=False)
    #: The channel table and the reading arrays ``[channel, dt_ms, value, quality, raw]``
    #: as decoded. A receiver that turns readings straight into storage lines can use
    #: these and skip building a :class:`Reading` per value (``decode(materialize=False)``).
    channels: list[tuple[str, str, str]] = field(default_factory=list, repr=False)
    rows: list[list[Any]] = field(default_factory=list, repr=False)

    @property
    def reading_count(self) -> int:
        return len(self.rows) if self.rows else len(self.readings)

    def iter_readings(self) -> list[Reading]:
        """Readings, built (once) from ``rows`` when the frame was decoded without them."""
        if self.readings or not self.rows:
            return self.readings
        cms = self.created_ms
        ch = self.channels
        out: list[Reading] = []
        for ci, dt, value, q, raw in self.rows:
            inst, sig, unit = ch[ci]
            out.append(Reading(inst, sig, value, unit, (cms + dt) / 1000, q, raw))
        self.readings = out
        return out

    @property
    def created_ms(self) -> int:
        return round(self.created * 1000)


_READING_HEAD = b"\x85"
_SMALL = [bytes((i,)) for i in range(24)]
_QUALITY = {q: b"\x61" + q.encode() for q in "NMDCFSTB"}


def encode_body(
    *,
    gateway_id: str,
    site: str,
    key_id: str,
    alg: str,
    boot_id: bytes,
    seq: int,
    prev_hash: bytes,
    created_ms: int,
    clock_sync: str,
    readings: list[Reading],
    events: list[Event],
) -> bytes:
    _check_header(gateway_id, site, key_id, alg, boot_id, seq, prev_hash, created_ms, clock_sync)
    channels: list[list[str]] = []
    index: dict[tuple[str, str, str], int] = {}
    # Hand-inlined encoding of the readings array: it is the hot path of the gateway
    # (tens of readings per frame, hundreds of frames a minute on a Pi). The bytes are
    # exactly what cbor.encode would produce for [ci, dt, value, quality, raw].
    rb = bytearray()
    head = cbor.head
    enc_float = cbor.encode_float
    for r in readings:
        ck = (r.instrument, r.signal, r.unit)
        ci = index.get(ck)
        if ci is None:
            ci = index[ck] = len(channels)
            channels.append([r.instrument, r.signal, r.unit])
        q = r.quality
        if len(q) != 1 or not q.isascii():
            raise FrameError("schema", f"reading {r.instrument}/{r.signal}: quality {q!r}")
        dt = round(r.time * 1000) - created_ms
        rb += _READING_HEAD
        rb += head(0, ci) if ci >= 24 else _SMALL[ci]
        rb += head(0, dt) if dt >= 0 else head(1, -1 - dt)
        v = r.value
        if isinstance(v, float):
            rb += enc_float(v)
        elif isinstance(v, int):  # bool included: a coil travels as 0/1, not true/false
            iv = int(v)
            rb += head(0, iv) if iv >= 0 else head(1, -1 - iv)
        elif isinstance(v, str):
            vb = v.encode()
            rb += head(3, len(vb))
            rb += vb
        else:
            raise FrameError("schema", f"reading {r.instrument}/{r.signal}: value {v!r}")
        rb += _QUALITY.get(q) or (b"\x61" + q.encode())
        raw = r.raw
        if raw is None:
            rb += b"\xf6"
        else:
            rb += head(2, len(raw))
            rb += raw
    evs = [
        [e.instrument, round(e.time * 1000) - created_ms, e.kind, e.detail] for e in events
    ]
    try:
        hdr = cbor.encode(
            [
                FORMAT_VERSION,
                gateway_id,
                site,
                key_id,
                ALG_IDS[alg],
                boot_id,
                seq,
                prev_hash,
                created_ms,
                CLOCK_STATES[clock_sync],
                channels,
            ]
        )
        tail = cbor.encode(evs)
    except cbor.CBORError as e:
        raise FrameError("schema", str(e)) from None
    # hdr starts with the 11-item array head (0x8b); the body has 13 items (0x8d).
    return b"\x8d" + hdr[1:] + head(4, len(readings)) + bytes(rb) + tail


def _check_header(
    gateway_id: str,
    site: str,
    key_id: str,
    alg: str,
    boot_id: bytes,
    seq: int,
    prev_hash: bytes,
    created_ms: int,
    clock_sync: str,
) -> None:
    for name, v in (("gateway_id", gateway_id), ("site", site), ("key_id", key_id)):
        if type(v) is not str or not 0 < len(v) <= _ID_MAX:
            raise FrameError("schema", f"{name} must be a text of 1..{_ID_MAX} characters")
    if alg not in ALG_IDS:
        raise FrameError("schema", f"alg {alg!r} unknown")
    if type(boot_id) is not bytes or len(boot_id) != 16:
        raise FrameError("schema", "boot_id must be 16 bytes")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise FrameError("schema", f"seq {seq!r} outside 1..2^64-1")
    if type(prev_hash) is not bytes or len(prev_hash) != 32:
        raise FrameError("schema", "prev_hash must be 32 bytes")
    if type(created_ms) is not int or not 0 <= created_ms <= _I64_MAX:
        raise FrameError("schema", f"created_ms {created_ms!r} must be a non-negative integer")
    if clock_sync not in CLOCK_STATES:
        raise FrameError("schema", f"clock_sync {clock_sync!r} unknown")


def seal(
    signer: Signer,
    *,
    gateway_id: str,
    site: str,
    boot_id: bytes,
    seq: int,
    prev_hash: bytes,
    created: float,
    clock_sync: str,
    readings: list[Reading],
    events: list[Event],
) -> Frame:
    created_ms = round(created * 1000)
    body = encode_body(
        gateway_id=gateway_id,
        site=site,
        key_id=signer.key_id,
        alg=signer.alg,
        boot_id=boot_id,
        seq=seq,
        prev_hash=prev_hash,
        created_ms=created_ms,
        clock_sync=clock_sync,
        readings=readings,
        events=events,
    )
    sig = signer.sign(body)
    payload = cbor.head(4, 2) + cbor.head(2, len(body)) + body + cbor.head(2, len(sig)) + sig
    return Frame(
        gateway_id=gateway_id,
        site=site,
        key_id=signer.key_id,
        alg=signer.alg,
        boot_id=boot_id,
        seq=seq,
        prev_hash=prev_hash,
        created=created_ms / 1000,
        clock_sync=clock_sync,
        readings=readings,
        events=events,
        body=body,
        signature=sig,
        frame_hash=hashlib.sha256(body).digest(),
        payload=payload,
    )


#: fa + a float32 with exponent byte 0x47/0xc7 (|v| in [32768, 65536)) whose low 13
#: mantissa bits are zero, i.e. exactly representable in half precision.
_CBOR2_DIVERGES = re.compile(rb"\xfa[\x47\xc7][\x00-\x7f][\x00\x20\x40\x60\x80\xa0\xc0\xe0]\x00")
_ROW_TYPES = frozenset((list,))
_VALUE_TYPES = frozenset((int, float, str))
_RAW_TYPES = frozenset((bytes, type(None)))


def _rows_ok(recs: list[Any], nch: int) -> bool:
    """All readings well-typed and in range (column-wise); False -> check item by item."""
    if set(map(type, recs)) != _ROW_TYPES or set(map(len, recs)) != {5}:
        return False
    cis, dts, vals, qs, raws = zip(*recs, strict=True)
    if set(map(type, cis)) != {int} or min(cis) < 0 or max(cis) >= nch:
        return False
    if set(map(type, dts)) != {int} or min(dts) < _I64_MIN or max(dts) > _I64_MAX:
        return False
    vtypes = set(map(type, vals))
    if not vtypes <= _VALUE_TYPES:
        return False
    if int in vtypes:
        ints = [v for v in vals if type(v) is int]
        if min(ints) < -(2**64) or max(ints) >= 2**64:
            return False
    if set(map(type, qs)) != {str} or set(map(len, qs)) != {1}:
        return False
    return set(map(type, raws)) <= _RAW_TYPES


def _raise_first_bad_row(recs: list[Any], nch: int) -> None:
    """Raise FrameError naming the first bad reading (the column checks found one)."""
    for i, r in enumerate(recs):
        if type(r) is not list or len(r) != 5:
            raise FrameError("schema", f"readings[{i}] is not an array of 5 items")
        ci, dt, value, q, raw = r
        if type(ci) is not int or not 0 <= ci < nch:
            raise FrameError("schema", f"readings[{i}].channel {ci!r} out of range 0..{nch - 1}")
        if type(dt) is not int or not _I64_MIN <= dt <= _I64_MAX:
            raise FrameError("schema", f"readings[{i}].time_offset is not a 64-bit integer")
        tv = type(value)
        if tv is int:
            if not -(2**64) <= value < 2**64:
                raise FrameError("schema", f"readings[{i}].value exceeds 64 bits")
        elif tv is not float and tv is not str:
            raise FrameError("schema", f"readings[{i}].value has type {tv.__name__}")
        if type(q) is not str or len(q) != 1:
            raise FrameError("schema", f"readings[{i}].quality {q!r} is not one character")
        if raw is not None and type(raw) is not bytes:
            raise FrameError("schema", f"readings[{i}].raw is neither bytes nor null")


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    """Envelope only: (body, signature). Nothing inside the body is trusted yet."""
    if not isinstance(payload, bytes | bytearray):
        raise FrameError("malformed", "payload is not bytes")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("malformed", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        env = cbor.decode(payload)
    except cbor.CBORError as e:
        raise FrameError("malformed", f"envelope: {e}") from None
    if not (
        type(env) is list
        and len(env) == 2
        and type(env[0]) is bytes
        and type(env[1]) is bytes
    ):
        raise FrameError("malformed", "envelope is not [body: bstr, signature: bstr]")
    body, sig = env
    if len(sig) != SIGNATURE_LEN:
        raise FrameError("malformed", f"signature is {len(sig)} bytes, expected {SIGNATURE_LEN}")
    if not cbor.is_canonical(payload, env):
        raise FrameError("malformed", "envelope is not in canonical CBOR encoding")
    return body, sig


def decode(payload: bytes, materialize: bool = True) -> Frame:
    """Parse a payload into a :class:`Frame` (structure only: no signature check here).

    With ``materialize=False`` the readings are validated but left as ``Frame.rows``.
    """
    body, sig = split_payload(payload)
    try:
        b = cbor.decode(body)
    except cbor.CBORError as e:
        raise FrameError("malformed", f"body: {e}") from None
    if type(b) is not list or len(b) != 13:
        raise FrameError("schema", "body is not an array of 13 items")
    (ver, gw, site, key_id, alg_id, boot_id, seq, prev_hash, created_ms, clk, chans, recs,
     evs) = b
    if ver != FORMAT_VERSION or type(ver) is not int:
        raise FrameError("schema", f"format version {ver!r} is not {FORMAT_VERSION}")
    if type(alg_id) is not int or alg_id not in ALG_NAMES:
        raise FrameError("schema", f"alg {alg_id!r} unknown")
    if type(clk) is not int or clk not in CLOCK_NAMES:
        raise FrameError("schema", f"clock_sync {clk!r} unknown")
    alg = ALG_NAMES[alg_id]
    clock = CLOCK_NAMES[clk]
    _check_header(gw, site, key_id, alg, boot_id, seq, prev_hash, created_ms, clock)
    if type(chans) is not list or type(recs) is not list or type(evs) is not list:
        raise FrameError("schema", "channels, readings and events must be arrays")
    channels: list[tuple[str, str, str]] = []
    for i, c in enumerate(chans):
        if type(c) is not list or len(c) != 3 or not all(type(x) is str for x in c):
            raise FrameError("schema", f"channels[{i}] is not [instrument, signal, unit]")
        channels.append((c[0], c[1], c[2]))
    nch = len(channels)
    # Column-wise checks at C speed (a frame holds hundreds of readings); the per-item
    # loop runs only to name the first offending item when a column check fails.
    if recs and not _rows_ok(recs, nch):
        _raise_first_bad_row(recs, nch)
    readings: list[Reading] = []
    if materialize:
        readings = [
            Reading(ins, sig_name, value, unit, (created_ms + dt) / 1000, q, raw)
            for (ins, sig_name, unit), (_, dt, value, q, raw) in zip(
                (channels[r[0]] for r in recs), recs, strict=True
            )
        ]
    events: list[Event] = []
    for i, ev in enumerate(evs):
        if (
            type(ev) is not list
            or len(ev) != 4
            or type(ev[0]) is not str
            or type(ev[1]) is not int
            or type(ev[2]) is not str
            or type(ev[3]) is not dict
        ):
            raise FrameError("schema", f"events[{i}] is not [instrument, offset, kind, detail]")
        events.append(Event(ev[0], ev[2], (created_ms + ev[1]) / 1000, ev[3]))
    # Canonical check. Events may hold maps: they go through the reference encoder; the
    # rest (arrays of scalars, now type-checked) through cbor2's C encoder.
    try:
        evs_bytes = cbor.encode(evs)
    except cbor.CBORError as e:
        raise FrameError("malformed", f"events: {e}") from None
    prefix = b"\x8c" + body[1 : len(body) - len(evs_bytes)]  # items 0..11 as a 12-array
    # Fast path: cbor2's C encoder. It differs from RFC 8949 only for half-exact floats
    # with 32768 <= |v| <= 65504, which it writes as single precision: a match is trusted
    # unless such a single-precision float occurs; any doubt goes to the reference encoder.
    try:
        canonical = cbor2.dumps(b[:12], canonical=True) == prefix
    except Exception:
        canonical = False
    if not canonical or _CBOR2_DIVERGES.search(prefix):
        canonical = cbor.is_canonical(prefix, b[:12])
    if body[0] != 0x8D or not body.endswith(evs_bytes) or not canonical:
        raise FrameError("malformed", "body is not in canonical CBOR encoding")
    return Frame(
        gateway_id=gw,
        site=site,
        key_id=key_id,
        alg=alg,
        boot_id=boot_id,
        seq=seq,
        prev_hash=prev_hash,
        created=created_ms / 1000,
        clock_sync=clock,
        readings=readings,
        events=events,
        body=body,
        signature=sig,
        frame_hash=hashlib.sha256(body).digest(),
        payload=bytes(payload),
        channels=channels,
        rows=recs,
    )
