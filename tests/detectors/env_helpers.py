"""Shared helpers for the environmental / integrity detector and engine tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ingest.detectors.base import Alert, SiteInfo
from ingest.detectors.engine import DetectionEngine
from sim.envcommon import Record
from stationseal.records import Sample, SiteEvent

T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
HOUR = 3600.0
DAY = 86400.0


def site(sid: str = "S1", kind: str = "stack_cems", limits: dict[str, float] | None = None,
         **kw: Any) -> dict[str, SiteInfo]:
    return {sid: SiteInfo(sid, kind, 30.0, 120.0, dict(limits or {}), **kw)}  # type: ignore[arg-type]


def series(fn: Callable[[int, float], dict[str, float]], n: int, step: float = HOUR,
           start: float = T0, site_id: str = "S1", instrument: str = "i1",
           flags: Callable[[int, float], dict[str, str]] | None = None) -> Iterator[Sample]:
    """``n`` samples; ``fn(i, t)`` gives the values, origins count up from 1."""
    for i in range(n):
        t = start + i * step
        yield Sample(t, site_id, instrument, fn(i, t), flags(i, t) if flags else {},
                     origin=("gw-1", i + 1))


def noisy(rng: random.Random, base: dict[str, float], cv: float = 0.2, res: float = 0.01
          ) -> Callable[[int, float], dict[str, float]]:
    """Independent noisy channels around ``base`` (never exactly repeating at ``res``)."""
    def fn(i: int, t: float) -> dict[str, float]:
        return {k: round(v * (1 + rng.gauss(0, cv)) / res) * res for k, v in base.items()}
    return fn


def run(sites: dict[str, SiteInfo], records: Iterable[Record], rules: list[str],
        params: dict[str, dict[str, Any]] | None = None) -> list[Alert]:
    """Final merged alerts of an engine fed ``records`` in time order (events first)."""
    eng = DetectionEngine(sites, params, rules)
    recs = sorted(records, key=lambda r: (r.time, 0 if isinstance(r, SiteEvent) else 1))
    for r in recs:
        eng.feed(r)
    eng.finish()
    return [u.alert for u in eng.alerts()]


def only(alerts: list[Alert], rule: str, finding: str | None = None) -> list[Alert]:
    return [a for a in alerts if a.rule == rule
            and (finding is None or a.evidence.get("finding") == finding)]


def overlaps(a: Alert, start: float, end: float) -> bool:
    return a.start < end and a.end > start
