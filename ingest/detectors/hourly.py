"""Hourly means and sample provenance, shared by the environmental detectors.

Environmental rules are stated on hourly values (HJ 212 hourly data, "> 50 % of hourly
values", "over 24 h"), whatever rate the instrument reports at. The engine averages each
instrument's samples into UTC hours once and hands every closed hour to the detectors that
ask for it, so five detectors do not each keep five copies of the same running sums.

:class:`Origins` keeps, per gateway, the first and last sequence number and the count of the
samples behind a finding: an alert over a week of minute data must still let enforcement
pull exactly the signed frames involved, without listing ten thousand numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stationseal.records import Sample

HOUR = 3600.0
DAY = 86400.0

#: Flags whose values are measurements (HJ 212 ``N`` normal, ``T`` over range: the value is
#: real, only clipped). Values under any other flag (maintenance, calibration, fault...)
#: are left out of hourly means but counted, so a detector can see that they were there.
VALID_FLAGS = frozenset({"N", "T"})


def hour_start(t: float) -> float:
    return t - t % HOUR


class Origins:
    """Per gateway: ``[first_seq, last_seq, count]`` of the samples behind a finding."""

    __slots__ = ("by_gateway",)

    def __init__(self) -> None:
        self.by_gateway: dict[str, list[int]] = {}

    def add(self, origin: tuple[str, int] | None) -> None:
        if origin is None:
            return
        gw, seq = origin
        r = self.by_gateway.get(gw)
        if r is None:
            self.by_gateway[gw] = [seq, seq, 1]
        else:
            if seq < r[0]:
                r[0] = seq
            if seq > r[1]:
                r[1] = seq
            r[2] += 1

    def merge(self, other: Origins | None) -> None:
        if other is None:
            return
        for gw, (lo, hi, n) in other.by_gateway.items():
            r = self.by_gateway.get(gw)
            if r is None:
                self.by_gateway[gw] = [lo, hi, n]
            else:
                r[0] = min(r[0], lo)
                r[1] = max(r[1], hi)
                r[2] += n

    def __bool__(self) -> bool:
        return bool(self.by_gateway)

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"gateway": gw, "first_seq": lo, "last_seq": hi, "count": n}
            for gw, (lo, hi, n) in sorted(self.by_gateway.items())
        ]


def origins_of(*origins: tuple[str, int] | None) -> list[dict[str, Any]]:
    """Evidence ``origins`` for a few records (e.g. the event an alert comes from)."""
    o = Origins()
    for x in origins:
        o.add(x)
    return o.to_json()


@dataclass(slots=True)
class HourValues:
    """One closed UTC hour of one instrument."""

    site: str
    instrument: str
    #: Start of the hour (epoch seconds, a multiple of 3600).
    start: float
    #: Mean of the valid (``N``/``T``) values per signal; signals without any are absent.
    values: dict[str, float]
    #: Number of valid values behind each mean.
    counts: dict[str, int]
    #: Per signal, the number of values carrying another flag (maintenance, fault, ...).
    flagged: dict[str, int]
    #: Samples received in the hour.
    samples: int
    #: Time of the last sample in the hour.
    last_time: float
    origins: Origins = field(default_factory=Origins)


class HourBin:
    """Running sums for the open hour of one instrument."""

    __slots__ = ("counts", "flagged", "instrument", "last_time", "n", "origins", "site",
                 "start", "sums")

    def __init__(self, site: str, instrument: str, start: float) -> None:
        self.site = site
        self.instrument = instrument
        self.start = start
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.flagged: dict[str, int] = {}
        self.n = 0
        self.last_time = start
        self.origins = Origins()

    def add(self, s: Sample) -> None:
        self.n += 1
        self.last_time = s.time
        flags = s.flags
        sums, counts = self.sums, self.counts
        for sig, v in s.values.items():
            if flags and flags.get(sig, "N") not in VALID_FLAGS:
                self.flagged[sig] = self.flagged.get(sig, 0) + 1
                continue
            if sig in sums:
                sums[sig] += v
                counts[sig] += 1
            else:
                sums[sig] = v
                counts[sig] = 1
        if s.origin is not None:
            self.origins.add(s.origin)

    def close(self) -> HourValues:
        return HourValues(
            site=self.site,
            instrument=self.instrument,
            start=self.start,
            values={k: v / self.counts[k] for k, v in self.sums.items()},
            counts=dict(self.counts),
            flagged=dict(self.flagged),
            samples=self.n,
            last_time=self.last_time,
            origins=self.origins,
        )
