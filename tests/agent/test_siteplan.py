"""The plain copy of the validated config (agent/siteplan.py) and its checking process."""

from __future__ import annotations

import dataclasses
import pickle
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent import config as site_models
from agent import profiles as profile_models
from agent import siteplan
from agent.config import config_hash, load_site_config, to_plan
from agent.configproc import check_here, check_in_child

ROOT = Path(__file__).resolve().parents[2]
SITES = sorted((ROOT / "firmware-config" / "sites").glob("*.yaml"))
#: what validation adds to the plain site config (not keys of the YAML)
PLAN_ONLY = {"source", "profiles", "config_hash"}


@pytest.mark.parametrize("cls", siteplan.MIRRORED, ids=lambda c: c.__name__)
def test_every_model_field_has_its_plain_field(cls: type) -> None:
    # A key added to a model and forgotten in the mirror would vanish between validation
    # and the runtime: the field sets must be equal.
    model = getattr(site_models, cls.__name__, None) or getattr(profile_models, cls.__name__)
    plain = {f.name for f in dataclasses.fields(cls)} - PLAN_ONLY
    assert plain == set(model.model_fields), cls.__name__


def _same(model: Any, plain: Any, where: str) -> None:
    if siteplan.is_model(model):
        assert type(plain).__name__ == type(model).__name__, where
        for name in type(model).model_fields:
            _same(getattr(model, name), getattr(plain, name), f"{where}.{name}")
    elif isinstance(model, list | tuple):
        assert isinstance(plain, tuple) and len(plain) == len(model), where
        for i, (m, p) in enumerate(zip(model, plain, strict=True)):
            _same(m, p, f"{where}[{i}]")
    elif isinstance(model, dict):
        assert set(model) == set(plain), where
        for k in model:
            _same(model[k], plain[k], f"{where}[{k!r}]")
    else:
        assert model == plain and type(model) is type(plain), where


@pytest.mark.parametrize("path", SITES, ids=lambda p: p.name)
def test_plain_copy_holds_every_value_profile_and_the_hash(path: Path) -> None:
    cfg = load_site_config(path)
    plan = to_plan(cfg)
    _same(cfg, plan, "site")
    assert plan.config_hash == config_hash(cfg) and len(plan.config_hash) == 64
    assert plan.source == path.resolve() and plan.site_dir == path.resolve().parent
    for inst in cfg.instruments:
        _same(cfg.profile(inst), plan.profile(inst.id), inst.profile_name)
        plain_inst = plan.instrument(inst.id)
        assert plain_inst.profile_name == inst.profile_name
        assert plan.profile(plain_inst) is plan.profile(inst.id)
        if inst.transport.type != "modbus_tcp":
            assert plain_inst.transport.line == inst.transport.line  # type: ignore[union-attr]
    prof = plan.profiles[cfg.instruments[0].profile_name]
    assert prof.measurement_signals == cfg.profile(cfg.instruments[0]).measurement_signals
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.site = "elsewhere"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(plan)) == plan


def test_status_flags_and_register_counts_match_the_models() -> None:
    for path in sorted((ROOT / "firmware-config" / "instruments").glob("*.yaml")):
        model = profile_models.load_profile(path)
        plain = siteplan.to_plain(model)
        for mp, pp in zip(model.points, plain.points, strict=True):
            assert mp.register_count == pp.register_count and mp.out_unit == pp.out_unit
        if model.status is not None:
            assert model.status.register_count == plain.status.register_count
            for word in [*range(0, 70000, 7), 0xFFFF, 0xFFFFFFFF]:
                assert model.status.flag_for(word) == plain.status.flag_for(word)


def _decimal_places(*numbers: float) -> int | None:
    """The Decimal-based definition siteplan.decimals_of replaced."""
    places = 0
    for n in numbers:
        exp = Decimal(repr(float(n))).normalize().as_tuple().exponent
        if isinstance(exp, int):
            places = max(places, -exp)
    return places if places <= 12 else None


@pytest.mark.parametrize("numbers", [
    (1.0,), (0.1,), (0.001, 0.0), (0.05, -40.0), (1e-5,), (1.5e-7,), (100.0,), (1e20,),
    (2.5e-13,), (1e-12,), (0.1 + 0.2,), (123.456, 7.0), (float("inf"),), (-0.0,)])
def test_decimals_of_agrees_with_the_decimal_definition(numbers: tuple[float, ...]) -> None:
    assert siteplan.decimals_of(*numbers) == _decimal_places(*numbers)


def test_checking_process_returns_what_checking_here_does(tmp_path: Path) -> None:
    path = SITES[0]
    here = check_here(path, uplink=False)
    child = check_in_child(path, uplink=False)
    assert child.config == here.config
    assert child.errors == here.errors and child.warnings == here.warnings
    assert child.errors  # the example's key file does not exist on this machine
    assert any("key_file" in e for e in child.errors)


def test_checking_process_raises_the_validators_error(tmp_path: Path) -> None:
    bad = tmp_path / "site.yaml"
    bad.write_text(SITES[0].read_text().replace("batch_max_ms: ", "batch_max_msec: ", 1))
    with pytest.raises(siteplan.ConfigError) as here:
        load_site_config(bad)
    with pytest.raises(siteplan.ConfigError) as child:
        check_in_child(bad)
    assert str(child.value) == str(here.value)
    assert "outbox.batch_max_msec: unknown key" in str(child.value)
