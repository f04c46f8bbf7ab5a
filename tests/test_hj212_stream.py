"""StreamDecoder: frames out of TCP reads, resynchronisation, bounded buffer, no silent loss."""

from __future__ import annotations

from stationseal.hj212 import (
    CP,
    Frame,
    HJ212CRCError,
    HJ212FramingError,
    StreamDecoder,
    StreamError,
    make_flag,
)


def frame(n: int) -> bytes:
    cp = CP.build(data_time="20240501120000", pollutants={"a21026": {"Rtd": f"{n}.5", "Flag": "N"}})
    return Frame(
        st="31", cn="2011", mn="MN1", qn=f"20240501120000{n:03d}", flag=make_flag(ack=True), cp=cp
    ).encode()


def decode(chunks: list[bytes], **kwargs: object) -> list[Frame | StreamError]:
    decoder = StreamDecoder(**kwargs)  # type: ignore[arg-type]
    out: list[Frame | StreamError] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.close()


def kinds(items: list[Frame | StreamError]) -> list[str]:
    return ["F" if isinstance(i, Frame) else type(i.error).__name__ for i in items]


def test_frames_split_across_reads_byte_by_byte() -> None:
    data = frame(1) + frame(2) + frame(3)
    items = decode([data[i : i + 1] for i in range(len(data))])
    assert kinds(items) == ["F", "F", "F"]
    assert [i.qn for i in items if isinstance(i, Frame)] == [
        "20240501120000001",
        "20240501120000002",
        "20240501120000003",
    ]


def test_several_frames_in_one_read() -> None:
    items = decode([frame(1) + frame(2)])
    assert kinds(items) == ["F", "F"]


def test_garbage_is_reported_with_offsets_and_resync_follows() -> None:
    garbage = b"\x00\xffnoise#"
    data = garbage + frame(1) + b"junk\r\n" + frame(2)
    items = decode([data])
    assert kinds(items) == ["HJ212FramingError", "F", "HJ212FramingError", "F"]
    first, _, second, _ = items
    assert isinstance(first, StreamError) and first.raw == garbage and first.offset == 0
    assert "outside any frame" in str(first.error)
    assert isinstance(second, StreamError)
    assert second.raw == b"junk\r\n" and second.offset == len(garbage) + len(frame(1))


def test_corrupt_frame_is_reported_and_next_frame_recovered() -> None:
    bad = bytearray(frame(1))
    bad[30] ^= 0x01
    items = decode([bytes(bad) + frame(2)])
    assert kinds(items) == ["HJ212CRCError", "F"]
    assert isinstance(items[0], StreamError) and items[0].raw == bytes(bad)


def test_overstated_length_does_not_eat_the_next_frame() -> None:
    lying = frame(1).replace(b"##0", b"##1", 1)  # says 1xxx bytes: more than the maximum
    within = frame(1).replace(frame(1)[2:6], b"0500", 1)  # says 500: CRLF comes too early
    for broken in (lying, within):
        items = decode([broken + frame(2)])
        assert kinds(items)[-1] == "F", broken
        assert b"".join(i.raw for i in items) == broken + frame(2)


def test_understated_length_is_cut_at_the_crlf() -> None:
    good = frame(1)
    short = good[:2] + b"%04d" % (int(good[2:6]) - 10) + good[6:]
    items = decode([short + frame(2)])
    assert kinds(items) == ["HJ212FramingError", "F"]
    assert isinstance(items[0], StreamError) and items[0].raw == short


def test_buffer_is_bounded_by_one_frame() -> None:
    decoder = StreamDecoder()
    header = b"##1024" + b"A" * 1000
    assert decoder.feed(header) == []
    assert decoder.buffered == len(header)
    out = decoder.feed(b"B" * 100)  # no CR LF where the frame should end
    assert kinds(out) == ["HJ212FramingError"]
    assert isinstance(out[0], StreamError) and out[0].raw == header + b"B" * 100
    assert decoder.buffered == 0
    big_garbage = b"x" * 5000
    out = StreamDecoder().feed(big_garbage)
    assert all(isinstance(i, StreamError) and len(i.raw) <= 1036 for i in out)
    assert sum(len(i.raw) for i in out) == 5000


def test_truncated_frame_at_end_of_stream_is_reported() -> None:
    items = decode([frame(1) + frame(2)[:30]])
    assert kinds(items) == ["F", "HJ212FramingError"]
    assert isinstance(items[1], StreamError) and "stream ended" in str(items[1].error)
    assert items[1].raw == frame(2)[:30]


def test_lone_hash_waits_for_more_data() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"abc#") != [] and decoder.buffered == 1
    out = decoder.feed(frame(1)[1:])
    assert kinds(out) == ["F"]


def test_triple_hash_resyncs_on_the_real_start() -> None:
    items = decode([b"#" + frame(1)])
    assert kinds(items) == ["HJ212FramingError", "F"]
    assert isinstance(items[0], StreamError) and items[0].raw == b"#"


def test_crc_check_can_be_disabled_and_errors_are_typed() -> None:
    bad = bytearray(frame(1))
    bad[-4] = ord("0") if bad[-4] != ord("0") else ord("1")
    assert kinds(decode([bytes(bad)], check_crc=False)) == ["F"]
    (item,) = decode([bytes(bad)])
    assert isinstance(item, StreamError) and isinstance(item.error, HJ212CRCError)
    assert isinstance(HJ212CRCError("x"), ValueError)
    assert not isinstance(item.error, HJ212FramingError)
