"""A small typed builder for Grafana dashboard JSON.

Why our own instead of grafanalib or grafana-foundation-sdk: grafanalib has not been
released since January 2024 and lags the panel schema (no state-timeline options, old
annotation shape); the foundation SDK is generated per Grafana version, pins a calendar
version scheme and weighs far more than the ~10 object kinds these dashboards use. A
dashboard here is plain data, rendered once per flavor (InfluxQL or Flux), so the same
definition yields both query languages and tests can walk every query.

Layout is a flow: panels fill a 24-column grid left to right and wrap; a :class:`Row`
starts a new band. Panel ids and query refIds are assigned while rendering, so they are
unique by construction and stable across builds (diff-friendly JSON in git).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Flavor = Literal["influxql", "flux"]
FLAVORS: tuple[Flavor, ...] = ("influxql", "flux")

#: Dashboard JSON schema version written (Grafana 10.4 / 11.x read it without migration).
SCHEMA_VERSION = 39
GRID_WIDTH = 24

#: Data source roles a panel can use; the concrete uid comes from :class:`BuildContext`.
DsRole = Literal["influx", "prometheus"]


@dataclass(frozen=True, slots=True)
class BuildContext:
    flavor: Flavor = "influxql"
    influx_uid: str = "stationseal-influxql"
    prometheus_uid: str = "stationseal-prometheus"

    def ds(self, role: DsRole) -> dict[str, str]:
        if role == "prometheus":
            return {"type": "prometheus", "uid": self.prometheus_uid}
        return {"type": "influxdb", "uid": self.influx_uid}


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True, slots=True)
class Q:
    """One InfluxDB query written in both languages; the flavor picks one at render time."""

    influxql: str
    flux: str
    alias: str = ""
    table: bool = False
    hide: bool = False

    role: ClassVar[DsRole] = "influx"

    def text(self, flavor: Flavor) -> str:
        return self.influxql if flavor == "influxql" else self.flux

    def to_json(self, ctx: BuildContext, ref: str) -> dict[str, Any]:
        t: dict[str, Any] = {"refId": ref, "datasource": ctx.ds("influx")}
        if ctx.flavor == "influxql":
            t.update(query=self.influxql, rawQuery=True,
                     resultFormat="table" if self.table else "time_series")
            if self.alias:
                t["alias"] = self.alias
        else:
            t["query"] = self.flux
        if self.hide:
            t["hide"] = True
        return t


@dataclass(frozen=True, slots=True)
class PromQ:
    expr: str
    legend: str = ""
    instant: bool = False
    hide: bool = False

    role: ClassVar[DsRole] = "prometheus"

    def text(self, flavor: Flavor) -> str:
        return self.expr

    def to_json(self, ctx: BuildContext, ref: str) -> dict[str, Any]:
        t: dict[str, Any] = {
            "refId": ref, "datasource": ctx.ds("prometheus"), "expr": self.expr,
            "legendFormat": self.legend or "__auto", "range": not self.instant,
            "instant": self.instant, "editorMode": "code",
        }
        if self.hide:
            t["hide"] = True
        return t


Target = Q | PromQ


# --------------------------------------------------------------------------- panels


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float | None
    color: str


def thresholds(*steps: tuple[float | None, str]) -> tuple[Threshold, ...]:
    return tuple(Threshold(v, c) for v, c in steps)


def value_map(mapping: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """``{"N": ("normal / 正常", "green")}`` -> a Grafana value mapping."""
    return {"type": "value", "options": {
        k: {"text": text, "color": color, "index": i}
        for i, (k, (text, color)) in enumerate(mapping.items())
    }}


def range_map(lo: float | None, hi: float | None, text: str, color: str) -> dict[str, Any]:
    return {"type": "range", "options": {"from": lo, "to": hi,
                                         "result": {"text": text, "color": color}}}


def override(matcher: str, value: str, **props: Any) -> dict[str, Any]:
    """Field override: ``override("byName", "limit", color=..., custom__lineStyle=...)``;
    a double underscore becomes a dot (``custom.lineStyle``)."""
    return {"matcher": {"id": matcher, "options": value},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


PanelKind = Literal["timeseries", "stat", "table", "state-timeline"]


@dataclass(slots=True)
class Panel:
    title: str
    kind: PanelKind
    targets: Sequence[Target] = ()
    w: int = 12
    h: int = 8
    description: str = ""
    unit: str = ""
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    thresholds: Sequence[Threshold] = ()
    mappings: Sequence[dict[str, Any]] = ()
    overrides: Sequence[dict[str, Any]] = ()
    custom: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    transformations: Sequence[dict[str, Any]] = ()
    links: Sequence[dict[str, Any]] = ()
    #: Minimum group-by interval (``$__interval`` never goes below it).
    interval: str = ""
    repeat: str = ""
    max_per_row: int = 2

    @property
    def role(self) -> DsRole:
        roles = {t.role for t in self.targets}
        return "prometheus" if roles == {"prometheus"} else "influx"

    def to_json(self, ctx: BuildContext, pid: int, pos: dict[str, int]) -> dict[str, Any]:
        p: dict[str, Any] = {"id": pid, "type": self.kind, "title": self.title,
                             "gridPos": pos}
        if self.description:
            p["description"] = self.description
        roles = {t.role for t in self.targets}
        p["datasource"] = ({"type": "datasource", "uid": "-- Mixed --"} if len(roles) > 1
                           else ctx.ds(self.role))
        p["targets"] = [t.to_json(ctx, _ref(i)) for i, t in enumerate(self.targets)]
        defaults: dict[str, Any] = {"custom": dict(_CUSTOM_DEFAULTS.get(self.kind, {})),
                                    "mappings": list(self.mappings)}
        defaults["custom"].update(self.custom)
        if not defaults["custom"]:
            del defaults["custom"]
        for key, val in (("unit", self.unit), ("decimals", self.decimals),
                         ("min", self.min), ("max", self.max)):
            if val not in ("", None):
                defaults[key] = val
        steps = self.thresholds or (Threshold(None, "green"),)
        defaults["thresholds"] = {"mode": "absolute", "steps": [
            {"value": s.value, "color": s.color} for s in steps]}
        if self.kind in ("stat", "state-timeline") or self.thresholds:
            defaults.setdefault("color", {"mode": "thresholds"})
        else:
            defaults.setdefault("color", {"mode": "palette-classic"})
        p["fieldConfig"] = {"defaults": defaults, "overrides": list(self.overrides)}
        p["options"] = {**_OPTION_DEFAULTS.get(self.kind, {}), **self.options}
        if self.transformations:
            p["transformations"] = list(self.transformations)
        if self.links:
            p["links"] = list(self.links)
        if self.interval:
            p["interval"] = self.interval
        if self.repeat:
            p["repeat"] = self.repeat
            p["repeatDirection"] = "h"
            p["maxPerRow"] = self.max_per_row
        return p


def _ref(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"Q{i}"


_CUSTOM_DEFAULTS: dict[str, dict[str, Any]] = {
    "timeseries": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0,
                   "showPoints": "never", "spanNulls": False},
    "state-timeline": {"lineWidth": 0, "fillOpacity": 80},
    "table": {"align": "auto", "cellOptions": {"type": "auto"}},
}

_OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "timeseries": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}},
    "stat": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
             "colorMode": "value", "graphMode": "none", "textMode": "auto",
             "justifyMode": "auto", "orientation": "auto"},
    "state-timeline": {"showValue": "never", "mergeValues": True, "rowHeight": 0.9,
                       "alignValue": "left",
                       "legend": {"displayMode": "list", "placement": "bottom",
                                  "showLegend": True},
                       "tooltip": {"mode": "single", "sort": "none"}},
    "table": {"showHeader": True, "cellHeight": "sm",
              "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
}


@dataclass(slots=True)
class Row:
    title: str


# --------------------------------------------------------------------------- variables


@dataclass(frozen=True, slots=True)
class QueryVar:
    """A query variable. ``all_value='.*'`` keeps "All" a cheap regex instead of a list of
    every value, and Grafana inserts a custom all value unformatted."""

    name: str
    label: str
    influxql: str
    flux: str
    multi: bool = False
    include_all: bool = False
    all_value: str | None = ".*"
    #: Extraction regex applied by Grafana to each returned value (capture group 1).
    regex: str = ""
    #: 1: on dashboard load; 2: on time range change (queries that use $timeFilter).
    refresh: Literal[1, 2] = 1
    hide: Literal[0, 1, 2] = 0
    sort: int = 1
    default: str | None = None

    def to_json(self, ctx: BuildContext) -> dict[str, Any]:
        q = self.influxql if ctx.flavor == "influxql" else self.flux
        v: dict[str, Any] = {
            "type": "query", "name": self.name, "label": self.label,
            "datasource": ctx.ds("influx"), "query": q, "definition": q,
            "refresh": self.refresh, "regex": self.regex, "sort": self.sort,
            "multi": self.multi, "includeAll": self.include_all, "hide": self.hide,
            "options": [], "current": {},
        }
        if self.include_all:
            v["allValue"] = self.all_value
        if self.default == "$__all":
            v["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        elif self.default is not None:
            v["current"] = {"text": self.default, "value": self.default}
        return v


@dataclass(frozen=True, slots=True)
class CustomVar:
    name: str
    label: str
    values: tuple[str, ...]
    multi: bool = False
    include_all: bool = False
    hide: Literal[0, 1, 2] = 0

    def to_json(self, ctx: BuildContext) -> dict[str, Any]:
        first = self.values[0] if self.values else ""
        v: dict[str, Any] = {
            "type": "custom", "name": self.name, "label": self.label,
            "query": ",".join(self.values), "multi": self.multi,
            "includeAll": self.include_all, "hide": self.hide,
            "options": [{"text": x, "value": x, "selected": x == first} for x in self.values],
            "current": {"text": first, "value": first},
        }
        if self.include_all:
            v["allValue"] = ".*"
        return v


Variable = QueryVar | CustomVar


# --------------------------------------------------------------------------- annotations


@dataclass(frozen=True, slots=True)
class Annotation:
    """InfluxDB annotation. Grafana reads the old top-level ``query``/``*Column`` keys
    (InfluxQL up to 9.x) or ``target`` (10.x and later); both are written so the JSON
    works on either."""

    name: str
    influxql: str
    flux: str
    color: str
    text_column: str = ""
    tags_column: str = ""
    title_column: str = ""
    enable: bool = True

    def text(self, flavor: Flavor) -> str:
        return self.influxql if flavor == "influxql" else self.flux

    def to_json(self, ctx: BuildContext) -> dict[str, Any]:
        q = self.text(ctx.flavor)
        cols = {"textColumn": self.text_column, "tagsColumn": self.tags_column,
                "titleColumn": self.title_column}
        a: dict[str, Any] = {
            "name": self.name, "datasource": ctx.ds("influx"), "enable": self.enable,
            "hide": False, "iconColor": self.color, "query": q, **cols,
            "target": {"refId": "Anno", "query": q, "rawQuery": True,
                       "fromAnnotations": True, **cols},
        }
        return a


_BUILTIN_ANNOTATION: dict[str, Any] = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts", "type": "dashboard",
}


# --------------------------------------------------------------------------- dashboard


@dataclass(slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: Sequence[Panel | Row]
    variables: Sequence[Variable] = ()
    annotations: Sequence[Annotation] = ()
    tags: tuple[str, ...] = ("stationseal",)
    time_from: str = "now-6h"
    refresh: str = "1m"
    links: Sequence[dict[str, Any]] = ()

    def to_json(self, ctx: BuildContext) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "id": None,
            "time": {"from": self.time_from, "to": "now"},
            "refresh": self.refresh,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "timepicker": {},
            "links": list(self.links),
            "templating": {"list": [v.to_json(ctx) for v in self.variables]},
            "annotations": {"list": [_BUILTIN_ANNOTATION]
                            + [a.to_json(ctx) for a in self.annotations]},
            "panels": _layout(self.panels, ctx),
        }


def _layout(items: Iterable[Panel | Row], ctx: BuildContext) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    x = y = band = 0
    pid = 0
    for item in items:
        pid += 1
        if isinstance(item, Row):
            y += band
            x, band = 0, 0
            out.append({"id": pid, "type": "row", "title": item.title, "collapsed": False,
                        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}, "panels": []})
            y += 1
            continue
        w = min(item.w, GRID_WIDTH)
        if x + w > GRID_WIDTH:
            y += band
            x, band = 0, 0
        out.append(item.to_json(ctx, pid, {"h": item.h, "w": w, "x": x, "y": y}))
        x += w
        band = max(band, item.h)
    return out


# --------------------------------------------------------------------------- checks

#: Names Grafana itself defines: macros, data-link fields and InfluxQL alias patterns.
BUILTIN_VARIABLES = frozenset({
    "timeFilter", "__interval", "__interval_ms", "__rate_interval", "__range",
    "__range_s", "__range_ms", "__from", "__to", "__value", "__data", "__series",
    "__field", "__dashboard", "__url_time_range", "__org", "__user", "__timeFilter",
    "col", "m", "measurement",
})

_VAR_RE = re.compile(r"\$(\w+)|\$\{(\w+)(?:[.:][^}]*)?\}|\[\[(\w+)(?::\w+)?\]\]")


def variable_refs(text: str) -> set[str]:
    """Variables a query or link refers to (``$x``, ``${x:fmt}``, ``[[x]]``), without
    Grafana's own and InfluxQL ``$tag_*`` aliases."""
    out = set()
    for m in _VAR_RE.finditer(text):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTIN_VARIABLES or name.startswith("tag_"):
            continue
        out.add(name)
    return out


def validate(dash: dict[str, Any], datasource_uids: Iterable[str]) -> list[str]:
    """Structural problems of rendered dashboard JSON, as messages naming the panel.

    Grafana accepts a lot silently (a duplicate panel id breaks panel links and
    repeats, an unknown variable stays literal text in a query, a datasource uid that is
    not provisioned shows "data source not found" only when someone opens the panel); so
    these are checked before anything is written or uploaded.
    """
    errs: list[str] = []
    where = f"dashboard {dash.get('uid')!r}"
    known_ds = set(datasource_uids) | {"-- Mixed --", "-- Grafana --"}
    var_names = [v["name"] for v in dash["templating"]["list"]]
    if len(set(var_names)) != len(var_names):
        errs.append(f"{where}: duplicate variable names {var_names}")
    defined = set(var_names)
    ids: set[int] = set()
    occupied: dict[tuple[int, int], Any] = {}

    def check_ds(ref: Any, what: str) -> None:
        if not isinstance(ref, dict) or ref.get("uid") not in known_ds:
            errs.append(f"{where}: {what}: datasource {ref!r} is not one of {sorted(known_ds)}")

    def check_refs(text: str, what: str) -> None:
        missing = variable_refs(text) - defined
        if missing:
            errs.append(f"{where}: {what}: undefined variable(s) {sorted(missing)}")

    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            check_ds(v["datasource"], f"variable {v['name']}")
            check_refs(v["query"], f"variable {v['name']}")
    for a in dash["annotations"]["list"]:
        if a.get("builtIn"):
            continue
        check_ds(a["datasource"], f"annotation {a['name']!r}")
        check_refs(a["target"]["query"], f"annotation {a['name']!r}")
    for p in dash["panels"]:
        what = f"panel {p.get('id')} {p.get('title')!r}"
        pid = p.get("id")
        if not isinstance(pid, int) or pid in ids:
            errs.append(f"{where}: {what}: panel id missing or not unique")
        else:
            ids.add(pid)
        g = p.get("gridPos", {})
        if g.get("x", -1) < 0 or g.get("x", 0) + g.get("w", 0) > GRID_WIDTH or g.get("h", 0) < 1:
            errs.append(f"{where}: {what}: gridPos {g} outside the 24-column grid")
        x, y = g.get("x", 0), g.get("y", 0)
        cells = {(cx, cy) for cx in range(x, x + g.get("w", 0))
                 for cy in range(y, y + g.get("h", 0))}
        clash = cells & occupied.keys()
        if clash:
            errs.append(f"{where}: {what}: overlaps panel {occupied[min(clash)]}")
        occupied.update(dict.fromkeys(cells, pid))
        if p["type"] == "row":
            continue
        if p.get("repeat") and p["repeat"] not in defined:
            errs.append(f"{where}: {what}: repeats over undefined variable {p['repeat']!r}")
        check_ds(p.get("datasource"), what)
        refs = [t.get("refId") for t in p.get("targets", [])]
        if not refs:
            errs.append(f"{where}: {what}: no queries")
        if len(set(refs)) != len(refs):
            errs.append(f"{where}: {what}: duplicate refIds {refs}")
        mixed = p["datasource"].get("uid") == "-- Mixed --"
        for t in p.get("targets", []):
            check_ds(t.get("datasource"), f"{what} query {t.get('refId')}")
            if not mixed and t.get("datasource") != p["datasource"]:
                errs.append(f"{where}: {what} query {t.get('refId')}: datasource differs "
                            "from the panel's (panel would need the Mixed datasource)")
            check_refs(t.get("query") or t.get("expr") or "", f"{what} query {t.get('refId')}")
        for link in p.get("links", []) + [
            lk for o in p["fieldConfig"]["overrides"] for prop in o["properties"]
            if prop["id"] == "links" for lk in prop["value"]
        ]:
            check_refs(link.get("url", ""), f"{what} link {link.get('title')!r}")
    return errs
