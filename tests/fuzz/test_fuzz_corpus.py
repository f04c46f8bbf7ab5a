"""Every input kept in tests/fuzz/corpus/ (seeds and the crashers fuzzing found) still
meets its target's contract: a valid result or the named error, within the time bound.
The crashers (``crash-*``) are the regression tests of the fixes they led to."""

from __future__ import annotations

from pathlib import Path

import pytest
from targets import CORPUS, TARGETS, check, corpus_files

CASES = [(t, p) for t in TARGETS for p in corpus_files(t)]


def test_every_target_has_a_corpus() -> None:
    for t in TARGETS:
        assert corpus_files(t), f"no corpus for {t} in {CORPUS / t}"


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_input_meets_the_contract(target: str, path: Path) -> None:
    check(target, path.read_bytes())


def test_valid_seeds_are_accepted() -> None:
    """The contract could be met by refusing everything; the real seeds must pass."""
    assert check("frame", (CORPUS / "frame" / "vector-00").read_bytes()) == "frame"
    assert check("ingest_config", (CORPUS / "ingest_config" / "central-example").read_bytes()
                 ) == "config"
    assert check("profile", (CORPUS / "profile" / "five_gas").read_bytes()) == "profile"
    assert check("site_config", (CORPUS / "site_config" / "cems-site-example").read_bytes()
                 ) == "config"
    assert check("hj212", (CORPUS / "hj212" / "seed-00").read_bytes()).startswith("frame")


def test_crashers_give_named_errors() -> None:
    assert check("site_config", (CORPUS / "site_config" / "crash-not-utf8").read_bytes()
                 ) == "ConfigError"
    assert check("ingest_config", (CORPUS / "ingest_config" / "crash-not-utf8").read_bytes()
                 ) == "ConfigError"
    assert check("ingest_config",
                 (CORPUS / "ingest_config" / "crash-yaml-alias-bomb").read_bytes()
                 ) == "ConfigError"
