"""Cost of sealing and verifying frames, per reading, next to plain JSON encoding.

The baseline is what an unsigned gateway does: ``json.dumps`` of the same readings. The
figure that matters for the gateway budget (<= 10 us CPU per reading all-in) is the seal
cost per reading; for the central side, decode + verify per reading.

``--against REF`` measures verification of the same frames with the frame code of git
revision REF (its ``stationseal/`` extracted to a temporary directory) and with this
tree, alternating in fresh processes, and prints both medians and their ratio: a
before/after in the same run on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


#: Run in a fresh process with one tree's ``stationseal`` first on the path: verify cost
#: per reading (materialised readings, then rows only, as the ingest verifies).
_CHILD = r"""
import inspect, statistics, struct, sys, time
from stationseal import vectors
from stationseal.frame import ZERO_HASH, seal
from stationseal.keys import KeyRegistry
from stationseal.records import Reading
from stationseal.signing import Ed25519Signer
from stationseal.verify import verify_payload
n, reps = int(sys.argv[1]), int(sys.argv[2])
f32 = lambda x: float(struct.unpack(">f", struct.pack(">f", x))[0])
t0 = vectors.T0
rs = [Reading(f"inst-{i % 8}", f"sig{i % 10}", f32(12.345 * (i + 1)), "ppm", t0 - 1 + i / 800,
              "N", struct.pack(">f", 12.345 * (i + 1))) for i in range(n)]
reg = KeyRegistry()
pem = vectors.build()["keys"]["ed25519"]["public_key"].encode()
kw = {"sites": ["S"]} if "sites" in inspect.signature(reg.add).parameters else {}
reg.add("gw-demo-1", pem, 0.0, **kw)
p = seal(Ed25519Signer(vectors.ed_key()), gateway_id="gw-demo-1", site="S",
         boot_id=vectors.BOOT, seq=1, prev_hash=ZERO_HASH, created=t0, clock_sync="synced",
         readings=rs, events=[]).payload
def per(fn):
    out = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(reps):
            fn()
        out.append((time.process_time() - t) / reps / n * 1e6)
    return statistics.median(out)
print(per(lambda: verify_payload(p, reg)), per(lambda: verify_payload(p, reg, materialize=False)))
"""


def against(ref: str, rounds: int, reps: int) -> None:
    """Verify cost of revision ``ref`` and of this tree, alternating, same frames."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="frame-bench-") as tmp:
        old, new = Path(tmp, "ref"), Path(tmp, "tree")
        old.mkdir()
        new.mkdir()
        arch = subprocess.run(["git", "archive", ref, "stationseal"], cwd=root,
                              capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=arch, check=True)
        for d in (old, new):
            (d / "child.py").write_text(_CHILD)
        env = {**os.environ, "PYTHONPATH": str(root)}
        print(f"verify, us CPU per reading (median of {rounds} alternating runs); "
              f"{ref} vs this tree")
        print(f"{'batch':>6} {'ref':>8} {'tree':>8} {'tree/ref':>9}   {'ref rows':>9} "
              f"{'tree rows':>10} {'tree/ref':>9}")
        for n in (10, 80, 400):
            got: dict[Path, list[tuple[float, float]]] = {old: [], new: []}
            for _ in range(rounds):
                for d in (old, new):
                    out = subprocess.run([sys.executable, str(d / "child.py"), str(n),
                                          str(max(20, reps * 80 // n))], cwd=d, env=env,
                                         capture_output=True, text=True, check=True).stdout
                    a, b = map(float, out.split())
                    got[d].append((a, b))
            om, orow = (statistics.median(x[i] for x in got[old]) for i in (0, 1))
            nm, nrow = (statistics.median(x[i] for x in got[new]) for i in (0, 1))
            print(f"{n:>6} {om:>8.2f} {nm:>8.2f} {nm / om:>9.3f}   {orow:>9.2f} {nrow:>10.2f} "
                  f"{nrow / orow:>9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--against", metavar="REF",
                    help="compare verify cost with git revision REF, same frames, same run")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    reps = 50 if args.quick else 300
    if args.against:
        against(args.against, 3 if args.quick else args.rounds, reps)
        return
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
