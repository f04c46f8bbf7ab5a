"""Packet split (PNUM/PNO) and reassembly.

A CP longer than 950 characters (or a data segment longer than 1024 bytes) goes out as
several frames with the same QN, ``PNUM`` = packet count, ``PNO`` = 1..PNUM and the D
bit of Flag set. Every packet repeats DataTime so that each one is meaningful on its
own if the others never arrive.

:class:`Reassembler` puts packets back together. Incomplete groups are never dropped
quietly: they come back from :meth:`Reassembler.expire` (after a timeout, or when the
group limit forced them out) with every packet received, for the caller to record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from stationseal.hj212.codec import MAX_DATA_LEN, VERSION_2017, Frame, make_flag
from stationseal.hj212.cp import CP, Item
from stationseal.hj212.errors import HJ212BuildError, HJ212Error, HJ212PacketError

#: Worst-case packet numbers used while sizing packets (real ones are never longer).
_SIZING_NUMBER = 9999


def _split_flag(frame: Frame, split: bool) -> int:
    version = frame.version if frame.version is not None else VERSION_2017
    return make_flag(version, ack=frame.ack_requested, split=split)


def split_frame(
    frame: Frame, *, sm4_key: bytes | str | None = None, max_data_len: int = MAX_DATA_LEN
) -> list[Frame]:
    """The frame itself if it fits, else packets that each fit (CP <= 950, data <= max).

    Items are never cut; an item that does not fit even alone raises HJ212PacketError.
    """
    try:
        frame.encode(sm4_key, max_data_len=max_data_len)
        return [frame]
    except HJ212BuildError:
        pass
    items = frame.cp.items
    head: tuple[Item, ...] = ()
    if items and items[0] and items[0][0][0] == "DataTime" and len(items[0]) == 1:
        head, items = items[:1], items[1:]
    flag = _split_flag(frame, True)

    def fits(candidate: list[Item]) -> bool:
        probe = frame.replace(
            cp=CP(head + tuple(candidate)), flag=flag, pnum=_SIZING_NUMBER, pno=_SIZING_NUMBER
        )
        try:
            probe.encode(sm4_key, max_data_len=max_data_len)
        except HJ212BuildError:
            return False
        return True

    groups: list[list[Item]] = []
    current: list[Item] = []
    for index, item in enumerate(items):
        if fits([*current, item]):
            current.append(item)
            continue
        if not current or not fits([item]):
            raise HJ212PacketError(
                f"CP item {index + 1} does not fit in one packet even alone",
                field="CP",
                got=",".join(f"{k}={v}" for k, v in item),
            )
        groups.append(current)
        current = [item]
    if current:
        groups.append(current)
    return [
        frame.replace(cp=CP(head + tuple(group)), flag=flag, pnum=len(groups), pno=number)
        for number, group in enumerate(groups, start=1)
    ]


GroupKey = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True)
class IncompletePacket:
    """Packets of a split frame that never completed, returned instead of dropped."""

    key: GroupKey
    pnum: int
    frames: tuple[Frame, ...]
    reason: str

    @property
    def missing(self) -> list[int]:
        have = {f.pno for f in self.frames}
        return [n for n in range(1, self.pnum + 1) if n not in have]


@dataclass(slots=True)
class _Group:
    pnum: int
    started: float
    parts: dict[int, Frame]


def merge_packets(parts: list[Frame]) -> Frame:
    """Merge packets 1..PNUM of one frame into the frame they were split from."""
    parts = sorted(parts, key=lambda f: f.pno or 0)
    first = parts[0]
    data_time = first.cp.data_time
    items: list[Item] = [(("DataTime", data_time),)] if data_time is not None else []
    warnings: list[str] = []
    for part in parts:
        if part.cp.data_time != data_time:
            raise HJ212PacketError(
                f"packet {part.pno} has DataTime={part.cp.data_time}, packet 1 has {data_time}",
                field="DataTime",
            )
        items += [i for i in part.cp.items if not (len(i) == 1 and i[0][0] == "DataTime")]
        warnings += [f"packet {part.pno}: {w}" for w in part.warnings]
    merged = first.replace(cp=CP(tuple(items)), flag=_split_flag(first, False), pnum=None, pno=None)
    try:
        merged.cp.validate()
    except HJ212Error as e:
        raise HJ212PacketError(f"packets do not merge: {e}", field="CP") from None
    return merged.replace(warnings=tuple(warnings))


class Reassembler:
    """Collects split packets by (MN, CN, QN) until all PNO 1..PNUM have arrived."""

    def __init__(
        self,
        *,
        timeout: float = 300.0,
        max_groups: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.max_groups = max_groups
        self._clock = clock
        self._groups: dict[GroupKey, _Group] = {}
        self._evicted: list[IncompletePacket] = []

    @property
    def pending(self) -> int:
        return len(self._groups)

    def add(self, frame: Frame) -> Frame | None:
        """The merged frame once complete, the frame itself if it was not split, else None.

        Raises HJ212PacketError for a packet that contradicts its group (other PNUM, a
        different packet under a PNO already received); that packet is not stored.
        An identical repeat of a packet (a resend after a lost answer) is ignored. A
        complete group whose packets do not merge (different DataTime, a pollutant
        field in two packets) goes to :meth:`expire` with the reason.
        """
        if frame.pnum is None or frame.pno is None:
            return frame
        key: GroupKey = (frame.mn, frame.cn, frame.qn)
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= self.max_groups:
                oldest = min(self._groups, key=lambda k: self._groups[k].started)
                self._evicted.append(self._incomplete(oldest, "evicted: too many open groups"))
            group = self._groups[key] = _Group(frame.pnum, self._clock(), {})
        if frame.pnum != group.pnum:
            raise HJ212PacketError(
                f"PNUM={frame.pnum} but earlier packets of QN={frame.qn} said {group.pnum}",
                field="PNUM",
            )
        known = group.parts.get(frame.pno)
        if known is not None:
            if known.cp != frame.cp:
                raise HJ212PacketError(
                    f"packet {frame.pno} of QN={frame.qn} received twice with different CP",
                    field="PNO",
                )
            return None
        group.parts[frame.pno] = frame
        if len(group.parts) < group.pnum:
            return None
        try:
            merged = merge_packets(list(group.parts.values()))
        except HJ212PacketError as e:
            self._evicted.append(self._incomplete(key, f"cannot merge: {e}"))
            return None
        del self._groups[key]
        return merged

    def _incomplete(self, key: GroupKey, reason: str) -> IncompletePacket:
        group = self._groups.pop(key)
        frames = tuple(group.parts[n] for n in sorted(group.parts))
        return IncompletePacket(key, group.pnum, frames, reason)

    def expire(self, now: float | None = None) -> list[IncompletePacket]:
        """Groups older than the timeout, plus any evicted for space since the last call."""
        now = self._clock() if now is None else now
        out, self._evicted = self._evicted, []
        for key in [k for k, g in self._groups.items() if now - g.started >= self.timeout]:
            out.append(self._incomplete(key, f"timeout after {self.timeout:g} s"))
        return out

    def flush(self) -> list[IncompletePacket]:
        """Everything still open (call on shutdown so nothing is lost)."""
        out, self._evicted = self._evicted, []
        out += [self._incomplete(k, "flushed") for k in list(self._groups)]
        return out
