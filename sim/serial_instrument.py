"""A raw serial instrument on a pseudo-terminal, speaking its profile's line protocol.

Request/response profiles answer each request (matched byte for byte against the
profile's ``request``); free-running profiles write their messages every
``output_interval_s``. The reader opens :attr:`SerialInstrumentSim.port_path`.

Faults (sim/faults.py): ``timeout`` (silence), ``garbage`` (random bytes instead of a
frame), ``bad_checksum`` (frame with a wrong checksum), ``set:SIGNAL=VALUE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import Any

from agent.profiles import Profile, SerialMessage
from sim.faults import FaultPlan
from sim.profiles import ValuesFn, ValueSource, encode_frame, garbage
from sim.pty import Pty, open_pty, write_master


class SerialInstrumentSim:
    def __init__(self, profile: Profile, values_fn: ValuesFn | None = None,
                 faults: FaultPlan | None = None, output_interval_s: float | None = None) -> None:
        if profile.serial is None:
            raise ValueError(f"profile {profile.id} is not a serial profile")
        self.profile = profile
        self.spec = profile.serial
        self.source = ValueSource(profile, values_fn)
        self.faults = faults or FaultPlan()
        #: free-running output period (default: the profile's output_interval_s)
        self.interval_s = output_interval_s or profile.serial.output_interval_s
        self.last_served: dict[str, Any] = {}
        #: frames written, for tests that compare what was sent with what was read
        self.frames_sent = 0
        self._pty: Pty | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._rx = b""
        self._rng = random.Random(0x5E21)
        self.port_path = ""

    def set_value(self, signal: str, value: Any) -> None:
        self.source.overrides[signal] = value

    async def start(self) -> None:
        self._pty = open_pty()
        self.port_path = self._pty.path
        self._loop = asyncio.get_running_loop()
        if self.spec.mode == "request_response":
            self._loop.add_reader(self._pty.master, self._on_request)
        else:
            self._task = asyncio.create_task(self._emit_forever(),
                                             name=f"sim {self.profile.id} output")

    def frame(self, message: SerialMessage) -> bytes | None:
        """The bytes the instrument sends for ``message`` now (None: it stays silent)."""
        if self.faults.active("timeout"):
            return None
        values = self.source.at(time.time(), self.faults.overrides())
        self.last_served = values
        data = encode_frame(self.spec, message, values,
                            bad_checksum=self.faults.active("bad_checksum") is not None)
        if self.faults.active("garbage"):
            data = garbage(len(data), self._rng)
        return data

    def _send(self, data: bytes) -> None:
        assert self._pty is not None
        if write_master(self._pty.master, data):
            self.frames_sent += 1

    def _on_request(self) -> None:
        assert self._pty is not None
        try:
            chunk = os.read(self._pty.master, 4096)
        except (BlockingIOError, OSError):
            return
        self._rx += chunk
        while True:
            hits = [(self._rx.find(m.request), m) for m in self.spec.messages
                    if m.request and self._rx.find(m.request) >= 0]
            if not hits:
                # keep only what could still become a request
                longest = max(len(m.request or b"") for m in self.spec.messages)
                self._rx = self._rx[-longest:]
                return
            pos, msg = min(hits, key=lambda h: h[0])
            assert msg.request is not None
            self._rx = self._rx[pos + len(msg.request):]
            data = self.frame(msg)
            if data is not None:
                self._send(data)

    async def _emit_forever(self) -> None:
        interval = self.interval_s
        next_t = time.monotonic()
        while True:
            for msg in self.spec.messages:
                data = self.frame(msg)
                if data is not None:
                    self._send(data)
            next_t += interval
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pty is not None:
            if self._loop is not None:
                with contextlib.suppress(ValueError, RuntimeError, OSError):
                    self._loop.remove_reader(self._pty.master)
            self._pty.close()
            self._pty = None


async def start_serial_instrument(profile: Profile, values_fn: ValuesFn | None = None,
                                  faults: FaultPlan | None = None,
                                  output_interval_s: float | None = None) -> SerialInstrumentSim:
    """Start a simulated serial instrument; the reader opens ``.port_path``."""
    sim = SerialInstrumentSim(profile, values_fn, faults, output_interval_s)
    await sim.start()
    return sim
