"""Simulated instruments of the demo sites, served from one background event loop.

The protocol simulators (sim/site.py) are asyncio servers; the demo's main thread only
orchestrates processes, so the simulators get their own thread and loop. Values come from
the site drivers through the value factories (sim/lane.py, sim/stack_site.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from sim.profiles import ValuesFactory
from sim.site import SiteSim, start_site

T = TypeVar("T")


class SimThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="simulators",
                                       daemon=True)
        self.thread.start()
        self.sites: list[SiteSim] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_site(self, config: Path, runtime: Path, factory: ValuesFactory,
                   state_dir: Path, key_file: Path) -> SiteSim:
        """Simulators for every instrument of ``config``; writes the runtime config."""
        sim = self.call(start_site(config, runtime, values_factory=factory,
                                   state_dir=state_dir, key_file=key_file))
        self.sites.append(sim)
        return sim

    def close(self) -> None:
        for sim in self.sites:
            # a simulator that will not stop must not keep the others running
            with contextlib.suppress(Exception):
                self.call(sim.stop(), timeout=10.0)
        self.sites.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
