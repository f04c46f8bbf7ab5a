"""The contract every detector follows.

Detectors are streaming and stateful: the engine feeds verified samples and events in time
order per site, and a detector returns alerts as soon as it is sure. Keeping the contract
this small lets the same detector run inside the ingest service (records from verified
frames) and offline over JSON Lines, which is what makes an alert reproducible by a third
party.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from ingest.detectors.hourly import HourValues
from stationseal.records import Sample, SiteEvent, to_rfc3339

Severity = Literal["high", "medium", "low"]
SiteKind = Literal["vehicle_inspection", "stack_cems", "air_quality", "water_quality"]
#: What an alert says about the site: ``falsification`` (a V/E rule accuses the operator),
#: ``integrity`` (the chain of signed data is broken: I-* rules) or ``fault`` (an instrument
#: is dead, disconnected, saturated or reads the impossible: repair, not enforcement).
Category = Literal["falsification", "integrity", "fault"]
SEVERITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2}


@dataclass(slots=True)
class SiteInfo:
    """One entry of SITES.yaml: what a detector may know about a site beyond its data."""

    id: str
    kind: SiteKind
    lat: float | None = None
    lon: float | None = None
    limits: dict[str, float] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)
    #: Configured sampling interval (s) per instrument id; streams not listed are judged
    #: by the interval their samples show.
    sample_interval_s: dict[str, float] = field(default_factory=dict)


def origin_runs(pairs: Iterable[tuple[str, int] | list[Any]], limit: int = 2000
                ) -> list[dict[str, Any]]:
    """``(gateway, seq)`` pairs as runs of consecutive sequence numbers per gateway.

    Each run ``{"gateway", "first_seq", "last_seq", "count"}`` is exact (``count`` equals
    ``last_seq - first_seq + 1``): every frame in it is cited, none outside it. At most
    ``limit`` runs are kept (the alert then says how many frames it cites in total).
    """
    by: dict[str, set[int]] = {}
    for gw, seq in pairs:
        by.setdefault(str(gw), set()).add(int(seq))
    out: list[dict[str, Any]] = []
    for gw in sorted(by):
        seqs = sorted(by[gw])
        lo = prev = seqs[0]
        for q in seqs[1:]:
            if q != prev + 1:
                out.append({"gateway": gw, "first_seq": lo, "last_seq": prev,
                            "count": prev - lo + 1})
                lo = q
            prev = q
        out.append({"gateway": gw, "first_seq": lo, "last_seq": prev, "count": prev - lo + 1})
    return out[:limit]


def _merge_origin_lists(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Union of two origin lists: exact runs are merged exactly, ranges are kept as given."""
    exact: list[tuple[str, int]] = []
    ranges: list[dict[str, Any]] = []
    for r in (*a, *b):
        lo, hi, n = int(r["first_seq"]), int(r["last_seq"]), int(r.get("count", 0))
        if n == hi - lo + 1 and n <= 100_000:
            exact += [(str(r["gateway"]), q) for q in range(lo, hi + 1)]
        elif r not in ranges:
            ranges.append(dict(r))
    return origin_runs(exact) + ranges if exact else ranges


@dataclass(slots=True)
class Finding:
    """One distinct observation behind an alert, complete enough to be checked by hand.

    An alert may hold several findings (a V2 test with a frozen oil temperature *and* a
    copied rpm): they are kept side by side and an update never discards one. A finding
    re-emitted as it grows (same ``id``) replaces its earlier version, with its interval
    and origins widened to cover both, so nothing that was cited is lost.

    ``values`` are the measured figures, ``thresholds`` what they were compared with,
    ``parameters`` the rule's parameters in force; ``origins`` the signed frames behind
    it (runs of sequence numbers per gateway).
    """

    rule: str
    check: str
    severity: Severity
    start: float
    end: float
    summary_en: str
    summary_zh: str
    values: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    origins: list[dict[str, Any]] = field(default_factory=list)
    category: Category = "falsification"
    site: str = ""
    instrument: str = ""
    test_id: str | None = None
    #: Identity within an alert; defaults to ``check`` (one finding per sub-check).
    id: str = ""
    #: How many emissions of this finding were merged (1: emitted once).
    emissions: int = 1

    def __post_init__(self) -> None:
        if not self.id:
            self.id = self.check

    def merged_with(self, newer: Finding) -> Finding:
        """The newer version of the same finding, covering everything both cited."""
        sev = newer.severity if SEVERITY_RANK[newer.severity] >= SEVERITY_RANK[self.severity] \
            else self.severity
        return replace(newer, severity=sev, start=min(self.start, newer.start),
                       end=max(self.end, newer.end),
                       origins=_merge_origin_lists(self.origins, newer.origins),
                       emissions=self.emissions + newer.emissions)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "rule": self.rule, "check": self.check, "category": self.category,
            "severity": self.severity, "site": self.site, "instrument": self.instrument,
            "start": to_rfc3339(self.start), "end": to_rfc3339(self.end),
            "summary_en": self.summary_en, "summary_zh": self.summary_zh,
            "values": self.values, "thresholds": self.thresholds,
            "parameters": self.parameters, "origins": self.origins,
            "emissions": self.emissions,
        }
        if self.test_id is not None:
            d["test_id"] = self.test_id
        return d


_THRESHOLD_PREFIXES = ("threshold", "min_", "max_", "limit")


def finding_from_evidence(a: Alert, parameters: dict[str, Any] | None = None) -> Finding:
    """A finding for an alert whose rule did not state one: built from its ``evidence``.

    Keys naming a threshold (``threshold*``, ``thresholds``, ``min_*``, ``max_*``,
    ``limit*``) go to ``thresholds``, ``origins`` to origins, the rest to ``values``.
    """
    ev = a.evidence
    values: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    origins: list[dict[str, Any]] = []
    for k, v in ev.items():
        if k == "origins":
            if isinstance(v, list) and v and isinstance(v[0], dict):
                origins = [dict(x) for x in v if "first_seq" in x]
            elif isinstance(v, list):
                origins = origin_runs(tuple(x) for x in v if len(x) == 2)
            elif isinstance(v, dict):  # e.g. {"reported": [...], "measured": [...]}
                for part in v.values():
                    if isinstance(part, list):
                        origins += [dict(x) for x in part if isinstance(x, dict)
                                    and "first_seq" in x]
        elif k == "thresholds" and isinstance(v, dict):
            thresholds.update(v)
        elif k.startswith(_THRESHOLD_PREFIXES):
            thresholds[k] = v
        else:
            values[k] = v
    check = str(ev.get("finding") or ev.get("check") or ev.get("kind") or a.rule)
    return Finding(rule=a.rule, check=check, severity=a.severity, start=a.start, end=a.end,
                   summary_en=a.summary_en, summary_zh=a.summary_zh, values=values,
                   thresholds=thresholds, parameters=dict(parameters or {}), origins=origins,
                   category=a.category, site=a.site, instrument=a.instrument,
                   test_id=a.test_id)


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
    #: The detail of the latest emission (kept for readers of the single-finding form);
    #: :attr:`findings` holds every distinct finding and is what a case is built from.
    evidence: dict[str, Any] = field(default_factory=dict)
    test_id: str | None = None
    key: str = ""
    findings: list[Finding] = field(default_factory=list)
    category: Category = "falsification"

    def __post_init__(self) -> None:
        if not self.key:
            scope = self.test_id or self.instrument
            self.key = f"{self.rule}|{self.site}|{scope}"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "rule": self.rule, "severity": self.severity, "category": self.category,
            "site": self.site, "instrument": self.instrument,
            "start": to_rfc3339(self.start), "end": to_rfc3339(self.end),
            "summary_en": self.summary_en, "summary_zh": self.summary_zh,
            "evidence": self.evidence, "key": self.key,
            "findings": [f.to_json() for f in self.findings],
        }
        if self.test_id is not None:
            d["test_id"] = self.test_id
        return d


class Detector:
    """Base class: override :meth:`on_sample` / :meth:`on_event` / :meth:`finish`.

    ``params`` holds the pattern's thresholds; the class attribute ``DEFAULTS`` gives the
    defaults from the shared falsification-patterns document and every key there may be
    overridden from configuration (unknown keys are an error, so a typo cannot silently
    leave a default in force).
    """

    rule: ClassVar[str] = ""
    #: What this rule's alerts say about the site (see :data:`Category`).
    category: ClassVar[Category] = "falsification"
    #: Site kinds this detector applies to; the engine does not feed it others.
    kinds: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Detectors that reason on hourly means (most environmental rules) set this: the engine
    #: then averages each instrument's samples once, for all such detectors, and calls
    #: :meth:`on_hour` for every closed hour, instead of each detector re-aggregating.
    uses_hours: ClassVar[bool] = False
    #: Detectors that consult instrument health over long windows set this: ``self.health``
    #: is then a :class:`ingest.detectors.health.HealthBook` answering whether an
    #: instrument was faulty in a window. The engine shares one book among them and feeds it
    #: every record; a detector run on its own (``own_health``) must feed its book itself
    #: (:meth:`observe_health`).
    uses_health: ClassVar[bool] = False
    #: Site kinds whose records the health book needs (None: all of ``kinds``).
    health_kinds: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        unknown = set(params or {}) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(
                f"detector {self.rule}: unknown parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.DEFAULTS)}"
            )
        self.sites = sites
        self.p: dict[str, Any] = {**self.DEFAULTS, **(params or {})}
        self.health: Any = None
        self.own_health = True
        if self.uses_health:
            from ingest.detectors.health import HealthBook

            self.health = HealthBook()

    def observe_health(self, r: Sample | SiteEvent) -> None:
        """Feed this detector's own health book (a no-op when the engine feeds a shared one)."""
        if self.own_health and self.health is not None:
            if isinstance(r, Sample):
                self.health.on_sample(r)
            else:
                self.health.on_event(r)

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
