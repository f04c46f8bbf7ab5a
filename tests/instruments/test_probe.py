"""`stationseal agent probe`: raw registers and all four decodings, over TCP and RTU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from instrument_helpers import ROOT, profile, run

from agent.probe import ProbeError, ProbeResult, format_probe, probe_read
from sim.modbus_server import SimulatedDevice, start_modbus_tcp_server
from stationseal.cli import main


def test_format_shows_every_order_of_a_known_float() -> None:
    # 123.456 = 42F6 E979; stored CDAB on the wire: E979 42F6
    out = format_probe(ProbeResult("holding", 100, 1, [0xE979, 0x42F6]))
    rows32, rows64 = _table(out)
    assert rows32[(100, "CDAB")] == "123.456001"
    assert rows32[(100, "ABCD")] != "123.456001"
    assert "100    E979" in out
    assert rows64 == {}  # two registers: no 64-bit rows


def test_64_bit_rows_use_the_documented_orders() -> None:
    # 1.5 = 3FF8 0000 0000 0000; CDAB on 64 bits is GH EF CD AB
    _, rows64 = _table(format_probe(ProbeResult("input", 0, 1, [0, 0, 0, 0x3FF8])))
    assert rows64[(0, "CDAB")] == "1.5"
    assert rows64[(0, "ABCD")] != "1.5"


def test_probe_reads_a_simulated_instrument() -> None:
    async def scenario() -> ProbeResult:
        srv = await start_modbus_tcp_server([SimulatedDevice(
            4, profile("air_quality"), lambda t: {"pm25_ugm3": 37.125, "so2_ugm3": 8.5})])
        try:
            res = await probe_read(host="127.0.0.1", port=srv.port, unit=4,
                                   register="holding", address=0, count=10)
            with pytest.raises(ProbeError, match="Modbus exception 2"):
                await probe_read(host="127.0.0.1", port=srv.port, unit=4,
                                 register="holding", address=30, count=2)
            return res
        finally:
            await srv.stop()

    res = run(scenario())
    rows32, rows64 = _table(format_probe(res))
    assert rows64[(0, "ABCD")] == "37.125"          # pm25, float64 big-endian
    assert rows32[(8, "BADC")] == "8.5"             # so2, float32 byte-swapped
    assert rows32[(8, "ABCD")] != "8.5"


def _table(out: str) -> tuple[dict[tuple[int, str], str], dict[tuple[int, str], str]]:
    """(address, order) -> first decoded column, for the 32- and 64-bit sections."""
    sections: list[dict[tuple[int, str], str]] = [{}, {}]
    current = -1
    addr = 0
    for line in out.splitlines():
        if line.startswith("32-bit"):
            current = 0
        elif line.startswith("64-bit"):
            current = 1
        parts = line.split()
        if current < 0 or len(parts) < 3:
            continue
        if parts[1] in ("ABCD",) and parts[0].isdigit():
            addr = int(parts[0])
            parts = parts[1:]
        if parts[0] in ("ABCD", "BADC", "CDAB", "DCBA"):
            sections[current][(addr, parts[0])] = parts[1]
    return sections[0], sections[1]


@pytest.fixture
def rtu_sim() -> Iterator[dict[str, Any]]:
    p = subprocess.Popen([sys.executable, "-m", "stationseal.cli", "sim", "instrument",
                          "--profile", "stack_cems", "--transport", "rtu", "--unit", "7"],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.stdout is not None
    info: dict[str, Any] = json.loads(p.stdout.readline())
    yield info
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    p.stdout.close()


def test_cli_probe_over_rtu(rtu_sim: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["agent", "probe", "--serial-port", rtu_sim["port_path"], "--baudrate", "9600",
               "--unit", "7", "--type", "coil", "--address", "0", "--count", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("coil 0..3 unit 7")
    rc = main(["agent", "probe", "--serial-port", rtu_sim["port_path"], "--unit", "7",
               "--type", "input", "--address", "0", "--count", "4"])
    assert rc == 0
    assert "CDAB" in capsys.readouterr().out


def test_cli_probe_failure_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["agent", "probe", "--host", "127.0.0.1", "--port", "1", "--address", "0",
               "--timeout", "0.5"])
    assert rc == 1
    assert "cannot connect to tcp://127.0.0.1:1" in capsys.readouterr().err
    rc = main(["agent", "probe", "--host", "127.0.0.1", "--address", "0", "--count", "500"])
    assert rc == 2
