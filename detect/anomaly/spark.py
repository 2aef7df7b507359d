"""Anomaly scoring on Spark: the embedded scoring code, run on executors.

The model is broadcast once per Spark context; executors call the very same
functions the embedded pipeline calls (:func:`detect.anomaly.model.scoreable`,
:meth:`AnomalyModel.score`, :func:`detect.anomaly.model.anomaly_alerts`), over
Arrow batches (``mapInArrow``, no pandas round trip).

Whole windows: a flow's window features depend on every flow of its
``(source.ip, event-time window)`` (see :mod:`detect.anomaly.features`). A
first ``mapInArrow`` pass keeps the scoreable rows and the columns scoring
reads, and tags each row with a time block of whole windows (its
:func:`features.window_index` // windows per ``block_s``) and an entity bucket
(crc32 of ``source.ip`` mod ``buckets``), both computed in Python by the same
code as the embedded path. The rows are then repartitioned by
``(block, bucket)`` and sorted within partitions, and a second ``mapInArrow``
scores runs of whole keys (:func:`whole_key_chunks`), so each model call holds
whole ``(source.ip, window)`` groups, many of them (a model call has a fixed
cost: one call per group, as ``groupBy().applyInArrow`` makes, was 8x slower
in ``bench/bench_anomaly_spark.py``). Models without window features (DNS
names, ``window_features=False``) skip the shuffle.

API (for batch DataFrames, e.g. inside a streaming job's ``foreachBatch``):

* :func:`score_dataframe(df, model, version) <score_dataframe>` -> DataFrame of
  ``event.id, anomaly.score, anomaly.is_anomaly, anomaly.explanation,
  anomaly.model_version`` (one row per scoreable event);
* :func:`anomaly_alerts_dataframe(df, model, version) <anomaly_alerts_dataframe>`
  -> DataFrame of ``taishi.schema.ALERT_SCHEMA`` rows, the same alerts with
  the same ids as the embedded pipeline raises for the same events.

``df`` holds ECS events with the dotted column names (any subset; at least
``event.id`` and ``@timestamp``). A micro-batch must hold whole windows for the
window features to equal the embedded ones: with bounded input give the whole
input; in a stream keep the embedded window buffer as keyed state
(:func:`detect.anomaly.windows.stream_step`) and score what it releases.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from detect.anomaly import features as F
from detect.anomaly.model import INPUT_COLUMNS, SCORE_SCHEMA, AnomalyModel, anomaly_alerts, scoreable
from detect.anomaly.windows import WIN_COL, model_window_s

BUCKET_COL = "taishi.anomaly.bucket"
VERSION_COL = "anomaly.model_version"
DEFAULT_BUCKETS = 64  # entity buckets per time block: keys to spread one block over partitions
DEFAULT_BLOCK_S = 3600.0  # windows per executor call: model calls have a fixed cost, so group many


def input_schema() -> pa.Schema:
    """The columns scoring reads, with their ``EVENT_SCHEMA`` types."""
    from taishi.schema import EVENT_SCHEMA

    return pa.schema([EVENT_SCHEMA.field(c) for c in INPUT_COLUMNS])


def _prepared_schema() -> pa.Schema:
    return input_schema().append(pa.field(WIN_COL, pa.int64())).append(pa.field(BUCKET_COL, pa.int32()))


def scored_schema() -> pa.Schema:
    return SCORE_SCHEMA.append(pa.field(VERSION_COL, pa.string()))


def entity_bucket(t: pa.Table, buckets: int) -> np.ndarray:
    """crc32(source.ip) mod ``buckets`` per row (null and "" share a bucket, as they share an entity)."""
    src = F._str(t, "source.ip").astype(str)
    uniq, inv = np.unique(src, return_inverse=True)
    b = np.array([zlib.crc32(u.encode()) % buckets for u in uniq], dtype=np.int32)
    return b[inv.reshape(-1)] if len(src) else np.zeros(0, np.int32)


def prepare(model: AnomalyModel, batch: Any, buckets: int = DEFAULT_BUCKETS, block_s: float = DEFAULT_BLOCK_S) -> pa.Table:
    """Scoreable rows of ``batch`` with the input columns typed, tagged with a time block of whole
    windows (``window // k``, ``k`` windows per ``block_s``) and the entity bucket. Each
    ``(block, bucket)`` group holds whole ``(source.ip, window)`` groups."""
    from taishi.schema import conform

    t = conform(scoreable(model, batch), input_schema())
    ws = model_window_s(model)
    k = max(1, int(round(block_s / ws))) if ws else 1
    win = np.floor_divide(F.window_index(t, ws), k) if ws else np.zeros(t.num_rows, np.int64)
    return t.append_column(WIN_COL, pa.array(win, pa.int64())).append_column(
        BUCKET_COL, pa.array(entity_bucket(t, buckets), pa.int32())
    )


def _strip(t: pa.Table) -> pa.Table:
    return t.drop_columns([c for c in (WIN_COL, BUCKET_COL) if c in t.column_names])


def score_table(model: AnomalyModel, rows: pa.Table, version: str) -> pa.Table:
    """Scores of rows that hold whole windows (``scored_schema()``); what each executor call runs."""
    s = model.score(_strip(rows))
    return s.append_column(VERSION_COL, pa.array([version] * s.num_rows, pa.string()))


def alerts_table(model: AnomalyModel, rows: pa.Table, version: str) -> pa.Table:
    from taishi.schema import ALERT_SCHEMA

    a = anomaly_alerts(model, _strip(rows), version)
    return a if a.schema.equals(ALERT_SCHEMA) else a.cast(ALERT_SCHEMA)


# ---------------------------------------------------------------------------
# Spark plumbing

_BROADCASTS: dict[tuple[int, int], tuple[Any, Any]] = {}


def broadcast_model(spark: Any, model: AnomalyModel) -> Any:
    """One broadcast of ``model`` per Spark context (reused across micro-batches)."""
    sc = spark.sparkContext
    key = (id(sc), id(model))
    hit = _BROADCASTS.get(key)
    if hit is None or hit[0] is not model:
        hit = _BROADCASTS[key] = (model, sc.broadcast(model))
    return hit[1]


def spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


# pyspark's mapInArrow/applyInArrow resolve every column by its bare name, which
# fails on ECS dotted names; across the Spark boundary "." travels as "__"
def _safe(name: str) -> str:
    return name.replace(".", "__")


def _ecs(t: pa.Table) -> pa.Table:
    return t.rename_columns([c.replace("__", ".") for c in t.column_names])


def _safe_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_name(_safe(f.name)) for f in schema])


def _input(df: Any) -> Any:
    """``df`` with only the columns scoring reads (fewer bytes to Python), names made safe."""
    from pyspark.sql import functions as sf

    keep = [c for c in df.columns if c in INPUT_COLUMNS]
    return df.select(*[sf.col(f"`{c}`").alias(_safe(c)) for c in keep])


def _windowed(df: Any, model: AnomalyModel, version: str, out: pa.Schema, fn: Any, buckets: int, block_s: float) -> Any:
    bc = broadcast_model(df.sparkSession, model)
    n = buckets

    def prep(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        m = bc.value
        for b in batches:
            yield from _safe_names(prepare(m, _ecs(pa.Table.from_batches([b])), n, block_s)).to_batches()

    prepared = _input(df).mapInArrow(prep, spark_schema(_safe_schema(_prepared_schema())))
    schema = spark_schema(_safe_schema(out))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for t in whole_key_chunks(batches):
            yield from _safe_names(fn(bc.value, _ecs(t), version)).to_batches()

    if model_window_s(model) is not None:  # every (block, bucket) key in one partition, its rows contiguous
        keys = (_safe(WIN_COL), _safe(BUCKET_COL))
        prepared = prepared.repartition(*keys).sortWithinPartitions(*keys)
    return prepared.mapInArrow(run, schema).toDF(*out.names)


CHUNK_ROWS = 65536  # rows per model call: a call has a fixed cost, so score many windows at once


def whole_key_chunks(batches: Iterator[pa.RecordBatch], chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """Tables of about ``chunk_rows`` rows cut only where the (block, bucket) key changes.

    Input: one partition's batches, sorted by key (Spark cuts them by size,
    anywhere). The rows of the last key of a batch may go on in the next one, so
    they are carried over; every table yielded holds whole keys, hence whole
    ``(source.ip, window)`` groups.
    """
    wk, bk = _safe(WIN_COL), _safe(BUCKET_COL)
    pending: list[pa.Table] = []
    held = 0
    carry: pa.Table | None = None
    for b in batches:
        t = pa.Table.from_batches([b])
        if carry is not None:
            t = pa.concat_tables([carry, t])
        if t.num_rows == 0:
            carry = t
            continue
        w, k = t.column(wk).to_numpy(), t.column(bk).to_numpy()
        same = (w == w[-1]) & (k == k[-1])
        cut = int(np.flatnonzero(~same)[-1]) + 1 if (~same).any() else 0  # start of the last key's run
        if cut:
            pending.append(t.slice(0, cut))
            held += cut
        carry = t.slice(cut)
        if held >= chunk_rows:
            yield pa.concat_tables(pending)
            pending, held = [], 0
    if carry is not None and carry.num_rows:
        pending.append(carry)
    if pending:
        yield pa.concat_tables(pending)


def _safe_names(t: pa.Table) -> pa.Table:
    return t.rename_columns([_safe(c) for c in t.column_names])


def score_dataframe(
    df: Any, model: AnomalyModel, version: str, buckets: int = DEFAULT_BUCKETS, block_s: float = DEFAULT_BLOCK_S
) -> Any:
    """Scores of ``df``'s scoreable events: ``event.id``, ``anomaly.score``, ``anomaly.is_anomaly``,
    ``anomaly.explanation`` (JSON, anomalies only), ``anomaly.model_version``.

    ``buckets`` x ``block_s`` only set how work is split across executor calls
    (each call gets whole windows); they do not change any score."""
    return _windowed(df, model, version, scored_schema(), score_table, buckets, block_s)


def anomaly_alerts_dataframe(
    df: Any, model: AnomalyModel, version: str, buckets: int = DEFAULT_BUCKETS, block_s: float = DEFAULT_BLOCK_S
) -> Any:
    """``ALERT_SCHEMA`` rows for the events ``model`` flags: the Spark twin of
    :func:`detect.anomaly.model.anomaly_alerts` (same rows, same ids)."""
    from taishi.schema import ALERT_SCHEMA

    return _windowed(df, model, version, ALERT_SCHEMA, alerts_table, buckets, block_s)


def events_dataframe(spark: Any, table: pa.Table) -> Any:
    """A Spark DataFrame of an ECS Arrow batch, keeping the columns scoring reads (typed)."""
    from taishi.schema import conform

    keep = [c for c in INPUT_COLUMNS if c in table.column_names]
    schema = pa.schema([input_schema().field(c) for c in keep])
    return spark.createDataFrame(conform(table.select(keep), schema), schema=spark_schema(schema))
