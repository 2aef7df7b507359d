"""The Grafana dashboards as files: valid JSON, unique panel ids, datasource uid variables,
queries that parse, provisioning files that match their generator; the request translation
and the push decisions as pure logic. The numbers are checked against a real search node in
tests/integration/test_dashboard_panels.py."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from click.testing import CliRunner

import dashboards as D
from taishi.cluster import grafana as G

ALL = D.load_all()


def test_five_dashboards_with_their_views():
    titles = {d["title"] for d in ALL.values()}
    for word in ("Situation overview", "Alert triage", "Network flows", "CII assets", "MLPS"):
        assert any(word in t for t in titles), word
    kinds = {p["type"] for d in ALL.values() for p in D.panels(d)}
    assert {"geomap", "timeseries", "table", "bargauge", "piechart"} <= kinds


@pytest.mark.parametrize("uid", sorted(ALL))
def test_dashboard_is_valid(uid):
    dash = ALL[uid]
    assert D.validate(dash) == []
    ids = [p["id"] for p in D.panels(dash)]
    assert len(ids) == len(set(ids))
    # every datasource reference goes through a constant uid variable
    for p in D.panels(dash):
        for ref in [p["datasource"]] + [t["datasource"] for t in p["targets"]]:
            assert ref["uid"].startswith("${ds_")
    # the files are plain JSON Grafana can load (no export-only __inputs)
    assert "__inputs" not in json.dumps(dash)


def test_validate_reports_what_is_wrong():
    dash = copy.deepcopy(ALL["taishi-overview"])
    ps = dash["panels"]
    ps[1]["id"] = ps[0]["id"]
    ps[2]["datasource"] = {"uid": "some-other-uid"}
    ps[3]["targets"][0]["query"] = "rule.level:(high OR"
    ps[4]["targets"][0]["bucketAggs"] = [{"id": "2", "type": "histogram", "field": "event.severity"}]
    ps[5]["targets"][0]["bucketAggs"] = []
    msgs = [str(i) for i in D.validate(dash)]
    assert any(f"panel {ps[5]['id']}: a metric query needs a bucket aggregation" in m for m in msgs)
    assert any(f"panel {ps[0]['id']}: id also used" in m for m in msgs)
    assert any("some-other-uid" in m for m in msgs)
    assert any("does not parse" in m for m in msgs)
    assert any("'histogram' not supported" in m for m in msgs)


def test_validate_checks_fields_against_the_documents():
    dash = copy.deepcopy(ALL["taishi-network-flows"])
    known = {"events": {"event.category", "event.type"}, "alerts": set()}
    msgs = [str(i) for i in D.validate(dash, known)]
    assert any("'network.bytes' is not a field of events" in m for m in msgs)
    assert any("'rule.type' is not a field of alerts" in m for m in msgs)


def test_provisioning_files_are_current():
    for rel, text in D.provisioning_files().items():
        assert (D.DIR / rel).read_text(encoding="utf-8") == text, f"{rel}: run taishi dashboards provisioning"


def test_provisioned_datasources_match_the_dashboards_variables():
    for rel in ("provisioning/datasources/taishi.yaml", "provisioning/elasticsearch/datasources/taishi.yaml"):
        doc = yaml.safe_load((D.DIR / rel).read_text())
        uids = {d["uid"] for d in doc["datasources"]}
        types = {d["type"] for d in doc["datasources"]}
        assert len(types) == 1
        for dash in ALL.values():
            for name, v in D.variables(dash).items():
                if name.startswith("ds_"):
                    assert v["query"] in uids
    prov = yaml.safe_load((D.DIR / "provisioning/dashboards/taishi.yaml").read_text())
    assert prov["providers"][0]["type"] == "file" and prov["providers"][0]["options"]["path"]


def test_datasources_per_flavor():
    es = {d["uid"]: d for d in D.datasources("http://n:9200", "elasticsearch", prefix="x")}
    os_ = {d["uid"]: d for d in D.datasources("http://n:9200", "opensearch", version="2.19.6")}
    assert es["taishi-alerts"]["type"] == "elasticsearch" and es["taishi-alerts"]["jsonData"]["index"] == "x-alerts"
    assert os_["taishi-alerts"]["type"] == "grafana-opensearch-datasource"
    assert os_["taishi-alerts"]["jsonData"]["flavor"] == "opensearch"
    assert os_["taishi-alerts"]["jsonData"]["version"] == "2.19.6"
    with pytest.raises(D.DashboardError):
        D.datasources("http://n:9200", "solr")


def test_interpolate_like_grafana():
    dash = ALL["taishi-alert-triage"]
    # defaults: severity All -> its custom all value, q raw
    assert D.interpolate("rule.level:$severity AND (${q:raw})", dash) == "rule.level:* AND (*)"
    got = D.interpolate("rule.level:$severity AND (${q:raw})", dash,
                        {"severity": ["high", "critical"], "q": "source.ip:10.0.0.0/8"})
    assert got == 'rule.level:("high" OR "critical") AND (source.ip:10.0.0.0/8)'
    assert D.interpolate("rule.level:$severity", dash, {"severity": ["high"]}) == "rule.level:high"
    # a single value in lucene format is escaped
    assert D.interpolate("x:$q", dash, {"q": "a b:c"}) == r"x:a\ b\:c"
    assert D.interpolate("$__interval and $unknown", dash) == "$__interval and $unknown"


def test_terms_and_histogram_request_shape():
    target = {"query": "rule.level:high", "timeField": "@timestamp",
              "metrics": [{"id": "1", "type": "sum", "field": "network.bytes"}],
              "bucketAggs": [{"id": "3", "type": "terms", "field": "source.ip",
                              "settings": {"size": "10", "order": "desc", "orderBy": "1", "min_doc_count": "1"}},
                             {"id": "2", "type": "date_histogram", "field": "@timestamp",
                              "settings": {"interval": "auto", "min_doc_count": "0"}}]}
    body = D.target_request({}, target, start=1000, end=2000, interval="5m")
    assert body["size"] == 0
    assert body["query"]["bool"]["filter"] == [
        {"range": {"@timestamp": {"gte": 1000, "lte": 2000, "format": "epoch_millis"}}},
        {"query_string": {"analyze_wildcard": True, "query": "rule.level:high"}}]
    terms = body["aggs"]["3"]
    assert terms["terms"] == {"field": "source.ip", "size": 10, "order": {"1": "desc"}, "min_doc_count": 1}
    hist = terms["aggs"]["2"]
    assert hist["date_histogram"]["fixed_interval"] == "5m"
    assert hist["date_histogram"]["extended_bounds"] == {"min": 1000, "max": 2000}
    assert hist["aggs"] == {"1": {"sum": {"field": "network.bytes"}}}
    # _term order is by key; size 0 means 500 as in Grafana
    t2 = {"metrics": [{"id": "1", "type": "count"}],
          "bucketAggs": [{"id": "2", "type": "terms", "field": "f", "settings": {"size": "0", "orderBy": "_term", "order": "asc"}}]}
    b2 = D.target_request({}, t2, start=0, end=1)
    assert b2["aggs"]["2"]["terms"]["order"] == {"_key": "asc"} and b2["aggs"]["2"]["terms"]["size"] == 500
    assert "aggs" not in b2["aggs"]["2"]  # count needs no metric aggregation


def test_raw_data_and_adhoc_request():
    target = {"query": "*", "metrics": [{"id": "1", "type": "raw_data", "settings": {"size": "50"}}], "bucketAggs": []}
    body = D.target_request({}, target, start=0, end=1, adhoc=[("rule.level", "=", "high"), ("host.name", "!=", "a")])
    assert body["size"] == 50 and body["sort"][0]["@timestamp"]["order"] == "desc"
    assert body["query"]["bool"]["filter"][1]["query_string"]["query"] == '* AND rule.level:"high" AND -host.name:"a"'


def test_panel_time_override():
    dash = ALL["taishi-cii-assets"]
    inv = next(p for p in D.panels(dash) if p.get("timeFrom"))
    now = 5_000_000_000_000
    # a relative dashboard range ("now-7d" to "now"): the override replaces it, ending now
    req = D.panel_requests(dash, inv, start=now - 7 * 86_400_000, end=now, now=now)[0]
    rng = req["body"]["query"]["bool"]["filter"][0]["range"]["@timestamp"]
    assert rng["gte"] < now - 50 * 365 * 86_400_000 and rng["lte"] == now
    assert req["index"] == "taishi-assets"
    # even when the picked relative range ended long ago ("now-30d" to "now-29d")
    req = D.panel_requests(dash, inv, start=now - 30 * 86_400_000, end=now - 29 * 86_400_000, now=now)[0]
    assert req["body"]["query"]["bool"]["filter"][0]["range"]["@timestamp"]["lte"] == now
    # an absolute range: Grafana applies no relative override (grafana panel.ts applyPanelTimeOverrides)
    req = D.panel_requests(dash, inv, start=now - 3_600_000, end=now - 1)[0]
    rng = req["body"]["query"]["bool"]["filter"][0]["range"]["@timestamp"]
    assert (rng["gte"], rng["lte"]) == (now - 3_600_000, now - 1)


def test_rows_flatten_nested_buckets():
    target = {"metrics": [{"id": "1", "type": "count"}, {"id": "4", "type": "max", "field": "event.severity"}],
              "bucketAggs": [{"id": "2", "type": "terms", "field": "a"}, {"id": "3", "type": "terms", "field": "b"}]}
    resp = {"hits": {"total": {"value": 3}, "hits": []}, "aggregations": {"2": {"buckets": [
        {"key": "x", "doc_count": 3, "3": {"buckets": [{"key": "p", "doc_count": 2, "4": {"value": 5.0}},
                                                      {"key": "q", "doc_count": 1, "4": {"value": 2.0}}]}}]}}}
    assert D.rows(target, resp) == [{"a": "x", "b": "p", "Count": 2, "Max event.severity": 5.0},
                                    {"a": "x", "b": "q", "Count": 1, "Max event.severity": 2.0}]
    total = {"metrics": [{"id": "1", "type": "cardinality", "field": "source.ip"}],
             "bucketAggs": [{"id": "2", "type": "filters", "settings": {"filters": [{"query": "$q", "label": "all"}]}}]}
    body = D.target_request(ALL["taishi-network-flows"], total, start=0, end=1, values={"q": "x"})
    assert body["aggs"]["2"]["filters"]["filters"] == {"all": {"query_string": {"query": "x", "analyze_wildcard": True}}}
    resp = {"hits": {"total": {"value": 9}}, "aggregations": {"2": {"buckets": {"all": {"doc_count": 9, "1": {"value": 4}}}}}}
    assert D.rows(total, resp) == [{"Filters": "all", "Unique Count source.ip": 4}]


# ------------------------------------------------------------------------------ push decisions

def test_plan_datasource():
    want = D.datasources("http://n:9200", "opensearch")[0]
    assert G.plan_datasource(None, want) == G.CREATED
    have = {**copy.deepcopy(want), "id": 7, "orgId": 1, "version": 3, "readOnly": False,
            "jsonData": {**want["jsonData"], "somethingGrafanaAdds": 1}}
    assert G.plan_datasource(have, want) == G.UNCHANGED
    have["jsonData"]["timeField"] = "event.created"
    assert G.plan_datasource(have, want) == G.UPDATED
    assert G.plan_datasource({**want, "url": "http://old:9200"}, want) == G.UPDATED


def test_plan_folder_and_dashboard():
    assert G.plan_folder(None, "Taishi") == G.CREATED
    assert G.plan_folder({"uid": "taishi", "title": "Taishi", "id": 3}, "Taishi") == G.UNCHANGED
    assert G.plan_folder({"uid": "taishi", "title": "Old"}, "Taishi") == G.UPDATED
    dash = ALL["taishi-overview"]
    assert G.plan_dashboard(None, dash, "taishi") == G.CREATED
    stored = {"dashboard": {**copy.deepcopy(dash), "id": 12, "version": 4}, "meta": {"folderUid": "taishi"}}
    assert G.plan_dashboard(stored, dash, "taishi") == G.UNCHANGED
    assert G.plan_dashboard(stored, dash, "elsewhere") == G.UPDATED
    stored["dashboard"]["panels"][0]["title"] = "edited in the UI"
    assert G.plan_dashboard(stored, dash, "taishi") == G.UPDATED


def test_cli_check_passes():
    from taishi.cli import main

    res = CliRunner().invoke(main, ["dashboards", "check", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["issues"] == [] and set(out["dashboards"]) == set(ALL)


def _mapped(mapping: dict, path: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in mapping.get("properties", {}).items():
        name = f"{path}.{k}" if path else k
        out |= _mapped(v, name) if "properties" in v else {name}
    return out


def test_panel_fields_exist_in_the_search_store_mappings():
    """Every field a panel filters or aggregates on is mapped in its index (the search store's
    templates, generated from taishi.schema); no node needed. Fields the alert schema does not
    have yet are tolerated only while taishi.schema.ALERT_FIELDS lacks them (see
    tests/integration/test_dashboard_panels.py, where those panels are expected failures)."""
    from taishi.cluster import compliance_index
    from taishi.cluster.search import ASSET_MAPPING, INCIDENT_MAPPING, POSTURE_MAPPING, mappings_for
    from taishi.schema import ALERT_SCHEMA

    known = {"events": _mapped(mappings_for("events")), "alerts": _mapped(mappings_for("alerts")),
             "deadletters": _mapped(mappings_for("deadletters")), "incidents": _mapped(INCIDENT_MAPPING),
             "assets": _mapped(ASSET_MAPPING), "compliance": _mapped(compliance_index.MAPPING),
             # posture strings are mapped dynamically (keyword): its documents are posture.compute rows
             "posture": _mapped(POSTURE_MAPPING) | {"key", "name"}}
    issues = [i for d in ALL.values() for i in D.validate(d, known)]
    pending = ("taishi.destination.asset.", "source.geo.")
    left = []
    for i in issues:
        f = re.search(r"field '([^']+)' is not a field of alerts", i.message)
        if f and f.group(1).startswith(pending) and f.group(1) not in ALERT_SCHEMA.names:
            continue
        left.append(str(i))
    assert left == []


# ------------------------------------------------------------------------------ Grafana's own schemas

def _dropped(a, b, path: str = "") -> list[str]:
    """What of ``a`` does not survive the round trip to ``b`` (keys the schema does not know, changed values)."""
    if isinstance(a, dict):
        out = []
        for k, v in a.items():
            if not isinstance(b, dict) or k not in b:
                out.append(f"{path}.{k}")
            else:
                out += _dropped(v, b[k], f"{path}.{k}")
        return out
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path} (list)"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _dropped(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def _roundtrip(model, doc: dict) -> dict:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return json.loads(json.dumps(model.from_json(doc), cls=JSONEncoder))


@pytest.fixture(scope="module")
def grafana_models():
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.models import dashboard, elasticsearch

    plugins.register_default_plugins()  # panel options and queries decode by plugin type
    return dashboard.Dashboard, elasticsearch.Dataquery


@pytest.mark.parametrize("uid", sorted(ALL))
def test_dashboard_matches_grafanas_schema(uid, grafana_models):
    """Every key of the dashboard, its panels (options, field config, transformations), its
    variables and every panel query is one Grafana's schemas define (grafana-foundation-sdk,
    generated from Grafana's own CUE schemas): nothing is lost in a round trip through them."""
    dashboard_model, query_model = grafana_models
    dash = ALL[uid]
    assert _dropped(dash, _roundtrip(dashboard_model, dash)) == []
    for p in D.panels(dash):
        for t in p["targets"]:
            assert _dropped(t, _roundtrip(query_model, t)) == [], (p["id"], t["refId"])


def test_schema_check_notices_unknown_keys(grafana_models):
    dashboard_model, query_model = grafana_models
    t = copy.deepcopy(next(D.panels(ALL["taishi-overview"]))["targets"][0])
    t["bucketAggs"][0]["settings"]["intervall"] = "1h"
    t["metrics"][0]["feild"] = "x"
    assert sorted(_dropped(t, _roundtrip(query_model, t))) == [".bucketAggs[0].settings.intervall",
                                                               ".metrics[0].feild"]
    dash = copy.deepcopy(ALL["taishi-overview"])
    dash["panels"][0]["gridPoss"] = dash["panels"][0]["gridPos"]
    assert _dropped(dash, _roundtrip(dashboard_model, dash)) == [".panels[0].gridPoss"]
