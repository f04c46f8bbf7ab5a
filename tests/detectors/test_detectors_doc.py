"""docs/detectors.md is generated from the detectors and must be up to date."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from ingest.detectors import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "detectors.md"


def test_committed_doc_matches_the_detectors():
    expected = registry.markdown(registry.discover())
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/detectors.md is stale: run "
        "`.venv/bin/python -m stationseal.cli detect --list --markdown > docs/detectors.md`")


def test_environmental_and_integrity_rules_document_every_parameter():
    reg = registry.discover()
    for rule, info in reg.rules.items():
        if not re.fullmatch(r"E\d|I-[A-Z]+", rule):
            continue
        doc = inspect.getdoc(info.cls) or ""
        assert doc.startswith(rule), rule
        missing = [k for k in info.cls.DEFAULTS if f"`{k}`" not in doc]
        assert not missing, f"{rule} docstring does not explain {missing}"
        mod = importlib.import_module(info.module)
        assert rule.split("-")[0] in (mod.__doc__ or ""), info.module


def test_all_environmental_modules_are_installed():
    reg = registry.discover()
    assert not [m for m in reg.missing if m.startswith("e")]
    assert {f"E{i}" for i in range(1, 9)} <= set(reg.rules)


def test_missing_modules_are_listed_but_broken_ones_fail(monkeypatch):
    monkeypatch.setattr(registry, "RULE_MODULES", ("e1", "zz_not_yet"))
    reg = registry.discover.__wrapped__()
    assert list(reg.rules) == ["E1"] and reg.missing == ["zz_not_yet"]
    assert "not installed: ingest/detectors/zz_not_yet.py" in registry.listing(reg)
    assert "Not installed: `zz_not_yet.py`" in registry.markdown(reg)

    real = importlib.import_module

    def broken(name: str, *a, **k):
        if name == "ingest.detectors.e1":
            raise ModuleNotFoundError("No module named 'numpy'", name="numpy")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="numpy"):
        registry.discover.__wrapped__()
