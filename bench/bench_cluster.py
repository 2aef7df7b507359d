"""Cluster mode end to end: sustained events/s and event -> alert latency (p50/p99), per Spark master.

    .venv/bin/python bench/bench_cluster.py [--masters 'local[1],local[2]'] [--records 20000]
        [--rate 200] [--paced-s 40] [--max-offsets 10000] [--trigger-s 2]

Real services: Kafka and the search node are taken through
``taishi.cluster.services.acquire``/``release`` (the integration fixtures'
leases: running ones, e.g. from ``taishi services up``, are reused; ones this
run had to start are stopped again when nobody else holds them). Each master
runs in its own Python process with a fresh Spark session (``spark_jobs.session``,
the shipped settings: 4 shuffle partitions, Python worker reuse), stopped with
its JVM before the next one starts. Not pinned to one core: ``local[2]`` is
the point, and Kafka and the search node share the machine's cores with Spark.

Input: a live stream in event-time order. The demo campaign (every file: Zeek
conn/dns/http/ssl/ssh, Suricata EVE, sshd auth.log, so the shipped Sigma rules
and correlations fire) plus ``--records`` Zeek conn records of the shared
Stratosphere capture, copied with timestamps shifted to start 4 hours before
the campaign (one minute further per copy) and new uids, so the campaign's
alerts come after a lead-in of plain traffic, from a job already running. Every file is cut into
two-hour event-time slices, fed slice after slice through the embedded file
collector (``FileCollector.collect_file`` on the cluster runner's Kafka bus);
the allowed lateness is one slice plus 5 minutes, so nothing is late.

The detect job runs as a continuous query (processing-time trigger
``--trigger-s``, 2 s as in ``taishi run``; not available-now; the incidents
job is not run). Each phase has its own indices and checkpoint:

* *warm-up* (not reported): the first 2,000 records, so the measured phases find the
  Python workers started and the rules loaded, as a long-running job does.
* *full*: the collector feeds everything as fast as it can while the query
  runs. Throughput is bounded by the slower of the collector and the job.
* *backlog*: a new query drains the full phase's topics, ``--max-offsets``
  Kafka records per micro-batch: the job's own capacity.
* *paced*: ``--rate`` records/s for ``--paced-s`` seconds, well below the
  full-speed rate, so queues do not grow: the latency a SOC sees.

Throughput: ``records_per_s_steady`` = Kafka records of micro-batches 2..n
over the time from the end of batch 1 to the end of batch n (Spark's progress
reports: trigger timestamp + ``triggerExecution``), ``query_rows_per_s_median``
= Spark's ``processedRowsPerSecond`` (median over batches 2..n), and
``events_per_s_end_to_end`` = events written over the time from the first
record on Kafka (backlog: the query's start) to the last micro-batch written.

Latency: for each alert, from the moment Kafka acknowledged the newest of its
events (``event.ids``; the bench records the acknowledgement time of every
record it produces, in chunks of at most 2,000 records, keyed by the event id
the parser will compute) to the end of the ``foreachBatch`` that wrote it to
the search store (``ClusterRun._on_batch``, called on the driver once the
executors' bulk writes returned). Single-event Sigma alerts measure the
pipeline; correlation alerts also wait for their window to close (the
watermark, i.e. later events, must pass its end plus the allowed lateness),
so their latency depends on how fast event time moves in the input: they are
reported apart, and ``all`` is both together.

Also reported: events, alerts, micro-batches, the collector's records/s, CPU
seconds of the driver, its JVM and Python workers and (apart) of the Kafka and
search node processes, which other users of the shared services add to; peak
RSS (driver; JVM high-water mark; the whole tree, sampled); load average.
Topics, indices and checkpoints are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import SHARED, peak_rss_mb, report  # noqa: E402

CONN = SHARED / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"
SLICE_S = 7200  # event-time slice of the fed stream
LEAD_S = 4 * 3600  # the background traffic starts this long before the demo campaign
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------- pure helpers
def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def alert_latencies(alerts: list[dict], produced_at: dict[str, float],
                    written_at: dict[str, float]) -> tuple[dict[str, list[float]], int]:
    """Seconds from the newest of each alert's events on Kafka to the alert's write, by ``rule.type``
    (``sigma``, ``sigma_correlation``, ...; ``all`` for every kind); and how many alerts could not be
    paired (not written in this run, or none of their events produced by it)."""
    out: dict[str, list[float]] = {"all": []}
    unpaired = 0
    for a in alerts:
        w = written_at.get(a["id"])
        ts = [produced_at[e] for e in (a.get("event.ids") or []) if e in produced_at]
        if w is None or not ts:
            unpaired += 1
            continue
        lat = w - max(ts)
        out["all"].append(lat)
        out.setdefault(a.get("rule.type") or "unknown", []).append(lat)
    return out, unpaired


def steady_rate(progress: list[dict]) -> float | None:
    """Records/s over micro-batches 2..n with input (Spark's progress reports as plain dicts): their
    ``numInputRows`` over the time from the end of batch 1 to the end of batch n."""
    from datetime import datetime

    bs = []
    for p in progress:
        if (p.get("numInputRows") or 0) > 0:
            start = datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
            bs.append((start + (p.get("durationMs") or {}).get("triggerExecution", 0) / 1000.0, p["numInputRows"]))
    bs.sort()
    if len(bs) < 3 or bs[-1][0] <= bs[0][0]:
        return None
    return sum(n for _, n in bs[1:]) / (bs[-1][0] - bs[0][0])


def batch_ms(progress: list[dict]) -> dict[str, int]:
    """Median of each of Spark's ``durationMs`` parts (``triggerExecution`` is the whole batch;
    ``addBatch`` runs the job and the sink; ``walCommit``/``commitOffsets`` write the checkpoint)."""
    keys = ("triggerExecution", "addBatch", "queryPlanning", "latestOffset", "walCommit", "commitOffsets")
    out = {}
    for k in keys:
        v = sorted((p.get("durationMs") or {}).get(k) for p in progress if (p.get("durationMs") or {}).get(k) is not None)
        if v:
            out[k] = v[len(v) // 2]
    return out


def slice_of(ts_s: float, t0_s: float, width_s: float = SLICE_S) -> int:
    return max(0, int((ts_s - t0_s) // width_s))


# --------------------------------------------------------------------------- input
def _shifted_conn_lines(n: int, t0_s: float) -> tuple[list[str], list[tuple[float, str]]]:
    """The shared conn log's header and ``n`` records: copy i shifted to start at ``t0_s + 60 i``, uids
    suffixed with the copy number."""
    lines = CONN.read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#") and not ln.startswith("#close")]
    body = [ln.split("\t") for ln in lines if ln and not ln.startswith("#")]
    first = min(float(f[0]) for f in body)
    out: list[tuple[float, str]] = []
    copy = 0
    while len(out) < n:
        shift = t0_s - first + 60 * copy
        for f in body[: n - len(out)]:
            ts = float(f[0]) + shift
            out.append((ts, "\t".join([f"{ts:.6f}", f"{f[1]}x{copy:x}", *f[2:]])))
        copy += 1
    out.sort(key=lambda x: x[0])
    return header, out


def _timed_lines(path: Path) -> tuple[str, list[str], list[tuple[float | None, str]]]:
    """A file's format, header lines (Zeek TSV) and records with their event time (None when the
    record does not parse), by the shipped parsers."""
    from ingest.files import read_records
    from ingest.parsers import parse
    from ingest.sniff import sniff

    fmt = sniff(path)
    header = [ln for ln in path.read_text().splitlines() if ln.startswith("#") and not ln.startswith("#close")]
    out: list[tuple[float | None, str]] = []
    for raw in read_records(path, fmt, batch_size=65536):
        ev = parse(fmt, raw).events
        ts = dict(zip(ev.column("log.offset").to_pylist(), ev.column("@timestamp").to_pylist()))
        for off, text in zip(raw.column("log.offset").to_pylist(), raw.column("event.original").to_pylist()):
            t = ts.get(off)
            out.append((t.timestamp() if t is not None else None, text))
    return fmt, header, out


def build_inputs(out: Path, records: int) -> dict:
    """Slice files in feed order (``[[path, format, records], ...]``) and the record count."""
    from taishi.demo import generate_campaign

    demo = generate_campaign(out / "demo")
    sources: list[tuple[str, str, list[str], list[tuple[float | None, str]]]] = []
    for f in demo.files:
        fmt, header, rows = _timed_lines(Path(f))
        sources.append((f"demo-{Path(f).name}", fmt, header, rows))
    t0 = min(t for _n, _f, _h, rows in sources for t, _ in rows if t is not None)
    if CONN.exists() and records:  # from LEAD_S before the campaign: the first alerts find a running job
        header, rows = _shifted_conn_lines(records, t0 - LEAD_S)
        sources.append(("bg-conn.log", "zeek", header, rows))
        t0 -= LEAD_S
    slices: dict[int, dict[str, list[str]]] = {}
    for name, _fmt, _header, rows in sources:
        k = 0
        for t, text in rows:
            if t is not None:
                k = slice_of(t, t0)
            slices.setdefault(k, {}).setdefault(name, []).append(text)
    fmts = {name: (fmt, header) for name, fmt, header, _ in sources}
    order, n = [], 0
    for k in sorted(slices):
        for name, texts in slices[k].items():
            fmt, header = fmts[name]
            # the file's own base name (conn.log, auth.log ...) under a directory per slice and source
            p = out / "slices" / f"{k:04d}" / name.split("-", 1)[0] / name.split("-", 1)[1]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("\n".join([*header, *texts]) + "\n")
            order.append([str(p), fmt, len(texts)])
            n += len(texts)
    return {"files": order, "records": n, "slices": len(slices)}


def warm_up_files(files: list[list], records: int) -> list[list]:
    """The first files of the stream, up to the one that brings the count to ``records``."""
    out, n = [], 0
    for f in files:
        if n >= records:
            break
        out.append(f)
        n += f[2]
    return out


# --------------------------------------------------------------------------- measuring processes
def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith(key + ":"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


def tree(root: int) -> list[int]:
    """``root`` and its descendants (the driver, its JVM, the JVM's Python workers)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _proc_stat(int(d))
            if st:
                parents.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_s(pids: list[int]) -> float:
    return sum((_proc_stat(p) or (0, 0.0))[1] for p in pids)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- one phase
class Feeder:
    """The collector's bus, recording when Kafka acknowledged each raw record (by event id); with
    ``rate``, sending at most that many records a second, with ``limit_s`` stopping after that long."""

    def __init__(self, bus, rate: float | None, limit_s: float | None = None) -> None:
        self.bus = bus
        self.rate = rate
        self.limit_s = limit_s
        self.chunk = max(1, int(rate / 20)) if rate else 2000
        self.produced_at: dict[str, float] = {}
        self.sent = 0
        self.first: float | None = None
        self.t0: float | None = None

    def produce(self, topic: str, table, meta: dict | None = None):
        if not topic.startswith("raw.") or table.num_rows == 0:
            return self.bus.produce(topic, table, meta)
        from ingest.parsers import event_ids

        ids = event_ids(table.column("taishi.source").combine_chunks(), table.column("log.offset").combine_chunks(),
                        table.column("event.original").combine_chunks()).to_pylist()
        if self.t0 is None:
            self.t0 = time.perf_counter()
        for start in range(0, table.num_rows, self.chunk):
            part = table.slice(start, self.chunk)
            if self.limit_s is not None and time.perf_counter() - self.t0 > self.limit_s:
                raise FeedLimit()
            if self.rate:
                wait = self.t0 + self.sent / self.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            last = start + self.chunk >= table.num_rows
            self.bus.produce(topic, part, meta if last else None)
            now = time.time()
            self.first = self.first or now
            for e in ids[start:start + self.chunk]:
                self.produced_at[e] = now
            self.sent += part.num_rows
        return 0, table.num_rows

    def __getattr__(self, name):
        return getattr(self.bus, name)


def _plain(progress) -> dict | None:
    """A query progress as plain JSON data (pyspark gives a dict subclass with a ``json`` property)."""
    if progress is None:
        return None
    return json.loads(progress.json) if hasattr(progress, "json") else dict(progress)


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def caught_up(progress, since: str) -> bool:
    """True when ``progress`` is of a trigger at or after ``since`` (ISO UTC, as Spark writes it) and
    every source has read up to its latest offset: nothing produced before ``since`` is left."""
    p = _plain(progress)
    if not p or str(p.get("timestamp") or "") < since:
        return False
    srcs = p.get("sources") or []
    return bool(srcs) and all(s.get("endOffset") == s.get("latestOffset") for s in srcs)


class FeedLimit(Exception):
    """The paced feed's time is up."""


def run_phase(spark, label: str, work: Path, services: dict, inputs: dict, topics: str, *, feed: bool,
              rate: float | None, feed_limit_s: float | None, trigger_s: float, timeout_s: float, console,
              max_offsets: int | None = None) -> dict:
    """One phase on its own indices and checkpoint, reading the Kafka topics under ``topics``.

    ``feed``: the collector feeds ``inputs`` (at ``rate`` records/s, for at most ``feed_limit_s``)
    while the query runs; else the topics hold the input already and the query drains them."""
    from taishi import config as config_mod
    from taishi.cluster.runner import ClusterRun, FileCollector

    files, n_records = inputs["files"], inputs["records"]
    tag = uuid.uuid4().hex[:8]
    cfg = phase_config(work / f"data-{tag}", services, topics, f"taishi-bench{tag}")
    written_at: dict[str, float] = {}
    writes: list[tuple[float, int]] = []

    class BenchRun(ClusterRun):
        def _on_batch(self, st: dict) -> None:  # on the driver, once the executors' writes returned
            now = time.time()
            super()._on_batch(st)
            writes.append((now, st["events"]))
            for a in st["alerts"]:
                written_at.setdefault(a["id"], now)

    me = os.getpid()
    run = BenchRun(cfg, spark)
    q = None
    feed_err: list[BaseException] = []
    try:
        cpu0 = cpu_s(tree(me))
        svc_cpu0 = cpu_s(services["pids"])
        feeder = Feeder(run.bus, rate, feed_limit_s)
        col = FileCollector(cfg, feeder, run.stats)
        done = threading.Event()
        feed_s: list[float] = []
        feed_end: list[str] = []

        def feed_files() -> None:
            t = time.perf_counter()
            try:
                for path, fmt, _n in files:
                    col.collect_file(Path(path), fmt)
            except FeedLimit:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported by the main loop
                feed_err.append(exc)
            finally:
                feed_s.append(time.perf_counter() - t)
                feed_end.append(_utc_now())
                done.set()

        t_query = time.time()
        q = run.detect(bounded=False, available_now=False, trigger_s=trigger_s, checkpoint=work / f"ckpt-{tag}",
                       max_offsets=max_offsets)
        t_start = time.monotonic()
        if feed:
            threading.Thread(target=feed_files, name="bench-feed", daemon=True).start()
        else:
            feed_end.append(_utc_now())
            done.set()
        peak_tree_kb = 0
        last_print = 0.0
        while True:
            if feed_err:
                raise feed_err[0]
            if q.exception() is not None or not q.isActive:
                raise RuntimeError(f"Spark query stopped: {q.exception()}")
            peak_tree_kb = max(peak_tree_kb, sum(_status_kb(p, "VmRSS") for p in tree(me)))
            now = time.monotonic()
            if now - last_print >= 5:
                fed = f"fed {feeder.sent:,}/{n_records:,} records  " if feed else ""
                console.log(f"[{label}] {fed}events stored {run.job.events:,}/{n_records:,}  "
                            f"alerts {len(run.job.alerts):,}  {now - t_start:.0f} s  load {loadavg()}")
                last_print = now
            if done.is_set() and caught_up(q.lastProgress, feed_end[0]):
                break
            if now - t_start > timeout_s:
                console.log(f"[{label}] timeout after {timeout_s:.0f} s; stopping where it is")
                break
            time.sleep(0.5)
        tree_pids = tree(me)
        cpu = cpu_s(tree_pids) - cpu0
        jvm_hwm = max((_status_kb(p, "VmHWM") for p in tree_pids if p != me), default=0)
        svc_cpu = cpu_s(services["pids"]) - svc_cpu0
        progress = [_plain(p) for p in q.recentProgress]
        q.stop()
        q = None
        run.store.refresh_indices()
        alerts = run.store.search_alerts("", limit=None).select(["id", "rule.type", "event.ids"]).to_pylist()
        lat, unpaired = alert_latencies(alerts, feeder.produced_at, written_at) if feed else ({}, len(alerts))
        active = [p for p in progress if (p.get("numInputRows") or 0) > 0]
        prps = sorted(p.get("processedRowsPerSecond") or 0.0 for p in active[1:])
        t_first = feeder.first if feed else t_query  # the first record on Kafka, or the query's start
        end_to_end = (run.job.events / (writes[-1][0] - t_first)) if writes and t_first else None
        fig = {
            "master": spark.sparkContext.master,
            "phase": label.split()[-1],
            "rate_limit": rate or "none",
            "max_offsets_per_trigger": max_offsets or "none",
            "trigger_s": trigger_s,
            "records_fed": feeder.sent if feed else "(topics of the full phase)",
            "events": run.job.events,
            "alerts": len(alerts),
            "alerts_single": len(lat.get("sigma", [])),
            "alerts_correlation": len(lat.get("sigma_correlation", [])),
            "alerts_unpaired": unpaired,
            "micro_batches": len(active),
            "collector_records_per_s": round(feeder.sent / feed_s[0]) if feed and feed_s and feed_s[0] else None,
            "records_per_s_steady": _round(steady_rate(progress)),
            "query_rows_per_s_median": _round(prps[len(prps) // 2] if prps else None),
            "events_per_s_end_to_end": _round(end_to_end),
        }
        fig["batch_ms_median"] = batch_ms(active[1:])
        for kind, name in (("all", "all"), ("sigma", "single"), ("sigma_correlation", "correlation")):
            for qq in (50, 99):
                v = percentile(lat.get(kind, []), qq)
                fig[f"latency_{name}_p{qq}_ms"] = None if v is None else round(v * 1000)
        fig.update({
            "cpu_s_driver_jvm_workers": round(cpu, 1),
            "cpu_s_kafka_search": round(svc_cpu, 1),
            "events_per_cpu_s": round(run.job.events / cpu) if cpu else None,  # driver, JVM and workers only
            "events_per_cpu_s_with_services": round(run.job.events / (cpu + svc_cpu)) if cpu + svc_cpu else None,
            "driver_peak_rss_mb": round(peak_rss_mb()),
            "jvm_peak_rss_mb": round(jvm_hwm / 1024),
            "tree_peak_rss_mb": round(peak_tree_kb / 1024),
            "seconds": round(time.monotonic() - t_start, 1),
            "load_avg": loadavg(),
        })
        return fig
    finally:
        if q is not None:
            try:
                q.stop()
            except Exception:  # noqa: BLE001 - cleaning up
                pass
        for _attempt in range(3):  # a task of a failed query may still be writing (and re-create the stream)
            try:
                run.store.drop_all()
                break
            except Exception as exc:  # noqa: BLE001 - cleaning up; never hide the run's own error
                console.log(f"[{label}] dropping the indices: {exc}")
                time.sleep(3)
        run.close()


def phase_config(data_dir: Path, services: dict, topics: str, index_prefix: str):
    from taishi import config as config_mod

    cfg = config_mod.load(data_dir=data_dir, mode="cluster")
    cfg.allowed_lateness_s = SLICE_S + 300  # one slice of the fed stream, and some
    cfg.cluster = {
        "kafka": {"bootstrap": services["kafka"], "partitions": 3, "replication": 1, "retention_hours": 2,
                  "topic_prefix": topics},
        "search": {"url": services["search"], "index_prefix": index_prefix},
    }
    return cfg


def _round(x: float | None):
    return None if x is None else round(x)


# --------------------------------------------------------------------------- one master (child process)
def child(args) -> None:
    from rich.console import Console

    from taishi import config as config_mod
    from taishi.cluster import spark_jobs as jobs
    from taishi.cluster.kafka_bus import drop_topics

    console = Console(stderr=True)
    manifest = json.loads(Path(args.inputs, "manifest.json").read_text())
    services = {"kafka": args.kafka, "search": args.search,
                "pids": [int(p) for p in args.service_pids.split(",") if p]}
    work = Path(tempfile.mkdtemp(prefix="taishi-bench-cluster-"))
    cfg = config_mod.load(data_dir=work / "session", mode="cluster")
    cfg.cluster = {"spark": {"master": args.master}}
    console.log(f"[{args.master}] starting Spark")
    t0 = time.perf_counter()
    spark = jobs.session(cfg, app=f"taishi-bench-{args.master}")
    console.log(f"[{args.master}] Spark up in {time.perf_counter() - t0:.1f} s")
    gateway = getattr(spark.sparkContext._gateway, "proc", None)
    try:
        warm = f"bench{uuid.uuid4().hex[:8]}."
        full = f"bench{uuid.uuid4().hex[:8]}."
        paced = f"bench{uuid.uuid4().hex[:8]}."
        first = warm_up_files(manifest["files"], 2000)
        phases = [  # phase, topics, feed, rate, feed limit, max offsets per trigger
            # not reported: Python workers started, rules loaded (workers are reused by the next queries)
            ("warm-up", warm, True, None, None, None),
            ("full", full, True, None, None, None),
            ("backlog", full, False, None, None, args.max_offsets),  # the full phase's topics, drained again
            ("paced", paced, True, args.rate, args.paced_s, None),
        ]
        try:
            for phase, topics, feed, rate, limit_s, max_offsets in phases:
                inputs = {"files": first, "records": sum(f[2] for f in first)} if phase == "warm-up" else manifest
                fig = run_phase(spark, f"{args.master} {phase}", work, services, inputs, topics, feed=feed,
                                rate=rate, feed_limit_s=limit_s, trigger_s=args.trigger_s, timeout_s=args.timeout_s,
                                console=console, max_offsets=max_offsets)
                if phase != "warm-up":
                    report(f"cluster.{phase}", fig)
        finally:
            for topics in (warm, full, paced):
                drop_topics(phase_config(work / "drop", services, topics, "unused"))
    finally:
        spark.stop()
        if gateway is not None:  # the JVM this process started: let it go and wait for it
            try:
                gateway.stdin.close()
                gateway.wait(30)
            except Exception:  # noqa: BLE001
                gateway.kill()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the whole run
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--masters", default="local[1],local[2]")
    ap.add_argument("--records", type=int, default=20_000, help="conn records (plus the demo campaign's ~12k)")
    ap.add_argument("--rate", type=float, default=200.0, help="records/s of the paced phase")
    ap.add_argument("--paced-s", type=float, default=40.0, help="how long the paced phase feeds (from the start)")
    ap.add_argument("--trigger-s", type=float, default=2.0, help="micro-batch trigger (taishi run's default)")
    ap.add_argument("--max-offsets", type=int, default=10_000,
                    help="Kafka records per micro-batch when the query drains a backlog")
    ap.add_argument("--timeout-s", type=float, default=600.0, help="per phase")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--master", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--kafka", help=argparse.SUPPRESS)
    ap.add_argument("--search", help=argparse.SUPPRESS)
    ap.add_argument("--service-pids", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from rich.console import Console

    from taishi.cluster import services

    console = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="taishi-bench-cluster-in-"))
    leases = []
    failed = 0
    try:
        with console.status("building the input streams"):
            manifest = build_inputs(tmp, args.records)
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        console.log(f"input: {manifest['records']:,} records in {len(manifest['files'])} files "
                    f"({manifest['slices']} event-time slices)")
        info = {}
        for name in ("kafka", "search"):
            with console.status(f"starting or reusing {name}"):
                info[name] = services.acquire(name, report=lambda text: console.log(text))
            leases.append((name, info[name]["lease"]))
        pids = ",".join(str(i["pid"]) for i in info.values() if i.get("pid"))
        for master in [m.strip() for m in args.masters.split(",") if m.strip()]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--master", master, "--inputs", str(tmp),
                   "--kafka", info["kafka"]["endpoint"], "--search", info["search"]["endpoint"],
                   "--service-pids", pids, "--rate", str(args.rate), "--paced-s", str(args.paced_s),
                   "--trigger-s", str(args.trigger_s),
                   "--max-offsets", str(args.max_offsets),
                   "--timeout-s", str(args.timeout_s)]
            failed |= subprocess.call(cmd)
    finally:
        for name, lease in leases:
            services.release(name, lease)
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(failed)


if __name__ == "__main__":
    main()
