"""Integrity findings about the central service itself, not about one frame.

A broker that forgot the ingest's session, a filesystem running out of space, a gateway
that creates new database series by the thousand: each is written as an ``integrity``
point and raised as an alert that says in words what happened and what it means for the
data, because the people reading it are enforcement staff, not the operators of the
broker. Built on the processor thread (the only one that touches the pipeline): other
threads hand them over with ``FairInbox.put_control``.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from ingest.alerts import SEVERITY_RANK
from ingest.convert import integrity_line
from ingest.detectors.base import Alert
from ingest.pipeline import Pipeline

#: kind -> (severity, English text, Chinese text); texts are formatted with the detail.
TEXTS: dict[str, tuple[str, str, str]] = {
    "low_disk": (
        "high",
        "Central storage almost full: {path} has {free_mb} MB free. Quarantine and state "
        "writes will fail soon; the ingest then stops and the broker keeps new frames.",
        "中心存储空间不足：{path} 仅剩 {free_mb} MB。隔离区和状态库即将无法写入；届时接收服务停止，"
        "新数据帧由消息代理暂存。"),
    "disk_recovered": (
        "low",
        "Central storage has space again: {path}.",
        "中心存储空间已恢复：{path}。"),
    "mqtt_session_lost": (
        "high",
        "The broker no longer had the ingest's session {client_id} (last seen {away_s} s "
        "ago, expiry {expiry_s} s): frames queued for it may be lost at the broker. "
        "Gateways resend every frame the ingest has not confirmed; chain gaps that remain "
        "are reported per gateway.",
        "消息代理已丢失接收服务的会话 {client_id}（上次在线 {away_s} 秒前，有效期 {expiry_s} 秒）："
        "为其排队的数据帧可能丢失。网关会重发所有未被确认的数据帧；仍缺失的序号将按网关报告。"),
    "series_cap": (
        "medium",
        "Gateway {gateway} tried to create more than {cap} new database series today "
        "({held} lines held back in the state database, not written). Readings of its "
        "existing series are stored as usual.",
        "网关 {gateway} 今日新建数据库序列超过上限 {cap}（{held} 行暂存于状态库，未写入）。"
        "其已有序列的读数照常存储。"),
}


def service_event(p: Pipeline, kind: str, detail: dict[str, Any], *,
                  gateway: str | None = None, site: str | None = None,
                  scope: str = "", when: float | None = None) -> None:
    """Add the integrity point to the current batch and raise the alert (merged with
    earlier firings of the same kind and scope)."""
    sev, en, zh = TEXTS[kind]
    now = time.time() if when is None else when
    p.batch.lines.append(integrity_line(
        kind=kind, severity=sev, site=site, gateway=gateway, seq=None, detail=detail,
        ts_ns=int(now * 1000) * 1_000_000 + (zlib.crc32(kind.encode()) % 1000) * 1000))
    p.metrics.inc("chain_events_total", kind=kind)
    if SEVERITY_RANK[sev] < p.min_rank:
        return
    fmt = {**detail}
    if "free_bytes" in detail:
        fmt["free_mb"] = int(detail["free_bytes"]) // 2**20
    site_ = site or "central"
    p.emit(Alert(
        rule="integrity", severity=sev, site=site_, instrument="", start=now, end=now,  # type: ignore[arg-type]
        summary_en=en.format_map(_Default(fmt)), summary_zh=zh.format_map(_Default(fmt)),
        evidence={"kind": kind, "gateway": gateway, **detail},
        key=f"integrity|{site_}|{gateway or 'central'}|{kind}|{scope}"))


class _Default(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"
