"""Rule id -> detector class, discovered from the pattern modules by name.

Modules are looked up by their fixed names (``v1`` … ``v10``, ``e1`` … ``e8`` and
``integrity``) rather than by scanning the package, so that a stray file cannot register a
rule and a listing can say precisely which expected module is absent. Absence is tolerated
here, and only here: a module that exists but fails to import is a bug and raises.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ingest.detectors.base import Detector
from ingest.detectors.common import ALL_KINDS, check_param_types

PACKAGE = "ingest.detectors"

#: Every module a complete installation has, in listing order. A name with a dot is a
#: full module path: reconciliation of reported against measured data (ingest/reconcile/)
#: raises its findings through the same framework.
RULE_MODULES: tuple[str, ...] = (
    *(f"v{i}" for i in range(1, 11)),
    *(f"e{i}" for i in range(1, 9)),
    "integrity",
    "faults",
    "ingest.reconcile.hj212",
)


@dataclass(frozen=True, slots=True)
class RuleInfo:
    rule: str
    cls: type[Detector]
    module: str

    @property
    def title(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0].strip() if doc else self.cls.__name__


@dataclass(slots=True)
class Registry:
    rules: dict[str, RuleInfo] = field(default_factory=dict)
    #: Expected modules that are not installed (yet).
    missing: list[str] = field(default_factory=list)

    def select(self, rules: Iterable[str] | None) -> list[str]:
        """Rule ids to run, in registry order; ``None`` means all. Unknown ids raise."""
        if rules is None:
            return list(self.rules)
        wanted = [r.strip() for r in rules if r.strip()]
        unknown = [r for r in wanted if r not in self.rules]
        if unknown:
            raise ValueError(
                f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(self.rules)}"
                + (f" (modules not installed: {', '.join(self.missing)})" if self.missing else "")
            )
        return [r for r in self.rules if r in wanted]

    def check_params(self, params: dict[str, Any]) -> list[str]:
        """Problems with a ``{rule: {param: value}}`` mapping, each naming rule and key."""
        problems: list[str] = []
        for rule, p in params.items():
            if rule not in self.rules:
                problems.append(f"{rule}: unknown rule (known: {', '.join(self.rules)})")
            elif not isinstance(p, dict):
                problems.append(f"{rule}: expected a mapping of parameters, got {p!r}")
            else:
                problems += check_param_types(rule, self.rules[rule].cls.DEFAULTS, p)
        return problems


def _classes_in(module: Any) -> list[type[Detector]]:
    """Detector classes defined in ``module``, in definition order, each once."""
    found: dict[type[Detector], None] = {}
    for c in vars(module).values():
        if inspect.isclass(c) and issubclass(c, Detector) and c.__module__ == module.__name__ \
                and c.rule:
            found[c] = None
    return list(found)


@lru_cache(maxsize=1)
def discover() -> Registry:
    reg = Registry()
    for name in RULE_MODULES:
        modname = name if "." in name else f"{PACKAGE}.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
            reg.missing.append(name)
            continue
        for cls in _classes_in(mod):
            if cls.rule in reg.rules:
                other = reg.rules[cls.rule]
                raise RuntimeError(
                    f"rule {cls.rule} defined twice: {other.module}.{other.cls.__name__} "
                    f"and {modname}.{cls.__name__}"
                )
            reg.rules[cls.rule] = RuleInfo(cls.rule, cls, modname)
    return reg


def _kinds(cls: type[Detector], sep: str) -> str:
    return "all" if set(cls.kinds) == set(ALL_KINDS) else sep.join(cls.kinds)


def listing(reg: Registry) -> str:
    lines = [f"{'rule':<10} {'site kinds':<38} title"]
    for info in reg.rules.values():
        lines.append(f"{info.rule:<10} {_kinds(info.cls, ','):<38} {info.title}")
    if reg.missing:
        mods = ", ".join(f"{PACKAGE.replace('.', '/')}/{m}.py" for m in reg.missing)
        lines.append(f"not installed: {mods}")
    return "\n".join(lines) + "\n"


def _value_md(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        import json

        return json.dumps(v, ensure_ascii=False)
    return str(v)


def markdown(reg: Registry) -> str:
    """docs/detectors.md: generated, so the rules and their documentation cannot drift."""
    out = [
        "# Detectors",
        "",
        "Generated by `stationseal detect --list --markdown > docs/detectors.md` from the",
        "detector docstrings and their `DEFAULTS`; do not edit by hand. Every parameter can be",
        "overridden with `--params PARAMS.yaml` (`{RULE: {parameter: value}}`); unknown rules,",
        "unknown parameters and values of the wrong type are refused. Record and alert formats:",
        "docs/records.md.",
        "",
        "| rule | site kinds | title |",
        "|---|---|---|",
    ]
    for info in reg.rules.values():
        out.append(f"| [{info.rule}](#{info.rule.lower()}) | {_kinds(info.cls, ', ')} "
                   f"| {info.title} |")
    if reg.missing:
        out += ["", "Not installed: " + ", ".join(f"`{m}.py`" for m in reg.missing) + "."]
    for info in reg.rules.values():
        doc = inspect.getdoc(info.cls) or ""
        body = textwrap.dedent("\n".join(doc.splitlines()[1:])).strip()
        out += [
            "",
            f"## {info.rule}",
            "",
            f"**{info.title}** — `{info.module}.{info.cls.__name__}`, site kinds: "
            f"{_kinds(info.cls, ', ')}.",
        ]
        if body:
            out += ["", body]
        if info.cls.DEFAULTS:
            out += ["", "| parameter | default |", "|---|---|"]
            out += [f"| `{k}` | `{_value_md(v)}` |" for k, v in info.cls.DEFAULTS.items()]
    return "\n".join(out) + "\n"
