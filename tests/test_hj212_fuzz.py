"""The parser's contract under hostile input: HJ212Error or a Frame, nothing else; and the
stream decoder accounts for every byte. Hypothesis plus a stdlib mutation fuzzer."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stationseal.hj212 import (
    CP,
    Frame,
    HJ212BuildError,
    HJ212Error,
    Reassembler,
    StreamDecoder,
    make_flag,
    parse_frame,
    split_frame,
)
from stationseal.hj212.fuzz import FUZZ_KEY, fuzz, mutate, reframe, seed_frames

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = seed_frames()


def parse_or_error(data: bytes, **kwargs: object) -> Frame | HJ212Error:
    try:
        return parse_frame(data, **kwargs)  # type: ignore[arg-type]
    except HJ212Error as e:
        return e


@SETTINGS
@given(st.binary(max_size=1200))
def test_random_bytes_only_raise_hj212_errors(data: bytes) -> None:
    parse_or_error(data)
    parse_or_error(data, check_crc=False)
    parse_or_error(b"##" + data)
    parse_or_error(reframe(data), sm4_key=FUZZ_KEY)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_data_segment_in_a_valid_envelope(segment: bytes) -> None:
    """Length and CRC right, so the header and CP parsers get the garbage."""
    result = parse_or_error(reframe(segment))
    if isinstance(result, Frame):
        assert result.raw == reframe(segment)


@SETTINGS
@given(st.sampled_from(SEEDS), st.integers(min_value=0, max_value=2**32 - 1))
def test_mutated_valid_frames(seed: bytes, rng_seed: int) -> None:
    data = mutate(seed, random.Random(rng_seed), SEEDS)
    for kwargs in ({}, {"check_crc": False}, {"sm4_key": FUZZ_KEY}):
        result = parse_or_error(data, **kwargs)
        if isinstance(result, Frame):
            # Whatever parsed must describe itself consistently.
            assert result.raw == data
            assert result.cp.text() is not None and result.st and result.cn and result.mn


SAFE = st.text(
    alphabet=st.characters(blacklist_characters=";,=&\r\n", blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=8,
)
CODE = st.from_regex(r"[aw][0-9]{5}", fullmatch=True)
FIELDS = st.dictionaries(
    st.sampled_from(["Rtd", "Avg", "Min", "Max", "Cou", "Flag", "SampleTime", "EFlag", "ZsRtd"]),
    SAFE,
    min_size=1,
    max_size=4,
)


@SETTINGS
@given(
    pollutants=st.dictionaries(CODE, FIELDS, max_size=6),
    params=st.dictionaries(st.from_regex(r"[A-Z][A-Za-z]{0,8}", fullmatch=True), SAFE, max_size=3),
    flag=st.sampled_from([4, 5, 6, 7, 8, 9, 10, 11, 0, 1]),
    encrypt=st.booleans(),
)
def test_built_frames_round_trip(
    pollutants: dict[str, dict[str, str]], params: dict[str, str], flag: int, encrypt: bool
) -> None:
    params.pop("DataTime", None)
    cp = CP.build(data_time="20240501120000", params=params, pollutants=pollutants)
    split = bool(flag & 2)
    frame = Frame(
        st="31",
        cn="2011",
        mn="MNFUZZ",
        qn="20240501120000001",
        flag=flag,
        pnum=2 if split else None,
        pno=1 if split else None,
        cp=cp,
    )
    key = FUZZ_KEY if encrypt else None
    try:
        wire = frame.encode(key)
    except HJ212BuildError:
        # Too long for one frame (SM4 hex doubles the CP): it must survive a split.
        assume(not split)
        reassembler = Reassembler()
        merged = [
            reassembler.add(parse_frame(p.encode(key), sm4_key=key))
            for p in split_frame(frame, sm4_key=key)
        ]
        assert merged[-1] == frame
        return
    parsed = parse_frame(wire, sm4_key=key)
    assert parsed == frame
    assert parsed.encode(key) == wire
    assert {c: dict(p.fields) for c, p in parsed.cp.pollutants.items()} == {
        c: f for c, f in pollutants.items() if f
    }


@SETTINGS
@given(
    st.lists(st.one_of(st.sampled_from(SEEDS), st.binary(max_size=40), st.just(b"##")), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
)
def test_stream_decoder_accounts_for_every_byte(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    decoder = StreamDecoder()
    items = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        items += decoder.feed(stream[pos : pos + step])
        assert decoder.buffered <= 12 + 1024
        pos, i = pos + step, i + 1
    items += decoder.close()
    assert b"".join(item.raw for item in items) == stream
    # Garbage never costs a valid frame behind it (the last seed is SM4-encrypted and
    # fails its CRC without the key).
    frames = [item for item in items if isinstance(item, Frame)]
    assert len(frames) >= sum(1 for p in pieces if p in SEEDS[:-1])


def test_stdlib_mutation_fuzzer_finds_no_contract_violation() -> None:
    report = fuzz(iterations=3000, seed=20240501)
    assert report.iterations == 3000
    assert report.failures == []
    # The campaign must reach past the envelope: frames parse and every error kind occurs.
    assert report.parsed > 100
    assert {"HJ212FramingError", "HJ212CRCError", "HJ212HeaderError", "HJ212CPError"} <= set(
        report.rejected
    )


def test_seed_frames_are_valid() -> None:
    for seed in SEEDS:
        frame = parse_frame(seed, sm4_key=FUZZ_KEY)
        assert frame.raw == seed
    assert make_flag(2, ack=True) == 9
