"""Run a StationSeal command with a wall clock that can be stepped from outside.

    python -m tests.chaos.clockshim OFFSET_FILE agent run --config SITE.yaml

``time.time`` and ``time.time_ns`` of that process return the host's wall clock plus the
number of seconds in OFFSET_FILE (re-read at most every 0.2 s); the monotonic clock is
untouched. That is exactly what a step of the system clock looks like to the process
(NTP after a boot without RTC, or an operator with ``date -s``), without changing the
clock of a shared host. libfaketime is not used: with the monotonic clock left real
(``DONT_FAKE_MONOTONIC=1``, needed for the step to be visible at all) its 0.9.10 release
makes ``time.sleep`` fail with EINVAL, and with the monotonic clock faked a step moves
both clocks and hides itself.

Replacing the functions before the agent's modules are imported also reaches default
arguments bound at import (``ClockMonitor(wall=time.time)``).
"""

from __future__ import annotations

import sys
import time

_real_time = time.time
_real_ns = time.time_ns
_state = {"offset": 0.0, "checked": -1.0}


def _offset() -> float:
    now = time.monotonic()
    if now - _state["checked"] >= 0.2:
        _state["checked"] = now
        try:
            with open(_PATH, encoding="ascii") as f:
                _state["offset"] = float(f.read().strip() or 0.0)
        except (OSError, ValueError):
            pass
    return _state["offset"]


def _time() -> float:
    return _real_time() + _offset()


def _time_ns() -> int:
    return _real_ns() + int(_offset() * 1e9)


if __name__ == "__main__":
    _PATH = sys.argv[1]
    time.time = _time
    time.time_ns = _time_ns
    from stationseal.cli import main

    sys.exit(main(sys.argv[2:]))
