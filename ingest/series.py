"""A cap on the new InfluxDB series each gateway creates per day.

Series are what a time-series database pays for: every distinct measurement + tag set is
an index entry, and InfluxDB 1.x refuses all new series once a tag key has 100,000 values
(``max-values-per-tag``) or the database 1,000,000 series, for every writer. Tags come
from signed frames (site, instrument, signal, unit, event kind), so a gateway with a
valid key, or a bug in one, can exhaust those limits for the whole country's stations.

Each line's series key is checked against the series known for its gateway (the
``series`` table of the state database, loaded on first use). A new series is admitted
while the gateway has created fewer than ``series.max_new_per_gateway_day`` today (UTC);
beyond that its lines are held back in the state database's ``write_rejects`` with the
reason, never written and never lost, and one ``series_cap`` integrity alert per gateway
and day says so. Lines of existing series are never affected.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingest.pipeline import Batch, Pipeline
    from ingest.store import Store


def series_key(ln: str) -> str:
    """Measurement and tag set: the line up to its first unescaped space."""
    if "\\" not in ln:
        i = ln.find(" ")
        return ln if i < 0 else ln[:i]
    i = 0
    n = len(ln)
    while i < n:
        c = ln[i]
        if c == "\\":
            i += 2
            continue
        if c == " ":
            return ln[:i]
        i += 1
    return ln


def tag_value(key: str, tag: str) -> str | None:
    """The (still escaped) value of ``tag`` in a series key, None if absent."""
    needle = f",{tag}="
    i = key.find(needle)
    if i < 0:
        return None
    i += len(needle)
    j = i
    n = len(key)
    while j < n:
        c = key[j]
        if c == "\\":
            j += 2
            continue
        if c == ",":
            break
        j += 1
    return key[i:j]


class SeriesGuard:
    """Thread-safe; one per worker, applied to each batch before it is sealed."""

    def __init__(self, store: Store, cap: int) -> None:
        self.store = store
        self.cap = cap
        self._known: dict[str, set[str]] = {}
        self._today: dict[str, tuple[int, int]] = {}  # gateway -> (UTC day, new today)
        self._alerted: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self.held_total = 0

    def _gateway(self, gw: str, day: int) -> set[str]:
        known = self._known.get(gw)
        if known is None:
            known = self.store.known_series(gw)
            self._known[gw] = known
        if self._today.get(gw, (-1, 0))[0] != day:
            self._today[gw] = (day, self.store.series_created_since(gw, day * 86400.0))
        return known

    def filter(self, b: Batch, p: Pipeline | None = None, now: float | None = None) -> None:
        """Move the lines of series over the cap from ``b.lines`` to ``b.held``; record
        admitted new series in ``b.series``; raise the alert through ``p``."""
        now = time.time() if now is None else now
        day = int(now // 86400)
        keep: list[str] = []
        over: dict[str, int] = {}
        with self._lock:
            known_any = self._known
            for ln in b.lines:
                key = series_key(ln)
                gw = tag_value(key, "gateway")
                if gw is None:
                    keep.append(ln)  # ingest's own points (alerts): bounded by design
                    continue
                known = known_any.get(gw)
                if known is not None and key in known and self._today[gw][0] == day:
                    keep.append(ln)
                    continue
                known = self._gateway(gw, day)
                if key in known:
                    keep.append(ln)
                    continue
                d, n = self._today[gw]
                if n < self.cap:
                    known.add(key)
                    self._today[gw] = (d, n + 1)
                    b.series.append((key, gw, now))
                    keep.append(ln)
                    continue
                b.held.append((ln, f"series cap: gateway {gw} already created {self.cap} "
                                   "new series today (series.max_new_per_gateway_day); "
                                   "line held back, not written"))
                over[gw] = over.get(gw, 0) + 1
            self.held_total += sum(over.values())
            alerts = [(gw, k) for gw, k in over.items() if (gw, day) not in self._alerted]
            self._alerted.update((gw, day) for gw, _ in alerts)
            if len(self._alerted) > 100_000:
                self._alerted = {(g, d) for g, d in self._alerted if d == day}
        b.lines = keep
        if p is None:
            return
        p.metrics.inc("series_held_lines_total", sum(over.values()))
        from ingest.service_events import service_event

        for gw, k in alerts:
            service_event(p, "series_cap", {"cap": self.cap, "held": k}, gateway=gw,
                          site=p.sites.get(gw), scope=str(day), when=now)

    def forget(self, b: Batch) -> None:
        """A batch that was not committed: its new series are not known after all."""
        with self._lock:
            for key, gw, _ in b.series:
                self._known.get(gw, set()).discard(key)
