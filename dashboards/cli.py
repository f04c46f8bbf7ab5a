"""Grafana dashboards for supervisors: build files for provisioning, upload through the
API, or check every query against an InfluxDB 1.x.

  stationseal dashboards build --out grafana/ [--flavor influxql|flux] [--sites SITES.yaml]
  stationseal dashboards provision --url https://grafana.example --token-file tok.txt
  stationseal dashboards check --influx-url http://127.0.0.1:8086 --database stationseal
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dashboards.grafana import FLAVORS, BuildContext
from dashboards.provisioning import (
    DEFAULT_UIDS,
    FOLDER_TITLE,
    FOLDER_UID,
    PASSWORD_ENV,
    PROMETHEUS_UID,
    TOKEN_ENV,
    BuildError,
    Sources,
    datasources,
    render,
    write,
)
from ingest.detectors.base import SiteInfo
from stationseal.errors import UsageError
from stationseal.records import from_rfc3339


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flavor", choices=FLAVORS, default="influxql",
                   help="query language: influxql (InfluxDB 1.x, or 2.x/3.x via the v1 "
                        "API) or flux (InfluxDB 2.x); default influxql")
    p.add_argument("--datasource-uid", default=None,
                   help="uid of the InfluxDB datasource the panels use (default "
                        f"{DEFAULT_UIDS['influxql']} / {DEFAULT_UIDS['flux']})")
    p.add_argument("--prometheus-uid", default=PROMETHEUS_UID,
                   help=f"uid of the Prometheus datasource (default {PROMETHEUS_UID})")
    p.add_argument("--sites", type=Path, default=None,
                   help="SITES.yaml: adds one dashboard per environmental site with its "
                        "limits drawn")


def _sources(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("datasources (as Grafana reaches them)")
    g.add_argument("--influx-url", default="http://127.0.0.1:8086")
    g.add_argument("--database", default="stationseal", help="InfluxQL database")
    g.add_argument("--influx-user", default=None,
                   help=f"InfluxQL user; the password is read from ${PASSWORD_ENV}")
    g.add_argument("--org", default="stationseal", help="Flux organization")
    g.add_argument("--bucket", default="stationseal", help="Flux default bucket")
    g.add_argument("--prometheus-url", default="http://127.0.0.1:9090")


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="write dashboard JSON and Grafana provisioning YAML")
    b.add_argument("--out", type=Path, required=True, help="output directory")
    b.add_argument("--dashboards-path", default=None,
                   help="where Grafana finds the JSON files (default: OUT/dashboards, "
                        "absolute)")
    _common(b)
    _sources(b)
    b.set_defaults(func=_cmd_build)

    v = sub.add_parser("provision", help="upload the dashboards through the Grafana API")
    v.add_argument("--url", required=True, help="Grafana base URL")
    v.add_argument("--token-file", type=Path, default=None,
                   help="file holding a service account token (else $GRAFANA_TOKEN)")
    v.add_argument("--token", default=None,
                   help="service account token (visible to other local users in the "
                        "process list: prefer --token-file or $GRAFANA_TOKEN)")
    v.add_argument("--user", default=None, help="basic auth user")
    v.add_argument("--password-file", type=Path, default=None,
                   help="basic auth password file (else $GRAFANA_PASSWORD)")
    v.add_argument("--folder-uid", default=FOLDER_UID)
    v.add_argument("--folder-title", default=FOLDER_TITLE)
    v.add_argument("--with-datasources", action="store_true",
                   help=f"also create/update the datasources (secrets from ${PASSWORD_ENV} "
                        f"or ${TOKEN_ENV})")
    v.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    v.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    _common(v)
    _sources(v)
    v.set_defaults(func=_cmd_provision)

    c = sub.add_parser("check", help="run every InfluxQL panel query against an InfluxDB 1.x")
    c.add_argument("--influx-url", default=os.environ.get("STATIONSEAL_INFLUX_URL",
                                                          "http://127.0.0.1:8086"))
    c.add_argument("--database", default=os.environ.get("STATIONSEAL_INFLUX_DB", "stationseal"))
    c.add_argument("--influx-user", default=None)
    c.add_argument("--influx-password-file", type=Path, default=None)
    c.add_argument("--from", dest="start", default="6h",
                   help="range start: a duration back from now (6h, 2d) or RFC 3339")
    c.add_argument("--to", dest="end", default="now", help="range end: now or RFC 3339")
    c.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                   help="pick a variable's value (repeatable; several values for one "
                        "name select several)")
    c.add_argument("--dashboard", action="append", default=[], metavar="UID",
                   help="check only these dashboards")
    c.add_argument("--require-data", action="store_true",
                   help="an empty result is a failure too")
    c.add_argument("-v", "--verbose", action="store_true", help="print every query")
    c.add_argument("--sites", type=Path, default=None,
                   help="SITES.yaml (checks the per-site environmental dashboards too)")
    c.set_defaults(func=_cmd_check, flavor="influxql", datasource_uid=None,
                   prometheus_uid=PROMETHEUS_UID)


def _ctx(args: argparse.Namespace) -> BuildContext:
    uid = args.datasource_uid or DEFAULT_UIDS[args.flavor]
    if uid == args.prometheus_uid:
        raise UsageError(f"--datasource-uid and --prometheus-uid are both {uid!r}")
    return BuildContext(flavor=args.flavor, influx_uid=uid, prometheus_uid=args.prometheus_uid)


def _sites(args: argparse.Namespace) -> dict[str, SiteInfo] | None:
    if args.sites is None:
        return None
    from ingest.detectors.sites import ConfigError, load_sites

    try:
        return load_sites(args.sites)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _src(args: argparse.Namespace) -> Sources:
    return Sources(influx_url=args.influx_url, database=args.database,
                   influx_user=args.influx_user, org=args.org, bucket=args.bucket,
                   prometheus_url=args.prometheus_url)


def _render(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    try:
        return render(_ctx(args), _sites(args))
    except (BuildError, ValueError) as e:
        raise UsageError(str(e)) from None


def _cmd_build(args: argparse.Namespace) -> int:
    try:
        paths = write(args.out, _ctx(args), _src(args), sites=_sites(args),
                      dashboards_path=args.dashboards_path)
    except (BuildError, ValueError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        print(f"stationseal dashboards: cannot write {args.out}: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _read_secret(path: Path | None, env: str, what: str) -> str | None:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UsageError(f"{what}: cannot read {path}: {e.strerror}") from None
    return os.environ.get(env) or None


def _cmd_provision(args: argparse.Namespace) -> int:
    from dashboards.upload import Credentials, UploadError, connect, provision

    token = args.token or _read_secret(args.token_file, "GRAFANA_TOKEN", "--token-file")
    password = None
    if args.user is not None:
        password = _read_secret(args.password_file, "GRAFANA_PASSWORD", "--password-file")
        if password is None:
            raise UsageError("--user needs --password-file or $GRAFANA_PASSWORD")
    if not token and args.user is None:
        raise UsageError("give --token-file (or $GRAFANA_TOKEN) or --user with a password")
    dashes = _render(args)
    ds: list[dict[str, Any]] = []
    if args.with_datasources:
        secrets: dict[str, str] = {}
        if args.flavor == "flux":
            tok = os.environ.get(TOKEN_ENV)
            if not tok:
                raise UsageError(f"--with-datasources --flavor flux needs ${TOKEN_ENV}")
            secrets["influx_token"] = tok
        elif args.influx_user:
            pw = os.environ.get(PASSWORD_ENV)
            if pw is None:
                raise UsageError(f"--influx-user needs ${PASSWORD_ENV}")
            secrets["influx_password"] = pw
        ds = datasources(_ctx(args), _src(args), secrets=secrets)
    try:
        api = connect(args.url, Credentials(token=token, user=args.user, password=password),
                      timeout_s=args.timeout, verify=not args.insecure)
        urls = provision(api, list(dashes.values()), folder_uid=args.folder_uid,
                         folder_title=args.folder_title, datasources=ds)
    except UploadError as e:
        print(f"stationseal dashboards provision: {e}", file=sys.stderr)
        return 1
    for u in urls:
        print(u)
    return 0


def _time_arg(s: str, now: float, what: str) -> int:
    """``now``, a duration back from now (``6h``), or RFC 3339 -> epoch ms."""
    from dashboards.check import parse_duration_ms

    if s == "now":
        return int(now * 1000)
    try:
        return int(now * 1000) - parse_duration_ms(s)
    except ValueError:
        pass
    try:
        return int(from_rfc3339(s) * 1000)
    except ValueError as e:
        raise UsageError(
            f"{what} {s!r}: not now, a duration (6h) or RFC 3339 with a UTC offset ({e})"
        ) from None


def _var_choices(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep or not name:
            raise UsageError(f"--var {it!r}: expected NAME=VALUE")
        out.setdefault(name, []).append(value)
    return out


def _cmd_check(args: argparse.Namespace) -> int:
    from dashboards.check import check_dashboard, http_runner

    now = time.time()
    start = _time_arg(args.start, now, "--from")
    end = _time_arg(args.end, now, "--to")
    if start >= end:
        raise UsageError(f"--from {args.start!r} is not before --to {args.end!r}")
    password = _read_secret(args.influx_password_file, PASSWORD_ENV, "--influx-password-file")
    choices = _var_choices(args.var)
    dashes = _render(args)
    unknown = set(args.dashboard) - set(dashes)
    if unknown:
        raise UsageError(f"--dashboard {sorted(unknown)}: known are {sorted(dashes)}")
    run = http_runner(args.influx_url, args.database, username=args.influx_user,
                      password=password)
    failed = 0
    for uid, dash in dashes.items():
        if args.dashboard and uid not in args.dashboard:
            continue
        names = {v["name"] for v in dash["templating"]["list"]}
        picked: Mapping[str, list[str]] = {k: v for k, v in choices.items() if k in names}
        try:
            res = check_dashboard(dash, run, start_ms=start, end_ms=end, choices=picked,
                                  strict=False)
        except ValueError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            print(f"stationseal dashboards check: {args.influx_url}: {e}", file=sys.stderr)
            return 1
        for note in res.notes:
            print(f"note  {note}")
        for r in res.results:
            bad = not r.ok or (args.require_data and r.empty)
            failed += bad
            state = "ERROR" if not r.ok else ("empty" if r.empty else "ok")
            if bad or args.verbose:
                print(f"{state:5} {uid}: {r.where}: {r.error or ''}".rstrip())
                if args.verbose or not r.ok:
                    print(f"      {r.query}")
        print(f"{uid}: {len(res.results)} queries, "
              f"{sum(not r.ok for r in res.results)} errors, "
              f"{sum(r.empty for r in res.results)} empty")
    return 1 if failed else 0
