"""Simulated HJ 212 data logger (数采仪): a TCP client that reports to an upper platform.

It samples a value source every real-time interval and sends, like a real logger:

* CN=2011 real-time data (``-Rtd``/``-Flag``) every ``rtd_interval`` seconds,
* CN=2051 minute data (``-Avg/-Min/-Max[/-Cou]/-Flag``) for every ``minute_period``,
* CN=2061 hourly data for every ``hour_period``,

with DataTime of aggregates set to the start of their period. When the A bit is set it
waits for the platform's 9014 answer and resends (same QN) after ``ack_timeout``, up to
``retries`` times, reconnecting if the connection drops. A frame too long for one packet
(many channels, or SM4 hex doubling the CP) goes out as PNUM/PNO packets. Platform requests get the
standard 9011/9012 exchange for the few commands a simulator can honour (1011 get time,
1012 set time, 1061 get / 1062 set the real-time interval); others are refused
(QnRtn=2).

Time is simulated: ``t`` advances by ``rtd_interval`` per tick and real sleeping is
``rtd_interval / speed`` (``speed=None``: no sleeping, only protocol round trips), so
a day of hourly data takes seconds in a test.

``tamper`` reproduces what a manipulated logger does to the data between analyzer and
platform (pattern E3/E6 in the falsification catalogue), while :attr:`history` keeps
both what was measured and what was reported, the ground truth reconciliation needs:

(a) ``scale``: a channel multiplied by a factor. In a prosecuted case an SO2 reading of
    554 mg/m³ was reported as 294.49, a factor of 294.49 / 554 ~ 0.5316;
(b) ``copy_from`` / ``copy_to``: one measured signal copied into other channels, which
    then move together (|r| ~ 1 between physically unrelated channels);
(c) ``flag_limits`` / ``flag_as``: while a channel's measured value exceeds its limit,
    its flag is replaced by M (maintenance) or D (fault), so the exceedance is hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from stationseal.hj212 import (
    CP,
    VERSION_2017,
    VERSION_2025,
    ExeRtn,
    Frame,
    Kind,
    QnRtn,
    QnSource,
    StreamDecoder,
    StreamError,
    execution_result,
    format_data_time,
    format_number,
    kind_of,
    make_flag,
    notification_answer,
    parse_data_time,
    request_answer,
    split_frame,
)

log = logging.getLogger(__name__)

#: ``code -> (value, flag)`` for one sampling instant.
Values = Mapping[str, tuple[float, str]]
ValuesFn = Callable[[float], Values]

#: Cumulative (``-Cou``) divisor per flow code: value unit x seconds -> total unit.
#: a00000 is m³/s -> m³; w00000 is L/s -> m³.
_FLOW_TOTALS = {"a00000": 1.0, "w00000": 1000.0}


@dataclass
class Tamper:
    """Manipulations applied to every sample before it is reported (see module doc)."""

    scale: dict[str, float] = field(default_factory=dict)
    copy_from: str | None = None
    copy_to: tuple[str, ...] = ()
    flag_limits: dict[str, float] = field(default_factory=dict)
    flag_as: str = "M"

    def apply(self, measured: Values) -> dict[str, tuple[float, str]]:
        """Reported values for one sample. Order: flags (on measured values), copy, scale."""
        out = dict(measured)
        for code, limit in self.flag_limits.items():
            if code in out and out[code][0] > limit:
                out[code] = (out[code][0], self.flag_as)
        if self.copy_from is not None and self.copy_from in measured:
            source_value = measured[self.copy_from][0]
            for code in self.copy_to:
                flag = out[code][1] if code in out else "N"
                out[code] = (source_value, flag)
        for code, factor in self.scale.items():
            if code in out:
                out[code] = (out[code][0] * factor, out[code][1])
        return out


@dataclass
class SentRecord:
    """One data frame as measured and as reported, and whether the platform confirmed it."""

    cn: str
    qn: str
    data_time: str
    measured: dict[str, dict[str, float | str]]
    reported: dict[str, dict[str, float | str]]
    wire: bytes
    #: None when no answer was requested
    acked: bool | None = None
    attempts: int = 0


@dataclass
class _Window:
    start: float
    measured: list[Values] = field(default_factory=list)
    reported: list[Values] = field(default_factory=list)


def _aggregate(samples: list[Values], period: float) -> dict[str, dict[str, float | str]]:
    """Avg/Min/Max (and Cou for flows) per code; the flag is N unless a sample had another,
    then the most frequent non-N flag, so one flagged sample marks the period."""
    codes: dict[str, list[tuple[float, str]]] = {}
    for sample in samples:
        for code, pair in sample.items():
            codes.setdefault(code, []).append(pair)
    out: dict[str, dict[str, float | str]] = {}
    for code, pairs in codes.items():
        values = [v for v, _ in pairs]
        flags = Counter(f for _, f in pairs if f != "N")
        avg = sum(values) / len(values)
        entry: dict[str, float | str] = {"Avg": avg, "Min": min(values), "Max": max(values)}
        if code in _FLOW_TOTALS:
            entry["Cou"] = avg * period / _FLOW_TOTALS[code]
        entry["Flag"] = flags.most_common(1)[0][0] if flags else "N"
        out[code] = entry
    return out


def _rtd(sample: Values) -> dict[str, dict[str, float | str]]:
    return {code: {"Rtd": value, "Flag": flag} for code, (value, flag) in sample.items()}


class HJ212Logger:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        mn: str,
        values_fn: ValuesFn,
        st: str = "31",
        pw: str = "123456",
        version: int = VERSION_2017,
        ack: bool = True,
        rtd_interval: float = 30.0,
        minute_period: float | None = 60.0,
        hour_period: float | None = 3600.0,
        send_realtime: bool = True,
        speed: float | None = 1.0,
        start_time: float | None = None,
        tamper: Tamper | None = None,
        sm4_key: bytes | None = None,
        ack_timeout: float = 5.0,
        retries: int = 3,
        decimals: int = 2,
        history_size: int = 100_000,
    ) -> None:
        self.host, self.port = host, port
        self.mn, self.st, self.pw = mn, st, pw
        self.values_fn = values_fn
        self.version = version
        self.ack = ack
        self.rtd_interval = rtd_interval
        self.minute_period = minute_period
        self.hour_period = hour_period
        self.send_realtime = send_realtime
        self.speed = speed
        self.tamper = tamper
        self.sm4_key = sm4_key
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.decimals = decimals
        start = time.time() if start_time is None else start_time
        #: simulated clock (epoch seconds); a 1012 request from the platform moves it
        self.t = math.floor(start / rtd_interval) * rtd_interval
        self.history: deque[SentRecord] = deque(maxlen=history_size)
        self.requests: list[Frame] = []
        self._qn = QnSource(lambda: self.t)
        self._windows: dict[str, _Window] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[Frame]] = {}
        self._send_lock = asyncio.Lock()
        self.connects = 0

    # ------------------------------------------------------------ connection
    async def connect(self) -> None:
        delay = 0.05
        while True:
            try:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                break
            except OSError as e:
                log.info("logger %s: connect to %s:%d failed: %s", self.mn, self.host, self.port, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.connects += 1
        self._read_task = asyncio.create_task(self._read_loop(self._reader, self._writer))

    async def close(self) -> None:
        if self._read_task is not None and self._read_task is not asyncio.current_task():
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
            self._read_task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None

    async def __aenter__(self) -> HJ212Logger:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = StreamDecoder(sm4_key=self.sm4_key)
        while True:
            try:
                data = await reader.read(4096)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                # The platform hung up: close our side so the next send reconnects.
                writer.close()
                return
            for item in decoder.feed(data):
                if isinstance(item, StreamError):
                    log.warning("logger %s: from platform: %s", self.mn, item.error)
                    continue
                await self._on_platform_frame(item)

    async def _write(self, wire: bytes) -> None:
        async with self._send_lock:
            if self._writer is None or self._writer.is_closing():
                await self.close()
                await self.connect()
            assert self._writer is not None
            self._writer.write(wire)
            await self._writer.drain()

    # ------------------------------------------------------- platform frames
    async def _on_platform_frame(self, frame: Frame) -> None:
        if frame.cn == "9014":
            waiter = self._waiting.get(frame.qn or "")
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            return
        kind = kind_of(frame.cn, "platform")
        if kind is Kind.NOTIFY:
            if frame.ack_requested:
                await self._send_plain(notification_answer(frame))
            return
        if kind is not Kind.REQUEST:
            return
        self.requests.append(frame)
        await self._execute(frame)

    async def _execute(self, request: Frame) -> None:
        params = request.cp.params
        handled = request.cn in ("1011", "1012", "1061", "1062")
        if request.ack_requested:
            await self._send_plain(
                request_answer(request, QnRtn.READY if handled else QnRtn.REFUSED)
            )
        if not handled:
            return
        result = ExeRtn.SUCCESS
        if request.cn == "1011":
            await self._send_plain(
                self._upload_of(request, {"SystemTime": format_data_time(self.t)})
            )
        elif request.cn == "1061":
            await self._send_plain(
                self._upload_of(request, {"RtdInterval": format_number(self.rtd_interval)})
            )
        elif request.cn == "1012":
            try:
                self.t = parse_data_time(params.get("SystemTime", ""))
            except ValueError:
                result = ExeRtn.BAD_CONDITIONS
        elif request.cn == "1062":
            try:
                self.rtd_interval = float(params["RtdInterval"])
            except (KeyError, ValueError):
                result = ExeRtn.BAD_CONDITIONS
        await self._send_plain(execution_result(request, result))

    def _upload_of(self, request: Frame, params: dict[str, str]) -> Frame:
        return Frame(
            st=self.st,
            cn=request.cn,
            mn=self.mn,
            pw=self.pw,
            qn=request.qn,
            flag=make_flag(self.version),
            cp=CP.build(params=params),
        )

    async def _send_plain(self, frame: Frame) -> None:
        await self._write(frame.encode(self.sm4_key))

    # ------------------------------------------------------------- sending
    def _frame(self, cn: str, data_time: float, fields: dict[str, dict[str, float | str]]) -> Frame:
        pollutants = {
            code: {
                k: format_number(v, self.decimals) if isinstance(v, float) else v
                for k, v in entry.items()
            }
            for code, entry in fields.items()
        }
        return Frame(
            st=self.st,
            cn=cn,
            mn=self.mn,
            pw=self.pw,
            qn=self._qn(),
            flag=make_flag(self.version, ack=self.ack),
            cp=CP.build(data_time=format_data_time(data_time), pollutants=pollutants),
        )

    async def send_data(
        self,
        cn: str,
        data_time: float,
        measured: dict[str, dict[str, float | str]],
        reported: dict[str, dict[str, float | str]],
    ) -> SentRecord:
        """Send one data frame (as packets if too long), wait for answers if requested,
        and record it in history."""
        frame = self._frame(cn, data_time, reported)
        wires = [part.encode(self.sm4_key) for part in split_frame(frame, sm4_key=self.sm4_key)]
        qn = frame.qn or ""
        record = SentRecord(
            cn, qn, format_data_time(data_time), measured, reported, b"".join(wires)
        )
        self.history.append(record)
        if not self.ack:
            record.attempts = 1
            for wire in wires:
                await self._write(wire)
            return record
        record.acked = True
        for wire in wires:
            acked, attempts = await self._send_answered(qn, wire)
            record.acked = record.acked and acked
            record.attempts = max(record.attempts, attempts)
        return record

    async def _send_answered(self, qn: str, wire: bytes) -> tuple[bool, int]:
        """Send until the 9014 with this QN arrives; (answered, attempts)."""
        loop = asyncio.get_running_loop()
        for attempt in range(1, self.retries + 2):
            waiter: asyncio.Future[Frame] = loop.create_future()
            self._waiting[qn] = waiter
            try:
                await self._write(wire)
                await asyncio.wait_for(waiter, self.ack_timeout)
                return True, attempt
            except (TimeoutError, ConnectionError, OSError) as e:
                log.info("logger %s: QN=%s try %d unanswered: %r", self.mn, qn, attempt, e)
                if self._writer is not None and self._writer.is_closing():
                    await self.close()
            finally:
                self._waiting.pop(qn, None)
        return False, self.retries + 1

    async def tick(self) -> list[SentRecord]:
        """Advance the clock one interval, sample, and send whatever is due."""
        self.t += self.rtd_interval
        t = self.t
        measured = dict(self.values_fn(t))
        reported = self.tamper.apply(measured) if self.tamper else measured
        sent: list[SentRecord] = []
        if self.send_realtime:
            sent.append(await self.send_data("2011", t, _rtd(measured), _rtd(reported)))
        for cn, period in (("2051", self.minute_period), ("2061", self.hour_period)):
            if period is None:
                continue
            start = math.floor(t / period) * period
            window = self._windows.get(cn)
            if window is not None and window.start != start and window.measured:
                sent.append(
                    await self.send_data(
                        cn,
                        window.start,
                        _aggregate(window.measured, period),
                        _aggregate(window.reported, period),
                    )
                )
            if window is None or window.start != start:
                window = self._windows[cn] = _Window(start)
            window.measured.append(measured)
            window.reported.append(reported)
        return sent

    async def run(self, *, ticks: int | None = None, duration: float | None = None) -> None:
        """Tick ``ticks`` times or for ``duration`` simulated seconds (or forever)."""
        if self._writer is None:
            await self.connect()
        end = None if duration is None else self.t + duration
        count = 0
        while (ticks is None or count < ticks) and (end is None or self.t < end):
            await self.tick()
            count += 1
            if self.speed:
                await asyncio.sleep(self.rtd_interval / self.speed)


# ------------------------------------------------------------------ value sources
#: Plausible levels per system type: (code, mean, relative daily swing, relative noise)
_PROFILES: dict[str, tuple[tuple[str, float, float, float], ...]] = {
    "31": (
        ("a21026", 300.0, 0.4, 0.05),
        ("a21002", 120.0, 0.3, 0.05),
        ("a34013", 12.0, 0.3, 0.1),
        ("a19001", 9.0, 0.1, 0.02),
        ("a00000", 50.0, 0.2, 0.03),
        ("a01012", 120.0, 0.05, 0.01),
        ("a01013", 0.3, 0.1, 0.05),
        ("a01014", 8.0, 0.1, 0.03),
    ),
    "22": (
        ("a34004", 35.0, 0.5, 0.15),
        ("a34002", 60.0, 0.5, 0.15),
        ("a21026", 8.0, 0.4, 0.1),
        ("a21004", 30.0, 0.5, 0.1),
        ("a05024", 80.0, 0.7, 0.1),
        ("a21005", 0.8, 0.4, 0.1),
    ),
    "32": (
        ("w01018", 40.0, 0.3, 0.05),
        ("w21003", 2.0, 0.3, 0.05),
        ("w21011", 0.3, 0.3, 0.05),
        ("w21001", 10.0, 0.3, 0.05),
        ("w01001", 7.2, 0.03, 0.01),
        ("w00000", 15.0, 0.4, 0.05),
    ),
}


def synthetic_values(st: str = "31", seed: int = 0) -> ValuesFn:
    """Deterministic diurnal-cycle-plus-noise values for a site type (same t, same values)."""
    if st not in _PROFILES:
        raise ValueError(f"no synthetic profile for ST={st} (have {sorted(_PROFILES)})")
    profile = _PROFILES[st]

    def values(t: float) -> Values:
        rng = random.Random(f"{seed}:{round(t * 1000)}")
        phase = 2 * math.pi * ((t / 86400.0) % 1.0)
        return {
            code: (max(mean * (1 + swing * math.sin(phase)) * (1 + rng.gauss(0, noise)), 0.0), "N")
            for code, mean, swing, noise in profile
        }

    return values


# ---------------------------------------------------------------------- command line
def _parse_tamper(args: argparse.Namespace) -> Tamper | None:
    tamper = Tamper(flag_as=args.flag_as)
    for item in args.scale or []:
        code, _, factor = item.partition("=")
        tamper.scale[code] = float(factor)
    if args.copy:
        source, _, targets = args.copy.partition(":")
        tamper.copy_from, tamper.copy_to = source, tuple(t for t in targets.split(",") if t)
    for item in args.hide_over or []:
        code, _, limit = item.partition("=")
        tamper.flag_limits[code] = float(limit)
    if not (tamper.scale or tamper.copy_from or tamper.flag_limits):
        return None
    return tamper


def register(p: argparse.ArgumentParser) -> None:
    """Arguments of the HJ 212 logger simulator (for a ``sim`` command to mount)."""
    p.add_argument("--host", default="127.0.0.1", help="upper platform host")
    p.add_argument("--port", type=int, required=True, help="upper platform port")
    p.add_argument("--mn", default="SIM0000000000000000000001", help="logger MN")
    p.add_argument("--st", default="31", choices=sorted(_PROFILES), help="system code")
    p.add_argument("--pw", default="123456")
    p.add_argument("--version", choices=("2017", "2025"), default="2017")
    p.add_argument("--no-ack", action="store_true", help="do not request 9014 answers")
    p.add_argument("--interval", type=float, default=30.0, help="real-time interval, s")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--ticks", type=int, help="stop after this many real-time intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", help="SM4 key (32 hex digits) to encrypt data CP regions")
    p.add_argument("--scale", action="append", metavar="CODE=FACTOR", help="tamper (a)")
    p.add_argument("--copy", metavar="SRC:DST,DST,...", help="tamper (b)")
    p.add_argument("--hide-over", action="append", metavar="CODE=LIMIT", help="tamper (c)")
    p.add_argument("--flag-as", default="M", choices=("M", "D"), help="flag used by (c)")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    logger = HJ212Logger(
        args.host,
        args.port,
        mn=args.mn,
        st=args.st,
        pw=args.pw,
        values_fn=synthetic_values(args.st, args.seed),
        version=VERSION_2025 if args.version == "2025" else VERSION_2017,
        ack=not args.no_ack,
        rtd_interval=args.interval,
        speed=args.speed,
        tamper=_parse_tamper(args),
        sm4_key=bytes.fromhex(args.key) if args.key else None,
    )

    async def main() -> None:
        async with logger:
            await logger.run(ticks=args.ticks)

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m sim.hj212_logger", description=__doc__)
    register(parser)
    logging.basicConfig(level=logging.INFO)
    ns = parser.parse_args()
    raise SystemExit(ns.func(ns))
