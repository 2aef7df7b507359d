"""Anomaly scoring on Spark: flows/s per core, and training time, on one core.

    .venv/bin/python bench/bench_anomaly_spark.py [--records 200000]

The flows of bench_anomaly.py (the labelled Zeek conn log of CTU-Normal-40 day 1,
parsed to ECS and repeated to --records with timestamps shifted per copy). The
process is pinned to one core before Spark starts, so the JVM and its Python
workers inherit the pin; Spark runs ``local[1]`` with one shuffle partition.
Measured: ``detect.anomaly.spark.score_dataframe`` and
``anomaly_alerts_dataframe`` over a cached DataFrame into Spark's ``noop``
sink (the whole plan runs, nothing is written), after a warm-up run on a
slice (Python workers started, model broadcast); the embedded scorer
(whole windows, ``windowed_batches`` + ``AnomalyModel.score``) on the same
flows for comparison; training time of the IsolationForest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402


def flows(records: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    from detect.anomaly.evaluate import _sort_by_time, load_zeek

    t, y, _ = _sort_by_time(*load_zeek(SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"))
    span = pc.cast(pc.subtract(pc.max(t.column("@timestamp")), pc.min(t.column("@timestamp"))), pa.int64()).as_py() + 1
    parts = []
    for i in range(-(-records // t.num_rows)):
        ts = pc.add(t.column("@timestamp"), pa.scalar(i * span, pa.duration("us")))
        copy = t.set_column(t.column_names.index("@timestamp"), "@timestamp", ts)
        ids = pc.binary_join_element_wise(copy.column("event.id"), pa.scalar(f"-{i}"), "")  # unique ids per copy
        parts.append(copy.set_column(copy.column_names.index("event.id"), "event.id", ids))
    return t, y, pa.concat_tables(parts).slice(0, records)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    pin_one_core()
    from pyspark.sql import SparkSession

    from detect.anomaly import spark as S
    from detect.anomaly.model import AnomalyModel
    from detect.anomaly.windows import windowed_batches

    train_t, y, big = flows(args.records)
    m = AnomalyModel(kind="flow", algorithm="isolation_forest")
    t0 = time.perf_counter()
    X, cls = m.features(train_t)
    m.fit(X, y, classes=cls)
    train_s = time.perf_counter() - t0

    spark = (SparkSession.builder.master("local[1]").appName("bench-anomaly-spark")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "1")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.python.worker.reuse", "true")
             .config("spark.driver.memory", "2g")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = S.events_dataframe(spark, big).cache()
        df.count()
        warm = S.events_dataframe(spark, big.slice(0, 2000))
        S.score_dataframe(warm, m, "bench").write.format("noop").mode("overwrite").save()
        S.anomaly_alerts_dataframe(warm, m, "bench").write.format("noop").mode("overwrite").save()

        t0 = time.perf_counter()
        S.score_dataframe(df, m, "bench").write.format("noop").mode("overwrite").save()
        score_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        S.anomaly_alerts_dataframe(df, m, "bench").write.format("noop").mode("overwrite").save()
        alerts_s = time.perf_counter() - t0
    finally:
        spark.stop()

    t0 = time.perf_counter()
    n_emb = sum(m.score(w).num_rows for w in windowed_batches(m, big.to_batches(max_chunksize=8192)))
    emb_s = time.perf_counter() - t0

    report(
        "anomaly_spark_flow_isolation_forest",
        {
            "records": big.num_rows,
            "spark_master": "local[1]",
            "spark_score_flows_per_s_per_core": round(big.num_rows / score_s),
            "spark_alerts_flows_per_s_per_core": round(big.num_rows / alerts_s),
            "embedded_windowed_flows_per_s_per_core": round(n_emb / emb_s),
            "train_rows": train_t.num_rows,
            "train_s": round(train_s, 3),
            "driver_peak_rss_mb": round(peak_rss_mb()),
        },
    )


if __name__ == "__main__":
    main()
