"""Validate the site config in a short-lived child process; keep only its plain copy.

`agent run` needs the full strictness of the pydantic models (agent/config.py: unknown
keys, dangling profiles, two instruments on one unit id, every error with file and path)
and the preflight of every file the config names, but not pydantic itself for the weeks
the agent then runs: importing it and building the schemas costs ~11 MB of the
gateway's 35 MB. So the agent forks before it has imported any of it; the child
validates, runs the preflight, and hands back the plain frozen copy (agent/siteplan.py)
through a pipe, then exits. The parent never imports pydantic or PyYAML.

Where ``fork`` is unavailable the same steps run in-process (the memory is then spent).
Errors are the same either way: :class:`ConfigError` with the validator's message.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from agent.siteplan import ConfigError, SiteConfig

__all__ = ["Checked", "check_here", "check_in_child"]


@dataclass(frozen=True, slots=True)
class Checked:
    """A validated site config (plain copy) and what the preflight found."""

    config: SiteConfig
    #: preflight problems that stop the agent (one line each: setting, path, problem)
    errors: list[str]
    #: preflight warnings (a serial adapter unplugged now, a loose file mode)
    warnings: list[str]


class ConfigNotFound(ConfigError):
    """The site config file does not exist."""


def check_here(path: str | Path, *, uplink: bool = True) -> Checked:
    """Load, validate and preflight in this process (imports pydantic and PyYAML)."""
    from agent.config import load_site_config, preflight, to_plan

    try:
        cfg = load_site_config(path)
    except FileNotFoundError:
        raise ConfigNotFound(f"{path}: site config not found") from None
    errors, warnings = preflight(cfg, uplink=uplink)
    return Checked(to_plan(cfg), errors, warnings)


def check_in_child(path: str | Path, *, uplink: bool = True) -> Checked:
    """:func:`check_here` in a forked child; its result (or its ConfigError) comes back
    through a pipe. The caller's process imports neither pydantic nor PyYAML."""
    if not hasattr(os, "fork"):
        return check_here(path, uplink=uplink)
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            try:
                result: object = check_here(path, uplink=uplink)
            except ConfigError as e:
                result = e
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not data:
        raise ConfigError(f"{path}: validating the site config failed in its checking "
                          f"process (exit status {code}; its error is above)")
    result = pickle.loads(data)
    if isinstance(result, ConfigError):
        raise result
    if not isinstance(result, Checked):
        raise ConfigError(f"{path}: the config checking process returned "
                          f"{type(result).__name__}")
    return result
