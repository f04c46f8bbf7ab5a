"""Record types shared by the agent, the ingest service and the detectors.

Two views of the same data exist on purpose:

* :class:`Reading` / :class:`Event` are what a gateway seals into a frame: one value of
  one signal of one instrument, so that every value carries its own raw bytes and
  quality flag into the signature.
* :class:`Sample` groups the readings of one instrument at one instant; detectors and the
  offline record format (docs/records.md) work on samples because falsification patterns
  relate signals to each other (CO+CO2, power vs force x speed).

Times are float seconds since the Unix epoch (UTC) inside the process; RFC 3339 strings
only at the JSON edges, because parsing datetimes on the hot path costs more than the
rest of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Quality / status flags, the HJ 212 data flags, so the same letter means the same thing
#: from analyzer register to supervision platform.
QUALITY_FLAGS: dict[str, str] = {
    "N": "normal",
    "M": "maintenance",
    "D": "fault",
    "C": "calibration",
    "F": "stopped",
    "S": "manually set",
    "T": "over range",
    "B": "communication failure",
}

#: Event kinds a gateway may seal. Detail keys per kind are documented in
#: docs/wire-format.md; unknown kinds are carried through, not rejected, so that newer
#: gateways stay verifiable by older verifiers.
EVENT_KINDS: tuple[str, ...] = (
    "gateway_boot",
    "instrument_fault",
    "instrument_recovered",
    "malformed_response",
    "calibration_change",
    "config_change",
    "clock_jump",
    "data_dropped",
    "test_start",
    "test_end",
)

TEST_METHODS: tuple[str, ...] = ("idle", "asm5025", "asm2540", "vmas", "free_accel", "lug_down")


@dataclass(slots=True)
class Reading:
    """One value of one signal, as sealed at the source."""

    instrument: str
    signal: str
    value: float | int | str
    unit: str
    time: float
    quality: str = "N"
    raw: bytes | None = None


@dataclass(slots=True)
class Event:
    """Something that happened at the site which an auditor must be able to see."""

    instrument: str
    kind: str
    time: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TestContext:
    """Vehicle test a sample belongs to (from lane events, or inferred from signals)."""

    id: str
    method: str = ""
    vehicle: str = ""
    lane: str = ""
    phase: str = ""


@dataclass(slots=True)
class Sample:
    """All values of one instrument at one instant: the unit detectors reason on."""

    time: float
    site: str
    instrument: str
    values: dict[str, float]
    flags: dict[str, str] = field(default_factory=dict)
    test: TestContext | None = None
    #: Where the sample came from (gateway, sequence) so an alert can cite the frames.
    origin: tuple[str, int] | None = None


@dataclass(slots=True)
class SiteEvent:
    """An event in the offline record format: like :class:`Event`, plus the site."""

    time: float
    site: str
    instrument: str
    event: str
    detail: dict[str, Any] = field(default_factory=dict)
    origin: tuple[str, int] | None = None


def to_rfc3339(t: float) -> str:
    """Millisecond RFC 3339 in UTC: the precision instruments deliver, no more."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def from_rfc3339(s: str) -> float:
    """Parse RFC 3339; a missing offset is an error because a site's local time is ambiguous."""
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {s!r} has no UTC offset")
    return dt.timestamp()
