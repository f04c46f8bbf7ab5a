"""`stationseal hj212 ...` subcommands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stationseal.cli import main
from stationseal.hj212 import CP, Frame, parse_frame

APPENDIX_SEGMENT = (
    "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
    "CP=&&RtdInterval=30&&"
)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_parse_single_frame_without_crlf(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hj212", "parse", f"##0101{APPENDIX_SEGMENT}1C80"]) == 0
    (out,) = lines(capsys)
    assert out["cn"] == "1062" and out["params"] == {"RtdInterval": "30"}
    assert out["crc"] == "1C80" and out["ack_requested"] is True


def test_parse_reports_the_misprinted_crc(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hj212", "parse", f"##0101{APPENDIX_SEGMENT}1C08"]) == 1
    (out,) = lines(capsys)
    assert out["kind"] == "HJ212CRCError" and "1C80" in str(out["error"])
    assert main(["hj212", "parse", "--no-crc", f"##0101{APPENDIX_SEGMENT}1C08"]) == 0


def test_parse_capture_file_with_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = Frame(st="31", cn="2011", mn="M1", cp=CP.build(data_time="20240501120000")).encode()
    capture = tmp_path / "capture.bin"
    capture.write_bytes(b"noise" + good + good[:10])
    assert main(["hj212", "parse", str(capture)]) == 1
    out = lines(capsys)
    assert [("error" in o, o.get("offset")) for o in out] == [
        (True, 0),
        (False, None),
        (True, 5 + len(good)),
    ]


def test_crc_and_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hj212", "crc", APPENDIX_SEGMENT]) == 0
    (out,) = lines(capsys)
    assert out == {"crc": "1C80", "length": 101, "frame": f"##0101{APPENDIX_SEGMENT}1C80"}
    args = ["hj212", "build", "--st", "31", "--cn", "2011", "--mn", "M1", "--ack"]
    args += ["--qn", "20240501120000000", "--cp", "DataTime=20240501120000;a21026-Rtd=1.5"]
    assert main([*args, "--crlf"]) == 0
    wire = capsys.readouterr().out.encode()
    frame = parse_frame(wire)
    assert frame.flag == 5 and frame.cp.pollutants["a21026"].rtd == 1.5
    assert main([*args, "--version", "2025", "--key", "00" * 16]) == 0
    text = capsys.readouterr().out.strip()
    assert "Flag=9" in text and "a21026" not in text


def test_usage_errors_name_the_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hj212", "parse", "not-a-frame"]) == 2
    assert "not-a-frame" in capsys.readouterr().err
    assert main(["hj212", "build", "--st", "3", "--cn", "2011", "--mn", "M"]) == 2
    assert "ST" in capsys.readouterr().err
    assert main(["hj212", "parse", "--key", "xyz", f"##0101{APPENDIX_SEGMENT}1C80"]) == 2
    assert "--key" in capsys.readouterr().err
    assert main(["hj212"]) == 2


def test_codes_lists_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hj212", "codes", "二氧化硫"]) == 0
    out = capsys.readouterr().out
    assert "a21026" in out and "ST31:so2_mgm3" in out and "ST22:so2_ugm3" in out


def test_fuzz_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hj212", "fuzz", "-n", "200", "--seed", "3"]) == 0
    (out,) = lines(capsys)
    assert out["iterations"] == 200 and out["failures"] == 0
