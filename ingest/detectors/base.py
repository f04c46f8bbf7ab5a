"""The contract every detector follows.

Detectors are streaming and stateful: the engine feeds verified samples and events in time
order per site, and a detector returns alerts as soon as it is sure. Keeping the contract
this small lets the same detector run inside the ingest service (records from verified
frames) and offline over JSON Lines, which is what makes an alert reproducible by a third
party.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from ingest.detectors.hourly import HourValues
from stationseal.records import Sample, SiteEvent, to_rfc3339

Severity = Literal["high", "medium", "low"]
SiteKind = Literal["vehicle_inspection", "stack_cems", "air_quality", "water_quality"]


@dataclass(slots=True)
class SiteInfo:
    """One entry of SITES.yaml: what a detector may know about a site beyond its data."""

    id: str
    kind: SiteKind
    lat: float | None = None
    lon: float | None = None
    limits: dict[str, float] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Alert:
    """An alert as enforcement teams receive it (docs/detectors.md, alerts section).

    ``key`` identifies "the same finding": repeated firing with the same key updates one
    alert (end time, evidence, count) instead of producing a storm.
    """

    rule: str
    severity: Severity
    site: str
    instrument: str
    start: float
    end: float
    summary_en: str
    summary_zh: str
    evidence: dict[str, Any] = field(default_factory=dict)
    test_id: str | None = None
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            scope = self.test_id or self.instrument
            self.key = f"{self.rule}|{self.site}|{scope}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = to_rfc3339(self.start)
        d["end"] = to_rfc3339(self.end)
        if d["test_id"] is None:
            del d["test_id"]
        return d


class Detector:
    """Base class: override :meth:`on_sample` / :meth:`on_event` / :meth:`finish`.

    ``params`` holds the pattern's thresholds; the class attribute ``DEFAULTS`` gives the
    defaults from the shared falsification-patterns document and every key there may be
    overridden from configuration (unknown keys are an error, so a typo cannot silently
    leave a default in force).
    """

    rule: ClassVar[str] = ""
    #: Site kinds this detector applies to; the engine does not feed it others.
    kinds: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Detectors that reason on hourly means (most environmental rules) set this: the engine
    #: then averages each instrument's samples once, for all such detectors, and calls
    #: :meth:`on_hour` for every closed hour, instead of each detector re-aggregating.
    uses_hours: ClassVar[bool] = False

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        unknown = set(params or {}) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(
                f"detector {self.rule}: unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.DEFAULTS)}"
            )
        self.sites = sites
        self.p: dict[str, Any] = {**self.DEFAULTS, **(params or {})}

    def on_sample(self, s: Sample) -> list[Alert]:
        return []

    def on_event(self, e: SiteEvent) -> list[Alert]:
        return []

    def on_hour(self, h: HourValues) -> list[Alert]:
        """A closed hour of one instrument (only called when ``uses_hours`` is set)."""
        return []

    def finish(self) -> list[Alert]:
        """End of stream (offline) or shutdown: emit what is pending, e.g. open windows."""
        return []
