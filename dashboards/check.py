"""Run every InfluxQL query of rendered dashboards against an InfluxDB 1.x, as Grafana would.

A dashboard query is only text until a server parses it, and Grafana rewrites it before
sending: template variables (with their formats and the "All" value), ``$timeFilter``,
``$__interval``. This module does the same rewriting (the subset these dashboards use,
following Grafana's templateSrv and InfluxQL datasource), resolves variables by running
their own queries in order, expands repeated panels, and reports per query: an error
from the server, an empty result, or the series returned. ``stationseal dashboards
check`` uses it to verify a deployment's database before dashboards go live; the test
suite uses it against a real InfluxDB filled by the ingest's line builder.

Flux is not covered: InfluxDB 1.x does not run it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ALL = "$__all"

#: Grafana's variable syntax: ``$name``, ``[[name:fmt]]``, ``${name.field:fmt}``.
_VARIABLE_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def escape_regex(v: str) -> str:
    """Grafana's escapeRegex (@grafana/data), which also escapes ``/``."""
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), v)


@dataclass(slots=True)
class VarState:
    name: str
    options: list[str]
    current: list[str]
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None

    @property
    def is_all(self) -> bool:
        return self.current == [ALL]

    def values(self) -> list[str]:
        return list(self.options) if self.is_all else list(self.current)


def _format(var: VarState, values: list[str], fmt: str | None, all_selected: bool) -> str:
    if all_selected and var.all_value is not None and fmt not in ("text", "percentencode"):
        # Grafana inserts a custom all value as is, whatever the format.
        return var.all_value
    if fmt == "regex":
        esc = [escape_regex(v) for v in values]
        return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
    if fmt in ("raw", "csv", "text"):
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt is not None:
        raise ValueError(f"variable format {fmt!r} is not emulated")
    # InfluxQL datasource default (interpolateQueryExpr): escape only multi/all variables.
    if not var.multi and not var.include_all:
        return values[0] if values else ""
    esc = [escape_regex(v) for v in values]
    return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"


def interpolate(text: str, variables: Mapping[str, VarState], builtins: Mapping[str, str]
                ) -> str:
    """Replace variables and built-ins like Grafana; unknown names stay as written (as
    Grafana leaves them), so the server reports them."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in builtins:
            return builtins[name]
        var = variables.get(name)
        if var is None:
            return m.group(0)
        return _format(var, var.values(), fmt, var.is_all)

    return _VARIABLE_RE.sub(sub, text)


# --------------------------------------------------------------------------- time


_ROUND = (  # Grafana rangeutil.roundInterval: (upper bound ms, interval ms)
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
    (45000, 30000), (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000),
    (1050000, 900000), (1500000, 1200000), (2700000, 1800000), (5400000, 3600000),
    (9000000, 7200000), (16200000, 10800000), (24300000, 14400000), (32400000, 21600000),
    (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000),
    (3628800000, 2592000000),
)
_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def parse_duration_ms(s: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", s)
    if not m:
        raise ValueError(f"duration {s!r} is not like 500ms, 1s, 5m, 1h, 1d")
    mult = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000}[m.group(2)]
    return int(m.group(1)) * mult


def format_duration(ms: int) -> str:
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def interval_ms(range_ms: int, resolution: int, min_interval: str = "") -> int:
    """Grafana's ``$__interval``: range / max data points, rounded, not below the
    panel's (else the datasource's) minimum interval."""
    raw = range_ms / max(resolution, 1)
    val = next((iv for bound, iv in _ROUND if raw <= bound), 31_536_000_000)
    if min_interval:
        val = max(val, parse_duration_ms(min_interval))
    return val


# --------------------------------------------------------------------------- running


Runner = Callable[[str], dict[str, Any]]
"""Runs one InfluxQL statement; returns the statement's result object
(``{"series": [...]}`` or ``{"error": "..."}``)."""


@dataclass(slots=True)
class QueryResult:
    dashboard: str
    where: str
    query: str
    error: str | None = None
    series: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def empty(self) -> bool:
        return self.ok and not any(s.get("values") for s in self.series)

    def rows(self) -> list[dict[str, Any]]:
        """All rows as dicts (tags merged in), over every series."""
        out = []
        for s in self.series:
            for v in s.get("values", []):
                row = dict(zip(s["columns"], v, strict=True))
                row.update(s.get("tags") or {})
                out.append(row)
        return out

    def tag_values(self, tag: str) -> set[str]:
        return {str((s.get("tags") or {}).get(tag)) for s in self.series}


@dataclass(slots=True)
class DashboardCheck:
    uid: str
    variables: dict[str, VarState]
    results: list[QueryResult]
    notes: list[str] = field(default_factory=list)


def _variable_values(result: dict[str, Any], query: str) -> list[str]:
    """Grafana's InfluxQL metricFindQuery: SHOW TAG VALUES gives the ``value`` column;
    a SELECT gives its first column after time."""
    out: list[str] = []
    for s in result.get("series", []):
        cols = s["columns"]
        idx = cols.index("value") if "value" in cols else (1 if len(cols) > 1 else 0)
        for row in s.get("values", []):
            v = row[idx]
            if v is not None and str(v) not in out:
                out.append(str(v))
    return out


def _apply_regex(values: list[str], regex: str) -> list[str]:
    if not regex:
        return values
    m = re.fullmatch(r"/(.*)/([gimsuy]*)", regex, re.S)
    pattern = re.compile(m.group(1) if m else regex,
                         re.I if m and "i" in m.group(2) else 0)
    out: list[str] = []
    for v in values:
        hit = pattern.search(v)
        if hit is None:
            continue
        x = hit.group(1) if pattern.groups else v
        if x not in out:
            out.append(x)
    return out


def _sort(values: list[str], mode: int) -> list[str]:
    if mode in (1, 2):
        return sorted(values, reverse=mode == 2)
    if mode in (3, 4):
        def num(v: str) -> float:
            m = re.search(r"-?\d+(\.\d+)?", v)
            return float(m.group(0)) if m else float("-inf")
        return sorted(values, key=num, reverse=mode == 4)
    if mode in (5, 6):
        return sorted(values, key=str.lower, reverse=mode == 6)
    return values


def check_dashboard(
    dash: Mapping[str, Any],
    run: Runner,
    *,
    start_ms: int,
    end_ms: int,
    choices: Mapping[str, Sequence[str]] | None = None,
    resolution: int = 1000,
    min_interval: str = "1s",
    strict: bool = True,
) -> DashboardCheck:
    """Resolve variables (``choices`` pick values, else Grafana's defaults: the saved
    current value, All, or the first option), then run every panel and annotation
    query. ``resolution`` stands for a panel's width in data points. A choice that is
    not among a variable's values raises ValueError, or with ``strict=False`` is noted
    and the default used (one ``--var site=X`` for dashboards whose site lists differ)."""
    uid = str(dash.get("uid"))
    choices = dict(choices or {})
    notes: list[str] = []
    results: list[QueryResult] = []
    variables: dict[str, VarState] = {}
    range_ms = end_ms - start_ms
    time_filter = f"time >= {start_ms}ms and time <= {end_ms}ms"

    def builtins(min_iv: str) -> dict[str, str]:
        iv = interval_ms(range_ms, resolution, min_iv or min_interval)
        return {"timeFilter": time_filter, "__interval": format_duration(iv),
                "__interval_ms": str(iv), "__range": format_duration(range_ms),
                "__range_ms": str(range_ms), "__range_s": str(range_ms // 1000),
                "__from": str(start_ms), "__to": str(end_ms)}

    for v in dash["templating"]["list"]:
        name = v["name"]
        if v["type"] == "custom":
            options = [o["value"] for o in v.get("options", [])] or [
                x.strip() for x in v["query"].split(",") if x.strip()]
        elif v["type"] == "query":
            q = interpolate(v["query"], variables, builtins(""))
            res = run(q)
            r = QueryResult(uid, f"variable {name}", q, res.get("error"),
                            res.get("series", []))
            results.append(r)
            options = _sort(_apply_regex(_variable_values(res, q), v.get("regex", "")),
                            int(v.get("sort", 0)))
        else:
            raise ValueError(f"{uid}: variable {name}: type {v['type']!r} is not emulated")
        state = VarState(name, options, [], bool(v.get("multi")), bool(v.get("includeAll")),
                         v.get("allValue"))
        picked = list(choices.get(name, ()))
        bad = [p for p in picked if p != ALL and p not in options]
        if bad:
            msg = f"{uid}: variable {name}: {bad} not among its values {options}"
            if strict:
                raise ValueError(msg)
            notes.append(msg + "; default used")
        if picked and not bad:
            state.current = picked
        else:
            cur = (v.get("current") or {}).get("value")
            cur_list = cur if isinstance(cur, list) else ([cur] if cur else [])
            if cur_list and all(c == ALL or c in options for c in cur_list):
                state.current = cur_list
            elif state.include_all:
                state.current = [ALL]
            else:
                state.current = options[:1]
        variables[name] = state

    for a in dash["annotations"]["list"]:
        if a.get("builtIn"):
            continue
        q = interpolate(a["target"]["query"], variables, builtins(""))
        res = run(q)
        results.append(QueryResult(uid, f"annotation {a['name']!r}", q, res.get("error"),
                                   res.get("series", [])))

    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        reps: list[dict[str, VarState]] = [variables]
        rep = p.get("repeat")
        if rep:
            base = variables[rep]
            reps = [{**variables, rep: VarState(rep, base.options, [val], base.multi,
                                                base.include_all, base.all_value)}
                    for val in base.values()]
        for scoped in reps:
            title = interpolate(p["title"], scoped, {})
            for t in p["targets"]:
                if t["datasource"]["type"] != "influxdb":
                    continue
                q = interpolate(t["query"], scoped, builtins(p.get("interval", "")))
                res = run(q)
                results.append(QueryResult(uid, f"panel {p['id']} {title!r} {t['refId']}", q,
                                           res.get("error"), res.get("series", [])))
    return DashboardCheck(uid, variables, results, notes)


def http_runner(url: str, database: str, *, username: str | None = None,
                password: str | None = None, timeout_s: float = 10.0) -> Runner:
    """Runner over the InfluxDB 1.x HTTP API (the ingest's v1 client, POST /query)."""
    from ingest.config import InfluxConfig
    from ingest.influx import V1Writer

    client = V1Writer(InfluxConfig(url=url, database=database, username=username,
                                   password=password, timeout_s=timeout_s))

    def run(q: str) -> dict[str, Any]:
        status, text = client.query(q)
        try:
            body = json.loads(text)
        except ValueError:
            return {"error": f"HTTP {status}: {text.strip()[:300]}"}
        if "error" in body:
            return {"error": f"HTTP {status}: {body['error']}"}
        res = body.get("results") or [{}]
        if len(res) != 1:
            return {"error": f"query gave {len(res)} statement results, expected 1"}
        return dict(res[0])

    return run
