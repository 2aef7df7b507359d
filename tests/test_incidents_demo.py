"""Incidents end to end on the demo campaign: generate -> pipeline -> one incident holding every
stage in kill-chain order whose traceback path is scanner -> jump host -> lateral -> exfil; a
restart mid-stream (and a replay of stored alerts) gives the same incidents; the CLI's JSON and
the API's agree; the API enforces the roles and the workflow."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from correlate.incidents import KILL_CHAIN, tactics_of
from correlate.traceback import attack_graph, path_nodes
from taishi import config as config_mod
from taishi.bus import TOPIC_ALERTS, Bus
from taishi.demo import EXFIL_DOMAIN, HOSTS, generate_campaign
from taishi.incidents import CHECKPOINT
from taishi.pipeline import GROUP_STORE, Pipeline
from taishi.store import Store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

START = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)


def _run(data_dir: Path, files: list[str]) -> None:
    pipe = Pipeline(config_mod.load(None, data_dir=data_dir), bounded=True)
    try:
        pipe.run_files([Path(f) for f in files])
    finally:
        pipe.close()


def _summary(data_dir: Path) -> dict[str, tuple]:
    store = Store(data_dir)
    try:
        return {i["id"]: (sorted(i["alert.ids"]), i["threat.tactic.name"], i["alert.count"])
                for i in store.search_incidents("", limit=None)}
    finally:
        store.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("incidents-demo")
    manifest = generate_campaign(root / "logs", seed=7, start=START)
    data_dir = root / "data"
    _run(data_dir, manifest.files)
    return data_dir, manifest


def _the_incident(store: Store) -> dict:
    incs = store.search_incidents("", limit=None)
    campaign = [i for i in incs if f"ip:{HOSTS['jump01']}" in {n["id"] for n in i["graph"]["nodes"]}]
    assert len(campaign) == 1, [i["title"] for i in incs]
    return campaign[0]


def test_one_incident_holds_every_stage_in_kill_chain_order(demo):
    data_dir, manifest = demo
    store = Store(data_dir)
    try:
        inc = _the_incident(store)
        alerts = store.search_alerts("", limit=None).to_pylist()
    finally:
        store.close()
    expected = {rid for st in manifest.stages for rid in st.expected_rule_ids}
    campaign_alerts = {a["id"] for a in alerts if a["rule.id"] in expected}
    assert campaign_alerts and campaign_alerts <= set(inc["alert.ids"])
    for st in manifest.stages:
        (tactic,) = tactics_of([f"attack.{st.tactic}"])
        assert tactic in inc["threat.tactic.name"], st.name
    tac = inc["threat.tactic.name"]
    assert tac == sorted(tac, key=KILL_CHAIN.index)
    assert inc["alert.count"] == len(inc["alert.ids"]) == len(campaign_alerts)
    assert inc["severity"] in ("high", "critical") and inc["status"] == "new"
    roles = {(e["type"], e["value"]): e["role"] for e in inc["entities"]}
    assert roles[("ip", manifest.attacker_ip)] == "source"
    assert roles[("ip", HOSTS["jump01"])] == roles[("ip", HOSTS["db01"])] == "both"  # footholds that moved on


def test_graph_shows_the_path_scanner_jump_host_lateral_exfil(demo):
    data_dir, manifest = demo
    store = Store(data_dir)
    try:
        inc = _the_incident(store)
        graph = attack_graph(inc, store)
    finally:
        store.close()
    exfil = EXFIL_DOMAIN.split(".", 1)[1]
    assert path_nodes(graph["path"]) == [f"ip:{manifest.attacker_ip}", f"ip:{HOSTS['jump01']}",
                                         f"ip:{HOSTS['db01']}", f"domain:{exfil}"]
    hop1, hop2, hop3 = graph["path"]
    assert {"Discovery", "Credential Access", "Initial Access"} <= set(hop1["tactics"])
    assert "Lateral Movement" in hop2["tactics"] and "Exfiltration" in hop3["tactics"]
    assert hop1["time"] < hop2["time"] < hop3["time"]
    smb = [e for e in hop2["evidence"] if e["kind"] == "connection"]
    assert smb and any(p.endswith("/445") for p in smb[0]["ports"])  # the SMB session to the DB server
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert "jump01" in nodes[f"ip:{HOSTS['jump01']}"]["label"]  # the auth.log host folded into its address
    assert not any(n["type"] == "host" and n["label"] == "jump01" for n in graph["nodes"])
    times = [e["time"] for e in graph["edges"]]
    assert times == sorted(times)


def test_restart_mid_stream_neither_loses_nor_doubles(demo, tmp_path):
    data_dir, manifest = demo
    files = list(manifest.files)
    d2 = tmp_path / "restarted"
    pipe = Pipeline(config_mod.load(None, data_dir=d2), bounded=True)
    for f in files[:3]:  # then "crash": no finish, the incident state is only in its checkpoint
        pipe.collect_file(Path(f))
        pipe.drain()
    pipe.close()
    assert (d2 / "state" / CHECKPOINT).exists() or any(d2.rglob(CHECKPOINT))
    bus = Bus(config_mod.load(None, data_dir=d2).bus_dir)
    bus.commit(GROUP_STORE, TOPIC_ALERTS, 0)  # the store stage re-reads every alert after the restart
    _run(d2, files[3:])
    assert _summary(d2) == _summary(data_dir)


def test_cli_json_and_image(demo, tmp_path):
    from taishi.cli import main

    data_dir, manifest = demo
    runner = CliRunner()
    r = runner.invoke(main, ["--data-dir", str(data_dir), "incidents", "list", "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)
    assert listed["count"] == len(listed["items"]) >= 1
    iid = next(i["id"] for i in listed["items"] if manifest.attacker_ip in {e["value"] for e in i["entities"]})
    png, svg = tmp_path / "g.png", tmp_path / "g.svg"
    r = runner.invoke(main, ["--data-dir", str(data_dir), "incidents", "show", iid[:10], "--json", "--out", str(png)])
    assert r.exit_code == 0, r.output
    inc = json.loads(r.stdout)
    for key in ("id", "threat.tactic.name", "entities", "alert.ids", "graph", "history", "notes", "status"):
        assert key in inc
    assert inc["id"] == iid and inc["graph"]["nodes"] and inc["graph"]["edges"] and inc["graph"]["path"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(main, ["--data-dir", str(data_dir), "incidents", "show", iid, "--graph", "--out", str(svg)])
    assert r.exit_code == 0 and "Attack path" in r.output and "→" in r.output
    assert svg.read_text().lstrip().startswith(("<?xml", "<svg"))
    r = runner.invoke(main, ["--data-dir", str(data_dir), "incidents", "list", "entity.value:(", "--json"])
    assert r.exit_code == 2


def test_api_matches_cli_and_enforces_roles_and_workflow(demo, tmp_path, monkeypatch):
    import shutil

    from taishi.api.app import create_app
    from taishi.cli import main

    src, manifest = demo
    data_dir = tmp_path / "api-data"
    shutil.copytree(src, data_dir)
    monkeypatch.delenv("TAISHI_ADMIN_TOKEN", raising=False)
    app = create_app(data_dir)
    tok = {role: app.state.users.add_user(f"{role}1", role) for role in ("analyst", "responder", "auditor")}
    H = {role: {"Authorization": f"Bearer {t}"} for role, t in tok.items()}
    with TestClient(app) as client:
        lst = client.get("/api/v1/incidents", params={"q": f"entity.value:{manifest.attacker_ip}"},
                         headers=H["auditor"]).json()
        assert lst["count"] == 1
        iid = lst["items"][0]["id"]
        one = client.get(f"/api/v1/incidents/{iid}", headers=H["analyst"]).json()
        cli = json.loads(CliRunner().invoke(main, ["--data-dir", str(data_dir), "incidents", "show", iid,
                                                   "--json"]).stdout)
        assert one == cli
        listed_cli = json.loads(CliRunner().invoke(main, ["--data-dir", str(data_dir), "incidents", "list",
                                                          f"entity.value:{manifest.attacker_ip}", "--json"]).stdout)
        assert lst == listed_cli
        by_alert = client.get("/api/v1/incidents", params={"q": f"alert.ids:{one['alert.ids'][0]}"},
                              headers=H["analyst"]).json()
        assert [i["id"] for i in by_alert["items"]] == [iid]  # drill-down: alert -> incident
        r = client.get(f"/api/v1/incidents/{iid}/graph", params={"format": "svg"}, headers=H["analyst"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg")

        wf = f"/api/v1/incidents/{iid}/workflow"
        assert client.post(wf, json={"status": "acknowledged"}, headers=H["analyst"]).status_code == 403
        assert client.post(wf, json={"status": "acknowledged"}, headers=H["auditor"]).status_code == 403
        r = client.post(wf, json={"status": "resolved"}, headers=H["responder"])
        assert r.status_code == 409 and "acknowledged" in r.json()["detail"]
        r = client.post(wf, json={"status": "acknowledged", "assignee": "responder1", "note": "taking it"},
                        headers=H["responder"])
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["status"] == "acknowledged" and got["assignee"] == "responder1"
        assert got["notes"][-1]["who"] == "responder1" and got["notes"][-1]["text"] == "taking it"
        assert [(h["who"], h["field"], h["new"]) for h in got["history"][-3:]] == [
            ("responder1", "status", "acknowledged"), ("responder1", "assignee", "responder1"),
            ("responder1", "note", "taking it")]
        assert client.post(wf, json={"assignee": "nobody"}, headers=H["responder"]).status_code == 422
        assert client.get("/api/v1/incidents/nope", headers=H["analyst"]).status_code == 404
        assert client.get("/api/v1/incidents", params={"status": "acknowledged"},
                          headers=H["analyst"]).json()["count"] == 1
