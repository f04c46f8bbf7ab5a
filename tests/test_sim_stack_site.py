"""The real-time stack CEMS driver (sim/stack_site.py): compressed clock, live patterns,
calibration registers and status coils as the CEMS cabinet shows them."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pytest

from agent.profiles import load_profile
from sim.profiles import encode_registers
from sim.stack_site import (
    REGISTERS,
    STATUS_BITS,
    StackInjection,
    StackSiteDriver,
    parse_stack_scenario,
    values_factory,
)

T0 = 1_700_000_000.0  # 22:13:20 UTC
PROFILES = Path(__file__).resolve().parents[1] / "firmware-config" / "instruments"


def test_parse_stack_scenario() -> None:
    injs = parse_stack_scenario("E4@10-70/signal=so2_mgm3, E8@45/ratio=0.55 E5@0")
    assert injs == [StackInjection("E4", 10.0, 70.0, {"signal": "so2_mgm3"}),
                    StackInjection("E8", 45.0, None, {"ratio": 0.55}),
                    StackInjection("E5", 0.0, None, {})]
    assert parse_stack_scenario(injs[0].text()) == injs[:1]
    assert {i.pattern for i in parse_stack_scenario("demo")} == {"E4", "E8"}
    assert parse_stack_scenario("none") == []


@pytest.mark.parametrize("text, words", [
    ("E3@10", "cannot be played live"),
    ("E4@10-5", "end before start"),
    ("E4@x", "expected PATTERN@START"),
    ("E5@0/signal=o2_stack_pct", "has no limit"),
])
def test_parse_stack_scenario_errors(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_stack_scenario(text)


def test_clock_is_compressed_and_values_follow_the_model() -> None:
    d = StackSiteDriver("S", T0, seconds_per_hour=30.0)
    assert d.sim_time(T0 + 30) - d.sim_time(T0) == pytest.approx(3600.0)
    seen = [d.values(T0 + k) for k in range(0, 120)]
    # a new model sample every 0.5 real s: every poll sees fresh values
    so2 = [v["so2_mgm3"] for v in seen]
    changed = sum(a != b for a, b in itertools.pairwise(so2))
    assert changed > 0.8 * len(so2)
    assert all(v["flow_m3h"] > 1e5 for v in seen)
    assert {k: seen[0][k] for k in REGISTERS} == REGISTERS
    fresh = StackSiteDriver("S", T0, seconds_per_hour=30.0)
    assert d.sim_time(T0 + 10) - 60 < fresh.sample_at(T0 + 10).time <= d.sim_time(T0 + 10)
    # a caller a little behind (a data logger on its own clock) gets its instant's value
    assert d.sample_at(T0 + 10) == fresh.sample_at(T0 + 10)


def test_flat_line_and_calibration_step() -> None:
    injs = tuple(parse_stack_scenario("E4@10-40/signal=so2_mgm3, "
                                      "E8@50/signal=nox_mgm3/ratio=0.5"))
    d = StackSiteDriver("S", T0, injections=injs)
    free = StackSiteDriver("S", T0)  # same seed, no patterns
    flat = {d.values(T0 + 10 + k * 0.5)["so2_mgm3"] for k in range(60)}
    assert len(flat) == 1
    before = [d.values(T0 + 44 + k * 0.5)["nox_mgm3"] for k in range(10)]
    after = [d.values(T0 + 51 + k * 0.5) for k in range(20)]
    assert all(v["span_coeff.nox_mgm3"] == 0.5 for v in after)
    assert d.values(T0 + 49)["span_coeff.nox_mgm3"] == 0.5 or \
        d.registers["span_coeff.nox_mgm3"] == 0.5
    ref = [free.values(T0 + 51 + k * 0.5)["nox_mgm3"] for k in range(20)]
    assert statistics.mean(v["nox_mgm3"] for v in after) == pytest.approx(
        0.5 * statistics.mean(ref), rel=0.05)
    assert statistics.mean(before) > 1.5 * statistics.mean(v["nox_mgm3"] for v in after)
    assert [c[1]["signal"] for c in d.calibrations] == ["span_coeff.nox_mgm3"]
    labels = d.labels()
    assert [x["pattern"] for x in labels] == ["E4", "E8"]
    assert labels[0]["sim_end"] - labels[0]["sim_start"] == pytest.approx(3600.0)


def test_zero_span_check_sets_the_calibration_coil() -> None:
    # the model's daily zero/span check runs 02:00-02:10 simulated time (flag C)
    sim_start = 1_699_927_200.0 - 300  # 01:55 UTC
    d = StackSiteDriver("S", T0, sim_start=sim_start, seconds_per_hour=60.0)
    assert d.values(T0 + 1)["status"] == 0
    assert d.values(T0 + 8)["status"] == 1 << STATUS_BITS["C"]  # 02:03 simulated
    assert d.values(T0 + 20)["status"] == 0  # 02:15


def test_values_encode_into_the_cems_profile() -> None:
    d = StackSiteDriver("S", T0)
    prof = load_profile(PROFILES / "stack_cems.yaml")
    fn = values_factory({"stack1.cems": d})("stack1.cems", prof, None)
    assert fn is not None
    img = encode_registers(prof, fn(T0 + 5))
    assert img["input"] and img["holding"] and set(img["coil"]) == {0, 1, 2, 3}
    assert values_factory({})("x", prof, None) is None
