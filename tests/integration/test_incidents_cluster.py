"""``taishi incidents list|show|set|rebuild --mode cluster`` on the real search node.

The demo campaign runs through the embedded pipeline; its events and alerts are
copied into a search store of their own (a unique index prefix), and
``taishi --mode cluster incidents rebuild`` groups the alerts index with the same
builder. Then both modes must give the same incidents, the same traceback reads
(``connections_between``, ``host_addresses``) and the same ``show --json``
(incident, graph, path); the workflow (``set``) works in cluster mode with the
embedded rules and survives the incidents job re-writing the incident.

The last test runs the campaign through the whole cluster (Kafka, Spark, the
search node): ``show --json`` of every incident equals the embedded one, and a
workflow set in cluster mode survives the Spark incidents job replaying every
alert from Kafka and re-writing every incident.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from taishi.cli import main

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)


def _without_times(inc: dict) -> dict:
    """An incident with its history's wall-clock times left out (each store stamps its own)."""
    out = dict(inc)
    out["history"] = [{k: v for k, v in h.items() if k != "at"} for h in inc.get("history") or []]
    out["notes"] = [{k: v for k, v in n.items() if k != "at"} for n in inc.get("notes") or []]
    return out


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The demo campaign (with the demo network as CII inventory) through the embedded pipeline:
    its data directory and the campaign's files."""
    import yaml

    from compliance.inventory import Inventory
    from taishi import config as config_mod
    from taishi.demo import demo_inventory, generate_campaign
    from taishi.pipeline import Pipeline

    root = tmp_path_factory.mktemp("incidents-cluster")
    manifest = generate_campaign(root / "logs", seed=7, start=START)
    data_dir = root / "data"
    with Inventory.editing(data_dir) as inv:
        inv.import_yaml(yaml.safe_dump(demo_inventory(), allow_unicode=True), who="test")
    pipe = Pipeline(config_mod.load(None, data_dir=data_dir), bounded=True)
    try:
        pipe.run_files([Path(f) for f in manifest.files])
    finally:
        pipe.close()
    return data_dir, [Path(f) for f in manifest.files]


@pytest.fixture(scope="module")
def demo(campaign) -> Path:
    return campaign[0]


@pytest.fixture(scope="module")
def node(demo, search_node, require_module, tmp_path_factory):
    """A search store holding the demo's events and alerts, its incidents rebuilt in cluster mode."""
    import uuid

    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")
    from taishi.cluster.search import SearchStore
    from taishi.store import Store

    store = SearchStore(search_node["url"], search_node["flavor"], index_prefix=f"t{uuid.uuid4().hex[:10]}")
    conf = tmp_path_factory.mktemp("conf") / "taishi.yaml"
    conf.write_text(json.dumps({"cluster": {"search": {"url": store.url, "flavor": store.flavor,
                                                       "index_prefix": store.prefix}}}))
    try:
        emb = Store(demo)
        try:
            for kind in ("events", "alerts"):
                tbl = getattr(emb, f"search_{kind}")(limit=None)
                assert getattr(store, f"write_{kind}")(tbl) == tbl.num_rows
        finally:
            emb.close()
        res = _cli(conf, demo, "cluster", "incidents", "rebuild", "--json")
        yield store, conf, json.loads(res)
    finally:
        store.drop_all()
        store.close()


def _cli(conf: Path, data_dir: Path, mode: str, *args: str, code: int = 0) -> str:
    res = CliRunner().invoke(main, ["--config", str(conf), "--data-dir", str(data_dir), "--mode", mode, *args])
    assert res.exit_code == code, (args, res.output, res.exception)
    return res.output


def _both(node, demo, *args: str) -> tuple:
    _store, conf, _ = node
    return tuple(json.loads(_cli(conf, demo, mode, *args)) for mode in ("embedded", "cluster"))


def test_rebuild_from_the_alerts_index_gives_the_embedded_incidents(demo, node):
    from taishi.store import Store

    store, _, res = node
    emb = Store(demo)
    try:
        want = emb.search_incidents("", limit=None, include_merged=True)
        n_alerts = emb.count("alerts")
    finally:
        emb.close()
    assert res["alerts"] == n_alerts > 20
    live = [i for i in want if "merged_into" not in i]
    assert res["incidents"] == len(live) and res["new"] == len(live) and res["dropped"] == 0
    got = store.search_incidents("", limit=None, include_merged=True)
    assert [_without_times(i) for i in got] == [_without_times(i) for i in want]
    assert all(i["status"] == "new" and [h["who"] for h in i["history"]] == ["taishi"] for i in got)


def test_list_json_is_the_same_in_both_modes(demo, node):
    for args in (["incidents", "list", "--json", "--limit", "1000"],
                 ["incidents", "list", "--json", "--since", "all", "--status", "new"],
                 ["incidents", "list", "jump01", "--json"],  # a bare term: contains, case-insensitive
                 ["incidents", "list", "severity:(critical OR high) AND risk_score:>=50", "--json"],
                 ["incidents", "list", "threat.tactic.name:\"Lateral Movement\"", "--json"],
                 ["incidents", "list", "title:Exfiltration", "--json"],  # a field value is the whole title
                 ["incidents", "list", "title:Exfiltration*", "--json"],
                 ["incidents", "list", "EXFILTRATION AND NOT status:resolved", "--json"]):
        emb, clu = _both(node, demo, *args)
        assert clu["count"] == emb["count"], args
        assert [_without_times(i) for i in clu["items"]] == [_without_times(i) for i in emb["items"]], args
    emb, _ = _both(node, demo, "incidents", "list", "--json")
    assert emb["count"] >= 1
    title = emb["items"][0]["title"]
    emb, clu = _both(node, demo, "incidents", "list", f'title:"{title}"', "--json")
    assert [i["id"] for i in clu["items"]] == [i["id"] for i in emb["items"]] != []
    assert _both(node, demo, "incidents", "list", "title:Exfiltration", "--json")[1]["count"] == 0
    _, conf, _ = node
    out = _cli(conf, demo, "cluster", "incidents", "list", "sverity:high", code=2)
    assert "unknown field" in out  # the same query errors as embedded


def test_traceback_reads_are_the_same_in_both_modes(demo, node):
    """connections_between and host_addresses (the node's terms/range/composite aggregations) give the
    embedded store's rows for every incident's addresses and hosts."""
    from correlate.traceback import MARGIN, _time
    from taishi.store import Store

    store, _, _ = node
    emb = Store(demo)
    conns = hosts = 0
    try:
        for inc in emb.search_incidents("", limit=None):
            ips = [n["id"][3:] for n in inc["graph"]["nodes"] if n["id"].startswith("ip:")]
            names = [n["label"] for n in inc["graph"]["nodes"] if n["type"] == "host"]
            a, b = _time(inc["first_seen"]) - MARGIN, _time(inc["last_seen"]) + MARGIN
            want = emb.connections_between(ips, a, b)
            assert store.connections_between(ips, a, b) == want, inc["id"]
            assert store.connections_between(ips, a, b, limit=2) == want[:2]
            conns += len(want)
            want_h = emb.host_addresses(names, a, b)
            assert store.host_addresses(names, a, b) == want_h, inc["id"]
            hosts += len(want_h)
            all_ips = sorted({i for r in want for i in (r["source.ip"], r["destination.ip"])} | set(ips))
            assert store.connections_between(all_ips, a - timedelta(days=1), b + timedelta(days=1)) == \
                emb.connections_between(all_ips, a - timedelta(days=1), b + timedelta(days=1))
    finally:
        emb.close()
    assert conns > 0  # the campaign's flows between its hosts became connection edges
    assert hosts > 0  # the jump host's sshd lines paired with the sensor's flows


def test_show_json_is_the_same_in_both_modes(demo, node):
    from correlate.traceback import incident_view
    from taishi.store import Store

    store, _, _ = node
    emb, _ = _both(node, demo, "incidents", "list", "--json", "--limit", "1000")
    paths = 0
    for item in emb["items"]:
        e, c = _both(node, demo, "incidents", "show", item["id"], "--json")
        assert _without_times(c) == _without_times(e), item["id"]
        paths += bool(e["graph"]["path"])
        e, c = _both(node, demo, "incidents", "show", item["id"][:10], "--json")  # a unique id prefix
        assert c["id"] == e["id"] == item["id"]
    assert paths >= 1  # the campaign's attack path is drawn in both modes
    # without an inventory the host names are resolved from the events (host_addresses) in both modes
    st = Store(demo)
    try:
        for item in emb["items"]:
            assert _without_times(incident_view(store, item["id"])) == _without_times(incident_view(st, item["id"]))
    finally:
        st.close()
    _, conf, _ = node
    assert "no such incident" in _cli(conf, demo, "cluster", "incidents", "show", "ffffffffffff", code=1)


def test_workflow_in_cluster_mode_and_it_survives_the_incidents_job(demo, node):
    """set: the embedded transitions and history; a re-write by the incidents job (write_incidents with
    the builder's output, as the Spark job's sink calls it) keeps status, assignee, history and notes,
    and new alerts reopen a resolved incident."""
    from correlate.incidents import IncidentBuilder
    from taishi.store import Store

    store, conf, _ = node
    iid = json.loads(_cli(conf, demo, "cluster", "incidents", "list", "--json", "--limit", "1"))["items"][0]["id"]
    out = json.loads(_cli(conf, demo, "cluster", "incidents", "set", iid[:10], "--status", "acknowledged",
                          "--assignee", "alice", "--note", "isolating jump01", "--who", "bob", "--json"))
    assert (out["status"], out["assignee"]) == ("acknowledged", "alice")
    assert [(h["who"], h["field"], h["old"], h["new"]) for h in out["history"]] == [
        ("taishi", "status", None, "new"), ("bob", "status", "new", "acknowledged"),
        ("bob", "assignee", None, "alice"), ("bob", "note", None, "isolating jump01")]
    assert [n["text"] for n in out["notes"]] == ["isolating jump01"]
    refused = _cli(conf, demo, "cluster", "incidents", "set", iid, "--status", "resolved", code=2)
    assert "cannot go from acknowledged to resolved" in refused  # the same rule as embedded
    assert store.incident(iid)["status"] == "acknowledged"  # ... and nothing changed
    assert (store.update_incident(iid, "bob", assignee="alice", set_assignee=True)["history"]
            == store.incident(iid)["history"])  # re-assigning the assignee records nothing

    # the incidents job re-writes every incident (a replay): the workflow stays
    emb = Store(demo)
    try:
        alerts = emb.search_alerts("", limit=None, order="asc")
    finally:
        emb.close()
    b = IncidentBuilder(allowed_lateness_s=float("inf"))
    built = b.process(alerts) + b.flush()
    ours = next(i for i in built if i["id"] == iid)
    before = store.incident(iid)
    assert store.write_incidents(built) == len({i["id"] for i in built if "merged_into" not in i})
    after = store.incident(iid)
    assert after == before  # same built fields, same workflow, same history

    # resolved, then a new alert joins: reopened by taishi (the embedded rule); workflow otherwise kept
    for st in ("in_progress", "resolved"):
        store.update_incident(iid, "bob", status=st)
    grown = dict(ours, **{"alert.count": ours["alert.count"] + 1, "alert.ids": ours["alert.ids"] + ["extra"]})
    assert store.write_incidents([grown]) == 1 and store.upsert_incidents([grown]) == 0
    inc = store.incident(iid)
    assert (inc["status"], inc["assignee"], inc["alert.count"]) == ("acknowledged", "alice", ours["alert.count"] + 1)
    assert [(h["who"], h["field"], h["old"], h["new"]) for h in inc["history"]][-3:] == [
        ("bob", "status", "acknowledged", "in_progress"), ("bob", "status", "in_progress", "resolved"),
        ("taishi", "status", "resolved", "acknowledged")]
    assert [n["text"] for n in inc["notes"]] == ["isolating jump01"]
    listed = store.search_incidents("", status=["acknowledged"], limit=None)
    assert [i["id"] for i in listed] == [iid]


def test_rebuild_keeps_worked_incidents_and_drops_unworked_ones(demo, node):
    """An incident that no longer comes out of the alerts is dropped when nobody worked on it and
    kept when somebody did; a merge marker records the merge as embedded."""
    store, conf, _ = node
    t = "2026-03-14T02:00:00Z"
    ghost = {"id": "ghost-unworked", "title": "gone", "severity": "low", "risk_score": 1, "first_seen": t,
             "last_seen": t, "threat.tactic.name": [], "threat.technique.id": [], "entities": [],
             "alert.ids": [], "alert.count": 0, "rule.names": [], "graph": {"nodes": [], "edges": []}}
    worked = dict(ghost, id="ghost-worked")
    assert store.upsert_incidents([ghost, worked]) == 2
    store.update_incident("ghost-worked", "carol", note="keep me")
    assert store.upsert_incidents([{"id": "ghost-worked", "merged_into": "ghost-unworked"},
                                   {"id": "never-stored", "merged_into": "ghost-unworked"}]) == 0
    merged = store.incident("ghost-worked")
    assert merged["merged_into"] == "ghost-unworked" and merged["history"][-1]["field"] == "merged_into"
    assert store.incident("never-stored") is None
    assert "ghost-worked" not in {i["id"] for i in store.search_incidents("", limit=None)}
    assert "ghost-worked" in {i["id"] for i in store.search_incidents("id:ghost*", limit=None, include_merged=True)}
    res = json.loads(_cli(conf, demo, "cluster", "incidents", "rebuild", "--json"))
    assert res["dropped"] == 1 and res["new"] == 0
    assert store.incident("ghost-unworked") is None
    assert store.incident("ghost-worked")["notes"][0]["text"] == "keep me"


def test_spark_incidents_show_the_same_and_keep_the_workflow(campaign, spark, kafka_bootstrap, search_node,
                                                            tmp_path):
    import yaml

    from compliance.inventory import Inventory
    from taishi.cluster import runner
    from taishi.cluster.search import SearchStore
    from taishi.demo import demo_inventory
    from cluster_support import cluster_config, drop_namespace

    demo, files = campaign
    cfg = cluster_config(tmp_path / "cluster", kafka_bootstrap, search_node)
    with Inventory.editing(cfg.data_dir) as inv:  # the same CII inventory as the embedded data directory
        inv.import_yaml(yaml.safe_dump(demo_inventory(), allow_unicode=True), who="test")
    conf = tmp_path / "taishi.yaml"
    conf.write_text(json.dumps({"cluster": cfg.cluster}))
    store = SearchStore.from_config(cfg)
    try:
        runner.ingest(cfg, files, spark=spark)
        store.refresh_indices()
        emb = json.loads(_cli(conf, demo, "embedded", "incidents", "list", "--json", "--limit", "1000"))
        clu = json.loads(_cli(conf, cfg.data_dir, "cluster", "incidents", "list", "--json", "--limit", "1000"))
        assert emb["count"] >= 1
        assert [_without_times(i) for i in clu["items"]] == [_without_times(i) for i in emb["items"]]
        shown = {}
        for item in emb["items"]:
            e = json.loads(_cli(conf, demo, "embedded", "incidents", "show", item["id"], "--json"))
            c = json.loads(_cli(conf, cfg.data_dir, "cluster", "incidents", "show", item["id"], "--json"))
            assert _without_times(c) == _without_times(e), item["id"]
            shown[item["id"]] = c
        assert any(s["graph"]["path"] for s in shown.values())
        assert any(e["kind"] == "connection" for s in shown.values() for e in s["graph"]["edges"])

        iid = emb["items"][0]["id"]
        _cli(conf, cfg.data_dir, "cluster", "incidents", "set", iid, "--status", "acknowledged",
             "--assignee", "alice", "--note", "isolating jump01", "--who", "bob")
        before = store.incident(iid)
        run = runner.ClusterRun(cfg, spark)
        try:  # a fresh checkpoint: the incidents job reads every alert from Kafka again and re-writes all
            run.incidents(checkpoint=tmp_path / "replay-incidents")
        finally:
            run.close()
        assert getattr(run, "incidents_written", 0) >= len(shown)
        store.refresh_indices()
        after = json.loads(_cli(conf, cfg.data_dir, "cluster", "incidents", "show", iid, "--json"))
        assert (after["status"], after["assignee"]) == ("acknowledged", "alice")
        assert [n["text"] for n in after["notes"]] == ["isolating jump01"]
        assert store.incident(iid)["history"] == before["history"]  # nothing appended, nothing lost
        assert {k: v for k, v in after.items() if k not in ("status", "assignee", "history", "notes")} == \
            {k: v for k, v in shown[iid].items() if k not in ("status", "assignee", "history", "notes")}
    finally:
        store.close()
        drop_namespace(cfg)
