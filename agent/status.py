"""What `stationseal agent status` shows, and how the running agent publishes it.

The agent writes ``<outbox stem>.status.json`` next to the outbox every few seconds,
atomically (temporary file + rename), without fsync: it is a view, not data. A file is
simpler to secure than a socket (same directory permissions as the outbox), can be read
by `cat` or a monitoring agent, and costs one small write per interval whether or not
anybody looks. ``updated`` tells a stale file (agent stopped or hung) from a live one;
the pid lets `status` say whether the writer still runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stationseal.records import Event, Reading, to_rfc3339

STATUS_SCHEMA = "stationseal-agent-status/1"
FAULT_KINDS = frozenset({"instrument_fault", "malformed_response"})


def status_path_for(outbox_path: str | Path) -> Path:
    p = Path(outbox_path)
    return p.with_name(p.stem + ".status.json")


@dataclass(slots=True)
class InstrumentHealth:
    """Per-instrument view kept by the poll task: O(1) work per poll, none per reading
    (the last poll's reading list is referenced, formatted only when status is written)."""

    id: str
    interval_s: float
    polls: int = 0
    readings: int = 0
    overruns: int = 0
    last_poll: float | None = None
    last_data: float | None = None
    last_readings: list[Reading] = field(default_factory=list)
    fault: str | None = None
    fault_since: float | None = None
    faults: int = 0
    events: int = 0

    def observe(self, t: float, readings: list[Reading], events: list[Event]) -> None:
        self.polls += 1
        self.last_poll = t
        if readings:
            self.readings += len(readings)
            self.last_data = t
            self.last_readings = readings
        if events:
            self.events += len(events)
            for e in events:
                if e.kind in FAULT_KINDS:
                    if self.fault is None:
                        self.fault_since = e.time
                    self.fault = str(e.detail.get("error", e.kind))
                    self.faults += 1
                elif e.kind == "instrument_recovered":
                    self.fault = None
                    self.fault_since = None

    def health(self, now: float) -> str:
        if self.fault is not None:
            return "fault"
        if self.last_data is None:
            return "starting" if self.polls == 0 else "no data"
        if now - self.last_data > max(10.0, 5 * self.interval_s):
            return "no data"
        return "ok"

    def to_json(self, now: float) -> dict[str, Any]:
        last: dict[str, Any] = {}
        for r in self.last_readings:
            last[r.signal] = {"value": r.value, "unit": r.unit, "quality": r.quality,
                              "time": to_rfc3339(r.time)}
        return {
            "health": self.health(now),
            "interval_s": self.interval_s,
            "polls": self.polls,
            "readings": self.readings,
            "events": self.events,
            "overruns": self.overruns,
            "last_poll": None if self.last_poll is None else to_rfc3339(self.last_poll),
            "last_data": None if self.last_data is None else to_rfc3339(self.last_data),
            "fault": self.fault,
            "fault_since": None if self.fault_since is None else to_rfc3339(self.fault_since),
            "faults": self.faults,
            "last": last,
        }


def write_status(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema") != STATUS_SCHEMA:
        raise ValueError(f"{path}: not an agent status file ({STATUS_SCHEMA})")
    return doc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the service account)
    return True


def freshness(doc: dict[str, Any], now: float | None = None) -> tuple[bool, float]:
    """(running, seconds since the last write). Stale after three missed intervals."""
    now = time.time() if now is None else now
    age = now - float(doc.get("updated_unix", 0))
    interval = float(doc.get("interval_s", 5))
    running = (doc.get("state") != "stopped" and age <= 3 * interval + 2
               and pid_alive(int(doc.get("pid", 0) or 0)))
    return running, age


def format_status(doc: dict[str, Any], now: float | None = None) -> str:
    running, age = freshness(doc, now)
    lines = [
        f"agent {doc['gateway_id']} (site {doc['site']}), version {doc['agent_version']}, "
        f"pid {doc['pid']}: " + (f"running, status {age:.0f} s old" if running
                                 else f"NOT RUNNING (status {age:.0f} s old)"),
        f"  boot {doc['boot_id']} since {doc['started']}, key {doc['key_id']}, "
        f"config {doc['config_hash'][:16]}",
        f"  clock: {doc['clock']['sync']}, jumps {doc['clock']['jumps']}",
    ]
    ob = doc["outbox"]
    age_s = ob["oldest_unsent_age_s"]
    lines.append(
        f"  outbox: {ob['frames']} frames, {ob['bytes']} bytes"
        f" ({100 * ob['bytes'] / max(1, ob['max_bytes']):.1f} % of {ob['max_bytes']}), "
        f"oldest unsent {'-' if age_s is None else f'{age_s:.0f} s'}, "
        f"seq {ob['seq']}, dropped {ob['dropped_frames']} frames / "
        f"{ob['dropped_readings']} readings"
    )
    if doc.get("storage_error"):
        lines.append(f"  STORAGE ERROR: {doc['storage_error']}")
    up = doc["uplink"]
    where = up.get("broker") or up.get("path") or ""
    err = f", last error: {up['last_error']}" if up.get("last_error") else ""
    lines.append(
        f"  uplink {up['kind']} {where}: {up['state']} since {_t(up.get('since'))}, "
        f"inflight {up.get('inflight', 0)}, delivered {up.get('delivered_frames', 0)} frames, "
        f"connects {up.get('connects', 0)}{err}"
    )
    lines.append(f"  sealed: {doc['sealer']['frames']} frames, "
                 f"{doc['sealer']['readings']} readings this run")
    for iid, st in doc["instruments"].items():
        fault = f" ({st['fault']})" if st.get("fault") else ""
        lines.append(f"  instrument {iid}: {st['health']}{fault}, polls {st['polls']}, "
                     f"readings {st['readings']}, last data {st['last_data'] or '-'}")
        for sig, r in list(st["last"].items())[:12]:
            lines.append(f"      {sig:<24} {r['value']!s:>14} {r['unit']:<8} {r['quality']}")
        if len(st["last"]) > 12:
            lines.append(f"      ... {len(st['last']) - 12} more signals")
    return "\n".join(lines)


def _t(v: Any) -> str:
    if isinstance(v, int | float):
        return to_rfc3339(float(v))
    return "-" if v is None else str(v)
