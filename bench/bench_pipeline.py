"""End-to-end throughput of the embedded pipeline, on one core.

    .venv/bin/python bench/bench_pipeline.py [--records 300000]

Input: real Zeek conn records (Stratosphere CTU, repeated to --records), the
loghub sshd log, and the generated demo campaign. Everything goes through the
real path: file -> raw topic -> parse -> events topic -> detect (the shipped
rules, with correlation) -> alerts topic -> DuckDB store, with fsync'd bus
frames. Prints events/s end to end, time per stage (``flush_s``: the end of
input, where bounded correlation evaluates its windows, and everything else
outside the four stages), the run's CPU time and peak RSS. ``--runs N``
repeats the run on fresh data directories and reports each and the median:
on a shared machine compare several runs and the stages' shares, not one
figure. Target: >= 100k events/s end to end with the shipped rules.
"""

from __future__ import annotations

import argparse
import statistics
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
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    pin_one_core()
    tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-"))
    files = _inputs(tmp, args.records)
    runs = [_run(files, tmp / f"data{i}") for i in range(args.runs)]
    for r in runs:
        report("pipeline.embedded", r)
    if len(runs) > 1:
        report("pipeline.embedded.median", {k: statistics.median(r[k] for r in runs) for k in runs[0]})


def _inputs(tmp: Path, records: int) -> list[Path]:
    from taishi.demo import generate_campaign

    files = list(generate_campaign(tmp / "demo").files)
    conn = SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"
    if conn.exists():
        files.append(_repeat_lines(conn, records, tmp / "conn.log", True))
        files.append(SHARED / "logs/loghub/OpenSSH/OpenSSH_2k.log")
    return files


def _run(files: list[Path], data_dir: Path) -> dict:
    from taishi.config import Config
    from taishi.pipeline import Pipeline

    cfg = Config(data_dir=data_dir)
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

    def timed_frames(name, gen):  # a generator stage: time each step, not the consumer's work in between
        def run(*a, **k):
            it = gen(*a, **k)
            while True:
                t0 = time.perf_counter()
                try:
                    value = next(it)
                except StopIteration:
                    return
                finally:
                    stage_s[name] += time.perf_counter() - t0
                yield value
        return run

    if hasattr(pipe, "_collect"):
        pipe._collect = timed_frames("collect", pipe._collect)
    else:  # an older pipeline (comparing versions)
        pipe.collect_file = timed_stage("collect", pipe.collect_file)
    pipe.step_parse = timed_stage("parse", pipe.step_parse)
    pipe.step_detect = timed_stage("detect", pipe.step_detect)
    pipe.step_store = timed_stage("store", pipe.step_store)
    cpu0 = time.process_time()
    stats = pipe.run_files(files)
    cpu = time.process_time() - cpu0
    pipe.close()
    return {
        "events": stats.events,
        "alerts": len(stats.alert_ids),
        "seconds": round(stats.seconds, 2),
        "events_per_s": round(stats.events / stats.seconds),
        **{f"{k}_s": round(v, 2) for k, v in stage_s.items()},
        "flush_s": round(stats.seconds - sum(stage_s.values()), 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak_rss_mb()),
    }


if __name__ == "__main__":
    main()
