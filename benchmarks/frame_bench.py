"""Cost of sealing and verifying frames, per reading, next to plain JSON encoding.

The baseline is what an unsigned gateway does: ``json.dumps`` of the same readings. The
figure that matters for the gateway budget (<= 10 us CPU per reading all-in) is the seal
cost per reading; for the central side, decode + verify per reading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time

from stationseal import vectors
from stationseal.frame import ZERO_HASH, decode, seal
from stationseal.keys import KeyRegistry
from stationseal.records import Reading
from stationseal.signing import Ed25519Signer, P256Signer
from stationseal.verify import verify_payload


def readings(n: int, t0: float) -> list[Reading]:
    def f32(x: float) -> float:
        return float(struct.unpack(">f", struct.pack(">f", x))[0])

    return [
        Reading(f"inst-{i % 8}", f"sig{i % 10}", f32(12.345 * (i + 1)), "ppm", t0 - 1 + i / 800,
                "N", struct.pack(">f", 12.345 * (i + 1)))
        for i in range(n)
    ]


def per_reading(fn, n_readings: int, reps: int, rounds: int = 7) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(reps):
            fn()
        out.append((time.process_time() - t) / reps / n_readings * 1e6)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 50 if args.quick else 300
    t0 = vectors.T0
    ed = Ed25519Signer(vectors.ed_key())
    p256 = P256Signer(vectors.p256_key())
    reg = KeyRegistry()
    reg.add("gw-demo-1", vectors.build()["keys"]["ed25519"]["public_key"].encode(), 0.0,
            sites=["S"])
    reg.add("gw-demo-2", vectors.build()["keys"]["p256"]["public_key"].encode(), 0.0,
            sites=["S"])
    print(f"{'batch':>6} {'json baseline':>14} {'seal ed25519':>13} {'seal p256':>10} "
          f"{'verify ed25519':>15} {'bytes/reading':>14} {'json bytes':>11}   (us CPU per reading, median)")
    for n in (10, 80, 400):
        rs = readings(n, t0)

        def mk(signer, gw, rs=rs):  # type: ignore[no-untyped-def]
            return lambda: seal(signer, gateway_id=gw, site="S", boot_id=vectors.BOOT, seq=1,
                                prev_hash=ZERO_HASH, created=t0, clock_sync="synced",
                                readings=rs, events=[])

        js = [{"instrument": r.instrument, "signal": r.signal, "value": r.value, "unit": r.unit,
               "time": r.time, "quality": r.quality, "raw": r.raw.hex() if r.raw else None}
              for r in rs]
        base = per_reading(lambda js=js: json.dumps(js), n, reps)
        s_ed = per_reading(mk(ed, "gw-demo-1"), n, reps)
        s_p = per_reading(mk(p256, "gw-demo-2"), n, max(10, reps // 3))
        f = mk(ed, "gw-demo-1")()
        ver = per_reading(lambda f=f: verify_payload(f.payload, reg), n, reps)
        size = len(f.payload) / n
        print(f"{n:>6} {base:>14.2f} {s_ed:>13.2f} {s_p:>10.2f} {ver:>15.2f} {size:>14.1f} "
              f"{len(json.dumps(js)) / n:>11.1f}")
    f = seal(ed, gateway_id="gw-demo-1", site="S", boot_id=vectors.BOOT, seq=1,
             prev_hash=ZERO_HASH, created=t0, clock_sync="synced", readings=readings(80, t0),
             events=[])
    dec = per_reading(lambda: decode(f.payload), 80, reps)
    print(f"decode only (80/frame): {dec:.2f} us per reading")


if __name__ == "__main__":
    main()
