"""`taishi services`: the real Kafka broker and search node that the session started."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner

from taishi.cluster import services

pytestmark = pytest.mark.integration


def test_kafka_round_trip_keeps_per_key_order(kafka_bootstrap, require_module):
    kafka = require_module("kafka")
    topic = f"taishi-test-{uuid.uuid4().hex[:10]}"
    admin = kafka.KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([kafka.admin.NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    sent = [(f"host-{i % 4}".encode(), f"{i}:{uuid.uuid4().hex}".encode()) for i in range(60)]
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        for key, value in sent:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()
    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                   enable_auto_commit=False, consumer_timeout_ms=15000,
                                   group_id=f"g-{uuid.uuid4().hex[:8]}")
    got = []
    try:
        for msg in consumer:
            got.append((msg.key, msg.value, msg.partition))
            if len(got) == len(sent):
                break
    finally:
        consumer.close()
    assert sorted((k, v) for k, v, _ in got) == sorted(sent)
    for key in {k for k, _ in sent}:
        assert len({p for k, _, p in got if k == key}) == 1, "one key, one partition"
        assert [v for k, v, _ in got if k == key] == [v for k, v in sent if k == key], "per-key order kept"


def test_status_reports_both_services(kafka_bootstrap, search_node):
    rows = {r["name"]: r for r in services.status()}
    assert rows["kafka"]["healthy"] and rows["kafka"]["endpoint"] == kafka_bootstrap
    assert rows["search"]["healthy"] and rows["search"]["endpoint"] == search_node["url"]
    assert rows["search"]["flavor"] == search_node["flavor"]
    for r in rows.values():
        assert r["running"] or r["external"]


def test_a_second_session_shares_a_running_service(kafka_bootstrap):
    before = services.status(["kafka"])[0]["pid"]
    again = services.acquire("kafka")
    assert again["started"] is False
    assert services.status(["kafka"])[0]["pid"] == before
    assert services.release("kafka", again["lease"]) is False  # the fixture's lease keeps it running
    assert services.status(["kafka"])[0]["healthy"]


def test_cli_status_json(kafka_bootstrap, search_node):
    from taishi.cli import main

    res = CliRunner().invoke(main, ["services", "status", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) == {"kafka", "search"}
    assert all(r["healthy"] for r in rows.values())


def test_search_node_answers_as_detected(search_node):
    info = services.search_info(search_node["url"])
    assert info is not None
    dist = (info.get("version") or {}).get("distribution", "elasticsearch")
    assert dist == search_node["flavor"]


def test_unknown_service_is_an_error():
    with pytest.raises(services.ServiceError):
        services.get("zookeeper")
