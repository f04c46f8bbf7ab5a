"""The chaos scenarios (tests/chaos/scenarios.py) in their short versions, through pytest.

A few cheap ones, one per fault class (broker crash, process kill, clock step, misbehaving
instrument, hostile payloads), run with the ordinary suite; the others run only with
``STATIONSEAL_CHAOS=1`` (``make chaos`` runs all of them, full length, as one table).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stack_helpers import stack_binaries_missing

from tests.chaos.scenarios import SCENARIOS, Ctx, run

CI = ("broker-crash", "agent-kill9", "clock-steps", "modbus-garbage", "i2-cbor-utf8-leak")
ALL = os.environ.get("STATIONSEAL_CHAOS") == "1"

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_scenario_short(name: str, tmp_path: Path) -> None:
    if name not in CI and not ALL:
        pytest.skip("set STATIONSEAL_CHAOS=1 (or run `make chaos`) for this scenario")
    missing = stack_binaries_missing()
    if missing:
        pytest.skip(missing)
    sc = next(s for s in SCENARIOS if s.name == name)
    r = run(sc, Ctx(tmp_path, full=False))
    assert r.error is None, f"{r.error}\n{r.extra.get('traceback', '')}"
    failed = [w for w, ok in r.checks if not ok]
    assert r.checks and not failed, f"{name}: {failed}; notes: {r.notes}"
