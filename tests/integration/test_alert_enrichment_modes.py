"""The alert enrichment (CII assets, source geo, risk score) is the same in both modes.

The demo campaign (attacker at a public address) runs with the demo network's CII inventory
through the embedded pipeline and through cluster mode on real services (Kafka, Spark, the
search node); the alerts have the same ids and, id by id, the same enrichment columns. The
search node maps ``source.geo.location`` as a ``geo_point``, so the overview's map can
aggregate it.
"""

from __future__ import annotations

import pytest

from test_alert_enrichment import DB01, PUBLIC_ATTACKER, campaign_inputs, embedded_run, with_demo_inventory  # noqa: E402

pytestmark = pytest.mark.integration

COLUMNS = ("taishi.source.asset.id", "taishi.source.asset.system", "taishi.source.asset.sector",
           "taishi.source.asset.level", "taishi.destination.asset.id", "taishi.destination.asset.system",
           "taishi.destination.asset.sector", "taishi.destination.asset.level", "source.geo.country_iso_code",
           "source.geo.country_name", "source.geo.location", "event.risk_score")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return campaign_inputs(tmp_path_factory.mktemp("campaign"))


@pytest.fixture(scope="module")
def embedded_run_(inputs, tmp_path_factory):
    return embedded_run(inputs, with_demo_inventory(tmp_path_factory.mktemp("embedded")))


@pytest.fixture(scope="module")
def embedded(embedded_run_):
    return embedded_run_[0]


@pytest.fixture(scope="module")
def cluster(inputs, spark, kafka_bootstrap, search_node, tmp_path_factory):
    from taishi.cluster import runner
    from taishi.cluster.search import SearchStore
    from cluster_support import cluster_config

    cfg = cluster_config(with_demo_inventory(tmp_path_factory.mktemp("cluster")), kafka_bootstrap, search_node)
    runner.ingest(cfg, inputs, spark=spark)
    store = SearchStore.from_config(cfg)
    store.refresh_indices()
    try:
        yield store, {a["id"]: a for a in store.search_alerts("", limit=10_000).to_pylist()}
    finally:
        store._req("DELETE", f"/_data_stream/{store.index_name('events')}", ok=(404,))
        for name in ("events", "alerts", "incidents", "assets", "posture", "deadletters"):
            store._req("DELETE", f"/{store.index_name(name)}", ok=(404,))
            store._req("DELETE", f"/_index_template/{store.index_name(name)}", ok=(404,))
        store.close()


def test_enrichment_columns_agree_across_modes(embedded, cluster):
    _, c_alerts = cluster
    assert set(c_alerts) == set(embedded)
    assert any(a["destination.ip"] == DB01 and a["taishi.destination.asset.id"] == "db01" for a in c_alerts.values())
    assert any(a["source.ip"] == PUBLIC_ATTACKER and a["source.geo.location"] for a in c_alerts.values())
    diff = {aid: {c: (embedded[aid][c], a[c]) for c in COLUMNS if embedded[aid][c] != a[c]}
            for aid, a in c_alerts.items()}
    assert {k: v for k, v in diff.items() if v} == {}


def test_incidents_see_the_same_assets_in_both_modes(embedded_run_, cluster):
    """The incidents job reads the asset columns the alerts carry on Kafka (no second enrichment)."""
    from test_cross_mode import BUILT

    e_inc = {i["id"]: i for i in embedded_run_[1]}
    store, _ = cluster
    c_inc = {i["id"]: i for i in store.search_incidents("", limit=1000)}
    assert set(c_inc) == set(e_inc)
    assets = {e["value"] for i in e_inc.values() for e in i["entities"] if e["type"] == "asset"}
    assert "db01" in assets
    for iid, inc in e_inc.items():
        for f in BUILT:
            assert c_inc[iid].get(f) == inc.get(f), (iid, f)


def test_the_node_aggregates_alert_sources_on_the_map(cluster, embedded):
    store, _ = cluster
    resp = store._req("POST", f"/{store.index_name('alerts')}/_search", {
        "size": 0, "aggs": {"g": {"geohash_grid": {"field": "source.geo.location", "precision": 3}}}}, ok=(400,))
    assert resp is not None, "the node has no geohash_grid: OpenSearch needs its geo module (taishi services up adds it)"
    placed = sum(1 for a in embedded.values() if a["source.geo.location"])
    assert placed and sum(b["doc_count"] for b in resp["aggregations"]["g"]["buckets"]) == placed
    # the risk score is a number the node can sort and filter on
    top = store.search_alerts("event.risk_score:>=70", limit=10_000).to_pylist()
    assert {a["id"] for a in top} == {i for i, a in embedded.items() if a["event.risk_score"] >= 70}


def test_an_older_alerts_index_gets_the_new_fields_mapped(search_node):
    """An alerts index made before alerts carried assets and geo: setup maps the added fields."""
    import uuid

    from taishi.cluster.search import ANALYSIS, SearchStore, mappings_for

    prefix = f"enrich-{uuid.uuid4().hex[:8]}"
    store = SearchStore(search_node["url"], search_node["flavor"], index_prefix=prefix)
    idx = store.index_name("alerts")
    old = mappings_for("alerts")
    old["properties"] = {k: v for k, v in old["properties"].items() if k not in ("source", "taishi", "event")}
    try:
        store._req("PUT", f"/{idx}", {"settings": {"analysis": ANALYSIS}, "mappings": old})
        (m,) = store._req("GET", f"/{idx}/_mapping").values()
        assert "source" not in m["mappings"]["properties"]
        store.setup()
        (m,) = store._req("GET", f"/{idx}/_mapping").values()
        props = m["mappings"]["properties"]
        assert props["source"]["properties"]["geo"]["properties"]["location"]["type"] == "geo_point"
        assert props["taishi"]["properties"]["destination"]["properties"]["asset"]["properties"]["id"]["type"] == "keyword"
        assert props["event"]["properties"]["risk_score"]["type"] == "double"
    finally:
        store._req("DELETE", f"/_data_stream/{store.index_name('events')}", ok=(404,))
        for name in ("events", "alerts", "incidents", "assets", "posture", "deadletters"):
            store._req("DELETE", f"/{store.index_name(name)}", ok=(404,))
            store._req("DELETE", f"/_index_template/{store.index_name(name)}", ok=(404,))
        store.close()
