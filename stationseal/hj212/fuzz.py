"""Mutation fuzzer for the HJ 212 parser that needs nothing beyond the standard library.

The contract under test: whatever bytes arrive, :func:`parse_frame` either returns a
Frame or raises an HJ212Error, and :class:`StreamDecoder` accounts for every byte fed
(each one comes back inside a frame or an error record). Mutations start from valid
frames and half of them are re-wrapped with a correct length and CRC, so that the
header and CP parsers behind the envelope checks are reached too.

Run long campaigns with ``stationseal hj212 fuzz -n 1000000``; the test suite runs a
short, seeded one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from stationseal.hj212.codec import Frame, make_flag, parse_frame
from stationseal.hj212.cp import CP
from stationseal.hj212.crc import crc16_hex
from stationseal.hj212.errors import HJ212Error
from stationseal.hj212.stream import StreamDecoder

FUZZ_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
_TOKENS = (b"##", b";", b"=", b"&&", b"\r\n", b",", b"-", b"CP=&&", b"Flag=", b"PNUM=", b"\xff")


def seed_frames() -> list[bytes]:
    """Valid frames covering the features the parser has branches for."""
    appendix = (
        b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;"
        b"MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
    )
    data = CP.build(
        data_time="20240501120000",
        pollutants={
            "a21026": {"Rtd": "554.00", "Flag": "N"},
            "a21002": {"Avg": "41.2", "Min": "30.0", "Max": "60.1", "Flag": "M"},
            "a00000": {"Cou": "1234.5", "SampleTime": "20240501115959", "EFlag": "E01"},
        },
    )
    frames = [
        appendix,
        Frame(st="31", cn="2011", mn="MN0001", qn="20240501120000001", cp=data).encode(),
        Frame(
            st="31", cn="2051", mn="MN0001", flag=make_flag(2, ack=True), rf="1", cp=data
        ).encode(),
        Frame(
            st="22", cn="2061", mn="MN2", flag=make_flag(split=True), pnum=3, pno=2, cp=data
        ).encode(),
        Frame(st="91", cn="9011", mn="MN3", cp=CP.build(params={"QnRtn": 1})).encode(),
        Frame(st="31", cn="2011", mn="MNK", cp=data).encode(FUZZ_KEY),
    ]
    return frames


def reframe(segment: bytes) -> bytes:
    """Wrap a data segment with a correct length and CRC."""
    return b"##%04d" % (len(segment) % 10000) + segment + crc16_hex(segment).encode() + b"\r\n"


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = rng.choice(_TOKENS)
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 32)]
        elif op == 5:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 6:
            del buf[pos:]
        else:
            buf[pos:pos] = bytes(rng.randrange(48, 58) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.5 and len(buf) > 12:
        return reframe(bytes(buf[6:-6]))
    return bytes(buf)


@dataclass
class FuzzReport:
    iterations: int = 0
    parsed: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: (input, description) of every contract violation
    failures: list[tuple[bytes, str]] = field(default_factory=list)


def check_one(data: bytes, rng: random.Random, report: FuzzReport) -> None:
    """Apply the parser and the stream decoder to one input, recording violations."""
    for kwargs in ({}, {"check_crc": False}, {"sm4_key": FUZZ_KEY}):
        try:
            parse_frame(data, **kwargs)
            report.parsed += 1
        except HJ212Error as e:
            name = type(e).__name__
            report.rejected[name] = report.rejected.get(name, 0) + 1
        except Exception as e:  # the contract says this never happens
            report.failures.append((data, f"parse_frame{kwargs}: {type(e).__name__}: {e}"))
    decoder = StreamDecoder()
    seen = 0
    try:
        stream = data * rng.randint(1, 3)
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 64)
            for item in decoder.feed(stream[pos : pos + step]):
                seen += len(item.raw)
            pos += step
        seen += sum(len(e.raw) for e in decoder.close())
        if seen != len(stream):
            report.failures.append((data, f"stream accounted {seen} of {len(stream)} bytes"))
    except Exception as e:
        report.failures.append((data, f"StreamDecoder: {type(e).__name__}: {e}"))


def fuzz(iterations: int = 10_000, seed: int = 0) -> FuzzReport:
    rng = random.Random(seed)
    pool = seed_frames()
    report = FuzzReport()
    for _ in range(iterations):
        check_one(mutate(rng.choice(pool), rng, pool), rng, report)
        report.iterations += 1
    return report
