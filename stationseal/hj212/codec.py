"""HJ 212 frames: ``##`` + 4-digit length + data segment + 4-hex CRC + CRLF.

Data segment: ``QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;][RF=..;]CP=&&..&&``.

:func:`parse_frame` is the only way bytes from the network become a :class:`Frame`.
It raises :class:`~stationseal.hj212.errors.HJ212Error` subclasses for anything
malformed (and nothing else, whatever the input), checks the CRC before interpreting
the header so that line noise is reported as line noise, and tolerates common
deviations of real loggers (lower-case CRC hex, missing QN, trailing ``;`` in CP) by
recording them in :attr:`Frame.warnings` instead of rejecting readings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from stationseal.hj212.codes import SYSTEM_CODES, code_info, signal_map
from stationseal.hj212.commands import COMMANDS, command_name, is_encrypted_command
from stationseal.hj212.cp import CP, MAX_CP_LEN, RESERVED
from stationseal.hj212.crc import crc16, crc16_hex
from stationseal.hj212.errors import (
    HJ212BuildError,
    HJ212CPError,
    HJ212CRCError,
    HJ212CryptoError,
    HJ212EncodingError,
    HJ212FlagError,
    HJ212FramingError,
    HJ212HeaderError,
)
from stationseal.hj212.sm4 import decrypt_cp, encrypt_cp, parse_key
from stationseal.hj212.timefmt import format_qn

MAX_DATA_LEN = 1024
#: ``##`` + length + CRC + CRLF around an empty data segment.
OVERHEAD = 12
HEADER_LEN = 6

VERSIONS: dict[int, str] = {0: "HJ/T 212-2005", 1: "HJ 212-2017", 2: "HJ 212-2025"}
VERSION_2017 = 1
VERSION_2025 = 2

#: Header fields in the order the standard writes them.
HEADER_FIELDS = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO", "RF")
_CANONICAL = {name.upper(): name for name in HEADER_FIELDS}

#: A key for SM4: fixed bytes / hex text, or a lookup by MN (one key per logger).
KeySource = bytes | str | Callable[[str], bytes | str | None] | None

_CN_RE = re.compile(rb"(?:^|;)CN=([^;]*);")
_MN_RE = re.compile(rb"(?:^|;)MN=([^;]*);")


def make_flag(version: int = VERSION_2017, *, ack: bool = False, split: bool = False) -> int:
    """Flag byte: V5..V0 version bits, then D (packet split), then A (ack required)."""
    if version not in VERSIONS:
        raise HJ212BuildError("unknown protocol version", field="Flag", got=version)
    return version << 2 | int(split) << 1 | int(ack)


@dataclass(frozen=True, slots=True)
class FlagInfo:
    value: int
    version: int
    split: bool
    ack: bool

    @property
    def version_name(self) -> str:
        return VERSIONS.get(self.version, f"unknown version {self.version}")


def decode_flag(value: int, position: int | None = None) -> FlagInfo:
    """Split Flag into its bits; unknown protocol versions are rejected, not guessed."""
    if not 0 <= value <= 255:
        raise HJ212FlagError(
            "Flag out of range", field="Flag", position=position, expected="0-255", got=value
        )
    version = value >> 2
    if version not in VERSIONS:
        raise HJ212FlagError(
            f"Flag={value} names protocol version bits {version:06b}",
            field="Flag",
            position=position,
            expected="000000 (2005), 000001 (2017, Flag 4-7) or 000010 (2025, Flag 8-11)",
        )
    return FlagInfo(value, version, bool(value & 2), bool(value & 1))


@dataclass(frozen=True, slots=True)
class Frame:
    st: str
    cn: str
    mn: str
    cp: CP = field(default_factory=CP)
    pw: str | None = "123456"
    qn: str | None = None
    #: ``None`` when the frame carried no Flag (pre-2017 loggers).
    flag: int | None = make_flag()
    pnum: int | None = None
    pno: int | None = None
    #: HJ 212-2025 ``RF``: ``"1"`` marks resent / back-filled data.
    rf: str | None = None
    #: Header fields this codec does not know, kept in wire order.
    extra: tuple[tuple[str, str], ...] = ()
    # Filled in by parse_frame only:
    raw: bytes = field(default=b"", compare=False, repr=False)
    crc: str | None = field(default=None, compare=False)
    encrypted: bool = field(default=False, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    # ------------------------------------------------------------- flag bits
    @property
    def flag_info(self) -> FlagInfo | None:
        return None if self.flag is None else decode_flag(self.flag)

    @property
    def version(self) -> int | None:
        return None if self.flag is None else self.flag >> 2

    @property
    def ack_requested(self) -> bool:
        return self.flag is not None and bool(self.flag & 1)

    @property
    def is_split(self) -> bool:
        return self.pnum is not None

    @property
    def resent(self) -> bool:
        return self.rf == "1"

    def replace(self, **changes: Any) -> Frame:
        """Copy with changes; parse-only metadata (raw, crc, warnings) is cleared."""
        changes.setdefault("raw", b"")
        changes.setdefault("crc", None)
        changes.setdefault("encrypted", False)
        changes.setdefault("warnings", ())
        return replace(self, **changes)

    # -------------------------------------------------------------- encoding
    def header_fields(self) -> list[tuple[str, str]]:
        values: list[tuple[str, str | int | None]] = [
            ("QN", self.qn),
            ("ST", self.st),
            ("CN", self.cn),
            ("PW", self.pw),
            ("MN", self.mn),
            ("Flag", self.flag),
            ("PNUM", self.pnum),
            ("PNO", self.pno),
            ("RF", self.rf),
        ]
        out = [(k, str(v)) for k, v in values if v is not None]
        return out + list(self.extra)

    def header_text(self) -> str:
        return "".join(f"{k}={v};" for k, v in self.header_fields())

    def data_segment(self) -> str:
        """The plaintext data segment (what the CRC covers)."""
        return f"{self.header_text()}CP=&&{self.cp.text()}&&"

    def validate(self) -> None:
        """Raise HJ212BuildError for values that cannot be sent as given."""
        for key, value in self.header_fields():
            if RESERVED.intersection(value) or not value.isprintable():
                raise HJ212BuildError(
                    "header value contains a reserved or non-printable character",
                    field=key,
                    got=value,
                )
        if not (len(self.st) == 2 and self.st.isdigit()):
            raise HJ212BuildError("bad ST", field="ST", expected="2 digits", got=self.st)
        if not (len(self.cn) == 4 and self.cn.isdigit()):
            raise HJ212BuildError("bad CN", field="CN", expected="4 digits", got=self.cn)
        if not self.mn:
            raise HJ212BuildError("MN is empty", field="MN")
        if self.flag is not None:
            try:
                info = decode_flag(self.flag)
            except HJ212FlagError as e:
                raise HJ212BuildError(str(e), field="Flag") from None
            if info.split != (self.pnum is not None and self.pno is not None):
                raise HJ212BuildError(
                    "Flag D bit and PNUM/PNO disagree",
                    field="Flag",
                    expected="D=1 exactly when PNUM and PNO are set",
                    got=f"Flag={self.flag} PNUM={self.pnum} PNO={self.pno}",
                )
        if (self.pnum is None) != (self.pno is None):
            raise HJ212BuildError("PNUM and PNO go together", field="PNUM")
        if self.pnum is not None and self.pno is not None and not 1 <= self.pno <= self.pnum:
            raise HJ212BuildError(
                "PNO outside 1..PNUM", field="PNO", got=f"PNO={self.pno} PNUM={self.pnum}"
            )
        self.cp.validate()
        cp_len = len(self.cp.text().encode("utf-8"))
        if cp_len > MAX_CP_LEN:
            raise HJ212BuildError(
                f"CP region is {cp_len} bytes, the standard allows {MAX_CP_LEN}: "
                "use split_frame() to send it as several packets",
                field="CP",
            )

    def encode(
        self, sm4_key: bytes | str | None = None, *, max_data_len: int = MAX_DATA_LEN
    ) -> bytes:
        """Wire bytes. With ``sm4_key`` the CP of data commands is SM4-encrypted."""
        self.validate()
        header = self.header_text().encode("utf-8")
        content = self.cp.text().encode("utf-8")
        plain = header + b"CP=&&" + content + b"&&"
        crc = crc16_hex(plain).encode("ascii")
        data = plain
        if sm4_key is not None and is_encrypted_command(self.cn):
            data = header + b"CP=&&" + encrypt_cp(content, parse_key(sm4_key)) + b"&&"
        if len(data) > max_data_len:
            raise HJ212BuildError(
                f"data segment is {len(data)} bytes, more than {max_data_len}: "
                "use split_frame() to send it as several packets",
                field="length",
            )
        return b"##%04d" % len(data) + data + crc + b"\r\n"


# ===================================================================== parsing
def _unframe(raw: bytes, max_data_len: int) -> tuple[bytes, bytes]:
    """Check the envelope; return (data segment, CRC field)."""
    if raw[:2] != b"##":
        raise HJ212FramingError(
            "frame must start with '##'", field="header", position=0, got=raw[:2]
        )
    length_field = raw[2:6]
    if len(length_field) < 4 or not (length_field.isdigit() and length_field.isascii()):
        raise HJ212FramingError(
            "bad length field",
            field="length",
            position=2,
            expected="4 decimal digits",
            got=length_field,
        )
    length = int(length_field)
    if length > max_data_len:
        raise HJ212FramingError(
            f"data segment length {length} exceeds the maximum {max_data_len}",
            field="length",
            position=2,
        )
    total = OVERHEAD + length
    if len(raw) != total:
        if raw.endswith(b"\r\n") and len(raw) >= OVERHEAD:
            carried = len(raw) - OVERHEAD
            raise HJ212FramingError(
                f"length field says the data segment is {length} bytes but the frame "
                f"carries {carried} bytes between the length field and CRC+CRLF",
                field="length",
                position=2,
            )
        if len(raw) < total:
            raise HJ212FramingError(
                f"frame truncated: length field {length:04d} needs {total} bytes, "
                f"the frame has {len(raw)}",
                field="length",
                position=2,
            )
        raise HJ212FramingError(
            f"{len(raw) - total} unexpected bytes after the frame end",
            field="tail",
            position=total,
            got=raw[total:],
        )
    if raw[total - 2 :] != b"\r\n":
        raise HJ212FramingError(
            "frame must end with CR LF",
            field="tail",
            position=total - 2,
            expected="b'\\r\\n'",
            got=raw[total - 2 :],
        )
    crc_field = raw[HEADER_LEN + length : HEADER_LEN + length + 4]
    if not all(c in b"0123456789abcdefABCDEF" for c in crc_field):
        raise HJ212FramingError(
            "bad CRC field",
            field="CRC",
            position=HEADER_LEN + length,
            expected="4 hex digits",
            got=crc_field,
        )
    return raw[HEADER_LEN : HEADER_LEN + length], crc_field


def resolve_key(source: KeySource, mn: str) -> bytes | None:
    """The 16-byte SM4 key for logger ``mn``, or None when it has none."""
    if source is None:
        return None
    key = source(mn) if callable(source) else source
    return None if key is None else parse_key(key)


def _decode(data: bytes, base: int, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HJ212EncodingError(
            f"{what} is not valid UTF-8", position=base + e.start, got=data[e.start : e.start + 4]
        ) from None


def parse_frame(
    data: bytes | bytearray | str,
    *,
    sm4_key: KeySource = None,
    check_crc: bool = True,
    max_data_len: int = MAX_DATA_LEN,
) -> Frame:
    """Parse one complete frame (including CRLF). Raises only HJ212Error subclasses.

    ``sm4_key`` (bytes, hex text, or a function of MN) decrypts the CP of data commands;
    a plaintext frame from a logger that has a key is accepted with a warning.
    ``check_crc=False`` is for diagnosis only (the CLI shows what a corrupt frame says).
    """
    if isinstance(data, str):
        raw = data.encode("utf-8")
    elif isinstance(data, bytes | bytearray):
        raw = bytes(data)
    else:
        raise HJ212FramingError("frame must be bytes or str", got=type(data).__name__)
    segment, crc_field = _unframe(raw, max_data_len)
    warnings: list[str] = []
    crc_text = crc_field.decode("ascii")
    if crc_text != crc_text.upper():
        warnings.append(f"CRC written in lower-case hex ({crc_text})")
    carried_crc = int(crc_text, 16)

    cp_at = segment.find(b"CP=&&")
    if cp_at < 0:
        raise HJ212CPError(
            "data segment has no 'CP=&&'",
            field="CP",
            position=HEADER_LEN,
            got=segment[:40],
        )
    if len(segment) < cp_at + 7 or not segment.endswith(b"&&"):
        raise HJ212CPError(
            "CP region must end with '&&' right before the CRC",
            field="CP",
            position=HEADER_LEN + max(len(segment) - 2, 0),
            got=segment[-4:],
        )
    header_bytes = segment[:cp_at]
    content = segment[cp_at + 5 : -2]
    content_base = HEADER_LEN + cp_at + 5

    encrypted = False
    plain_content = content
    key = None
    if sm4_key is not None:
        cn_m, mn_m = _CN_RE.search(header_bytes), _MN_RE.search(header_bytes)
        if cn_m and is_encrypted_command(cn_m.group(1).decode("ascii", "replace")):
            key = resolve_key(sm4_key, mn_m.group(1).decode("utf-8", "replace") if mn_m else "")
    if key is not None:
        decrypt_error: HJ212CryptoError | None = None
        try:
            candidate = decrypt_cp(content, key, content_base)
        except HJ212CryptoError as e:
            decrypt_error, candidate = e, b""
        if decrypt_error is None and (
            not check_crc or crc16(header_bytes + b"CP=&&" + candidate + b"&&") == carried_crc
        ):
            plain_content, encrypted = candidate, True
        elif crc16(segment) == carried_crc:
            warnings.append("CP is plaintext although an SM4 key is configured for this MN")
        elif decrypt_error is not None:
            raise decrypt_error
        else:
            raise HJ212CRCError(
                "CRC mismatch after SM4 decryption (wrong key, or corrupted frame)",
                field="CRC",
                position=HEADER_LEN + len(segment),
                got=crc_text,
            )
    elif check_crc:
        computed = crc16(segment)
        if computed != carried_crc:
            raise HJ212CRCError(
                "CRC mismatch",
                field="CRC",
                position=HEADER_LEN + len(segment),
                expected=f"{computed:04X} computed over the data segment",
                got=crc_text,
            )

    header_text = _decode(header_bytes, HEADER_LEN, "header")
    cp_text = _decode(plain_content, content_base, "CP region")
    frame_fields, extra = _parse_header(header_text, warnings)
    cp, cp_warnings = CP.parse(cp_text, content_base)
    warnings.extend(cp_warnings)
    frame = _build_frame(frame_fields, extra, cp, warnings)
    return replace(frame, raw=raw, crc=crc_text, encrypted=encrypted, warnings=tuple(warnings))


def _parse_header(
    text: str, warnings: list[str]
) -> tuple[dict[str, tuple[str, int]], list[tuple[str, str]]]:
    """Split ``K=V;`` fields; returns {canonical key: (value, byte position)} and extras."""
    if text and not text.endswith(";"):
        raise HJ212HeaderError(
            "header must end with ';' before 'CP=&&'",
            position=HEADER_LEN + len(text.encode("utf-8")),
            got=text[-12:],
        )
    found: dict[str, tuple[str, int]] = {}
    extra: list[tuple[str, str]] = []
    pos = HEADER_LEN
    for part in text[:-1].split(";") if text else []:
        here = pos
        pos += len(part.encode("utf-8")) + 1
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise HJ212HeaderError(
                "header field is not key=value", position=here, expected="KEY=value", got=part
            )
        canonical = _CANONICAL.get(key.upper())
        if canonical is None:
            warnings.append(f"unknown header field {key!r} at byte {here} kept as extra")
            extra.append((key, value))
            continue
        if canonical != key:
            warnings.append(f"header field {key!r} at byte {here} should be written {canonical!r}")
        if canonical in found:
            raise HJ212HeaderError(
                f"duplicate header field (first at byte {found[canonical][1]})",
                field=canonical,
                position=here,
            )
        found[canonical] = (value, here)
    return found, extra


def _int_field(fields: dict[str, tuple[str, int]], name: str) -> int | None:
    if name not in fields:
        return None
    value, pos = fields[name]
    if not (value.isdigit() and value.isascii()) or len(value) > 9:
        raise HJ212HeaderError(
            "not a number", field=name, position=pos, expected="digits", got=value
        )
    return int(value)


def _build_frame(
    fields: dict[str, tuple[str, int]],
    extra: list[tuple[str, str]],
    cp: CP,
    warnings: list[str],
) -> Frame:
    for name in ("ST", "CN", "MN"):
        if name not in fields:
            raise HJ212HeaderError("required header field missing", field=name, position=HEADER_LEN)
    st, st_pos = fields["ST"]
    cn, cn_pos = fields["CN"]
    mn, mn_pos = fields["MN"]
    if not (len(st) == 2 and st.isdigit() and st.isascii()):
        raise HJ212HeaderError(
            "bad system code", field="ST", position=st_pos, expected="2 digits", got=st
        )
    if st not in SYSTEM_CODES:
        warnings.append(f"ST={st} is not a system code of HJ 212-2017/2025")
    if not (len(cn) == 4 and cn.isdigit() and cn.isascii()):
        raise HJ212HeaderError(
            "bad command code", field="CN", position=cn_pos, expected="4 digits", got=cn
        )
    if cn not in COMMANDS:
        warnings.append(f"CN={cn} is not a command code of HJ 212-2017/2025")
    if not mn or not mn.isprintable() or " " in mn:
        raise HJ212HeaderError(
            "MN must be non-empty printable text without spaces",
            field="MN",
            position=mn_pos,
            got=mn,
        )
    if len(mn) > 24:
        warnings.append(f"MN is {len(mn)} characters, HJ 212-2017 allows 24")
    qn = fields.get("QN", (None, 0))[0]
    if qn is not None:
        qn_pos = fields["QN"][1]
        if not (qn.isdigit() and qn.isascii()) or len(qn) > 20:
            raise HJ212HeaderError(
                "bad request number",
                field="QN",
                position=qn_pos,
                expected="YYYYMMDDhhmmsszzz (17 digits)",
                got=qn,
            )
        if len(qn) != 17:
            warnings.append(f"QN has {len(qn)} digits, HJ 212-2017 uses 17")
    pw = fields.get("PW", (None, 0))[0]
    if pw is None:
        warnings.append("PW missing")
    flag = _int_field(fields, "Flag")
    if flag is None:
        warnings.append("Flag missing: treated as no acknowledgement, no packet split")
    info = None if flag is None else decode_flag(flag, fields["Flag"][1])
    pnum, pno = _int_field(fields, "PNUM"), _int_field(fields, "PNO")
    split_bit = info is not None and info.split
    if split_bit and (pnum is None or pno is None):
        raise HJ212HeaderError(
            "Flag has the D bit (packet split) but PNUM/PNO are missing",
            field="PNUM" if pnum is None else "PNO",
            position=fields["Flag"][1],
        )
    if (pnum is None) != (pno is None):
        raise HJ212HeaderError(
            "PNUM and PNO must come together",
            field="PNO" if pno is None else "PNUM",
            position=fields[("PNUM" if pnum is not None else "PNO")][1],
        )
    if pnum is not None and pno is not None:
        if not 1 <= pno <= pnum:
            raise HJ212HeaderError(
                "packet number outside 1..PNUM",
                field="PNO",
                position=fields["PNO"][1],
                expected=f"1..{pnum}",
                got=pno,
            )
        if info is not None and not split_bit:
            warnings.append("PNUM/PNO present but Flag has no D bit")
    rf = fields.get("RF", (None, 0))[0]
    if rf is not None and rf not in ("0", "1"):
        warnings.append(f"RF={rf!r}: HJ 212-2025 uses RF=1 for resent data")
    return Frame(
        st=st,
        cn=cn,
        mn=mn,
        cp=cp,
        pw=pw,
        qn=qn,
        flag=flag,
        pnum=pnum,
        pno=pno,
        rf=rf,
        extra=tuple(extra),
    )


# ====================================================================== helpers
class QnSource:
    """Unique request numbers: the send time, bumped by 1 ms when two frames share it.

    Acknowledgements are matched by QN, so two frames in the same millisecond must not
    share one.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last_ms = 0

    def __call__(self, t: float | None = None) -> str:
        ms = round((self._clock() if t is None else t) * 1000)
        ms = max(ms, self._last_ms + 1)
        self._last_ms = ms
        return format_qn(ms / 1000.0)


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """JSON-ready view, with code names and canonical signals where known."""
    info = frame.flag_info
    pollutants: dict[str, Any] = {}
    for code, pol in frame.cp.pollutants.items():
        entry: dict[str, Any] = dict(pol.fields)
        meta = code_info(code)
        if meta is not None:
            entry["_name"] = meta.name
            entry["_unit"] = meta.unit_symbol
        mapped = signal_map(frame.st, code)
        if mapped is not None:
            entry["_signal"] = mapped.signal
        pollutants[code] = entry
    out: dict[str, Any] = {
        "qn": frame.qn,
        "st": frame.st,
        "st_name": SYSTEM_CODES.get(frame.st),
        "cn": frame.cn,
        "cn_name": command_name(frame.cn),
        "pw": frame.pw,
        "mn": frame.mn,
        "flag": frame.flag,
        "version": info.version_name if info else None,
        "ack_requested": frame.ack_requested,
        "pnum": frame.pnum,
        "pno": frame.pno,
        "rf": frame.rf,
        "data_time": frame.cp.data_time,
        "params": {k: v for k, v in frame.cp.params.items() if k != "DataTime"},
        "pollutants": pollutants,
    }
    if frame.extra:
        out["extra_header"] = dict(frame.extra)
    if frame.raw:
        out["crc"] = frame.crc
        out["length"] = len(frame.raw) - OVERHEAD
        out["encrypted"] = frame.encrypted
        out["warnings"] = list(frame.warnings)
    return out
