"""Query fragments in both InfluxDB languages, over the ingest's schema.

The schema is the one ingest/convert.py writes (docs/influx-schema.md):

* ``reading`` tags site, gateway, instrument, signal, unit, [branch]; fields value (float)
  or text (string), quality (HJ 212 flag), seq, frame. ``branch`` is set only on a second
  history of a gateway (fork / sequence reset), so grouping by it keeps such data apart
  instead of averaging it into the real history.
* ``event`` tags site, gateway, instrument, kind, [branch]; fields detail (JSON), seq.
* ``frame`` tags site, gateway, [branch]; fields seq, readings, events, key_id, ...
* ``integrity`` tags site, gateway, kind, severity; fields count (1), detail, seq,
  quarantine_id (only for quarantined frames).
* ``alert`` tags site, rule, severity; fields key, state, count, start, end,
  summary_en, summary_zh, instrument, evidence, [test_id]; one point per alert at its
  start, overwritten by each update.

Every helper returns the pair (InfluxQL, Flux) so a panel is written once. InfluxQL uses
Grafana's ``$timeFilter`` / ``$__interval``; Flux uses ``v.timeRangeStart`` /
``v.windowPeriod`` / ``v.defaultBucket`` (the datasource's default bucket).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dashboards.grafana import Q

READING = "reading"
EVENT = "event"
FRAME = "frame"
INTEGRITY = "integrity"
ALERT = "alert"


@dataclass(frozen=True, slots=True)
class Cond:
    """One WHERE condition in both languages."""

    iq: str
    fx: str


def var(tag: str, name: str | None = None) -> Cond:
    """Tag matches a dashboard variable. The ``:regex`` format makes Grafana escape the
    value (and join several as ``(a|b)``) in every version; its default formatting of a
    single-value variable inserts the raw text, so a site id with a ``.`` or ``/``
    would match other sites or break the query."""
    n = name or tag
    return Cond(f'"{tag}" =~ /^${{{n}:regex}}$/', f"r.{tag} =~ /^${{{n}:regex}}$/")


def eq(tag: str, value: str) -> Cond:
    _plain(value)
    return Cond(f"\"{tag}\" = '{value}'", f'r.{tag} == "{value}"')


def one_of(tag: str, values: Sequence[str]) -> Cond:
    for v in values:
        _plain(v)
    alt = "|".join(values)
    return Cond(f'"{tag}" =~ /^({alt})$/', f"r.{tag} =~ /^({alt})$/")


def _plain(v: str) -> None:
    """Literals here are schema names (signals, kinds); refusing anything else keeps the
    generated queries free of quoting and regex-escaping questions."""
    if not v or not all(c.isalnum() or c in "_.-" for c in v) or "." in v[:1]:
        raise ValueError(f"query literal {v!r} must be a plain name ([A-Za-z0-9_.-])")


SITE = var("site")


def influxql(
    select: str,
    measurement: str,
    conds: Sequence[Cond] = (),
    *,
    by: Sequence[str] = (),
    interval: str | None = "$__interval",
    fill: str = "none",
    extra: Sequence[str] = (),
    tail: str = "",
) -> str:
    """``SELECT <select> FROM <m> WHERE <conds> AND $timeFilter GROUP BY ...``."""
    where = " AND ".join([c.iq for c in conds] + list(extra) + ["$timeFilter"])
    q = f'SELECT {select} FROM "{measurement}" WHERE {where}'
    group = ([f"time({interval})"] if interval else []) + [f'"{t}"' for t in by]
    if group:
        q += " GROUP BY " + ", ".join(group)
    if interval:
        q += f" fill({fill})"
    if tail:
        q += " " + tail
    return q


def flux(
    measurement: str,
    fields: Sequence[str] | None,
    conds: Sequence[Cond] = (),
    *,
    start: str = "v.timeRangeStart",
    extra: Sequence[str] = (),
) -> str:
    """``from |> range |> filter`` prefix; callers append the rest of the pipeline."""
    f = f'r._measurement == "{measurement}"'
    if fields:
        f += " and (" + " or ".join(f'r._field == "{x}"' for x in fields) + ")"
    lines = ["from(bucket: v.defaultBucket)",
             f"  |> range(start: {start}, stop: v.timeRangeStop)",
             f"  |> filter(fn: (r) => {f})"]
    parts = [c.fx for c in conds] + list(extra)
    if parts:
        lines.append(f"  |> filter(fn: (r) => {' and '.join(parts)})")
    return "\n".join(lines)


def fx_group(columns: Sequence[str]) -> str:
    return "  |> group(columns: [" + ", ".join(f'"{c}"' for c in columns) + "])"


def fx_window(fn: str, create_empty: bool = False) -> str:
    return (f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, "
            f"createEmpty: {'true' if create_empty else 'false'})")


def series(
    conds: Sequence[Cond],
    by: Sequence[str],
    *,
    agg: str = "mean",
    alias: str = "",
    interval: str = "$__interval",
    extra_iq: Sequence[str] = (),
    extra_fx: Sequence[str] = (),
) -> Q:
    """Mean (or another aggregate) of reading values per interval, one series per ``by``."""
    iq = influxql(f'{agg}("value")', READING, conds, by=by, interval=interval,
                  extra=extra_iq)
    fx = "\n".join([flux(READING, ["value"], conds, extra=extra_fx), fx_group(by),
                    fx_window(agg)])
    return Q(iq, fx, alias=alias)


def count_unique(measurement: str, tag: str, *, start: str = "v.timeRangeStart",
                 iq_time: str = "$timeFilter") -> Q:
    """How many distinct ``tag`` values wrote a ``seq`` field in the range. InfluxQL
    cannot count tag values directly; a subquery with one row per tag value can."""
    iq = (f'SELECT count("n") FROM (SELECT last("seq") AS "n" FROM "{measurement}" '
          f'WHERE {iq_time} GROUP BY "{tag}")')
    fx = "\n".join([flux(measurement, ["seq"], start=start), "  |> last()", "  |> group()",
                    f'  |> distinct(column: "{tag}")', "  |> count()"])
    return Q(iq, fx)


def sum_field(measurement: str, field: str, conds: Sequence[Cond] = (),
              extra_iq: Sequence[str] = (), extra_fx: Sequence[str] = ()) -> Q:
    iq = influxql(f'sum("{field}")', measurement, conds, interval=None, extra=extra_iq)
    fx = "\n".join([flux(measurement, [field], conds, extra=extra_fx), "  |> group()",
                    "  |> sum()"])
    return Q(iq, fx)


def count_field(measurement: str, field: str, conds: Sequence[Cond] = (),
                extra_iq: Sequence[str] = ()) -> Q:
    iq = influxql(f'count("{field}")', measurement, conds, interval=None, extra=extra_iq)
    fx = "\n".join([flux(measurement, [field], conds), "  |> group()", "  |> count()"])
    return Q(iq, fx)


def table(
    measurement: str,
    fields: Sequence[str],
    tags: Sequence[str],
    conds: Sequence[Cond] = (),
    *,
    limit: int = 500,
    extra_iq: Sequence[str] = (),
    extra_fx: Sequence[str] = (),
) -> Q:
    """Newest points first, fields and tags as columns (one table, not one per series)."""
    cols = ", ".join(f'"{c}"' for c in (*tags, *fields))
    iq = influxql(cols, measurement, conds, interval=None, extra=extra_iq,
                  tail=f"ORDER BY time DESC LIMIT {limit}")
    keep = ", ".join(f'"{c}"' for c in ("_time", *tags, *fields))
    fx = "\n".join([
        flux(measurement, list(fields), conds, extra=extra_fx),
        '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
        "  |> group()",
        f"  |> keep(columns: [{keep}])",
        '  |> sort(columns: ["_time"], desc: true)',
        f"  |> limit(n: {limit})",
    ])
    return Q(iq, fx, table=True)
