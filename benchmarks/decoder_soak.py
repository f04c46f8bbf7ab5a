"""Memory under hostile payloads: RSS while the verifier eats a stream of them.

The stream mixes what a hostile network peer can send (garbage, truncated envelopes,
forged signatures) with what a hostile *key holder* can send (correctly signed bodies with
invalid UTF-8, semantic tags, deep nesting, huge integers): every payload is rejected by
name, and the process must stay flat. Each call runs with 100 kB live on the caller's
stack, as the ingest's batch is. Baseline, in the same run: the pinned ``cbor2`` decoding
the same bodies directly, which leaks its exception (and the stack with it) on several of
them; it runs for a tenth of the iterations so the machine keeps its memory.

    python -m benchmarks.decoder_soak [--quick] [--seconds N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import time
from collections import Counter
from typing import Any

import cbor2

from stationseal import cbor, vectors
from stationseal.frame import ZERO_HASH, seal
from stationseal.records import Reading
from stationseal.signing import Ed25519Signer
from stationseal.verify import Rejected, verify_payload

ED = Ed25519Signer(vectors.ed_key())
T0 = vectors.T0


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def hostile_bodies() -> list[bytes]:
    """Bodies a key holder could sign; each leaves the frame subset somewhere."""
    good = seal(ED, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
                prev_hash=ZERO_HASH, created=T0, clock_sync="synced",
                readings=[Reading("a1", "co_pct", 0.5, "%vol", T0, "N", None)],
                events=[]).body
    i = good.index(b"\xf9\x38\x00")  # the value 0.5
    swaps = [b"\x61\xff", b"\xc1\xf9\x7e\x00", b"\xd8\x1e\x82\x01\x61\xff",
             b"\xd8\x24\x41\xff", b"\xd8\x25\x61\x41", b"\xc2\x41\x01", b"\x7f\x61\x41\xff",
             b"\x81" * 30 + b"\x00", b"\x9b" + b"\xff" * 8]
    return [good[:i] + s + good[i + 3:] for s in swaps]


def payloads(rng: random.Random) -> list[bytes]:
    out = []
    for body in hostile_bodies():
        out.append(cbor.head(4, 2) + cbor.head(2, len(body)) + body + cbor.head(2, 64)
                   + ED.sign(body))
    good = out[0]
    for _ in range(20):  # mutations of a signed frame: mostly bad signatures
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    out += [rng.randbytes(rng.randrange(1, 64)) for _ in range(20)]
    return out


def soak(fn: Any, items: list[bytes], seconds: float, report_every: float) -> list[float]:
    gc.collect()
    samples = [rss_mb()]
    t_end = time.monotonic() + seconds
    next_report = time.monotonic() + report_every
    n = 0
    while time.monotonic() < t_end:
        for p in items:
            ballast = bytearray(100_000)
            fn(p)
            del ballast
            n += 1
        if time.monotonic() >= next_report:
            gc.collect()
            samples.append(rss_mb())
            next_report += report_every
    gc.collect()
    samples.append(rss_mb())
    print(f"    {n} payloads, RSS MB at each {report_every:.0f} s: "
          + " ".join(f"{x:.1f}" for x in samples))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    seconds = args.seconds or (20.0 if args.quick else 120.0)
    rng = random.Random(1)
    items = payloads(rng)
    reg = vectors.registry_for(vectors.build())
    verdicts: Counter[str] = Counter()

    def verify(p: bytes) -> None:
        try:
            verify_payload(p, reg)
            verdicts["valid"] += 1
        except Rejected as e:
            verdicts[e.reason] += 1

    def raw_cbor2(p: bytes) -> None:
        with contextlib.suppress(Exception):
            cbor2.loads(p[3:-66] if len(p) > 70 else p)

    print(f"hostile payload mix: {len(items)} kinds; 100 kB live on the stack per call")
    print(f"stationseal.verify_payload for {seconds:.0f} s:")
    s = soak(verify, items, seconds, seconds / 6)
    print(f"  growth {s[-1] - s[1]:+.1f} MB after warm-up; verdicts {dict(verdicts)}")
    print(f"baseline: cbor2.loads on the same bodies for {seconds / 10:.0f} s:")
    b = soak(raw_cbor2, items, seconds / 10, seconds / 60)
    print(f"  growth {b[-1] - b[1]:+.1f} MB")


if __name__ == "__main__":
    main()
