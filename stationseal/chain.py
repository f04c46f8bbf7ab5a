"""Per-gateway chain checks: gaps, duplicates, replays, forks and sequence resets.

Every frame names its sequence number and the SHA-256 of its predecessor's body, so the
central side can prove completeness, not just authenticity. Frames may arrive out of order
(a gateway backfills its outbox oldest-first while also sending live frames), so the
tracker keeps the set of received sequence numbers as intervals and checks each hash link
as soon as both ends are known, whichever arrives first.

Verdicts (``ChainIssue.kind``):

* ``duplicate``: same sequence, same body hash. Harmless in itself (MQTT QoS 1 delivers at
  least once), reported because a file handed to a court must not contain it twice.
* ``fork``: same sequence (or a broken hash link) with different content under the same
  boot id: the gateway, or someone holding its key, sealed two histories.
* ``sequence_reset``: a new boot id re-uses sequence numbers already received: the gateway
  lost its persisted counter (storage wiped or replaced) or is being impersonated.
* ``replay``: a sequence already received whose hash is no longer remembered; it cannot be
  told from a duplicate, so it is not stored again but kept for inspection.
* ``gap``: sequence numbers never received and not covered by a signed ``data_dropped``
  event. Reported when overdue (:meth:`ChainTracker.overdue_gaps`), because live frames
  overtake backfill.
* ``bad_drop_event``: a ``data_dropped`` event of the gateway that does not carry what a
  drop must (:func:`parse_drop`); it covers nothing.
* ``clock_unsynced``: the gateway has sealed frames saying its clock is not synchronised
  for longer than allowed (reported once per such stretch).

Time checks that need the arrival time (``created_future``, ``created_too_old``) are
:func:`arrival_findings`.

The bounds (clock skew, unsynchronised stretch, drop span) are the specification's
(docs/wire-format.md §7.4, §8) unless a :class:`Limits` says otherwise: `stationseal verify`
keeps the specification's values unless told, an ingest may be configured for a deployment
whose gateways legitimately differ (ingest/config.py ``chain``).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stationseal.frame import ZERO_HASH, Frame
from stationseal.records import Event

#: How many recent frame hashes a tracker remembers per gateway. Older sequence numbers are
#: still known to be received (interval set) but a re-sent one is then a ``replay``.
HASH_WINDOW = 512
#: Most sequence numbers one ``data_dropped`` event may excuse (specification value). The
#: agent splits longer runs (agent/outbox.py); a bigger claim covers nothing and is a
#: ``bad_drop_event``.
MAX_DROP_SPAN = 100_000
#: Most readings one frame may hold (the agent's batch_max_readings bound).
MAX_FRAME_READINGS = 100_000
#: A frame may say it was created at most this far after its arrival (clock skew;
#: specification value).
FUTURE_TOLERANCE_MS = 120_000
#: Longest stretch of frames saying "clock not synchronised" before ``clock_unsynced``
#: (specification value).
MAX_UNSYNCED_MS = 3_600_000
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of the time and drop checks. The defaults are the specification's
    (docs/wire-format.md §7.4, §8.1, §8.3); every finding names the bound it was judged
    on, so an alert raised under other values still explains itself."""

    #: ``created_future``: how far a frame's creation may lie after its first arrival.
    future_tolerance_ms: int = FUTURE_TOLERANCE_MS
    #: ``clock_unsynced``: longest stretch of frames saying the clock is not synchronised.
    max_unsynced_ms: int = MAX_UNSYNCED_MS
    #: Most sequence numbers one signed ``data_dropped`` event may excuse.
    max_drop_span: int = MAX_DROP_SPAN

    def __post_init__(self) -> None:
        for name, least in (("future_tolerance_ms", 0), ("max_unsynced_ms", 0),
                            ("max_drop_span", 1)):
            v = getattr(self, name)
            if type(v) is not int or v < least:
                raise ValueError(f"{name} must be an integer >= {least}, not {v!r}")

    def differences(self) -> dict[str, tuple[int, int]]:
        """Bounds that differ from the specification: name -> (this value, spec value)."""
        return {n: (getattr(self, n), getattr(SPEC_LIMITS, n))
                for n in ("future_tolerance_ms", "max_unsynced_ms", "max_drop_span")
                if getattr(self, n) != getattr(SPEC_LIMITS, n)}

    def to_json(self) -> dict[str, int]:
        return {"future_tolerance_ms": self.future_tolerance_ms,
                "max_unsynced_ms": self.max_unsynced_ms, "max_drop_span": self.max_drop_span}


#: The specification's bounds.
SPEC_LIMITS = Limits()


@dataclass(slots=True)
class ChainIssue:
    kind: str
    gateway_id: str
    seq: int
    detail: dict[str, Any] = field(default_factory=dict)


class IntervalSet:
    """Sorted disjoint closed intervals of integers; one interval in the normal case."""

    __slots__ = ("iv",)

    def __init__(self, iv: list[list[int]] | None = None):
        self.iv: list[list[int]] = iv or []

    def __contains__(self, x: int) -> bool:
        i = bisect.bisect_right(self.iv, [x, 2**64]) - 1
        return i >= 0 and self.iv[i][0] <= x <= self.iv[i][1]

    def add(self, lo: int, hi: int) -> None:
        iv = self.iv
        if iv and iv[-1][1] + 1 == lo:  # fast path: the next frame in order
            iv[-1][1] = max(iv[-1][1], hi)
            return
        i = bisect.bisect_left(iv, [lo, lo])
        if i > 0 and iv[i - 1][1] >= lo - 1:
            i -= 1
        j = i
        nlo, nhi = lo, hi
        while j < len(iv) and iv[j][0] <= hi + 1:
            nlo = min(nlo, iv[j][0])
            nhi = max(nhi, iv[j][1])
            j += 1
        iv[i:j] = [[nlo, nhi]]

    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Sub-ranges of [lo, hi] not in the set."""
        out: list[tuple[int, int]] = []
        cur = lo
        for a, b in self.iv:
            if b < cur:
                continue
            if a > hi:
                break
            if a > cur:
                out.append((cur, min(a - 1, hi)))
            cur = max(cur, b + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
        return out

    @property
    def min(self) -> int | None:
        return self.iv[0][0] if self.iv else None

    @property
    def max(self) -> int | None:
        return self.iv[-1][1] if self.iv else None


@dataclass(slots=True, frozen=True)
class Drop:
    first_seq: int
    last_seq: int
    last_hash: bytes


def parse_drop(e: Event, carrier_seq: int, max_span: int = MAX_DROP_SPAN
               ) -> Drop | str | None:
    """A gateway's signed drop, an error text if the event cannot cover anything, or None
    if the event is not a chain drop (instrument-level ``data_dropped``: readings never
    sealed, e.g. a serial receive queue that overflowed).

    A chain drop is an event of instrument ``gateway`` and kind ``data_dropped`` whose
    detail has integers ``first_seq``, ``last_seq``, ``frames``, ``readings`` and
    ``last_hash`` (64 lowercase hex, the frame hash of ``last_seq``), with
    ``1 <= first_seq <= last_seq < carrier_seq``, ``frames = last_seq - first_seq + 1
    <= max_span`` (the specification's ``MAX_DROP_SPAN`` unless configured otherwise) and
    ``0 <= readings <= frames * MAX_FRAME_READINGS``.
    """
    if e.kind != "data_dropped" or e.instrument != "gateway":
        return None
    d = e.detail
    vals: dict[str, int] = {}
    for k in ("first_seq", "last_seq", "frames", "readings"):
        v = d.get(k)
        if type(v) is not int:
            return f"{k} is {'missing' if v is None else 'not an integer'}"
        vals[k] = v
    lo, hi = vals["first_seq"], vals["last_seq"]
    if not 1 <= lo <= hi < carrier_seq:
        return (f"range {lo}..{hi} is not within 1..{carrier_seq - 1} (a drop precedes the "
                "frame that reports it)")
    span = hi - lo + 1
    if span > max_span:
        return f"range {lo}..{hi} covers {span} frames, more than {max_span}"
    if vals["frames"] != span:
        return f"frames {vals['frames']} != last_seq - first_seq + 1 = {span}"
    if not 0 <= vals["readings"] <= span * MAX_FRAME_READINGS:
        return f"readings {vals['readings']} outside 0..{span * MAX_FRAME_READINGS}"
    lh = d.get("last_hash")
    if type(lh) is not str or len(lh) != 64 or not set(lh) <= _HEX64:
        return "last_hash is not the 64-hex frame hash of last_seq"
    return Drop(lo, hi, bytes.fromhex(lh))


def arrival_findings(f: Frame, received_ms: int, backfill_s: int,
                     future_tolerance_ms: int = FUTURE_TOLERANCE_MS
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Time checks of one frame against its first arrival at the centre:
    ``created_future`` (created more than ``future_tolerance_ms`` after it arrived) and
    ``created_too_old`` (arrived more than the gateway's backfill horizon after it was
    created: no honest outbox keeps a frame that long)."""
    cms = f.created_ms
    out: list[tuple[str, dict[str, Any]]] = []
    if cms - received_ms > future_tolerance_ms:
        out.append(("created_future", {"created_ms": cms, "received_ms": received_ms,
                                       "ahead_s": round((cms - received_ms) / 1000, 3),
                                       "tolerance_s": future_tolerance_ms / 1000}))
    elif received_ms - cms > backfill_s * 1000:
        out.append(("created_too_old", {"created_ms": cms, "received_ms": received_ms,
                                        "age_s": round((received_ms - cms) / 1000, 3),
                                        "backfill_s": backfill_s}))
    return out


class ChainTracker:
    """Chain state of one gateway. Serialisable so the ingest survives restarts."""

    def __init__(self, gateway_id: str, limits: Limits = SPEC_LIMITS):
        self.gateway_id = gateway_id
        self.limits = limits
        self.received = IntervalSet()
        self.dropped = IntervalSet()
        #: seq -> (frame hash, prev hash, boot id) for the most recent frames.
        self.recent: dict[int, tuple[bytes, bytes, bytes]] = {}
        self._order: deque[int] = deque()
        #: Hash a signed data_dropped event says the last dropped frame had: seq -> hash.
        self.drop_hashes: dict[int, bytes] = {}
        #: gap start -> (gap end, time first seen); reported once when overdue.
        self.pending: dict[int, tuple[int, float]] = {}
        self.frames = 0
        #: created_ms of the first frame of the current stretch of frames saying the clock
        #: is not synchronised (None: the last frame said synchronised).
        self.unsynced_since: int | None = None
        self.unsynced_reported = False
        self.max_unsynced_ms = limits.max_unsynced_ms

    # -- observing -----------------------------------------------------------------
    def observe(self, f: Frame, now: float | None = None) -> tuple[bool, list[ChainIssue]]:
        """Record a verified frame. Returns (store its readings?, issues found)."""
        seq = f.seq
        issues: list[ChainIssue] = []
        when = f.created if now is None else now
        if seq in self.received:
            known = self.recent.get(seq)
            if known is None:
                issues.append(self._issue("replay", seq, hash=f.frame_hash.hex()))
                return False, issues
            if known[0] == f.frame_hash:
                issues.append(self._issue("duplicate", seq, hash=f.frame_hash.hex()))
                return False, issues
            kind = "sequence_reset" if known[2] != f.boot_id else "fork"
            issues.append(
                self._issue(
                    kind,
                    seq,
                    hash=f.frame_hash.hex(),
                    other_hash=known[0].hex(),
                    boot_id=f.boot_id.hex(),
                    other_boot_id=known[2].hex(),
                )
            )
            # Kept as evidence and stored apart from the first history (the caller tags
            # it): never merged into it, never dropped.
            return True, issues

        self.frames += 1
        old_max = self.received.max
        old_min = self.received.min
        self.received.add(seq, seq)
        self.recent[seq] = (f.frame_hash, f.prev_hash, f.boot_id)
        self._order.append(seq)
        while len(self._order) > HASH_WINDOW:
            self.recent.pop(self._order.popleft(), None)

        # Signed drop events cover ranges and carry the hash that links across them.
        for e in f.events:
            drop = parse_drop(e, seq, self.limits.max_drop_span)
            if drop is None:
                continue
            if isinstance(drop, str):
                issues.append(self._issue("bad_drop_event", seq, error=drop,
                                          detail=jsonable(e.detail)))
                continue
            issues += self._add_drop(drop, seq)

        issues += self._check_clock(f)
        issues += self._check_links(f)

        # New gap(s) opened by this frame?
        if old_max is not None and seq > old_max + 1:
            for a, b in self.dropped.missing(old_max + 1, seq - 1):
                self.pending[a] = (b, when)
        if old_min is not None and seq < old_min - 1:
            for a, b in self.dropped.missing(seq + 1, old_min - 1):
                self.pending[a] = (b, when)
        self._settle_pending()
        return True, issues

    def _add_drop(self, d: Drop, carrier: int) -> list[ChainIssue]:
        out: list[ChainIssue] = []
        known = self.drop_hashes.get(d.last_seq)
        if known is not None and known != d.last_hash:
            out.append(self._issue("fork", d.last_seq, link="drop", drop_in_seq=carrier,
                                   last_hash=d.last_hash.hex(), other_last_hash=known.hex()))
        here = self.recent.get(d.last_seq)
        if here is not None and here[0] != d.last_hash:
            out.append(self._issue("fork", d.last_seq, link="drop", drop_in_seq=carrier,
                                   last_hash=d.last_hash.hex(), hash=here[0].hex()))
        nxt = self.recent.get(d.last_seq + 1)
        if nxt is not None and nxt[1] != d.last_hash:
            out.append(self._issue("fork", d.last_seq + 1, link="drop", drop_in_seq=carrier,
                                   prev_hash=nxt[1].hex(), expected=d.last_hash.hex()))
        self.dropped.add(d.first_seq, d.last_seq)
        self.drop_hashes[d.last_seq] = d.last_hash
        self._settle_pending()
        return out

    def _check_clock(self, f: Frame) -> list[ChainIssue]:
        cms = f.created_ms
        if f.clock_sync == "synced":
            if self.unsynced_since is not None and cms >= self.unsynced_since:
                self.unsynced_since = None
                self.unsynced_reported = False
            return []
        if self.unsynced_since is None or cms < self.unsynced_since:
            self.unsynced_since = cms
        if not self.unsynced_reported and cms - self.unsynced_since > self.max_unsynced_ms:
            self.unsynced_reported = True
            return [self._issue("clock_unsynced", f.seq, clock_sync=f.clock_sync,
                                since_ms=self.unsynced_since,
                                for_s=round((cms - self.unsynced_since) / 1000, 3),
                                limit_s=self.max_unsynced_ms / 1000)]
        return []

    def _check_links(self, f: Frame) -> list[ChainIssue]:
        out: list[ChainIssue] = []
        seq = f.seq
        dh = self.drop_hashes.get(seq)
        if dh is not None and dh != f.frame_hash:
            out.append(self._issue("fork", seq, link="drop", last_hash=dh.hex(),
                                   hash=f.frame_hash.hex()))
        prev = self.recent.get(seq - 1)
        expected: bytes | None = None
        if prev is not None:
            expected = prev[0]
        elif seq - 1 in self.drop_hashes:
            expected = self.drop_hashes[seq - 1]
        elif seq == 1:
            expected = ZERO_HASH
        if expected is not None and f.prev_hash != expected:
            out.append(
                self._issue(
                    "fork",
                    seq,
                    link="prev",
                    prev_hash=f.prev_hash.hex(),
                    expected=expected.hex(),
                )
            )
        nxt = self.recent.get(seq + 1)
        if nxt is not None and nxt[1] != f.frame_hash:
            out.append(
                self._issue(
                    "fork",
                    seq + 1,
                    link="next",
                    prev_hash=nxt[1].hex(),
                    expected=f.frame_hash.hex(),
                )
            )
        return out

    def _settle_pending(self) -> None:
        """Shrink pending gaps to what is still neither received nor signed as dropped."""
        if not self.pending:
            return
        new: dict[int, tuple[int, float]] = {}
        for a, (b, t) in self.pending.items():
            for lo, hi in self.received.missing(a, b):
                for lo2, hi2 in self.dropped.missing(lo, hi):
                    new[lo2] = (hi2, t)
        self.pending = new

    def overdue_gaps(self, now: float, grace_s: float) -> list[ChainIssue]:
        """Gaps open longer than ``grace_s``: reported once each."""
        out: list[ChainIssue] = []
        for a, (b, t) in list(self.pending.items()):
            if now - t >= grace_s:
                del self.pending[a]
                out.append(self._issue("gap", a, first_seq=a, last_seq=b, count=b - a + 1))
        return out

    def open_gaps(self) -> list[tuple[int, int]]:
        return sorted((a, b) for a, (b, _) in self.pending.items())

    def _issue(self, kind: str, seq: int, **detail: Any) -> ChainIssue:
        return ChainIssue(kind, self.gateway_id, seq, detail)

    # -- persistence ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A snapshot: the ingest serialises it later, on another thread, while this
        tracker goes on observing frames of the next batch (a shared list would commit
        frames that were never written)."""
        return {
            "gateway_id": self.gateway_id,
            "received": [list(x) for x in self.received.iv],
            "dropped": [list(x) for x in self.dropped.iv],
            "recent": {str(k): [h.hex(), p.hex(), b.hex()] for k, (h, p, b) in
                       self.recent.items()},
            "drop_hashes": {str(k): v.hex() for k, v in self.drop_hashes.items()},
            "pending": {str(a): [b, t] for a, (b, t) in self.pending.items()},
            "frames": self.frames,
            "unsynced_since": self.unsynced_since,
            "unsynced_reported": self.unsynced_reported,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], limits: Limits = SPEC_LIMITS) -> ChainTracker:
        """The limits are configuration, not state: a restarted ingest judges with the
        values it is configured with now."""
        t = cls(d["gateway_id"], limits)
        t.received = IntervalSet([list(x) for x in d["received"]])
        t.dropped = IntervalSet([list(x) for x in d["dropped"]])
        t.recent = {
            int(k): (bytes.fromhex(v[0]), bytes.fromhex(v[1]), bytes.fromhex(v[2]))
            for k, v in d["recent"].items()
        }
        t._order = deque(sorted(t.recent))
        t.drop_hashes = {int(k): bytes.fromhex(v) for k, v in d["drop_hashes"].items()}
        t.pending = {int(a): (int(v[0]), float(v[1])) for a, v in d["pending"].items()}
        t.frames = int(d.get("frames", 0))
        us = d.get("unsynced_since")
        t.unsynced_since = None if us is None else int(us)
        t.unsynced_reported = bool(d.get("unsynced_reported", False))
        return t


def jsonable(v: Any) -> Any:
    """Event detail as JSON can carry it (an issue's detail is stored and alerted)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
