"""Shipped site configs validate; bad ones are rejected naming file, path and problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from instrument_helpers import PROFILES_DIR, SITES_DIR

from agent.config import ConfigError, FileUplink, MqttUplink, load_site_config

SHIPPED = sorted(SITES_DIR.glob("*.yaml"))
VEHICLE = SITES_DIR / "vehicle-station-example.yaml"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_site_validates(path: Path) -> None:
    cfg = load_site_config(path)
    assert cfg.source == path.resolve()
    for inst in cfg.instruments:
        assert cfg.profile(inst).id == inst.profile_name


def test_vehicle_example_has_two_lanes_and_a_shared_weather_station() -> None:
    cfg = load_site_config(VEHICLE)
    lanes: dict[str | None, set[str]] = {}
    for inst in cfg.instruments:
        lanes.setdefault(inst.lane, set()).add(inst.profile_name)
    assert {"five_gas", "chassis_dyno", "obd_adapter"} <= lanes["lane1"]
    assert {"five_gas", "chassis_dyno", "obd_adapter"} <= lanes["lane2"]
    assert "opacimeter" in lanes["lane1"] | lanes["lane2"]
    assert lanes[None] == {"weather_station"}


def test_cems_example_reads_the_stack_over_rtu() -> None:
    cfg = load_site_config(SITES_DIR / "cems-site-example.yaml")
    stack = next(i for i in cfg.instruments if i.profile_name == "stack_cems")
    assert stack.transport.type == "modbus_rtu"
    assert cfg.hj212 is not None and cfg.hj212.port == 9212
    assert cfg.outbox.max_bytes == 256 * 2**20


def _raw() -> dict[str, Any]:
    data = yaml.safe_load(VEHICLE.read_text())
    assert isinstance(data, dict)
    return data


def _error(tmp_path: Path, data: dict[str, Any]) -> str:
    data["profiles_dir"] = str(PROFILES_DIR)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError) as exc:
        load_site_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    return msg


def _edit(fn: Any) -> dict[str, Any]:
    data = copy.deepcopy(_raw())
    fn(data)
    return data


CASES = [
    ("baud rate", lambda d: d["instruments"][2]["transport"].update(
        type="modbus_rtu", port="/dev/ttyS9", baudrate=12345),
     "instruments[2].transport.baudrate"),
    ("transport type", lambda d: d["instruments"][1]["transport"].update(type="modbus_udp"),
     "instruments[1].transport"),
    ("unknown instrument key", lambda d: d["instruments"][0].update(poll_hz=10),
     "instruments[0].poll_hz: unknown key"),
    ("unknown top-level key", lambda d: d.update(gateway="x"), "gateway: unknown key"),
    ("missing site", lambda d: d.pop("site"), "site: Field required"),
    ("duplicate id", lambda d: d["instruments"][1].update(id="lane1-gas"),
     "instruments[1].id: 'lane1-gas' already used by instruments[0]"),
    ("unit twice on one bus", lambda d: d["instruments"][1].update(unit_id=1),
     "instruments[1].unit_id: unit 1 on /dev/ttyUSB0 is already instruments[0]"),
    ("one port, two line settings", lambda d: d["instruments"][1]["transport"].update(
        baudrate=19200), "instruments[1].transport: port /dev/ttyUSB0 is already used"),
    ("raw serial port shared", lambda d: d["instruments"][5]["transport"].update(
        port="/dev/ttyUSB1"), "instruments[5].transport"),
    ("missing profile", lambda d: d["instruments"][3].update(profile="dyno_x"),
     "instruments[3].profile: no profile file"),
    ("protocol mismatch", lambda d: d["instruments"][4].update(profile="five_gas"),
     "instruments[4].transport.type: profile five_gas speaks modbus, transport is serial"),
    ("negative poll interval", lambda d: d["instruments"][0].update(poll_interval_s=-1),
     "instruments[0].poll_interval_s"),
    ("rtu broadcast unit", lambda d: d["instruments"][0].update(unit_id=0),
     "instruments[0].unit_id: RTU slave addresses are 1..247"),
    ("outbox size", lambda d: d["outbox"].update(max_bytes="lots"), "outbox.max_bytes"),
    ("fsync policy", lambda d: d["outbox"].update(fsync="sometimes"), "outbox.fsync"),
    ("uplink port", lambda d: d["uplink"].update(port=70000), "uplink.port"),
    ("tls half pair", lambda d: d["uplink"]["tls"].pop("key"), "uplink.tls"),
    ("kind", lambda d: d.update(kind="car_wash"), "kind"),
]


@pytest.mark.parametrize(("what", "edit", "expect"), CASES, ids=[c[0] for c in CASES])
def test_bad_site_config_names_the_path(tmp_path: Path, what: str, edit: Any,
                                        expect: str) -> None:
    assert expect in _error(tmp_path, _edit(edit))


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def two(d: dict[str, Any]) -> None:
        d["instruments"][0]["transport"]["parity"] = "X"
        d["instruments"][3]["timeout_s"] = 0
    msg = _error(tmp_path, _edit(two))
    assert "instruments[0].transport.parity" in msg
    assert "instruments[3].timeout_s" in msg


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    d = _raw()
    d["profiles_dir"] = str(PROFILES_DIR)
    d["key_file"] = "keys/gw.key"
    d["outbox"]["path"] = "state/outbox.sqlite"
    d["uplink"] = "file:out/frames.jsonl"
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "site.yaml").write_text(yaml.safe_dump(d))
    cfg = load_site_config(sub / "site.yaml")
    assert cfg.key_file == sub / "keys" / "gw.key"
    assert cfg.outbox.path == sub / "state" / "outbox.sqlite"
    assert isinstance(cfg.uplink, FileUplink)
    assert cfg.uplink.path == sub / "out" / "frames.jsonl"


def test_defaults() -> None:
    cfg = load_site_config(VEHICLE)
    assert isinstance(cfg.uplink, MqttUplink)
    assert cfg.uplink.topic_prefix == "stationseal/v1"
    weather = cfg.instrument("weather")
    assert weather.max_registers == 125 and weather.pause_s == 0
    assert cfg.clock.ntp_check is True


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_site_config("/nonexistent/site.yaml")
