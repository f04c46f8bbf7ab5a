"""The real-time lane driver (sim/lane.py) and the central lane-context translation
(ingest/testcontext.py): schedules, instrument faces, injected patterns, and test context
read over real Modbus and turned back into tests."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from agent.config import InstrumentConfig
from agent.instruments import build_instrument
from agent.profiles import load_profile
from ingest.testcontext import LaneContexts
from sim.lane import (
    Injection,
    LaneConfig,
    LaneDriver,
    parse_scenario,
    values_factory,
)
from sim.modbus_server import SimulatedDevice, start_modbus_tcp_server
from stationseal import lanecodes as lc
from stationseal import vehicle_results as vres
from stationseal.frame import ZERO_HASH, Frame, seal
from stationseal.keys import generate_keypair
from stationseal.records import Reading, Sample, SiteEvent
from stationseal.signing import load_signer

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "firmware-config" / "instruments"
T0 = 1_700_000_000.0


def driver(lane: str = "L1", scenario: str = "", **kw: Any) -> LaneDriver:
    injs = tuple(i for i in parse_scenario(scenario) if i.lane == lane)
    kw.setdefault("max_emission_factor", 1.0)
    return LaneDriver(LaneConfig("S1", lane, injections=injs, **kw), T0)


# --------------------------------------------------------------------------- scenario


def test_parse_scenario_forms_and_presets() -> None:
    injs = parse_scenario("V1@L1:3/variant=leak, V6@L2:2-4/variant=car V9@L2, "
                          "V4@L1:1+5+7, V8@L1:2-/variant=speed/seconds=4")
    assert [(i.rule, i.lane, i.tests, i.open_from) for i in injs] == [
        ("V1", "L1", (3,), None), ("V6", "L2", (2, 3, 4), None), ("V9", "L2", (), 1),
        ("V4", "L1", (1, 5, 7), None), ("V8", "L1", (), 2)]
    assert injs[0].variant == "leak" and injs[2].variant == "default"
    assert injs[4].params == {"variant": "speed", "seconds": 4.0}
    assert injs[3].applies(5) and not injs[3].applies(4)
    assert injs[4].applies(9) and not injs[4].applies(1)
    assert parse_scenario("none") == []
    assert {i.rule for i in parse_scenario("demo")} >= {"V1", "V8", "V9"}
    assert parse_scenario(injs[1].text())[0] == injs[1]


@pytest.mark.parametrize("text, words", [
    ("V11@L1:1", "unknown rule"),
    ("V1@L1:0", "bad test number"),
    ("V1-L1", "expected RULE@LANE"),
    ("V1@L1:1/variant=nope", "no variant"),
    ("V7@L1:1/variant=gap", "variant=short"),
    ("V6@L1:1-3/variant=retest", "exactly two tests"),
])
def test_parse_scenario_errors_name_the_entry(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_scenario(text)


def test_lane_config_refuses_patterns_its_methods_cannot_carry() -> None:
    with pytest.raises(ValueError, match="needs one of the methods"):
        LaneConfig("S1", "L1", methods=("free_accel",),
                   injections=(Injection("V1", "L1", (1,)),))
    with pytest.raises(ValueError, match="is for lane L2"):
        LaneConfig("S1", "L1", injections=(Injection("V1", "L2", (1,)),))
    with pytest.raises(ValueError, match="target the same test"):
        LaneConfig("S1", "L1", injections=tuple(parse_scenario("V1@L1:3, V8@L1:2-")))
    LaneConfig("S1", "L1", injections=tuple(parse_scenario("V1@L1:3, V9@L1:1-, V8@L1:4-")))


# --------------------------------------------------------------------------- schedule


def test_schedule_does_not_depend_on_who_asks_when() -> None:
    a, b = driver(), driver()
    t_end = T0 + 900
    # one driver is asked every 0.5 s, the other every 3.5 s
    seen_a = {k * 0.5: a.values("analyzer", T0 + k * 0.5) for k in range(1800)}
    for k in range(257):
        assert b.values("analyzer", T0 + k * 3.5) == seen_a[k * 3.5]
    la, lb = a.labels(t_end), b.labels(t_end)
    assert la == lb and len(la) >= 4
    assert [x["method"] for x in la[:3]] == ["asm5025", "idle", "free_accel"]
    starts = [x["start"] for x in la]
    assert all(s == int(s) for s in starts)  # whole seconds
    assert all(x["end"] < y["start"] for x, y in itertools.pairwise(la))


def test_lane_controller_face_follows_the_tests() -> None:
    d = driver()
    idle = d.values("lane", T0 + 1)
    assert idle["lane_test_state"] == lc.STATE_IDLE and idle["lane_test_id"] == 0
    first = d.tests(T0 + 10)[0]
    seen_phases = []
    for k in range(int(first.end - first.start)):
        v = d.values("lane", first.start + k + 0.5)
        assert v["lane_test_state"] == lc.STATE_TESTING
        assert v["lane_test_id"] == first.number == 1
        assert v["lane_method"] == lc.METHOD_CODES[first.method]
        assert lc.decode_text(v["lane_vehicle"]) == first.plate
        assert v["lane_vin"] == first.vin and v["lane_model"] == first.model
        seen_phases.append(lc.phase_name(first.method, v["lane_phase"]))
    assert seen_phases == first.phases
    assert "fast" in seen_phases  # ASM fast mode reached
    after = d.values("lane", first.end + 0.5)
    assert after["lane_test_state"] == lc.STATE_FINISHED
    assert after["lane_result"] == lc.RESULT_CODES[first.result]


def test_instruments_show_the_test_and_rest_between_tests() -> None:
    d = driver(gap_s=(20.0, 20.0))
    first = d.tests(T0 + 10)[0]
    fast = [k for k, p in enumerate(first.phases) if p == "fast"]
    a = d.values("analyzer", first.start + fast[-1] + 0.3)
    assert a["co_pct"] + a["co2_pct"] > 13.0 and a["o2_pct"] < 2.0
    dy = d.values("dyno", first.start + fast[-1] + 0.3)
    assert abs(dy["speed_kmh"] - vres.ASM_SPEED[first.method]) < 3.0
    assert dy["power_kw"] == pytest.approx(dy["force_n"] * dy["speed_kmh"] / 3600, rel=0.03)
    # car and probe stay a few seconds after the end; then the rollers coast down
    held = d.values("analyzer", first.end + 1.5)
    assert held["co_pct"] + held["co2_pct"] > 13.0
    last_speed = first.rows["dyno"][-1]
    assert last_speed is not None
    assert d.values("dyno", first.end + 1.5)["speed_kmh"] == last_speed["speed_kmh"]
    assert 0 < d.values("dyno", first.end + 8.5)["speed_kmh"] < last_speed["speed_kmh"]
    gap = first.end + 12.5
    assert d.values("analyzer", gap)["co2_pct"] < 0.2
    assert d.values("dyno", gap)["speed_kmh"] == 0.0
    assert d.values("obd", gap)["status"] == 1  # no vehicle on the OBD adapter
    w1, w2 = d.values("weather", gap), d.values("weather", gap + 60)
    assert 0 < w1["ambient_rh_pct"] <= 100 and w1 != w2


def test_one_tachometer_feeds_both_exhaust_instruments() -> None:
    d = driver(methods=("asm5025", "free_accel", "lug_down"))
    gas, diesel, lug = d.tests(T0 + 500)[:3]
    for t in (gas.start + 12.2, diesel.start + 20.2, gas.end + 2.0, lug.start + 30.2):
        a, o = d.values("analyzer", t), d.values("opacimeter", t)
        assert a["rpm"] == o["rpm"] > 500 and a["oil_temp_c"] == o["oil_temp_c"]
    assert d.values("opacimeter", gas.start + 12.2)["k_m1"] < 0.02  # not in use


def test_channels_a_test_does_not_use_stay_at_rest() -> None:
    d = driver(methods=("lug_down",))
    lug = d.tests(T0 + 200)[0]
    a = d.values("analyzer", lug.start + 40.2)
    assert a["co2_pct"] > 5.0  # the one channel lug-down uses
    assert a["hc_ppm"] <= 5 and a["co_pct"] == 0.0 and a["o2_pct"] > 20.0
    assert set(a) >= {"hc_ppm", "co_pct", "co2_pct", "o2_pct", "no_ppm", "lambda", "rpm",
                      "oil_temp_c", "status"}


def test_stop_aborts_the_test_under_way_and_starts_no_other() -> None:
    d = driver()
    first = d.tests(T0 + 10)[0]
    cut = first.start + 12.4
    d.stop(cut)
    assert first.aborted and first.result == "" and first.end == first.start + 13
    v = d.values("lane", first.start + 13.5)
    assert v["lane_test_state"] == lc.STATE_ABORTED and v["lane_result"] == 0
    assert len(d.tests(T0 + 900)) == 1
    assert d.values("analyzer", first.start + 14)["co2_pct"] < 0.2  # no tail after abort


def test_a_closing_lane_starts_only_tests_it_can_finish() -> None:
    open_lane = driver().tests(T0 + 400)
    closing = LaneDriver(driver().cfg, T0, close_at=open_lane[2].end - 1)
    got = closing.tests(T0 + 400)
    assert [t.test_id for t in got] == [t.test_id for t in open_lane[:2]]
    assert closing.values("lane", T0 + 399)["lane_test_state"] == lc.STATE_FINISHED


def test_probe_out_dilutes_only_the_injected_test() -> None:
    d = driver(scenario="V1@L1:1/variant=probe_out/dilution=0.3")
    t1, t2 = d.tests(T0 + 400)[:2]
    assert t1.patterns == {"V1": "probe_out"} and t2.patterns == {}

    def scored_co_co2(t: Any) -> list[float]:
        rows = t.rows["analyzer"]
        return [r["co_pct"] + r["co2_pct"] for r, p in zip(rows, t.phases, strict=True)
                if r is not None and p in vres.SCORED_PHASES]

    assert max(scored_co_co2(t1)) < 6.0
    assert min(scored_co_co2(t2)) > 10.0


def test_constant_weather_from_the_injected_test_on() -> None:
    d = driver(scenario="V9@L1:2-")
    t1, t2, t3 = d.tests(T0 + 600)[:3]
    before = {tuple(d.values("weather", t1.start + k).values()) for k in range(0, 20)}
    assert len(before) > 1
    for t in (t2.start + 1, t2.end + 0.5, t3.start + 5):
        w = d.values("weather", t)
        assert (w["ambient_temp_c"], w["ambient_rh_pct"], w["ambient_kpa"]) == (25.0, 80.0,
                                                                                  101.0)
    assert t1.patterns == {} and t2.patterns == {"V9": "default"}


def test_substitute_car_replays_one_run_under_other_plates() -> None:
    d = driver(scenario="V6@L1:1-3/variant=car", methods=("vmas", "idle"))
    t1, t2, t3 = d.tests(T0 + 700)[:3]
    assert {t.method for t in (t1, t2, t3)} == {"vmas"}
    assert len({t.plate for t in (t1, t2, t3)}) == 3
    assert t1.group == t2.group == t3.group != ""
    co2 = [[r["co2_pct"] if r else 0.0 for r in t.rows["analyzer"]] for t in (t1, t2)]
    n = min(map(len, co2))
    diffs = [abs(x - y) for x, y in zip(co2[0][:n], co2[1][:n], strict=True)]
    assert sum(diffs) / n < 0.2  # same curve, only instrument noise differs


def test_retest_stand_in_passes_under_the_failed_plate() -> None:
    d = driver(scenario="V6@L1:1+2/variant=retest", methods=("asm5025",))
    t1, t2 = d.tests(T0 + 400)[:2]
    assert t1.result == "fail" and t2.result == "pass"
    assert t1.plate == t2.plate and t1.vin == t2.vin
    assert t2.start - t1.end < 30 * 60


def test_cheat_box_ids_on_the_controller() -> None:
    d = driver(scenario="V4@L1:1+2+3", methods=("asm5025", "asm2540", "idle"))
    tests = d.tests(T0 + 600)[:3]
    assert len({(t.calid, t.cvn) for t in tests}) == 1
    v = d.values("lane", tests[0].start + 2)
    assert v["lane_calid"] == tests[0].calid.upper() and v["lane_calid"].startswith("CB")


def test_values_factory_routes_instruments_to_their_lane() -> None:
    d1, d2 = driver("L1"), driver("L2", seed=7)
    f = values_factory({"L1": d1, "L2": d2})
    prof = load_profile(PROFILES / "five_gas.yaml")
    fn2 = f("L2.analyzer", prof, None)
    assert fn2 is not None
    t = d2.tests(T0 + 30)[0].start + 10.3
    assert fn2(t) == d2.values("analyzer", t)
    assert f("stack", load_profile(PROFILES / "stack_cems.yaml"), None) is None
    weather = f("weather", load_profile(PROFILES / "weather_station.yaml"), None)
    assert weather is not None and weather(t) == d1.values("weather", t)


# --------------------------------------------------------------------------- over the wire


def test_controller_registers_read_by_the_gateway() -> None:
    """The agent's Modbus reader decodes what the driver's controller face shows."""
    d = driver()
    first = d.tests(T0 + 10)[0]
    t_probe = first.start + 3.5

    async def scenario() -> list[Reading]:
        prof = load_profile(PROFILES / "lane_controller.yaml")
        srv = await start_modbus_tcp_server(
            [SimulatedDevice(1, prof, lambda t: d.values("lane", t_probe))])
        cfg = InstrumentConfig.model_validate({
            "id": "L1.lane", "profile": "lane_controller", "timeout_s": 0.5,
            "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": srv.port}})
        inst = build_instrument(cfg, prof, ROOT)
        try:
            for _ in range(50):
                readings, _ev = await inst.poll()
                if readings:
                    return readings
                await asyncio.sleep(0.05)
            raise AssertionError("no readings from the lane controller simulator")
        finally:
            await inst.close()
            await srv.stop()

    got = {r.signal: r.value for r in asyncio.run(scenario())}
    assert got["lane_test_state"] == lc.STATE_TESTING
    assert got["lane_test_id"] == 1
    assert lc.METHOD_BY_CODE[int(got["lane_method"])] == first.method
    assert isinstance(got["lane_vehicle"], str)
    assert lc.decode_text(got["lane_vehicle"]) == first.plate  # GBK plate survives
    assert got["lane_vin"] == first.vin and got["lane_model"] == first.model


# --------------------------------------------------------------------------- central side


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    kf = generate_keypair("gw-lane", tmp_path_factory.mktemp("keys"))
    return load_signer(kf.private_key)


#: When in each second the simulated gateway polls each role: the lane controller last,
#: so its reading of a second arrives after the other instruments' (the hard case).
POLL_OFFSETS = {"analyzer": 0.05, "obd": 0.3, "lane": 0.85}


def _frames(d: LaneDriver, signer: Any, until: float) -> list[Frame]:
    """What a gateway polling the lane at 1 Hz would seal, one frame per second."""
    frames: list[Frame] = []
    prev = ZERO_HASH
    boot = os.urandom(16)
    t = d.start
    seq = 0
    while t < until:
        readings: list[Reading] = []
        for role, off in POLL_OFFSETS.items():
            vals = d.values(role, t + off)
            for sig, v in vals.items():
                if sig == "status":
                    continue
                flag = "D" if role == "obd" and vals.get("status") else "N"
                unit = "text" if isinstance(v, str) else "1"
                readings.append(Reading(f"{d.lane}.{role}", sig, v, unit, t + off, flag))
        seq += 1
        f = seal(signer, gateway_id="gw-lane", site="S1", boot_id=boot, seq=seq,
                 prev_hash=prev, created=t + 0.9, clock_sync="synced", readings=readings,
                 events=[])
        prev = f.frame_hash
        frames.append(f)
        t += 1.0
    return frames


def test_lane_context_becomes_tests_for_the_detectors(signer: Any) -> None:
    from ingest.convert import frame_records
    from ingest.detectors.segments import TestAssembler

    d = driver(scenario="V1@L1:2")
    until = T0 + 260
    truth = [t for t in d.tests(until) if t.end + 2 < until]
    lanes = LaneContexts()
    asm = TestAssembler()
    events: list[SiteEvent] = []
    tests = []
    released = [r for f in _frames(d, signer, until)
                for r in lanes.annotate(f, frame_records(f))] + lanes.flush()
    assert [r.time for r in released] == sorted(r.time for r in released)
    for r in released:
        if isinstance(r, SiteEvent):
            events.append(r)
            tests += asm.on_event(r)
        else:
            assert isinstance(r, Sample)
            tests += asm.on_sample(r)
    tests += asm.finish()
    starts = [e for e in events if e.event == "test_start"]
    ends = [e for e in events if e.event == "test_end"]
    assert [e.detail["test_id"] for e in ends] == [t.test_id for t in truth]
    assert [e.detail["result"] for e in ends] == [t.result for t in truth]
    assert [e.detail["vehicle"] for e in starts[:len(truth)]] == [t.plate for t in truth]
    assert all(e.origin is not None and e.origin[0] == "gw-lane" for e in events)
    assert ends[0].detail["odometer_km"] > 0
    assert abs(starts[0].time - truth[0].start) < 1.1
    by_id = {t.id: t for t in tests}
    for t in truth:
        rec = by_id[t.test_id]
        assert not rec.inferred and rec.method == t.method and rec.vehicle == t.plate
        # every second of the test carries the phase the lane had in that very second,
        # although the controller is read after the other instruments
        in_test = [s for s in rec.seconds if t.start <= s.t < t.end]
        assert [s.phase for s in in_test] == t.phases
        # seconds after the end, while the lane shows the test finished, say so
        assert {s.phase for s in rec.seconds if s.t >= t.end} <= {"finished"}
    assert lanes.open.keys() <= {("S1", "L1.lane")}
