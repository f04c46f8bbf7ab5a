"""Receipt log + checkpoints: CPU they add to ingest, per reading, measured in one run.

The same pre-sealed frames go through the ingest pipeline (verify, chain, convert to line
protocol, commit the batch's state to SQLite) twice per repeat, alternating:

* baseline: the batch committed without receipts, no checkpoint;
* custody: receipts committed in the same transaction, and a checkpoint signed every
  48,000 readings (one minute, the default interval, at the reference 800 readings/s);
* custody, worst case: a checkpoint after every batch (5,000 lines).

The InfluxDB write is left out of both, so the ratio is an upper bound of what custody
adds to the whole ingest. CPU is process time (user + system) of this process; medians
over repeats. Target: custody / baseline < 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.ingest_bench import GATEWAYS, make_frames
from ingest.config import parse_config
from ingest.custody.log import ReceiptLog
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.store import Store
from stationseal.frame import Frame
from stationseal.keys import KeyRegistry, generate_keypair
from stationseal.signing import load_signer


def run_once(tmp: Path, name: str, frames: dict[str, list[Frame]], custody: bool,
             key: Path, cp_every: int = 48_000) -> float:
    """CPU seconds per reading for one pass over all frames."""
    cfg = parse_config({"registry": str(tmp / "registry.json"),
                        "registry_authority": str(tmp / "registry.json.authority.pub.pem"),
                        "state_dir": str(tmp / f"state-{name}")})
    store = Store(cfg.db_path)
    pipe = Pipeline(cfg, store, Metrics())
    rl = ReceiptLog(store._db, load_signer(key), interval_s=0.001)
    order = [(gw, f) for i in range(len(next(iter(frames.values()))))
             for gw in GATEWAYS for f in [frames[gw][i]]]
    readings = 0
    next_cp = cp_every
    t0 = time.process_time()
    for gw, f in order:
        pipe.handle(f"stationseal/v1/{gw}/frames", f.payload, time.time())
        if len(pipe.batch.lines) >= cfg.influx.batch_lines:
            b = pipe.seal()
            readings += b.readings
            store.commit_batch(b.chain, b.outbox, [], b.alert_rows,
                               b.receipts if custody else None)
            if custody and readings >= next_cp:
                rl.maybe_checkpoint(force=True)
                next_cp = readings + cp_every
    b = pipe.seal()
    readings += b.readings
    store.commit_batch(b.chain, b.outbox, [], b.alert_rows, b.receipts if custody else None)
    if custody:
        rl.maybe_checkpoint(force=True)
    dt = time.process_time() - t0
    store.close()
    return dt / readings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    print("receipt log + checkpoints vs plain ingest pipeline (CPU per reading, median of "
          f"{repeats} alternating repeats)")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="custody-bench-") as td:
        tmp = Path(td)
        key = generate_keypair("central", tmp / "central").private_key
        for n_readings, n_frames in ((500, 60 if args.quick else 150),
                                     (20, 300 if args.quick else 1000)):
            reg = KeyRegistry()
            frames = make_frames(tmp, reg, n_frames, n_readings, time.time() - 86400)
            reg.save(tmp / "registry.json")
            base: list[float] = []
            cust: list[float] = []
            every: list[float] = []
            for r in range(repeats):
                base.append(run_once(tmp, f"b{n_readings}-{r}", frames, False, key))
                cust.append(run_once(tmp, f"c{n_readings}-{r}", frames, True, key))
                every.append(run_once(tmp, f"e{n_readings}-{r}", frames, True, key, 1))
            mb, mc, me = (statistics.median(x) for x in (base, cust, every))
            worst = max(worst, mc / mb)
            print(f"  {n_readings:>4} readings/frame: baseline {mb * 1e6:6.2f} µs/reading; "
                  f"with custody {mc * 1e6:6.2f} µs (ratio {mc / mb:.3f}); checkpoint "
                  f"every batch {me * 1e6:6.2f} µs (ratio {me / mb:.3f})")
    print(f"target: custody / baseline < 1.10; worst ratio at the default interval "
          f"{worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
