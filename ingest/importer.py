"""``stationseal ingest import``: an air-gapped gateway's export through the live path.

Same verification, chain tracking (state shared with the live service, so frames that
also came over MQTT are recognised as duplicates), quarantine, storage and alerts as
live ingest; only the transport differs. Do not import a gateway's frames while a live
worker is processing frames of the same gateway: both would update its chain state.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ingest.config import IngestConfig
from ingest.engine_hook import make_engine
from ingest.metrics import Metrics
from ingest.pipeline import Pipeline
from ingest.service import Committer
from ingest.store import Store
from stationseal.export import read_frames


@dataclass(slots=True)
class ImportResult:
    lines: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    readings: int = 0
    rejected_lines: int = 0
    alerts: int = 0
    seconds: float = 0.0

    @property
    def quarantined(self) -> int:
        return self.outcomes.get("quarantined", 0) + self.outcomes.get("replay", 0)


class Progress:
    """A plain one-line progress display on stderr (``\\r``-updated on a terminal, a line
    every few seconds otherwise)."""

    def __init__(self, total_bytes: int, out: IO[str] | None = None, enabled: bool = True):
        self.total = max(1, total_bytes)
        self.out = out or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int, res: ImportResult, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.25 if self.tty else 5.0):
            return
        self._last = now
        frac = min(1.0, done / self.total)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        el = now - self.t0
        rate = res.readings / el if el > 0 else 0.0
        eta = (el / frac - el) if frac > 0 else 0.0
        msg = (f"import [{bar}] {frac * 100:5.1f}% {res.lines} frames, {res.readings} "
               f"readings, {res.quarantined} quarantined, {rate:,.0f} readings/s, "
               f"ETA {eta:.0f}s")
        if self.tty:
            self.out.write("\r" + msg)
        else:
            self.out.write(msg + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            self.out.write("\n")
            self.out.flush()


def import_line(pipe: Pipeline, text: str, raw: bytes, lineno: int, now: float) -> str:
    """One line of a frames file through the pipeline; the outcome. A line that holds no
    frame gets the same verdict as in `stationseal verify` (bad_json, bad_base64, ...)."""
    ff = next(read_frames(io.StringIO(text)))
    if ff.error is not None or ff.payload is None:
        pipe._quarantine(ff.topic, raw.rstrip(b"\r\n"), now, ff.reason or "bad_line",
                         f"line {lineno}: {ff.error}", None)
        return "quarantined"
    return pipe.handle(ff.topic, ff.payload, now)


def run_import(cfg: IngestConfig, path: str | Path, *, progress: bool = True,
               progress_out: IO[str] | None = None) -> ImportResult:
    p = Path(path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(cfg.db_path)
    metrics = Metrics()
    engine = make_engine(cfg.detection)
    pipe = Pipeline(cfg, store, metrics, source=f"import:{p.name}", engine=engine)
    stop = threading.Event()
    com = Committer(cfg, store, metrics, stop)
    com.prepare()
    res = ImportResult()
    prog = Progress(os.path.getsize(p), progress_out, progress)
    t0 = time.monotonic()

    def flush() -> None:
        b = com.seal(pipe)
        com.commit(b)
        res.readings += b.readings
        res.alerts += len(b.alert_updates)

    done_bytes = 0
    try:
        with open(p, "rb") as fh:
            for raw in fh:
                done_bytes += len(raw)
                text = raw.decode("utf-8", "replace")
                if not text.strip():
                    continue
                res.lines += 1
                outcome = import_line(pipe, text, raw, res.lines, time.time())
                res.outcomes[outcome] = res.outcomes.get(outcome, 0) + 1
                if len(pipe.batch.lines) >= cfg.influx.batch_lines:
                    flush()
                prog.update(done_bytes, res)
        # An export is complete up to its last frame: report every open gap now.
        pipe.check_gaps(grace_s=0.0, force=True)
        if engine is not None:
            for ea in engine.finish():
                pipe.deliver(pipe.book.upsert(ea.id, ea.doc, ea.start, ea.is_new))
        flush()
        prog.update(done_bytes, res, force=True)
    finally:
        prog.done()
        com.close()
        store.close()
    res.rejected_lines = int(metrics.get("write_rejected_lines_total"))
    res.seconds = time.monotonic() - t0
    return res
