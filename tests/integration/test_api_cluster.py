"""The HTTP API in cluster mode (``create_app(..., cfg)`` with ``mode: cluster``) on the real search node.

The demo campaign runs through the embedded pipeline (the ``campaign`` fixture of
test_incidents_cluster); its events, alerts and dead letters are copied into a
search store of their own (a unique index prefix) and its incidents rebuilt there
with ``taishi --mode cluster incidents rebuild``. One API app serves the data
directory in embedded mode, one in cluster mode over the same data directory
(users, tokens, triage and the audit log live there in both modes): the main
endpoints must give the same JSON. What differs on purpose is left out of the
comparison: ``event.ingested`` (each store stamps when *it* wrote a row), the
request's ``until`` (now), the history's wall-clock times, and the embedded
bus's topics (cluster mode's bus is Kafka).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cluster_support import cluster_config, drop_indices
from test_incidents_cluster import _without_times, campaign  # noqa: F401 (campaign: a fixture)

from taishi.api.app import API, create_app
from taishi.api.auth import ADMIN_TOKEN_ENV, ROLES
from taishi.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SINCE = "2026-03-13T00:00:00Z"  # the day before the campaign (START), so every window holds all of it


@pytest.fixture(scope="module")
def apps(campaign, search_node, require_module, tmp_path_factory):  # noqa: F811
    """(embedded client, cluster client, tokens by role, data dir, cluster cfg)."""
    import os

    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")
    from taishi.cluster.search import SearchStore
    from taishi.store import Store

    os.environ.pop(ADMIN_TOKEN_ENV, None)
    data_dir = campaign[0]
    cfg = cluster_config(data_dir, "127.0.0.1:9092", search_node)  # Kafka is not used here
    conf = tmp_path_factory.mktemp("api-conf") / "taishi.yaml"
    conf.write_text(json.dumps({"cluster": {"search": cfg.cluster["search"]}}))
    node = SearchStore.from_config(cfg)
    try:
        emb = Store(data_dir)
        try:
            for kind in ("events", "alerts", "deadletters"):
                tbl = getattr(emb, f"search_{kind}")(limit=None)
                assert getattr(node, f"write_{kind}")(tbl) == tbl.num_rows
        finally:
            emb.close()
        res = CliRunner().invoke(main, ["--config", str(conf), "--data-dir", str(data_dir), "--mode", "cluster",
                                        "incidents", "rebuild", "--json"])
        assert res.exit_code == 0, (res.output, res.exception)
        embedded_app = create_app(data_dir)
        cluster_app = create_app(data_dir, cfg=cfg)
        assert cluster_app.state.mode == "cluster" and embedded_app.state.mode == "embedded"
        tokens = {r: embedded_app.state.users.add_user(f"api-{r}", r) for r in ROLES}
        with TestClient(embedded_app) as e, TestClient(cluster_app) as c:
            yield e, c, tokens, data_dir, cfg
    finally:
        node.close()
        drop_indices(cfg)


def _get(client, path: str, token: str, code: int = 200, **params) -> dict:
    r = client.get(API + path, params=params, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == code, (path, r.status_code, r.text[:500])
    return r.json()


def _both(apps, path: str, role: str = "analyst", **params) -> tuple[dict, dict]:
    e, c, tokens, _, _ = apps
    return _get(e, path, tokens[role], **params), _get(c, path, tokens[role], **params)


def _no_ingested(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "event.ingested"} for r in rows]


def _same_page(apps, path: str, q: str, **params) -> dict:
    """A list endpoint gives the same totals and items in both modes; the embedded page."""
    emb, clu = _both(apps, path, q=q, since=SINCE, **params)
    assert clu["total"] == emb["total"] and clu["count"] == emb["count"], q
    assert _no_ingested(clu["items"]) == _no_ingested(emb["items"]), q
    return emb


def test_health_reports_the_mode_and_the_node(apps):
    e, c, tokens, _, _ = apps
    assert e.get(f"{API}/health").json()["mode"] == "embedded"
    h = c.get(f"{API}/health").json()
    assert h["status"] == "ok" and h["mode"] == "cluster" and h["search"] == "ok"
    de, dc = _both(apps, "/health/detail")
    assert dc["mode"] == "cluster" and dc["status"] == "ok"
    for table in ("events", "alerts", "deadletters"):
        assert dc["store"][table] == de["store"][table], table
    assert de["store"]["alerts"] > 20


def test_health_says_when_the_node_does_not_answer(tmp_path):
    from taishi import config as config_mod

    cfg = config_mod.load(data_dir=tmp_path, mode="cluster")
    cfg.cluster = {"search": {"url": "http://127.0.0.1:9", "flavor": "opensearch", "index_prefix": "taishi-nowhere"}}
    app = create_app(tmp_path, cfg=cfg)
    token = app.state.users.add_user("a1", "analyst")
    with TestClient(app) as c:
        h = c.get(f"{API}/health").json()
        assert h["status"] == "degraded" and h["mode"] == "cluster" and h["search"] == "unreachable"
        r = c.get(f"{API}/alerts", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and "search node" in r.json()["detail"]


@pytest.mark.parametrize("q", ["", "rule.level:(high OR critical)", "source.ip:10.0.0.0/8 AND NOT rule.type:anomaly",
                               "brute", "threat.tactic.name:*"])
def test_alerts_list_is_the_same(apps, q):
    emb = _same_page(apps, "/alerts", q, limit=1000)
    if not q:
        assert emb["total"] > 20
    asc = _both(apps, "/alerts", q=q, since=SINCE, limit=7, order="asc")
    assert _no_ingested(asc[1]["items"]) == _no_ingested(asc[0]["items"]), q


def test_bad_query_is_a_400_in_both_modes(apps):
    e, c, tokens, _, _ = apps
    for client in (e, c):
        d = _get(client, "/alerts", tokens["analyst"], code=400, q="sverity:high")
        assert "unknown field" in d["detail"]


def test_alert_detail_with_its_events_is_the_same(apps):
    emb, _ = _both(apps, "/alerts", since=SINCE, limit=1000)
    n_events = 0
    for a in emb["items"][::3]:
        de, dc = _both(apps, f"/alerts/{a['id']}")
        assert _no_ingested([dc["alert"]]) == _no_ingested([de["alert"]]), a["id"]
        assert _no_ingested(dc["events"]) == _no_ingested(de["events"]), a["id"]
        assert dc["events_truncated"] == de["events_truncated"] and dc["triage"] == de["triage"]
        n_events += len(de["events"])
    assert n_events > 0
    e, c, tokens, _, _ = apps
    _get(c, "/alerts/no-such-alert", tokens["analyst"], code=404)


@pytest.mark.parametrize("q", ["", "event.category:network", "destination.port:22", "failed", "_exists_:dns.question.name"])
def test_events_search_is_the_same(apps, q):
    emb = _same_page(apps, "/events", q, limit=300)
    if not q:
        assert emb["total"] > 100
        one = emb["items"][0]["event.id"]
        de, dc = _both(apps, f"/events/{one}")
        assert _no_ingested([dc]) == _no_ingested([de])


def test_deadletters_are_the_same(apps):
    emb, clu = _both(apps, "/deadletters", since=SINCE, limit=1000)
    assert clu["total"] == emb["total"]
    assert _no_ingested(clu["items"]) == _no_ingested(emb["items"])


def test_incidents_list_and_show_are_the_same(apps):
    emb, clu = _both(apps, "/incidents", limit=1000)
    assert clu["count"] == emb["count"] >= 1
    assert [_without_times(i) for i in clu["items"]] == [_without_times(i) for i in emb["items"]]
    for q in ("severity:(critical OR high)", "jump01"):
        emb_q, clu_q = _both(apps, "/incidents", q=q)
        assert [i["id"] for i in clu_q["items"]] == [i["id"] for i in emb_q["items"]], q
    paths = 0
    for item in emb["items"]:
        de, dc = _both(apps, f"/incidents/{item['id']}")
        assert _without_times(dc) == _without_times(de), item["id"]
        paths += bool(de["graph"]["path"])
    assert paths >= 1
    e, c, tokens, _, _ = apps
    r = c.get(f"{API}/incidents/{emb['items'][0]['id']}/graph", headers={"Authorization": f"Bearer {tokens['analyst']}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content


def _before_now(x):
    """Time series without their last point, which is the request's 'now' (posture, assets)."""
    if isinstance(x, dict):
        return {k: (_before_now(v)[:-1] if k in ("times", "series") and isinstance(v, list) else _before_now(v))
                for k, v in x.items()}
    if isinstance(x, list):
        return [_before_now(v) for v in x]
    return x


def _without_now(view: dict) -> dict:
    """A view without what depends on the request's 'now' or on the mode's bus."""
    out = {k: v for k, v in _before_now(view).items() if k != "until"}
    if "collectors" in out:
        col = dict(out["collectors"])
        col.pop("topics"), col.pop("bus")
        col["sources"] = [{k: v for k, v in s.items() if k != "last_ingested"} for s in col["sources"]]
        out["collectors"] = col
    return out


def test_overview_summary_posture_geo_flows_and_assets_are_the_same(apps):
    emb, clu = _both(apps, "/views/overview", since=SINCE)
    assert clu["collectors"]["bus"] == "kafka" and clu["collectors"]["topics"] == []
    assert emb["collectors"]["bus"] == "embedded"
    assert _without_now(clu) == _without_now(emb)
    assert emb["totals"]["alerts"] > 20 and emb["collectors"]["sources"] and emb["top_sources"]
    for q in ("rule.level:critical", "source.ip:10.0.0.0/8"):
        emb, clu = _both(apps, "/views/overview", since=SINCE, q=q)
        assert _without_now(clu) == _without_now(emb), q
    emb, clu = _both(apps, "/summary", since=SINCE)
    assert _without_now(clu) == _without_now(emb) and emb["alerts"] > 20
    emb, clu = _both(apps, "/views/posture", since=SINCE, step=86400)
    assert _without_now(clu) == _without_now(emb)
    for table in ("alerts", "events"):
        emb, clu = _both(apps, "/views/geo", since=SINCE, table=table)
        assert _without_now(clu) == _without_now(emb), table
    for q in ("", "destination.port:22", "source.ip:10.0.0.0/8"):
        emb, clu = _both(apps, "/views/flows", since=SINCE, q=q)
        assert _without_now(clu) == _without_now(emb), q
    assert emb["totals"]["flows"] > 0 and emb["top_talkers"] and emb["ports"]
    emb, clu = _both(apps, "/views/assets", since=SINCE)
    assert _without_now(clu) == _without_now(emb)
    assert emb["count"] > 0 and any(a["events"] for a in emb["items"]) and any(a["last_seen"] for a in emb["items"])


def test_embedded_only_routes_say_so(apps):
    e, c, tokens, _, _ = apps
    for path, role in (("/compliance/discovery", "auditor"), ("/compliance/report", "auditor")):
        d = _get(c, path, tokens[role], code=501)
        assert "not available in cluster mode" in d["detail"], path
        _get(e, path, tokens[role])  # the embedded app answers them
    _get(c, "/compliance/inventory", tokens["auditor"])  # the inventory is the data directory's in both modes
    assert c.get(f"{API}/views/flows").status_code == 401  # authentication comes first


def test_roles_triage_and_audit_in_cluster_mode(apps):
    """An analyst is refused a responder's action; triage and workflow are recorded (triage and the
    audit log in the data directory, the incident's workflow on the search node)."""
    e, c, tokens, data_dir, cfg = apps
    from taishi.cluster.search import SearchStore

    alert = _get(c, "/alerts", tokens["analyst"], since=SINCE, limit=1)["items"][0]
    path = f"{API}/alerts/{alert['id']}/triage"
    r = c.post(path, json={"status": "acknowledged"}, headers={"Authorization": f"Bearer {tokens['analyst']}"})
    assert r.status_code == 403
    r = c.post(path, json={"status": "acknowledged", "note": "looking", "assignee": "api-responder"},
               headers={"Authorization": f"Bearer {tokens['responder']}"})
    assert r.status_code == 200 and r.json()["state"]["status"] == "acknowledged"
    assert alert["id"] in (Path(data_dir) / "triage.jsonl").read_text()
    for client in (e, c):  # one triage log, both modes read it
        a = _get(client, f"/alerts/{alert['id']}", tokens["analyst"])["alert"]
        assert a["taishi.triage.status"] == "acknowledged" and a["taishi.triage.assignee"] == "api-responder"
    audit = _get(c, "/audit", tokens["auditor"], limit=50)["items"]
    assert any(x["path"] == path and x["status"] == 403 and x["user"] == "api-analyst" for x in audit)
    assert any(x["path"] == path and x["status"] == 200 and x["user"] == "api-responder" for x in audit)

    inc = _get(c, "/incidents", tokens["analyst"], limit=1)["items"][0]
    wpath = f"{API}/incidents/{inc['id']}/workflow"
    r = c.post(wpath, json={"status": "acknowledged"}, headers={"Authorization": f"Bearer {tokens['analyst']}"})
    assert r.status_code == 403
    r = c.post(wpath, json={"status": "acknowledged", "note": "on it"},
               headers={"Authorization": f"Bearer {tokens['responder']}"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "acknowledged"
    with SearchStore.from_config(cfg) as node:  # the node's incident holds the change; the embedded one does not
        assert node.incident(inc["id"])["status"] == "acknowledged"
    assert _get(e, f"/incidents/{inc['id']}", tokens["analyst"])["status"] == inc["status"]
    r = c.post(f"{API}/users", json={"name": "x1", "role": "analyst"},
               headers={"Authorization": f"Bearer {tokens['responder']}"})
    assert r.status_code == 403
