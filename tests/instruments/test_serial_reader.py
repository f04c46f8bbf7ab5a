"""Raw serial: framing and checksums byte by byte (no I/O), then the reader on a pty
against line faults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from instrument_helpers import Harness, instrument_config, profile, run

from agent.instruments import build_instrument
from agent.readings import ParamWatch
from agent.serial_reader import FrameProblem, SerialCodec
from sim.faults import Fault
from sim.profiles import encode_frame
from stationseal.records import Event, Reading

WX = profile("weather_station")
OPA = profile("opacimeter")
OBD = profile("obd_adapter")
assert WX.serial and OPA.serial and OBD.serial
VALUES = {"ambient_temp_c": 21.35, "ambient_rh_pct": 55.2, "ambient_kpa": 101.325,
          "status": 0}
GOOD_WX = b"$WX,21.35,55.2,101.325,0.00,0*10\r\n"


def _decode(codec: SerialCodec, frame: bytes) -> list[Reading]:
    mc, payload = codec.check(frame)
    readings: list[Reading] = []
    events: list[Event] = []
    codec.decode(mc, frame, payload, 1.0, "x", ParamWatch("x"), readings, events)
    return readings


def test_simulator_writes_the_documented_example() -> None:
    assert WX.serial is not None
    assert encode_frame(WX.serial, WX.serial.messages[0], VALUES) == GOOD_WX


def test_frames_split_across_reads_are_reassembled() -> None:
    codec = SerialCodec(WX.serial)  # type: ignore[arg-type]
    out = []
    for i in range(0, len(GOOD_WX), 5):
        out += codec.feed(GOOD_WX[i:i + 5], float(i))
    assert [c.frame for c in out] == [GOOD_WX]
    assert out[0].time == 30.0  # time of the read that completed the frame
    assert [r.value for r in _decode(codec, out[0].frame)][:3] == [21.35, 55.2, 101.325]


def test_noise_before_a_frame_is_reported_not_dropped() -> None:
    codec = SerialCodec(WX.serial)  # type: ignore[arg-type]
    out = codec.feed(b"\x00\xff#noise" + GOOD_WX, 1.0)
    assert [(c.frame, c.garbage) for c in out] == [
        (b"\x00\xff#noise", "bytes before frame start"), (GOOD_WX, "")]


def test_a_frame_cut_short_by_the_next_start_is_garbage() -> None:
    codec = SerialCodec(WX.serial)  # type: ignore[arg-type]
    out = codec.feed(b"$WX,21.3" + GOOD_WX, 1.0)
    assert out[0].garbage == "frame cut short by a new frame start"
    assert out[1].frame == GOOD_WX


def test_runaway_line_without_end_is_bounded() -> None:
    codec = SerialCodec(WX.serial)  # type: ignore[arg-type]
    out = codec.feed(b"$" + b"9" * 200, 1.0)
    assert out and out[0].garbage.startswith("no frame end within 128")
    assert codec.feed(GOOD_WX, 2.0)[0].frame == GOOD_WX


@pytest.mark.parametrize(("frame", "error"), [
    (GOOD_WX.replace(b"*10", b"*11"), "checksum mismatch (xor8)"),
    (GOOD_WX.replace(b"*10", b"*zz"), "checksum field b'zz' is not hex"),
    (b"$XX,1,2,3,4,0*18\r\n", "frame matches no message of the profile"),
])
def test_ascii_frame_problems(frame: bytes, error: str) -> None:
    codec = SerialCodec(WX.serial)  # type: ignore[arg-type]
    (chunk,) = codec.feed(frame, 1.0)
    with pytest.raises(FrameProblem) as exc:
        _decode(codec, chunk.frame)
    assert exc.value.error == error
    assert exc.value.detail["raw"] == frame.hex()


def test_non_numeric_field_rejects_the_whole_frame() -> None:
    from agent.checksums import xor8
    body = b"WX,21.35,5x.2,101.325,0.00,0"
    frame = b"$" + body + b"*%02X\r\n" % xor8(body)
    codec = SerialCodec(WX.serial)  # type: ignore[arg-type]
    with pytest.raises(FrameProblem, match=r"ambient_rh_pct '5x\.2' is not a number"):
        _decode(codec, codec.feed(frame, 1.0)[0].frame)


def test_binary_length_framing_resynchronises_after_noise() -> None:
    assert OPA.serial is not None
    live = OPA.serial.messages[0]
    vals = {"opacity_pct": 12.34, "k_m1": 0.287, "rpm": 2350, "oil_temp_c": -4.5, "status": 0}
    frame = encode_frame(OPA.serial, live, vals)
    codec = SerialCodec(OPA.serial)
    out = codec.feed(b"\x13\x37" + frame[:5], 1.0) + codec.feed(frame[5:] + frame, 2.0)
    assert [(c.frame, c.garbage) for c in out] == [
        (b"\x13\x37", "bytes before frame header"), (frame, ""), (frame, "")]
    got = {r.signal: r.value for r in _decode(codec, frame)}
    assert got == {"opacity_pct": 12.34, "k_m1": 0.287, "rpm": 2350, "oil_temp_c": -4.5}
    bad = encode_frame(OPA.serial, live, vals, bad_checksum=True)
    with pytest.raises(FrameProblem, match=r"checksum mismatch \(sum8\)"):
        codec.check(bad)


def test_regex_mismatch_is_named() -> None:
    from agent.checksums import lrc
    body = b"OBD RPM=abc"
    frame = body + b"*%02X\r\n" % lrc(body)
    codec = SerialCodec(OBD.serial)  # type: ignore[arg-type]
    with pytest.raises(FrameProblem, match="message live: does not match its regex"):
        _decode(codec, codec.feed(frame, 1.0)[0].frame)


# ---------------------------------------------------------------- reader on a pty


def test_missing_port_is_an_event_and_the_reader_keeps_trying(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = instrument_config("weather_station", {"type": "serial",
                                                    "port": str(tmp_path / "ttyNONE")})
        inst = build_instrument(cfg, WX, tmp_path)
        readings, events = await inst.poll()
        assert readings == []
        assert events[0].kind == "instrument_fault"
        assert events[0].detail["error"].startswith(f"cannot open {tmp_path / 'ttyNONE'}")
        await inst.close()

    run(scenario())


def test_garbage_on_a_polled_line_then_recovery() -> None:
    async def scenario() -> None:
        async with Harness("opacimeter", "serial", {}) as h:
            await h.poll_until(lambda r, e: bool(r))
            h.faults.add(Fault("garbage", 0, None))
            _, events = await h.poll_until(lambda r, e: any(
                x.kind == "malformed_response" for x in e))
            ev = next(x for x in events if x.kind == "malformed_response")
            assert bytes.fromhex(ev.detail["raw"])
            h.faults.clear()
            _, events = await h.poll_until(lambda r, e: any(
                x.kind == "instrument_recovered" for x in e))

    run(scenario())


def test_silent_free_running_instrument_is_reported() -> None:
    async def scenario() -> None:
        async with Harness("weather_station", "serial", {}, poll_interval_s=0.05,
                           timeout_s=0.2) as h:
            await h.poll_until(lambda r, e: bool(r))
            assert h.serial is not None
            h.serial.interval_s = 0.05
            h.faults.add(Fault("timeout", 0, None))
            _, events = await h.poll_until(lambda r, e: any(
                x.kind == "instrument_fault" for x in e))
            assert "no frame from" in events[-1].detail["error"]

    run(scenario())


def test_every_frame_received_between_polls_is_returned_with_its_time() -> None:
    async def scenario() -> None:
        async with Harness("weather_station", "serial", {}) as h:
            await h.poll_until(lambda r, e: bool(r))
            assert h.serial is not None
            sent_before = h.serial.frames_sent
            await asyncio.sleep(0.3)
            readings, _ = await h.poll()
            sent = h.serial.frames_sent - sent_before
            temps = [r for r in readings if r.signal == "ambient_temp_c"]
            # frames in flight at either end may fall into the next/previous poll
            assert sent - 1 <= len(temps) <= sent + 1
            times = [r.time for r in temps]
            assert times == sorted(times) and len(set(times)) == len(times)

    run(scenario())


def test_port_vanishing_is_an_event() -> None:
    async def scenario() -> None:
        async with Harness("obd_adapter", "serial", {}) as h:
            await h.poll_until(lambda r, e: bool(r))
            assert h.serial is not None
            await h.serial.stop()
            _, events = await h.poll_until(lambda r, e: any(
                x.kind == "instrument_fault" for x in e))
            assert events[-1].kind == "instrument_fault"

    run(scenario())
