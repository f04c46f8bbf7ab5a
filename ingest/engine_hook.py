"""Connects the pipeline to the detection engine (ingest/detectors/engine.py).

The engine merges repeated firings itself and names each merged alert with an id
(``KEY#n``); delivery upserts by that id. A record for a site missing from SITES.yaml is
counted and skipped by the engine only: its readings are stored all the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ingest.config import ConfigError, DetectionConfig
from stationseal.records import Sample, SiteEvent

log = logging.getLogger("stationseal.ingest.detection")

#: Rules whose findings the ingest raises itself, as integrity findings made whether or
#: not detection runs (ingest/pipeline.py): running them in the engine too would alert
#: twice. I-DROP: every signed ``data_dropped`` event is the ingest's ``data_dropped``
#: finding. The rules still run in offline detection over records files.
RAISED_BY_INGEST: tuple[str, ...] = ("I-DROP",)


@dataclass(slots=True)
class EngineAlert:
    """One alert update from the engine, in delivery form."""

    id: str
    doc: dict[str, Any]
    start: float
    is_new: bool


class EngineHook:
    def __init__(self, engine: Any):
        self.engine = engine
        self.unknown_sites: dict[str, int] = {}

    def __call__(self, records: list[Sample | SiteEvent]) -> list[EngineAlert]:
        from ingest.detectors.engine import UnknownSiteError

        out: list[EngineAlert] = []
        for r in records:
            try:
                ups = self.engine.feed(r)
            except UnknownSiteError:
                n = self.unknown_sites.get(r.site, 0)
                if n == 0:
                    log.warning("site %r is not in SITES.yaml: its data is stored but not "
                                "run through the detectors", r.site)
                self.unknown_sites[r.site] = n + 1
                continue
            out += [self._conv(u) for u in ups]
        return out

    def finish(self) -> list[EngineAlert]:
        return [self._conv(u) for u in self.engine.finish()]

    @staticmethod
    def _conv(u: Any) -> EngineAlert:
        return EngineAlert(u.id, u.to_json(), float(u.alert.start), bool(u.is_new))


def make_engine(cfg: DetectionConfig) -> EngineHook | None:
    if not cfg.enabled:
        return None
    try:
        from ingest.detectors.engine import DetectionEngine
        from ingest.detectors.sites import ConfigError as SitesError
        from ingest.detectors.sites import load_params, load_sites
    except ImportError as e:
        raise ConfigError(f"detection.enabled: the detection engine cannot be loaded: {e}"
                          ) from None
    assert cfg.sites is not None
    try:
        from ingest.detectors.registry import discover

        wanted = discover().select(cfg.rules)
        skipped = [r for r in wanted if r in RAISED_BY_INGEST]
        if skipped and cfg.rules is not None:
            log.warning("detection.rules: %s not run by the detection engine: the ingest "
                        "raises these findings itself", ", ".join(skipped))
        rules = [r for r in wanted if r not in RAISED_BY_INGEST]
        sites = load_sites(cfg.sites)
        params = load_params(cfg.params) if cfg.params is not None else None
        engine = DetectionEngine(sites, params, rules, reorder_s=cfg.reorder_s,
                                 merge_gap_s=cfg.merge_gap_s, keep_history=False)
    except (SitesError, ValueError, OSError) as e:
        raise ConfigError(f"detection: {e}") from None
    return EngineHook(engine)
