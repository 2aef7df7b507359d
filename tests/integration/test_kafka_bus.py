"""The Kafka bus on a real broker: topics from config, entity keys, resume after a restart."""

from __future__ import annotations

import uuid
from collections import defaultdict

import orjson
import pyarrow as pa
import pytest

from taishi import config as config_mod

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(kafka_bootstrap, tmp_path) -> config_mod.Config:
    c = config_mod.load(data_dir=tmp_path, mode="cluster")
    c.cluster = {"kafka": {"bootstrap": kafka_bootstrap, "partitions": 4, "replication": 1, "retention_hours": 5,
                           "topic_prefix": f"kb{uuid.uuid4().hex[:10]}."}}
    return c


def _records(cfg, topic: str) -> list:
    from kafka import KafkaConsumer

    from taishi.cluster.kafka_bus import kafka_settings

    s = kafka_settings(cfg)
    c = KafkaConsumer(s["topic_prefix"] + topic, bootstrap_servers=s["bootstrap"], auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=4000)
    try:
        return list(c)
    finally:
        c.close()


def test_topics_are_created_with_the_configured_partitions_and_retention(cfg):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from taishi.cluster.kafka_bus import ensure_topics, kafka_settings

    s = kafka_settings(cfg)
    created = ensure_topics(cfg, ["raw.zeek", "alerts"])
    assert created == [s["topic_prefix"] + "raw.zeek", s["topic_prefix"] + "alerts"]
    assert ensure_topics(cfg, ["raw.zeek"]) == []  # idempotent
    admin = KafkaAdminClient(bootstrap_servers=s["bootstrap"])
    try:
        desc = {t["name"]: t for t in admin.describe_topics(created)}
        assert all(len(desc[t]["partitions"]) == 4 for t in created)
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, created[0])], config_filter="all")
        assert res["topic"][created[0]]["retention.ms"]["value"] == str(5 * 3600 * 1000)
    finally:
        admin.close()


def test_keys_keep_each_source_in_one_partition_in_order(cfg):
    from taishi.cluster.kafka_bus import KafkaBus

    rows = [{"taishi.source": f"host{i % 5}.log", "log.offset": i, "log.file.path": None, "hint": None,
             "event.original": f"line {i}"} for i in range(200)]
    bus = KafkaBus(cfg)
    try:
        bus.produce("raw.syslog", pa.Table.from_pylist(rows))
    finally:
        bus.close()
    parts: dict[str, set[int]] = defaultdict(set)
    order: dict[str, list[int]] = defaultdict(list)
    for msg in sorted(_records(cfg, "raw.syslog"), key=lambda m: (m.partition, m.offset)):
        d = orjson.loads(msg.value)
        assert msg.key.decode() == d["taishi.source"]
        parts[d["taishi.source"]].add(msg.partition)
        order[d["taishi.source"]].append(d["log.offset"])
    assert sum(len(v) for v in order.values()) == 200  # idempotent producer: each record once
    assert all(len(p) == 1 for p in parts.values())
    assert all(v == sorted(v) for v in order.values())


def test_file_collector_resumes_after_a_restart(cfg, tmp_path):
    from taishi.cluster.kafka_bus import KafkaBus
    from taishi.cluster.runner import FileCollector
    from taishi.pipeline import RunStats

    log = tmp_path / "auth.log"
    log.write_text("".join(f"Dec 10 06:55:{i:02d} h sshd[1]: Failed password for root from 10.0.0.{i} port 22 ssh2\n"
                           for i in range(30)))
    bus = KafkaBus(cfg)
    try:
        assert FileCollector(cfg, bus, RunStats()).collect_file(log) == 30
    finally:
        bus.close()
    with log.open("a") as f:  # the file grows while the collector is down
        f.write("Dec 10 06:56:00 h sshd[1]: Failed password for root from 10.0.0.99 port 22 ssh2\n")
    bus = KafkaBus(cfg)  # a new process: the position comes from the acknowledged batches' meta
    try:
        assert FileCollector(cfg, bus, RunStats()).collect_file(log) == 1
    finally:
        bus.close()
    offsets = sorted(orjson.loads(m.value)["log.offset"] for m in _records(cfg, "raw.syslog"))
    assert len(offsets) == len(set(offsets)) == 31
