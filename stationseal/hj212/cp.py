"""The CP (command parameter) region: ``DataTime=...;a21026-Rtd=12.3,a21026-Flag=N;...``.

Items are separated by ``;``, sub-items by ``,``, keys from values by ``=``. A key
``<code>-<Field>`` belongs to a pollutant (``a21026-Rtd``); any other key is a plain
parameter (``DataTime``, ``RtdInterval``, ``QnRtn``). :class:`CP` keeps the items in
wire order so that a parsed frame re-encodes to the same bytes; the grouped views are
computed from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from stationseal.hj212.errors import HJ212BuildError, HJ212CPError
from stationseal.hj212.timefmt import format_data_time, parse_data_time

#: One ``;``-separated item: its ``,``-separated ``(key, value)`` pairs.
Item = tuple[tuple[str, str], ...]

#: Standard per-pollutant fields (HJ 212-2017 table 6).
NUMERIC_FIELDS = ("Rtd", "Avg", "Min", "Max", "Cou")
POLLUTANT_FIELDS = (*NUMERIC_FIELDS, "Flag", "SampleTime", "EFlag")

#: Data flags of HJ 212-2017 (the same letters as records.QUALITY_FLAGS).
DATA_FLAGS = frozenset("NFMSDCTB")

MAX_CP_LEN = 950
RESERVED = frozenset(";,=&\r\n")


def _byte_pos(text: str, index: int, base: int) -> int:
    """Byte offset in the frame of character ``index`` (errors count bytes, not chars)."""
    return base + (index if text.isascii() else len(text[:index].encode("utf-8")))


def _split_key(key: str) -> tuple[str, str] | None:
    """``a21026-Rtd`` -> (``a21026``, ``Rtd``); ``None`` for a plain parameter."""
    code, sep, suffix = key.partition("-")
    return (code, suffix) if sep and code and suffix else None


def format_number(value: float, decimals: int | None = None) -> str:
    """Decimal text without exponent, as HJ 212 ``N`` formats require."""
    if decimals is not None:
        text = f"{value:.{decimals}f}"
    else:
        text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True, slots=True)
class Pollutant:
    """All fields one CP carries for one pollutant code, values as transmitted."""

    code: str
    fields: Mapping[str, str]

    def number(self, name: str) -> float | None:
        """Numeric field as float; ``None`` if absent; HJ212CPError if not a number."""
        raw = self.fields.get(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise HJ212CPError(
                "value is not a number", field=f"{self.code}-{name}", got=raw
            ) from None

    @property
    def rtd(self) -> float | None:
        return self.number("Rtd")

    @property
    def avg(self) -> float | None:
        return self.number("Avg")

    @property
    def min(self) -> float | None:
        return self.number("Min")

    @property
    def max(self) -> float | None:
        return self.number("Max")

    @property
    def cou(self) -> float | None:
        return self.number("Cou")

    @property
    def flag(self) -> str | None:
        return self.fields.get("Flag")

    @property
    def sample_time(self) -> str | None:
        return self.fields.get("SampleTime")

    @property
    def eflag(self) -> str | None:
        return self.fields.get("EFlag")


@dataclass(frozen=True, slots=True)
class CP:
    items: tuple[Item, ...] = ()

    # ----------------------------------------------------------------- views
    @property
    def data_time(self) -> str | None:
        return self.params.get("DataTime")

    @property
    def params(self) -> dict[str, str]:
        """Plain parameters (keys without a ``-``); the first occurrence wins."""
        out: dict[str, str] = {}
        for item in self.items:
            for key, value in item:
                if _split_key(key) is None:
                    out.setdefault(key, value)
        return out

    @property
    def pollutants(self) -> dict[str, Pollutant]:
        """Fields grouped by pollutant code, in order of first appearance."""
        grouped: dict[str, dict[str, str]] = {}
        for item in self.items:
            for key, value in item:
                parts = _split_key(key)
                if parts is not None:
                    grouped.setdefault(parts[0], {})[parts[1]] = value
        return {code: Pollutant(code, fields) for code, fields in grouped.items()}

    def data_epoch(self) -> float | None:
        """DataTime as epoch seconds (China Standard Time on the wire)."""
        return None if self.data_time is None else parse_data_time(self.data_time)

    def text(self) -> str:
        """Wire text of the region between ``CP=&&`` and ``&&``."""
        return ";".join(",".join(f"{k}={v}" for k, v in item) for item in self.items)

    # ----------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        *,
        data_time: str | float | datetime | None = None,
        params: Mapping[str, str | int | float] | None = None,
        pollutants: Mapping[str, Mapping[str, str | int | float]] | None = None,
    ) -> CP:
        """DataTime first, then one item per parameter, then one item per pollutant.

        Floats are written without exponent; pass strings to control decimals exactly.
        """
        items: list[Item] = []
        if data_time is not None:
            if isinstance(data_time, datetime):
                text = data_time.strftime("%Y%m%d%H%M%S")
            elif isinstance(data_time, str):
                text = data_time
            else:
                text = format_data_time(data_time)
            items.append((("DataTime", text),))
        for key, value in (params or {}).items():
            items.append(((key, _value_text(value)),))
        for code, fields in (pollutants or {}).items():
            if fields:
                items.append(tuple((f"{code}-{k}", _value_text(v)) for k, v in fields.items()))
        cp = cls(tuple(items))
        cp.validate()
        return cp

    def validate(self) -> None:
        """Reject what cannot be sent unambiguously (reserved characters, duplicates)."""
        seen: set[str] = set()
        for item in self.items:
            if not item:
                raise HJ212BuildError("empty CP item")
            for key, value in item:
                bad = RESERVED.intersection(key) or RESERVED.intersection(value)
                if not key or bad:
                    raise HJ212BuildError(
                        "CP key or value empty or containing a reserved character",
                        field=key or "CP",
                        expected="none of ; , = & CR LF",
                        got=f"{key}={value}",
                    )
                if key in seen and _split_key(key) is not None:
                    raise HJ212BuildError("duplicate pollutant field", field=key)
                seen.add(key)

    # ----------------------------------------------------------------- parse
    @classmethod
    def parse(cls, text: str, base: int = 0) -> tuple[CP, list[str]]:
        """Parse CP text; returns the CP and warnings about tolerated deviations.

        ``base`` is the byte offset of ``text`` in the frame, for error positions.
        """
        warnings: list[str] = []
        items: list[Item] = []
        seen: dict[str, int] = {}
        index = 0
        for raw_item in text.split(";"):
            item_start = index
            index += len(raw_item) + 1
            if raw_item == "":
                if text:
                    warnings.append(f"CP: empty item at byte {_byte_pos(text, item_start, base)}")
                continue
            pairs: list[tuple[str, str]] = []
            sub_index = item_start
            for raw_sub in raw_item.split(","):
                sub_start = sub_index
                sub_index += len(raw_sub) + 1
                pos = _byte_pos(text, sub_start, base)
                key, eq, value = raw_sub.partition("=")
                if not eq:
                    raise HJ212CPError(
                        "sub-item without '='",
                        field="CP",
                        position=pos,
                        expected="key=value",
                        got=raw_sub,
                    )
                if not key or "&" in key or "&" in value:
                    raise HJ212CPError(
                        "empty key or '&' inside the CP region",
                        field="CP",
                        position=pos,
                        got=raw_sub,
                    )
                if key in seen:
                    if _split_key(key) is not None or key == "DataTime":
                        raise HJ212CPError(
                            f"duplicate key {key!r} (first at byte {seen[key]}): "
                            "which value is the reading is ambiguous",
                            field="CP",
                            position=pos,
                        )
                    warnings.append(f"CP: duplicate parameter {key!r} at byte {pos}; first kept")
                else:
                    seen[key] = pos
                pairs.append((key, value))
                _check_field(key, value, pos, warnings)
            items.append(tuple(pairs))
        return cls(tuple(items)), warnings


def _value_text(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    return value


def _check_field(key: str, value: str, pos: int, warnings: list[str]) -> None:
    if key == "DataTime":
        try:
            parse_data_time(value)
        except ValueError:
            raise HJ212CPError(
                "DataTime is not a valid time",
                field="DataTime",
                position=pos,
                expected="YYYYMMDDhhmmss",
                got=value,
            ) from None
        return
    parts = _split_key(key)
    if parts is None:
        return
    if parts[1] == "Flag" and value not in DATA_FLAGS:
        warnings.append(f"CP: {key}={value!r} at byte {pos} is not an HJ 212-2017 data flag")
