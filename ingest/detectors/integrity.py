"""Integrity rules I-GAP … I-OFFLINE: alerts from integrity events, in both domains.

Gateways seal events such as ``data_dropped`` or ``clock_jump`` (docs/wire-format.md);
the ingest service turns chain verdicts and rejected frames into events named
``chain_gap``, ``chain_fork``, ``chain_sequence_reset``, ``chain_replay`` or the rejection
reason (``bad_signature``, ``unknown_key``, ...) — :func:`event_from_chain_issue` and
:func:`event_from_rejection` build them. Each such event becomes an alert; an event that
happens while a vehicle test is running or while the site's latest reading exceeds its
limit is raised to `during_severity`, because losing data exactly then is what a cheat
needs.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Category, Detector, SiteInfo
from ingest.detectors.common import ALL_KINDS, num
from ingest.detectors.hourly import VALID_FLAGS, origins_of
from stationseal.chain import ChainIssue
from stationseal.records import Sample, SiteEvent, to_rfc3339

_COMMON_DEFAULTS: dict[str, Any] = {
    "during_severity": "high",
    "test_hold_s": 30.0,
    "exceed_hold_s": 3600.0,
}


def event_from_chain_issue(issue: ChainIssue, site: str, time: float) -> SiteEvent:
    """A chain verdict as the event the integrity rules consume (instrument = gateway)."""
    detail = {"gateway": issue.gateway_id, "seq": issue.seq, **issue.detail}
    return SiteEvent(time, site, issue.gateway_id, f"chain_{issue.kind}", detail,
                     (issue.gateway_id, issue.seq))


def event_from_rejection(reason: str, gateway: str, site: str, time: float,
                         detail: dict[str, Any] | None = None) -> SiteEvent:
    """A quarantined frame (``stationseal.verify.Rejected.reason``) as an event."""
    return SiteEvent(time, site, gateway, reason, {"gateway": gateway, **(detail or {})})


class _IntegrityRule(Detector):
    """Shared behaviour: event name -> alert, raised during tests and exceedances."""

    kinds: ClassVar[tuple[str, ...]] = ALL_KINDS
    category: ClassVar[Category] = "integrity"
    EVENTS: ClassVar[tuple[str, ...]] = ()
    TEXT_EN: ClassVar[str] = ""
    TEXT_ZH: ClassVar[str] = ""

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        for k in ("severity", "during_severity"):
            if self.p[k] not in ("low", "medium", "high"):
                raise ValueError(f"detector {self.rule}: {k} must be low, medium or high")
        #: site -> instrument -> latest sample: enough to tell "during a test/exceedance".
        self._last: dict[str, dict[str, Sample]] = {}
        #: site -> {lane or instrument: (test id, start time)} from test_start/test_end.
        self._tests: dict[str, dict[str, tuple[str, float]]] = {}

    def on_sample(self, s: Sample) -> list[Alert]:
        per_site = self._last.get(s.site)
        if per_site is None:
            per_site = self._last[s.site] = {}
        per_site[s.instrument] = s
        return []

    def _during(self, e: SiteEvent) -> dict[str, Any] | None:
        """What was going on at the site when the event happened, if it matters."""
        open_tests = self._tests.get(e.site)
        if open_tests:
            tid, since = next(iter(open_tests.values()))
            return {"test_id": tid, "test_since": to_rfc3339(since)}
        limits = self.sites[e.site].limits
        exceed = bool(limits) and self.sites[e.site].kind != "vehicle_inspection"
        for s in self._last.get(e.site, {}).values():
            if s.test is not None and abs(e.time - s.time) <= self.p["test_hold_s"]:
                return {"test_id": s.test.id, "last_sample": to_rfc3339(s.time)}
            if exceed and abs(e.time - s.time) <= self.p["exceed_hold_s"]:
                for sig, lim in limits.items():
                    v = s.values.get(sig)
                    if v is not None and v > lim and s.flags.get(sig, "N") in VALID_FLAGS:
                        return {"exceedance": {"signal": sig, "value": num(v), "limit": lim,
                                               "time": to_rfc3339(s.time)}}
        return None

    def _track_tests(self, e: SiteEvent) -> None:
        lane = str(e.detail.get("lane") or e.instrument)
        if e.event == "test_start":
            self._tests.setdefault(e.site, {})[lane] = (str(e.detail.get("test_id", "")), e.time)
        elif e.event == "test_end":
            self._tests.get(e.site, {}).pop(lane, None)

    def on_event(self, e: SiteEvent) -> list[Alert]:
        if e.event in ("test_start", "test_end"):
            self._track_tests(e)
            return []
        if e.event not in self.EVENTS:
            return []
        during = self._during(e)
        sev = self.p["during_severity"] if during else self.p["severity"]
        d = e.detail
        detail_text = json.dumps(d, ensure_ascii=False, sort_keys=True, default=str)
        fields = {k: d.get(k, "?") for k in ("first_seq", "last_seq", "count", "frames",
                                             "readings", "jump_s", "signal", "old", "new",
                                             "error", "seq", "gateway")}
        en = self.TEXT_EN.format(event=e.event, detail=detail_text, **fields)
        zh = self.TEXT_ZH.format(event=e.event, detail=detail_text, **fields)
        ev: dict[str, Any] = {"finding": e.event, "detail": d}
        if during:
            ev["during"] = during
            if "test_id" in during:
                en += f" This happened during vehicle test {during['test_id']}."
                zh += f"该事件发生在检测过程中（检测编号{during['test_id']}）。"
            else:
                x = during["exceedance"]
                en += (f" This happened while {x['signal']} read {x['value']}, above its "
                       f"limit {x['limit']}.")
                zh += f"该事件发生在{x['signal']}超标期间（{x['value']}，限值{x['limit']}）。"
        if e.origin is not None:
            ev["origins"] = origins_of(e.origin)
        test_id = during.get("test_id") if during else None
        return [Alert(rule=self.rule, severity=sev, site=e.site, instrument=e.instrument,
                      start=e.time, end=e.time, summary_en=en, summary_zh=zh, evidence=ev,
                      test_id=test_id)]


_CONTEXT_DOC = """
    "During" means: a vehicle test is running (between ``test_start`` and ``test_end``
    events, or a sample carrying a test within `test_hold_s` seconds of the event), or the
    latest reading of an environmental site, within `exceed_hold_s` seconds, is above its
    limit. Then the severity is `during_severity`.
"""


class ChainGapRule(_IntegrityRule):
    """I-GAP — sequence numbers that never arrived and no signed drop covers them.

    Event ``chain_gap`` (detail ``first_seq``, ``last_seq``, ``count``), from the ingest
    chain tracker once the gap is overdue. Frames lost in transit or withheld: the site's
    data for that span cannot be shown complete. Severity `severity`; `during_severity`
    during a test or exceedance.
    """

    rule: ClassVar[str] = "I-GAP"
    EVENTS: ClassVar[tuple[str, ...]] = ("chain_gap",)
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "medium", **_COMMON_DEFAULTS}
    TEXT_EN = ("Gateway {gateway}: frames {first_seq}–{last_seq} ({count}) never arrived and "
               "no signed data_dropped event covers them.")
    TEXT_ZH = ("网关{gateway}：序号{first_seq}至{last_seq}的数据帧（共{count}帧）缺失，"
               "且无签名的丢弃记录。")


class ChainForkRule(_IntegrityRule):
    """I-FORK — two different histories signed under one gateway identity.

    Events ``chain_fork`` (same sequence, different content, or a broken hash link) and
    ``chain_sequence_reset`` (a new boot re-uses sequence numbers: storage wiped or the
    gateway impersonated). Someone holding the key rewrote data, or the gateway was
    cloned or restored. Severity `severity` (high by default); `during_severity` during a
    test or exceedance.
    """

    rule: ClassVar[str] = "I-FORK"
    EVENTS: ClassVar[tuple[str, ...]] = ("chain_fork", "chain_sequence_reset")
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "high", **_COMMON_DEFAULTS}
    TEXT_EN = ("Gateway {gateway}: {event} at sequence {seq}: two different histories were "
               "signed with the same identity (data rewritten, gateway cloned or reset).")
    TEXT_ZH = ("网关{gateway}：序号{seq}出现{event}，同一身份签出两份不同的数据历史："
               "疑似数据被改写、网关被克隆或重置。")


class ChainReplayRule(_IntegrityRule):
    """I-REPLAY — a frame re-sent after its sequence was already accepted.

    Event ``chain_replay``. The replayed frame is not stored twice; the alert exists
    because someone (or a misconfigured resend) pushes old signed data. Severity
    `severity`; `during_severity` during a test or exceedance.
    """

    rule: ClassVar[str] = "I-REPLAY"
    EVENTS: ClassVar[tuple[str, ...]] = ("chain_replay",)
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "medium", **_COMMON_DEFAULTS}
    TEXT_EN = "Gateway {gateway}: frame {seq} was replayed after it had been accepted."
    TEXT_ZH = "网关{gateway}：已接收的序号{seq}数据帧被重放。"


class SignatureRule(_IntegrityRule):
    """I-SIG — frames whose signature or key does not check out.

    Events ``bad_signature`` / ``chain_bad_signature``, ``unknown_key``, ``revoked_key``,
    ``key_expired``, ``key_not_yet_valid``, ``site_mismatch``, ``instrument_mismatch``
    (the quarantine reasons of stationseal.verify). Altered frames, a forged or retired
    key, or a key used for a site or instrument it is not bound to. Severity `severity`
    (high by default); `during_severity` during a test or exceedance.
    """

    rule: ClassVar[str] = "I-SIG"
    EVENTS: ClassVar[tuple[str, ...]] = ("bad_signature", "chain_bad_signature", "unknown_key",
                                         "revoked_key", "key_expired", "key_not_yet_valid",
                                         "site_mismatch", "instrument_mismatch")
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "high", **_COMMON_DEFAULTS}
    TEXT_EN = ("Gateway {gateway}: frame rejected ({event}): data altered or signed with a "
               "key not valid for it.")
    TEXT_ZH = "网关{gateway}：数据帧被拒收（{event}）：疑似数据被篡改或使用无效密钥签名。"


class DataDroppedRule(_IntegrityRule):
    """I-DROP — the gateway itself had to drop data (buffer overflow) and signed that.

    Event ``data_dropped`` (detail ``first_seq``, ``last_seq``, ``frames``, ``readings``).
    Honest but a hole in the record. Severity `severity`; `during_severity` during a test or
    exceedance.

    For offline detection over records files. The live ingest does not run this rule:
    there every signed drop is an integrity finding of the ingest itself (``data_dropped``,
    rule ``integrity``, severity medium), raised whether or not detection runs, so one
    drop is one alert (ingest/engine_hook.py ``RAISED_BY_INGEST``).
    """

    rule: ClassVar[str] = "I-DROP"
    EVENTS: ClassVar[tuple[str, ...]] = ("data_dropped",)
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "medium", **_COMMON_DEFAULTS}
    TEXT_EN = ("Gateway dropped frames {first_seq}–{last_seq} ({frames} frames, {readings} "
               "readings) and sealed the drop.")
    TEXT_ZH = ("网关丢弃了序号{first_seq}至{last_seq}的数据（{frames}帧，{readings}条读数），"
               "并已签名记录。")


class ClockJumpRule(_IntegrityRule):
    """I-CLOCK — the gateway's wall clock jumped.

    Event ``clock_jump`` (detail ``jump_s``). Time shifts can move readings out of a test
    or an hour. Routine after boot-time NTP sync, hence severity `severity` (low);
    `during_severity` during a test or exceedance.
    """

    rule: ClassVar[str] = "I-CLOCK"
    EVENTS: ClassVar[tuple[str, ...]] = ("clock_jump",)
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "low", **_COMMON_DEFAULTS}
    TEXT_EN = "Gateway clock jumped by {jump_s} s."
    TEXT_ZH = "网关时钟跳变{jump_s}秒。"


class CalibrationChangeRule(_IntegrityRule):
    """I-CAL — a calibration or configuration register changed.

    Events ``calibration_change`` and ``config_change`` (detail ``signal``, ``old``,
    ``new``). Routine on schedule (E8 judges the effect on readings), hence severity
    `severity` (low); `during_severity` during a test or exceedance.
    """

    rule: ClassVar[str] = "I-CAL"
    EVENTS: ClassVar[tuple[str, ...]] = ("calibration_change", "config_change")
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "low", **_COMMON_DEFAULTS}
    TEXT_EN = "{event}: {signal} changed from {old} to {new}."
    TEXT_ZH = "参数变更（{event}）：{signal}由{old}改为{new}。"


class OfflineRule(_IntegrityRule):
    """I-OFFLINE — instrument or gateway unavailable.

    Events ``instrument_fault``, ``instrument_disconnected`` (gateway) and
    ``gateway_offline`` (ingest: no frames within the expected interval). Faults happen;
    a fault exactly during a test or an exceedance is the classic way to lose inconvenient
    data. Severity `severity` (low); `during_severity` during a test or exceedance.
    """

    rule: ClassVar[str] = "I-OFFLINE"
    EVENTS: ClassVar[tuple[str, ...]] = ("instrument_fault", "instrument_disconnected",
                                         "gateway_offline")
    DEFAULTS: ClassVar[dict[str, Any]] = {"severity": "low", **_COMMON_DEFAULTS}
    TEXT_EN = "{event}: {error}."
    TEXT_ZH = "仪器或网关离线（{event}）：{error}。"


for _cls in (ChainGapRule, ChainForkRule, ChainReplayRule, SignatureRule, DataDroppedRule,
             ClockJumpRule, CalibrationChangeRule, OfflineRule):
    _cls.__doc__ = (_cls.__doc__ or "").rstrip() + "\n" + _CONTEXT_DOC
del _cls
