"""Pure parts of cluster mode's search store and services: no node, no network.

The node's behaviour is tested in tests/integration/test_search_store.py; here:
the query rewrite for query_string, the mappings generated from the schema,
and the pom the services fetch with.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("luqum")

from taishi.cluster.search import KINDS, mappings_for, translate_query  # noqa: E402
from taishi.cluster.services import _kafka_cluster_id, _pom  # noqa: E402
from taishi.query import QueryError  # noqa: E402
from taishi.schema import EVENT_FIELDS, IP_FIELDS  # noqa: E402

EV = KINDS["events"].query_schema


@pytest.mark.parametrize("query,expected", [
    ("source.ip:10.0.0.0/8", 'source.ip:"10.0.0.0/8"'),
    ('source.ip:"2001:db8::/32"', 'source.ip:"2001:db8::/32"'),
    ("source.ip:2001\\:db8\\:\\:1", 'source.ip:"2001:db8::1"'),
    ("related.ip:(10.0.0.1 OR 10.0.0.2)", 'related.ip:("10.0.0.1" OR "10.0.0.2")'),
    ("source.ip:[10.0.0.1 TO 10.0.0.9}", 'source.ip:["10.0.0.1" TO "10.0.0.9"}'),
    ("source.ip:10.0.*", "source.ip.text:10.0.*"),
    ("source.ip:*", "source.ip:*"),
    ("timestamp:>=2026-03-14T04:00:00Z", '@timestamp:["2026-03-14T04:00:00Z" TO *]'),
    ("@timestamp:<now-1d", '@timestamp:[* TO "now-1d"}'),
    ("destination.port:(<5 OR >7) AND x", "destination.port:([* TO 5} OR {7 TO *]) AND *x*"),
    ("destination.port:>=1024", "destination.port:[1024 TO *]"),
    ("taishi.source:conn.log", "taishi.input:conn.log"),
    ("_exists_:taishi.source", "_exists_:taishi.input"),
    ("dns.question.name:/.*\\.(ru|cn)/", "dns.question.name:/.*\\.(ru|cn)/"),
    ("-destination.port:53 +event.dataset:zeek.dns", "-destination.port:53 +event.dataset:zeek.dns"),
    # "contains" on text fields and for bare terms, as the embedded store does
    ("sshd", "*sshd*"),
    ("fa?led OR x", "*fa?led* OR *x*"),
    ("message:fail", "message:*fail*"),
    ("message:fail*", "message:*fail*"),
    ('message:"Failed password"', 'message:"Failed password"'),
    ("event.dataset:zeek", "event.dataset:zeek"),
])
def test_translate_query(query, expected):
    assert translate_query(query, EV) == expected


@pytest.mark.parametrize("query", ["", "  ", "*"])
def test_match_everything(query):
    assert translate_query(query, EV) is None


def test_unknown_field_is_a_query_error():
    with pytest.raises(QueryError, match="unknown field"):
        translate_query("sorce.ip:1.2.3.4", EV)


def _leaf(props: dict, dotted: str) -> dict:
    parts = dotted.split(".")
    node = props
    for p in parts[:-1]:
        node = node[p]["properties"]
    return node[parts[-1]]


def test_event_mapping_types_follow_the_schema():
    props = mappings_for("events")["properties"]
    for name in IP_FIELDS:
        assert _leaf(props, name)["type"] == "ip", name
    assert _leaf(props, "@timestamp")["type"] == "date"
    assert _leaf(props, "event.ingested")["type"] == "date"
    assert _leaf(props, "source.port")["type"] == "long"
    assert _leaf(props, "tls.established")["type"] == "boolean"
    assert _leaf(props, "event.original")["type"] == "match_only_text"
    assert _leaf(props, "message")["type"] == "text"
    assert _leaf(props, "event.dataset")["type"] == "keyword"
    assert _leaf(props, "taishi.input")["type"] == "keyword"
    assert _leaf(props, "taishi.source.asset.level")["type"] == "long"
    # every schema field has a mapping (no field is left to chance with dynamic: false)
    for name in EVENT_FIELDS:
        _leaf(props, {"taishi.source": "taishi.input"}.get(name, name))


def test_keyword_default_fields_have_a_lowercase_subfield():
    from taishi.cluster.search import default_fields

    props = mappings_for("deadletters")["properties"]
    assert _leaf(props, "taishi.input")["fields"]["lc"]["normalizer"] == "taishi_lc"
    assert default_fields(KINDS["events"]) == ["message", "event.original", "rule.name.lc"]
    assert "fields" not in _leaf(mappings_for("events")["properties"], "event.dataset")


def test_no_field_is_both_a_value_and_an_object():
    for kind in KINDS:
        def walk(props: dict) -> None:
            for v in props.values():
                assert ("type" in v) != ("properties" in v)
                if "properties" in v:
                    walk(v["properties"])
        walk(mappings_for(kind)["properties"])


def test_pom_lists_the_artifacts():
    root = ET.fromstring(_pom(["org.apache.kafka:kafka_2.13:4.4.0", "org.opensearch.plugin:x:2.19.6:zip"]))
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    deps = [(d.findtext("m:groupId", namespaces=ns), d.findtext("m:artifactId", namespaces=ns),
             d.findtext("m:version", namespaces=ns), d.findtext("m:type", namespaces=ns))
            for d in root.iter("{http://maven.apache.org/POM/4.0.0}dependency")]
    assert deps == [("org.apache.kafka", "kafka_2.13", "4.4.0", None), ("org.opensearch.plugin", "x", "2.19.6", "zip")]


def test_kafka_cluster_id_is_a_kafka_uuid():
    import base64

    cid = _kafka_cluster_id()
    assert len(cid) == 22 and "=" not in cid
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16
    assert cid != _kafka_cluster_id()
    # 1 in 64 random ids starts with '-', which kafka-storage's argument parser takes for an option
    ids = [_kafka_cluster_id() for _ in range(2000)]
    assert not any(i.startswith("-") for i in ids)


def test_cache_is_reachable_by_others(monkeypatch):
    """As root the search node runs as nobody: a checkout others cannot enter moves the cache."""
    import shutil
    import tempfile
    from pathlib import Path

    from taishi.cluster import services

    tmp_path = Path(tempfile.mkdtemp(prefix="taishi-cache-test-"))  # pytest's tmp_path is closed to others
    tmp_path.chmod(0o755)
    open_dir = tmp_path / "open" / "repo"
    open_dir.mkdir(parents=True)
    closed = tmp_path / "closed" / "repo"
    closed.mkdir(parents=True)
    (tmp_path / "closed").chmod(0o700)
    try:
        for d in (tmp_path, *tmp_path.parents):
            if not d.stat().st_mode & 0o001:
                pytest.skip(f"{d} is closed to others already")
        assert services._others_can_enter(open_dir)
        assert not services._others_can_enter(closed)
        monkeypatch.delenv("TAISHI_SERVICES_CACHE", raising=False)
        monkeypatch.setattr(services, "REPO", closed)
        monkeypatch.setattr(services.os, "geteuid", lambda: 0)
        assert services.cache_dir() == services.Path("/var/cache/taishi/services")
        monkeypatch.setattr(services, "REPO", open_dir)
        assert services.cache_dir() == open_dir / ".cache" / "services"
        monkeypatch.setenv("TAISHI_SERVICES_CACHE", str(tmp_path / "c"))
        assert services.cache_dir() == (tmp_path / "c").resolve()
    finally:
        (tmp_path / "closed").chmod(0o755)
        shutil.rmtree(tmp_path, ignore_errors=True)
