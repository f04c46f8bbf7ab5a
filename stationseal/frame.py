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
#: Upper bound on a frame's payload (reason ``oversize``): far above any sane batch (500
#: readings are about 10 kB), low enough that a hostile peer cannot make the ingest
#: allocate without limit.
MAX_PAYLOAD = 4 * 1024 * 1024
#: Latest time a frame may name: 2262-04-11T23:47:16.854Z, the last millisecond whose
#: nanosecond count fits a signed 64-bit integer (InfluxDB's timestamp range). Earliest:
#: the Unix epoch (a gateway without a clock battery may boot there; the central side
#: flags implausible times against the arrival, stationseal/chain.py).
MAX_TIME_MS = (2**63 - 1) // 1_000_000
#: gateway_id, site, instrument: an MQTT topic level, an InfluxDB tag and a file name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SIGNAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
EVENT_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
KEY_ID_RE = re.compile(r"[0-9a-f]{16}\Z")
#: Units are written by people ("mg/m³", "µg/m³", "%vol", "1/min"): any character but
#: controls, white space, invisible format characters and # + " \ , =.
UNIT_RE = re.compile(
    "[^\x00-\x20\x7f-\xa0#+\"\\\\,=\u1680\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000"
    "\ufeff]{0,32}\\Z")
#: The HJ 212 data flags (HJ 212-2017 table 7), the only quality letters a frame carries.
QUALITY_FLAGS = frozenset("NMDCFSTB")
MAX_TEXT_VALUE = 1024
MAX_RAW = 4096
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


class FrameError(Exception):
    """A payload that is not a well-formed frame.

    ``reason`` is ``oversize`` (larger than :data:`MAX_PAYLOAD`), ``malformed`` (not
    the deterministic CBOR of the right shape) or ``schema`` (a field outside its
    domain); ``detail`` names the field.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_name(what: str, v: object, pattern: re.Pattern[str] = NAME_RE) -> str:
    """``v`` if it is a text matching ``pattern``, else FrameError(schema) naming it."""
    if type(v) is not str or pattern.match(v) is None:
        raise FrameError("schema", f"{what} {_short(v)} is not a valid name "
                         f"({_NAME_RULES.get(pattern, pattern.pattern)})")
    return v


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


_NAME_RULES = {
    NAME_RE: "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
    SIGNAL_RE: "1-64 of A-Z a-z 0-9 . _ : -, starting with a letter or digit",
    EVENT_KIND_RE: "1-64 of a-z 0-9 _, starting with a letter",
    KEY_ID_RE: "16 lowercase hex digits",
    UNIT_RE: "0-32 characters, no controls, spaces, invisible characters or # + \" \\ , =",
}


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
_QUALITY = {q: b"\x61" + q.encode() for q in sorted(QUALITY_FLAGS)}


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
    lo, hi = 0, 0
    head = cbor.head
    enc_float = cbor.encode_float
    for r in readings:
        ck = (r.instrument, r.signal, r.unit)
        ci = index.get(ck)
        if ci is None:
            _check_channel(len(channels), r.instrument, r.signal, r.unit)
            ci = index[ck] = len(channels)
            channels.append([r.instrument, r.signal, r.unit])
        q = r.quality
        if q not in QUALITY_FLAGS:
            raise FrameError("schema", f"reading {r.instrument}/{r.signal}: quality {q!r} is "
                             f"not an HJ 212 flag ({''.join(sorted(QUALITY_FLAGS))})")
        dt = round(r.time * 1000) - created_ms
        if dt < lo:
            lo = dt
        if dt > hi:
            hi = dt
        rb += _READING_HEAD
        rb += head(0, ci) if ci >= 24 else _SMALL[ci]
        rb += head(0, dt) if dt >= 0 else head(1, -1 - dt)
        v = r.value
        if isinstance(v, float):
            rb += enc_float(v)
        elif isinstance(v, int):  # bool included: a coil travels as 0/1, not true/false
            iv = int(v)
            if not -(2**64) <= iv < 2**64:
                raise FrameError("schema", f"reading {r.instrument}/{r.signal}: value "
                                 "exceeds 64 bits")
            rb += head(0, iv) if iv >= 0 else head(1, -1 - iv)
        elif isinstance(v, str):
            if len(v) > MAX_TEXT_VALUE:
                raise FrameError("schema", f"reading {r.instrument}/{r.signal}: text value "
                                 f"longer than {MAX_TEXT_VALUE} characters")
            vb = v.encode()
            rb += head(3, len(vb))
            rb += vb
        else:
            raise FrameError("schema", f"reading {r.instrument}/{r.signal}: value {v!r}")
        rb += _QUALITY[q]
        raw = r.raw
        if raw is None:
            rb += b"\xf6"
        else:
            if len(raw) > MAX_RAW:
                raise FrameError("schema", f"reading {r.instrument}/{r.signal}: raw bytes "
                                 f"longer than {MAX_RAW}")
            rb += head(2, len(raw))
            rb += raw
    if readings:
        # The decoder's range checks, on what was encoded: a gateway must not seal a frame
        # every receiver would reject.
        _check_times("readings", created_ms, lo, hi)
    evs = [
        [e.instrument, round(e.time * 1000) - created_ms, e.kind, e.detail] for e in events
    ]
    for i, ev in enumerate(evs):
        _check_event(i, ev, created_ms)
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
    names_checked: bool = False,
) -> None:
    if not names_checked:
        check_name("gateway_id", gateway_id)
        check_name("site", site)
        check_name("key_id", key_id, KEY_ID_RE)
    if alg not in ALG_IDS:
        raise FrameError("schema", f"alg {alg!r} unknown")
    if type(boot_id) is not bytes or len(boot_id) != 16:
        raise FrameError("schema", "boot_id must be 16 bytes")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:
        raise FrameError("schema", f"seq {_short(seq)} outside 1..2^64-1")
    if type(prev_hash) is not bytes or len(prev_hash) != 32:
        raise FrameError("schema", "prev_hash must be 32 bytes")
    if (seq == 1) != (prev_hash == ZERO_HASH):
        raise FrameError("schema", "prev_hash must be 32 zero bytes for seq 1 and only then"
                         f" (seq {seq})")
    if type(created_ms) is not int or not 0 <= created_ms <= MAX_TIME_MS:
        raise FrameError("schema", f"created_ms {_short(created_ms)} outside 0..{MAX_TIME_MS}")
    if clock_sync not in CLOCK_STATES:
        raise FrameError("schema", f"clock_sync {clock_sync!r} unknown")


#: Channel triples already found valid: a gateway seals the same few hundred channels
#: over and over, so the three pattern matches run once per channel, not once per frame.
_GOOD_CHANNELS: set[tuple[object, object, object]] = set()


def _check_channel(i: int, inst: object, sig: object, unit: object) -> None:
    key = (inst, sig, unit)
    if key in _GOOD_CHANNELS:  # (only texts ever enter the set: 1 == 1.0 cannot alias)
        return
    check_name(f"channels[{i}].instrument", inst)
    check_name(f"channels[{i}].signal", sig, SIGNAL_RE)
    check_name(f"channels[{i}].unit", unit, UNIT_RE)
    if len(_GOOD_CHANNELS) >= 65536:
        _GOOD_CHANNELS.clear()
    _GOOD_CHANNELS.add(key)


def _check_times(what: str, created_ms: int, lo: int, hi: int) -> None:
    if created_ms + lo < 0 or created_ms + hi > MAX_TIME_MS:
        raise FrameError("schema", f"{what}: a time offset puts the time outside "
                         f"0..{MAX_TIME_MS} ms")


def _check_event(i: int, ev: Any, created_ms: int) -> None:
    if (
        type(ev) is not list
        or len(ev) != 4
        or type(ev[1]) is not int
        or type(ev[3]) is not dict
    ):
        raise FrameError("schema", f"events[{i}] is not [instrument, offset, kind, detail]")
    check_name(f"events[{i}].instrument", ev[0])
    check_name(f"events[{i}].kind", ev[2], EVENT_KIND_RE)
    if not _I64_MIN <= ev[1] <= _I64_MAX:
        raise FrameError("schema", f"events[{i}].time_offset is not a 64-bit integer")
    _check_times(f"events[{i}]", created_ms, ev[1], ev[1])


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


def _rows_ok(recs: list[Any], nch: int, created_ms: int) -> bool:
    """All readings well-typed and in range (column-wise); False -> check item by item."""
    if set(map(type, recs)) != _ROW_TYPES or set(map(len, recs)) != {5}:
        return False
    cis, dts, vals, qs, raws = zip(*recs, strict=True)
    if set(map(type, cis)) != {int} or min(cis) < 0 or max(cis) >= nch:
        return False
    if set(map(type, dts)) != {int} or created_ms + min(dts) < 0 or \
            created_ms + max(dts) > MAX_TIME_MS:
        return False
    vtypes = set(map(type, vals))
    if not vtypes <= _VALUE_TYPES:
        return False
    if str in vtypes and max(len(v) for v in vals if type(v) is str) > MAX_TEXT_VALUE:
        return False
    if not set(qs) <= QUALITY_FLAGS:
        return False
    rtypes = set(map(type, raws))
    if not rtypes <= _RAW_TYPES:
        return False
    if bytes not in rtypes:
        return True
    if type(None) in rtypes:
        raws = tuple(filter(None, raws))
    return max(map(len, raws), default=0) <= MAX_RAW


def _raise_first_bad_row(recs: list[Any], nch: int, created_ms: int) -> None:
    """Raise FrameError naming the first bad reading (the column checks found one)."""
    for i, r in enumerate(recs):
        if type(r) is not list or len(r) != 5:
            raise FrameError("schema", f"readings[{i}] is not an array of 5 items")
        ci, dt, value, q, raw = r
        if type(ci) is not int or not 0 <= ci < nch:
            raise FrameError("schema", f"readings[{i}].channel {_short(ci)} out of range "
                             f"0..{nch - 1}")
        if type(dt) is not int or not 0 <= created_ms + dt <= MAX_TIME_MS:
            raise FrameError("schema", f"readings[{i}].time_offset {_short(dt)} puts the time "
                             f"outside 0..{MAX_TIME_MS} ms")
        tv = type(value)
        if tv is str:
            if len(value) > MAX_TEXT_VALUE:
                raise FrameError("schema", f"readings[{i}].value is a text longer than "
                                 f"{MAX_TEXT_VALUE} characters")
        elif tv is not float and tv is not int:
            raise FrameError("schema", f"readings[{i}].value has type {tv.__name__}")
        if type(q) is not str or q not in QUALITY_FLAGS:
            raise FrameError("schema", f"readings[{i}].quality {_short(q)} is not an HJ 212 "
                             f"flag ({''.join(sorted(QUALITY_FLAGS))})")
        if raw is not None and (type(raw) is not bytes or len(raw) > MAX_RAW):
            raise FrameError("schema", f"readings[{i}].raw is neither null nor at most "
                             f"{MAX_RAW} bytes")
    raise AssertionError("column check failed but no reading is at fault")


def _head(data: bytes, i: int, what: str) -> tuple[int, int, int]:
    """(major type, argument, next index) of the item head at ``i``, shortest form only."""
    if i >= len(data):
        raise FrameError("malformed", f"{what}: truncated")
    b = data[i]
    mt, ai = b >> 5, b & 31
    if ai < 24:
        return mt, ai, i + 1
    if ai > 27:
        raise FrameError("malformed", f"{what}: indefinite length or reserved value")
    w = 1 << (ai - 24)
    if i + 1 + w > len(data):
        raise FrameError("malformed", f"{what}: truncated")
    v = int.from_bytes(data[i + 1 : i + 1 + w], "big")
    if v < (24 if w == 1 else 1 << (4 * w)):
        raise FrameError("malformed", f"{what}: not in canonical CBOR encoding")
    return mt, v, i + 1 + w


def split_payload(payload: bytes) -> tuple[bytes, bytes]:
    """Envelope only: (body, signature). Nothing inside the body is trusted yet.

    Parsed by hand (it is 5 bytes of structure): no general decoder sees a byte before
    the signature has been checked.
    """
    if not isinstance(payload, bytes | bytearray):
        raise FrameError("malformed", "payload is not bytes")
    payload = bytes(payload)
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise FrameError("oversize", f"payload of {n} bytes exceeds {MAX_PAYLOAD}")
    if n == 0 or payload[0] != 0x82:
        raise FrameError("malformed", "envelope is not an array of 2 items")
    mt, blen, i = _head(payload, 1, "envelope body")
    if mt != 2:
        raise FrameError("malformed", "envelope is not [body: bstr, signature: bstr]")
    if i + blen > n:
        raise FrameError("malformed", "envelope body: truncated")
    body = payload[i : i + blen]
    mt, slen, j = _head(payload, i + blen, "envelope signature")
    if mt != 2:
        raise FrameError("malformed", "envelope is not [body: bstr, signature: bstr]")
    if slen != SIGNATURE_LEN:
        raise FrameError("malformed", f"signature is {slen} bytes, expected {SIGNATURE_LEN}")
    if j + slen != n:
        raise FrameError("malformed", "envelope: truncated or trailing bytes after the "
                         "signature")
    return body, payload[j:]


@dataclass(slots=True, frozen=True)
class Header:
    """Body items 0-4, read before the signature is checked (to find the key)."""

    gateway_id: str
    site: str
    key_id: str
    alg: str
    #: Item 6 when it reads as an unsigned integer, else None: only to label a rejected
    #: payload (quarantine), never checked here.
    seq: int | None = None


def _peek_seq(body: bytes, i: int) -> int | None:
    try:
        mt, n, i = _head(body, i, "boot_id")
        if mt != 2:
            return None
        mt, seq, _ = _head(body, i + n, "seq")
    except FrameError:
        return None
    return seq if mt == 0 else None


def _text(body: bytes, i: int, what: str) -> tuple[str, int]:
    mt, n, j = _head(body, i, what)
    if mt != 3:
        raise FrameError("schema", f"{what} is not a text string")
    if n > 256 or j + n > len(body):
        raise FrameError("schema" if n > 256 else "malformed", f"{what}: length {n}")
    try:
        return body[j : j + n].decode("utf-8"), j + n
    except UnicodeDecodeError:
        raise FrameError("malformed", f"{what} is not valid UTF-8") from None


def peek_header(body: bytes) -> Header:
    """Items 0-4 of the body (version, gateway_id, site, key_id, alg), checked."""
    if not body or body[0] != 0x8D:
        raise FrameError("malformed", "body is not an array of 13 items")
    mt, ver, i = _head(body, 1, "version")
    if mt != 0 or ver != FORMAT_VERSION:
        raise FrameError("schema", f"format version is not {FORMAT_VERSION}")
    gw, i = _text(body, i, "gateway_id")
    check_name("gateway_id", gw)
    site, i = _text(body, i, "site")
    check_name("site", site)
    key_id, i = _text(body, i, "key_id")
    check_name("key_id", key_id, KEY_ID_RE)
    mt, alg_id, i = _head(body, i, "alg")
    if mt != 0 or alg_id not in ALG_NAMES:
        raise FrameError("schema", f"alg {alg_id} unknown" if mt == 0 else "alg is not a uint")
    return Header(gw, site, key_id, ALG_NAMES[alg_id], _peek_seq(body, i))


def decode(payload: bytes, materialize: bool = True) -> Frame:
    """Parse a payload into a :class:`Frame` (structure only: no signature check here).

    With ``materialize=False`` the readings are validated but left as ``Frame.rows``.
    """
    body, sig = split_payload(payload)
    hdr = peek_header(body)
    return decode_body(body, sig, payload, materialize, hdr)


class _ChannelTables:
    """Channel tables already decoded and found valid, by their exact bytes.

    A gateway sends the same channel table frame after frame; decoding it, re-encoding it
    for the canonical check and matching three patterns per channel is a sizeable part of
    verifying a frame. Identical bytes decode to the identical table, so a table seen
    before is taken as it was found then. Bounded in entries and bytes; a hostile peer
    sending ever new tables only costs the work a table always costs."""

    MAX_ENTRIES = 4096
    MAX_BYTES = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.tables: dict[bytes, tuple[tuple[str, str, str], ...]] = {}
        self.nbytes = 0

    def get(self, data: bytes) -> tuple[tuple[str, str, str], ...] | None:
        return self.tables.get(data)

    def put(self, data: bytes, table: tuple[tuple[str, str, str], ...]) -> None:
        if len(data) > self.MAX_BYTES // 64:
            return
        if len(self.tables) >= self.MAX_ENTRIES or self.nbytes + len(data) > self.MAX_BYTES:
            self.tables = {}
            self.nbytes = 0
        self.tables[data] = table
        self.nbytes += len(data)


_CHANNEL_TABLES = _ChannelTables()
#: Head of the array of the ten header items (items 0-9), decoded as one.
_HEADER_ARRAY = b"\x8a"


def _canonical(obj: Any, data: bytes) -> bool:
    """``data`` is the deterministic encoding of ``obj``. cbor2's C encoder first; it
    differs from RFC 8949 only for half-exact floats with 32768 <= |v| <= 65504 (written
    as single precision): when such a float may occur, or cbor2 disagrees, the reference
    encoder decides. Invalid UTF-8 (decoded with replacement characters) never
    re-encodes to the input."""
    try:
        same = cbor2.dumps(obj, canonical=True) == data
    except Exception:
        same = False
    if not same or _CBOR2_DIVERGES.search(data):
        same = cbor.is_canonical(data, obj)
    return same


def _loads(data: bytes, what: str) -> Any:
    """Decode a part of the body that :func:`cbor.item_ends` walked (so it is within
    the frame subset and cbor2's leaking error paths cannot be reached)."""
    try:
        return cbor2.loads(data, str_errors="replace")
    except Exception as e:  # cbor2 raises several types; the caller needs one
        raise FrameError("malformed", f"{what}: not valid CBOR: {e}") from None


def decode_body(body: bytes, sig: bytes, payload: bytes, materialize: bool = True,
                header: Header | None = None) -> Frame:
    """The body, after its header was peeked (``header``; and, in verification, its
    signature checked). Order of checks (docs/wire-format.md §5): well-formed CBOR of
    the frame subset, an array of 13, deterministic encoding (all ``malformed``), then
    each field's domain in body order (``schema``).

    The body is walked item by item (:func:`cbor.item_ends`), then its parts are decoded
    and checked for deterministic encoding separately: the header items, the channel
    table (taken from :class:`_ChannelTables` when the same bytes were seen before), the
    readings and the events. Every part of the body is checked, as a whole-body check
    would."""
    if not body or body[0] != 0x8D:
        raise FrameError("malformed", "body is not an array of 13 items")
    try:
        ends = cbor.item_ends(body, 1, 13, cbor.MAX_DEPTH - 1)
    except cbor.CBORError as e:
        raise FrameError("malformed", f"body: {e}") from None
    if ends[12] != len(body):
        raise FrameError("malformed", f"body: {len(body) - ends[12]} trailing byte(s) after "
                         "the array of 13 items")
    hdr_bytes = _HEADER_ARRAY + body[1 : ends[9]]
    chan_bytes = body[ends[9] : ends[10]]
    rec_bytes = body[ends[10] : ends[11]]
    ev_bytes = body[ends[11] :]
    hdr = _loads(hdr_bytes, "header")
    if not _canonical(hdr, hdr_bytes):
        raise FrameError("malformed", "body: items 0-9 are not in canonical CBOR encoding")
    known = _CHANNEL_TABLES.get(chan_bytes)
    chans: Any = None
    if known is None:
        chans = _loads(chan_bytes, "channels")
        if not _canonical(chans, chan_bytes):
            raise FrameError("malformed", "body: the channel table is not in canonical CBOR "
                             "encoding")
    recs = _loads(rec_bytes, "readings")
    if not _canonical(recs, rec_bytes):
        raise FrameError("malformed", "body: the readings are not in canonical CBOR "
                         "encoding")
    # Events may hold maps: the reference encoder sorts their keys (cbor2 keeps the last
    # of duplicate keys, which then does not re-encode to the input).
    evs = _loads(ev_bytes, "events")
    try:
        same = cbor.encode(evs) == ev_bytes
    except cbor.CBORError:
        same = False
    if not same:
        raise FrameError("malformed", "body: the events are not in canonical CBOR encoding")

    (ver, gw, site, key_id, alg_id, boot_id, seq, prev_hash, created_ms, clk) = hdr
    if ver != FORMAT_VERSION or type(ver) is not int:
        raise FrameError("schema", f"format version {_short(ver)} is not {FORMAT_VERSION}")
    if type(alg_id) is not int or alg_id not in ALG_NAMES:
        raise FrameError("schema", f"alg {_short(alg_id)} unknown")
    alg = ALG_NAMES[alg_id]
    clock = CLOCK_NAMES.get(clk) if type(clk) is int else None
    # The names were matched against their patterns when the header was peeked: equal
    # texts need not be matched again.
    peeked = header is not None and (gw, site, key_id) == (
        header.gateway_id, header.site, header.key_id) and type(gw) is str and \
        type(site) is str and type(key_id) is str
    _check_header(gw, site, key_id, alg, boot_id, seq, prev_hash, created_ms,
                  clock if clock is not None else f"<{_short(clk)}>", names_checked=peeked)
    assert clock is not None
    if (known is None and type(chans) is not list) or type(recs) is not list or \
            type(evs) is not list:
        raise FrameError("schema", "channels, readings and events must be arrays")
    if known is None:
        table: list[tuple[str, str, str]] = []
        for i, c in enumerate(chans):
            if type(c) is not list or len(c) != 3:
                raise FrameError("schema", f"channels[{i}] is not [instrument, signal, unit]")
            _check_channel(i, c[0], c[1], c[2])
            table.append((c[0], c[1], c[2]))
        if len(set(table)) != len(table):
            raise FrameError("schema", "channels: the same (instrument, signal, unit) twice")
        known = tuple(table)
        _CHANNEL_TABLES.put(chan_bytes, known)
    channels = list(known)
    nch = len(channels)
    # Column-wise checks at C speed (a frame holds hundreds of readings); the per-item
    # loop runs only to name the first offending item when a column check fails.
    if recs and not _rows_ok(recs, nch, created_ms):
        _raise_first_bad_row(recs, nch, created_ms)
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
        _check_event(i, ev, created_ms)
        events.append(Event(ev[0], ev[2], (created_ms + ev[1]) / 1000, ev[3]))
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
