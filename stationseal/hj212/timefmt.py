"""HJ 212 time stamps.

Frames carry local wall-clock time without a zone. Every HJ 212 deployment this
product targets runs on China Standard Time (UTC+8, no daylight saving), so the codec
converts with that fixed offset; inside StationSeal times are epoch seconds (UTC).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

CST = timezone(timedelta(hours=8), "CST")


def format_data_time(t: float, tz: timezone = CST) -> str:
    """``YYYYMMDDhhmmss`` (DataTime, SystemTime, BeginTime...)."""
    return datetime.fromtimestamp(t, tz).strftime("%Y%m%d%H%M%S")


def format_qn(t: float, tz: timezone = CST) -> str:
    """``YYYYMMDDhhmmsszzz``: the request number is the send time to the millisecond."""
    dt = datetime.fromtimestamp(t, tz)
    return dt.strftime("%Y%m%d%H%M%S") + f"{dt.microsecond // 1000:03d}"


def parse_data_time(text: str, tz: timezone = CST) -> float:
    """Epoch seconds for ``YYYYMMDDhhmmss``; ``ValueError`` if it is not a real time."""
    if len(text) != 14 or not text.isdigit():
        raise ValueError(f"expected 14 digits YYYYMMDDhhmmss, got {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz).timestamp()


def parse_qn(text: str, tz: timezone = CST) -> float:
    """Epoch seconds for a ``YYYYMMDDhhmmsszzz`` request number."""
    if len(text) != 17 or not text.isdigit():
        raise ValueError(f"expected 17 digits YYYYMMDDhhmmsszzz, got {text!r}")
    return parse_data_time(text[:14], tz) + int(text[14:]) / 1000.0
