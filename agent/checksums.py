"""Checksums raw-serial instruments append to their frames.

``crc16_hj212`` is the HJ 212 variant (initial ``crc >> 8`` before each byte), which is
not the Modbus CRC although both use polynomial 0xA001: instrument vendors that borrowed
the data-logger checksum for their RS-232 output use it, and public code often confuses
the two. It is the data-logger codec's own table-driven CRC, imported on first use (the
codec package is loaded only on gateways that need it: docs/agent.md, "Cost").
"""

from __future__ import annotations

from collections.abc import Callable


def crc16_hj212(data: bytes) -> int:
    from stationseal.hj212.crc import crc16

    return crc16(data)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def sum8(data: bytes) -> int:
    return sum(data) & 0xFF


def xor8(data: bytes) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


def lrc(data: bytes) -> int:
    """Modbus ASCII LRC: two's complement of the 8-bit sum."""
    return (-sum(data)) & 0xFF


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc


#: name -> (function, size in bytes, default byte order of the binary form)
CHECKSUMS: dict[str, tuple[Callable[[bytes], int], int, str]] = {
    "sum8": (sum8, 1, "big"),
    "xor8": (xor8, 1, "big"),
    "lrc": (lrc, 1, "big"),
    "crc16_modbus": (crc16_modbus, 2, "little"),
    "crc16_hj212": (crc16_hj212, 2, "big"),
}
