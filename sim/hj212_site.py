"""A site's HJ 212 data logger reporting to the gateway's HJ 212 listener.

Glue between the logger simulator (sim/hj212_logger.py), the stack model
(sim/stack_site.py) and the gateway's listener (agent/hj212_source.py), for the demo and
tests (wiring in /work/notes/hj212-demo.md):

* :func:`driver_values_fn` serves a stack driver's samples to the logger in the *units
  HJ 212 transmits* (flue gas flow in m³/s, not the canonical m³/h), so an honest logger
  reconciles with the analyzer;
* :func:`demo_tamper` is the manipulated logger of the demo: SO2 × 0.53 and the NOx
  value copied into the dust, O2 and moisture channels (patterns E3);
* :func:`start_logger` runs a logger against a listener port until stopped;
* :func:`revision_frame` / :func:`send_frame` re-send data for a time already reported
  with other flags or values (``RF=1``, pattern E6 "flag changed after data time").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sim.hj212_logger import HJ212Logger, SentRecord, Tamper
from stationseal.hj212 import (
    CP,
    VERSION_2025,
    Frame,
    QnSource,
    StreamDecoder,
    format_number,
    make_flag,
    signal_map,
)
from stationseal.hj212.codes import SIGNAL_TO_HJ212

log = logging.getLogger(__name__)

#: The demo logger's MN (24 characters, as the standard's examples).
DEMO_MN = "320600DEMOCEMS0000000001"
#: SO2 reported at this fraction of what the analyzer measured (a prosecuted case: 0.53).
DEMO_SO2_FACTOR = 0.53
#: NOx (a21002) copied into dust (a34013), O2 (a19001) and moisture (a01014).
DEMO_COPY = ("a21002", ("a34013", "a19001", "a01014"))


class _Driver(Protocol):
    def sample_at(self, t: float) -> Any: ...


def driver_values_fn(driver: _Driver | Callable[[], _Driver], st: str = "31"
                     ) -> Callable[[float], dict[str, tuple[float, str]]]:
    """``code -> (transmitted value, flag)`` from a stack driver's samples.

    ``driver`` may be a function returning the current driver (the demo replaces its
    driver when the scenario starts). Values are divided by the code's mapping factor
    (stationseal.hj212.signal_map), so ``flow_m3h`` goes out as ``a00000`` in m³/s.
    """

    def current() -> _Driver:
        if hasattr(driver, "sample_at"):
            return cast(_Driver, driver)
        return driver()

    def fn(t: float) -> dict[str, tuple[float, str]]:
        s = current().sample_at(t)
        out: dict[str, tuple[float, str]] = {}
        for sig, v in s.values.items():
            code = SIGNAL_TO_HJ212.get((st, sig))
            sm = signal_map(st, code) if code is not None else None
            if code is None or sm is None:
                continue
            out[code] = (v / sm.factor, s.flags.get(sig, "N"))
        return out

    return fn


def demo_tamper(so2_factor: float = DEMO_SO2_FACTOR,
                copy: tuple[str, tuple[str, ...]] | None = DEMO_COPY,
                flag_limits: Mapping[str, float] | None = None, flag_as: str = "D") -> Tamper:
    """SO2 scaled down and one channel copied into three others (E3); optionally flags
    hiding values over a limit (E6)."""
    return Tamper(scale={"a21026": so2_factor} if so2_factor != 1.0 else {},
                  copy_from=copy[0] if copy else None, copy_to=copy[1] if copy else (),
                  flag_limits=dict(flag_limits or {}), flag_as=flag_as)


def hj212_section(port: int, *, mn: str = DEMO_MN, host: str = "127.0.0.1",
                  poll_interval_s: float = 0.2) -> dict[str, Any]:
    """The ``hj212:`` section of a site config: the gateway listens for this logger."""
    return {"host": host, "port": port, "mn": [mn], "poll_interval_s": poll_interval_s}


def demo_labels(site: str, start: float, tamper: Tamper, instrument: str = "logger"
                ) -> list[dict[str, Any]]:
    """Ground truth of what the manipulated logger does, for a run's summary."""
    out: list[dict[str, Any]] = []
    if tamper.scale:
        out.append({"site": site, "instrument": instrument, "pattern": "E3",
                    "params": {"scale": dict(tamper.scale)}, "start": start, "end": None})
    if tamper.copy_from:
        out.append({"site": site, "instrument": instrument, "pattern": "E3",
                    "params": {"copy_from": tamper.copy_from,
                               "copy_to": list(tamper.copy_to)},
                    "start": start, "end": None})
    if tamper.flag_limits:
        out.append({"site": site, "instrument": instrument, "pattern": "E6",
                    "params": {"flag_limits": dict(tamper.flag_limits),
                               "flag_as": tamper.flag_as},
                    "start": start, "end": None})
    return out


@dataclass
class LoggerRun:
    """A logger task; ``await run.stop()`` ends it and closes its connection."""

    logger: HJ212Logger
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        await self.logger.close()

    @property
    def sent(self) -> list[SentRecord]:
        return list(self.logger.history)


async def start_logger(port: int, values_fn: Callable[[float], Mapping[str, tuple[float, str]]],
                       *, host: str = "127.0.0.1", mn: str = DEMO_MN, st: str = "31",
                       tamper: Tamper | None = None, rtd_interval: float = 5.0,
                       minute_period: float | None = 60.0, hour_period: float | None = 3600.0,
                       speed: float | None = 1.0, start_time: float | None = None,
                       ack_timeout: float = 5.0, **kw: Any) -> LoggerRun:
    """Start a simulated logger reporting to ``host:port`` (the gateway's HJ 212
    listener) on the running event loop; it reconnects until the listener is up.

    With ``speed=1`` the logger's clock follows the wall clock, so its ``DataTime``
    matches the gateway's time stamps on the analyzer readings.
    """
    logger = HJ212Logger(host, port, mn=mn, st=st, values_fn=values_fn, tamper=tamper,
                         rtd_interval=rtd_interval, minute_period=minute_period,
                         hour_period=hour_period, speed=speed,
                         start_time=time.time() if start_time is None else start_time,
                         ack_timeout=ack_timeout, **kw)

    async def main() -> None:
        try:
            await logger.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HJ 212 logger %s stopped", mn)
            raise

    task = asyncio.create_task(main(), name=f"hj212-logger-{mn}")
    return LoggerRun(logger, task)


def revision_frame(record: SentRecord, *, mn: str, st: str = "31",
                   changes: Mapping[str, Mapping[str, str | float]],
                   resent: bool = True, qn_time: float | None = None) -> Frame:
    """The data of ``record`` sent again (new QN, ``RF=1``) with some fields changed,
    e.g. ``{"a21026": {"Flag": "M"}}``: what a logger does when its operator re-flags
    data after the fact."""
    pollutants: dict[str, dict[str, str]] = {}
    for code, fields in record.reported.items():
        pollutants[code] = {k: format_number(v, 2) if isinstance(v, float) else str(v)
                            for k, v in fields.items()}
    for code, change in changes.items():
        for k, v in change.items():
            pollutants.setdefault(code, {})[k] = format_number(v, 2) if isinstance(v, float) \
                else str(v)
    t = time.time() if qn_time is None else qn_time
    return Frame(st=st, cn=record.cn, mn=mn, qn=QnSource(lambda: t)(),
                 flag=make_flag(VERSION_2025, ack=True), rf="1" if resent else None,
                 cp=CP.build(data_time=record.data_time, pollutants=pollutants))


async def send_frame(host: str, port: int, frame: Frame, *, timeout: float = 10.0
                     ) -> Frame | None:
    """Send one frame on a fresh connection; the answer with its QN, or None."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(frame.encode())
        await writer.drain()
        decoder = StreamDecoder()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                data = await asyncio.wait_for(reader.read(4096), end - time.monotonic())
            except TimeoutError:
                return None
            if not data:
                return None
            for item in decoder.feed(data):
                if isinstance(item, Frame) and item.qn == frame.qn:
                    return item
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
