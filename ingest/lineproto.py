"""InfluxDB line protocol, written by hand with escaping that cannot be subverted.

Tag values come from signed frames, i.e. from the field: an instrument name containing a
newline, a comma or a space must neither break a batch (and so block the whole pipeline)
nor inject a line of its own. Rules (InfluxDB 1.x and 2.x/3.x parsers alike):

* measurement: ``\\``, ``,`` and space are backslash-escaped;
* tag keys, tag values, field keys: ``\\``, ``,``, ``=`` and space are escaped; control
  characters (which no parser accepts in a key or tag) become ``_``; an empty tag value
  (not representable) becomes ``_``;
* string field values: ``\\`` and ``"`` are escaped; a newline or carriage return becomes
  the two characters ``\\n`` / ``\\r`` so a value never spans lines;
* floats are written with ``repr`` (shortest round-trip form); NaN and infinities cannot be
  stored as floats, so :func:`field_value` callers keep them as text;
* integers carry the ``i`` suffix; booleans are written as ``true``/``false``.

A 1.x server stores an escaped backslash in a tag as two backslashes (its parser does not
unescape ``\\\\`` in tags); this is documented in docs/influx-schema.md and only affects
identifiers no real site uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

_MEAS_RE = re.compile(r"[\\, ]")
_KEY_RE = re.compile(r"[\\,= ]")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")
_STR_RE = re.compile(r'[\\"\n\r]')
_STR_MAP = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"}


def escape_measurement(s: str) -> str:
    if not s:
        raise ValueError("measurement name must not be empty")
    s = _CTRL_RE.sub("_", s)
    return _MEAS_RE.sub(lambda m: "\\" + m.group(0), s)


def escape_key(s: str) -> str:
    """Tag key, tag value or field key."""
    if not s:
        return "_"
    if _CTRL_RE.search(s):
        s = _CTRL_RE.sub("_", s)
    if _KEY_RE.search(s):
        s = _KEY_RE.sub(lambda m: "\\" + m.group(0), s)
    return s


def escape_string(s: str) -> str:
    """String field value including the surrounding quotes."""
    if _STR_RE.search(s):
        s = _STR_RE.sub(lambda m: _STR_MAP[m.group(0)], s)
    return f'"{s}"'


def field_value(v: float | int | bool | str) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"float field value {v!r} cannot be stored; store it as text")
        return repr(v)
    if isinstance(v, str):
        return escape_string(v)
    raise TypeError(f"field value of type {type(v).__name__}")


def line(
    measurement: str,
    tags: Mapping[str, str] | Iterable[tuple[str, str]],
    fields: Mapping[str, float | int | bool | str],
    ts_ns: int,
) -> str:
    """One point. Tags are sorted by key (what the server does anyway; sorted input saves
    it the work). Fields must not be empty."""
    if not fields:
        raise ValueError(f"point of {measurement!r} has no fields")
    items = tags.items() if isinstance(tags, Mapping) else tags
    tag_part = "".join(
        f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(items) if v is not None
    )
    field_part = ",".join(f"{escape_key(k)}={field_value(v)}" for k, v in fields.items())
    return f"{escape_measurement(measurement)}{tag_part} {field_part} {int(ts_ns)}"


# --------------------------------------------------------------------------- parsing
# The ingest never reads line protocol back; this parser exists so that tests can assert
# that what the builder writes is read back as the same values (round trip), independent
# of a server.


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """Parse a line written by :func:`line` (2.x unescaping rules)."""
    i = 0
    n = len(text)

    def scan(stops: str) -> str:
        nonlocal i
        out = []
        while i < n and text[i] not in stops:
            if text[i] == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            out.append(text[i])
            i += 1
        return "".join(out)

    meas = scan(", ")
    tags: dict[str, str] = {}
    while i < n and text[i] == ",":
        i += 1
        k = scan("=")
        i += 1
        tags[k] = scan(", ")
    if i >= n or text[i] != " ":
        raise ValueError("no field set")
    i += 1
    fields: dict[str, object] = {}
    while True:
        k = scan("=")
        i += 1
        if text[i] == '"':
            i += 1
            out = []
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '\\"':
                    out.append(text[i + 1])
                    i += 2
                    continue
                if text[i] == "\\" and text[i + 1] in "nr":
                    out.append("\n" if text[i + 1] == "n" else "\r")
                    i += 2
                    continue
                out.append(text[i])
                i += 1
            i += 1
            fields[k] = "".join(out)
        else:
            j = i
            while i < n and text[i] not in ", ":
                i += 1
            raw = text[j:i]
            if raw in ("true", "false"):
                fields[k] = raw == "true"
            elif raw.endswith("i"):
                fields[k] = int(raw[:-1])
            else:
                fields[k] = float(raw)
        if i < n and text[i] == ",":
            i += 1
            continue
        break
    if i >= n or text[i] != " ":
        raise ValueError("no timestamp")
    return meas, tags, fields, int(text[i + 1:])
