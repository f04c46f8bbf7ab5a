"""Evidence package for a one-day alert window: build time, against baselines in the run.

A stack CEMS gateway reporting SO2 and NOx every second for 26 hours (frames of 5 s, as
the agent seals them), SO2 frozen for 24 h (an E4 flat-line alert spanning one day),
received through the ingest pipeline with receipts and checkpoints. Figures (medians of
repeats):

* build: `stationseal evidence build` of that alert (frames from the archive, receipts
  and proofs, records, re-running the detectors, plots, HTML + PDF report, manifest);
  also without the PDF and without plots and report, to show where the time goes;
* baselines: `stationseal verify` of the packaged frames alone, and `stationseal detect`
  on the packaged records alone (what any third party runs anyway).

Target: build < 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "evidence"))

from evidence_support import make_central

from stationseal.cli import main as cli

CPU: dict[str, float] = {}


def _time(fn: object, repeats: int, name: str = "") -> float:
    """Median wall time; the median CPU time (both threads) goes to CPU[name]."""
    out, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        rc = fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        assert rc == 0, rc
    CPU[name] = statistics.median(cpu)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    hours = 6 if args.quick else 26
    repeats = 2 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="evidence-bench-") as td:
        root = Path(td)
        t = time.perf_counter()
        c = make_central(root / "central", seconds=hours * 3600,
                         flat=(3600, (hours - 1) * 3600))
        print(f"setup: {len(c.frames_list)} frames, {hours} h of 1 Hz SO2+NOx "
              f"({time.perf_counter() - t:.0f} s)")
        pkg = root / "pkg"

        def build(*extra: str) -> object:
            return lambda: cli(["evidence", "build", c.alert_id, "--out", str(pkg),
                                *c.build_args(), *extra])

        full = _time(build(), repeats, "full")
        no_pdf = _time(build("--no-pdf"), repeats, "no_pdf")
        bare = _time(build("--no-plots", "--no-report"), repeats, "bare")
        _time(build(), 1)
        verify = _time(lambda: cli(["verify", str(pkg / "frames.jsonl"), "--registry",
                                    str(pkg / "registry.json")]), repeats)
        detect = _time(lambda: cli(["detect", "--in", str(pkg / "detect" / "records.jsonl"),
                                    "--sites", str(pkg / "detect" / "SITES.yaml"), "--params",
                                    str(pkg / "detect" / "PARAMS.yaml"), "--out",
                                    str(root / "a.jsonl")]), repeats)
        pverify = _time(lambda: cli(["evidence", "verify", str(pkg)]), repeats)
        n = len((pkg / "frames.jsonl").read_text().splitlines())
    print(f"alert window: {hours - 2} h; package: {n} frames")
    print("  (wall time; CPU time of both threads in brackets; the machine may be shared)")
    print(f"  build (plots + HTML + PDF report): {full:6.2f} s [{CPU['full']:.2f}]   "
          "target < 5 s")
    print(f"  build, HTML report only:           {no_pdf:6.2f} s [{CPU['no_pdf']:.2f}]")
    print(f"  build, no plots or report:         {bare:6.2f} s [{CPU['bare']:.2f}]")
    print(f"  evidence verify of the package:    {pverify:6.2f} s")
    print(f"  baseline stationseal verify (frames only): {verify:6.2f} s")
    print(f"  baseline stationseal detect (records only): {detect:6.2f} s")
    print(f"  build / (verify + detect) = {full / (verify + detect):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
