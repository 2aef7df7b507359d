"""The bus on Kafka: the embedded bus's topics and framing, one Kafka record per row.

Cluster mode moves the same things as :mod:`taishi.bus`, under the same topic
names (``raw.<format>``, ``events``, ``alerts``, ``incidents``, ``deadletter``),
but one Kafka record per row instead of one frame per batch:

* a *raw* record is the JSON object of one ``RAW_SCHEMA`` row -- source name,
  offset, file path, framing ``hint`` and the raw text -- so a Spark executor
  can parse it alone, exactly as the embedded parse step does (a Zeek TSV line
  carries its header in ``hint``);
* events, alerts, incidents and dead letters are their flattened ECS rows as
  JSON (nulls left out, times as RFC 3339 with microseconds).

Keys keep per-entity order (Kafka orders within a partition, and the default
partitioner sends one key to one partition): raw records and dead letters are
keyed by their source (a file's or listener's records stay in offset order),
events and alerts by the entity they are about (``source.ip``, else
``host.name``, else the source or rule), incidents by id.

The producer is idempotent (``enable_idempotence``, ``acks=all``, retries,
one request in flight), so a retried send is not written twice. It rides out
a broker outage: records wait in its buffer, and ``produce`` blocks, for up to
``cluster.kafka.delivery_timeout_s`` (default 300 s) while it reconnects every
second at most; creating a topic retries for as long once the bus has reached
the broker (one never reached is an error at once: a wrong address, not an
outage). ``tests/integration/test_broker_restart.py`` crashes the broker under it.

:class:`KafkaBus` has the producing half of :class:`taishi.bus.Bus`'s
interface (``produce``, ``last_meta``), so the file collector
(``Pipeline.collect_file``) and the network collectors run unchanged on it.
Kafka has no per-frame meta; ``produce`` waits for the batch to be
acknowledged and then records its meta in a small local file, so a restarted
collector resumes after the last acknowledged batch. A crash between the two
re-sends that batch (at-least-once); the records keep their ids, so the search
store still holds each document once.

kafka-python is imported lazily: the embedded install does not need it.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson
import pyarrow as pa

from ingest.parsers import RAW_SCHEMA
from taishi.bus import TOPIC_ALERTS, TOPIC_DEADLETTER, TOPIC_EVENTS, TOPIC_INCIDENTS, atomic_write
from taishi.config import Config
from taishi.schema import ALERT_SCHEMA, DEADLETTER_SCHEMA, EVENT_SCHEMA, rows_table

#: control records (end of bounded input) for the cluster jobs; see taishi.cluster.spark_jobs
TOPIC_CONTROL = "control"
FIXED_TOPICS = (TOPIC_EVENTS, TOPIC_ALERTS, TOPIC_INCIDENTS, TOPIC_DEADLETTER, TOPIC_CONTROL)

DEFAULT_KAFKA = {"bootstrap": "127.0.0.1:9092", "partitions": 3, "replication": 1, "retention_hours": 168,
                 "delivery_timeout_s": 300}


def kafka_settings(cfg: Config) -> dict[str, Any]:
    """``cfg.cluster["kafka"]`` over the defaults.

    ``topic_prefix`` (default none) puts a deployment's topics in their own
    namespace on a shared broker (``<prefix>raw.zeek`` ...); tests use it.
    """
    return {**DEFAULT_KAFKA, "topic_prefix": "", **(cfg.cluster.get("kafka") or {})}


def topic_prefix(cfg: Config) -> str:
    return str(kafka_settings(cfg).get("topic_prefix") or "")


def delivery_timeout_ms(settings: dict[str, Any]) -> int:
    """How long a record may wait for the broker (an outage longer than this fails the send)."""
    return int(float(settings.get("delivery_timeout_s", DEFAULT_KAFKA["delivery_timeout_s"])) * 1000)


# --------------------------------------------------------------------------- encoding
def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    raise TypeError(type(o).__name__)


def _dumps(row: dict) -> bytes:
    return orjson.dumps({k: v for k, v in row.items() if v is not None}, default=_json_default,
                        option=orjson.OPT_UTC_Z)


def record_key(topic: str, row: dict) -> str | None:
    """The key that keeps one entity's records in order on ``topic``."""
    if topic.startswith("raw.") or topic == TOPIC_DEADLETTER:
        return row.get("taishi.source")
    if topic == TOPIC_INCIDENTS:
        return row.get("id")
    if topic == TOPIC_CONTROL:
        return "control"
    for f in ("source.ip", "host.name"):
        if row.get(f):
            return row[f]
    return row.get("taishi.source") or row.get("rule.id") or row.get("id") or row.get("event.id")


def encode(topic: str, table: pa.Table | Iterable[dict]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) per row of ``table`` for ``topic``."""
    rows = table.to_pylist() if isinstance(table, pa.Table) else list(table)
    out = []
    for row in rows:
        k = record_key(topic, row)
        out.append((k.encode() if k is not None else None, _dumps(row)))
    return out


def decode_raw(values: Iterable[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """``RAW_SCHEMA`` rows from raw records, and (index, reason) for records that are not one."""
    cols: dict[str, list] = {f.name: [] for f in RAW_SCHEMA}
    bad: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        try:
            d = orjson.loads(v) if v is not None else None
            if not isinstance(d, dict) or not isinstance(d.get("event.original"), str):
                raise ValueError("not a raw record object")
            row = (str(d.get("taishi.source") or ""), int(d.get("log.offset") if d.get("log.offset") is not None else -1),
                   d.get("log.file.path"), d.get("hint"), d["event.original"])
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            bad.append((i, f"bad raw record on Kafka: {exc}"[:200]))
            continue
        for f, x in zip(RAW_SCHEMA.names, row):
            cols[f].append(x)
    return pa.Table.from_pydict(cols, schema=RAW_SCHEMA), bad


_SCHEMAS = {TOPIC_EVENTS: EVENT_SCHEMA, TOPIC_ALERTS: ALERT_SCHEMA, TOPIC_DEADLETTER: DEADLETTER_SCHEMA}


def decode_rows(topic: str, values: Iterable[bytes | None]) -> tuple[pa.Table, list[tuple[int, str]]]:
    """A batch of ``topic``'s schema from its records, and (index, reason) for the undecodable ones."""
    schema = _SCHEMAS[topic]
    rows, bad = [], []
    known = set(schema.names)
    for i, v in enumerate(values):
        try:
            d = orjson.loads(v) if v is not None else None
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            rows.append({k: x for k, x in d.items() if k in known})
        except (ValueError, orjson.JSONDecodeError) as exc:
            bad.append((i, f"bad {topic} record on Kafka: {exc}"[:200]))
    if topic == TOPIC_EVENTS:
        from ingest.parsers import events_from_rows  # column-wise and lenient

        return events_from_rows(rows), bad
    return rows_table(rows, schema), bad


# --------------------------------------------------------------------------- the bus
class KafkaBus:
    """Producing side of the bus on Kafka (see module doc)."""

    def __init__(self, cfg: Config, *, client_id: str = "taishi", meta_file: Path | None = None,
                 keep_meta: bool = True) -> None:
        from kafka import KafkaProducer

        self.cfg = cfg
        self.settings = kafka_settings(cfg)
        self.bootstrap = str(self.settings["bootstrap"])
        self.prefix = str(self.settings.get("topic_prefix") or "")
        self.producer = KafkaProducer(
            bootstrap_servers=self.bootstrap.split(","),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,
            max_in_flight_requests_per_connection=1,
            # a broker outage: records wait (and send() blocks on a full buffer or unknown metadata) this long,
            # and the producer tries to reconnect every second at most (kafka-python backs off up to 30 s)
            delivery_timeout_ms=delivery_timeout_ms(self.settings),
            max_block_ms=delivery_timeout_ms(self.settings),
            reconnect_backoff_max_ms=1000,
            linger_ms=int(self.settings.get("linger_ms", 20)),
            batch_size=int(self.settings.get("batch_bytes", 256 * 1024)),
            compression_type=self.settings.get("compression"),
        )
        # producers without input positions (the Spark jobs' sinks) keep no meta file
        self.meta_file = (meta_file or cfg.state_dir / "kafka-produced.json") if keep_meta else None
        self._metas: dict[str, dict] = (json.loads(self.meta_file.read_text())
                                        if self.meta_file is not None and self.meta_file.exists() else {})
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self.produced = 0

    # -- topics -----------------------------------------------------------------
    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create missing topics with the configured partitions, replication and retention."""
        topics = [t for t in topics if t not in self._known]
        if topics:  # a broker this bus reached before is waited for; one never reached is an error at once
            ensure_topics(self.cfg, topics, wait=bool(self._known))
            self._known.update(topics)

    # -- producing --------------------------------------------------------------
    def produce(self, topic: str, table: pa.Table, meta: dict | None = None) -> tuple[int, int]:
        """Send every row of ``table`` to ``topic`` and wait until Kafka has them all (acks=all).

        ``meta`` (what input the batch covers) is recorded after the acknowledgement,
        for :meth:`last_meta`. Returns (0, rows) -- Kafka offsets are per partition.
        """
        n = self.send_rows(topic, table) if table.num_rows else 0
        if meta:
            self._remember(topic, meta)
        return 0, n

    def send_rows(self, topic: str, rows: pa.Table | list[dict]) -> int:
        """Send rows (a batch or JSON-ready dicts) to ``topic``; returns once all are acknowledged."""
        self.ensure_topics([topic])
        name = self.prefix + topic
        futures = [self.producer.send(name, key=k, value=v) for k, v in encode(topic, rows)]
        self.producer.flush()
        for f in futures:
            f.get(timeout=0)  # raises if Kafka refused a record
        self.produced += len(futures)
        return len(futures)

    def _remember(self, topic: str, meta: dict) -> None:
        with self._lock:
            for k in ("file", "listener", "pcap", "src"):
                if k in meta:
                    self._metas[f"{topic}\x1f{k}\x1f{meta[k]}"] = meta
            if self.meta_file is not None:
                atomic_write(self.meta_file, json.dumps(self._metas, separators=(",", ":")).encode())

    def last_meta(self, topic: str, key: str, value: str) -> dict | None:
        """The meta of the newest acknowledged batch on ``topic`` whose meta has ``key == value``."""
        return self._metas.get(f"{topic}\x1f{key}\x1f{value}")

    def send_control(self, what: str, **fields: Any) -> None:
        """A control record (``{"control": what, ...}``) for the cluster jobs, acknowledged."""
        self.ensure_topics([TOPIC_CONTROL])
        self.producer.send(self.prefix + TOPIC_CONTROL, key=b"control", value=_dumps({"control": what, **fields})).get(
            timeout=delivery_timeout_ms(self.settings) / 1000 + 30)

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


def ensure_topics(cfg: Config, topics: Iterable[str], *, wait: bool = False) -> list[str]:
    """Create the topics that do not exist yet (names without the prefix); returns the ones created.

    ``wait``: while the broker is unreachable, retry (every few seconds) for up to
    the delivery timeout, as the producer waits for it."""
    import time

    from kafka.errors import RetriableError

    s = kafka_settings(cfg)
    deadline = time.monotonic() + (delivery_timeout_ms(s) / 1000 if wait else 0)
    topics = list(topics)
    while True:
        try:
            return _create_topics(s, topics)
        except RetriableError:  # no broker answers (yet): a restart, an outage
            if time.monotonic() >= deadline:
                raise
            time.sleep(2.0)


def _create_topics(s: dict[str, Any], topics: list[str]) -> list[str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=str(s["bootstrap"]).split(","), client_id="taishi-admin")
    prefix = str(s.get("topic_prefix") or "")
    try:
        have = set(admin.list_topics())
        want = [prefix + t for t in dict.fromkeys(topics) if prefix + t not in have]
        if not want:
            return []
        retention_ms = str(int(float(s["retention_hours"]) * 3600 * 1000))
        new = [
            NewTopic(t, num_partitions=1 if t == prefix + TOPIC_CONTROL else int(s["partitions"]),
                     replication_factor=int(s["replication"]),
                     topic_configs={"retention.ms": retention_ms, "min.insync.replicas": "1"})
            for t in want
        ]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:  # another producer was quicker
            pass
        return want
    finally:
        admin.close()


def drop_topics(cfg: Config) -> list[str]:
    """Delete every topic under the deployment's topic prefix (a test's or benchmark's own namespace);
    returns the names deleted. Refuses an empty prefix: that would be every topic on the broker."""
    from kafka import KafkaAdminClient

    s = kafka_settings(cfg)
    prefix = str(s.get("topic_prefix") or "")
    if not prefix:
        raise ValueError("drop_topics needs a topic_prefix (it would delete every topic on the broker)")
    admin = KafkaAdminClient(bootstrap_servers=str(s["bootstrap"]).split(","), client_id="taishi-admin")
    try:
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine)
        return mine
    finally:
        admin.close()


def consume(cfg: Config, topic: str, *, group: str | None = None, timeout_s: float = 5.0,
            max_records: int | None = None) -> Iterator[dict]:
    """Decoded records of ``topic`` from the earliest offset (or the group's), until ``timeout_s`` of quiet.

    For tools and tests (``taishi`` reads results from the search store, not here).
    """
    from kafka import KafkaConsumer

    s = kafka_settings(cfg)
    consumer = KafkaConsumer(
        str(s.get("topic_prefix") or "") + topic, bootstrap_servers=str(s["bootstrap"]).split(","), group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=group is not None, consumer_timeout_ms=int(timeout_s * 1000),
    )
    n = 0
    try:
        for msg in consumer:
            yield orjson.loads(msg.value)
            n += 1
            if max_records is not None and n >= max_records:
                return
    finally:
        consumer.close()
