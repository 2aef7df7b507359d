"""Cluster mode's runner: collectors produce to Kafka, Spark jobs do the rest.

``taishi ingest --mode cluster FILES`` (:func:`ingest`): the embedded file
collector (``Pipeline.collect_file``: format sniffing, framing hints, resume,
dead letters for unreadable files) runs on a :class:`KafkaBus`, so the raw
records on ``raw.<format>`` are the ones the embedded bus would hold. Then the
Spark detect job runs with an available-now trigger until it has consumed
them; for bounded input a ``flush`` control record follows and the job runs
once more to close every correlation window (the embedded bounded run's
``finish``). The incidents job then builds incidents from the ``alerts``
topic. The summary is the embedded one (``RunStats``).

``taishi run`` with ``mode: cluster`` (:func:`run_stream`): the syslog and
NetFlow collectors produce to Kafka, and the detect and incidents jobs run
continuously (processing-time trigger, event-time watermark with the
configured allowed lateness) until stopped. Each runs under a
:class:`SupervisedQuery`: a query that fails (a Kafka broker that crashed or
restarts, a search node that is away) is started again from its checkpoint,
with a backoff, which re-runs its unfinished micro-batch with the same offsets
and state -- nothing lost, nothing written twice (documents are written by id).

Nothing here is imported by embedded mode.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from taishi.bus import TOPIC_DEADLETTER
from taishi.cluster.kafka_bus import FIXED_TOPICS, KafkaBus
from taishi.cluster import spark_jobs as jobs
from taishi.config import Config
from taishi.pipeline import Pipeline, RunStats, _reason_kind, expand_paths


class _CollectorBus(KafkaBus):
    """The collectors' bus: Kafka, plus dead letters of the read stage straight into the search store
    (the jobs write the dead letters of later stages)."""

    def __init__(self, cfg: Config, store, stats: RunStats) -> None:
        super().__init__(cfg, client_id="taishi-collector")
        self.store = store
        self.stats = stats

    def produce(self, topic: str, table: pa.Table, meta: dict | None = None) -> tuple[int, int]:
        out = super().produce(topic, table, meta)
        if topic == TOPIC_DEADLETTER and table.num_rows:
            self.store.write_deadletters(table)
            self.stats.deadletters += table.num_rows
            for reason in table.column("reason").to_pylist():
                self.stats.deadletter_reasons[_reason_kind(reason)] += 1
        return out


class FileCollector:
    """The embedded pipeline's file collector on another bus (the same methods, not a copy)."""

    file_key = staticmethod(Pipeline.file_key)
    collect_file = Pipeline.collect_file
    _collect = getattr(Pipeline, "_collect", None)
    _collect_pcap = Pipeline._collect_pcap
    _deadletter_input = Pipeline._deadletter_input

    def __init__(self, cfg: Config, bus, stats: RunStats) -> None:
        self.cfg = cfg
        self.bus = bus
        self.stats = stats


def failure_summary(exc: BaseException) -> str:
    """One line on why a query failed: the root cause of a JVM error (its last ``Caused by:``),
    not the Python proxy's wrapping (a ``foreachBatch`` error goes JVM -> Python -> JVM)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln[len("Caused by: "):] for ln in lines if ln.startswith("Caused by: ") and "Python Proxy" not in ln]
    return (causes[-1] if causes else lines[0] if lines else type(exc).__name__)[:500]


class SupervisedQuery:
    """A streaming query that is started again from its checkpoint when it fails.

    A Kafka broker outage can fail a Spark query (the source cannot list offsets,
    an executor cannot fetch, the sink cannot produce). For a deployment that must
    outlive such an outage without a person, a watcher thread restarts the failed
    query with ``start`` (which must use the same checkpoint), after a backoff of
    1 s doubling up to ``backoff_max_s``; a restarted query re-runs the micro-batch
    that did not commit, with the same offsets and keyed state, so the restart loses
    and duplicates nothing. After ``max_restarts`` failures in a row (no micro-batch
    completed in between) it gives up and keeps the error in :attr:`error`, which
    the runner raises: an error that does not go away is not an outage.
    """

    def __init__(self, start: Callable[[], Any], *, max_restarts: int = 10, backoff_max_s: float = 30.0,
                 report: Callable[[str], None] | None = None, poll_s: float = 0.5) -> None:
        self._start = start
        self.query = start()
        self.name = self.query.name
        self.max_restarts, self.backoff_max_s, self.poll_s = max_restarts, backoff_max_s, poll_s
        self.report = report or (lambda _msg: None)
        self.restarts = 0
        self.failures: list[str] = []  # every failure's message, in order
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        in_a_row = 0
        while not self._stop.wait(self.poll_s):
            q = self.query
            if q.isActive:
                if in_a_row and q.lastProgress is not None:  # the restarted query completed a micro-batch
                    in_a_row = 0
                continue
            exc = q.exception()
            if exc is None:  # stopped, or an available-now query that finished
                return
            in_a_row += 1
            self.failures.append(failure_summary(exc))
            if in_a_row > self.max_restarts:
                self.error = RuntimeError(f"Spark query {self.name} failed {in_a_row} times in a row; last: {exc}")
                return
            wait = min(self.backoff_max_s, 2.0 ** (in_a_row - 1))
            self.report(f"Spark query {self.name} failed ({self.failures[-1][:200]}); "
                        f"restarting it from its checkpoint in {wait:.0f} s")
            if self._stop.wait(wait):
                return
            try:
                self.query = self._start()
            except Exception as start_exc:  # noqa: BLE001 - the runner raises it
                self.error = RuntimeError(f"Spark query {self.name} could not be restarted: {start_exc}")
                return
            self.restarts += 1

    def stop(self, *, drain: bool = False) -> None:
        """Stop watching, then stop the query (``drain``: process what is available first)."""
        self._stop.set()
        self._thread.join()  # a restart under way finishes first; the query stopped below is the newest
        if drain and self.query.isActive:
            try:
                self.query.processAllAvailable()
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        self.query.stop()


class ClusterRun:
    """One Spark session, the Kafka producer and the search store for a cluster-mode run."""

    def __init__(self, cfg: Config, spark=None) -> None:
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.stats = RunStats()
        self.store = jobs.open_search(cfg)
        self.bus = _CollectorBus(cfg, self.store, self.stats)
        self.bus.ensure_topics(FIXED_TOPICS)  # the jobs subscribe to alerts and control before anything is sent
        self.spark = spark if spark is not None else jobs.session(cfg)
        self.job = jobs.JobStats()

    # -- the jobs -------------------------------------------------------------------
    def _on_batch(self, st: dict) -> None:
        self.job.add(st)

    def detect(self, *, bounded: bool = True, available_now: bool = True, checkpoint: Path | None = None,
               timeout_s: float | None = None, trigger_s: float = 2.0, max_offsets: int | None = None):
        conf = jobs.job_conf(self.spark, self.cfg, bounded=bounded, models=self._models())
        q = jobs.detect_query(self.spark, self.cfg, conf, on_batch=self._on_batch, available_now=available_now,
                              checkpoint=checkpoint, trigger_s=trigger_s, max_offsets=max_offsets)
        if available_now:
            jobs.run_until_idle(q, timeout_s)
        return q

    def incidents(self, *, bounded: bool = True, available_now: bool = True, checkpoint: Path | None = None,
                  timeout_s: float | None = None, trigger_s: float = 5.0):
        conf = jobs.job_conf(self.spark, self.cfg, bounded=bounded)
        q = jobs.incidents_query(self.spark, self.cfg, conf, available_now=available_now, checkpoint=checkpoint,
                                 on_batch=self._on_incidents, trigger_s=trigger_s)
        if available_now:
            jobs.run_until_idle(q, timeout_s)
        return q

    def supervise(self, start: Callable[[], Any], report: Callable[[str], None] | None = None) -> SupervisedQuery:
        """``start()`` (a streaming query) under a :class:`SupervisedQuery`; ``cluster.spark.max_restarts``
        failures in a row (default 10) end it."""
        return SupervisedQuery(start, max_restarts=int(jobs.spark_settings(self.cfg).get("max_restarts", 10)),
                               report=report)

    def _on_incidents(self, n: int) -> None:
        self.incidents_written = getattr(self, "incidents_written", 0) + n

    def _models(self) -> list:
        from taishi.pipeline import _load_anomaly_models

        return _load_anomaly_models(self.cfg.data_dir / "models")

    def finish_bounded(self, *, checkpoint: Path | None = None, incidents_checkpoint: Path | None = None,
                       phase: Callable[[str], None] = lambda _text: None) -> None:
        """Run the jobs over everything on Kafka, then close every window (flush) and build incidents."""
        phase("Spark: parse, detect, correlate")
        self.detect(checkpoint=checkpoint)
        self.bus.send_control("flush", at=time.time())
        phase("Spark: end of input (close windows)")
        self.detect(checkpoint=checkpoint)
        phase("Spark: incidents")
        self.incidents(checkpoint=incidents_checkpoint)

    def run_stats(self) -> RunStats:
        """The embedded summary, filled from the collector and the jobs."""
        s, j = self.stats, self.job
        s.events, s.events_stored = j.events, j.events_stored
        s.alerts_stored = j.alerts_stored
        s.deadletters += j.deadletters
        s.late_events = j.late_events
        s.by_dataset.update(j.by_dataset)
        s.deadletter_reasons.update(j.deadletter_reasons)
        s.alert_ids = set(j.alerts)
        s.alerts = len(s.alert_ids)
        s.by_level.clear(), s.by_rule.clear(), s.by_technique.clear()
        for a in j.alerts.values():
            if a.get("rule.level"):
                s.by_level[a["rule.level"]] += 1
            if a.get("rule.name"):
                s.by_rule[a["rule.name"]] += 1
            for t in a.get("threat.technique.id") or []:
                s.by_technique[t] += 1
        return s

    def close(self) -> None:
        self.bus.close()


def ingest(cfg: Config, paths: Iterable[Path], fmt: str = "auto", *, from_start: bool = False,
           logsource: str | None = None, progress: Callable[[Path, int], None] | None = None,
           phase: Callable[[str], None] | None = None, spark=None) -> tuple[RunStats, dict]:
    """``taishi ingest --mode cluster``: files -> Kafka -> Spark -> search store; the embedded summary.

    ``progress(path, position)`` follows the files onto Kafka; ``phase(text)`` names what runs next.
    """
    t0 = time.perf_counter()
    phase = phase or (lambda _text: None)
    phase("starting Spark")
    run = ClusterRun(cfg, spark)
    try:
        col = FileCollector(cfg, run.bus, run.stats)
        for p in expand_paths(paths):
            col.collect_file(p, fmt, from_start=from_start, logsource=logsource,
                             progress=(lambda pos, p=p: progress(p, pos)) if progress else None)
        run.finish_bounded(phase=phase)
        stats = run.run_stats()
        stats.seconds = time.perf_counter() - t0
        store_stats = _store_stats(run.store)
    finally:
        run.close()
    return stats, store_stats


def _store_stats(store) -> dict:
    fn = getattr(store, "stats", None)
    try:
        return dict(fn()) if fn else {}
    except Exception:  # noqa: BLE001 - the summary's last line only
        return {}


def run_stream(cfg: Config, listeners: list, nf_listeners: list, *, certfile=None, keyfile=None,
               duration: float | None = None, stop: threading.Event | None = None,
               report: Callable[[str], None] | None = None, spark=None, trigger_s: float = 2.0) -> dict:
    """``taishi run`` in cluster mode: collectors -> Kafka; the detect and incidents jobs run until stopped
    (``stop`` set, or ``duration`` seconds), each micro-batch every ``trigger_s`` seconds."""
    from ingest.collectors.netflow import NetflowCollector
    from ingest.collectors.syslog import SyslogCollector

    run = ClusterRun(cfg, spark)
    collectors: dict[str, Any] = {}
    queries = []
    stop = stop or threading.Event()
    try:
        if listeners:
            collectors["syslog"] = SyslogCollector(run.bus, listeners, certfile=certfile, keyfile=keyfile).start()
        if nf_listeners:
            collectors["netflow"] = NetflowCollector(run.bus, nf_listeners).start()
        for kind, col in collectors.items():
            for proto, (host, port) in col.bound.items():
                if report:
                    report(f"listening for {kind} on {proto}://{host}:{port} (cluster mode: Kafka {run.bus.bootstrap})")
        queries.append(run.supervise(lambda: run.detect(bounded=False, available_now=False, trigger_s=trigger_s,
                                                        checkpoint=jobs.checkpoint_dir(cfg, "detect-stream")), report))
        queries.append(run.supervise(lambda: run.incidents(bounded=False, available_now=False, trigger_s=trigger_s,
                                                           checkpoint=jobs.checkpoint_dir(cfg, "incidents-stream")),
                                     report))
        deadline = time.monotonic() + duration if duration else None
        last = 0.0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for q in queries:
                if q.error is not None:
                    raise q.error
            if report and time.monotonic() - last > 10:
                report(f"events {run.job.events:,}  alerts {len(run.job.alerts):,}  "
                       f"dead letters {run.job.deadletters:,}")
                last = time.monotonic()
            stop.wait(0.5)
    finally:
        for col in collectors.values():
            col.stop()
        for q in queries:
            q.stop(drain=True)
        run.close()
    out = {k: c.metrics() for k, c in collectors.items()}
    return {**out, **run.run_stats().as_dict()}
