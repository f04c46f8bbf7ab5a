"""Every shipped profile validates; a bad profile is rejected with file and path named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from instrument_helpers import PROFILES_DIR

from agent.profiles import load_profile
from agent.yamlcfg import ConfigError
from stationseal.signals import is_known

SHIPPED = sorted(PROFILES_DIR.glob("*.yaml"))


def test_the_eight_instrument_profiles_ship() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "five_gas", "opacimeter", "chassis_dyno", "weather_station", "obd_adapter",
        "stack_cems", "air_quality", "water_analyzer"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_validates(path: Path) -> None:
    prof = load_profile(path)
    assert prof.id == path.stem
    assert prof.measurement_signals
    assert all(is_known(s) for s in prof.measurement_signals)


def _raw(name: str) -> dict[str, Any]:
    data = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _error(tmp_path: Path, data: dict[str, Any], name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert str(path) in msg
    return msg


def _with(name: str, edit: Any) -> dict[str, Any]:
    data = copy.deepcopy(_raw(name))
    edit(data)
    return data


MODBUS_CASES = [
    ("bad word order", lambda d: d["points"][3].update(word_order="ABDC"),
     "points[3].word_order"),
    ("unknown key", lambda d: d["points"][0].update(wordorder="CDAB"),
     "points[0].wordorder: unknown key"),
    ("unknown signal", lambda d: d["points"][1].update(signal="co_percent"),
     "points[1].signal: unknown signal 'co_percent'"),
    ("bad register type", lambda d: d["points"][2].update(register="holdings"),
     "points[2].register"),
    ("negative address", lambda d: d["points"][2].update(address=-1), "points[2].address"),
    ("overlap", lambda d: d["points"][4].update(address=0), "points[4].address: holding 0 "
     "overlaps points[0]"),
    ("duplicate signal", lambda d: d["points"][5].update(signal="hc_ppm"),
     "points[5].signal: hc_ppm already mapped by points[0]"),
    ("wrong unit", lambda d: d["points"][1].update(unit="ppm"),
     "points[1]: unit 'ppm' differs from the canonical unit '%vol'"),
    ("calibration role on a measurement", lambda d: d["points"][0].update(role="calibration"),
     "points[0]: role calibration needs a parameter signal"),
    ("parameter without role", lambda d: d["points"][8].pop("role"),
     "points[8]: span_coeff.hc_ppm is an instrument parameter"),
    ("coil with a float", lambda d: d["points"][0].update(register="coil"),
     "points[0]: coil registers hold single bits"),
    ("reversed range", lambda d: d["points"][0].update(range=[10, 0]), "points[0].range"),
    ("status flag", lambda d: d["status"]["bits"].update({5: "X"}), "status.bits"),
    ("string without length", lambda d: d["points"][0].update(data_type="string"),
     "points[0]: data_type string needs 'length'"),
    ("missing vendor", lambda d: d.pop("vendor"), "vendor: Field required"),
]


@pytest.mark.parametrize(("what", "edit", "expect"), MODBUS_CASES, ids=[c[0] for c in MODBUS_CASES])
def test_bad_modbus_profile_names_the_path(tmp_path: Path, what: str, edit: Any,
                                           expect: str) -> None:
    assert expect in _error(tmp_path, _with("five_gas", edit), "five_gas")


SERIAL_CASES = [
    ("request missing", "opacimeter", lambda d: d["serial"]["messages"][1].pop("request"),
     "serial.messages[1].request: request_response mode needs a request"),
    ("field past frame end", "opacimeter",
     lambda d: d["serial"]["messages"][0]["fields"][3].update(byte_offset=11),
     "serial.messages[0].fields[3].byte_offset: field ends past the 12-byte frame"),
    ("unknown framing", "opacimeter", lambda d: d["serial"]["framing"].update(type="slip"),
     "serial.framing"),
    ("checksum type", "weather_station", lambda d: d["serial"]["checksum"].update(type="crc32"),
     "serial.checksum.type"),
    ("regex group missing", "obd_adapter",
     lambda d: d["serial"]["messages"][0]["fields"][0].update(group="revs"),
     "serial.messages[0].fields[0].group: regex has no group 'revs'"),
    ("regex does not compile", "obd_adapter",
     lambda d: d["serial"]["messages"][1].update(regex="CFG (?P<k>"),
     "serial.messages[1].regex: regex does not compile"),
    ("format disagrees with regex", "obd_adapter",
     lambda d: d["serial"]["messages"][1].update(format="CFG K={k:.3f}"),
     "serial.messages[1].format: output 'CFG K=1.000' does not match regex"),
    ("index without separator", "weather_station", lambda d: d["serial"].pop("separator"),
     "serial.messages[0].fields[0].index: needs 'separator'"),
    ("byte string with wide char", "opacimeter",
     lambda d: d["serial"]["messages"][0].update(request="\u20ac"),
     "serial.messages[0].request: byte strings may only contain"),
    ("free running with request", "weather_station",
     lambda d: d["serial"]["messages"][0].update(request="?\r\n"),
     "serial.messages[0].request: free_running instruments are not asked"),
]


@pytest.mark.parametrize(("what", "name", "edit", "expect"), SERIAL_CASES,
                         ids=[c[0] for c in SERIAL_CASES])
def test_bad_serial_profile_names_the_path(tmp_path: Path, what: str, name: str, edit: Any,
                                           expect: str) -> None:
    assert expect in _error(tmp_path, _with(name, edit), name)


def test_profile_id_must_match_file_name(tmp_path: Path) -> None:
    assert "must equal the file name" in _error(tmp_path, _raw("five_gas"), "five_gas_v2")


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("points: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_profile(p)
