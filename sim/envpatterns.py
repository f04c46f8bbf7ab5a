"""Falsification patterns E1–E8 injected into environmental record streams.

:func:`inject` rewrites the records of one site inside ``[start, end)`` the way the trick
of the shared falsification-patterns document would, and adds the events the trick leaves
(a calibration register change for E8). It works on any time-ordered stream of samples
and events — the models in sim/cems.py, sim/water.py, sim/air.py or converted real data —
so detectors are measured on the same manipulation whatever the base data.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from sim.envcommon import Record, quantize
from stationseal.records import Sample, SiteEvent

DAY = 86400.0

#: Pollutants a pattern targets by default, per site kind.
POLLUTANTS: dict[str, tuple[str, ...]] = {
    "stack_cems": ("so2_mgm3", "nox_mgm3", "pm_mgm3"),
    "water_quality": ("cod_mgl", "nh3n_mgl", "tp_mgl", "tn_mgl"),
    "air_quality": ("pm25_ugm3", "pm10_ugm3", "no2_ugm3", "co_mgm3", "o3_ugm3"),
}

#: Channel pairs for E3: the second is replaced by a linear function of the first.
E3_PAIRS: dict[str, tuple[str, str]] = {
    "stack_cems": ("so2_mgm3", "pm_mgm3"),
    "water_quality": ("nh3n_mgl", "tp_mgl"),
    "air_quality": ("pm25_ugm3", "o3_ugm3"),
}

PATTERNS: dict[str, str] = {
    "E1": "sampler blocked/wetted: PM scaled by `factor` (default 0.3-0.6)",
    "E2": "true `signal` raised to `excess` (default 1.2-1.6) x its limit, then the sample "
          "diluted with air to sit just under the limit (pollutants x (1-f), "
          "O2 -> O2 (1-f) + 20.9 f)",
    "E3": "channel `pair[1]` computed in the logger as a x `pair[0]` + b",
    "E4": "`mode` flat: `signal` frozen at its value at `start`; mode repeat: every signal "
          "replays the day before `start`",
    "E5": "`signal` scaled by `excess` (default: so that the previous day's median becomes "
          "1.1-1.4 x limit), values above 0.9 L clamped into [0.9 L, 0.995 L]",
    "E6": "`signal` just over the limit, then flagged M (no maintenance log) while running",
    "E7": "`signals` squashed towards the previous day's mean by `squash` (0.05-0.15)",
    "E8": "calibration_change on span_coeff.`signal` at `start`, readings x `ratio` "
          "(0.5-0.65) until `end`",
}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def inject(
    pattern: str,
    records: Iterable[Record],
    *,
    site: str,
    kind: str,
    start: float,
    end: float,
    rng: random.Random,
    limits: dict[str, float] | None = None,
    **kw: Any,
) -> Iterator[Record]:
    """Yield ``records`` with ``pattern`` applied to ``site`` within ``[start, end)``.

    ``kw`` overrides a pattern's choices (see :data:`PATTERNS`); anything not given is drawn
    from ``rng`` so that a seed reproduces a scenario.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    limits = limits or {}
    pols = [p for p in POLLUTANTS[kind] if not limits or p in limits] or list(POLLUTANTS[kind])
    signal: str = kw.get("signal") or rng.choice(pols)
    prev_day: list[Sample] = []  # the site's samples in the day before start
    state: dict[str, Any] = {}
    for r in records:
        if r.site != site or not isinstance(r, Sample):
            yield r
            continue
        if r.time < start:
            if r.time >= start - DAY:
                prev_day.append(r)
            yield r
            continue
        if r.time >= end:
            yield r
            continue
        if not state:
            state = _prepare(pattern, signal, kind, prev_day, limits, rng, kw)
            if pattern == "E8":
                old = 1.0
                yield SiteEvent(start, site, r.instrument, "calibration_change",
                                {"signal": f"span_coeff.{signal}", "old": old,
                                 "new": round(old * state["ratio"], 4)}, r.origin)
        yield from _apply(pattern, r, signal, kind, limits, rng, state, prev_day, start)


def _prepare(pattern: str, signal: str, kind: str, prev_day: list[Sample],
             limits: dict[str, float], rng: random.Random, kw: dict[str, Any]
             ) -> dict[str, Any]:
    st: dict[str, Any] = {"ready": True}
    prev = [s.values[signal] for s in prev_day if signal in s.values]
    if pattern == "E1":
        st["factor"] = kw.get("factor", rng.uniform(0.3, 0.6))
    elif pattern == "E2":
        lim = limits[signal]
        typical = _mean(prev) or lim / 2
        st["excess"] = kw.get("excess", rng.uniform(1.2, 1.6)) * lim / typical
    elif pattern == "E3":
        a, b = kw.get("pair", E3_PAIRS[kind])
        xa = [s.values[a] for s in prev_day if a in s.values]
        xb = [s.values[b] for s in prev_day if b in s.values]
        ma, mb = _mean(xa) or 1.0, _mean(xb)
        st["pair"] = (a, b)
        st["slope"] = kw.get("slope", mb / ma * rng.uniform(0.8, 1.2))
        st["intercept"] = kw.get("intercept", 0.0)
    elif pattern == "E4":
        st["mode"] = kw.get("mode", "flat")
        st["by_time"] = {s.time: s for s in prev_day}
    elif pattern == "E5":
        lim = limits[signal]
        typical = statistics.median(prev) if prev else lim / 2
        st["excess"] = kw.get("excess", rng.uniform(1.1, 1.4) * lim / max(typical, 1e-9))
    elif pattern == "E6":
        st["excess"] = kw.get("excess", rng.uniform(1.1, 1.5))
    elif pattern == "E7":
        st["squash"] = kw.get("squash", rng.uniform(0.05, 0.15))
        sigs = kw.get("signals") or [p for p in POLLUTANTS[kind]
                                      if any(p in s.values for s in prev_day)]
        st["signals"] = sigs
        st["means"] = {k: _mean([s.values[k] for s in prev_day if k in s.values]) for k in sigs}
    elif pattern == "E8":
        st["ratio"] = kw.get("ratio", rng.uniform(0.5, 0.65))
    return st


def _like(orig: float, x: float) -> float:
    """``x`` at the resolution ``orig`` was reported with (integers stay integers)."""
    text = repr(float(orig))
    decimals = 0 if text.endswith(".0") else min(3, len(text.split(".")[1]))
    return round(x, decimals) if decimals else float(round(x))


def _apply(pattern: str, r: Sample, signal: str, kind: str, limits: dict[str, float],
           rng: random.Random, st: dict[str, Any], prev_day: list[Sample], start: float
           ) -> Iterator[Record]:
    v = dict(r.values)
    flags = dict(r.flags)
    if pattern == "E1":
        for k in ("pm25_ugm3", "pm10_ugm3"):
            if k in v:
                v[k] = quantize(v[k] * st["factor"], 1)
    elif pattern == "E2":
        flow = v.get("flow_m3h", 1.0)
        if signal in v and flow > 0 and not flags:
            true = v[signal] * st["excess"]
            lim = limits[signal]
            f = max(0.0, 1 - rng.uniform(0.85, 0.97) * lim / true) if true > 0 else 0.0
            for k in POLLUTANTS[kind]:
                if k in v:
                    v[k] = quantize((true if k == signal else v[k]) * (1 - f), 0.1)
            if "o2_stack_pct" in v:
                v["o2_stack_pct"] = quantize(v["o2_stack_pct"] * (1 - f) + 20.9 * f, 0.01)
    elif pattern == "E3":
        a, b = st["pair"]
        if a in v and b in v:
            v[b] = quantize(st["slope"] * v[a] + st["intercept"], 0.001)
    elif pattern == "E4":
        if st["mode"] == "flat":
            if signal in v:
                st.setdefault("frozen", v[signal])
                v[signal] = st["frozen"]
        else:
            old = st["by_time"].get(start - DAY + ((r.time - start) % DAY))
            if old is not None:
                v = dict(old.values)
                flags = dict(old.flags)
    elif pattern == "E5":
        if signal in v and not flags:
            lim = limits[signal]
            x = v[signal] * st["excess"]
            v[signal] = _like(v[signal], x) if x < 0.9 * lim \
                else quantize(lim * rng.uniform(0.9, 0.995), 0.01)
    elif pattern == "E6":
        if signal in v:
            lim = limits[signal]
            if "first" not in st:
                st["first"] = r.time
            if r.time - st["first"] < 3600:
                v[signal] = quantize(lim * rng.uniform(0.95, 1.15), 0.1)
            else:
                v[signal] = quantize(v[signal] * st["excess"] * 2, 0.1)
                flags.update({k: "M" for k in POLLUTANTS[kind] if k in v})
    elif pattern == "E7":
        s = st["squash"]
        for k in st["signals"]:
            if k in v:
                m = st["means"][k]
                v[k] = _like(v[k], m + s * (v[k] - m))
    elif pattern == "E8" and signal in v:
        v[signal] = quantize(v[signal] * st["ratio"], 0.01)
    yield replace(r, values=v, flags=flags)
