"""Coverage-guided fuzzing with atheris (libFuzzer for Python) of the targets in
tests/fuzz/targets.py, seeded from tests/fuzz/corpus/TARGET/.

    python -m tests.fuzz.atheris_run TARGET [--runs N] [--seconds S] [--keep-new]

Runs in a child process per target (libFuzzer exits the process on a finding); a contract
violation is written to tests/fuzz/corpus/TARGET/crash-<sha256[:16]> so it becomes a
regression input of tests/fuzz/test_fuzz_corpus.py, and the exit status is 1. Memory per
input is bounded by libFuzzer's ``-rss_limit_mb`` and ``-malloc_limit_mb``, time by
``-timeout`` plus the target's own hang detector. ``--keep-new`` also keeps the inputs
that reached new coverage (otherwise they go to a scratch directory).

atheris installs from a manylinux wheel on x86-64 (CPython 3.11); where it does not
(e.g. aarch64), the Hypothesis tests still fuzz every target and this runner says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"


def _child(target: str, crash_dir: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        import stationseal.frame
        import stationseal.hj212
        import stationseal.verify  # noqa: F401
        from tests.fuzz import targets  # noqa: F401  (instrument the code under test)
    from tests.fuzz.targets import ContractViolation, check

    def one(data: bytes) -> None:
        try:
            check(target, data, time_limit_s=0)  # libFuzzer's -timeout owns SIGALRM here
        except ContractViolation:
            name = f"crash-{hashlib.sha256(data).hexdigest()[:16]}"
            (crash_dir / name).write_bytes(data)
            raise

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def run(target: str, runs: int | None, seconds: int | None, keep_new: bool) -> dict[str, object]:
    seeds = CORPUS / target
    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    work = seeds if keep_new else scratch
    if not keep_new:
        for p in seeds.iterdir():
            (scratch / p.name).write_bytes(p.read_bytes())
    args = [str(work), "-rss_limit_mb=2048", "-malloc_limit_mb=1024", "-timeout=10",
            "-max_len=65536", "-print_final_stats=1"]
    if runs is not None:
        args.append(f"-runs={runs}")
    if seconds is not None:
        args.append(f"-max_total_time={seconds}")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "tests.fuzz.atheris_run", "--child", target,
                        "--crash-dir", str(seeds), "--", *args],
                       capture_output=True, text=True, check=False,
                       cwd=HERE.parent.parent, env={**os.environ, "PYTHONHASHSEED": "0"})
    stats = {}
    for line in (p.stderr or "").splitlines():
        if line.startswith("stat::"):
            k, _, v = line[6:].partition(":")
            stats[k.strip()] = v.strip()
    crashes = sorted(x.name for x in seeds.iterdir() if x.name.startswith("crash-"))
    corpus_size = len(list(work.iterdir()))
    return {"target": target, "exit": p.returncode, "seconds": round(time.monotonic() - t0, 1),
            "executions": int(stats.get("number_of_executed_units", 0) or 0),
            "corpus_size": corpus_size, "crash_files": crashes,
            "tail": "\n".join((p.stderr or "").splitlines()[-25:]) if p.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        target, crash_dir = argv[1], Path(argv[3])
        _child(target, crash_dir, argv[argv.index("--") + 1:])
        return 0
    from tests.fuzz.targets import TARGETS

    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.atheris_run",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    ap.add_argument("--keep-new", action="store_true")
    args = ap.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed here (no wheel for this platform?); the Hypothesis "
              "tests in tests/fuzz/ cover the same targets", file=sys.stderr)
        return 2
    bad = 0
    for t in args.targets:
        res = run(t, args.runs, args.seconds, args.keep_new)
        print(json.dumps({k: v for k, v in res.items() if k != "tail"}), flush=True)
        if res["exit"] != 0:
            bad += 1
            print(res["tail"], file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
