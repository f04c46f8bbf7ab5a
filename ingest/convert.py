"""Verified frames -> InfluxDB points and detector records.

Timestamps: a reading's time is a whole millisecond (the frame carries ms offsets). Two
readings of one series in the same millisecond (a fast poll, a clock stepped back between
two frames) must not overwrite each other, yet a redelivered frame must overwrite itself
exactly. So every point of a frame gets ``ms * 1e6 + (seq % 1000) * 1000 + k`` ns, where
``k`` counts earlier readings of the same series and millisecond in the same frame: the
visible millisecond is untouched, the sub-millisecond part is a deterministic function of
the frame. docs/influx-schema.md has the full schema.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from typing import Any

from ingest.lineproto import escape_key, escape_string, line
from stationseal.frame import Frame
from stationseal.records import Sample, SiteEvent

READING = "reading"
EVENT = "event"
FRAME = "frame"
INTEGRITY = "integrity"
ALERT = "alert"

_MAX_EXACT = 2**53
_Q = {q: escape_string(q) for q in "NMDCFSTB"}


def frame_ts(ms: int, seq: int, k: int = 0) -> int:
    return ms * 1_000_000 + (seq % 1000) * 1000 + min(k, 999)


def hash_prefix(f: Frame) -> str:
    return f.frame_hash.hex()[:16]


class LineBuilder:
    """Caches each series' escaped measurement+tag prefix: escaping is the costly part and
    a site sends the same few hundred series all day."""

    def __init__(self, cache_size: int = 200_000):
        self._prefix: dict[tuple[str, ...], str] = {}
        self._cache_size = cache_size

    def _series(self, key: tuple[str, ...]) -> str:
        p = self._prefix.get(key)
        if p is None:
            if len(self._prefix) >= self._cache_size:
                self._prefix.clear()
            site, gw, inst, sig, unit, branch = key
            p = (
                f"{READING}"
                + (f",branch={escape_key(branch)}" if branch else "")
                + f",gateway={escape_key(gw)},instrument={escape_key(inst)}"
                f",signal={escape_key(sig)},site={escape_key(site)},unit={escape_key(unit)}"
            )
            self._prefix[key] = p
        return p

    def frame_lines(self, f: Frame, branch: str = "") -> list[str]:
        site, gw, seq = f.site, f.gateway_id, f.seq
        seq_off = (seq % 1000) * 1000
        tail = f',seq={seq}i,frame="{hash_prefix(f)}"'
        out: list[str] = []
        series = self._series
        chan: dict[tuple[str, str, str], str] = {}
        if f.rows:
            # Decoded without Reading objects: straight from the channel table.
            cms = f.created_ms
            cpre = [series((site, gw, i, sg, u, branch)) for i, sg, u in f.channels]
            rows = f.rows
            prefixes = [cpre[r[0]] for r in rows]
            mss = [cms + r[1] for r in rows]
            vq = [(r[2], r[3]) for r in rows]
        else:
            prefixes = []
            mss = []
            for r in f.readings:
                ck = (r.instrument, r.signal, r.unit)
                prefix = chan.get(ck)
                if prefix is None:
                    prefix = chan[ck] = series((site, gw, r.instrument, r.signal, r.unit,
                                                branch))
                prefixes.append(prefix)
                mss.append(round(r.time * 1000))
            vq = [(r.value, r.quality) for r in f.readings]
        n_readings = len(vq)
        # Same series twice in one millisecond is rare: only then count occurrences.
        ks: list[int] | None = None
        if len(set(zip(prefixes, mss, strict=True))) != n_readings:
            seen: dict[tuple[str, int], int] = {}
            ks = []
            for key in zip(prefixes, mss, strict=True):
                k = seen.get(key, 0)
                seen[key] = k + 1
                ks.append(min(k, 999))
        isfinite = math.isfinite
        vals = [x[0] for x in vq]
        if (ks is None and set(map(type, vals)) == {float} and all(map(isfinite, vals))
                and {x[1] for x in vq} <= _Q.keys()):
            # The usual frame: finite floats, known flags, no same-millisecond repeats.
            # One comprehension instead of the general loop below (same lines).
            qmap = _Q
            out = [
                f"{p} value={v!r},quality={qmap[q]}{tail} {m * 1_000_000 + seq_off}"
                for p, (v, q), m in zip(prefixes, vq, mss, strict=True)
            ]
            vq = []
        for i, (v, quality) in enumerate(vq):
            if type(v) is float and isfinite(v):
                fv = f"value={v!r}"
            elif type(v) is int and -_MAX_EXACT <= v <= _MAX_EXACT:
                fv = f"value={float(v)!r}"
            else:
                # Text values, huge integers and NaN/inf keep their exact form as text:
                # one field type per field name, or InfluxDB refuses the whole series.
                fv = f"text={escape_string(str(v))}"
            q = _Q.get(quality) or escape_string(quality)
            ts = mss[i] * 1_000_000 + seq_off + (ks[i] if ks is not None else 0)
            out.append(f"{prefixes[i]} {fv},quality={q}{tail} {ts}")
        ev_seen: dict[tuple[str, str, int], int] = {}
        for e in f.events:
            ms = round(e.time * 1000)
            ek = (e.instrument, e.kind, ms)
            k = ev_seen.get(ek, 0)
            ev_seen[ek] = k + 1
            tags = {"site": site, "gateway": gw, "instrument": e.instrument, "kind": e.kind}
            if branch:
                tags["branch"] = branch
            out.append(line(EVENT, tags, {
                "detail": json.dumps(e.detail, sort_keys=True, default=str,
                                     separators=(",", ":")),
                "seq": seq,
                "frame": hash_prefix(f),
            }, frame_ts(ms, seq, k)))
        meta_tags = {"site": site, "gateway": gw}
        if branch:
            meta_tags["branch"] = branch
        out.append(line(FRAME, meta_tags, {
            "seq": seq,
            "hash": f.frame_hash.hex(),
            "prev_hash": f.prev_hash.hex(),
            "key_id": f.key_id,
            "boot_id": f.boot_id.hex(),
            "clock_sync": f.clock_sync,
            "readings": f.reading_count,
            "events": len(f.events),
        }, frame_ts(f.created_ms, seq)))
        return out


def integrity_line(
    *,
    kind: str,
    severity: str,
    site: str | None,
    gateway: str | None,
    seq: int | None,
    detail: dict[str, Any] | str,
    ts_ns: int,
    quarantine_id: int | None = None,
) -> str:
    fields: dict[str, Any] = {
        "detail": detail if isinstance(detail, str)
        else json.dumps(detail, sort_keys=True, default=str, separators=(",", ":")),
        "count": 1,
    }
    if seq is not None:
        fields["seq"] = seq
    if quarantine_id is not None:
        fields["quarantine_id"] = quarantine_id
    return line(INTEGRITY, {"site": site or "unknown", "gateway": gateway or "unknown",
                            "kind": kind, "severity": severity}, fields, ts_ns)


def alert_ts(start: float, key: str) -> int:
    """Fixed for the life of an alert (its start and key), so each update overwrites the
    alert's one point; the key hash spreads alerts that start in the same millisecond."""
    return round(start * 1000) * 1_000_000 + zlib.crc32(key.encode()) % 1_000_000


def alert_line(a: dict[str, Any], start: float) -> str:
    fields: dict[str, Any] = {
        "key": a["key"],
        "instrument": a.get("instrument", ""),
        "state": a.get("state", "new"),
        "count": int(a.get("count", 1)),
        "start": a["start"],
        "end": a["end"],
        "summary_en": a.get("summary_en", ""),
        "summary_zh": a.get("summary_zh", ""),
        "evidence": json.dumps(a.get("evidence", {}), sort_keys=True, default=str,
                               separators=(",", ":")),
    }
    if a.get("test_id"):
        fields["test_id"] = a["test_id"]
    return line(ALERT, {"site": a["site"], "rule": a["rule"], "severity": a["severity"]},
                fields, alert_ts(start, a["key"]))


# --------------------------------------------------------------------------- records


def frame_records(f: Frame) -> list[Sample | SiteEvent]:
    """Samples (a frame's readings grouped by instrument and instant) and events, in time
    order, each citing the frame it came from."""
    origin = (f.gateway_id, f.seq)
    groups: dict[tuple[str, float], Sample] = {}
    for r in f.iter_readings():
        key = (r.instrument, r.time)
        s = groups.get(key)
        if s is None:
            s = groups[key] = Sample(r.time, f.site, r.instrument, {}, {}, None, origin)
        v = r.value
        if isinstance(v, int | float):
            s.values[r.signal] = float(v)
        s.flags[r.signal] = r.quality
    out: list[Sample | SiteEvent] = list(groups.values())
    out += [SiteEvent(e.time, f.site, e.instrument, e.kind, dict(e.detail), origin)
            for e in f.events]
    out.sort(key=lambda x: x.time)
    return out


def integrity_event(
    kind: str, site: str | None, gateway: str | None, seq: int | None, when: float,
    detail: dict[str, Any],
) -> SiteEvent:
    """Integrity findings as records, so detector rules can reason on them too
    (``chain_gap``, ``chain_fork``, ``bad_signature``, ...)."""
    name = kind if kind in _QUARANTINE_EVENT_NAMES else f"chain_{kind}"
    return SiteEvent(when, site or "unknown", "", name, {"gateway": gateway, "seq": seq,
                                                           **detail},
                     (gateway, seq) if gateway is not None and seq is not None else None)


_QUARANTINE_EVENT_NAMES = frozenset({
    "oversize", "malformed", "schema", "bad_signature", "unknown_key", "revoked_key",
    "key_not_yet_valid", "key_expired", "gateway_mismatch", "site_mismatch",
    "instrument_mismatch", "topic_mismatch", "bad_topic", "bad_json", "bad_line",
    "bad_base64",
})


def sorted_records(recs: Iterable[Sample | SiteEvent]) -> list[Sample | SiteEvent]:
    return sorted(recs, key=lambda x: x.time)
