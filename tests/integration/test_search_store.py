"""The search store (taishi.cluster.search) on the real search node.

The parity tests run the demo campaign through the embedded pipeline, copy
what the embedded store holds (events, alerts, dead letters) into the search
store, and run the same queries through both: the same ids must come back.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from taishi.schema import alerts_table, events_table

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)


def _drop(store) -> None:
    p = store.prefix
    store._req("DELETE", f"/_data_stream/{p}-events", ok=(404,))
    for kind in ("alerts", "deadletters", "incidents", "assets", "posture"):
        store._req("DELETE", f"/{p}-{kind}", ok=(404,))
    for kind in ("events", "alerts", "deadletters", "incidents", "assets", "posture"):
        store._req("DELETE", f"/_index_template/{p}-{kind}", ok=(404,))
    if store._retention_kind == "ilm":
        store._req("DELETE", f"/_ilm/policy/{p}-events", ok=(404,))
    elif store._retention_kind == "ism":
        store._req("DELETE", f"/_plugins/_ism/policies/{p}-events", ok=(404,))


@pytest.fixture
def store(search_node, require_module):
    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")
    from taishi.cluster.search import SearchStore

    s = SearchStore(search_node["url"], search_node["flavor"], index_prefix=f"t{uuid.uuid4().hex[:10]}")
    s.setup()
    try:
        yield s
    finally:
        _drop(s)
        s.close()


def _events(n: int = 40) -> pa.Table:
    rows = []
    for i in range(n):
        rows.append({
            "event.id": f"ev-{i:03d}",
            "@timestamp": START + timedelta(minutes=i),
            "event.dataset": ["zeek.conn", "zeek.dns", "suricata.eve"][i % 3],
            "source.ip": ["10.1.2.3", "10.200.0.9", "192.168.7.7", "2001:db8::5", "172.16.0.1"][i % 5],
            "destination.ip": ["8.8.8.8", "10.1.9.9"][i % 2],
            "destination.port": [22, 53, 443, 3389][i % 4],
            "related.ip": ["10.1.2.3", f"203.0.113.{i}"],
            "message": f"connection {i} from sensor-{i % 2}",
            "event.original": '{"raw": %d}' % i,
            "taishi.source": f"conn-{i % 2}.log",
            "taishi.source.asset.id": "asset-1" if i % 2 else None,
        })
    return events_table(rows)


# ------------------------------------------------------------------------------ mappings, retention

def test_mappings_follow_the_schema(store):
    m = store._req("GET", f"/{store.index_name('alerts')}/_mapping")
    props = next(iter(m.values()))["mappings"]["properties"]
    assert props["source"]["properties"]["ip"]["type"] == "ip"
    assert props["source"]["properties"]["port"]["type"] == "long"
    assert props["@timestamp"]["type"] == "date"
    assert props["rule"]["properties"]["id"]["type"] == "keyword"
    assert props["message"]["type"] == "text"
    tpl = store._req("GET", f"/_index_template/{store.index_name('events')}")["index_templates"][0]["index_template"]
    ev = tpl["template"]["mappings"]["properties"]
    assert ev["event"]["properties"]["original"]["type"] == "match_only_text"
    assert ev["dns"]["properties"]["resolved_ip"]["type"] == "ip"
    assert ev["taishi"]["properties"]["input"]["type"] == "keyword"  # taishi.source, renamed
    assert ev["taishi"]["properties"]["source"]["properties"]["asset"]["properties"]["level"]["type"] == "long"
    assert "data_stream" in tpl


def test_ip_fields_answer_cidr_queries(store):
    tbl = _events()
    assert store.write_events(tbl) == tbl.num_rows
    src = tbl.column("source.ip").to_pylist()
    for cidr in ("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "192.168.0.0/16"):
        net = ipaddress.ip_network(cidr)
        want = sum(ipaddress.ip_address(ip) in net for ip in src)
        assert want > 0
        assert store.count("events", f'source.ip:"{cidr}"') == want
        if ":" not in cidr:  # unquoted IPv6 is a syntax error in both stores
            assert store.count("events", f"source.ip:{cidr}") == want
    # list field: any element
    assert store.count("events", "related.ip:203.0.113.0/28") == 16


def test_events_retention_is_at_least_180_days(store):
    pol = store.retention_policy()
    assert pol["kind"] in ("ilm", "ism", "taishi")
    assert pol["min_days"] >= 180
    assert (pol["kind"] == "ilm") == (store.flavor == "elasticsearch")


def test_taishi_retention_rolls_over_and_deletes_only_after_180_days(store):
    if store.retention_policy()["kind"] != "taishi":
        pytest.skip("the node enforces retention itself (ILM/ISM)")
    store.write_events(_events(10))
    now = datetime.now(timezone.utc)
    assert store.apply_retention(now=now + timedelta(days=1))["events"] == 0
    assert len(store._backing()) == 1
    store.apply_retention(now=now + timedelta(days=31))  # a month later: rolled over, nothing deleted
    assert len(store._backing()) == 2
    assert store.count("events") == 10
    # the rollover happened now (the node's clock): the old backing index goes 180 days after it
    assert store.apply_retention(now=now + timedelta(days=179))["events"] == 0
    assert store.count("events") == 10
    assert store.apply_retention(now=now + timedelta(days=181))["events"] == 10
    assert store.count("events") == 0
    assert len(store._backing()) >= 1  # the write index stays


# ------------------------------------------------------------------------------ idempotence

def test_bulk_writes_are_idempotent(store):
    tbl = _events()
    assert store.write_events(tbl) == 40
    assert store.write_events(tbl) == 0
    assert store.write_events(pa.concat_tables([tbl.slice(0, 5), _events(45).slice(40)])) == 5
    assert store.count("events") == 45
    alerts = alerts_table([{"id": f"al-{i}", "@timestamp": START, "rule.id": "r1", "rule.name": "R one",
                            "rule.level": "high", "source.ip": "10.0.0.1"} for i in range(7)])
    assert store.write_alerts(alerts) == 7
    assert store.write_alerts(alerts) == 0
    assert store.count("alerts") == 7
    assert store.alert("al-3")["rule.name"] == "R one"
    assert store.alert("nope") is None


# ------------------------------------------------------------------------------ parity with the embedded store

@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The demo campaign through the embedded pipeline: its store."""
    from taishi import config as config_mod
    from taishi.demo import generate_campaign
    from taishi.pipeline import Pipeline, expand_paths
    from taishi.store import Store

    root = tmp_path_factory.mktemp("parity")
    manifest = generate_campaign(root / "logs", seed=7, start=START)
    cfg = config_mod.load(None, data_dir=root / "data")
    pipe = Pipeline(cfg, bounded=True)
    try:
        pipe.run_files(expand_paths(list(manifest.files)), "auto", from_start=True)
    finally:
        pipe.close()
    st = Store(root / "data")
    yield st
    st.close()


@pytest.fixture
def both(embedded, store):
    for kind in ("events", "alerts", "deadletters"):
        tbl = getattr(embedded, f"search_{kind}")(limit=None)
        assert getattr(store, f"write_{kind}")(tbl) == tbl.num_rows
    return embedded, store


EVENT_QUERIES = [
    "",
    "*",
    "event.dataset:zeek.conn",
    "event.dataset:zeek.*",
    "source.ip:10.0.0.0/8",
    'destination.ip:"192.168.0.0/16"',
    "NOT source.ip:10.0.0.0/8",
    "destination.port:22",
    "destination.port:[1 TO 1024]",
    "destination.port:>=1024 AND event.dataset:zeek.conn",
    "destination.port:{22 TO 443]",
    "_exists_:dns.question.name",
    "dns.question.name:*",
    "user.name:* AND NOT event.outcome:success",
    "event.outcome:(failure OR unknown)",
    "+event.category:network -destination.port:53",
    "network.transport:tcp source.port:[* TO 1024]",
    "@timestamp:[2026-03-14T02:00:00Z TO 2026-03-14T03:00:00Z}",
    "timestamp:>=2026-03-14T04:00:00Z",
    "@timestamp:2026-03-14",
    "related.ip:10.0.0.0/8 AND event.module:zeek",
    "dns.question.name:/.*\\.(ru|cn|top)/",
    "http.response.status_code:>=400",
    "tags:*",
    # text fields and bare terms: "contains", case-insensitive, in both stores
    "sshd",
    "Failed",
    "uid",
    "fa?led",
    "brute OR scan",
    "10.10.1",
    "message:fail",
    "message:fail*",
    'message:"Failed password"',
    "message:sshd AND NOT message:accepted",
    "event.original:*pam_unix*",
]
ALERT_QUERIES = [
    "",
    "rule.level:high",
    "rule.level:(high OR critical)",
    "event.severity:>=4",
    "threat.tactic.name:*",
    "source.ip:10.0.0.0/8",
    "NOT rule.type:sigma",
    "rule.name:*Brute*",
    "_exists_:user.name",
    "Brute",
    "password",
    "rule.description:ssh",
    "tls",
]


def _ids(tbl: pa.Table, key: str) -> list[str]:
    return sorted(tbl.column(key).to_pylist())


@pytest.mark.slow
def test_same_ids_for_the_same_queries(both):
    emb, srch = both
    checked = 0
    for table, queries, key in (("events", EVENT_QUERIES, "event.id"), ("alerts", ALERT_QUERIES, "id")):
        for q in queries:
            want = _ids(getattr(emb, f"search_{table}")(q, limit=None), key)
            got = _ids(getattr(srch, f"search_{table}")(q, limit=None), key)
            assert got == want, f"{table}: {q!r}: embedded {len(want)}, search node {len(got)}"
            assert srch.count(table, q) == len(want)
            checked += bool(want)
    assert checked >= 20, "most queries should match something on the demo data"


def test_same_rows_and_order(both):
    emb, srch = both
    a = emb.search_alerts("", limit=25)
    b = srch.search_alerts("", limit=25)
    assert b.schema == a.schema
    assert b.to_pylist() == a.to_pylist()
    e = emb.search_events("event.dataset:zeek.conn", limit=10, order="asc", offset=3)
    f = srch.search_events("event.dataset:zeek.conn", limit=10, order="asc", offset=3)
    assert f.to_pylist() == e.to_pylist()


def test_same_aggregations(both):
    emb, srch = both
    for table, field in (("events", "event.dataset"), ("events", "destination.port"), ("events", "source.ip"),
                         ("alerts", "rule.name"), ("alerts", "threat.tactic.name")):
        assert srch.aggregate(table, field, size=8) == emb.aggregate(table, field, size=8), (table, field)
    for table in ("events", "alerts"):
        assert srch.histogram(table, interval_s=600) == emb.histogram(table, interval_s=600)
        since, until = START, START + timedelta(hours=6)
        assert (srch.histogram(table, since=since, until=until, interval_s=1800)
                == emb.histogram(table, since=since, until=until, interval_s=1800))


def test_same_query_errors(both):
    from taishi.query import QueryError

    emb, srch = both
    for q in ("sorce.ip:10.0.0.1", "source.ip:not-an-ip", "destination.port:abc"):
        with pytest.raises(QueryError) as e1:
            emb.search_events(q)
        with pytest.raises(QueryError) as e2:
            srch.search_events(q)
        assert str(e1.value) == str(e2.value)


def test_events_by_ids_and_stats(both):
    emb, srch = both
    ids = emb.search_events("event.dataset:zeek.conn", limit=5).column("event.id").to_pylist()
    assert srch.events_by_ids(ids + ["missing"]).to_pylist() == emb.events_by_ids(ids + ["missing"]).to_pylist()
    assert srch.stats() == emb.stats()


# ------------------------------------------------------------------------------ the CLI in cluster mode

def test_cli_alerts_and_search_in_cluster_mode(store, tmp_path):
    import json

    from click.testing import CliRunner

    from taishi.cli import main

    store.write_events(_events())
    store.write_alerts(alerts_table([
        {"id": f"al-{i}", "@timestamp": START + timedelta(minutes=i), "rule.id": "r1", "rule.name": f"Rule {i % 2}",
         "rule.level": ["high", "low"][i % 2], "source.ip": f"10.9.0.{i}"} for i in range(6)]))
    conf = tmp_path / "taishi.yaml"
    conf.write_text(json.dumps({"cluster": {"search": {"url": store.url, "flavor": store.flavor,
                                                       "index_prefix": store.prefix}}}))
    base = ["--config", str(conf), "--data-dir", str(tmp_path / "data"), "--mode", "cluster"]
    res = CliRunner().invoke(main, base + ["alerts", "rule.level:high AND source.ip:10.9.0.0/24", "--since", "all",
                                           "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(r["id"] for r in json.loads(res.output)) == ["al-0", "al-2", "al-4"]
    res = CliRunner().invoke(main, base + ["search", 'source.ip:"2001:db8::/32" AND destination.port:22', "--json",
                                           "--limit", "100"])
    assert res.exit_code == 0, res.output
    got = sorted(r["event.id"] for r in json.loads(res.output))
    want = sorted(r["event.id"] for r in _events().to_pylist()
                  if r["source.ip"] == "2001:db8::5" and r["destination.port"] == 22)
    assert got == want and want
    res = CliRunner().invoke(main, base + ["search", "sorce.ip:1.2.3.4"])
    assert res.exit_code == 2 and "unknown field" in res.output


# ------------------------------------------------------------------------------ assets, incidents, posture

def test_assets_index_answers_address_lookups(store):
    from compliance.inventory import Inventory

    inv = Inventory()
    assert inv.import_yaml(Path(__file__).resolve().parent.parent / "data" / "compliance" / "inventory.yaml",
                           who="test").ok
    assert store.write_assets(inv) == len(inv.assets)
    assert store.write_assets(inv) == len(inv.assets)  # re-indexing replaces, never duplicates
    idx = store.index_name("assets")
    total = store._req("POST", f"/{idx}/_count", {"query": {"match_all": {}}})["count"]
    assert total == len(inv.assets)
    for a in list(inv.assets.values())[:6]:
        for ip in a.ips:
            probe = str(next(iter(ipaddress.ip_network(ip, strict=False).hosts()), ipaddress.ip_network(ip).network_address))
            want = sorted(b.asset_id for b in inv.assets.values()
                          if any(ipaddress.ip_address(probe) in ipaddress.ip_network(x, strict=False) for x in b.ips))
            hits = store._req("POST", f"/{idx}/_search", {"query": {"term": {"ips": probe}}, "size": 100})
            assert sorted(h["_id"] for h in hits["hits"]["hits"]) == want, probe
    sysd = inv.systems[next(iter(inv.assets.values())).system_id]
    hits = store._req("POST", f"/{idx}/_search", {"query": {"term": {"system.sector": sysd.sector}}, "size": 100})
    assert {h["_source"]["system"]["cii_id"] for h in hits["hits"]["hits"]} >= {sysd.cii_id}


def test_incidents_round_trip_and_search(store):
    base = {"status": "new", "assignee": None, "severity": "high", "threat.technique.id": ["T1110"],
            "graph": {"nodes": [], "edges": []}, "history": [], "notes": [], "alert.count": 2}
    incs = [{**base, "id": f"inc-{i}", "title": f"Brute force on host {i}", "risk_score": 40 + i,
             "first_seen": _iso(START + timedelta(hours=i)), "last_seen": _iso(START + timedelta(hours=i, minutes=5)),
             "threat.tactic.name": ["credential-access"] + (["lateral-movement"] if i % 2 else []),
             "entities": [{"type": "ip", "value": f"10.0.0.{i}", "role": "source", "asset": None}],
             "alert.ids": [f"al-{i}a", f"al-{i}b"], "rule.names": ["SSH brute force"]} for i in range(5)]
    assert store.write_incidents(incs) == 5
    assert store.write_incidents(incs) == 5  # the latest version replaces the built fields
    store.refresh_indices()
    got = store.incident("inc-3")  # as written, plus its creation in the history (the store's workflow)
    assert {k: v for k, v in got.items() if k != "history"} == {k: v for k, v in incs[3].items() if k != "history"}
    assert [(h["who"], h["field"], h["old"], h["new"]) for h in got["history"]] == [("taishi", "status", None, "new")]
    assert store.incident("missing") is None
    got = store.search_incidents("threat.tactic.name:lateral-movement")
    assert [i["id"] for i in got] == ["inc-3", "inc-1"]  # most recently active first
    assert [i["id"] for i in store.search_incidents("entity.value:10.0.0.2")] == ["inc-2"]
    assert [i["id"] for i in store.search_incidents("risk_score:>=43", limit=1)] == ["inc-4"]
    assert store.search_incidents(status="resolved") == []


def test_posture_points_are_idempotent(store):
    pts = [{"@timestamp": START + timedelta(hours=h), "scope": s, "key": k, "index": 100.0 - h, "band": "calm"}
           for h in range(4) for s, k in (("overall", "overall"), ("sector", "能源"), ("sector", "金融"))]
    assert store.write_posture(pts) == 12
    store.write_posture(pts)
    store.refresh_indices()
    assert store._req("POST", f"/{store.index_name('posture')}/_count", {})["count"] == 12
    r = store._req("POST", f"/{store.index_name('posture')}/_search", {
        "size": 0, "query": {"term": {"scope": "overall"}},
        "aggs": {"h": {"date_histogram": {"field": "@timestamp", "fixed_interval": "1h"},
                       "aggs": {"v": {"min": {"field": "index"}}}}}})
    assert r["hits"]["total"]["value"] == 4
    assert [b["v"]["value"] for b in r["aggregations"]["h"]["buckets"]] == [100.0, 99.0, 98.0, 97.0]


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")
