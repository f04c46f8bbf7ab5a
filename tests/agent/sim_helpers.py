"""Simulated Modbus instruments on a background event loop, and site configs for them,
so an agent subprocess (the real `stationseal agent run`) can poll them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agent.profiles import load_profile, profile_file
from sim.faults import Fault, FaultPlan
from sim.modbus_server import ModbusSimServer, SimulatedDevice, start_modbus_tcp_server
from stack.manager import Credential, StackInfo

PROFILES = Path(__file__).resolve().parents[2] / "firmware-config" / "instruments"
T = TypeVar("T")


class SimLoop:
    """Modbus TCP simulators served from a thread, one server per instrument."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[str, ModbusSimServer] = {}

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def start(self, iid: str, profile: str, faults: list[Fault] | None = None) -> int:
        prof = load_profile(profile_file(PROFILES, profile))
        dev = SimulatedDevice(1, prof, None, FaultPlan(faults or []))
        srv = self.call(start_modbus_tcp_server([dev], "127.0.0.1", 0))
        self.servers[iid] = srv
        return srv.port

    def close(self) -> None:
        for srv in self.servers.values():
            self.call(srv.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def site_config(tmp: Path, *, gateway_id: str, key_file: Path,
                instruments: list[dict[str, Any]], uplink: dict[str, Any],
                outbox: dict[str, Any] | None = None, name: str = "site.yaml") -> Path:
    doc = {
        "site": "site-sim",
        "gateway_id": gateway_id,
        "kind": "stack_cems",
        "key_file": str(key_file),
        "profiles_dir": str(PROFILES),
        "uplink": uplink,
        "outbox": {"path": str(tmp / "state" / "outbox.sqlite"), "batch_max_ms": 300,
                   **(outbox or {})},
        "clock": {"ntp_check": True},
        "instruments": instruments,
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def mqtt_uplink(tmp: Path, info: StackInfo, cred: Credential) -> dict[str, Any]:
    pw = tmp / "mqtt-password"
    pw.write_text(cred.password() + "\n")
    pw.chmod(0o600)
    return {"type": "mqtt", "host": info.mqtt_host, "port": info.mqtt_port,
            "tls": {"ca": str(info.ca_file)}, "username": cred.username,
            "password_file": str(pw), "keepalive_s": 10}


def tcp_instrument(iid: str, profile: str, port: int, interval: float = 0.1) -> dict[str, Any]:
    return {"id": iid, "profile": profile,
            "transport": {"type": "modbus_tcp", "host": "127.0.0.1", "port": port},
            "unit_id": 1, "poll_interval_s": interval, "timeout_s": 0.5,
            "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "parameter_interval_s": 2.0}
