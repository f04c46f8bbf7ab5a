"""The offline record format (docs/records.md): JSON Lines of samples and events, and alerts.

Validation is strict and every error names file, line and field
(``RECORDS.jsonl:17: values.co_pct: not a number``): a detector run that an enforcement
case may rest on must not silently skip, coerce or reinterpret a record.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from stationseal.records import (
    QUALITY_FLAGS,
    TEST_METHODS,
    Sample,
    SiteEvent,
    TestContext,
    from_rfc3339,
    to_rfc3339,
)
from stationseal.signals import is_known

Record = Sample | SiteEvent

SAMPLE_KEYS = frozenset({"time", "site", "instrument", "values", "flags", "test", "origin"})
EVENT_KEYS = frozenset({"time", "site", "instrument", "event", "detail", "origin"})
TEST_KEYS = ("id", "method", "vehicle", "lane", "phase")


class RecordError(ValueError):
    """A record that does not follow docs/records.md; ``str()`` is ``PATH:LINE: FIELD: why``."""

    def __init__(self, path: str, line: int, field: str, message: str):
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _str(obj: dict[str, Any], key: str, where: str = "") -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise _Bad(where + key, "missing" if v is None else "not a non-empty string")
    return v


def _number(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Bad(field, "not a number")
    if not math.isfinite(v):
        raise _Bad(field, "not a finite number")
    return float(v)


def _time(obj: dict[str, Any]) -> float:
    v = obj.get("time")
    if not isinstance(v, str):
        raise _Bad("time", "missing" if v is None else "not an RFC 3339 string")
    try:
        return from_rfc3339(v)
    except ValueError as e:
        why = f"{v!r}: no UTC offset" if "offset" in str(e) else f"{v!r}: not RFC 3339"
        raise _Bad("time", why) from None
    except OverflowError:
        raise _Bad("time", f"{v!r}: out of range") from None


def _origin(obj: dict[str, Any]) -> tuple[str, int] | None:
    o = obj.get("origin")
    if o is None:
        return None
    if not isinstance(o, dict):
        raise _Bad("origin", "not an object")
    extra = set(o) - {"gateway", "seq"}
    if extra:
        raise _Bad(f"origin.{sorted(extra)[0]}", "unknown key")
    gw = _str(o, "gateway", "origin.")
    seq = o.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise _Bad("origin.seq", "not a non-negative integer")
    return (gw, seq)


def parse_record(obj: Any) -> Record:
    """One decoded JSON value -> Sample or SiteEvent; raises ``_Bad`` (internal) on errors."""
    if not isinstance(obj, dict):
        raise _Bad("", "not a JSON object")
    is_event = "event" in obj
    allowed = EVENT_KEYS if is_event else SAMPLE_KEYS
    extra = sorted(set(obj) - allowed)
    if extra:
        why = "unknown key" + (" in an event" if is_event else "")
        raise _Bad(extra[0], why)
    t = _time(obj)
    site = _str(obj, "site")
    instrument = _str(obj, "instrument")
    origin = _origin(obj)
    if is_event:
        name = _str(obj, "event")
        detail = obj.get("detail", {})
        if not isinstance(detail, dict):
            raise _Bad("detail", "not an object")
        return SiteEvent(t, site, instrument, name, detail, origin)
    if "values" not in obj:
        raise _Bad("values", "missing (a record needs values or event)")
    raw = obj["values"]
    if not isinstance(raw, dict):
        raise _Bad("values", "not an object")
    values: dict[str, float] = {}
    for k, v in raw.items():
        if not is_known(k):
            raise _Bad(f"values.{k}", "unknown signal (see docs/signals.md)")
        values[k] = _number(v, f"values.{k}")
    flags: dict[str, str] = {}
    rawf = obj.get("flags")
    if rawf is not None:
        if not isinstance(rawf, dict):
            raise _Bad("flags", "not an object")
        for k, f in rawf.items():
            if not is_known(k):
                raise _Bad(f"flags.{k}", "unknown signal (see docs/signals.md)")
            if f not in QUALITY_FLAGS:
                raise _Bad(f"flags.{k}", f"{f!r} is not one of {''.join(QUALITY_FLAGS)}")
            flags[k] = f
    test = None
    rawt = obj.get("test")
    if rawt is not None:
        if not isinstance(rawt, dict):
            raise _Bad("test", "not an object")
        extra = sorted(set(rawt) - set(TEST_KEYS))
        if extra:
            raise _Bad(f"test.{extra[0]}", "unknown key")
        tid = _str(rawt, "id", "test.")
        parts = {}
        for k in TEST_KEYS[1:]:
            v = rawt.get(k, "")
            if not isinstance(v, str):
                raise _Bad(f"test.{k}", "not a string")
            parts[k] = v
        if parts["method"] and parts["method"] not in TEST_METHODS:
            raise _Bad("test.method",
                       f"{parts['method']!r} is not one of {', '.join(TEST_METHODS)}")
        test = TestContext(tid, **parts)
    return Sample(t, site, instrument, values, flags, test, origin)


@contextmanager
def _open(path: str | Path, mode: str) -> Iterator[IO[str]]:
    if str(path) == "-":
        yield sys.stdin if "r" in mode else sys.stdout
        return
    with open(path, mode, encoding="utf-8") as f:
        yield f


def read_records(path: str | Path) -> Iterator[tuple[int, Record]]:
    """``(line number, record)`` for every non-blank line; the first bad line raises."""
    name = str(path)
    with _open(path, "r") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(name, n, "",
                                  f"not valid JSON: {e.msg} (column {e.colno})") from None
            try:
                yield n, parse_record(obj)
            except _Bad as e:
                raise RecordError(name, n, e.field, e.message) from None


def record_to_json(r: Record) -> dict[str, Any]:
    d: dict[str, Any] = {"time": to_rfc3339(r.time), "site": r.site, "instrument": r.instrument}
    if isinstance(r, SiteEvent):
        d["event"] = r.event
        d["detail"] = r.detail
    else:
        d["values"] = r.values
        if r.flags:
            d["flags"] = r.flags
        if r.test is not None:
            t = r.test
            d["test"] = {"id": t.id, "method": t.method, "vehicle": t.vehicle, "lane": t.lane,
                         "phase": t.phase}
    if r.origin is not None:
        d["origin"] = {"gateway": r.origin[0], "seq": r.origin[1]}
    return d


def write_jsonl(path: str | Path, objs: Iterable[dict[str, Any]]) -> int:
    n = 0
    with _open(path, "w") as f:
        for o in objs:
            f.write(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    return write_jsonl(path, (record_to_json(r) for r in records))
