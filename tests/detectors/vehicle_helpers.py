"""Shared helpers for the vehicle detector tests: simulate, then feed detectors in time order."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from ingest.detectors.base import Alert, Detector, SiteInfo
from sim.vehicle import VehicleTestSpec, random_vehicle, run_test, spec_for
from stationseal import vehicle_results as vres
from stationseal.records import Sample, SiteEvent

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a whole second


def sites(*ids: str) -> dict[str, SiteInfo]:
    return {i: SiteInfo(id=i, kind="vehicle_inspection") for i in (ids or ("S1",))}


def feed(det: Detector, samples: Iterable[Sample], events: Iterable[SiteEvent]) -> list[Alert]:
    """Records in time order (events first on ties), then finish: what the engine does."""
    recs: list[tuple[float, int, Any]] = [(e.time, 0, e) for e in events]
    recs += [(s.time, 1, s) for s in samples]
    recs.sort(key=lambda r: (r[0], r[1]))
    out: list[Alert] = []
    for _, kind, r in recs:
        out += det.on_event(r) if kind == 0 else det.on_sample(r)
    return out + det.finish()


def spec(method: str, seed: int = 1, test_id: str = "T1", **kw: Any) -> VehicleTestSpec:
    rng = random.Random(seed)
    fuel = "diesel" if method in vres.DIESEL_METHODS else "gasoline"
    v = random_vehicle(rng, fuel)
    kw.setdefault("emission_factor", 1.0)
    kw.setdefault("run_seed", seed)
    kw.setdefault("site", "S1")
    ef = kw.pop("emission_factor")
    s = spec_for(v, method, test_id, **kw)
    s.emission_factor = ef
    return s


def one_test(method: str, seed: int = 1, inject: str | None = None,
             params: dict[str, Any] | None = None, **kw: Any
             ) -> tuple[list[Sample], list[SiteEvent]]:
    out = run_test(spec(method, seed, **kw), T0, random.Random(seed + 1000), inject, params)
    return out.samples, out.events


def strip_context(samples: Sequence[Sample]) -> list[Sample]:
    """The same samples as a lane without test context would deliver them."""
    return [Sample(s.time, s.site, s.instrument, s.values, s.flags, None, s.origin)
            for s in samples]


def lane_run(methods: Sequence[str], seed: int = 1, inject: str | None = None,
             params: dict[str, Any] | None = None, gap_s: float = 120.0,
             inject_from: int = 0, site: str = "S1", lane: str = "L1",
             ) -> tuple[list[Sample], list[SiteEvent], list[str]]:
    """Consecutive tests of different vehicles on one lane; returns samples, events, ids."""
    rng = random.Random(seed)
    t = T0
    samples: list[Sample] = []
    events: list[SiteEvent] = []
    ids: list[str] = []
    for i, m in enumerate(methods):
        fuel = "diesel" if m in vres.DIESEL_METHODS else "gasoline"
        v = random_vehicle(rng, fuel)
        v.emission_factor = min(v.emission_factor, 1.0)
        sp = spec_for(v, m, f"{site}-{lane}-{i:03d}", site=site, lane=lane,
                      run_seed=rng.getrandbits(31), oil_temp_c=rng.uniform(70, 100),
                      ambient_temp_c=12.0 + 0.05 * i, ambient_rh_pct=45.0 + 0.1 * i)
        out = run_test(sp, t, rng, inject if i >= inject_from else None, params)
        samples += out.samples
        events += out.events
        ids.append(sp.test_id)
        t = float(int(out.end + gap_s))
    return samples, events, ids
