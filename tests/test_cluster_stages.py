"""The cluster job's stage functions, without Kafka or Spark: the same alerts as the embedded pipeline.

The Spark detect job is ``mapInArrow(stage_rows)`` -> ``groupBy(key)`` with
keyed state (``correlate_rows``) -> sink. Here the same functions run over
the demo campaign's raw records encoded as Kafka records, cut into arbitrary
"micro-batches", with the state carried between them as Spark carries it;
the alert ids must equal the embedded bounded run's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from ingest import files as ingest_files
from ingest.sniff import sniff
from taishi import config as config_mod
from taishi.bus import raw_topic
from taishi.cluster import kafka_bus, spark_jobs as jobs
from taishi.demo import generate_campaign
from taishi.pipeline import Pipeline
from taishi.schema import ALERT_SCHEMA


def _records(paths: list[Path]) -> pa.Table:
    """Kafka records (topic, partition, offset, value) as the file collector would produce them."""
    topics, parts, offs, values = [], [], [], []
    counter: dict[tuple[str, int], int] = defaultdict(int)
    for p in paths:
        fmt = sniff(p)
        topic = raw_topic(fmt)
        for batch in ingest_files.read_records(p, fmt, batch_size=4096):
            for key, value in kafka_bus.encode(topic, batch):
                part = hash(key) % 3
                topics.append(topic)
                parts.append(part)
                offs.append(counter[(topic, part)])
                counter[(topic, part)] += 1
                values.append(value)
    return pa.table({"topic": topics, "partition": pa.array(parts, pa.int32()), "offset": offs,
                     "value": pa.array(values, pa.binary())})


def _run_job(conf: jobs.JobConf, records: pa.Table, cuts: int) -> tuple[set[str], dict]:
    """Micro-batches of the job: stage, group by key, keyed state for correlations, then a flush batch."""
    state: dict[str, bytes] = {}
    alerts: list[pa.Table] = []
    counts = {"events": 0, "deadletters": 0}
    step = math.ceil(records.num_rows / cuts)
    batches = [records.slice(i, step) for i in range(0, records.num_rows, step)]
    flush = pa.table({"topic": ["control"], "partition": pa.array([0], pa.int32()), "offset": [0],
                      "value": pa.array([b'{"control":"flush"}'], pa.binary())})
    for batch in [*batches, flush]:
        groups: dict[str, list[dict]] = defaultdict(list)
        # two "tasks" per micro-batch, as two Kafka partitions' tasks would
        half = max(1, batch.num_rows // 2)
        for part, sub in enumerate([batch.slice(0, half), batch.slice(half)]):
            for row in jobs.stage_rows(conf, sub, part):
                groups[row["key"]].append(row)
        for key, rows in sorted(groups.items()):
            kind, _, name = key.partition(":")
            if kind in ("corr", "anomaly"):
                step = jobs.correlate_rows if kind == "corr" else jobs.anomaly_rows
                state[key], rows = step(conf, name, state.get(key), rows)
            for r in rows:
                t = jobs.from_ipc(r["payload"]) if r["payload"] is not None else None
                if r["kind"] == "alerts":
                    alerts.append(t)
                elif r["kind"] in counts:
                    counts[r["kind"]] += t.num_rows
    table = pa.concat_tables(alerts) if alerts else ALERT_SCHEMA.empty_table()
    counts["alerts"] = {a["id"]: (a["rule.type"], a["event.count"], sorted(a["event.ids"] or []))
                        for a in table.to_pylist()}
    return set(table.column("id").to_pylist()), counts


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("campaign")
    m = generate_campaign(d, seed=11)
    return [Path(f) for f in m.files]


@pytest.fixture(scope="module")
def embedded(campaign, tmp_path_factory):
    cfg = config_mod.load(data_dir=tmp_path_factory.mktemp("embedded"))
    pipe = Pipeline(cfg, bounded=True)
    try:
        stats = pipe.run_files(campaign)
    finally:
        pipe.close()
    return cfg, stats


@pytest.mark.parametrize("cuts", [1, 7])
def test_stage_functions_give_the_embedded_alerts(campaign, embedded, cuts):
    cfg, stats = embedded
    conf = jobs.JobConf(rules=tuple(str(r) for r in cfg.rules), lateness_s=math.inf)
    ids, counts = _run_job(conf, _records(campaign), cuts)
    assert stats.alert_ids, "the demo campaign raises alerts"
    assert ids == stats.alert_ids
    from taishi.store import Store

    st = Store(cfg.data_dir)
    try:
        corr = st.search_alerts("rule.type:sigma_correlation", limit=1000).column("id").to_pylist()
    finally:
        st.close()
    assert corr and set(corr) <= ids  # the keyed-state correlations fired too
    assert counts["events"] == stats.events
    assert counts["deadletters"] == stats.deadletters


def test_bad_kafka_records_are_dead_letters(embedded):
    cfg, _ = embedded
    conf = jobs.JobConf(rules=tuple(str(r) for r in cfg.rules), lateness_s=math.inf)
    batch = pa.table({
        "topic": ["raw.syslog", "raw.syslog", "raw.nosuchformat"],
        "partition": pa.array([0, 0, 1], pa.int32()),
        "offset": [0, 1, 0],
        "value": pa.array([b"not json", b'{"taishi.source":"a.log","log.offset":0,"event.original":"<13>Jan  1 '
                           b'00:00:00 h sshd[1]: Failed password for root from 10.0.0.9 port 22 ssh2"}',
                           b'{"taishi.source":"b","log.offset":0,"event.original":"x"}'], pa.binary()),
    })
    rows = jobs.stage_rows(conf, batch)
    dl = pa.concat_tables([jobs.from_ipc(r["payload"]) for r in rows if r["kind"] == "deadletters"])
    reasons = dl.column("reason").to_pylist()
    assert any("bad raw record on Kafka" in r for r in reasons)
    assert any("no parser for format 'nosuchformat'" in r for r in reasons)
    ev = [jobs.from_ipc(r["payload"]) for r in rows if r["kind"] == "events"]
    assert ev and ev[0].column("source.ip").to_pylist() == ["10.0.0.9"]


def test_kafka_encoding_round_trips_alerts(embedded):
    cfg, _ = embedded
    from taishi.store import Store

    st = Store(cfg.data_dir)
    try:
        alerts = st.search_alerts("", limit=50)
    finally:
        st.close()
    assert alerts.num_rows
    alerts = alerts.select(ALERT_SCHEMA.names).cast(ALERT_SCHEMA)
    recs = kafka_bus.encode("alerts", alerts)
    keys = {k for k, _ in recs}
    assert all(k for k in keys)  # every alert has an entity key
    back, bad = kafka_bus.decode_rows("alerts", [v for _, v in recs])
    assert not bad
    assert back.to_pylist() == alerts.to_pylist()


def test_records_delivered_twice_count_once(campaign, embedded):
    """A collector that re-sends records after a crash (at-least-once) changes nothing: the correlation
    groups remember the event ids they took, single-event alerts and documents have ids."""
    cfg, stats = embedded
    conf = jobs.JobConf(rules=tuple(str(r) for r in cfg.rules), lateness_s=math.inf)
    records = _records(campaign)
    once_ids, once = _run_job(conf, records, 6)
    again = pa.concat_tables([records, records.slice(records.num_rows // 3, records.num_rows // 2)])
    ids, twice = _run_job(conf, again, 6)
    assert ids == once_ids == stats.alert_ids
    assert twice["alerts"] == once["alerts"]  # the same windows: same counts, same events


def test_state_envelope_round_trips():
    seen = {"a": 5, "b": 10}
    packed = jobs._pack_state(seen, b'{"engine": 1}')
    assert jobs._unpack_state(packed) == (seen, b'{"engine": 1}')
    assert jobs._unpack_state(b'{"version": 2}') == ({}, b'{"version": 2}')
    jobs._forget(seen, 3600 * 1_000_000 + 9, 0)
    assert seen == {"b": 10}


def test_anomaly_window_buffers_in_keyed_state_give_the_embedded_alerts(campaign, tmp_path, shared_data):
    """With a model, each model's window buffer is a keyed group (detect.anomaly.windows.stream_step):
    windows cut by micro-batches are scored whole, as the embedded anomaly stage scores them."""
    pytest.importorskip("sklearn")
    from types import SimpleNamespace

    from detect.anomaly.evaluate import train
    from taishi.pipeline import _load_anomaly_models

    cfg = config_mod.load(data_dir=tmp_path / "data")
    train([shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"]).save(
        cfg.data_dir / "models" / "flow-isolation_forest")
    pipe = Pipeline(cfg, bounded=True)
    try:
        stats = pipe.run_files(campaign)
    finally:
        pipe.close()
    models = _load_anomaly_models(cfg.data_dir / "models")
    conf = jobs.JobConf(rules=tuple(str(r) for r in cfg.rules), lateness_s=math.inf,
                        models=SimpleNamespace(value=models))
    ids, counts = _run_job(conf, _records(campaign), 5)
    assert any(a[0] == "anomaly" for a in counts["alerts"].values())  # the model flags some flows
    assert ids == stats.alert_ids
