"""HJ 212 codec: framing, CRC, header, Flag, CP, replies, SM4, packet split."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from stationseal.hj212 import (
    COMMANDS,
    CP,
    HJ212_TO_SIGNAL,
    SIGNAL_MAPS,
    VERSIONS,
    ExeRtn,
    Frame,
    HJ212BuildError,
    HJ212CPError,
    HJ212CRCError,
    HJ212CryptoError,
    HJ212EncodingError,
    HJ212Error,
    HJ212FlagError,
    HJ212FramingError,
    HJ212HeaderError,
    HJ212PacketError,
    Origin,
    QnRtn,
    QnSource,
    Reassembler,
    code_info,
    crc16_hex,
    data_answer,
    decode_flag,
    decrypt_cp,
    encrypt_cp,
    execution_result,
    format_data_time,
    frame_to_dict,
    legacy_to_2017,
    make_flag,
    notification_answer,
    parse_data_time,
    parse_frame,
    pollutant_codes,
    reply_for,
    request_answer,
    required_reply,
    signal_map,
    split_frame,
)
from stationseal.hj212.codes import UNIT_SYMBOLS, signal_map_markdown
from stationseal.signals import BY_NAME

APPENDIX_SEGMENT = (
    "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
    "CP=&&RtdInterval=30&&"
)
APPENDIX = f"##0101{APPENDIX_SEGMENT}1C80\r\n".encode()
KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")


def data_frame(**changes: object) -> Frame:
    cp = CP.build(
        data_time="20240501120000",
        pollutants={
            "a21026": {"Rtd": "554.00", "Flag": "N"},
            "a21002": {"Rtd": "101.3", "Flag": "N"},
            "a34013": {"Rtd": "9.8", "Flag": "M"},
        },
    )
    base = Frame(st="31", cn="2011", mn="010000A8900016F000169DC0", qn="20240501120000123", cp=cp)
    return base.replace(**changes) if changes else base


# ------------------------------------------------------------------------ CRC
def test_appendix_example_length_and_crc_verify() -> None:
    assert len(APPENDIX_SEGMENT) == 101
    assert crc16_hex(APPENDIX_SEGMENT.encode()) == "1C80"
    frame = parse_frame(APPENDIX)
    assert (frame.qn, frame.st, frame.cn, frame.pw) == ("20160801085857223", "32", "1062", "100000")
    assert frame.mn == "010000A8900016F000169DC0"
    assert frame.flag == 5 and frame.version == 1 and frame.ack_requested and not frame.is_split
    assert frame.cp.params == {"RtdInterval": "30"}
    assert frame.crc == "1C80" and frame.warnings == ()
    assert frame.encode() == APPENDIX


def test_appendix_misprinted_crc_is_rejected_naming_both_values() -> None:
    with pytest.raises(HJ212CRCError) as e:
        parse_frame(APPENDIX.replace(b"1C80", b"1C08"))
    assert "1C80" in str(e.value) and "1C08" in str(e.value)
    assert e.value.position == 107


@pytest.mark.parametrize(
    ("segment", "crc"),
    [
        # Frames published by independent implementations (one of them 2025, Flag=8/9).
        ("QN=20260706103512345;ST=91;CN=9014;PW=123456;MN=A110000_0001;Flag=8;CP=&&&&", "0140"),
        ("QN=20201008154743635;ST=91;CN=9014;PW=123456;MN=SD000001;Flag=9;CP=&&QnRtn=1&&", "71C0"),
    ],
)
def test_crc_matches_independent_frames(segment: str, crc: str) -> None:
    assert crc16_hex(segment.encode()) == crc


def test_crc_is_not_modbus_crc() -> None:
    def modbus(data: bytes) -> int:
        reg = 0xFFFF
        for b in data:
            reg ^= b
            for _ in range(8):
                reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
        return reg

    assert f"{modbus(APPENDIX_SEGMENT.encode()):04X}" != "1C80"


def test_lowercase_crc_accepted_with_warning() -> None:
    frame = parse_frame(
        b"##0078QN=20201008154743635;ST=91;CN=9014;PW=123456;MN=SD000001;Flag=9;"
        b"CP=&&QnRtn=1&&71c0\r\n"
    )
    assert frame.version == 2 and frame.ack_requested
    assert any("lower-case" in w for w in frame.warnings)


# -------------------------------------------------------------- framing errors
@pytest.mark.parametrize(
    ("mutate", "error", "text", "position"),
    [
        (lambda b: b[1:], HJ212FramingError, "start with '##'", 0),
        (lambda b: b.replace(b"##0101", b"##01a1"), HJ212FramingError, "bad length field", 2),
        (lambda b: b.replace(b"##0101", b"##0102"), HJ212FramingError, "carries 101 bytes", 2),
        (lambda b: b.replace(b"##0101", b"##2000"), HJ212FramingError, "exceeds the maximum", 2),
        (lambda b: b[:-2], HJ212FramingError, "truncated", 2),
        (lambda b: b[:-2] + b"\n\r", HJ212FramingError, "CR LF", 111),
        (lambda b: b + b"x", HJ212FramingError, "unexpected bytes after", 113),
        (lambda b: b.replace(b"1C80", b"1CXY"), HJ212FramingError, "bad CRC field", 107),
        (lambda b: b"##01", HJ212FramingError, "bad length field", 2),
    ],
)
def test_framing_errors_name_field_and_position(
    mutate: Callable[[bytes], bytes], error: type[HJ212Error], text: str, position: int
) -> None:
    with pytest.raises(error) as e:
        parse_frame(mutate(APPENDIX))
    assert text in str(e.value)
    assert e.value.position == position
    assert f"(at byte {position})" in str(e.value)


def reframed(segment: str | bytes) -> bytes:
    data = segment.encode() if isinstance(segment, str) else segment
    return b"##%04d" % len(data) + data + crc16_hex(data).encode() + b"\r\n"


@pytest.mark.parametrize(
    ("segment", "error", "field", "text"),
    [
        (APPENDIX_SEGMENT.replace("ST=32", "ST=3X"), HJ212HeaderError, "ST", "2 digits"),
        (APPENDIX_SEGMENT.replace("CN=1062", "CN=106"), HJ212HeaderError, "CN", "4 digits"),
        (
            APPENDIX_SEGMENT.replace("MN=010000A8900016F000169DC0;", ""),
            HJ212HeaderError,
            "MN",
            "missing",
        ),
        (APPENDIX_SEGMENT.replace("MN=0100", "MN=01 0"), HJ212HeaderError, "MN", "spaces"),
        (APPENDIX_SEGMENT.replace("QN=2016", "QN=X016"), HJ212HeaderError, "QN", "request number"),
        (APPENDIX_SEGMENT.replace("Flag=5", "Flag=x"), HJ212HeaderError, "Flag", "not a number"),
        (APPENDIX_SEGMENT.replace("Flag=5", "Flag=300"), HJ212FlagError, "Flag", "0-255"),
        (APPENDIX_SEGMENT.replace("Flag=5", "Flag=12"), HJ212FlagError, "Flag", "000011"),
        (APPENDIX_SEGMENT.replace("Flag=5", "Flag=7"), HJ212HeaderError, "PNUM", "D bit"),
        (
            APPENDIX_SEGMENT.replace("Flag=5", "Flag=7;PNUM=2;PNO=3"),
            HJ212HeaderError,
            "PNO",
            "1..2",
        ),
        (APPENDIX_SEGMENT.replace("ST=32;", "ST=32;ST=31;"), HJ212HeaderError, "ST", "duplicate"),
        (APPENDIX_SEGMENT.replace("ST=32;", "ST32;"), HJ212HeaderError, None, "key=value"),
        (APPENDIX_SEGMENT.replace("Flag=5;CP", "Flag=5CP"), HJ212HeaderError, None, "end with ';'"),
        (APPENDIX_SEGMENT.replace("CP=&&", "CP=&"), HJ212CPError, "CP", "no 'CP=&&'"),
        (APPENDIX_SEGMENT.replace("30&&", "30&"), HJ212CPError, "CP", "end with '&&'"),
        (
            APPENDIX_SEGMENT.replace("RtdInterval=30", "RtdInterval30"),
            HJ212CPError,
            "CP",
            "without '='",
        ),
        (
            APPENDIX_SEGMENT.replace("RtdInterval=30", "DataTime=20241301000000"),
            HJ212CPError,
            "DataTime",
            "valid time",
        ),
        (
            APPENDIX_SEGMENT.replace("RtdInterval=30", "a21026-Rtd=1;a21026-Rtd=2"),
            HJ212CPError,
            "CP",
            "duplicate key",
        ),
        (APPENDIX_SEGMENT.replace("RtdInterval=30", "a=1&b"), HJ212CPError, "CP", "'&'"),
    ],
)
def test_header_and_cp_errors_are_precise(
    segment: str, error: type[HJ212Error], field: str | None, text: str
) -> None:
    with pytest.raises(error) as e:
        parse_frame(reframed(segment))
    assert e.value.field == field
    assert text in str(e.value)
    assert e.value.position is not None and 6 <= e.value.position < 6 + len(segment)


def test_error_position_points_at_the_field() -> None:
    segment = APPENDIX_SEGMENT.replace("ST=32", "ST=3X")
    with pytest.raises(HJ212HeaderError) as e:
        parse_frame(reframed(segment))
    frame, pos = reframed(segment), e.value.position
    assert pos is not None and frame[pos : pos + 5] == b"ST=3X"


def test_non_utf8_data_is_an_encoding_error() -> None:
    with pytest.raises(HJ212EncodingError) as e:
        parse_frame(reframed(APPENDIX_SEGMENT.encode().replace(b"=30", b"=\xff0")))
    assert e.value.position == 6 + APPENDIX_SEGMENT.index("=30") + 1


def test_utf8_cp_counts_bytes_in_the_length() -> None:
    frame = data_frame(cp=CP.build(params={"Info": "烟囱一号"}))
    wire = frame.encode()
    assert int(wire[2:6]) == len(wire) - 12
    assert parse_frame(wire).cp.params["Info"] == "烟囱一号"


def test_tolerated_deviations_become_warnings() -> None:
    segment = "ST=31;CN=2011;PW=123456;MN=X;Flag=4;Foo=1;CP=&&DataTime=20240101000000;;a-Flag=Q;&&"
    frame = parse_frame(reframed(segment))
    text = " | ".join(frame.warnings)
    assert "Foo" in text and "empty item" in text and "not an HJ 212-2017 data flag" in text
    assert frame.extra == (("Foo", "1"),) and frame.qn is None
    assert frame.encode() == reframed(segment.replace(";;", ";").replace("Q;&&", "Q&&"))


def test_missing_flag_means_no_ack_and_is_reported() -> None:
    frame = parse_frame(reframed("QN=20240101000000000;ST=31;CN=2011;PW=1;MN=X;CP=&&&&"))
    assert frame.flag is None and not frame.ack_requested
    assert any("Flag missing" in w for w in frame.warnings)
    assert required_reply(frame, "logger") is None


# ---------------------------------------------------------------- round trips
FLAGS = [
    make_flag(v, ack=a, split=s) for v in VERSIONS for a in (False, True) for s in (False, True)
]


@pytest.mark.parametrize("cn", sorted(COMMANDS))
def test_round_trip_every_command_and_flag(cn: str) -> None:
    for flag, rf in itertools.product(FLAGS, (None, "1")):
        split = bool(flag & 2)
        frame = data_frame(
            cn=cn, flag=flag, pnum=3 if split else None, pno=2 if split else None, rf=rf
        )
        wire = frame.encode()
        parsed = parse_frame(wire)
        assert parsed == frame, (cn, flag)
        assert parsed.encode() == wire
        assert parsed.warnings == ()
        info = decode_flag(flag)
        assert (parsed.version, parsed.ack_requested, parsed.is_split) == (
            info.version,
            info.ack,
            info.split,
        )
        assert parsed.resent == (rf == "1")


def test_flag_bits() -> None:
    assert [make_flag(1), make_flag(1, ack=True), make_flag(1, split=True)] == [4, 5, 6]
    assert [make_flag(2, ack=a, split=s) for s in (False, True) for a in (False, True)] == [
        8,
        9,
        10,
        11,
    ]
    for flag in (8, 9, 10, 11):
        info = decode_flag(flag)
        assert info.version == 2 and info.version_name == "HJ 212-2025"
    with pytest.raises(HJ212FlagError):
        decode_flag(12)


def test_cp_groups_items_per_pollutant() -> None:
    text = (
        "DataTime=20160801084000;RtdInterval=30;"
        "a21026-Rtd=12.5,a21026-Avg=11.0,a21026-Min=10,a21026-Max=13,a21026-Flag=N;"
        "a00000-Cou=1234.5,a00000-SampleTime=20160801083959,a00000-EFlag=E1;"
        "a01012-ZsRtd=1,a01012-Flag=D"
    )
    frame = parse_frame(reframed(f"ST=31;CN=2051;PW=1;MN=X;Flag=4;CP=&&{text}&&"))
    cp = frame.cp
    assert cp.data_time == "20160801084000"
    assert cp.data_epoch() == parse_data_time("20160801084000")
    assert cp.params == {"DataTime": "20160801084000", "RtdInterval": "30"}
    so2 = cp.pollutants["a21026"]
    assert (so2.rtd, so2.avg, so2.min, so2.max, so2.flag) == (12.5, 11.0, 10.0, 13.0, "N")
    flow = cp.pollutants["a00000"]
    assert (flow.cou, flow.sample_time, flow.eflag) == (1234.5, "20160801083959", "E1")
    assert cp.pollutants["a01012"].fields == {"ZsRtd": "1", "Flag": "D"}
    assert cp.text() == text


def test_non_numeric_value_raises_on_access_not_on_parse() -> None:
    frame = parse_frame(reframed("ST=45;CN=2011;PW=1;MN=X;Flag=8;CP=&&p99101-Rtd=St&&"))
    with pytest.raises(HJ212CPError, match="p99101-Rtd"):
        _ = frame.cp.pollutants["p99101"].rtd


def test_build_rejects_unsendable_values() -> None:
    with pytest.raises(HJ212BuildError, match="reserved"):
        CP.build(params={"x": "a;b"})
    with pytest.raises(HJ212BuildError, match="ST"):
        data_frame(st="3").encode()
    with pytest.raises(HJ212BuildError, match="D bit"):
        data_frame(flag=make_flag(split=True)).encode()
    big = CP.build(pollutants={f"a{i:05d}": {"Rtd": "1.0", "Flag": "N"} for i in range(60)})
    with pytest.raises(HJ212BuildError, match="split_frame"):
        data_frame(cp=big).encode()


def test_frame_to_dict_names_codes_and_signals() -> None:
    out = frame_to_dict(parse_frame(data_frame().encode()))
    assert out["cn_name"] == "real-time data" and out["version"] == "HJ 212-2017"
    assert out["pollutants"]["a21026"]["_signal"] == "so2_mgm3"
    assert out["pollutants"]["a21026"]["_unit"] == "mg/m³"
    assert out["pollutants"]["a21026"]["Rtd"] == "554.00"
    assert out["length"] > 0 and out["crc"]


def test_qn_source_is_unique_and_in_china_time() -> None:
    qn = QnSource(lambda: 1714536000.0)
    first, second = qn(), qn()
    assert first == "20240501120000000" and second == "20240501120000001"
    assert format_data_time(1714536000.0) == "20240501120000"


# --------------------------------------------------------------------- replies
def test_replies_echo_qn_pw_mn_and_use_st_91() -> None:
    request = parse_frame(APPENDIX)
    answer = request_answer(request)
    assert (answer.st, answer.cn, answer.qn, answer.pw, answer.mn) == (
        "91",
        "9011",
        request.qn,
        "100000",
        request.mn,
    )
    assert answer.flag == 4 and not answer.ack_requested
    assert answer.cp.params == {"QnRtn": "1"}
    assert request_answer(request, QnRtn.BAD_PW).cp.params == {"QnRtn": "3"}
    assert execution_result(request).cp.params == {"ExeRtn": "1"}
    assert execution_result(request, ExeRtn.NO_DATA).cp.params == {"ExeRtn": "100"}
    assert notification_answer(request).cp.items == ()
    wire = data_answer(request).encode()
    assert wire.startswith(b"##") and b"CN=9014" in wire and b"CP=&&&&" in wire
    assert parse_frame(wire) == data_answer(request)


def test_reply_uses_the_version_of_the_frame_it_answers() -> None:
    upload = data_frame(flag=make_flag(2, ack=True))
    assert data_answer(upload).flag == 8


@pytest.mark.parametrize(
    ("cn", "origin", "ack", "expected"),
    [
        ("2011", "logger", True, "9014"),
        ("2051", "logger", True, "9014"),
        ("2061", "logger", False, None),
        ("2013", "logger", True, "9014"),
        ("1001", "logger", True, "9014"),
        ("9015", "logger", True, "9013"),
        ("1013", "logger", True, "9013"),
        ("9011", "logger", True, None),
        ("9014", "platform", True, None),
        ("1062", "platform", True, "9011"),
        ("2051", "platform", True, "9011"),
        ("2012", "platform", True, "9013"),
        ("1062", "platform", False, None),
        ("8888", "logger", True, "9014"),
        ("8888", "platform", True, "9011"),
    ],
)
def test_required_reply(cn: str, origin: Origin, ack: bool, expected: str | None) -> None:
    frame = data_frame(cn=cn, flag=make_flag(ack=ack))
    assert required_reply(frame, origin) == expected
    reply = reply_for(frame, origin)
    assert (reply.cn if reply else None) == expected


# ------------------------------------------------------------------------- SM4
def test_sm4_standard_test_vector() -> None:
    # GB/T 32907-2016 example 1: key = plaintext = 0123456789abcdeffedcba9876543210.
    assert encrypt_cp(KEY, KEY) == b"681EDF34D206965E86B3E94F536E4246"


def test_sm4_short_tail_stays_plain_and_round_trips() -> None:
    for length in (0, 5, 15, 16, 17, 31, 32, 33, 100):
        plain = bytes(random.Random(length).choice(b"abc=;,0123") for _ in range(length))
        enc = encrypt_cp(plain, KEY)
        whole = length - length % 16
        assert len(enc) == 2 * whole + (length - whole)
        assert enc[2 * whole :] == plain[whole:]
        assert decrypt_cp(enc, KEY) == plain


def test_sm4_frame_round_trip_crc_over_plaintext() -> None:
    frame = data_frame()
    wire = frame.encode(KEY)
    plain_wire = frame.encode()
    assert wire[-6:] == plain_wire[-6:]  # same CRC: it covers the plaintext
    assert b"a21026" not in wire and int(wire[2:6]) == len(wire) - 12
    parsed = parse_frame(wire, sm4_key=KEY)
    assert parsed == frame and parsed.encrypted and parsed.warnings == ()
    assert parse_frame(wire, sm4_key=lambda mn: KEY.hex() if mn == frame.mn else None) == frame
    with pytest.raises(HJ212CRCError, match="after SM4 decryption"):
        parse_frame(wire, sm4_key=bytes(16))
    with pytest.raises(HJ212CRCError):
        parse_frame(wire)  # no key: the ciphertext does not match the plaintext CRC


def test_sm4_only_for_data_commands_and_plaintext_tolerated() -> None:
    answer = data_answer(data_frame())
    assert answer.encode(KEY) == answer.encode()
    request = data_frame(cn="1062")
    assert request.encode(KEY) == request.encode()
    parsed = parse_frame(data_frame().encode(), sm4_key=KEY)
    assert not parsed.encrypted
    assert any("plaintext" in w for w in parsed.warnings)


def test_sm4_bad_key_and_bad_ciphertext() -> None:
    with pytest.raises(HJ212CryptoError, match="16 bytes"):
        encrypt_cp(b"x", b"short")
    with pytest.raises(HJ212CryptoError, match="not hex"):
        decrypt_cp(b"Z" * 32, KEY)
    with pytest.raises(HJ212CryptoError, match="impossible length"):
        decrypt_cp(b"A" * 20, KEY)


# ---------------------------------------------------------------- packet split
def big_frame() -> Frame:
    pollutants = {f"a{i:05d}": {"Rtd": f"{i * 1.5:.2f}", "Flag": "N"} for i in range(120)}
    return data_frame(
        cp=CP.build(data_time="20240501120000", pollutants=pollutants), flag=make_flag(ack=True)
    )


@pytest.mark.parametrize("key", [None, KEY])
def test_split_and_reassemble(key: bytes | None) -> None:
    frame = big_frame()
    parts = split_frame(frame, sm4_key=key)
    assert len(parts) > 1
    for number, part in enumerate(parts, start=1):
        wire = part.encode(key)
        assert int(wire[2:6]) <= 1024 and len(part.cp.text()) <= 950
        parsed = parse_frame(wire, sm4_key=key)
        assert (parsed.pnum, parsed.pno, parsed.qn) == (len(parts), number, frame.qn)
        assert parsed.is_split and parsed.ack_requested and parsed.flag == 7
        assert parsed.cp.data_time == "20240501120000"
    shuffled = [parse_frame(p.encode(key), sm4_key=key) for p in parts]
    random.Random(1).shuffle(shuffled)
    reassembler = Reassembler()
    results = [reassembler.add(p) for p in shuffled]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == frame and reassembler.pending == 0


def test_split_leaves_small_frames_alone() -> None:
    frame = data_frame()
    assert split_frame(frame) == [frame]
    assert Reassembler().add(frame) is frame


def test_reassembler_reports_incomplete_groups() -> None:
    now = [0.0]
    reassembler = Reassembler(timeout=10, max_groups=1, clock=lambda: now[0])
    parts = split_frame(big_frame())
    assert reassembler.add(parts[0]) is None
    assert reassembler.add(parts[0]) is None  # identical resend is ignored
    with pytest.raises(HJ212PacketError, match="different CP"):
        reassembler.add(parts[1].replace(pno=1))
    with pytest.raises(HJ212PacketError, match="PNUM"):
        reassembler.add(parts[1].replace(pnum=len(parts) + 1))
    other = [p.replace(qn="20240501120000999") for p in parts]
    assert reassembler.add(other[0]) is None  # evicts the first group (max_groups=1)
    now[0] = 11.0
    expired = reassembler.expire()
    assert [(e.key[2], e.reason.split(":")[0]) for e in expired] == [
        (parts[0].qn, "evicted"),
        ("20240501120000999", "timeout after 10 s"),
    ]
    assert expired[0].frames == (parts[0],) and expired[0].missing == list(range(2, len(parts) + 1))
    assert reassembler.pending == 0 and reassembler.flush() == []


def test_reassembler_keeps_packets_that_do_not_merge() -> None:
    parts = split_frame(big_frame())
    bad = [
        parts[0],
        *(
            p.replace(cp=CP(((("DataTime", "20240501120100"),), *p.cp.items[1:])))
            for p in parts[1:]
        ),
    ]
    reassembler = Reassembler()
    assert all(reassembler.add(p) is None for p in bad)
    (lost,) = reassembler.expire()
    assert "DataTime" in lost.reason and len(lost.frames) == len(parts)


# ----------------------------------------------------------- codes and signals
def test_code_table_loads_repairs_and_supplements() -> None:
    table = pollutant_codes()
    assert len(table) >= 180
    so2 = table["a21026"]
    assert (so2.name, so2.legacy_code, so2.unit_symbol, so2.data_format) == (
        "二氧化硫",
        "02",
        "mg/m³",
        "N5.2",
    )
    copper = table["w20138"]
    assert (copper.name, copper.unit, copper.total_unit, copper.source) == (
        "铜",
        "毫克/升",
        "千克",
        "tsv-repaired",
    )
    assert table["a34002"].source == "supplement"
    assert all(entry.unit in UNIT_SYMBOLS or not entry.unit for entry in table.values())
    assert legacy_to_2017("02") == "a21026" and legacy_to_2017("011") == "w01018"
    assert code_info("S01") is table["a19001"]


BRIEF_MAPPING = {
    ("31", "a21026"): "so2_mgm3",
    ("31", "a21002"): "nox_mgm3",
    ("31", "a34013"): "pm_mgm3",
    ("31", "a19001"): "o2_stack_pct",
    ("31", "a00000"): "flow_m3h",
    ("31", "a01012"): "flue_temp_c",
    ("31", "a01013"): "flue_kpa",
    ("31", "a01014"): "moisture_pct",
    ("22", "a34004"): "pm25_ugm3",
    ("22", "a34002"): "pm10_ugm3",
    ("22", "a21026"): "so2_ugm3",
    ("22", "a21004"): "no2_ugm3",
    ("22", "a05024"): "o3_ugm3",
    ("22", "a21005"): "co_mgm3",
    ("32", "w01018"): "cod_mgl",
    ("32", "w21003"): "nh3n_mgl",
    ("32", "w21011"): "tp_mgl",
    ("32", "w21001"): "tn_mgl",
    ("32", "w01001"): "ph",
    ("32", "w00000"): "water_flow_ls",
}


def test_signal_mapping_depends_on_st() -> None:
    for key, signal in BRIEF_MAPPING.items():
        assert HJ212_TO_SIGNAL[key] == signal
    assert HJ212_TO_SIGNAL[("31", "a21026")] != HJ212_TO_SIGNAL[("22", "a21026")]
    assert signal_map("31", "a01011") is None  # flue gas velocity has no canonical signal
    flow = signal_map("31", "a00000")
    assert flow is not None and flow.factor == 3600.0  # m³/s -> m³/h


def test_signal_mapping_units_agree_with_code_table_and_signals() -> None:
    for m in SIGNAL_MAPS:
        assert m.signal in BY_NAME, m
        canonical = BY_NAME[m.signal].unit.replace("%vol", "%")
        if m.factor == 1.0:
            assert m.unit == canonical, m
        else:
            assert (m.unit, canonical, m.factor) == ("m³/s", "m³/h", 3600.0), m
        entry = code_info(m.code)
        assert entry is not None, m
        table_unit = entry.unit_symbol
        if m.st != "22":  # ambient air: practice (µg/m³) differs from the 2017 table
            assert table_unit == m.unit or (table_unit == "1" and m.unit == "1"), m


def test_parse_data_time_rejects_impossible_dates() -> None:
    with pytest.raises(ValueError):
        parse_data_time("20240230000000")
    assert isinstance(HJ212Error("x"), ValueError)


def test_docs_mapping_table_is_current() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "hj212.md"
    assert signal_map_markdown() in doc.read_text(encoding="utf-8")


def test_code_table_is_declared_for_wheels() -> None:
    """Without package data a built wheel lacks the TSV and pollutant_codes() fails."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    assert any(p in ("*.tsv", "hj212-2017-codes.tsv") for p in data["stationseal.hj212"])
