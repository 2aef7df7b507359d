"""Anomaly scoring throughput and training time, on one core.

    .venv/bin/python bench/bench_anomaly.py [--records 200000]

Flows: the labelled Zeek conn log of CTU-Normal-40 day 1 (stratosphere_sdt/008)
parsed to ECS and repeated to --records (timestamps shifted per copy, so the
entity/window features see realistic windows). DNS: the netrack query names.
Prints flows/s for ``AnomalyModel.score`` (features + model + explanations of
the anomalies) and training time, per model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    args = ap.parse_args()
    pin_one_core()
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from detect.anomaly.evaluate import _sort_by_time, load_dns_csv, load_zeek
    from detect.anomaly.model import AnomalyModel

    t, y, _ = _sort_by_time(*load_zeek(SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"))
    span = pc.cast(pc.subtract(pc.max(t.column("@timestamp")), pc.min(t.column("@timestamp"))), pa.int64()).as_py() + 1
    copies, parts, ys = -(-args.records // t.num_rows), [], []
    for i in range(copies):
        ts = pc.add(t.column("@timestamp"), pa.scalar(i * span, pa.duration("us")))
        parts.append(t.set_column(t.column_names.index("@timestamp"), "@timestamp", ts))
        ys.append(y)
    big = pa.concat_tables(parts).slice(0, args.records)
    ybig = np.concatenate(ys)[: args.records]

    for alg in ("isolation_forest", "random_forest", "lof"):
        m = AnomalyModel(kind="flow", algorithm=alg)
        t0 = time.perf_counter()
        X, cls = m.features(t)
        m.fit(X, y, classes=cls)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = m.score(big)
        sc_s = time.perf_counter() - t0
        report(
            f"anomaly_flow_{alg}",
            {
                "records": big.num_rows,
                "flows_per_s_per_core": round(big.num_rows / sc_s),
                "train_rows": t.num_rows,
                "train_s": round(fit_s, 3),
                "anomalies": int(pc.sum(out.column("anomaly.is_anomaly")).as_py()),
                "peak_rss_mb": round(peak_rss_mb()),
            },
        )
    t0 = time.perf_counter()
    m.features(big)
    report("anomaly_flow_features_only", {"flows_per_s_per_core": round(big.num_rows / (time.perf_counter() - t0))})

    dt, dy, _ = load_dns_csv(SHARED / "flows/dns_qname_netrack/train.csv")
    for alg in ("gradient_boosting", "isolation_forest"):
        m = AnomalyModel(kind="dns", algorithm=alg)
        t0 = time.perf_counter()
        m.fit_events(dt, dy, time_ordered=False)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        m.score(dt)
        sc_s = time.perf_counter() - t0
        report(
            f"anomaly_dns_{alg}",
            {"names": dt.num_rows, "names_per_s_per_core": round(dt.num_rows / sc_s), "train_rows": dt.num_rows, "train_s": round(fit_s, 3)},
        )


if __name__ == "__main__":
    main()
