"""Run every benchmark in this folder (`make bench`), or those matching ``--only``.

Each benchmark is a module with a ``main()`` that prints its figures next to a baseline
measured in the same run. They run one after another (never in parallel: they measure
CPU) and their output is also saved under ``bench-output/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob("*.py") if p.stem not in {"__init__", "run_all"}
        and not p.stem.startswith("_")
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", help="run benchmarks whose name contains this text")
    ap.add_argument("--quick", action="store_true", help="pass --quick to each benchmark")
    args = ap.parse_args()
    names = [n for n in discover() if not args.only or args.only in n]
    out_dir = HERE.parent / "bench-output"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        with open(out_dir / f"{name}.txt", "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=HERE.parent)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        print(f"--- {name}: exit {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
