"""The HJ 212 CRC.

Not the Modbus CRC-16, which public code often uses by mistake: HJ 212 XORs each byte
into ``crc >> 8`` instead of into the low byte, so the register is shifted before every
byte and only its top byte survives. The result has just 256 possible values; it
catches line noise, never tampering, which is why StationSeal signs at the gateway.
"""

from __future__ import annotations


def _table() -> tuple[int, ...]:
    rows = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        rows.append(crc)
    return tuple(rows)


#: Per-byte lookup: the eight shift/XOR rounds applied to ``(crc >> 8) ^ byte`` depend
#: only on that value, so they can be precomputed.
_TABLE = _table()


def crc16(data: bytes) -> int:
    """CRC of an HJ 212 data segment (the bytes between the length field and the CRC)."""
    crc = 0xFFFF
    for byte in data:
        crc = _TABLE[(crc >> 8) ^ byte]
    return crc


def crc16_hex(data: bytes) -> str:
    """CRC as the four upper-case hex digits carried in a frame (high byte first)."""
    return f"{crc16(data):04X}"
