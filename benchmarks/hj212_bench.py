"""HJ 212 codec cost per frame, next to a naive split-only parse of the same bytes.

The baseline is what a minimal platform does: split the data segment on ';' and '=' with
no envelope, CRC, header or CP validation. The codec's figure is what the ingest listener
pays per frame for a legacy site; a logger sends one real-time frame per 30 s, so even
thousands of sites are a small load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from stationseal.hj212 import CP, Frame, StreamDecoder, crc16, make_flag, parse_frame

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def sample_frame() -> Frame:
    pollutants = {
        code: {"Rtd": f"{value:.2f}", "Flag": "N"}
        for code, value in (
            ("a21026", 312.4),
            ("a21002", 121.7),
            ("a34013", 11.9),
            ("a19001", 9.1),
            ("a00000", 51.2),
            ("a01012", 121.3),
            ("a01013", 0.31),
            ("a01014", 8.2),
        )
    }
    return Frame(
        st="31",
        cn="2011",
        mn="010000A8900016F000169DC0",
        qn="20240501120000123",
        flag=make_flag(ack=True),
        cp=CP.build(data_time="20240501120000", pollutants=pollutants),
    )


def naive(wire: bytes) -> dict[str, str]:
    body = wire[6:-6].decode()
    head, _, cp = body.partition("CP=&&")
    out = dict(kv.split("=", 1) for kv in head.split(";") if kv)
    for item in cp[:-2].split(";"):
        for sub in item.split(","):
            k, _, v = sub.partition("=")
            out[k] = v
    return out


def per_call(fn: Callable[[], object], reps: int, rounds: int = 7) -> float:
    out = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(reps):
            fn()
        out.append((time.process_time() - t) / reps * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 500 if args.quick else 5000
    frame = sample_frame()
    wire = frame.encode()
    enc_wire = frame.encode(KEY)
    stream = wire * 100
    print(f"frame: {len(wire)} bytes, 8 channels (us CPU per frame, median of 7 rounds)")
    rows = [
        ("naive split (baseline)", per_call(lambda: naive(wire), reps)),
        ("crc16 only", per_call(lambda: crc16(wire[6:-6]), reps)),
        ("parse_frame", per_call(lambda: parse_frame(wire), reps)),
        ("parse + pollutants view", per_call(lambda: parse_frame(wire).cp.pollutants, reps)),
        ("parse_frame SM4", per_call(lambda: parse_frame(enc_wire, sm4_key=KEY), reps)),
        ("encode", per_call(frame.encode, reps)),
        (
            "StreamDecoder, 100/feed",
            per_call(lambda: StreamDecoder().feed(stream), max(reps // 100, 5)) / 100,
        ),
    ]
    for name, us in rows:
        print(f"{name:<26} {us:8.1f} us   {1e6 / us:10.0f} frames/s")


if __name__ == "__main__":
    main()
