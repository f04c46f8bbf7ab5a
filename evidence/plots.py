"""Plots of the signals an alert rests on (matplotlib, PNG and SVG).

Which signals: those of the alert's scope (its instrument, or its lane's instruments, or
the site) whose names occur in the alert (key, evidence, findings), else the busiest few.
Each signal is drawn for the scope instrument, with the same signal at the site's other
instruments (the analyzer behind a data logger, the lane's other sensor) and at the
neighbour sites (dashed) as the comparison traces; the site's limit and any threshold named
after the signal as horizontal lines; the alert's interval shaded, each finding's interval
outlined. ``plots/plots.json`` says what was drawn (points per trace), so an empty plot is
caught by a test rather than by an officer.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evidence.records import Record
from evidence.reproduce import Reproduction
from ingest.detectors.base import SiteInfo
from stationseal.records import Sample, from_rfc3339

MAX_SIGNALS = 4
CJK_FONTS = ["WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC",
             "Noto Sans CJK JP", "DejaVu Sans"]


def _scope(alert: dict[str, Any], samples: list[Sample]) -> set[str]:
    site = alert.get("site")
    insts = {s.instrument for s in samples if s.site == site}
    inst = str(alert.get("instrument") or "")
    lane = (alert.get("evidence") or {}).get("lane")
    if not (isinstance(lane, str) and lane) and "." in inst:
        lane = inst.rsplit(".", 1)[0]
    if inst in insts and not (isinstance(lane, str) and lane):
        return {inst}
    if isinstance(lane, str) and lane:
        lane_insts = {i for i in insts if i.startswith(lane + ".")}
        if lane_insts:
            return lane_insts
    return insts


def choose_signals(alert: dict[str, Any], samples: list[Sample], scope: set[str]
                   ) -> list[str]:
    text = json.dumps({k: alert.get(k) for k in ("key", "evidence", "findings",
                                                 "summary_en")}, ensure_ascii=False)
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        if s.instrument in scope and s.site == alert.get("site"):
            for k in s.values:
                counts[k] += 1
    # The lane controller's state is context, not a measurement, unless the alert names it.
    named = sorted((sig for sig in counts if sig in text and (
        not sig.startswith("lane_") or f'"{sig}"' in text)),
                   key=lambda sig: (-text.count(sig), sig))
    if named:
        return named[:MAX_SIGNALS]
    return sorted(counts, key=lambda k: -counts[k])[:MAX_SIGNALS]


def _thresholds(alert: dict[str, Any], signal: str, site: SiteInfo | None
                ) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    if site is not None and signal in site.limits:
        out.append(("limit 限值", float(site.limits[signal])))
    for f in alert.get("findings") or []:
        for k, v in (f.get("thresholds") or {}).items():
            # Only a threshold named exactly after the signal (max_o2_pct on o2_pct), not
            # one on a quantity derived from it (threshold_co_co2_pct is CO+CO2).
            name = k
            for pre in ("threshold_", "min_", "max_", "limit_"):
                name = name.removeprefix(pre)
            if name == signal and isinstance(v, int | float) and not isinstance(v, bool):
                out.append((k, float(v)))
    return out


def _envelope(pts: list[tuple[float, float]], buckets: int = 1500
              ) -> list[tuple[float, float]]:
    """A long trace drawn as each time bucket's first, minimum, maximum and last point:
    what a screen can show of a day at 1 Hz, with flat runs and spikes kept."""
    if len(pts) <= 4 * buckets:
        return pts
    t0, t1 = pts[0][0], pts[-1][0]
    width = (t1 - t0) / buckets or 1.0
    out: list[tuple[float, float]] = []
    cur: list[tuple[float, float]] = []
    edge = t0 + width
    for p in pts:
        if p[0] >= edge and cur:
            lo, hi = min(cur, key=lambda q: q[1]), max(cur, key=lambda q: q[1])
            out += sorted({cur[0], lo, hi, cur[-1]})
            cur = []
            edge = t0 + width * (int((p[0] - t0) / width) + 1)
        cur.append(p)
    if cur:
        lo, hi = min(cur, key=lambda q: q[1]), max(cur, key=lambda q: q[1])
        out += sorted({cur[0], lo, hi, cur[-1]})
    return out


def make_plots(root: Path, alert: dict[str, Any], records: list[Record],
               sites: dict[str, SiteInfo], rep: Reproduction) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = CJK_FONTS
    plt.rcParams["axes.unicode_minus"] = False
    plt.rcParams["svg.fonttype"] = "path"

    samples = [r for r in records if isinstance(r, Sample)]
    t0, t1 = from_rfc3339(alert["start"]), from_rfc3339(alert["end"])
    pad = max(60.0, 0.5 * (t1 - t0))
    lo, hi = t0 - pad, t1 + pad
    scope = _scope(alert, samples)
    signals = choose_signals(alert, samples, scope)
    site_id = str(alert.get("site"))
    site = sites.get(site_id)
    neighbours = set(site.neighbours) if site is not None else set()
    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    info: dict[str, Any] = {"signals": [], "window": [alert["start"], alert["end"]],
                            "scope": sorted(scope)}
    if not signals:
        info["note"] = "no sample of the alert's scope in the package"
        (out_dir / "plots.json").write_text(json.dumps(info, indent=2) + "\n")
        return info
    fig, axes = plt.subplots(len(signals), 1, figsize=(10, 2.6 * len(signals) + 0.8),
                             sharex=True, squeeze=False)
    for ax, sig in zip(axes[:, 0], signals, strict=True):
        traces: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for s in samples:
            v = s.values.get(sig)
            if v is None or not lo <= s.time <= hi:
                continue
            if s.site == site_id or s.site in neighbours:
                traces[(s.site, s.instrument)].append((s.time, v))
        drawn = []
        for (sid, inst), pts in sorted(traces.items(), key=lambda kv: (
                kv[0][0] != site_id, kv[0][1] not in scope, kv[0])):
            pts.sort()
            n_points = len(pts)
            pts = _envelope(pts)
            xs = [datetime.fromtimestamp(t, UTC) for t, _ in pts]
            ys = [v for _, v in pts]
            main = sid == site_id and inst in scope
            label = inst if sid == site_id else f"{sid} (neighbour 邻站)"
            if sid == site_id and not main:
                label += " (comparison 对照)"
            ax.plot(xs, ys, lw=1.6 if main else 1.0, ls="-" if main else "--",
                    marker="." if n_points < 80 else None,
                    # a sparse trace (a register read on change) holds its value until the
                    # next reading: drawn as steps, not as a slope nobody measured
                    drawstyle="steps-post" if n_points < 80 else "default", ms=3, label=label,
                    zorder=3 if main else 2)
            drawn.append({"site": sid, "instrument": inst, "points": n_points,
                          "main": main})
        for name, y in _thresholds(alert, sig, site):
            ax.axhline(y, color="crimson", ls=":", lw=1.2, label=f"{name} = {y:g}")
        ax.axvspan(datetime.fromtimestamp(t0, UTC), datetime.fromtimestamp(max(t1, t0 + 1), UTC),
                   color="orange", alpha=0.22, label="flagged interval 告警区间")
        for f in alert.get("findings") or []:
            try:
                a, b = from_rfc3339(f["start"]), from_rfc3339(f["end"])
            except (KeyError, ValueError, TypeError):
                continue
            if (a, b) != (t0, t1):
                ax.axvspan(datetime.fromtimestamp(a, UTC),
                           datetime.fromtimestamp(max(b, a + 1), UTC), fill=False,
                           edgecolor="darkorange", lw=1.0, ls="--")
        ax.set_ylabel(sig)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.8)
        info["signals"].append({"signal": sig, "traces": drawn,
                                "thresholds": _thresholds(alert, sig, site)})
    axes[-1, 0].xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M:%S", tz=UTC))  # type: ignore[no-untyped-call]
    axes[-1, 0].set_xlabel("time (UTC) 时间")
    title = f"{alert.get('rule')} · {site_id} · {alert.get('instrument') or ''}"
    fig.suptitle(f"{title}\n{alert.get('summary_zh', '')[:70]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "signals.png", dpi=110)
    fig.savefig(out_dir / "signals.svg", metadata={"Date": None})
    plt.close(fig)
    info["reproduced"] = rep.reproduced
    (out_dir / "plots.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    return info
