"""sim/hj212_site.py: the stack model served to a logger in HJ 212 units, the demo's
tamper, the site config section, and the logger run against a listener."""

from __future__ import annotations

import asyncio
import time

import pytest

from sim.hj212_site import (
    DEMO_MN,
    demo_labels,
    demo_tamper,
    driver_values_fn,
    hj212_section,
    start_logger,
)
from sim.stack_site import StackSiteDriver
from stationseal.hj212 import Frame, HJ212Connection, HJ212Listener
from stationseal.hj212.readings import convert

T0 = 1_700_000_000.0


def test_driver_values_in_transmitted_units() -> None:
    d = StackSiteDriver("S", T0)
    codes = driver_values_fn(d)(T0 + 5)
    s = d.sample_at(T0 + 5)
    assert codes["a00000"][0] == pytest.approx(s.values["flow_m3h"] / 3600)  # m³/s
    assert codes["a21026"] == (s.values["so2_mgm3"], s.flags.get("so2_mgm3", "N"))
    # a function returning the current driver works too (the demo swaps drivers)
    assert driver_values_fn(lambda: d)(T0 + 5) == codes


def test_demo_tamper_and_labels() -> None:
    t = demo_tamper()
    out = t.apply({"a21026": (100.0, "N"), "a21002": (50.0, "N"), "a34013": (8.0, "N"),
                   "a19001": (9.0, "N"), "a01014": (7.0, "N")})
    assert out["a21026"][0] == pytest.approx(53.0) and out["a21026"][1] == "N"
    assert out["a34013"][0] == out["a19001"][0] == out["a01014"][0] == 50.0
    labels = demo_labels("S", T0, t)
    assert [lab["pattern"] for lab in labels] == ["E3", "E3"]
    assert demo_tamper(so2_factor=1.0, copy=None).apply({"a21026": (1.0, "N")}) == \
        {"a21026": (1.0, "N")}
    assert hj212_section(9212) == {"host": "127.0.0.1", "port": 9212, "mn": [DEMO_MN],
                                   "poll_interval_s": 0.2}


def test_logger_reports_the_model_to_a_listener() -> None:
    got: list[Frame] = []

    async def on_frame(frame: Frame, conn: HJ212Connection) -> None:
        got.append(frame)

    async def scenario() -> None:
        d = StackSiteDriver("S", time.time())
        async with HJ212Listener(on_frame) as lst:
            run = await start_logger(lst.port, driver_values_fn(d), rtd_interval=0.2,
                                     minute_period=None, hour_period=None, speed=1.0)
            for _ in range(100):
                if len(got) >= 3:
                    break
                await asyncio.sleep(0.05)
            await run.stop()
            assert run.task.done()
            s = d.sample_at(time.time())
            flow = next(r for r in convert(got[-1]).readings if r.signal == "flow_m3h")
            assert flow.value == pytest.approx(s.values["flow_m3h"], rel=0.05)

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(got) >= 3 and all(f.mn == DEMO_MN and f.cn == "2011" for f in got)
