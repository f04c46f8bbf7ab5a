"""Property-based fuzzing (Hypothesis) of the frame decoder and verifier, the HJ 212
codec and the config loaders, against the contract of tests/fuzz/targets.py. Inputs are
random bytes, and mutations of the corpus seeds (byte flips, truncation, splicing, YAML
that is valid but hostile), which reach deeper than random bytes do."""

from __future__ import annotations

import random

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from targets import CORPUS, check, corpus_files

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b[rng.randrange(len(b) + 1):rng.randrange(len(b) + 1)] = rng.randbytes(
                rng.randint(1, 16))
        elif op == 3 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            b[rng.randrange(len(b) + 1):] = other[cut:]
        elif op == 4 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 64)] * rng.randint(1, 50)
        elif b:
            i = rng.randrange(len(b))
            b[i] = rng.choice(b"\x00\xff\x7f\x80\x1b\x3a\x22\x27\x26\x3b\x2c=-")
    return bytes(b)


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in corpus_files(target)]


POOLS = {t: seeds(t) for t in ("frame", "hj212", "site_config", "profile", "ingest_config")}


@SETTINGS
@given(st.binary(max_size=2000))
def test_frame_random_bytes(data: bytes) -> None:
    check("frame", data)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_frame_mutated_seeds(seed: int) -> None:
    rng = random.Random(seed)
    pool = POOLS["frame"]
    check("frame", mutate(rng.choice(pool), rng, pool))


@SETTINGS
@given(st.binary(max_size=1500))
def test_hj212_random_bytes(data: bytes) -> None:
    check("hj212", data)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_hj212_mutated_seeds(seed: int) -> None:
    rng = random.Random(seed)
    pool = POOLS["hj212"]
    check("hj212", mutate(rng.choice(pool), rng, pool))


# -- configs: YAML that parses, with values of every shape in every place -------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.binary(max_size=20))


def _replace_random(doc: object, rng: random.Random, value: object) -> object:
    """Replace one randomly chosen node (a value at some key/index) of ``doc``."""
    if isinstance(doc, dict) and doc and rng.random() < 0.8:
        k = rng.choice(list(doc))
        return {**doc, k: _replace_random(doc[k], rng, value)}
    if isinstance(doc, list) and doc and rng.random() < 0.8:
        i = rng.randrange(len(doc))
        return [*doc[:i], _replace_random(doc[i], rng, value), *doc[i + 1:]]
    return value


def _yaml_docs(target: str) -> list[object]:
    out = []
    for data in POOLS[target]:
        try:
            doc = yaml.safe_load(data)
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


DOCS = {t: _yaml_docs(t) for t in ("site_config", "profile", "ingest_config")}


def _config_case(target: str, seed: int, value: object) -> None:
    rng = random.Random(seed)
    doc = _replace_random(rng.choice(DOCS[target]), rng, value)
    try:
        text = yaml.safe_dump(doc, allow_unicode=True).encode()
    except yaml.YAMLError:
        return
    check(target, text)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1), SCALARS)
def test_site_config_values(seed: int, value: object) -> None:
    _config_case("site_config", seed, value)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1), SCALARS)
def test_profile_values(seed: int, value: object) -> None:
    _config_case("profile", seed, value)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1), SCALARS)
def test_ingest_config_values(seed: int, value: object) -> None:
    _config_case("ingest_config", seed, value)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_config_text_mutations(seed: int) -> None:
    rng = random.Random(seed)
    target = rng.choice(("site_config", "profile", "ingest_config"))
    pool = POOLS[target]
    check(target, mutate(rng.choice(pool), rng, pool))


def test_corpus_dir_exists() -> None:
    assert CORPUS.is_dir()
