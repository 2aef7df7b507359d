"""End-to-end throughput of the embedded pipeline, on one core.

    .venv/bin/python bench/bench_pipeline.py [--records 300000]

Input: real Zeek conn records (Stratosphere CTU, repeated to --records), the
loghub sshd log, and the generated demo campaign. Everything goes through the
real path: file -> raw topic -> parse -> events topic -> detect (the shipped
rules, with correlation) -> alerts topic -> DuckDB store, with fsync'd bus
frames. Prints events/s end to end, time per stage and peak RSS.
Target: >= 100k events/s end to end with the shipped rules.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_parse import _repeat_lines  # noqa: E402
from bench.common import SHARED, peak_rss_mb, pin_one_core, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    args = ap.parse_args()
    pin_one_core()
    from taishi.config import Config
    from taishi.demo import generate_campaign
    from taishi.pipeline import Pipeline

    tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-"))
    files = list(generate_campaign(tmp / "demo").files)
    conn = SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"
    if conn.exists():
        files.append(_repeat_lines(conn, args.records, tmp / "conn.log", True))
        files.append(SHARED / "logs/loghub/OpenSSH/OpenSSH_2k.log")
    cfg = Config(data_dir=tmp / "data")
    pipe = Pipeline(cfg, bounded=True)
    stage_s = {"collect": 0.0, "parse": 0.0, "detect": 0.0, "store": 0.0}

    def timed_stage(name, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stage_s[name] += time.perf_counter() - t0
        return run

    pipe.collect_file = timed_stage("collect", pipe.collect_file)
    pipe.step_parse = timed_stage("parse", pipe.step_parse)
    pipe.step_detect = timed_stage("detect", pipe.step_detect)
    pipe.step_store = timed_stage("store", pipe.step_store)
    stats = pipe.run_files(files)
    pipe.close()
    figures = {
        "events": stats.events,
        "alerts": len(stats.alert_ids),
        "seconds": round(stats.seconds, 2),
        "events_per_s": round(stats.events / stats.seconds),
        **{f"{k}_s": round(v, 2) for k, v in stage_s.items()},
        "peak_rss_mb": round(peak_rss_mb()),
    }
    report("pipeline.embedded", figures)


if __name__ == "__main__":
    main()
