"""Several ingest workers open a new shared state database at the same moment (a
supervisor starting shard.count workers): every one must come up."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any


def _open(path: Path, barrier: Any) -> None:
    from ingest.store import Store

    barrier.wait(30)
    Store(path).close()


def test_workers_opening_a_new_state_database_together(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    for i in range(5):
        path = tmp_path / f"ingest-{i}.db"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open, args=(path, barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
