"""Small pieces the environmental and integrity detectors share.

Everything here is pure Python with O(1) or O(window) work per hour, never per sample,
because the same detectors run inside the ingest service on every verified reading.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

from ingest.detectors.base import Severity as Severity  # re-exported for rule modules
from ingest.detectors.hourly import VALID_FLAGS
from stationseal.records import to_rfc3339

SEVERITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
#: Severity by escalation level (1-based level - 1), for detectors that escalate.
LOW_MEDIUM_HIGH: tuple[Severity, Severity, Severity] = ("low", "medium", "high")
MEDIUM_HIGH: tuple[Severity, Severity] = ("medium", "high")

#: The signal that says whether the plant is running, per site kind. "While flow > 0" in
#: the rules means: judged only when this signal is present and above its minimum.
FLOW_SIGNALS: dict[str, str] = {"stack_cems": "flow_m3h", "water_quality": "water_flow_ls"}

ENV_KINDS: tuple[str, ...] = ("stack_cems", "air_quality", "water_quality")
ALL_KINDS: tuple[str, ...] = ("vehicle_inspection", *ENV_KINDS)

#: Chinese names of the HJ 212 data flags, for alert texts.
FLAGS_ZH: dict[str, str] = {"M": "维护", "D": "故障", "C": "校准", "F": "停运", "S": "手工输入",
                            "T": "超量程", "B": "通讯异常", "N": "正常"}


def num(x: float, digits: int = 4) -> float:
    """Round for evidence: enough digits to recompute a threshold, no float noise."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def window(start: float, end: float) -> dict[str, str]:
    return {"start": to_rfc3339(start), "end": to_rfc3339(end)}


def is_parameter(signal: str) -> bool:
    """Calibration/configuration registers (``span_coeff.so2_mgm3``) are not measurements."""
    return "." in signal or signal in ("span_coeff", "zero_offset")


def hours_text(h: float) -> str:
    return f"{h:.0f}" if h >= 10 or h == int(h) else f"{h:.1f}"


def duration_en(h: float) -> str:
    """A duration in hours as an officer reads it: hours, or minutes/seconds when short."""
    if h >= 1:
        return f"{hours_text(h)} h"
    if h * 60 >= 1:
        return f"{h * 60:.0f} min"
    return f"{h * 3600:.0f} s"


def duration_zh(h: float) -> str:
    if h >= 1:
        return f"{hours_text(h)}小时"
    if h * 60 >= 1:
        return f"{h * 60:.0f}分钟"
    return f"{h * 3600:.0f}秒"


class MeanStd:
    """Mean and standard deviation of the last ``size`` values.

    The sums are rebuilt from the stored values once per ``size`` additions so that
    floating-point drift cannot accumulate over years of streaming.
    """

    __slots__ = ("_since", "s", "size", "ss", "values")

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: deque[float] = deque()
        self.s = 0.0
        self.ss = 0.0
        self._since = 0

    def add(self, x: float) -> None:
        self.values.append(x)
        self.s += x
        self.ss += x * x
        if len(self.values) > self.size:
            y = self.values.popleft()
            self.s -= y
            self.ss -= y * y
        self._since += 1
        if self._since >= self.size:
            self._since = 0
            self.s = math.fsum(self.values)
            self.ss = math.fsum(v * v for v in self.values)

    def __len__(self) -> int:
        return len(self.values)

    def mean(self) -> float:
        return self.s / len(self.values) if self.values else 0.0

    def std(self) -> float:
        n = len(self.values)
        if n < 2:
            return 0.0
        m = self.s / n
        return math.sqrt(max(self.ss / n - m * m, 0.0))


class SortedWindow:
    """The last ``size`` values kept sorted, for quantiles and medians of a site's history."""

    __slots__ = ("order", "size", "sorted")

    def __init__(self, size: int) -> None:
        self.size = size
        self.order: deque[float] = deque()
        self.sorted: list[float] = []

    def add(self, x: float) -> None:
        self.order.append(x)
        bisect.insort(self.sorted, x)
        if len(self.order) > self.size:
            y = self.order.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, y)]

    def __len__(self) -> int:
        return len(self.order)

    def quantile(self, q: float) -> float:
        """Linear interpolation between order statistics (the common "type 7" definition)."""
        xs = self.sorted
        if not xs:
            return math.nan
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    mid = n // 2
    return ys[mid] if n % 2 else (ys[mid - 1] + ys[mid]) / 2


def check_param_types(rule: str, defaults: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Problems with ``params`` against the types of ``defaults``, as ``"RULE.key: ..."``.

    A YAML typo such as ``window_h: six`` must be refused at start-up, not turn into a
    TypeError in the middle of a night's data.
    """
    problems: list[str] = []
    for k, v in params.items():
        if k not in defaults:
            problems.append(f"{rule}.{k}: unknown parameter (known: {', '.join(sorted(defaults))})")
            continue
        d = defaults[k]
        if isinstance(d, bool):
            ok = isinstance(v, bool)
            want = "true or false"
        elif isinstance(d, int | float):
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            want = "a number"
        elif isinstance(d, str):
            ok = isinstance(v, str)
            want = "a string"
        elif isinstance(d, list):
            ok = isinstance(v, list)
            want = "a list"
        elif isinstance(d, dict):
            ok = isinstance(v, dict)
            want = "a mapping"
        else:
            ok = True
            want = ""
        if not ok:
            problems.append(f"{rule}.{k}: expected {want}, got {v!r}")
    return problems


class FlowState:
    """Whether each site's plant is running: the latest valid value of its flow signal.

    Flow may come from a different instrument than the pollutant (a separate flowmeter), so
    the state is per site. A site whose kind has no flow signal, or whose flow has not been
    seen yet, counts as running: the rules then judge rather than stay silent.
    """

    __slots__ = ("flow", "flow_min", "sites")

    def __init__(self, sites: dict[str, Any], flow_min: float) -> None:
        self.sites = sites
        self.flow_min = flow_min
        self.flow: dict[str, float] = {}

    def update(self, site: str, values: dict[str, float], flags: dict[str, str] | None = None
               ) -> None:
        sig = FLOW_SIGNALS.get(self.sites[site].kind)
        if sig is not None and sig in values and (not flags or flags.get(sig, "N") in VALID_FLAGS):
            self.flow[site] = values[sig]

    def has_flow(self, site: str) -> bool:
        return self.sites[site].kind in FLOW_SIGNALS

    def operating(self, site: str) -> bool:
        f = self.flow.get(site)
        return f is None or f > self.flow_min


def decimals(v: float) -> int:
    """Decimal places ``v`` was reported with: 2.0 -> 0, 0.5 -> 1, 0.163 -> 3."""
    text = repr(float(v))
    if "e" in text:
        return 6
    return len(text.split(".")[1].rstrip("0"))


class Quantum:
    """A channel's reporting step (10^-d for its most common number of decimals).

    Learnt from the first values, so that the odd imputed or averaged value with many
    decimals does not make an integer channel look continuous.
    """

    __slots__ = ("counts", "step")

    LEARN = 200

    def __init__(self) -> None:
        self.counts = [0] * 7
        self.step = 0.0

    def steps(self, v: float) -> float:
        """``v`` in reporting steps above zero."""
        if self.step == 0.0:
            self.counts[min(decimals(v), 6)] += 1
            best = max(range(7), key=self.counts.__getitem__)
            if sum(self.counts) < self.LEARN:
                return float(abs(v) * 10**best)
            self.step = 10.0 ** -best
        return abs(v) / self.step
