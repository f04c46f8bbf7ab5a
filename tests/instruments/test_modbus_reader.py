"""Modbus reader behaviour beyond decoding: request planning, errors as events, back-off,
isolation of a failing slave, one lock per wire."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from instrument_helpers import SITES_DIR, Harness, instrument_config, profile, run

from agent.config import load_site_config
from agent.instruments import build_instrument, build_instruments
from agent.modbus import BusPool, ModbusInstrument, _Item, plan_blocks
from agent.profiles import ModbusPoint
from sim.faults import Fault, FaultPlan
from sim.modbus_server import SimulatedDevice, start_modbus_rtu_server
from stationseal.records import Event


def _item(table: str, address: int, count: int) -> _Item:
    p = ModbusPoint.model_validate({"signal": "hc_ppm", "register": table, "address": address,
                                    "data_type": "bits" if table in ("coil", "discrete")
                                    else "int16"})
    return _Item(table, address, count, p)


def test_contiguous_points_coalesce_up_to_max_registers() -> None:
    items = [_item("holding", a, 2) for a in range(0, 20, 2)]
    blocks = plan_blocks(items, max_registers=8)
    assert [(b.address, b.count) for b in blocks] == [(0, 8), (8, 8), (16, 4)]


def test_gaps_and_register_types_split_blocks() -> None:
    items = [_item("holding", 0, 2), _item("holding", 3, 1), _item("input", 2, 2),
             _item("holding", 2, 1), _item("coil", 0, 1), _item("coil", 1, 1)]
    got = sorted((b.register, b.address, b.count) for b in plan_blocks(items, 125))
    assert got == [("coil", 0, 2), ("holding", 0, 4), ("input", 2, 2)]


def test_overlapping_points_share_a_block() -> None:
    items = [_item("holding", 10, 2), _item("holding", 10, 1), _item("holding", 11, 1)]
    assert [(b.address, b.count) for b in plan_blocks(items, 125)] == [(10, 2)]


def test_five_gas_plan_with_small_requests() -> None:
    cfg = instrument_config("five_gas", {"type": "modbus_tcp", "host": "127.0.0.1"},
                            max_registers=4)
    assert cfg.transport.type == "modbus_tcp"
    inst = ModbusInstrument(cfg, profile("five_gas"), BusPool().acquire(cfg.transport),
                            BusPool())
    got = [(b.register, b.address, b.count, b.parameters) for b in inst.blocks]
    # status (8) is read first; 0..8 split in 4s; parameters 100..110 separately
    assert got[0] == ("holding", 8, 1, False)
    assert sorted(got[1:3]) == [("holding", 0, 4, False), ("holding", 4, 4, False)]
    assert got[3:] == [("holding", 100, 4, True), ("holding", 104, 4, True),
                       ("holding", 108, 3, True)]


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def test_exception_response_is_an_event_naming_block_and_unit() -> None:
    async def scenario() -> None:
        async with Harness("five_gas", "tcp", {}, unit=3) as h:
            h.faults.add(Fault("exception", 0, None, code=2))
            readings, events = await h.poll()
            assert readings == []
            # one event per refused block: measurements+status, then parameters
            assert _kinds(events) == ["instrument_fault", "instrument_fault"]
            assert events[0].detail == {
                "error": "Modbus exception 2 (illegal data address) reading holding 0..8 "
                         "unit 3", "exception_code": 2}
            assert events[1].detail["error"].endswith("reading holding 100..110 unit 3")
            # the same errors again are counted, not re-sent
            assert (await h.poll())[1] == []
            h.faults.clear()
            readings, events = await h.poll_until(lambda r, e: bool(r))
            assert _kinds(events) == ["instrument_recovered"]
            assert events[0].detail["failures"] == 4
            assert events[0].detail["last_error"].startswith("Modbus exception 2")

    run(scenario())


def test_silent_slave_backs_off_and_recovers() -> None:
    async def scenario() -> None:
        async with Harness("five_gas", "rtu", {}, timeout_s=0.2, backoff_initial_s=2.0,
                           backoff_max_s=2.0) as h:
            await h.poll()
            dev = h.modbus.device(1)  # type: ignore[union-attr]
            h.faults.add(Fault("timeout", 0, None))
            before = dev.requests
            _, e1 = await h.poll()   # fails
            _, e2 = await h.poll()   # first failure is retried at once, fails again
            for _ in range(5):       # backing off: nothing is sent
                r, e = await h.poll()
                assert r == [] and e == []
            assert dev.requests - before == 2
            assert _kinds(e1) == ["instrument_fault"] and e2 == []
            assert e1[0].detail["error"] == "timeout after 0.2 s reading holding 0..8 unit 1"

    run(scenario())


@pytest.mark.parametrize(("transport", "fault", "error"), [
    ("rtu", "bad_checksum", "CRC mismatch in answer within 0.3 s reading holding 0..8 unit 1"),
    ("rtu", "garbage", "no valid Modbus frame within 0.3 s reading holding 0..8 unit 1"),
    ("tcp", "garbage", "no valid Modbus frame within 0.3 s reading holding 0..8 unit 1"),
])
def test_garbled_answers_are_malformed_response_events_with_the_bytes(
        transport: str, fault: str, error: str) -> None:
    async def scenario() -> None:
        async with Harness("five_gas", transport, {}, timeout_s=0.3) as h:
            await h.poll()
            h.faults.add(Fault(fault, 0, None))
            readings, events = await h.poll()
            assert readings == []
            assert _kinds(events) == ["malformed_response"]
            assert events[0].detail["error"] == error
            assert len(bytes.fromhex(events[0].detail["raw"])) >= 4

    run(scenario())


def test_one_dead_slave_does_not_stop_the_others_on_its_bus() -> None:
    async def scenario() -> None:
        gas, cems = profile("five_gas"), profile("stack_cems")
        dead = FaultPlan([Fault("timeout")])
        srv = await start_modbus_rtu_server([SimulatedDevice(1, gas, faults=dead),
                                             SimulatedDevice(2, cems)], baudrate=19200)
        tr = {"type": "modbus_rtu", "port": srv.port_path, "baudrate": 19200}
        pool = BusPool()
        a = build_instrument(instrument_config("five_gas", tr, id="a", unit_id=1,
                                               timeout_s=0.2), gas, Path("."), buses=pool)
        b = build_instrument(instrument_config("stack_cems", tr, id="b", unit_id=2), cems,
                             Path("."), buses=pool)
        try:
            for _ in range(3):
                (ra, _ea), (rb, eb) = await asyncio.gather(a.poll(), b.poll())
                assert ra == []
                assert {r.signal for r in rb} >= set(cems.measurement_signals)
                assert eb == []
        finally:
            await a.close()
            await b.close()
            await srv.stop()

    run(scenario())


def test_units_on_one_line_share_one_bus_and_never_interleave() -> None:
    async def scenario() -> None:
        gas = profile("five_gas")
        srv = await start_modbus_rtu_server([SimulatedDevice(u, gas) for u in (1, 2, 3)],
                                            baudrate=19200)
        tr = {"type": "modbus_rtu", "port": srv.port_path, "baudrate": 19200}
        pool = BusPool()
        insts = [build_instrument(instrument_config("five_gas", tr, id=f"g{u}", unit_id=u),
                                  gas, Path("."), buses=pool) for u in (1, 2, 3)]
        try:
            assert len({id(i._bus) for i in insts}) == 1  # type: ignore[attr-defined]
            for _ in range(10):
                results = await asyncio.gather(*(i.poll() for i in insts))
                for readings, events in results:
                    assert events == []
                    assert len(readings) >= 8
        finally:
            for i in insts:
                await i.close()
            await srv.stop()
        assert pool._buses == {}  # released with the last instrument

    run(scenario())


def test_unreachable_endpoint_is_an_event_not_an_exception() -> None:
    async def scenario() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: connection refused
            inst = build_instrument(instrument_config(
                "chassis_dyno", {"type": "modbus_tcp", "host": "127.0.0.1", "port": port}),
                profile("chassis_dyno"), Path("."), buses=BusPool())
            readings, events = await inst.poll()
            await inst.close()
        assert readings == []
        assert events[0].kind == "instrument_fault"
        assert events[0].detail["error"] == f"cannot connect to tcp://127.0.0.1:{port}"

    run(scenario())


def test_absent_rtu_slave_times_out() -> None:
    async def scenario() -> None:
        async with Harness("five_gas", "rtu", {}, unit=1) as h:
            tr = {"type": "modbus_rtu", "port": h.modbus.port_path,  # type: ignore[union-attr]
                  "baudrate": 19200}
            ghost = build_instrument(instrument_config("five_gas", tr, id="ghost", unit_id=9,
                                                       timeout_s=0.2), h.profile, Path("."))
            try:
                readings, events = await ghost.poll()
            finally:
                await ghost.close()
            assert readings == []
            assert events[0].detail["error"] == "timeout after 0.2 s reading holding 0..8 unit 9"

    run(scenario())


def test_parameters_are_read_at_their_own_interval() -> None:
    async def scenario() -> None:
        async with Harness("five_gas", "tcp", {}, parameter_interval_s=3600) as h:
            first, _ = await h.poll()
            assert "span_coeff.co_pct" in {r.signal for r in first}
            h.set("span_coeff.co_pct", 1.5)
            for _ in range(3):
                readings, events = await h.poll()
                assert events == []
                assert "span_coeff.co_pct" not in {r.signal for r in readings}

    run(scenario())


def test_technician_write_over_modbus_is_seen_as_a_calibration_change() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    async def scenario() -> None:
        async with Harness("five_gas", "tcp", {}) as h:
            await h.poll()
            assert h.modbus is not None
            client = AsyncModbusTcpClient("127.0.0.1", port=h.modbus.port)
            await client.connect()
            # span_coeff.co_pct at 102..103, CDAB: 1.25 = 0x3FA00000 -> 0x0000, 0x3FA0
            await client.write_registers(102, [0x0000, 0x3FA0], device_id=1)
            client.close()
            _, events = await h.poll()
            ev = [e for e in events if e.kind == "calibration_change"]
            assert len(ev) == 1
            assert ev[0].detail["signal"] == "span_coeff.co_pct"
            assert (ev[0].detail["old"], ev[0].detail["new"]) == (1.0, 1.25)

    run(scenario())


def test_build_instruments_shares_buses_of_a_site() -> None:
    cfg = load_site_config(SITES_DIR / "vehicle-station-example.yaml")
    insts = build_instruments(cfg)
    gas = [i for i in insts if i.id in ("lane1-gas", "lane2-gas")]
    dynos = [i for i in insts if i.id.endswith("-dyno")]
    assert gas[0]._bus is gas[1]._bus  # type: ignore[attr-defined]
    assert dynos[0]._bus is not dynos[1]._bus  # type: ignore[attr-defined]

    async def close_all() -> None:
        await asyncio.gather(*(i.close() for i in insts))

    run(close_all())


def test_nan_from_a_float_register_is_kept_and_flagged_fault() -> None:
    async def scenario() -> None:
        async with Harness("stack_cems", "tcp", {"so2_mgm3": float("nan"), "nox_mgm3": -5.0}) as h:
            readings, _ = await h.poll()
            got = {r.signal: r for r in readings}
            assert got["so2_mgm3"].value != got["so2_mgm3"].value
            assert got["so2_mgm3"].quality == "D"
            assert (got["nox_mgm3"].value, got["nox_mgm3"].quality) == (-5.0, "T")
            assert got["pm_mgm3"].quality == "N"

    run(scenario())
