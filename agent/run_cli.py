"""`stationseal agent run` and `stationseal agent status` (wired into agent/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "/etc/stationseal/site.yaml"


def _default_config() -> str:
    return os.environ.get("STATIONSEAL_CONFIG", DEFAULT_CONFIG)


def register_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the gateway agent",
                       description="Poll the configured instruments, seal every reading "
                                   "into signed frames, keep them in the outbox and "
                                   "publish them (docs/agent.md).")
    p.add_argument("--config", default=_default_config(),
                   help="site config YAML (default: $STATIONSEAL_CONFIG or "
                        f"{DEFAULT_CONFIG})")
    p.add_argument("--output", default=None, metavar="file:PATH",
                   help="write frames to a JSON Lines file instead of the configured uplink")
    p.add_argument("--log-level", default=os.environ.get("STATIONSEAL_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_run)


def register_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check-config", help="validate the site config and every file it "
                       "names (keys, certificates, outbox directory); exit 2 if unusable",
                       description="Load the site config and its instrument profiles, "
                                   "then check every referenced file and directory the way "
                                   "`agent run` does at start. Prints OK and exits 0, or "
                                   "one line per problem and exits 2.")
    p.add_argument("--config", default=_default_config(),
                   help="site config YAML (default: $STATIONSEAL_CONFIG or "
                        f"{DEFAULT_CONFIG})")
    p.set_defaults(func=cmd_check)


def _load_checked(path: str, *, uplink: bool = True) -> object:
    """Site config loaded and preflighted; UsageError (exit 2) naming every problem."""
    from agent.config import ConfigError, load_site_config, preflight
    from stationseal.cli import UsageError

    try:
        cfg = load_site_config(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: site config not found") from None
    except ConfigError as e:
        raise UsageError(str(e)) from None
    errors, warnings = preflight(cfg, uplink=uplink)
    for w in warnings:
        print(f"stationseal agent: warning: {path}: {w}", file=sys.stderr)
    if errors:
        raise UsageError("\n".join(f"{path}: {e}" for e in errors))
    return cfg


def cmd_check(args: argparse.Namespace) -> int:
    from agent.config import SiteConfig

    cfg = _load_checked(args.config)
    assert isinstance(cfg, SiteConfig)
    print(f"{args.config}: OK (gateway {cfg.gateway_id}, site {cfg.site}, "
          f"{len(cfg.instruments)} instruments, uplink {cfg.uplink.type})")
    return 0


def register_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show the running agent's instruments, outbox, uplink",
                       description="Read the status file the running agent writes next to "
                                   "its outbox every few seconds.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", default=None,
                   help="site config YAML (the status file is found beside its outbox; "
                        f"default: $STATIONSEAL_CONFIG or {DEFAULT_CONFIG})")
    g.add_argument("--status-file", default=None, help="status JSON file to read directly")
    p.add_argument("--json", action="store_true", help="print the status document")
    p.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.configproc import check_in_child
    from agent.outbox import OutboxError
    from agent.runtime import Agent
    from agent.siteplan import ConfigError
    from stationseal.cli import UsageError
    from stationseal.signing import SigningError

    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        # journald adds its own timestamps; a terminal user wants them
        format="%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The config is validated (pydantic) and preflighted in a short-lived child process;
    # this long-running one keeps only the plain copy (agent/configproc.py).
    # --output file:PATH replaces the configured uplink: its files do not matter then.
    try:
        checked = check_in_child(args.config, uplink=args.output is None)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    for w in checked.warnings:
        print(f"stationseal agent: warning: {args.config}: {w}", file=sys.stderr)
    if checked.errors:
        raise UsageError("\n".join(f"{args.config}: {e}" for e in checked.errors))
    try:
        agent = Agent.from_config(checked.config, output=args.output)
        agent.open()
    except (ValueError, SigningError, OutboxError, ConfigError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{e.filename or args.config}: {e.strerror or e}") from None
    settle_memory()
    asyncio.run(agent.run())
    return 0


def settle_memory() -> None:
    """After start-up (imports, YAML, schema building) and before the long run: collect
    the start-up garbage, hand freed heap pages back to the kernel, and move every
    surviving object out of the cyclic collector's generations so its periodic passes
    do not rescan thousands of long-lived objects (module and config data) for ever."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc only
    gc.freeze()


def cmd_status(args: argparse.Namespace) -> int:
    from agent.status import format_status, freshness, read_status, status_path_for
    from stationseal.cli import UsageError

    if args.status_file:
        path = Path(args.status_file)
    else:
        from agent.config import ConfigError, load_site_config

        cfg_path = args.config or _default_config()
        try:
            cfg = load_site_config(cfg_path)
        except FileNotFoundError:
            raise UsageError(f"{cfg_path}: site config not found") from None
        except ConfigError as e:
            raise UsageError(str(e)) from None
        path = status_path_for(cfg.outbox.path)
    try:
        doc = read_status(path)
    except FileNotFoundError:
        print(f"{path}: no status file: the agent has not run with this outbox",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    running, age = freshness(doc, time.time())
    if args.json:
        print(json.dumps({**doc, "running": running, "status_age_s": round(age, 1)},
                         indent=2))
    else:
        print(format_status(doc))
    return 0 if running else 1
