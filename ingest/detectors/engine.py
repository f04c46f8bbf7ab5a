"""Runs the selected detectors over a stream of samples and events, and merges their alerts.

The same object serves the ingest service (one verified record at a time, alerts delivered
as they change) and the offline `stationseal detect` command (a file, alerts written at the
end), so that an alert raised live can be reproduced by anyone holding the signed records.

Using it from a service::

    engine = DetectionEngine(sites, params, rules=None, reorder_s=120)
    for record in verified_records:            # Sample or SiteEvent
        for upd in engine.feed(record):        # list[AlertUpdate]
            store.upsert(upd.id, upd.to_json())  # upd.is_new: first time this id is seen
    for upd in engine.finish():                # at shutdown: pending windows
        store.upsert(upd.id, upd.to_json())

Merging: detectors re-emit an alert while a finding grows (a flat line getting longer, a
week-long share creeping up). Every emission with the same :attr:`Alert.key` whose start
lies within ``merge_gap_s`` of the previous end updates one alert (start = earliest, end =
latest, severity = highest, ``evidence`` = newest) instead of adding one; a later
emission opens a new alert with the next id ``KEY#n``. Delivery upserts by that id.
An update never discards evidence: the alert's :attr:`Alert.findings` keep every
distinct finding (two V2 findings on one test both survive); a finding re-emitted as it
grows replaces its earlier version with interval and origins widened to cover both.
Alerts without explicit findings get one built from their ``evidence``.

Sharing: the vehicle rules judge assembled tests; the engine assembles each test once for
all of them (:class:`ingest.detectors.segments.TestHub`). Rules that set ``uses_health``
share one :class:`ingest.detectors.health.HealthBook`, fed every record of their sites.

Ordering: detectors need each instrument's samples in time order. Backfill after an outage
arrives behind live data, so ``reorder_s`` holds each instrument's samples that long and
releases them sorted; a sample older than what was already released is counted in
:attr:`EngineStats.late_samples` (per instrument in :attr:`DetectionEngine.late`) and not
judged live — re-run `stationseal detect` over that range.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ingest.detectors import registry
from ingest.detectors.base import Alert, Detector, Finding, SiteInfo, finding_from_evidence
from ingest.detectors.common import ALL_KINDS, SEVERITY_RANK
from ingest.detectors.health import HealthBook
from ingest.detectors.hourly import HourBin, hour_start
from ingest.detectors.segments import PerTestDetector, TestHub
from stationseal.records import Sample, SiteEvent, to_rfc3339


class UnknownSiteError(ValueError):
    """A record names a site that is not in the site list: its limits and kind are unknown."""


@dataclass(slots=True)
class AlertUpdate:
    """What delivery needs: upsert ``alert`` under ``id``; ``is_new`` on its first emission."""

    id: str
    alert: Alert
    is_new: bool
    #: Emissions merged into this alert after the first (0 for a new alert).
    update_count: int
    #: Stream time (latest record time) of the first and the latest emission.
    first_seen: float
    last_seen: float

    def to_json(self) -> dict[str, Any]:
        d = self.alert.to_json()
        d["id"] = self.id
        d["update_count"] = self.update_count
        d["first_seen"] = to_rfc3339(self.first_seen)
        d["last_seen"] = to_rfc3339(self.last_seen)
        return d


@dataclass(slots=True)
class _Merged:
    id: str
    alert: Alert
    update_count: int
    first_seen: float
    last_seen: float

    def snapshot(self, is_new: bool) -> AlertUpdate:
        a = replace(self.alert, evidence=dict(self.alert.evidence),
                    findings=list(self.alert.findings))
        return AlertUpdate(self.id, a, is_new, self.update_count, self.first_seen, self.last_seen)


@dataclass(slots=True)
class EngineStats:
    samples: int = 0
    events: int = 0
    hours: int = 0
    late_samples: int = 0
    alerts: int = 0
    updates: int = 0


def _overrides(d: Detector, name: str) -> bool:
    return getattr(type(d), name) is not getattr(Detector, name)


@dataclass(slots=True)
class _Routes:
    """Per site kind: the bound methods to call, so a no-op hook costs nothing per sample."""

    on_sample: list[Any] = field(default_factory=list)
    on_event: list[Any] = field(default_factory=list)
    on_hour: list[Any] = field(default_factory=list)
    #: Feed the shared health book first (some detector of this kind consults it).
    health: bool = False


class DetectionEngine:
    def __init__(
        self,
        sites: dict[str, SiteInfo],
        params: dict[str, dict[str, Any]] | None = None,
        rules: Iterable[str] | None = None,
        *,
        merge_gap_s: float = 6 * 3600.0,
        reorder_s: float = 0.0,
        keep_history: bool = True,
        share_tests: bool = True,
    ) -> None:
        """``params``: ``{rule: {parameter: value}}``; ``rules``: ids to run (None: all).

        Raises ValueError naming the rule/parameter for unknown rules, unknown parameters
        or values of the wrong type. ``keep_history=False`` keeps only the latest alert per
        key (a long-running service need not remember every alert it ever raised).
        ``share_tests=False`` lets every vehicle rule assemble tests on its own (slower;
        kept to measure what sharing saves).
        """
        reg = registry.discover()
        params = params or {}
        problems = reg.check_params(params)
        if problems:
            raise ValueError("; ".join(problems))
        self.rules: tuple[str, ...] = tuple(reg.select(rules))
        self.sites = sites
        self.merge_gap_s = merge_gap_s
        self.reorder_s = reorder_s
        self.keep_history = keep_history
        self.detectors: list[Detector] = [
            reg.rules[r].cls(sites, params.get(r)) for r in self.rules
        ]
        self._params = {d.rule: d.p for d in self.detectors}
        self._category = {d.rule: d.category for d in self.detectors}
        #: Instrument health shared by the detectors that consult it (``uses_health``).
        self.health = HealthBook()
        for d in self.detectors:
            if d.uses_health:
                d.health = self.health
                d.own_health = False
        per_test = [d for d in self.detectors if isinstance(d, PerTestDetector)]
        #: The one test assembly all vehicle rules share (None without vehicle rules).
        self.tests: TestHub | None = TestHub(per_test, sites) if per_test and share_tests \
            else None
        self._routes: dict[str, _Routes] = {}
        for kind in ALL_KINDS:
            rt = _Routes()
            if self.tests is not None and kind in PerTestDetector.kinds:
                rt.on_sample.append(self.tests.on_sample)
                rt.on_event.append(self.tests.on_event)
            for d in self.detectors:
                if kind not in d.kinds:
                    continue
                rt.health = rt.health or (d.uses_health and kind in (d.health_kinds or d.kinds))
                hub = self.tests is not None and isinstance(d, PerTestDetector) \
                    and kind in PerTestDetector.kinds
                if _overrides(d, "on_sample") and not hub:
                    rt.on_sample.append(d.on_sample)
                if _overrides(d, "on_event") and not hub:
                    rt.on_event.append(d.on_event)
                if d.uses_hours:
                    rt.on_hour.append(d.on_hour)
            self._routes[kind] = rt
        self._bins: dict[tuple[str, str], HourBin] = {}
        self._last_time: dict[tuple[str, str], float] = {}
        self._buffers: dict[tuple[str, str], list[tuple[float, int, Sample]]] = {}
        self._newest: dict[tuple[str, str], float] = {}
        self._tiebreak = itertools.count()
        self._active: dict[str, _Merged] = {}
        self._history: list[_Merged] = []
        self._key_counts: dict[str, int] = {}
        self._clock = float("-inf")
        self.stats = EngineStats()
        #: (site, instrument) -> number of samples that arrived after later ones were judged.
        self.late: dict[tuple[str, str], int] = {}

    # -- input ---------------------------------------------------------------------------

    def feed(self, record: Sample | SiteEvent) -> list[AlertUpdate]:
        if isinstance(record, Sample):
            return self.feed_sample(record)
        return self.feed_event(record)

    def _site(self, site: str) -> SiteInfo:
        info = self.sites.get(site)
        if info is None:
            raise UnknownSiteError(f"site {site!r} is not in the site list")
        return info

    def feed_sample(self, s: Sample) -> list[AlertUpdate]:
        info = self._site(s.site)
        self.stats.samples += 1
        if self.reorder_s <= 0:
            return self._merge(self._judge(info, s), s.time)
        # One buffer per (site, gateway): a gateway's frames arrive in sequence order, so
        # its newest sample is a clock for all of its instruments, and their samples are
        # released in time order across instruments, as an offline (sorted) run judges
        # them. Samples without an origin keep a buffer per instrument.
        key = (s.site, "gw:" + s.origin[0]) if s.origin is not None else (s.site, s.instrument)
        buf = self._buffers.setdefault(key, [])
        heapq.heappush(buf, (s.time, next(self._tiebreak), s))
        newest = max(self._newest.get(key, s.time), s.time)
        self._newest[key] = newest
        alerts: list[Alert] = []
        while buf and buf[0][0] <= newest - self.reorder_s:
            alerts += self._judge(info, heapq.heappop(buf)[2])
        return self._merge(alerts, s.time)

    def feed_event(self, e: SiteEvent) -> list[AlertUpdate]:
        info = self._site(e.site)
        self.stats.events += 1
        alerts: list[Alert] = []
        if self.reorder_s > 0:
            # Events are not held: first judge the site's held samples up to the event's
            # time, so that live (reordering) and offline (sorted) runs see samples and
            # events in the same order and raise the same alerts.
            for key, buf in self._buffers.items():
                if key[0] != e.site:
                    continue
                while buf and buf[0][0] <= e.time:
                    alerts += self._judge(info, heapq.heappop(buf)[2])
        rt = self._routes[info.kind]
        if rt.health:
            self.health.on_event(e)
        for f in rt.on_event:
            alerts += f(e)
        return self._merge(alerts, e.time)

    def finish(self) -> list[AlertUpdate]:
        """Judge buffered samples and open hours, then let detectors close their windows."""
        alerts: list[Alert] = []
        for key in sorted(self._buffers):
            buf = self._buffers[key]
            info = self.sites[key[0]]
            while buf:
                alerts += self._judge(info, heapq.heappop(buf)[2])
        for key, b in sorted(self._bins.items(), key=lambda kv: kv[1].start):
            hv = b.close()
            self.stats.hours += 1
            for f in self._routes[self.sites[key[0]].kind].on_hour:
                alerts += f(hv)
        self._bins.clear()
        self.health.finish()
        if self.tests is not None:
            alerts += self.tests.finish()
        for d in self.detectors:
            if self.tests is None or not isinstance(d, PerTestDetector):
                alerts += d.finish()
        return self._merge(alerts, self._clock)

    def _judge(self, info: SiteInfo, s: Sample) -> list[Alert]:
        key = (s.site, s.instrument)
        last = self._last_time.get(key)
        if last is not None and s.time < last:
            self.stats.late_samples += 1
            self.late[key] = self.late.get(key, 0) + 1
            return []
        self._last_time[key] = s.time
        if s.time > self._clock:
            self._clock = s.time
        rt = self._routes[info.kind]
        alerts: list[Alert] = []
        if rt.health:
            self.health.on_sample(s)
        if rt.on_hour:
            hs = hour_start(s.time)
            b = self._bins.get(key)
            if b is None or b.start != hs:
                if b is not None:
                    hv = b.close()
                    self.stats.hours += 1
                    for f in rt.on_hour:
                        alerts += f(hv)
                b = self._bins[key] = HourBin(s.site, s.instrument, hs)
            b.add(s)
        for f in rt.on_sample:
            alerts += f(s)
        return alerts

    # -- merging -------------------------------------------------------------------------

    def _merge(self, alerts: list[Alert], now: float) -> list[AlertUpdate]:
        if not alerts:
            return []
        if now == float("-inf"):
            now = max(a.end for a in alerts)
        out: dict[str, AlertUpdate] = {}
        for a in alerts:
            self._complete(a)
            m = self._active.get(a.key)
            if m is not None and a.start <= m.alert.end + self.merge_gap_s:
                cur = m.alert
                sev = cur.severity if SEVERITY_RANK[cur.severity] > SEVERITY_RANK[a.severity] \
                    else a.severity
                findings = merge_findings(cur.findings, a.findings)
                m.alert = replace(a, start=min(cur.start, a.start), end=max(cur.end, a.end),
                                  severity=sev, findings=findings)
                if len(findings) > 1:
                    m.alert.summary_en, m.alert.summary_zh = summarise(findings)
                m.update_count += 1
                m.last_seen = now
                self.stats.updates += 1
                prev = out.get(m.id)
                out[m.id] = m.snapshot(prev.is_new if prev is not None else False)
                continue
            n = self._key_counts.get(a.key, 0) + 1
            self._key_counts[a.key] = n
            m = _Merged(f"{a.key}#{n}", a, 0, now, now)
            self._active[a.key] = m
            if self.keep_history:
                self._history.append(m)
            self.stats.alerts += 1
            out[m.id] = m.snapshot(True)
        return list(out.values())

    def _complete(self, a: Alert) -> None:
        """Category from the rule, and a finding for an alert whose rule gave none."""
        cat = self._category.get(a.rule)
        if cat is not None and a.category == "falsification":
            a.category = cat
        if not a.findings:
            a.findings = [finding_from_evidence(a, self._params.get(a.rule))]
        for f in a.findings:
            if f.category != a.category and f.category == "falsification":
                f.category = a.category

    def alerts(self) -> list[AlertUpdate]:
        """Every merged alert so far (only the latest per key with ``keep_history=False``),
        ordered by start time, rule and site."""
        ms = self._history if self.keep_history else list(self._active.values())
        snaps = [m.snapshot(m.update_count == 0) for m in ms]
        snaps.sort(key=lambda u: (u.alert.start, u.alert.rule, u.alert.site, u.id))
        return snaps


def merge_findings(old: list[Finding], new: list[Finding]) -> list[Finding]:
    """Every distinct finding of both lists; the same finding (``id``) merged, never lost."""
    out = list(old)
    index = {f.id: i for i, f in enumerate(out)}
    for f in new:
        i = index.get(f.id)
        if i is None:
            index[f.id] = len(out)
            out.append(f)
        else:
            out[i] = out[i].merged_with(f)
    return out


def summarise(findings: list[Finding], show: int = 4) -> tuple[str, str]:
    """One alert text for several findings: strongest first, each with its own numbers."""
    order = sorted(findings, key=lambda f: (-SEVERITY_RANK[f.severity], f.start))
    en = " | ".join(f.summary_en for f in order[:show])
    zh = "｜".join(f.summary_zh for f in order[:show])
    if len(order) > show:
        en += f" | and {len(order) - show} more finding(s)"
        zh += f"｜另有 {len(order) - show} 项发现"
    return en, zh
