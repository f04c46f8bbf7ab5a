"""SITES.yaml and PARAMS.yaml for the detectors: strict, with errors that name the path.

A limit mistyped as ``so2_mgm: 35`` must not leave a stack unchecked, so unknown keys,
unknown signals and neighbours that do not exist are refused, each error naming the file
and the dotted path (``SITES.yaml: sites.dongsi.location.lat: Input should be a valid
number``). JSON is accepted as well (by extension ``.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest.detectors.base import SiteInfo
from stationseal.signals import is_known


class ConfigError(ValueError):
    """Bad SITES/PARAMS file; the message names file and dotted path."""


class _Location(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class _Site(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["vehicle_inspection", "stack_cems", "air_quality", "water_quality"]
    location: _Location
    limits: dict[str, float] = Field(default_factory=dict)
    neighbours: list[str] = Field(default_factory=list)
    sample_interval_s: dict[str, float] = Field(default_factory=dict)


class _SitesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sites: dict[str, _Site]


def _load_mapping(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
        raise ConfigError(f"{path}: not valid {kind}: {e}") from None


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc)


def parse_sites(data: Any, source: str = "SITES") -> dict[str, SiteInfo]:
    """Validate an already-decoded sites mapping (``{"sites": {...}}``)."""
    try:
        model = _SitesFile.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_loc(first['loc'])}: {first['msg']}{more}") from None
    out: dict[str, SiteInfo] = {}
    for sid, s in model.sites.items():
        for sig in s.limits:
            if not is_known(sig):
                raise ConfigError(
                    f"{source}: sites.{sid}.limits.{sig}: unknown signal (see docs/signals.md)"
                )
        for i, n in enumerate(s.neighbours):
            if n == sid:
                raise ConfigError(f"{source}: sites.{sid}.neighbours.{i}: a site is not its "
                                  "own neighbour")
            if n not in model.sites:
                raise ConfigError(f"{source}: sites.{sid}.neighbours.{i}: unknown site {n!r}")
        for inst, dt in s.sample_interval_s.items():
            if not (dt > 0 and dt < 86400):
                raise ConfigError(f"{source}: sites.{sid}.sample_interval_s.{inst}: expected "
                                  f"seconds between 0 and 86400, got {dt}")
        out[sid] = SiteInfo(sid, s.kind, s.location.lat, s.location.lon, dict(s.limits),
                            list(s.neighbours), dict(s.sample_interval_s))
    return out


def load_sites(path: str | Path) -> dict[str, SiteInfo]:
    return parse_sites(_load_mapping(path), str(path))


def load_params(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{RULE: {parameter: value}}``; rule and parameter names are checked by the engine."""
    data = _load_mapping(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of rule ids to parameters")
    return data
