"""Push the dashboards to a running Grafana through its HTTP API (``grafana-client``).

``taishi dashboards push`` calls :func:`push`: it creates or updates the
datasources (one per Taishi index, :func:`dashboards.datasources`), the
``Taishi`` folder and every ``dashboards/*.json``, and returns what it did
per object: ``created``, ``updated`` or ``unchanged``. Run twice, the second
run changes nothing. The decisions are pure functions (:func:`plan_datasource`,
:func:`plan_folder`, :func:`plan_dashboard`) of what Grafana holds and what
the repository says, so they are tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import dashboards as dash_mod

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
_VOLATILE = ("id", "version")


@dataclass
class Action:
    kind: str  # datasource | folder | dashboard
    uid: str
    title: str
    result: str  # created | updated | unchanged


# ------------------------------------------------------------------------------ pure decisions

def _subset_equal(want: Any, have: Any) -> bool:
    """Every key of ``want`` (recursively) has the same value in ``have``."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_subset_equal(v, have.get(k)) for k, v in want.items())
    return want == have


def plan_datasource(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> str:
    """``created`` when Grafana has no datasource with the uid, ``updated`` when any setting Taishi
    defines differs (settings Grafana adds itself are ignored), else ``unchanged``."""
    if existing is None:
        return CREATED
    return UNCHANGED if _subset_equal(desired, existing) else UPDATED


def plan_folder(existing: Mapping[str, Any] | None, title: str) -> str:
    if existing is None:
        return CREATED
    return UNCHANGED if existing.get("title") == title else UPDATED


def _strip(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in _VOLATILE}


def plan_dashboard(existing: Mapping[str, Any] | None, desired: Mapping[str, Any], folder_uid: str) -> str:
    """``existing`` is Grafana's ``GET /api/dashboards/uid/<uid>`` answer (``dashboard`` + ``meta``)."""
    if existing is None:
        return CREATED
    same = (_strip(existing.get("dashboard", {})) == _strip(desired)
            and (existing.get("meta") or {}).get("folderUid") == folder_uid)
    return UNCHANGED if same else UPDATED


# ------------------------------------------------------------------------------ the search node

def detect_flavor(search_url: str, timeout: float = 5.0) -> tuple[str, str]:
    """``(flavor, version)`` of the node at ``search_url`` from its root document (the OpenSearch
    datasource wants the version too, which :func:`taishi.cluster.search.detect_flavor` does not give)."""
    from taishi.cluster.services import search_info

    doc = search_info(search_url, timeout=timeout)
    if doc is None:
        raise OSError(f"no search node answers at {search_url}")
    ver = doc.get("version", {})
    flavor = "opensearch" if ver.get("distribution") == "opensearch" else "elasticsearch"
    return flavor, str(ver.get("number", ""))


# ------------------------------------------------------------------------------ push

def _get_or_none(fn: Callable[[], Any]) -> Any:
    from grafana_client.client import GrafanaClientError

    try:
        return fn()
    except GrafanaClientError as e:
        if e.status_code == 404:
            return None
        raise


def client(url: str, user: str | None = None, password: str | None = None, token: str | None = None,
           timeout: float = 10.0):
    from grafana_client import GrafanaApi

    credential: Any = token if token else ((user, password) if user else None)
    return GrafanaApi.from_url(url, credential=credential, timeout=timeout)


def push(api, *, search_url: str, flavor: str, prefix: str = "taishi", version: str | None = None,
         folder_uid: str = dash_mod.FOLDER_UID, folder_title: str = dash_mod.FOLDER_TITLE,
         only: list[str] | None = None, report: Callable[[Action], None] | None = None) -> list[Action]:
    """Create/update the datasources, the folder and the dashboards (``only``: dashboard uids)."""
    actions: list[Action] = []

    def done(a: Action) -> None:
        actions.append(a)
        if report:
            report(a)

    for ds in dash_mod.datasources(search_url, flavor, prefix=prefix, version=version):
        have = _get_or_none(lambda: api.datasource.get_datasource_by_uid(ds["uid"]))
        what = plan_datasource(have, ds)
        if what == CREATED:
            api.datasource.create_datasource(ds)
        elif what == UPDATED:
            api.datasource.update_datasource_by_uid(ds["uid"], {**ds, "id": have.get("id")})
        done(Action("datasource", ds["uid"], ds["name"], what))

    have = _get_or_none(lambda: api.folder.get_folder(folder_uid))
    what = plan_folder(have, folder_title)
    if what == CREATED:
        api.folder.create_folder(folder_title, uid=folder_uid)
    elif what == UPDATED:
        api.folder.update_folder(folder_uid, title=folder_title, overwrite=True)
    done(Action("folder", folder_uid, folder_title, what))

    for uid, dash in dash_mod.load_all().items():
        if only and uid not in only:
            continue
        have = _get_or_none(lambda: api.dashboard.get_dashboard(uid))
        what = plan_dashboard(have, dash, folder_uid)
        if what != UNCHANGED:
            api.dashboard.update_dashboard({"dashboard": {**_strip(dash), "id": None}, "folderUid": folder_uid,
                                            "overwrite": True, "message": "taishi dashboards push"})
        done(Action("dashboard", uid, dash.get("title", uid), what))
    return actions
