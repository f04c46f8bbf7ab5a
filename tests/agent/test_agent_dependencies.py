"""The gateway agent's dependency list (deploy/agent/runtime-dependencies.txt) is what the
agent really imports, and what pyproject.toml declares: a gateway installs from wheels
only (aarch64, deploy/agent/check-aarch64-wheels.sh), so a new import that nobody listed
would first show up as an agent that does not start on a Pi. No network needed."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = ROOT / "deploy" / "agent" / "runtime-dependencies.txt"
#: What runs on a gateway: the agent and its commands, gateway key generation and
#: hardware-key provisioning (deploy/agent/INSTALL.md, hardware-keys.md).
ENTRY_POINTS = ("agent.cli", "stationseal.keys_cli", "stationseal.pkcs11", "stationseal.cli")
PROJECT = {"agent", "stationseal", "ingest", "sim", "evidence", "dashboards", "stack", "demo"}
#: Packages of the central side, never needed on a gateway.
CENTRAL_ONLY = {"ingest", "evidence", "dashboards", "stack", "demo", "sim"}


def _module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import statement, at any depth (lazy imports inside
    functions included), except those only for type checkers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # maybe submodules
    return out


def agent_closure() -> tuple[set[str], dict[str, set[str]]]:
    """(project modules reached, third-party top-level module -> project modules
    importing it)."""
    seen: set[str] = set()
    third: dict[str, set[str]] = {}
    todo = list(ENTRY_POINTS)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        path = _module_file(m)
        assert path is not None, m
        seen.add(m)
        for imp in _imports(m, path):
            top = imp.split(".")[0]
            if top in PROJECT:
                parts = imp.split(".")
                for k in range(1, len(parts) + 1):
                    sub = ".".join(parts[:k])
                    if sub not in seen and _module_file(sub) is not None:
                        todo.append(sub)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third.setdefault(top, set()).add(m)
    return seen, third


def listed() -> dict[str, tuple[str, str, str]]:
    """module -> (distribution, requirement, installed) from the checked-in list."""
    out: dict[str, tuple[str, str, str]] = {}
    for ln in LIST.read_text(encoding="utf-8").splitlines():
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        module, dist, req, how = ln.split()
        assert module not in out, f"{module} listed twice"
        out[module] = (dist, req, how)
    return out


def test_the_list_names_exactly_what_the_agent_imports() -> None:
    seen, third = agent_closure()
    lst = listed()
    missing = {m: sorted(by) for m, by in third.items() if m not in lst}
    stale = sorted(set(lst) - set(third))
    assert not missing, f"imported on the gateway but not in {LIST.name}: {missing}"
    assert not stale, f"in {LIST.name} but no longer imported by the agent: {stale}"
    # The gateway never needs the central side's code (nor its dependencies).
    central = sorted(m for m in seen if m.split(".")[0] in CENTRAL_ONLY)
    assert not central, f"the agent imports central-side modules: {central}"
    assert "agent.uplink" in seen and "stationseal.frame" in seen  # the walk follows imports


def test_the_list_agrees_with_pyproject() -> None:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = set(proj["dependencies"])
    for module, (dist, req, how) in listed().items():
        assert req.lower().startswith(dist.lower()), (module, dist, req)
        if how == "required":
            assert req in required, f"{req} ({module}) is not a dependency in pyproject.toml"
        else:
            assert how.startswith("extra:"), how
            extra = how.split(":", 1)[1]
            assert req in proj["optional-dependencies"].get(extra, []), (
                f"{req} ({module}) is not in the [{extra}] extra of pyproject.toml")


def test_each_module_comes_from_the_listed_distribution() -> None:
    """``serial`` is pyserial, ``yaml`` is PyYAML: the installed metadata says which
    distribution provides each module (the test environment installs them all)."""
    provides = importlib.metadata.packages_distributions()
    for module, (dist, _req, _how) in listed().items():
        got = {d.lower() for d in provides.get(module, [])}
        assert dist.lower() in got, f"{module} is provided by {sorted(got)}, not {dist}"


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    """The check would be worthless if an import inside a function went unseen."""
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import numpy\n"
                 "def sign():\n    import pkcs11\n    from .x import y\n")
    assert _imports("agent.m", f) == {"typing", "typing.TYPE_CHECKING", "pkcs11", "agent.x",
                                      "agent.x.y"}
