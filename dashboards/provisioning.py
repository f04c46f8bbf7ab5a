"""Rendering the dashboards and Grafana's file-provisioning YAML to a directory.

Layout written by :func:`write` (docs/dashboards.md)::

    OUT/dashboards/stationseal-*.json              one file per dashboard
    OUT/provisioning/dashboards/stationseal.yaml   file provider pointing at the JSON
    OUT/provisioning/datasources/stationseal.yaml  InfluxDB (InfluxQL or Flux) + Prometheus

Secrets are never written: the datasource YAML refers to environment variables
(``${STATIONSEAL_INFLUX_PASSWORD}``, ``${STATIONSEAL_INFLUX_TOKEN}``), which Grafana
expands when it reads provisioning files, so the directory can be committed or shipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dashboards.catalog import all_dashboards
from dashboards.grafana import BuildContext, validate
from ingest.detectors.base import SiteInfo

FOLDER_UID = "stationseal"
FOLDER_TITLE = "StationSeal"
PASSWORD_ENV = "STATIONSEAL_INFLUX_PASSWORD"
TOKEN_ENV = "STATIONSEAL_INFLUX_TOKEN"
DEFAULT_UIDS = {"influxql": "stationseal-influxql", "flux": "stationseal-flux"}
PROMETHEUS_UID = "stationseal-prometheus"


class BuildError(Exception):
    """The generated dashboards failed their own consistency checks (a bug, or a
    datasource uid argument that makes references inconsistent)."""


@dataclass(frozen=True, slots=True)
class Sources:
    """Where Grafana reaches the databases (not where this command runs)."""

    influx_url: str = "http://127.0.0.1:8086"
    database: str = "stationseal"
    influx_user: str | None = None
    org: str = "stationseal"
    bucket: str = "stationseal"
    prometheus_url: str = "http://127.0.0.1:9090"
    #: Minimum ``$__interval``: readings arrive at up to 1 Hz.
    min_interval: str = "1s"


def render(ctx: BuildContext, sites: Mapping[str, SiteInfo] | None = None
           ) -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON, checked; raises :class:`BuildError` listing every problem."""
    out: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for d in all_dashboards(sites):
        j = d.to_json(ctx)
        errors += validate(j, (ctx.influx_uid, ctx.prometheus_uid))
        out[d.uid] = j
    if errors:
        raise BuildError("generated dashboards are inconsistent:\n  " + "\n  ".join(errors))
    return out


def datasources(ctx: BuildContext, src: Sources, *, secrets: Mapping[str, str] | None = None
                ) -> list[dict[str, Any]]:
    """Datasource definitions as Grafana's provisioning file and its HTTP API both take
    them. Without ``secrets`` the secure fields are ``${ENV}`` references (files); the
    API upload passes the resolved values instead."""
    sec = dict(secrets or {})
    influx: dict[str, Any] = {
        "uid": ctx.influx_uid, "type": "influxdb", "access": "proxy", "url": src.influx_url,
        "isDefault": True, "editable": False,
    }
    if ctx.flavor == "influxql":
        influx["name"] = "StationSeal InfluxDB (InfluxQL)"
        # ``database`` for Grafana < 9, ``jsonData.dbName`` from 9 on.
        influx["database"] = src.database
        influx["jsonData"] = {"dbName": src.database, "httpMode": "POST",
                              "timeInterval": src.min_interval}
        if src.influx_user:
            influx["user"] = src.influx_user
            influx["secureJsonData"] = {
                "password": sec.get("influx_password", "${" + PASSWORD_ENV + "}")}
    else:
        influx["name"] = "StationSeal InfluxDB (Flux)"
        influx["jsonData"] = {"version": "Flux", "organization": src.org,
                              "defaultBucket": src.bucket, "timeInterval": src.min_interval}
        influx["secureJsonData"] = {"token": sec.get("influx_token", "${" + TOKEN_ENV + "}")}
    prom = {"name": "StationSeal Prometheus", "uid": ctx.prometheus_uid, "type": "prometheus",
            "access": "proxy", "url": src.prometheus_url, "isDefault": False,
            "editable": False, "jsonData": {"timeInterval": "15s", "httpMethod": "POST"}}
    return [influx, prom]


def datasources_yaml(ctx: BuildContext, src: Sources) -> dict[str, Any]:
    return {"apiVersion": 1, "datasources": datasources(ctx, src)}


def providers_yaml(dashboards_path: str, folder_uid: str = FOLDER_UID,
                   folder_title: str = FOLDER_TITLE) -> dict[str, Any]:
    return {"apiVersion": 1, "providers": [{
        "name": "stationseal",
        "orgId": 1,
        "folder": folder_title,
        "folderUid": folder_uid,
        "type": "file",
        # Dashboards are code: edits belong in the repository, not in the UI.
        "disableDeletion": True,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 60,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }]}


def write(
    out: Path,
    ctx: BuildContext,
    src: Sources,
    *,
    sites: Mapping[str, SiteInfo] | None = None,
    dashboards_path: str | None = None,
) -> list[Path]:
    """Write dashboards and provisioning files; returns the paths written.

    ``dashboards_path`` is where Grafana will find the JSON files (default: this output
    directory, absolute). Earlier ``stationseal-*.json`` files that this build no longer
    produces (a site removed from SITES.yaml) are deleted, or Grafana would keep
    provisioning them.
    """
    dashes = render(ctx, sites)
    ddir = out / "dashboards"
    pdir = out / "provisioning"
    for d in (ddir, pdir / "dashboards", pdir / "datasources"):
        d.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    keep = {f"{uid}.json" for uid in dashes}
    for old in ddir.glob("stationseal-*.json"):
        if old.name not in keep:
            old.unlink()
    for uid, j in dashes.items():
        written.append(_write(ddir / f"{uid}.json",
                              json.dumps(j, indent=2, ensure_ascii=False) + "\n"))
    path = dashboards_path or str(ddir.resolve())
    written.append(_write(pdir / "dashboards" / "stationseal.yaml",
                          _yaml(providers_yaml(path))))
    written.append(_write(pdir / "datasources" / "stationseal.yaml",
                          _yaml(datasources_yaml(ctx, src))))
    return written


def _yaml(data: Any) -> str:
    return ("# Generated by `stationseal dashboards build`; edit dashboards/*.py instead.\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _write(path: Path, text: str) -> Path:
    """Replace atomically: Grafana polls the directory and must never read half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
