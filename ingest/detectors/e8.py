"""E8 — calibration abuse (pattern E8 of the falsification patterns).

Signature: span/zero coefficients changed, and a step change right after.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ingest.detectors.base import Alert, Detector, Severity, SiteInfo
from ingest.detectors.common import ENV_KINDS, is_parameter, num, window
from ingest.detectors.hourly import VALID_FLAGS, Origins
from stationseal.records import Sample, SiteEvent


@dataclass(slots=True)
class _Check:
    time: float
    targets: set[str] | None
    detail: dict[str, Any]
    origin: tuple[str, int] | None
    source: str


@dataclass(slots=True)
class _Inst:
    recent: deque[Sample] = field(default_factory=deque)
    last_dt: float = 0.0
    params: dict[str, float] = field(default_factory=dict)
    checks: list[_Check] = field(default_factory=list)


def _implied_change(detail: dict[str, Any]) -> float | None:
    """Relative change of readings a span coefficient change implies (new/old - 1)."""
    reg = str(detail.get("register") or detail.get("signal") or "")
    old, new = detail.get("old"), detail.get("new")
    if not reg.startswith("span_coeff") or isinstance(old, bool) or isinstance(new, bool) \
            or not isinstance(old, int | float) or not isinstance(new, int | float) or old <= 0:
        return None
    return float(new) / float(old) - 1


def _target(register: str) -> str | None:
    """``span_coeff.so2_mgm3`` -> ``so2_mgm3``; a register without channel -> None (all)."""
    return register.split(".", 1)[1] if "." in register else None


class CalibrationStepDetector(Detector):
    """E8 — a calibration register changed and the readings stepped right after.

    A calibration change is either a sealed event named in `events` (by default
    ``calibration_change``; detail
    ``register`` such as ``span_coeff.so2_mgm3``, or ``signal``; ``old``, ``new``) or a
    change in a sampled parameter register (``span_coeff.<signal>``,
    ``zero_offset.<signal>``). For the channel it names (every channel when it names
    none), the mean of valid samples in the `window_s` before the change is compared
    with the mean in the `window_s` after it (samples flagged C during the calibration
    itself are left out). With fewer than `min_samples` on a side — hourly data — the
    windows widen up to `max_window_s`, so that one noisy hour cannot make or hide a
    step. A relative change beyond `step_frac` alerts: real drift corrections move
    readings by a few percent, a step of a third is a reading being re-scaled. When the
    event says the span coefficient itself changed by more than `step_frac`, readings
    moving the same way by at least half that much also alert (the process may have
    drifted the other way meanwhile).

    Every register change is also an integrity event (I-CAL); E8 is about its effect.
    Severity: high when readings stepped down (emissions made to look lower), medium when
    up. No alert when the event names a span coefficient whose change (new/old) is itself
    within `step_frac` and does not explain the step: readings that happened to move
    around a routine calibration (a morning load ramp) are the process, not the register.
    Evidence: the register, old and new values, the before/after means and counts per
    channel, the windows, and the origins of the change and the samples.
    """

    rule: ClassVar[str] = "E8"
    kinds: ClassVar[tuple[str, ...]] = ENV_KINDS
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "step_frac": 0.3,
        "window_s": 3600.0,
        "min_samples": 3,
        "max_window_s": 6 * 3600.0,
        "events": ["calibration_change"],
    }

    def __init__(self, sites: dict[str, SiteInfo], params: dict[str, Any] | None = None):
        super().__init__(sites, params)
        self._inst: dict[tuple[str, str], _Inst] = {}
        self._events = set(self.p["events"])
        self.window_s = float(self.p["window_s"])
        self.max_window_s = max(self.window_s, float(self.p["max_window_s"]))

    def _state(self, site: str, inst: str) -> _Inst:
        st = self._inst.get((site, inst))
        if st is None:
            st = self._inst[(site, inst)] = _Inst()
        return st

    def on_event(self, e: SiteEvent) -> list[Alert]:
        if e.event not in self._events:
            return []
        reg = e.detail.get("register") or e.detail.get("signal") or ""
        tgt = _target(str(reg)) if "." in str(reg) else (str(reg) or None)
        st = self._state(e.site, e.instrument)
        st.checks.append(_Check(e.time, {tgt} if tgt else None, dict(e.detail), e.origin,
                                e.event))
        return []

    def on_sample(self, s: Sample) -> list[Alert]:
        st = self._state(s.site, s.instrument)
        for sig, v in s.values.items():
            if not is_parameter(sig):
                continue
            old = st.params.get(sig)
            st.params[sig] = v
            if old is not None and v != old:
                tgt = _target(sig)
                st.checks.append(_Check(s.time, {tgt} if tgt else None,
                                        {"register": sig, "old": old, "new": v}, s.origin,
                                        "register_sample"))
        if st.recent:
            st.last_dt = s.time - st.recent[-1].time
        st.recent.append(s)
        # Keep two widest windows: a change sealed a window late still finds its "before".
        cutoff = s.time - 2 * self.max_window_s
        if st.checks:
            cutoff = min(cutoff, min(c.time for c in st.checks) - self.max_window_s)
        while st.recent[0].time < cutoff:
            st.recent.popleft()
        out: list[Alert] = []
        if st.checks:
            # Dense data fills the short window; sparse (hourly) data waits for the wide one.
            wait = self.window_s if st.last_dt * self.p["min_samples"] <= self.window_s \
                else self.max_window_s
            due = [c for c in st.checks if c.time + wait < s.time]
            if due:
                st.checks = [c for c in st.checks if c.time + wait >= s.time]
                for c in due:
                    out += self._evaluate(s.site, s.instrument, st, c)
        return out

    def _evaluate(self, site: str, inst: str, st: _Inst, c: _Check) -> list[Alert]:
        w, wmax = self.window_s, self.max_window_s
        before = [x for x in st.recent if c.time - wmax <= x.time < c.time]
        after = [x for x in st.recent if c.time <= x.time <= c.time + wmax]
        sigs = c.targets
        if sigs is None:
            sigs = {k for x in before for k in x.values if not is_parameter(k)}
        steps: dict[str, dict[str, Any]] = {}
        n_min = int(self.p["min_samples"])
        frac = float(self.p["step_frac"])
        implied = _implied_change(c.detail)
        big_register = implied is not None and abs(implied) > frac
        used = [c.time, c.time]
        for sig in sorted(sigs):
            b_all = [(x.time, x.values[sig]) for x in before
                     if sig in x.values and x.flags.get(sig, "N") in VALID_FLAGS]
            a_all = [(x.time, x.values[sig]) for x in after
                     if sig in x.values and x.flags.get(sig, "N") in VALID_FLAGS]
            b = [tv for tv in b_all if tv[0] >= c.time - w]
            a = [tv for tv in a_all if tv[0] <= c.time + w]
            if len(b) < n_min:
                b = b_all[-n_min:]
            if len(a) < n_min:
                a = a_all[:n_min]
            if len(b) < n_min or len(a) < n_min:
                continue
            mb, ma = sum(v for _, v in b) / len(b), sum(v for _, v in a) / len(a)
            if mb <= 0:
                continue
            change = (ma - mb) / mb
            # A register cut of 45 % that moved hourly readings by "only" 28 % (the process
            # rose meanwhile) is still the register at work: half its effect suffices.
            follows = big_register and implied is not None and change * implied > 0 \
                and abs(change) >= abs(implied) / 2
            if abs(change) > frac or follows:
                used = [min(used[0], b[0][0]), max(used[1], a[-1][0])]
                steps[sig] = {"before_mean": num(mb), "after_mean": num(ma),
                              "change_pct": num(100 * change, 3), "before_n": len(b),
                              "after_n": len(a)}
        if not steps:
            return []
        sev: Severity = "high" if any(v["change_pct"] < 0 for v in steps.values()) \
            else "medium"
        if implied is not None:
            for v in steps.values():
                v["explained_by_register"] = abs(v["change_pct"] - 100 * implied) <= \
                    50 * self.p["step_frac"]
            if abs(implied) <= self.p["step_frac"] and \
                    not any(v["explained_by_register"] for v in steps.values()):
                return []  # the register barely moved: the step is the process, not it
        origins = Origins()
        origins.add(c.origin)
        for x in before + after:
            if used[0] <= x.time <= used[1]:
                origins.add(x.origin)
        span_min = max(c.time - used[0], used[1] - c.time) / 60
        reg = c.detail.get("register") or c.detail.get("signal") or "calibration"
        ev: dict[str, Any] = {
            "finding": "step_after_calibration",
            "change": {k: v for k, v in c.detail.items()},
            "source": c.source,
            "steps": steps,
            "step_threshold_pct": 100 * self.p["step_frac"],
            "register_implied_change_pct": None if implied is None else num(100 * implied, 3),
            "window_before": window(used[0], c.time),
            "window_after": window(c.time, used[1]),
        }
        if origins:
            ev["origins"] = origins.to_json()
        desc = "; ".join(f"{k} {v['before_mean']} → {v['after_mean']} ({v['change_pct']:+} %)"
                         for k, v in steps.items())
        old, new = c.detail.get("old"), c.detail.get("new")
        chg = f" from {old} to {new}" if old is not None and new is not None else ""
        chg_zh = f"由{old}改为{new}" if old is not None and new is not None else "被修改"
        return [Alert(
            rule=self.rule, severity=sev, site=site, instrument=inst,
            start=used[0], end=used[1],
            summary_en=(f"Calibration register {reg} changed{chg} and readings stepped within "
                        f"{span_min:.0f} min: {desc} (threshold {100 * self.p['step_frac']:.0f} %)"
                        ": calibration used to rescale the data?"),
            summary_zh=(f"校准参数{reg}{chg_zh}后{span_min:.0f}分钟内读数突变：{desc}"
                        f"（阈值{100 * self.p['step_frac']:.0f}%）："
                        "疑似借校准之名篡改量程/零点系数，人为压低或改变监测数据。"),
            evidence=ev, key=f"E8|{site}|{inst}",
        )]

    def finish(self) -> list[Alert]:
        out: list[Alert] = []
        for (site, inst), st in self._inst.items():
            for c in st.checks:
                out += self._evaluate(site, inst, st, c)
            st.checks = []
        return out
