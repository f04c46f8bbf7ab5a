"""A simulator of one profile and the real reader connected to it over the real protocol.

Every per-profile test (tests/instruments/test_<profile>.py) runs the same three checks
with values chosen for that instrument: decoded values equal what the simulator served,
quality flags (over range, instrument status) come out right, and a change of a
calibration/configuration register becomes an event with old and new values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.config import InstrumentConfig
from agent.instruments import Instrument, build_instrument
from agent.profiles import Profile, canonical_unit, load_profile
from sim.faults import FaultPlan
from sim.modbus_server import (
    ModbusSimServer,
    SimulatedDevice,
    start_modbus_rtu_server,
    start_modbus_tcp_server,
)
from sim.serial_instrument import SerialInstrumentSim, start_serial_instrument
from stationseal.records import Event, Reading

ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = ROOT / "firmware-config" / "instruments"
SITES_DIR = ROOT / "firmware-config" / "sites"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def profile(name: str) -> Profile:
    return load_profile(PROFILES_DIR / f"{name}.yaml")


def instrument_config(name: str, transport: dict[str, Any], **kw: Any) -> InstrumentConfig:
    data: dict[str, Any] = {"id": kw.pop("id", f"{name}-1"), "profile": name,
                            "transport": transport, "timeout_s": 0.5,
                            "parameter_interval_s": 0, "backoff_initial_s": 0.05,
                            "backoff_max_s": 0.2}
    data.update(kw)
    return InstrumentConfig.model_validate(data)


class Harness:
    """``async with Harness("five_gas", "rtu", values) as h: readings, events = await
    h.poll()``. ``values`` is the simulator's model (constant), ``h.set`` changes one value
    from now on, as an instrument's keypad or a physics model would."""

    def __init__(self, name: str, transport: str, values: dict[str, Any] | None = None, *,
                 unit: int = 1, faults: FaultPlan | None = None, **cfg: Any) -> None:
        self.name = name
        self.profile = profile(name)
        self.transport = transport
        self.values = dict(values or {})
        self.unit = unit
        self.faults = faults or FaultPlan()
        self.cfg_kw = cfg
        self.modbus: ModbusSimServer | None = None
        self.serial: SerialInstrumentSim | None = None
        self.inst: Instrument | None = None

    def _values(self, t: float) -> dict[str, Any]:
        return self.values

    async def __aenter__(self) -> Harness:
        dev = [SimulatedDevice(self.unit, self.profile, self._values, self.faults)]
        if self.transport == "tcp":
            self.modbus = await start_modbus_tcp_server(dev)
            tr: dict[str, Any] = {"type": "modbus_tcp", "host": "127.0.0.1",
                                  "port": self.modbus.port}
        elif self.transport == "rtu":
            self.modbus = await start_modbus_rtu_server(dev, baudrate=19200)
            tr = {"type": "modbus_rtu", "port": self.modbus.port_path, "baudrate": 19200}
        else:
            self.serial = await start_serial_instrument(self.profile, self._values, self.faults,
                                                        output_interval_s=0.05)
            tr = {"type": "serial", "port": self.serial.port_path, "baudrate": 9600}
        self.config = instrument_config(self.name, tr, unit_id=self.unit, **self.cfg_kw)
        self.inst = build_instrument(self.config, self.profile, ROOT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.inst is not None:
            await self.inst.close()
        if self.modbus is not None:
            await self.modbus.stop()
        if self.serial is not None:
            await self.serial.stop()

    def set(self, signal: str, value: Any) -> None:
        self.values[signal] = value

    @property
    def served(self) -> dict[str, Any]:
        if self.modbus is not None:
            return self.modbus.device(self.unit).last_served
        assert self.serial is not None
        return self.serial.last_served

    async def poll(self) -> tuple[list[Reading], list[Event]]:
        assert self.inst is not None
        return await self.inst.poll()

    async def poll_until(self, pred: Callable[[list[Reading], list[Event]], bool],
                         timeout: float = 5.0) -> tuple[list[Reading], list[Event]]:
        """Poll (every 20 ms) until ``pred(readings of this poll, events so far)``."""
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            r, e = await self.poll()
            events += e
            if pred(r, events):
                return r, events
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; last readings "
                                     f"{[(x.signal, x.value, x.quality) for x in r]}, "
                                     f"events {events}")
            await asyncio.sleep(0.02)


def by_signal(readings: list[Reading]) -> dict[str, Reading]:
    return {r.signal: r for r in readings}


def has_all(signals: list[str]) -> Callable[[list[Reading], list[Event]], bool]:
    return lambda r, e: set(signals) <= {x.signal for x in r}


@dataclass
class ProfileCase:
    profile: str
    transport: str
    #: canonical values the simulator serves (chosen exactly representable on the wire)
    values: dict[str, Any]
    #: a measurement pushed outside its range -> quality T
    out_of_range: tuple[str, float]
    #: status word -> flag every measurement must carry
    status: tuple[int, str]
    #: parameter signal, new value, expected event kind
    parameter: tuple[str, float, str]


def check_values(case: ProfileCase) -> dict[str, Reading]:
    """Readings equal what the simulator served, flag N, canonical unit, raw bytes kept."""

    async def scenario() -> dict[str, Reading]:
        async with Harness(case.profile, case.transport, case.values) as h:
            meas = h.profile.measurement_signals
            readings, events = await h.poll_until(has_all(meas))
            assert [e for e in events if e.kind != "instrument_recovered"] == []
            got = by_signal(readings)
            served = h.served
            for sig in meas:
                r = got[sig]
                assert r.value == pytest.approx(case.values[sig], rel=1e-6, abs=1e-9), sig
                assert r.value == pytest.approx(served[sig], rel=1e-6, abs=1e-9), sig
                assert r.quality == "N", (sig, r.quality)
                assert r.unit == canonical_unit(sig)
                assert r.instrument == h.config.id
                assert r.raw
            return got

    return run(scenario())


def check_flags(case: ProfileCase) -> None:
    """Out of range -> T for that signal only; a status word -> its flag on every
    measurement (status outranks range)."""

    async def scenario() -> None:
        async with Harness(case.profile, case.transport, case.values) as h:
            meas = h.profile.measurement_signals
            sig, bad = case.out_of_range
            h.set(sig, bad)

            def out_seen(r: list[Reading], e: list[Event]) -> bool:
                g = by_signal(r)
                return sig in g and g[sig].value == pytest.approx(bad, rel=1e-6)

            readings, _ = await h.poll_until(out_seen)
            got = by_signal(readings)
            assert got[sig].quality == "T"
            assert {got[s].quality for s in meas if s != sig and s in got} == {"N"}

            word, flag = case.status
            h.set(sig, case.values[sig])
            h.set("status", word)

            def flagged(r: list[Reading], e: list[Event]) -> bool:
                return has_all(meas)(r, e) and all(x.quality == flag for x in r
                                                   if x.signal in meas)

            await h.poll_until(flagged)
            h.set("status", 0)
            await h.poll_until(lambda r, e: has_all(meas)(r, e)
                               and all(x.quality == "N" for x in r if x.signal in meas))

    run(scenario())


def check_parameter_change(case: ProfileCase) -> Event:
    """A changed calibration/configuration register: one event with old and new values
    and raw bytes, plus a reading of the new value; unchanged values are not repeated."""

    async def scenario() -> Event:
        async with Harness(case.profile, case.transport, case.values) as h:
            sig, new, kind = case.parameter
            old = case.values.get(sig)
            readings, _ = await h.poll_until(lambda r, e: sig in by_signal(r))
            baseline = by_signal(readings)[sig]
            if old is not None:
                assert baseline.value == pytest.approx(old)
            # unchanged: no new reading of the parameter, no event
            r2, e2 = await h.poll()
            assert sig not in by_signal(r2)
            assert [e for e in e2 if e.kind == kind] == []
            h.set(sig, new)
            readings, events = await h.poll_until(
                lambda r, e: any(x.kind == kind for x in e))
            ev = next(x for x in events if x.kind == kind)
            assert ev.instrument == h.config.id
            assert ev.detail["signal"] == sig
            assert ev.detail["old"] == pytest.approx(baseline.value)
            assert ev.detail["new"] == pytest.approx(new, rel=1e-6)
            assert baseline.raw is not None and ev.detail["raw_old"] == baseline.raw.hex()
            assert ev.detail["raw_new"] != ev.detail["raw_old"]
            assert by_signal(readings)[sig].value == pytest.approx(new, rel=1e-6)
            assert len([e for e in events if e.kind in ("calibration_change",
                                                         "config_change")]) == 1
            return ev

    return run(scenario())
