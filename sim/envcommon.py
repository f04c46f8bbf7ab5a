"""Pieces the environmental models (sim/cems.py, sim/water.py, sim/air.py) share.

Pure Python on purpose: the models run in tests, the demo and the detection benchmarks on
a gateway-class machine without numpy.
"""

from __future__ import annotations

import math
import random

from stationseal.records import Sample, SiteEvent

Record = Sample | SiteEvent


class AR1:
    """Stationary AR(1) (Ornstein-Uhlenbeck sampled at ``step_s``): persistent noise.

    Real concentrations wander on time scales of minutes to days; white noise would make
    flat-line and correlation rules look far better than they are on real data.
    """

    __slots__ = ("a", "b", "x")

    def __init__(self, sigma: float, tau_s: float, step_s: float, rng: random.Random):
        self.a = math.exp(-step_s / tau_s)
        self.b = sigma * math.sqrt(1 - self.a * self.a)
        self.x = rng.gauss(0.0, sigma)

    def step(self, rng: random.Random) -> float:
        self.x = self.a * self.x + self.b * rng.gauss(0.0, 1.0)
        return self.x


def quantize(x: float, res: float) -> float:
    """Round to the instrument's resolution, as its register or protocol field would."""
    return round(round(x / res) * res, 6)


class SeqCounter:
    """Gateway sequence numbers for ``Sample.origin``, so alerts cite frames as in service."""

    __slots__ = ("gateway", "seq")

    def __init__(self, gateway: str, start: int = 1):
        self.gateway = gateway
        self.seq = start

    def next(self) -> tuple[str, int]:
        o = (self.gateway, self.seq)
        self.seq += 1
        return o


def span_change(t: float, site: str, instrument: str, span: dict[str, float],
                rng: random.Random, seq: SeqCounter) -> SiteEvent:
    """A routine calibration: one analyzer's span coefficient moves by up to 3 %.

    Changes ``span`` in place and returns the sealed ``calibration_change`` event the
    data logger records, so detectors see the step together with its explanation.
    """
    sig = rng.choice(list(span))
    old = span[sig]
    span[sig] = round(old * rng.uniform(0.97, 1.03), 4)
    return SiteEvent(t, site, instrument, "calibration_change",
                     {"signal": f"span_coeff.{sig}", "old": old, "new": span[sig]}, seq.next())
