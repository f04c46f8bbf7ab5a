"""`python -m tests.chaos` (what `make chaos` runs): every scenario, one table.

    python -m tests.chaos                 # full-length scenarios (the reliability table)
    python -m tests.chaos --short         # the same faults in seconds
    python -m tests.chaos --only partition,agent-kill9 --short
    python -m tests.chaos --list

Writes ``--out`` (default chaos-output/): ``results.json`` (every figure, check and note)
and ``table.md``; exit 0 only if every scenario passed. Every process a scenario starts
is stopped when it ends, on failure, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from tests.chaos.harness import close_all
from tests.chaos.scenarios import SCENARIOS, Ctx, Result, by_name, run

MB = 1024 * 1024


def _mb(n: int) -> str:
    return f"{n / MB:.0f}" if n else "-"


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


def table(results: list[Result]) -> str:
    head = ("| scenario | sealed | stored | covered by signed drops | unexplained losses | "
            "duplicates | peak RSS agent / ingest (MiB) | recovery (s) | verdict |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rec = "-" if r.recovery_s is None else f"{r.recovery_s:.1f}"
        verdict = "PASS" if r.passed else "**FAIL**"
        lines.append(f"| {r.name} | {_n(r.sealed)} | {_n(r.stored)} | {_n(r.covered)} | "
                     f"{_n(r.unexplained)} | {_n(r.duplicates)} | "
                     f"{_mb(r.rss_agent)} / {_mb(r.rss_ingest)} | {rec} | {verdict} |")
    return "\n".join(lines)


def failures(results: list[Result]) -> str:
    out = []
    for r in results:
        if r.passed:
            continue
        why = [w for w, ok in r.checks if not ok]
        if r.error:
            why.insert(0, r.error)
        if not r.checks and not r.error:
            why.append("no check ran")
        out.append(f"- **{r.name}**: " + "; ".join(why))
    return "\n".join(out)


def machine() -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    u = os.uname()
    return (f"{u.sysname} {u.nodename} {u.release} {u.version} {u.machine}; "
            f"{os.cpu_count()} cores; {mem} memory; Python {platform.python_version()}")


def _on_term(signum: int, frame: FrameType | None) -> None:
    close_all()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="short durations (seconds)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--skip", default="", help="comma-separated scenario names to leave out")
    ap.add_argument("--out", type=Path, default=Path("chaos-output"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="OUT",
                    help="print one table from the results.json of several runs (e.g. two "
                         "halves run side by side) in scenario order, and exit")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<30} {s.fault}")
        return 0
    chosen = by_name([n for n in args.only.split(",") if n]) if args.only else list(SCENARIOS)
    skip = set(filter(None, args.skip.split(",")))
    chosen = [s for s in chosen if s.name not in skip]
    # SIGINT explicitly too: a shell starting the run in the background leaves SIGINT
    # ignored, and the processes must be stopped however the run is interrupted.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_term)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(out / "work", full=not args.short)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results: list[Result] = []
    try:
        for sc in chosen:
            results.append(run(sc, ctx))
            _write(out, results, started, ctx)
    finally:
        close_all()
    print()
    print(f"make chaos ({'short' if args.short else 'full'}), {started}; {machine()}")
    print(table(results))
    f = failures(results)
    if f:
        print("\nFailed checks:\n" + f)
    return 0 if all(r.passed for r in results) else 1


def merge(outs: list[Path]) -> int:
    docs = [json.loads((o / "results.json").read_text()) for o in outs]
    by_name = {r["name"]: r for d in docs for r in d["results"]}
    order = [s.name for s in SCENARIOS if s.name in by_name]
    results = [_from_json(by_name[n]) for n in order]
    for d in docs:
        print(f"run started {d['started']} ({'full' if d['full'] else 'short'}); "
              f"{d['machine']}")
    print(table(results))
    f = failures(results)
    if f:
        print("\nFailed checks:\n" + f)
    return 0 if all(r.passed for r in results) else 1


def _from_json(d: dict[str, object]) -> Result:
    r = Result(str(d["name"]), str(d["fault"]))
    r.sealed, r.stored, r.covered = d["sealed"], d["stored"], d["covered"]  # type: ignore[assignment]
    r.unexplained, r.duplicates = d["unexplained"], d["duplicates"]  # type: ignore[assignment]
    r.rss_agent, r.rss_ingest = d["peak_rss_agent"], d["peak_rss_ingest"]  # type: ignore[assignment]
    r.recovery_s = d["recovery_s"]  # type: ignore[assignment]
    r.checks = [(str(w), bool(ok)) for w, ok in d["checks"]]  # type: ignore[attr-defined]
    r.notes = list(d["notes"])  # type: ignore[call-overload]
    r.error = d["error"]  # type: ignore[assignment]
    return r


def _write(out: Path, results: list[Result], started: str, ctx: Ctx) -> None:
    doc = {"started": started, "machine": machine(), "full": ctx.full,
           "results": [r.to_json() for r in results]}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "table.md").write_text(table(results) + "\n\n" + failures(results) + "\n")


if __name__ == "__main__":
    sys.exit(main())
