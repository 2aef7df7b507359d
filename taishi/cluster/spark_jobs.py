"""Cluster mode's data path on Spark Structured Streaming.

One streaming query, the *detect job*, reads Kafka and runs the embedded
pipeline's own stage code on executors::

    Kafka raw.<format>, events, control
      -> mapInArrow: ingest.parsers.parse (raw records -> ECS events + dead letters),
                     compliance.inventory.enrich (broadcast inventory),
                     RuleSet.match / RuleSet.to_alerts (single-event Sigma rules)
      -> groupBy(key).applyInPandasWithState:
             "corr:<rule id>"  one CorrelationEngine per Sigma correlation rule, its
                               snapshot the group's state (correlate.sigma_correlation)
             "anomaly:<model>" one event-time window buffer per anomaly model (broadcast),
                               whole windows scored as they close
                               (detect.anomaly.windows.stream_step)
             anything else     passed through unchanged
      -> foreachBatch: executors write events, alerts and dead letters to the
                       search store (document id = Taishi id) and alerts and dead
                       letters to the Kafka ``alerts`` / ``deadletter`` topics
                       (alerts first get taishi.enrich.enrich_alerts: CII assets,
                       source geo, risk score -- the embedded store stage's call)

Spark moves Arrow batches between the steps as the embedded bus does: a row of
the job's internal schema (``kind, key, payload, aux, max_ts, flush``) carries
one Arrow IPC batch (events, alerts, dead letters, or one correlation's
matched events with their matches), not one row per event, so the ~130 ECS
columns never become Spark columns.

Correlation state
-----------------
Each correlation rule is one group of Spark's keyed state; its state is the
rule's ``CorrelationEngine.snapshot()``. Every micro-batch hands each rule its
matched events (and, in a stream, a heartbeat with the batch's newest
``@timestamp``, so the watermark moves with all events as in the embedded
detector) in one ``process`` call, so the result does not depend on how Spark
cut the batch. Bounded input (``taishi ingest``) uses an infinite allowed
lateness, like the embedded bounded run, and ends with a ``flush`` control
record on the ``control`` topic: each rule's group then closes its windows.

Exactly once, in effect
-----------------------
Kafka offsets and the keyed state are checkpointed together by Spark (the
checkpoint directory); a restarted query re-runs the last unfinished
micro-batch with the same input and the same state. Every output has a
deterministic id (``taishi.ids``) and the search store writes by id, so a
re-run batch, or a replay from the earliest offsets with a fresh checkpoint,
overwrites documents instead of adding them.

Incidents: a second query reads the ``alerts`` topic and runs
``correlate.incidents.build`` in one keyed group (incidents link across
entities), writing ``taishi-incidents`` and the ``incidents`` topic.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from taishi.bus import TOPIC_ALERTS, TOPIC_DEADLETTER, TOPIC_EVENTS
from taishi.cluster.kafka_bus import TOPIC_CONTROL, decode_raw, decode_rows, kafka_settings, topic_prefix
from taishi.config import REPO_ROOT, Config
from taishi.schema import ALERT_SCHEMA, DEADLETTER_SCHEMA, EVENT_SCHEMA, conform, deadletters_table

STAGE_DDL = "kind string, key string, payload binary, aux binary, max_ts long, flush boolean"
STATE_DDL = "snapshot binary"
STATS_DDL = "stats string"

EVENTS, ALERTS, DEADLETTERS, CORR, ANOMALY = "events", "alerts", "deadletters", "corr", "anomaly"
_SCHEMA = {EVENTS: EVENT_SCHEMA, ALERTS: ALERT_SCHEMA, DEADLETTERS: DEADLETTER_SCHEMA}
_IPC = ipc.IpcWriteOptions(compression="lz4")


def source_pattern(cfg: Config) -> str:
    """The detect job's topics: every ``raw.<format>``, ``events`` (packet captures) and ``control``."""
    import re

    p = re.escape(topic_prefix(cfg))
    return rf"{p}raw\..*|{p}events|{p}control"


# --------------------------------------------------------------------------- Arrow <-> bytes
def to_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema, options=_IPC) as w:
        w.write_table(table)
    return sink.getvalue()


def from_ipc(data: bytes) -> pa.Table:
    return ipc.open_stream(pa.BufferReader(data)).read_all()


# --------------------------------------------------------------------------- what executors need
@dataclass(frozen=True)
class JobConf:
    """Everything a task needs, small and picklable (rules travel as paths, loaded once per worker)."""

    rules: tuple[str, ...]
    lateness_s: float  # inf: bounded input (windows close at the flush control record)
    cfg_file: str | None = None  # taishi.yaml, to rebuild the Config on executors
    data_dir: str = "taishi-data"
    cluster: str = "{}"  # cfg.cluster as JSON
    retention: str = "{}"  # cfg.retention_days as JSON (the search store's policies)
    inventory: Any = None  # Spark broadcast of compliance.inventory.Inventory (or None)
    models: Any = None  # Spark broadcast of [(model version, detect.anomaly AnomalyModel)] (or None)

    def config(self) -> Config:
        cfg = Config()
        cfg.data_dir = Path(self.data_dir)
        cfg.rules = [Path(r) for r in self.rules]
        cfg.cluster = json.loads(self.cluster)
        cfg.retention_days.update(json.loads(self.retention))
        return cfg


_WORKER: dict[Any, Any] = {}  # per Python worker: rule sets, search stores, Kafka producers


def _ruleset(rules: tuple[str, ...]):
    key = ("rules", rules)
    rs = _WORKER.get(key)
    if rs is None:
        from detect.sigma import RuleSet

        rs = _WORKER[key] = RuleSet.load([Path(r) for r in rules])
    return rs


def _search(conf: JobConf):
    key = ("search", conf.cluster)
    st = _WORKER.get(key)
    if st is None:
        st = _WORKER[key] = open_search(conf.config())
    return st


def _kafka(conf: JobConf):
    key = ("kafka", conf.cluster)
    kb = _WORKER.get(key)
    if kb is None:
        from taishi.cluster.kafka_bus import KafkaBus

        cfg = conf.config()
        kb = _WORKER[key] = KafkaBus(cfg, client_id="taishi-spark", keep_meta=False)
    return kb


def open_search(cfg: Config):
    """The search store of ``cfg`` (``taishi.cluster.search``)."""
    from taishi.cluster import search

    return search.SearchStore.from_config(cfg)


# --------------------------------------------------------------------------- stage 1: parse + match
def _task_partition() -> int:
    from pyspark import TaskContext

    tc = TaskContext.get()
    return tc.partitionId() if tc is not None else 0


def _kafka_deadletters(topics: list[str], partitions: list[int], offsets: list[int], values: list[bytes | None],
                       bad: list[tuple[int, int, str]]) -> pa.Table:
    """Dead letters for Kafka records that are not what their topic carries."""
    from taishi import ids
    from ingest.parsers import deadletter

    rows = []
    for i, _local, reason in bad:
        original = (values[i] or b"").decode("utf-8", "replace")
        src = f"kafka:{topics[i]}/{partitions[i]}"
        rows.append({**deadletter(src, offsets[i], original, reason), "stage": "read",
                     "id": ids.deadletter_id(src, offsets[i], "read", original)})
    return deadletters_table(rows)


def _unprefixed(conf: JobConf, topics: list[str]) -> list[str]:
    """Topic names as the bus names them (the deployment's ``topic_prefix`` removed)."""
    prefix = str((json.loads(conf.cluster).get("kafka") or {}).get("topic_prefix") or "")
    return [t[len(prefix):] if prefix and t.startswith(prefix) else t for t in topics]


def _row(kind: str, key: str, payload: bytes | None = None, aux: bytes | None = None,
         max_ts: int | None = None, flush: bool = False) -> dict:
    return {"kind": kind, "key": key, "payload": payload, "aux": aux, "max_ts": max_ts, "flush": flush}


def stage_rows(conf: JobConf, batch: pa.Table, partition: int = 0) -> list[dict]:
    """One Kafka record batch (topic, partition, offset, value) -> the job's internal rows.

    Pure apart from the rule-set cache: parse, enrich and single-event detection,
    plus each correlation rule's share of the matches.
    """
    from ingest.parsers import parse as parse_raw

    rs = _ruleset(conf.rules)
    topics = _unprefixed(conf, batch.column("topic").to_pylist())
    parts = batch.column("partition").to_pylist()
    offsets = batch.column("offset").to_pylist()
    values = batch.column("value").to_pylist()
    by_topic: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(topics):
        by_topic[t].append(i)
    events: list[pa.Table] = []
    dls: list[pa.Table] = []
    bad: list[tuple[int, int, str]] = []
    flush = False
    for topic in sorted(by_topic):
        idx = by_topic[topic]
        vals = [values[i] for i in idx]
        if topic.startswith("raw."):
            raw, wrong = decode_raw(vals)
            bad.extend((idx[j], j, why) for j, why in wrong)
            if raw.num_rows:
                try:
                    res = parse_raw(topic[4:], raw)
                except ValueError as exc:  # no parser for this format: every record is a dead letter
                    from ingest.parsers import deadletter, raw_rows

                    dls.append(deadletters_table([deadletter(s, o, orig or "", str(exc)) for s, o, _p, _h, orig
                                                  in raw_rows(raw)]))
                    continue
                events.append(res.events)
                dls.append(res.deadletters)
        elif topic == TOPIC_EVENTS:  # events produced as events (packet captures)
            t, wrong = decode_rows(TOPIC_EVENTS, vals)
            bad.extend((idx[j], j, why) for j, why in wrong)
            events.append(t)
        elif topic == TOPIC_CONTROL:
            for v in vals:
                try:
                    flush |= json.loads(v).get("control") == "flush"
                except (ValueError, AttributeError, TypeError):
                    pass
    if bad:
        dls.append(_kafka_deadletters(topics, parts, offsets, values, bad))
    out: list[dict] = []
    ev = pa.concat_tables([conform(e) for e in events]) if events else EVENT_SCHEMA.empty_table()
    if ev.num_rows:
        matches = rs.match(ev)
        single = rs.to_alerts(ev, matches)
        stored = ev
        inv = conf.inventory.value if conf.inventory is not None else None
        if inv is not None:
            from compliance.inventory import enrich

            stored = enrich(ev, inv)
        out.append(_row(EVENTS, f"{EVENTS}:{partition}", to_ipc(stored)))
        if single.num_rows:
            out.append(_row(ALERTS, f"{ALERTS}:{partition}", to_ipc(single)))
        out.extend(_correlation_rows(conf, rs, ev, matches))
        out.extend(_anomaly_rows(conf, ev))
    dl = [d for d in dls if d.num_rows]
    if dl:
        out.append(_row(DEADLETTERS, f"{DEADLETTERS}:{partition}", to_ipc(pa.concat_tables(dl))))
    if flush:
        out.extend(_row(CORR, f"{CORR}:{c.id}", flush=True) for c in rs.correlations)
        out.extend(_row(ANOMALY, f"{ANOMALY}:{v}", flush=True) for v, _m in _models(conf))
    return out


def _models(conf: JobConf) -> list:
    return conf.models.value if conf.models is not None else []


def _anomaly_rows(conf: JobConf, events: pa.Table) -> list[dict]:
    """Per anomaly model: the batch's events (the columns scoring reads) for the model's window buffer."""
    models = _models(conf)
    if not models:
        return []
    from detect.anomaly.model import INPUT_COLUMNS

    payload = to_ipc(events.select([c for c in INPUT_COLUMNS if c in events.column_names]))
    return [_row(ANOMALY, f"{ANOMALY}:{v}", payload) for v, _m in models]


def _correlation_rows(conf: JobConf, rs, events: pa.Table, matches: pa.Table) -> list[dict]:
    """Per correlation rule: the events its referenced rules matched, with those matches
    (``event.row`` renumbered), and the batch's newest @timestamp (the watermark heartbeat)."""
    ts = events.column("@timestamp")
    mx = pc.max(ts).as_py()
    max_us = None if mx is None else int(pc.max(pc.cast(ts, pa.int64())).as_py())
    streaming = not math.isinf(conf.lateness_s)
    out = []
    mrule = matches.column("rule.id")
    mrow = matches.column("event.row").to_numpy(zero_copy_only=False).astype(np.int64)
    for c in rs.correlations:
        refs = pa.array(sorted(set(c.rule_ids or c.rule_refs)), pa.string())
        sel = pc.fill_null(pc.is_in(mrule, value_set=refs), False).to_numpy(zero_copy_only=False)
        if not sel.any():
            if streaming and max_us is not None:
                out.append(_row(CORR, f"{CORR}:{c.id}", max_ts=max_us))
            continue
        rows = np.unique(mrow[sel])
        sub = events.take(pa.array(rows, pa.int64()))
        m = matches.filter(pa.array(sel))
        renum = np.searchsorted(rows, m.column("event.row").to_numpy(zero_copy_only=False).astype(np.int64))
        m = pa.table({"rule.id": m.column("rule.id"), "event.row": pa.array(renum, pa.int64())})
        out.append(_row(CORR, f"{CORR}:{c.id}", to_ipc(sub), to_ipc(m), max_us))
    return out


def stage_fn(conf: JobConf) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of the first step."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        partition = _task_partition()
        for rb in batches:
            rows = stage_rows(conf, pa.Table.from_batches([rb]), partition)
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=_stage_schema())

    return run


def _stage_schema() -> pa.Schema:
    return pa.schema([("kind", pa.string()), ("key", pa.string()), ("payload", pa.binary()), ("aux", pa.binary()),
                      ("max_ts", pa.int64()), ("flush", pa.bool_())])


# --------------------------------------------------------------------------- stage 2: keyed state
def correlate_rows(conf: JobConf, cid: str, state: bytes | None, rows: Iterable[dict]) -> tuple[bytes, list[dict]]:
    """One correlation rule's micro-batch: state in, its rows in -> state out, alert/dead-letter rows out.

    The engine is :class:`correlate.sigma_correlation.CorrelationEngine` with
    just this rule; all of the batch's events go through one ``process`` call.
    """
    from correlate.sigma_correlation import CorrelationEngine

    rs = _ruleset(conf.rules)
    spec = next(c for c in rs.correlations if c.id == cid)
    evs: list[pa.Table] = []
    ms: list[pa.Table] = []
    base = 0
    max_ts: int | None = None
    flush = False
    for r in rows:
        flush |= bool(r.get("flush"))
        if r.get("max_ts") is not None:
            max_ts = r["max_ts"] if max_ts is None else max(max_ts, r["max_ts"])
        if r.get("payload") is None:
            continue
        e, m = from_ipc(r["payload"]), from_ipc(r["aux"])
        ms.append(pa.table({"rule.id": m.column("rule.id"),
                            "event.row": pc.add(m.column("event.row"), pa.scalar(base, pa.int64()))}))
        evs.append(e)
        base += e.num_rows
    events = pa.concat_tables([conform(e) for e in evs]) if evs else EVENT_SCHEMA.empty_table()
    matches = (pa.concat_tables(ms) if ms else
               pa.table({"rule.id": pa.array([], pa.string()), "event.row": pa.array([], pa.int64())}))
    seen, snapshot = _unpack_state(state)
    events, matches = _unseen(events, matches, seen)
    if max_ts is not None:  # heartbeat: the watermark follows every event of the batch, matched or not
        hb = pa.table({"@timestamp": pa.array([max_ts], pa.int64()).cast(EVENT_SCHEMA.field("@timestamp").type)})
        events = pa.concat_tables([events, conform(hb)])
    engine = (CorrelationEngine.restore([spec], snapshot, conf.lateness_s) if snapshot
              else CorrelationEngine([spec], conf.lateness_s))
    res = engine.process(events, matches)
    alerts = [res.alerts]
    if flush:
        alerts.append(engine.flush().alerts)
    if flush or not math.isinf(conf.lateness_s):  # bounded input keeps every id until its windows closed
        _forget(seen, engine.max_ts_us, spec.timespan_s + (0 if math.isinf(conf.lateness_s) else conf.lateness_s))
    out = []
    a = pa.concat_tables(alerts)
    if a.num_rows:
        out.append(_row(ALERTS, f"{CORR}:{cid}", to_ipc(a)))
    if res.late.num_rows:
        out.append(_row(DEADLETTERS, f"{CORR}:{cid}", to_ipc(late_deadletters(res.late, engine, conf.lateness_s))))
    return _pack_state(seen, engine.snapshot()), out


def anomaly_rows(conf: JobConf, version: str, state: bytes | None, rows: Iterable[dict]) -> tuple[bytes, list[dict]]:
    """One anomaly model's micro-batch: its event-time window buffer as keyed state
    (``detect.anomaly.windows.stream_step``, the embedded stage's buffer): whole windows are scored
    once the watermark (or the flush of bounded input) closes them."""
    from detect.anomaly.windows import stream_step

    model = dict(_models(conf))[version]
    tables, flush = [], False
    for r in rows:
        flush |= bool(r.get("flush"))
        if r.get("payload") is not None:
            tables.append(from_ipc(r["payload"]))
    events = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    if events.num_rows == 0:
        events = conform(events)
    snap, alerts = stream_step(model, version, state, events, lateness_s=conf.lateness_s, flush=flush)
    return snap, ([_row(ALERTS, f"{ANOMALY}:{version}", to_ipc(alerts))] if alerts.num_rows else [])


# A correlation group's state: the engine snapshot, and the ids of the events it has taken (with their
# time), so an event delivered twice -- a collector re-sending a batch after a crash -- counts once.
_STATE_MAGIC = b"TSC1"
SEEN_HORIZON_S = 3600  # ids are kept this long (event time) beyond the rule's timespan and lateness


def _pack_state(seen: dict[str, int], snapshot: bytes) -> bytes:
    head = json.dumps(seen, separators=(",", ":")).encode()
    return _STATE_MAGIC + len(head).to_bytes(8, "big") + head + snapshot


def _unpack_state(state: bytes | None) -> tuple[dict[str, int], bytes | None]:
    if not state:
        return {}, None
    if not state.startswith(_STATE_MAGIC):  # a bare engine snapshot
        return {}, state
    n = int.from_bytes(state[4:12], "big")
    return json.loads(state[12:12 + n]), state[12 + n:]


def _unseen(events: pa.Table, matches: pa.Table, seen: dict[str, int]) -> tuple[pa.Table, pa.Table]:
    """``events`` without the ones taken before (by ``event.id``) or twice in this batch, matches renumbered;
    the new ids are added to ``seen``."""
    if events.num_rows == 0:
        return events, matches
    ids = events.column("event.id").to_pylist()
    ts = pc.cast(events.column("@timestamp"), pa.int64()).to_pylist()
    keep = []
    for i, (eid, t) in enumerate(zip(ids, ts)):
        if eid is not None:
            if eid in seen:
                continue
            seen[eid] = t if t is not None else 0
        keep.append(i)
    if len(keep) == events.num_rows:
        return events, matches
    where = np.full(events.num_rows, -1, dtype=np.int64)
    where[keep] = np.arange(len(keep))
    rows = where[matches.column("event.row").to_numpy(zero_copy_only=False).astype(np.int64)]
    ok = rows >= 0
    matches = pa.table({"rule.id": matches.column("rule.id").filter(pa.array(ok)), "event.row": pa.array(rows[ok])})
    return events.take(pa.array(keep, pa.int64())), matches


def _forget(seen: dict[str, int], max_ts_us: int | None, span_s: float) -> None:
    if max_ts_us is None:
        return
    cut = max_ts_us - int((span_s + SEEN_HORIZON_S) * 1_000_000)
    for eid in [e for e, t in seen.items() if t < cut]:
        del seen[eid]


def late_deadletters(late: pa.Table, engine, lateness_s: float) -> pa.Table:
    """The embedded detect stage's dead letters for late events (``Pipeline._late_deadletters``,
    called with this engine's watermark)."""
    from datetime import datetime, timedelta, timezone

    from taishi.pipeline import Pipeline

    wm_us = engine.watermark_us
    wm = None if wm_us is None else datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=wm_us)
    shim = SimpleNamespace(detector=SimpleNamespace(watermark=wm), cfg=SimpleNamespace(allowed_lateness_s=lateness_s))
    return Pipeline._late_deadletters(shim, late)


def state_fn(conf: JobConf):
    """The ``applyInPandasWithState`` function: correlation groups keep state, others pass through."""
    import pandas as pd

    cols = ["kind", "key", "payload", "aux", "max_ts", "flush"]

    def run(key: tuple, pdfs: Iterator[Any], state: Any) -> Iterator[Any]:
        k = key[0]
        kind, _, name = k.partition(":")
        if kind not in (CORR, ANOMALY):
            for pdf in pdfs:
                yield pdf[cols]
            return
        rows: list[dict] = []
        for pdf in pdfs:
            for r in pdf.to_dict("records"):
                rows.append({c: (None if isinstance(v, float) and math.isnan(v) else v) for c, v in r.items()})
        prev = bytes(state.get[0]) if state.exists else None
        step = correlate_rows if kind == CORR else anomaly_rows
        snap, out = step(conf, name, prev, rows)
        state.update((snap,))
        if out:
            yield pd.DataFrame(out, columns=cols)

    return run


# --------------------------------------------------------------------------- sink
def write_rows(conf: JobConf, rows: Iterable[dict], *, to_kafka: bool = True) -> dict:
    """Write the job's output rows (events, alerts, dead letters) and return what was written.

    Search documents are keyed by the Taishi id (a re-run writes the same
    documents); alerts and dead letters also go to their Kafka topics.
    """
    store = _search(conf)
    kb = _kafka(conf) if to_kafka else None
    st: dict[str, Any] = {"events": 0, "events_stored": 0, "alerts": [], "alerts_stored": 0, "deadletters": 0,
                          "late_events": 0, "by_dataset": Counter(), "deadletter_reasons": Counter()}
    with store.one_refresh():  # one refresh for the whole write, not a refresh wait per bulk request
        for r in rows:
            kind, payload = r["kind"], r["payload"]
            if payload is None or kind not in _SCHEMA:
                continue
            t = from_ipc(payload)
            if kind == EVENTS:
                st["events"] += t.num_rows
                st["events_stored"] += _written(store.write_events(t), t)
                from taishi.pipeline import _value_counts

                for k, v in _value_counts(t, "event.dataset"):
                    st["by_dataset"][k] += v
            elif kind == ALERTS:  # stored and sent on with their assets, source geo and risk (as embedded)
                from taishi.enrich import enrich_alerts

                t = enrich_alerts(t, conf.inventory.value if conf.inventory is not None else None)
                st["alerts_stored"] += _written(store.write_alerts(t), t)
                if kb is not None:
                    kb.produce(TOPIC_ALERTS, t)
                st["alerts"].extend(t.select(["id", "rule.level", "rule.name", "threat.technique.id"]).to_pylist())
            elif kind == DEADLETTERS:
                store.write_deadletters(t)
                if kb is not None:
                    kb.produce(TOPIC_DEADLETTER, t)
                st["deadletters"] += t.num_rows
                from taishi.pipeline import _reason_kind

                for reason, stage in zip(t.column("reason").to_pylist(), t.column("stage").to_pylist()):
                    st["deadletter_reasons"][_reason_kind(reason)] += 1
                    st["late_events"] += stage == "correlate"
    return st


def _written(result: Any, t: pa.Table) -> int:
    return int(result) if isinstance(result, (int, np.integer)) else t.num_rows


def write_fn(conf: JobConf) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` over a micro-batch's output: executors write, the driver gets the counts."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows: list[dict] = []
        for rb in batches:
            rows.extend(rb.to_pylist())
        st = write_rows(conf, rows)
        yield pa.RecordBatch.from_pylist([{"stats": json.dumps(st, default=dict)}], schema=pa.schema([("stats", pa.string())]))

    return run


@dataclass
class JobStats:
    """What the detect job wrote, summed over micro-batches (on the driver)."""

    batches: int = 0
    events: int = 0
    events_stored: int = 0
    alerts_stored: int = 0
    deadletters: int = 0
    late_events: int = 0
    alerts: dict[str, dict] = field(default_factory=dict)  # id -> {rule.level, rule.name, threat.technique.id}
    by_dataset: Counter = field(default_factory=Counter)
    deadletter_reasons: Counter = field(default_factory=Counter)

    def add(self, st: dict) -> None:
        self.events += st["events"]
        self.events_stored += st["events_stored"]
        self.alerts_stored += st["alerts_stored"]
        self.deadletters += st["deadletters"]
        self.late_events += st["late_events"]
        for a in st["alerts"]:
            self.alerts[a["id"]] = a
        self.by_dataset.update(st["by_dataset"])
        self.deadletter_reasons.update(st["deadletter_reasons"])


# --------------------------------------------------------------------------- session and query
def spark_settings(cfg: Config) -> dict[str, Any]:
    return {"master": "local[2]", **(cfg.cluster.get("spark") or {})}


def session(cfg: Config, app: str = "taishi"):
    """A Spark session with the Kafka source (``spark-sql-kafka-0-10`` from Maven Central, cached)."""
    import pyspark
    from pyspark.sql import SparkSession

    s = spark_settings(cfg)
    ivy = Path(s.get("ivy") or os.environ.get("TAISHI_IVY_DIR") or REPO_ROOT / ".cache" / "ivy")
    pkg = f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}"
    b = (SparkSession.builder.master(str(s["master"])).appName(app)
         .config("spark.jars.packages", pkg)
         .config("spark.jars.ivy", str(ivy))
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")  # the CLI draws its own progress
         .config("spark.sql.shuffle.partitions", str(s.get("shuffle_partitions", 4)))
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.execution.arrow.pyspark.enabled", "true")
         .config("spark.python.worker.reuse", "true")
         .config("spark.sql.streaming.stateStore.stateSchemaCheck", "true"))
    if str(s["master"]).startswith("local"):
        # local executors run this very interpreter (the venv's), whatever `python3` is on PATH;
        # pyspark's SparkContext reads the worker's interpreter from PYSPARK_PYTHON only
        os.environ["PYSPARK_PYTHON"] = str(s.get("python") or os.environ.get("PYSPARK_PYTHON") or sys.executable)
    for k, v in (s.get("conf") or {}).items():
        b = b.config(str(k), str(v))
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel(str(s.get("log_level", "ERROR")))
    return spark


def job_conf(spark, cfg: Config, *, bounded: bool, models: list | None = None) -> JobConf:
    """What the tasks need; the inventory and the anomaly ``models`` ([(version, model)]) are broadcast."""
    inv = None
    from compliance.inventory import Inventory

    if Inventory.file(cfg.data_dir).exists():
        inv = spark.sparkContext.broadcast(Inventory.open(cfg.data_dir))
    return JobConf(
        rules=tuple(str(Path(r).resolve()) for r in cfg.rules),
        lateness_s=math.inf if bounded else float(cfg.allowed_lateness_s),
        data_dir=str(Path(cfg.data_dir).resolve()),
        cluster=json.dumps(cfg.cluster, sort_keys=True),
        retention=json.dumps(cfg.retention_days, sort_keys=True),
        inventory=inv,
        models=spark.sparkContext.broadcast(list(models)) if models else None,
    )


def checkpoint_dir(cfg: Config, name: str = "detect") -> Path:
    base = spark_settings(cfg).get("checkpoint")
    return Path(base) / name if base else cfg.state_dir / "spark" / name


def kafka_source(spark, cfg: Config):
    """A Kafka ``readStream`` on the deployment's broker, with ``cluster.spark.kafka_source`` options
    (Spark's Kafka source options, e.g. ``kafkaConsumer.pollTimeoutMs``, ``fetchOffset.numRetries``,
    ``kafka.default.api.timeout.ms``: how long a broker outage stalls a query before it fails it and
    the runner restarts it from its checkpoint, ``taishi.cluster.runner.SupervisedQuery``)."""
    reader = spark.readStream.format("kafka").option("kafka.bootstrap.servers", str(kafka_settings(cfg)["bootstrap"]))
    for k, v in (spark_settings(cfg).get("kafka_source") or {}).items():
        reader = reader.option(str(k), str(v))
    return reader


def detect_query(spark, cfg: Config, conf: JobConf, *, on_batch: Callable[[dict], None] | None = None,
                 available_now: bool = True, checkpoint: Path | None = None, trigger_s: float = 2.0,
                 max_offsets: int | None = None):
    """Start the detect job (see module doc); returns the ``StreamingQuery``."""
    from pyspark.sql.streaming.state import GroupStateTimeout

    reader = (kafka_source(spark, cfg)
              .option("subscribePattern", source_pattern(cfg))
              .option("startingOffsets", "earliest")
              .option("failOnDataLoss", "true"))
    if max_offsets:
        reader = reader.option("maxOffsetsPerTrigger", str(max_offsets))
    src = reader.load().select("topic", "partition", "offset", "value")
    staged = src.mapInArrow(stage_fn(conf), STAGE_DDL)
    out = staged.groupBy("key").applyInPandasWithState(
        state_fn(conf), STAGE_DDL, STATE_DDL, "append", GroupStateTimeout.NoTimeout)

    def sink(df, batch_id: int) -> None:
        for row in df.mapInArrow(write_fn(conf), STATS_DDL).collect():
            if on_batch:
                on_batch(json.loads(row["stats"]))

    w = (out.writeStream.foreachBatch(sink).outputMode("append")
         .option("checkpointLocation", str(checkpoint or checkpoint_dir(cfg))))
    w = w.trigger(availableNow=True) if available_now else w.trigger(processingTime=f"{trigger_s} seconds")
    return w.queryName("taishi-detect").start()


def run_until_idle(query, timeout_s: float | None = None) -> None:
    """Wait for an available-now query to finish (re-raising its error)."""
    if timeout_s is None:
        query.awaitTermination()
    else:
        query.awaitTermination(timeout_s)
    exc = query.exception()
    if exc is not None:
        raise RuntimeError(f"Spark query {query.name} failed: {exc}")


# --------------------------------------------------------------------------- incidents job
INCIDENTS_KEY = "incidents"
INCIDENTS_DDL = "kind string, payload binary"


def incident_rows(conf: JobConf, batch: pa.Table) -> list[dict]:
    """Kafka ``alerts``/``control`` records -> the incidents group's input rows (alerts as stored,
    with the CII asset columns, as the embedded pipeline hands them to its incident stage)."""
    topics = _unprefixed(conf, batch.column("topic").to_pylist())
    values = batch.column("value").to_pylist()
    alerts = [v for t, v in zip(topics, values) if t == TOPIC_ALERTS]
    flush = False
    for t, v in zip(topics, values):
        if t == TOPIC_CONTROL:
            try:
                flush |= json.loads(v).get("control") == "flush"
            except (ValueError, AttributeError, TypeError):
                pass
    out = []
    if alerts:  # they carry their CII asset columns: the detect job enriched them (taishi.enrich.enrich_alerts)
        t, _bad = decode_rows(TOPIC_ALERTS, alerts)  # undecodable alerts cannot come from the detect job
        out.append({"kind": ALERTS, "payload": to_ipc(t)})
    if flush:
        out.append({"kind": "flush", "payload": None})
    return out


def build_incidents(conf: JobConf, state: bytes | None, rows: Iterable[dict]) -> tuple[bytes, list[dict]]:
    """The incidents group's micro-batch: ``correlate.incidents.build`` over all its alerts at once."""
    from correlate.incidents import build
    from taishi.incidents import builder_lateness

    tables, flush = [], False
    for r in rows:
        if r["kind"] == "flush":
            flush = True
        elif r.get("payload") is not None:
            tables.append(from_ipc(r["payload"]))
    alerts = pa.concat_tables(tables, promote_options="default") if tables else ALERT_SCHEMA.empty_table()
    return build(state, alerts, flush=flush, allowed_lateness_s=builder_lateness(conf.lateness_s))


def incidents_stage_fn(conf: JobConf):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = pa.schema([("kind", pa.string()), ("payload", pa.binary())])
        for rb in batches:
            rows = incident_rows(conf, pa.Table.from_batches([rb]))
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)

    return run


def incidents_state_fn(conf: JobConf):
    import pandas as pd

    def run(key: tuple, pdfs: Iterator[Any], state: Any) -> Iterator[Any]:
        rows = [r for pdf in pdfs for r in pdf.to_dict("records")]
        prev = bytes(state.get[0]) if state.exists else None
        snap, out = build_incidents(conf, prev, rows)
        state.update((snap,))
        if out:
            yield pd.DataFrame([{"kind": INCIDENTS_KEY, "payload": json.dumps(out).encode()}])

    return run


def incidents_query(spark, cfg: Config, conf: JobConf, *, on_batch: Callable[[int], None] | None = None,
                    available_now: bool = True, checkpoint: Path | None = None, trigger_s: float = 5.0):
    """Start the incidents job: Kafka ``alerts`` -> one keyed group -> ``taishi-incidents`` and ``incidents``."""
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout

    prefix = topic_prefix(cfg)
    src = (kafka_source(spark, cfg)
           .option("subscribe", f"{prefix}{TOPIC_ALERTS},{prefix}{TOPIC_CONTROL}")
           .option("startingOffsets", "earliest")
           .load().select("topic", "value"))
    staged = src.mapInArrow(incidents_stage_fn(conf), INCIDENTS_DDL).withColumn("key", F.lit(INCIDENTS_KEY))
    out = staged.groupBy("key").applyInPandasWithState(
        incidents_state_fn(conf), INCIDENTS_DDL, STATE_DDL, "append", GroupStateTimeout.NoTimeout)

    def sink(df, batch_id: int) -> None:
        from correlate.incidents import merge_outputs

        outs = [json.loads(r["payload"]) for r in df.collect()]
        incidents = merge_outputs(*outs) if outs else []
        if incidents:
            write_incidents(conf, incidents)
        if on_batch:
            on_batch(len(incidents))

    w = (out.writeStream.foreachBatch(sink).outputMode("append")
         .option("checkpointLocation", str(checkpoint or checkpoint_dir(cfg, "incidents"))))
    w = w.trigger(availableNow=True) if available_now else w.trigger(processingTime=f"{trigger_s} seconds")
    return w.queryName("taishi-incidents").start()


def write_incidents(conf: JobConf, incidents: list[dict]) -> None:
    """Incidents to the search store (by id; workflow fields are the store's) and the ``incidents`` topic."""
    from taishi.bus import TOPIC_INCIDENTS

    _search(conf).write_incidents(incidents)
    _kafka(conf).send_rows(TOPIC_INCIDENTS, incidents)
