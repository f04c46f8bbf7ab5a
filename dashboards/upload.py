"""Uploading dashboards (and optionally datasources) through Grafana's HTTP API.

For Grafana instances that are not provisioned from files (a managed Grafana, a shared
server where the team has only an API token). Uses the maintained ``grafana-client``
package, an optional dependency (``pip install 'stationseal[dashboards]'``) imported only
here so ``build`` and ``check`` work without it.

Dashboards are posted with ``overwrite: true`` into one folder: the code is the truth,
and a UI edit made meanwhile is replaced (Grafana keeps it in the version history).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class UploadError(Exception):
    """Grafana refused or could not be reached; the message names the object and URL."""


def _client_module() -> Any:
    try:
        import grafana_client
        import grafana_client.client
    except ImportError:
        raise UploadError(
            "the Grafana API upload needs the 'grafana-client' package: "
            "pip install 'grafana-client>=4' (or the project's 'dashboards' extra); "
            "`stationseal dashboards build` + file provisioning works without it"
        ) from None
    return grafana_client


@dataclass(frozen=True, slots=True)
class Credentials:
    token: str | None = None
    user: str | None = None
    password: str | None = None

    def auth(self) -> str | tuple[str, str]:
        if self.token:
            return self.token
        if self.user is not None and self.password is not None:
            return (self.user, self.password)
        raise UploadError("no Grafana credentials: give a service account token, or a "
                          "user and password")


def connect(url: str, creds: Credentials, *, timeout_s: float = 10.0, verify: bool = True
            ) -> Any:
    gc = _client_module()
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise UploadError(f"Grafana URL {url!r} is not an http(s) URL")
    if u.username or u.password:
        raise UploadError("put Grafana credentials in --token-file/--user, not in the URL "
                          "(it is printed in messages and shell history)")
    return gc.GrafanaApi(auth=creds.auth(), host=u.hostname, port=u.port,
                         url_path_prefix=u.path.strip("/") + "/" if u.path.strip("/") else "",
                         protocol=u.scheme, verify=verify, timeout=timeout_s)


def _why(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    msg = getattr(e, "message", None) or str(e)
    return f"HTTP {status}: {msg}" if status else msg


def _is_not_found(e: Exception) -> bool:
    return getattr(e, "status_code", None) == 404


def provision(
    api: Any,
    dashboards: Sequence[Mapping[str, Any]],
    *,
    folder_uid: str,
    folder_title: str,
    datasources: Sequence[Mapping[str, Any]] = (),
    message: str = "stationseal dashboards provision",
) -> list[str]:
    """Create the folder if missing, create or update datasources by uid, post every
    dashboard. Returns the dashboard URLs Grafana reports. Stops at the first refusal:
    dashboards uploaded before it stay (each upload is complete on its own)."""
    gc = _client_module()
    errors = (gc.client.GrafanaException, OSError)
    base = getattr(api.client, "url", "Grafana")
    try:
        api.health.check()
    except errors as e:
        raise UploadError(f"{base}: not reachable as Grafana: {_why(e)}") from None
    try:
        api.folder.get_folder(folder_uid)
    except errors as e:
        if not _is_not_found(e):
            raise UploadError(f"{base}: folder {folder_uid!r}: {_why(e)}") from None
        try:
            api.folder.create_folder(folder_title, uid=folder_uid)
        except errors as e2:
            raise UploadError(f"{base}: creating folder {folder_uid!r}: {_why(e2)}") from None
    for ds in datasources:
        uid = str(ds["uid"])
        try:
            try:
                api.datasource.get_datasource_by_uid(uid)
                exists = True
            except errors as e:
                if not _is_not_found(e):
                    raise
                exists = False
            if exists:
                api.datasource.update_datasource_by_uid(uid, dict(ds))
            else:
                api.datasource.create_datasource(dict(ds))
        except errors as e:
            raise UploadError(f"{base}: datasource {uid!r}: {_why(e)}") from None
    urls: list[str] = []
    for d in dashboards:
        body = {"dashboard": {**d, "id": None}, "folderUid": folder_uid, "overwrite": True,
                "message": message}
        try:
            r = api.dashboard.update_dashboard(body)
        except errors as e:
            raise UploadError(f"{base}: dashboard {d.get('uid')!r}: {_why(e)}") from None
        urls.append(str((r or {}).get("url", d.get("uid"))))
    return urls
