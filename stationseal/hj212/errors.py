"""Errors raised by the HJ 212 codec.

Every malformed input raises a subclass of :class:`HJ212Error` (itself a ``ValueError``)
and nothing else, so a listener can catch one type, keep the raw bytes and carry on. The
message names the field, the byte position inside the frame (counted from the first
``#``) and what was expected versus what arrived: an operator reading a quarantine log
must be able to tell line noise from a misconfigured logger without a hex dump.
"""

from __future__ import annotations


def _show(value: object, limit: int = 40) -> str:
    """Short, printable rendering of the offending input for error messages."""
    if isinstance(value, bytes | bytearray):
        text = repr(bytes(value[:limit]))
        return text + ("..." if len(value) > limit else "")
    text = repr(value)
    return text if len(text) <= limit + 2 else text[: limit + 2] + "..."


class HJ212Error(ValueError):
    """Base class: malformed HJ 212 input or an impossible build request."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        position: int | None = None,
        expected: str | None = None,
        got: object = None,
    ) -> None:
        parts = [message]
        if expected is not None:
            parts.append(f"expected {expected}")
        if got is not None:
            parts.append(f"got {_show(got)}")
        text = "; ".join(parts)
        if position is not None:
            text = f"{text} (at byte {position})"
        if field is not None:
            text = f"{field}: {text}"
        super().__init__(text)
        self.field = field
        self.position = position
        self.expected = expected
        self.got = got


class HJ212FramingError(HJ212Error):
    """``##``, the length field, the CRC field or the CRLF tail is wrong."""


class HJ212CRCError(HJ212Error):
    """The CRC does not match the data segment (line noise or a hand-edited frame)."""


class HJ212EncodingError(HJ212Error):
    """The data segment is not valid UTF-8 text."""


class HJ212HeaderError(HJ212Error):
    """A header field (QN, ST, CN, PW, MN, Flag, PNUM, PNO, RF) is missing or invalid."""


class HJ212FlagError(HJ212HeaderError):
    """The Flag field is not a number 0-255 or names an unknown protocol version."""


class HJ212CPError(HJ212Error):
    """The CP (command parameter) region is malformed."""


class HJ212CryptoError(HJ212Error):
    """SM4 key or ciphertext problem."""


class HJ212PacketError(HJ212Error):
    """Packet split / reassembly inconsistency (PNUM/PNO)."""


class HJ212BuildError(HJ212Error):
    """A frame cannot be built from the given values (reserved characters, too long...)."""
