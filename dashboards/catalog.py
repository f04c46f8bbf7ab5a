"""The StationSeal dashboards, as code.

Five dashboards for supervisors (docs/dashboards.md says what each shows and why):
overview, site detail, vehicle lane, environmental site, ingest health. With a
SITES.yaml, every environmental site also gets its own dashboard whose pollutant panels
carry that site's legal limits as threshold lines, since a limit is per site and a
Grafana threshold is per panel.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from dashboards import queries as qx
from dashboards.grafana import (
    Annotation,
    CustomVar,
    Dashboard,
    Panel,
    PromQ,
    Q,
    QueryVar,
    Row,
    override,
    range_map,
    thresholds,
    value_map,
)
from dashboards.queries import ALERT, EVENT, FRAME, INTEGRITY, READING, SITE, Cond, one_of, var
from ingest.detectors.base import SiteInfo
from stationseal.records import QUALITY_FLAGS
from stationseal.signals import BY_NAME, SIGNALS

UID_OVERVIEW = "stationseal-overview"
UID_SITE = "stationseal-site-detail"
UID_LANE = "stationseal-vehicle-lane"
UID_ENV = "stationseal-environment"
UID_INGEST = "stationseal-ingest-health"

#: HJ 212 data flags in Chinese, beside the English of stationseal.records.QUALITY_FLAGS.
FLAG_ZH: dict[str, str] = {"N": "正常", "M": "维护", "D": "故障", "C": "校准", "F": "停运",
                           "S": "手工设定", "T": "超量程", "B": "通讯异常"}
FLAG_COLOR: dict[str, str] = {"N": "green", "M": "blue", "D": "red", "C": "purple",
                              "F": "text", "S": "orange", "T": "dark-red", "B": "yellow"}
FLAG_MAPPING = value_map({k: (f"{k} {v} / {FLAG_ZH[k]}", FLAG_COLOR[k])
                          for k, v in QUALITY_FLAGS.items()})

#: Pollutants compared with limits, per environmental domain (stationseal/signals.py).
POLLUTANTS: dict[str, tuple[str, ...]] = {
    "stack": ("so2_mgm3", "nox_mgm3", "pm_mgm3"),
    "air": ("pm25_ugm3", "pm10_ugm3", "so2_ugm3", "no2_ugm3", "o3_ugm3", "co_mgm3"),
    "water": ("cod_mgl", "nh3n_mgl", "tp_mgl", "tn_mgl", "ph"),
}
ALL_POLLUTANTS: tuple[str, ...] = tuple(s for d in POLLUTANTS.values() for s in d)
FLOW_SIGNALS = ("flow_m3h", "water_flow_ls")
O2_SIGNALS = ("o2_stack_pct",)
CONDITION_SIGNALS = ("flue_temp_c", "flue_kpa", "moisture_pct", "water_temp_c")
ENV_SIGNALS: tuple[str, ...] = tuple(
    s.name for s in SIGNALS if s.domain in ("stack", "air", "water"))
SITE_KIND_DOMAIN = {"stack_cems": "stack", "air_quality": "air", "water_quality": "water"}

#: Vehicle test curves: (title, unit, signals).
LANE_CURVES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CO / 一氧化碳", "percent", ("co_pct",)),
    ("CO2 / 二氧化碳", "percent", ("co2_pct",)),
    ("HC / 碳氢化合物", "ppm", ("hc_ppm",)),
    ("NO / 一氧化氮", "ppm", ("no_ppm",)),
    ("O2 / 氧气", "percent", ("o2_pct",)),
    ("Lambda / 过量空气系数", "none", ("lambda",)),
    ("Speed / 速度 (roller, target)", "velocitykmh", ("speed_kmh", "target_speed_kmh")),
    ("Power / 功率", "kwatt", ("power_kw",)),
)
TEST_EVENTS = ("test_start", "test_end")
CHANGE_EVENTS = ("calibration_change", "config_change")
FAULT_EVENTS = ("instrument_fault", "instrument_recovered", "malformed_response",
                "gateway_boot", "clock_jump", "data_dropped")
QUARANTINED = "\"quarantine_id\" > 0"

#: Grafana's own dashboard link bar: every StationSeal dashboard, keeping time range.
NAV_LINKS: list[dict[str, Any]] = [{
    "title": "StationSeal", "type": "dashboards", "tags": ["stationseal"],
    "asDropdown": True, "includeVars": False, "keepTime": True, "targetBlank": False,
}]

PROM = "stationseal_ingest_"


def _bars(stacked: bool = True) -> dict[str, Any]:
    c: dict[str, Any] = {"drawStyle": "bars", "fillOpacity": 80, "lineWidth": 1}
    if stacked:
        c["stacking"] = {"mode": "normal", "group": "A"}
    return c


def _link(title: str, url: str) -> dict[str, Any]:
    return {"title": title, "url": url, "targetBlank": False}


def _site_var(measurement: str = READING, where: Sequence[Cond] = ()) -> QueryVar:
    iq = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "site"'
    if where:
        iq += " WHERE " + " AND ".join(c.iq for c in where)
    pred = " and ".join([f'r._measurement == "{measurement}"', *(c.fx for c in where)])
    fx = ('import "influxdata/influxdb/schema"\n'
          f'schema.tagValues(bucket: v.defaultBucket, tag: "site", predicate: (r) => {pred})')
    return QueryVar("site", "Site / 站点", iq, fx)


def _tag_var(name: str, label: str, tag: str, where: Sequence[Cond]) -> QueryVar:
    iq = (f'SHOW TAG VALUES FROM "{READING}" WITH KEY = "{tag}" WHERE '
          + " AND ".join(c.iq for c in where))
    pred = " and ".join([f'r._measurement == "{READING}"', *(c.fx for c in where)])
    fx = ('import "influxdata/influxdb/schema"\n'
          f'schema.tagValues(bucket: v.defaultBucket, tag: "{tag}", predicate: (r) => {pred})')
    return QueryVar(name, label, iq, fx, multi=True, include_all=True, default="$__all")


def _alerts_annotation(conds: Sequence[Cond] = (SITE,)) -> Annotation:
    iq = qx.influxql('"summary_en", "summary_zh", "rule", "severity", "state"', ALERT, conds,
                     interval=None)
    fx = "\n".join([
        qx.flux(ALERT, ["summary_en"], conds),
        '  |> map(fn: (r) => ({_time: r._time, text: r._value, '
        'tags: r.rule + "," + r.severity}))',
    ])
    return Annotation("Alerts / 告警", iq, fx, "red", text_column="summary_en",
                      tags_column="rule,severity", title_column="summary_zh")


def _events_annotation(name: str, kinds: Sequence[str], color: str,
                       conds: Sequence[Cond] = (SITE,), enable: bool = True) -> Annotation:
    c = [*conds, one_of("kind", kinds)]
    iq = qx.influxql('"detail", "kind", "instrument"', EVENT, c, interval=None)
    fx = "\n".join([
        qx.flux(EVENT, ["detail"], c),
        '  |> map(fn: (r) => ({_time: r._time, text: r._value, '
        'tags: r.kind + "," + r.instrument}))',
    ])
    return Annotation(name, iq, fx, color, text_column="detail", tags_column="kind,instrument",
                      enable=enable)


def _flags_panel(conds: Sequence[Cond], w: int = 24, h: int = 8) -> Panel:
    iq = qx.influxql('last("quality")', READING, conds, by=("instrument", "signal"))
    fx = "\n".join([qx.flux(READING, ["quality"], conds), qx.fx_group(["instrument", "signal"]),
                    qx.fx_window("last")])
    return Panel(
        "Quality flags / 数据标记", "state-timeline",
        [Q(iq, fx, alias="$tag_instrument $tag_signal")], w=w, h=h, mappings=[FLAG_MAPPING],
        interval="1s",
        description="HJ 212 flag of each signal (last in each interval). Anything but N "
                    "means the instrument declared the value not valid for compliance "
                    "(maintenance, calibration, fault, ...): a flag over a period with "
                    "flow is what pattern E6 looks for.",
    )


def _flagged_panel(conds: Sequence[Cond], w: int = 12) -> Panel:
    iq = qx.influxql('count("quality")', READING, conds, by=("signal",),
                     extra=["\"quality\" != 'N'"])
    fx = "\n".join([qx.flux(READING, ["quality"], conds, extra=['r._value != "N"']),
                    qx.fx_group(["signal"]), qx.fx_window("count")])
    return Panel("Readings flagged not normal / 非正常标记数据", "timeseries",
                 [Q(iq, fx, alias="$tag_signal")], w=w, custom=_bars(), unit="short",
                 description="Number of readings per interval whose flag is not N.")


def _alert_table(title: str, conds: Sequence[Cond], *, w: int = 24, h: int = 8,
                 extra_iq: Sequence[str] = (), extra_fx: Sequence[str] = ()) -> Panel:
    q = qx.table(ALERT, ["state", "count", "instrument", "start", "end", "summary_en",
                         "summary_zh"], ["site", "rule", "severity"], conds,
                 extra_iq=extra_iq, extra_fx=extra_fx)
    return Panel(
        title, "table", [q], w=w, h=h,
        overrides=[
            override("byName", "severity", mappings=[value_map({
                "high": ("high / 高", "red"), "medium": ("medium / 中", "orange"),
                "low": ("low / 低", "blue")})],
                custom__cellOptions={"type": "color-background"}),
            override("byName", "site", links=[_link(
                "Site detail / 站点详情",
                f"/d/{UID_SITE}/site-detail?var-site=${{__value.raw}}&${{__url_time_range}}")]),
        ],
        description="One row per alert (updates overwrite the alert's point, so the row is "
                    "its latest state; count = times it fired). Newest first.",
    )


# --------------------------------------------------------------------------- 1 overview


def overview() -> Dashboard:
    severe = one_of("severity", ("medium", "high"))
    gw_activity = Q(
        qx.influxql('count("seq")', FRAME, by=("site", "gateway"), fill="0"),
        "\n".join([qx.flux(FRAME, ["seq"]), qx.fx_group(["site", "gateway"]),
                   qx.fx_window("count", create_empty=True)]),
        alias="$tag_site / $tag_gateway")
    last_frame = Q(
        qx.influxql('last("seq") AS "last_seq"', FRAME, by=("site", "gateway"), interval=None),
        "\n".join([qx.flux(FRAME, ["seq"]), qx.fx_group(["site", "gateway"]), "  |> last()",
                   "  |> group()", '  |> rename(columns: {_value: "last_seq"})']),
        table=True)
    per_site = Q(
        qx.influxql('sum("readings") AS "readings", count("seq") AS "frames"', FRAME,
                    by=("site",), interval=None),
        "\n".join([qx.flux(FRAME, ["readings"]), qx.fx_group(["site"]), "  |> sum()",
                   "  |> group()", '  |> rename(columns: {_value: "readings"})']),
        table=True)
    rate = Q(
        qx.influxql('sum("readings") * 1000 / $__interval_ms', FRAME, by=("site",), fill="0"),
        "\n".join([qx.flux(FRAME, ["readings"]), qx.fx_group(["site"]), qx.fx_window("sum"),
                   "  |> map(fn: (r) => ({r with _value: float(v: r._value) * 1000000000.0 "
                   "/ float(v: int(v: v.windowPeriod))}))"]),
        alias="$tag_site")
    alerts_by_rule = Q(
        qx.influxql('count("count")', ALERT, by=("rule", "severity")),
        "\n".join([qx.flux(ALERT, ["count"]), qx.fx_group(["rule", "severity"]),
                   qx.fx_window("count")]),
        alias="$tag_rule ($tag_severity)")
    integrity_by_kind = Q(
        qx.influxql('sum("count")', INTEGRITY, by=("kind",)),
        "\n".join([qx.flux(INTEGRITY, ["count"]), qx.fx_group(["kind"]), qx.fx_window("sum")]),
        alias="$tag_kind")
    quarantined = Q(
        qx.influxql('count("quarantine_id")', INTEGRITY, interval=None, extra=[QUARANTINED]),
        "\n".join([qx.flux(INTEGRITY, ["quarantine_id"]), "  |> group()", "  |> count()"]))
    dropped = qx.table(EVENT, ["detail", "seq"], ["site", "gateway"],
                       [qx.eq("kind", "data_dropped")])
    integrity_rows = qx.table(INTEGRITY, ["seq", "detail", "quarantine_id"],
                              ["site", "gateway", "kind", "severity"], [severe])
    stat = {"graphMode": "area"}
    return Dashboard(
        UID_OVERVIEW, "Supervisor overview / 监管总览",
        "All sites at a glance: who is reporting, what is being alerted, and whether the "
        "data chain is intact.",
        links=NAV_LINKS,
        panels=[
            Row("Network / 联网状态"),
            Panel("Sites reporting / 上报站点", "stat", [qx.count_unique(FRAME, "site")],
                  w=4, h=4, description="Sites with at least one frame in the time range."),
            Panel("Gateways online (frame ≤ 5 min) / 在线网关", "stat",
                  [qx.count_unique(FRAME, "gateway", start="-5m",
                                   iq_time="time > now() - 5m")], w=4, h=4,
                  description="Gateways whose last frame is at most 5 minutes old, whatever "
                              "the dashboard's time range."),
            Panel("Gateways seen in range / 时段内网关", "stat",
                  [qx.count_unique(FRAME, "gateway")], w=4, h=4,
                  description="Compare with the online count: the difference are gateways "
                              "that went silent (see Gateway activity)."),
            Panel("Readings stored / 入库读数", "stat", [qx.sum_field(FRAME, "readings")],
                  w=4, h=4, unit="short", options=stat),
            Panel("High-severity alerts in range / 高级别告警数", "stat",
                  [qx.count_field(ALERT, "count", [qx.eq("severity", "high")])], w=4, h=4,
                  thresholds=thresholds((None, "green"), (1, "red"))),
            Panel("Integrity events (medium, high) / 完整性事件", "stat",
                  [qx.sum_field(INTEGRITY, "count", [severe])], w=4, h=4,
                  thresholds=thresholds((None, "green"), (1, "orange"))),
            Panel("Readings per second by site / 各站点读数速率", "timeseries", [rate],
                  unit="reqps", description="Readings carried by frames, per second, by "
                  "the frame's creation time at the gateway."),
            Panel("Gateway activity / 网关在线状态", "state-timeline", [gw_activity],
                  interval="5m", thresholds=thresholds((None, "red"), (1, "green")),
                  mappings=[range_map(0, 0, "silent / 无数据", "red"),
                            range_map(1, None, "reporting / 在线", "green")],
                  description="Frames per interval (at least 5 min) for every gateway: a "
                              "red stretch is a gateway that sent nothing (offline, or "
                              "its frames were refused - see Integrity)."),
            Panel("Sites / 站点", "table", [per_site], w=12, h=7,
                  overrides=[override("byName", "site", links=[_link(
                      "Site detail / 站点详情",
                      f"/d/{UID_SITE}/site-detail?var-site=${{__value.raw}}"
                      "&${__url_time_range}")])]),
            Panel("Gateways — last frame / 网关最后一帧", "table", [last_frame], w=12, h=7,
                  overrides=[override("byName", "Time", unit="dateTimeFromNow",
                                      displayName="Last frame / 最后一帧")],
                  description="Time of each gateway's last frame in the range (relative)."),
            Row("Alerts / 告警"),
            Panel("Alerts by rule and severity / 按规则和级别的告警", "timeseries",
                  [alerts_by_rule], custom=_bars(), unit="short",
                  description="Alerts by the interval they started in. An alert that fires "
                              "again is updated, not counted twice."),
            _alert_table("High-severity alerts / 高级别告警", [qx.eq("severity", "high")],
                         w=12),
            Row("Integrity / 数据完整性"),
            Panel("Integrity events by kind / 按类型的完整性事件", "timeseries",
                  [integrity_by_kind], custom=_bars(), unit="short",
                  description="gap: sequence numbers never received; fork / sequence_reset: "
                              "a second history; bad_signature, unknown_key, ...: frames "
                              "refused and quarantined; duplicate: QoS 1 redelivery (low)."),
            Panel("Sequence gaps / 序列缺口", "stat",
                  [qx.sum_field(INTEGRITY, "count", [qx.eq("kind", "gap")])], w=3, h=4,
                  thresholds=thresholds((None, "green"), (1, "orange"))),
            Panel("Forks and resets / 分叉与重置", "stat",
                  [qx.sum_field(INTEGRITY, "count", [one_of("kind", ("fork", "sequence_reset"))])],
                  w=3, h=4, thresholds=thresholds((None, "green"), (1, "red"))),
            Panel("Quarantined frames / 隔离帧", "stat", [quarantined], w=3, h=4,
                  thresholds=thresholds((None, "green"), (1, "red")),
                  description="Frames refused (signature, key, schema, topic) and kept "
                              "in the ingest quarantine; `stationseal ingest quarantine` "
                              "lists them."),
            Panel("Data dropped at gateways / 网关丢弃数据", "stat",
                  [qx.count_field(EVENT, "detail", [qx.eq("kind", "data_dropped")])],
                  w=3, h=4, thresholds=thresholds((None, "green"), (1, "orange")),
                  description="Signed data_dropped events: the gateway's outbox overflowed "
                              "and it says which frames it gave up."),
            Panel("Integrity events (medium, high) / 完整性事件明细", "table", [integrity_rows],
                  w=12, h=8),
            Panel("Data dropped at gateways / 网关丢弃明细", "table", [dropped], w=12, h=6),
        ],
    )


# --------------------------------------------------------------------------- 2 site detail


def site_detail() -> Dashboard:
    inst = var("instrument")
    sig = var("signal")
    conds = [SITE, inst, sig]
    signals = qx.series(conds, ("instrument", "unit", "branch"),
                        alias="$tag_instrument $tag_branch ($tag_unit)")
    events = qx.table(EVENT, ["detail", "seq"], ["gateway", "instrument", "kind"], [SITE])
    integrity = qx.table(INTEGRITY, ["seq", "detail"], ["gateway", "kind", "severity"], [SITE])
    return Dashboard(
        UID_SITE, "Site detail / 站点详情",
        "Every signal of one site with its quality flags; alerts, calibration/configuration "
        "changes and instrument faults as annotations.",
        links=NAV_LINKS,
        variables=[
            _site_var(),
            _tag_var("instrument", "Instrument / 仪器", "instrument", [SITE]),
            _tag_var("signal", "Signal / 信号", "signal", [SITE, inst]),
        ],
        annotations=[
            _alerts_annotation(),
            _events_annotation("Calibration / config changes / 校准与配置变更",
                               CHANGE_EVENTS, "purple"),
            _events_annotation("Faults, boots, drops / 故障、重启、丢弃", FAULT_EVENTS,
                               "orange"),
        ],
        panels=[
            Row("Signals / 信号"),
            Panel("$signal", "timeseries", [signals], repeat="signal", interval="1s",
                  description="Mean per interval of each instrument's value. A series "
                              "labelled fork-... or reset-... is a second history of the "
                              "gateway, kept apart on purpose."),
            _flags_panel(conds),
            _flagged_panel(conds),
            Panel("Events / 事件", "table", [events], w=12,
                  description="Signed events from the site's gateways (detail is JSON)."),
            Row("Alerts and integrity / 告警与完整性"),
            _alert_table("Alerts at this site / 本站告警", [SITE], w=12),
            Panel("Integrity events / 完整性事件", "table", [integrity], w=12, h=8),
        ],
    )


# --------------------------------------------------------------------------- 3 vehicle lane


def vehicle_lane() -> Dashboard:
    test_sel = Cond('"detail" =~ /"test_id":"${test_id:regex}"/',
                    'r._value =~ /"test_id":"${test_id:regex}"/')
    tests_iq = qx.influxql('"detail"', EVENT, [SITE, qx.eq("kind", "test_start")],
                           interval=None)
    tests_fx = "\n".join([qx.flux(EVENT, ["detail"], [SITE, qx.eq("kind", "test_start")]),
                          '  |> keep(columns: ["_value"])', "  |> group()", "  |> distinct()"])
    test_var = QueryVar("test_id", "Test / 检测编号", tests_iq, tests_fx,
                        regex='/"test_id":"([^"]+)"/', refresh=2, sort=2)
    tests = qx.table(EVENT, ["detail"], ["kind", "gateway", "instrument"],
                     [SITE, one_of("kind", TEST_EVENTS)])
    curves: list[Panel] = []
    for title, unit, sigs in LANE_CURVES:
        by = ("instrument", "signal", "branch") if len(sigs) > 1 else ("instrument", "branch")
        alias = "$tag_signal $tag_branch" if len(sigs) > 1 else "$tag_instrument $tag_branch"
        cond = qx.eq("signal", sigs[0]) if len(sigs) == 1 else one_of("signal", sigs)
        curves.append(Panel(title, "timeseries", [qx.series([SITE, cond], by, alias=alias)],
                            w=8, h=7, unit=unit, interval="1s"))
    co_co2 = Q(
        'SELECT sum("m") FROM (SELECT mean("value") AS "m" FROM "reading" WHERE '
        '"site" =~ /^${site:regex}$/ AND "signal" =~ /^(co_pct|co2_pct)$/ AND "branch" = \'\' '
        'AND $timeFilter GROUP BY time($__interval), "signal") WHERE $timeFilter '
        'GROUP BY time($__interval) fill(none)',
        "\n".join([qx.flux(READING, ["value"], [SITE, one_of("signal", ("co_pct", "co2_pct"))],
                           extra=['not exists r.branch']),
                   qx.fx_group(["signal"]), qx.fx_window("mean"), "  |> group()",
                   '  |> aggregateWindow(every: v.windowPeriod, fn: sum, createEmpty: false)']),
        alias="CO + CO2")
    curves.append(Panel(
        "CO + CO2 (probe check, V1) / 探头检查", "timeseries", [co_co2], w=8, h=7,
        unit="percent", interval="1s",
        thresholds=thresholds((None, "red"), (6, "transparent")),
        custom={"thresholdsStyle": {"mode": "line+area"}},
        description="Sum of CO and CO2: below 6 %vol during a scored phase means the probe "
                    "is not in the tailpipe or the sample line leaks (GB 18285, pattern V1)."))
    state = Q(qx.influxql('last("value")', READING, [SITE, qx.eq("signal", "lane_test_state")],
                          by=("instrument",)),
              "\n".join([qx.flux(READING, ["value"], [SITE, qx.eq("signal", "lane_test_state")]),
                          qx.fx_group(["instrument"]), qx.fx_window("last")]),
              alias="$tag_instrument state / 状态")
    serial = Q(qx.influxql('last("value")', READING, [SITE, qx.eq("signal", "lane_test_id")],
                           by=("instrument",)),
               "\n".join([qx.flux(READING, ["value"], [SITE, qx.eq("signal", "lane_test_id")]),
                           qx.fx_group(["instrument"]), qx.fx_window("last")]),
               alias="$tag_instrument test no. / 检测序号")
    controller = Panel(
        "Lane controller / 检测线控制器", "state-timeline", [state, serial], w=24, h=5,
        interval="1s", options={"showValue": "auto"},
        overrides=[override("byFrameRefID", "A", mappings=[value_map({
            "0": ("idle / 空闲", "text"), "1": ("testing / 检测中", "blue"),
            "2": ("finished / 完成", "green"), "3": ("aborted / 中止", "orange")})])],
        description="State and serial number the lane controller (lane_controller "
                    "profile) reports, sealed like any instrument reading: shows tests "
                    "also on lanes whose gateways seal no test_start/test_end events.")
    link = (f"/d/{UID_LANE}/vehicle-lane?var-site=${{site}}&var-test_id=${{__value.raw}}"
            "&time=${__value.time}&time.window=900000")
    return Dashboard(
        UID_LANE, "Vehicle lane / 机动车检测线",
        "Process curves of emission tests at one inspection station: pick a test from the "
        "table (its start is centred in a 15 min window) or from the Test variable.",
        time_from="now-1h", refresh="30s", links=NAV_LINKS,
        variables=[_site_var(EVENT, [qx.eq("kind", "test_start")]), test_var],
        annotations=[
            _events_annotation("Selected test / 当前检测", TEST_EVENTS, "blue",
                               conds=[SITE, test_sel]),
            _events_annotation("All tests / 全部检测", TEST_EVENTS, "green", enable=False),
            _alerts_annotation(),
        ],
        panels=[
            Row("Tests / 检测记录"),
            controller,
            Panel("Tests in range / 时段内检测", "table", [tests], w=24, h=7,
                  transformations=[{"id": "extractFields", "options": {
                      "source": "detail", "format": "json", "replace": False,
                      "keepTime": True}}],
                  overrides=[override("byName", "test_id", links=[_link(
                      "Show this test / 查看该检测", link)])],
                  description="test_start / test_end events sealed by the lane gateway. "
                              "Click a test id to centre the curves on it."),
            Row("Curves / 过程曲线"),
            *curves,
            Row("Findings / 发现"),
            _alert_table("Alerts for the selected test / 当前检测的告警", [SITE], w=12,
                         extra_iq=['"test_id" =~ /^${test_id:regex}$/'],
                         extra_fx=['r.test_id =~ /^${test_id:regex}$/']),
            _flags_panel([SITE, one_of("signal", [s for _, _, ss in LANE_CURVES for s in ss])],
                         w=12),
        ],
    )


# --------------------------------------------------------------------------- 4 environment


def _pollutant_panel(signal: str | None, limit: float | None, *, w: int = 12) -> Panel:
    """Mean per interval plus the hourly mean of valid (N) data of the trusted history
    (no ``branch``): limits apply to hourly means of valid data, and the gap between the
    two is what flag abuse (E6) hides."""
    cond = var("signal", "pollutant") if signal is None else qx.eq("signal", signal)
    a = qx.series([SITE, cond], ("signal", "unit", "branch"),
                  alias="$tag_signal ($tag_unit) $tag_branch")
    b = Q(
        qx.influxql('mean("value")', READING, [SITE, cond], by=("signal", "unit"),
                    interval="1h", extra=["\"quality\" = 'N'", "\"branch\" = ''"]),
        "\n".join([
            qx.flux(READING, ["value", "quality"], [SITE, cond], extra=["not exists r.branch"]),
            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
            '  |> filter(fn: (r) => r.quality == "N")',
            "  |> map(fn: (r) => ({r with _value: r.value}))",
            qx.fx_group(["signal", "unit"]),
            "  |> aggregateWindow(every: 1h, fn: mean, createEmpty: false)"]),
        alias="hourly mean, valid (N) / 有效小时均值")
    title = "$pollutant" if signal is None else _signal_title(signal)
    p = Panel(title, "timeseries", [a, b], w=w, h=8, interval="1m",
              repeat="pollutant" if signal is None else "",
              overrides=[override("byFrameRefID", "B", custom__lineInterpolation="stepAfter",
                                  custom__lineWidth=2)])
    if limit is not None:
        p.thresholds = thresholds((None, "transparent"), (0.9 * limit, "#FF780A33"),
                                  (limit, "red"))
        p.custom = {"thresholdsStyle": {"mode": "line+area"}}
        p.description = (f"Limit {limit:g} {BY_NAME[signal].unit if signal else ''}: red "
                          "line; the shaded band [0.9 L, L) is where values held just "
                          "under the limit sit (pattern E5).")
    return p


#: Chinese names of the pollutants compared with limits (titles are bilingual).
POLLUTANT_ZH: dict[str, str] = {
    "so2_mgm3": "二氧化硫", "nox_mgm3": "氮氧化物", "pm_mgm3": "颗粒物",
    "pm25_ugm3": "细颗粒物", "pm10_ugm3": "可吸入颗粒物", "so2_ugm3": "二氧化硫",
    "no2_ugm3": "二氧化氮", "o3_ugm3": "臭氧", "co_mgm3": "一氧化碳", "cod_mgl": "化学需氧量",
    "nh3n_mgl": "氨氮", "tp_mgl": "总磷", "tn_mgl": "总氮", "ph": "pH值",
}


def _signal_title(signal: str) -> str:
    """``SO2 / 二氧化硫 (so2_mgm3, mg/m³)``."""
    s = BY_NAME[signal]
    zh = POLLUTANT_ZH.get(signal, s.description)
    return f"{s.description} / {zh} ({signal}, {s.unit})"


def environment(site: SiteInfo | None = None) -> Dashboard:
    """The generic dashboard (site and pollutant variables) or, given a site from
    SITES.yaml, that site's dashboard with its limits drawn."""
    if site is None:
        pollutant_panels = [_pollutant_panel(None, None)]
        site_var: QueryVar | CustomVar = _site_var(READING, [one_of("signal", ENV_SIGNALS)])
        variables: list[QueryVar | CustomVar] = [
            site_var,
            _tag_var("pollutant", "Pollutant / 污染物", "signal",
                     [SITE, one_of("signal", ALL_POLLUTANTS)]),
        ]
        uid, title = UID_ENV, "Environmental site / 环境监测站点"
        aux: tuple[str, ...] = (*FLOW_SIGNALS, *O2_SIGNALS, *CONDITION_SIGNALS)
    else:
        domain = SITE_KIND_DOMAIN[site.kind]
        names = list(POLLUTANTS[domain]) + [s for s in site.limits
                                            if s not in POLLUTANTS[domain] and s in BY_NAME]
        pollutant_panels = [_pollutant_panel(s, site.limits.get(s)) for s in names]
        variables = [CustomVar("site", "Site / 站点", (site.id,), hide=2)]
        uid, title = env_uid(site.id), f"Environmental site {site.id} / 环境监测站点 {site.id}"
        aux = tuple(s.name for s in SIGNALS if s.domain == domain and s.name not in names)
    flow = [s for s in FLOW_SIGNALS if s in aux]
    o2 = [s for s in O2_SIGNALS if s in aux]
    cond_sigs = [s for s in aux if s not in FLOW_SIGNALS and s not in O2_SIGNALS]
    aux_panels: list[Panel] = []
    for ptitle, sigs, unit in (("Flow / 流量", flow, ""),
                               ("Flue gas O2 / 烟气含氧量", o2, "percent"),
                               ("Conditions / 工况参数", cond_sigs, "")):
        if not sigs:
            continue
        aux_panels.append(Panel(
            ptitle, "timeseries",
            [qx.series([SITE, one_of("signal", sigs)], ("signal", "unit", "branch"),
                       alias="$tag_signal ($tag_unit) $tag_branch")],
            w=8, h=7, unit=unit, interval="1m"))
    aux_section: list[Panel | Row] = []
    if aux_panels:
        aux_section = [Row("Flow, O2, conditions / 流量、氧含量、工况"), *aux_panels]
    env_conds = [SITE, one_of("signal", ENV_SIGNALS)]
    return Dashboard(
        uid, title,
        "Pollutant concentrations against limits, with flow, O2, quality flags, "
        "calibration changes and alerts.",
        time_from="now-2d", refresh="5m", links=NAV_LINKS,
        tags=("stationseal", "environment"),
        variables=variables,
        annotations=[
            _alerts_annotation(),
            _events_annotation("Calibration / config changes / 校准与配置变更",
                               CHANGE_EVENTS, "purple"),
        ],
        panels=[
            Row("Pollutants vs limits / 污染物与限值"),
            *pollutant_panels,
            *aux_section,
            Row("Flags and alerts / 标记与告警"),
            _flags_panel(env_conds),
            _flagged_panel(env_conds),
            _alert_table("Alerts at this site / 本站告警", [SITE], w=12),
        ],
    )


def env_uid(site_id: str) -> str:
    """Grafana uids are at most 40 characters of ``[A-Za-z0-9_-]``; site ids are not."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", site_id)
    uid = f"stationseal-env-{clean}"
    if len(uid) > 40 or clean != site_id:
        uid = f"{uid[:31]}-{zlib.crc32(site_id.encode()):08x}"
    return uid


# --------------------------------------------------------------------------- 5 ingest health


def _quantiles(metric: str) -> list[PromQ]:
    return [PromQ(f"histogram_quantile({q}, sum by (le) (rate({PROM}{metric}_bucket"
                  "[$__rate_interval])))", f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)]


def _rate(metric: str, by: str = "") -> PromQ:
    agg = f"sum by ({by})" if by else "sum"
    return PromQ(f"{agg} (rate({PROM}{metric}[$__rate_interval]))",
                 "{{" + by + "}}" if by else "")


def ingest_health() -> Dashboard:
    updown = [value_map({"0": ("down / 中断", "red"), "1": ("up / 正常", "green")})]
    stored = Q(
        qx.influxql('sum("readings") * 1000 / $__interval_ms', FRAME, fill="0"),
        "\n".join([qx.flux(FRAME, ["readings"]), "  |> group()", qx.fx_window("sum"),
                   "  |> map(fn: (r) => ({r with _value: float(v: r._value) * 1000000000.0 "
                   "/ float(v: int(v: v.windowPeriod))}))"]),
        alias="stored (InfluxDB, by gateway time) / 入库")
    return Dashboard(
        UID_INGEST, "Ingest health / 接收服务健康",
        "The central ingest service from its Prometheus metrics (/metrics), with the "
        "readings actually stored in InfluxDB beside the ones it reports written.",
        time_from="now-3h", refresh="30s", links=NAV_LINKS,
        tags=("stationseal", "ingest"),
        panels=[
            Row("State / 状态"),
            Panel("InfluxDB writes / 数据库写入", "stat",
                  [PromQ(f"min({PROM}influx_up)", instant=True)], w=4, h=4, mappings=updown,
                  thresholds=thresholds((None, "red"), (1, "green"))),
            Panel("MQTT connected / 消息连接", "stat",
                  [PromQ(f"min({PROM}mqtt_connected)", instant=True)], w=4, h=4,
                  mappings=updown, thresholds=thresholds((None, "red"), (1, "green"))),
            Panel("Backlog (unacknowledged frames) / 积压", "stat",
                  [PromQ(f"sum({PROM}backlog_messages)", instant=True)], w=4, h=4,
                  thresholds=thresholds((None, "green"), (1000, "orange"), (10000, "red"))),
            Panel("Webhook outbox / 待发送通知", "stat",
                  [PromQ(f"sum({PROM}webhook_outbox)", instant=True)], w=4, h=4,
                  thresholds=thresholds((None, "green"), (100, "orange"))),
            Panel("Lines refused by InfluxDB / 被拒写入", "stat",
                  [PromQ(f"sum(increase({PROM}write_rejected_lines_total[$__range]))",
                         instant=True)], w=4, h=4,
                  thresholds=thresholds((None, "green"), (1, "red")),
                  description="Kept in the ingest state database (write_rejects), never "
                              "dropped silently."),
            Panel("Write retries / 写入重试", "stat",
                  [PromQ(f"sum(increase({PROM}write_retries_total[$__range]))",
                         instant=True)], w=4, h=4,
                  thresholds=thresholds((None, "green"), (1, "orange"))),
            Row("Throughput / 吞吐"),
            Panel("Frames per second by result / 帧速率", "timeseries",
                  [_rate("frames_total", "result")], unit="reqps"),
            Panel("Readings per second: written vs stored / 读数速率", "timeseries",
                  [PromQ(f"sum(rate({PROM}readings_total[$__rate_interval]))",
                         "written (ingest) / 写入"), stored], unit="reqps",
                  description="Both lines should agree over minutes; stored is by the "
                              "gateway's frame time, so backfill shows up at the time it "
                              "was measured."),
            Panel("Backlog by worker / 各进程积压", "timeseries",
                  [PromQ(f"sum by (instance, shard) ({PROM}backlog_messages)",
                         "{{instance}} {{shard}}")], unit="short"),
            Panel("Write batches by result / 批量写入", "timeseries",
                  [_rate("write_batches_total", "result"),
                   PromQ(f"sum(rate({PROM}write_retries_total[$__rate_interval]))",
                         "retries / 重试")], unit="reqps"),
            Row("Latency / 延迟"),
            Panel("InfluxDB batch write latency / 写入延迟", "timeseries",
                  _quantiles("write_latency_seconds"), unit="s"),
            Panel("Gateway to stored latency / 端到端延迟", "timeseries",
                  _quantiles("reading_latency_seconds"), unit="s",
                  description="From a frame's creation at the gateway to its readings being "
                              "acknowledged as written: grows while a gateway backfills."),
            Row("Verification and alerts / 验证与告警"),
            Panel("Verification failures by reason / 验证失败", "timeseries",
                  [_rate("verification_failures_total", "reason")], unit="reqps",
                  custom=_bars()),
            Panel("Chain events by kind / 链事件", "timeseries",
                  [_rate("chain_events_total", "kind")], unit="reqps", custom=_bars()),
            Panel("Alert updates by rule / 告警更新", "timeseries",
                  [_rate("alerts_total", "rule")], unit="reqps", custom=_bars()),
            Panel("Webhook deliveries and key registry reloads / 通知发送与密钥重载",
                  "timeseries",
                  [PromQ(f"sum by (result) (rate({PROM}webhook_deliveries_total"
                         "[$__rate_interval]))", "webhook {{result}}"),
                   PromQ(f"sum by (result) (rate({PROM}registry_reloads_total"
                         "[$__rate_interval]))", "registry {{result}}")], unit="reqps"),
        ],
    )


# --------------------------------------------------------------------------- all


def all_dashboards(sites: Mapping[str, SiteInfo] | None = None) -> list[Dashboard]:
    out = [overview(), site_detail(), vehicle_lane(), environment(), ingest_health()]
    for sid in sorted(sites or {}):
        s = (sites or {})[sid]
        if s.kind in SITE_KIND_DOMAIN:
            out.append(environment(s))
    uids = [d.uid for d in out]
    dup = {u for u in uids if uids.count(u) > 1}
    if dup:
        raise ValueError(f"dashboard uid(s) {sorted(dup)} generated twice (site ids that "
                         "differ only in characters a uid cannot hold?)")
    return out
