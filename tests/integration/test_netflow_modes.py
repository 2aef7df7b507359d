"""NetFlow in both modes: the collector on the embedded bus (JSON lines and their column form,
``netflow.decoded``) and on Kafka (one JSON record per flow record, as cluster mode's parse step
reads them) takes the same exports to the same raw records, which parse to the same events with
the same ids."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

import ingest.parsers.netflow  # noqa: F401 - registers the "netflow" parser
from ingest.collectors import Listener
from ingest.collectors.netflow import TOPIC, NetflowCollector
from ingest.parsers import RAW_SCHEMA, parse
from ingest.parsers.netflow import DECODED
from taishi import config as config_mod
from taishi.bus import Bus

pytestmark = pytest.mark.integration

RECORDED = Path(__file__).resolve().parent.parent / "data" / "netflow"  # softflowd exports (tests/data/netflow/record.py)


@pytest.fixture
def cfg(kafka_bootstrap, tmp_path):
    c = config_mod.load(data_dir=tmp_path / "cluster", mode="cluster")
    c.cluster = {"kafka": {"bootstrap": kafka_bootstrap, "partitions": 3, "replication": 1, "retention_hours": 2,
                           "topic_prefix": f"nf{uuid.uuid4().hex[:10]}."}}
    yield c
    from taishi.cluster.kafka_bus import drop_topics

    drop_topics(c)


def _datagrams() -> list[bytes]:
    out = []
    for name in ("ssh_bruteforce_v5", "ssh_bruteforce_v9", "ftp_bruteforce_ipfix", "ftp_bruteforce_ipfix_biflow"):
        raw, pos = (RECORDED / f"{name}.dgrams").read_bytes(), 0
        while pos < len(raw):
            (n,) = struct.unpack_from("!H", raw, pos)
            out.append(raw[pos + 2: pos + 2 + n])
            pos += 2 + n
    return out


def _collect(bus, dgrams: list[bytes]) -> dict:
    """Run a collector on ``bus``, send it ``dgrams`` over UDP in order, stop it; its metrics."""
    col = NetflowCollector(bus, [Listener("udp", "127.0.0.1", 0)], batch_size=500, flush_interval=0.1).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i, d in enumerate(dgrams):
                s.sendto(d, col.bound["udp"])
                if i % 20 == 19:  # paced: nothing may be lost for the comparison
                    time.sleep(0.01)
        end = time.monotonic() + 20
        while col.metrics()["datagrams"] < len(dgrams) and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        col.stop()
    return col.metrics()


def test_netflow_collector_gives_the_same_events_on_kafka_and_the_embedded_bus(cfg, tmp_path):
    from kafka import KafkaConsumer

    from taishi.cluster.kafka_bus import KafkaBus, decode_raw, kafka_settings

    dgrams = _datagrams()
    bus = Bus(tmp_path / "bus")
    m = _collect(bus, dgrams)
    assert m["datagrams"] == len(dgrams) and m["deadlettered"] == 0 and m["dropped"] == 0
    frames = [b.table for b in bus.read(TOPIC, 0)]
    assert frames and all(DECODED in f.column_names for f in frames)  # the column form rides along
    embedded = pa.concat_tables([f.select(RAW_SCHEMA.names) for f in frames])
    embedded_events = pa.concat_tables([parse("netflow", f).events for f in frames])

    kbus = KafkaBus(cfg)
    try:
        km = _collect(kbus, dgrams)
    finally:
        kbus.close()
    assert km["datagrams"] == len(dgrams) and km["received"] == m["received"]
    k = kafka_settings(cfg)
    consumer = KafkaConsumer(k["topic_prefix"] + TOPIC, bootstrap_servers=k["bootstrap"], auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        values = [r.value for r in consumer]
    finally:
        consumer.close()
    kraw, bad = decode_raw(values)
    assert not bad and kraw.schema == RAW_SCHEMA
    kraw = kraw.sort_by("log.offset")
    assert kraw.num_rows == embedded.num_rows == m["received"] > 100
    assert kraw.equals(embedded), "the same raw records: JSON lines byte for byte, offsets, sources"
    kafka_events = parse("netflow", kraw).events  # read from the JSON, as on a Spark executor
    assert kafka_events.column("event.id").to_pylist() == embedded_events.column("event.id").to_pylist()
    assert kafka_events.equals(embedded_events)
