"""HJ 212 data frames as StationSeal readings, and revisions of data already reported.

The gateway (agent/hj212_source.py) and the ingest service's listener for legacy sites
(ingest/hj212_ingest.py) turn the same frames into the same readings, so this mapping
lives here, once.

What a reading is made of:

* **instrument**: the logger's id (``"logger"`` by default) for real-time data (CN 2011),
  ``<id>.minute`` / ``<id>.hour`` / ``<id>.day`` for the aggregates (CN 2051 / 2061 /
  2031). A value the logger *reported* is therefore never confused with what an
  analyzer *measured* for the same canonical signal (that reading carries the
  analyzer's id), and a minute mean never with a real-time value.
* **signal / unit / value**: the code mapped by ``(ST, code)`` (:func:`signal_map`) to its
  canonical signal; value = factor × transmitted number (``-Rtd`` for real-time data,
  ``-Avg`` for aggregates), in the canonical unit of the signal. Non-numeric values (the
  2025 working-condition markers such as ``St``) are kept as text.
* **quality**: the HJ 212 data flag, letter for letter (N F M S D C T B are also the
  StationSeal quality flags); an item without ``-Flag`` is ``N``, as the standard reads.
* **time**: ``DataTime`` (China Standard Time on the wire); for aggregates that is the
  start of the period.
* **raw**: the pollutant's CP text exactly as received (``a21026-Rtd=294.49,a21026-Flag=N``),
  so ``-Min``/``-Max``/``-Cou``/``-ZsRtd`` and any other field travel signed with it.

Nothing is dropped: an item that cannot become a reading (a code with no canonical signal
at this ST, a flag outside the standard's eight, an empty value) is returned in
:attr:`Conversion.unconverted` with the reason, and the callers keep it with the raw
frame (the gateway seals it in an ``hj212_frame`` event).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from stationseal.hj212.codec import Frame
from stationseal.hj212.codes import signal_map
from stationseal.hj212.cp import DATA_FLAGS
from stationseal.records import Event, Reading, to_rfc3339
from stationseal.signals import BY_NAME

#: Data commands a logger uploads -> (value field, instrument suffix).
DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "2011": ("Rtd", ""),
    "2051": ("Avg", "minute"),
    "2061": ("Avg", "hour"),
    "2031": ("Avg", "day"),
}

#: Event kinds sealed / stored for HJ 212 input (docs/hj212.md, "Readings from a logger").
FRAME_EVENT = "hj212_frame"
FLAG_CHANGED = "flag_changed"
REVISION_EVENT = "reported_revision"

#: Bytes of the raw frame kept in an ``hj212_frame`` event (a frame is at most 1036).
MAX_RAW_TEXT = 2048


def is_data_command(cn: str) -> bool:
    return cn in DATA_COMMANDS


def instrument_for(base: str, cn: str) -> str:
    """``logger`` for real-time data, ``logger.minute`` / ``.hour`` / ``.day`` else."""
    suffix = DATA_COMMANDS.get(cn, ("", cn))[1]
    return f"{base}.{suffix}" if suffix else base


def logger_base(instrument: str) -> str:
    """Inverse of :func:`instrument_for`: ``logger.hour`` -> ``logger``."""
    head, sep, tail = instrument.rpartition(".")
    return head if sep and tail in ("minute", "hour", "day") else instrument


@dataclass(frozen=True, slots=True)
class Unconverted:
    """A CP item that did not become a reading, and why."""

    code: str
    item: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "item": self.item, "reason": self.reason}


@dataclass(slots=True)
class Conversion:
    """Readings of one data frame (or a merged split frame)."""

    cn: str
    instrument: str
    #: DataTime as epoch seconds; None when the frame had none (readings then carry the
    #: receive time and :attr:`warnings` says so)
    data_time: float | None
    readings: list[Reading] = field(default_factory=list)
    unconverted: list[Unconverted] = field(default_factory=list)
    #: code of each reading, in the same order as :attr:`readings`
    codes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _item_text(frame: Frame, code: str) -> str:
    """The pollutant's fields as on the wire: its sub-items, items joined by ``;``."""
    prefix = f"{code}-"
    parts = []
    for item in frame.cp.items:
        subs = [f"{k}={v}" for k, v in item if k.startswith(prefix)]
        if subs:
            parts.append(",".join(subs))
    return ";".join(parts)


def _value(text: str, factor: float) -> float | str:
    try:
        v = float(text)
    except ValueError:
        return text
    if not math.isfinite(v):
        return text
    return v * factor if factor != 1.0 else v


def convert(frame: Frame, *, instrument: str = "logger",
            received: float | None = None) -> Conversion:
    """Readings of a data frame (CN 2011/2051/2061/2031); others give no readings.

    ``received`` stands in for a missing DataTime.
    """
    value_field, _ = DATA_COMMANDS.get(frame.cn, ("", ""))
    conv = Conversion(frame.cn, instrument_for(instrument, frame.cn), None)
    if not value_field:
        return conv
    try:
        conv.data_time = frame.cp.data_epoch()
    except ValueError:  # parse_frame checks DataTime; a hand-built frame may not
        conv.warnings.append(f"DataTime {frame.cp.data_time!r} is not a valid time")
    t = conv.data_time
    if t is None:
        if received is None:
            raise ValueError(f"CN={frame.cn} QN={frame.qn}: no DataTime and no receive time")
        t = received
        conv.warnings.append("no DataTime: readings carry the time the frame was received")
    for code, pol in frame.cp.pollutants.items():
        item = _item_text(frame, code)
        sm = signal_map(frame.st, code)
        if sm is None:
            conv.unconverted.append(Unconverted(
                code, item, f"no canonical signal for code {code} at ST={frame.st}"))
            continue
        text = pol.fields.get(value_field)
        if text is None or text == "":
            conv.unconverted.append(Unconverted(
                code, item, f"no {code}-{value_field} value"))
            continue
        flag = pol.flag if pol.flag is not None else "N"
        if flag not in DATA_FLAGS:
            conv.unconverted.append(Unconverted(
                code, item, f"data flag {flag!r} is not one of {''.join(sorted(DATA_FLAGS))}"))
            continue
        unit = BY_NAME[sm.signal].unit if sm.signal in BY_NAME else sm.unit
        conv.readings.append(Reading(conv.instrument, sm.signal, _value(text, sm.factor), unit,
                                     t, flag, item.encode("utf-8")))
        conv.codes.append(code)
    return conv


#: Credentials in an HJ 212 header: the access password ``PW=...`` (up to the next ``;``
#: or ``&``). Replaced by ``PW=***`` wherever the raw frame text is kept.
_CREDENTIALS = re.compile(r"(?<![A-Za-z])PW=[^;&\r\n]*")
_CREDENTIALS_B = re.compile(rb"(?<![A-Za-z])PW=[^;&\r\n]*")
REDACTED = "PW=***"


def redact_credentials(text: str) -> str:
    """The text with every ``PW=<password>`` replaced by ``PW=***``: the logger's password
    must not travel into signed frames, the central database and every export (the
    length is not kept either). The frame's CRC no longer matches the redacted text."""
    return _CREDENTIALS.sub(REDACTED, text)


def redact_credentials_bytes(data: bytes) -> bytes:
    return _CREDENTIALS_B.sub(REDACTED.encode(), data)


def raw_text(frame: Frame) -> str:
    """The frame as received, as text (frames that parsed are UTF-8 or hex ciphertext),
    with credentials redacted (:func:`redact_credentials`)."""
    return redact_credentials(frame.raw[:MAX_RAW_TEXT].decode("utf-8", "backslashreplace"))


def frame_event(frame: Frame, conv: Conversion | None, received: float,
                instrument: str) -> Event:
    """``hj212_frame``: the received frame itself, header and raw text, so the readings
    can be traced to the logger's QN and the raw bytes re-checked (CRC, content)."""
    detail: dict[str, Any] = {
        "cn": frame.cn, "qn": frame.qn or "", "mn": frame.mn, "st": frame.st,
        "flag": frame.flag if frame.flag is not None else -1,
        "data_time": frame.cp.data_time or "",
        "raw": raw_text(frame),
    }
    if _CREDENTIALS_B.search(frame.raw[:MAX_RAW_TEXT]):
        detail["redacted"] = ["PW"]
    if frame.pnum is not None:
        detail["pnum"] = frame.pnum
        detail["pno"] = frame.pno if frame.pno is not None else 0
    if frame.rf is not None:
        detail["rf"] = frame.rf
    if frame.encrypted:
        detail["encrypted"] = True
    warnings = list(frame.warnings) + (conv.warnings if conv is not None else [])
    if warnings:
        detail["warnings"] = warnings
    if conv is not None:
        detail["readings"] = len(conv.readings)
        if conv.unconverted:
            detail["unconverted"] = [u.to_json() for u in conv.unconverted]
    return Event(instrument, FRAME_EVENT, received, detail)


# ----------------------------------------------------------------------------- revisions


@dataclass(frozen=True, slots=True)
class Revision:
    """Data for a time already reported, sent again with another flag or value."""

    mn: str
    cn: str
    instrument: str
    signal: str
    code: str
    data_time: float
    old_value: float | str
    new_value: float | str
    old_flag: str
    new_flag: str
    old_qn: str
    new_qn: str
    #: the new frame carried RF=1 (HJ 212-2025 resent / back-filled data)
    resent: bool

    @property
    def flag_changed(self) -> bool:
        return self.old_flag != self.new_flag

    def event(self, when: float) -> Event:
        """``flag_changed`` (old/new are flags; E6's hook) when the flag changed, else
        ``reported_revision`` (old/new are values)."""
        base: dict[str, Any] = {
            "signal": self.signal, "code": self.code, "cn": self.cn, "mn": self.mn,
            "data_time": to_rfc3339(self.data_time), "old_qn": self.old_qn,
            "new_qn": self.new_qn, "resent": self.resent,
        }
        if self.flag_changed:
            return Event(self.instrument, FLAG_CHANGED, when, {
                **base, "old": self.old_flag, "new": self.new_flag,
                "old_value": self.old_value, "new_value": self.new_value})
        return Event(self.instrument, REVISION_EVENT, when, {
            **base, "old": self.old_value, "new": self.new_value, "flag": self.new_flag})


@dataclass(slots=True)
class _Reported:
    qn: str
    values: dict[str, tuple[float | str, str, str]]  # signal -> (value, flag, code)


class RevisionTracker:
    """Remembers what each logger reported per (MN, CN, DataTime) and returns the
    differences when data for such a time arrive again under another QN.

    A repeat with the *same* QN is a resend after a lost answer, not a revision: callers
    deduplicate those before calling :meth:`observe`. Memory is bounded by
    ``max_entries`` (least recently reported times are forgotten first).
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str, float], _Reported] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, mn: str, qn: str, conv: Conversion, resent: bool = False
                ) -> list[Revision]:
        if conv.data_time is None or not conv.readings:
            return []
        key = (mn, conv.cn, conv.data_time)
        new = {r.signal: (r.value, r.quality, code)
               for r, code in zip(conv.readings, conv.codes, strict=True)}
        old = self._seen.get(key)
        out: list[Revision] = []
        if old is not None and old.qn != qn:
            for sig, (value, flag, code) in new.items():
                prev = old.values.get(sig)
                if prev is None:
                    continue
                if prev[0] != value or prev[1] != flag:
                    out.append(Revision(mn, conv.cn, conv.instrument, sig, code,
                                        conv.data_time, prev[0], value, prev[1], flag,
                                        old.qn, qn, resent))
            merged = dict(old.values)
            merged.update(new)
            old.values = merged
            old.qn = qn
            self._seen.move_to_end(key)
        elif old is None:
            self._seen[key] = _Reported(qn, new)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
        return out
