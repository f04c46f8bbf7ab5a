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
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stationseal.frame import ZERO_HASH, Frame

#: How many recent frame hashes a tracker remembers per gateway. Older sequence numbers are
#: still known to be received (interval set) but a re-sent one is then a ``replay``.
HASH_WINDOW = 512


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


class ChainTracker:
    """Chain state of one gateway. Serialisable so the ingest survives restarts."""

    def __init__(self, gateway_id: str):
        self.gateway_id = gateway_id
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
            if e.kind == "data_dropped":
                try:
                    lo, hi = int(e.detail["first_seq"]), int(e.detail["last_seq"])
                except (KeyError, TypeError, ValueError):
                    issues.append(self._issue("bad_drop_event", seq, detail=str(e.detail)))
                    continue
                if 1 <= lo <= hi:
                    self.dropped.add(lo, hi)
                    lh = e.detail.get("last_hash")
                    if isinstance(lh, str) and len(lh) == 64:
                        self.drop_hashes[hi] = bytes.fromhex(lh)
                    self._settle_pending()

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

    def _check_links(self, f: Frame) -> list[ChainIssue]:
        out: list[ChainIssue] = []
        seq = f.seq
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
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChainTracker:
        t = cls(d["gateway_id"])
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
        return t
