"""A Kafka broker that crashes mid-stream loses no alert and writes none twice.

The broker is a private one (``taishi.cluster.services.PrivateKafka``: the
shared broker's node on a free port, with its own data directory), since the
shared broker on 127.0.0.1:9092 serves other test sessions. The search node
and Spark are the shared ones.

The demo campaign goes onto Kafka, and the detect job streams it in small
micro-batches under the runner's supervision (``ClusterRun.supervise``). After
the first micro-batches the broker is SIGKILLed (a crash, not a shutdown);
while it is down the collector produces the shared samples (its idempotent
producer waits and retries), then the broker restarts on the same port and
data. The stream catches up, the run ends as a bounded run does (flush,
incidents), and the search store holds exactly what the embedded pipeline
stores for the same files: every alert once and no other, every event once,
the same dead letters and incidents.

Twice: with Spark's Kafka source as configured by default, which waits out an
outage this short, and with a source that gives up after a few seconds
(``cluster.spark.kafka_source``), so the query fails and the runner restarts it
from its checkpoint, while the broker is still down and after it is back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from cluster_support import cluster_config, drop_indices
from support import unavailable
from taishi import config as config_mod
from taishi.demo import generate_campaign
from taishi.pipeline import Pipeline
from taishi.store import Store

pytestmark = pytest.mark.integration

OUTAGE_S = 15.0  # how long the broker stays down (the collector produces meanwhile)
#: Spark's Kafka source giving up on an unreachable broker after seconds, not minutes
IMPATIENT_SOURCE = {"kafka.default.api.timeout.ms": 5000, "kafka.request.timeout.ms": 5000,
                    "fetchOffset.numRetries": 1, "fetchOffset.retryIntervalMs": 500, "kafkaConsumer.pollTimeoutMs": 5000}
WAIT_S = 900  # bound of every wait below (a loaded machine is slow, never this slow)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data: Path) -> tuple[list[Path], list[Path]]:
    """(before the crash, during the outage): the demo campaign, then shared samples and a file with bad lines."""
    d = tmp_path_factory.mktemp("inputs")
    manifest = generate_campaign(d / "campaign", seed=7)
    bad = d / "bad.json"
    bad.write_text('{"event": {"kind": "event"}, "source": {"ip": "10.1.2.3"}}\nthis is not JSON\n[1, 2\n',
                   encoding="utf-8")
    later = [
        shared_data / "zeek/slips/port-scans/vertical/conn.log",
        shared_data / "suricata/frank_samples/wrccdc-2017/alerts-only.json",
        shared_data / "logs/loghub/OpenSSH/OpenSSH_2k.log",
        shared_data / "pcap/scan/evilfingers_nmap/TCP_SYN_SCAN.pcap",  # events straight onto `events`
        bad,  # a format the first part has no topic for: created while the broker is down
    ]
    return [Path(f) for f in manifest.files], later


@pytest.fixture(scope="module")
def embedded(inputs, tmp_path_factory):
    """The embedded pipeline's results for the same files (no anomaly model, no inventory: neither has one)."""
    cfg = config_mod.load(data_dir=tmp_path_factory.mktemp("embedded"))
    pipe = Pipeline(cfg, bounded=True)
    try:
        stats = pipe.run_files([*inputs[0], *inputs[1]])
    finally:
        pipe.close()
    store = Store(cfg.data_dir)
    try:
        alerts = set(store.search_alerts("", limit=None).column("id").to_pylist())
        dls = set(store.search_deadletters("", limit=None).column("id").to_pylist())
        incidents = {i["id"]: sorted(i["alert.ids"]) for i in store.search_incidents("", limit=None)}
    finally:
        store.close()
    return stats, alerts, dls, incidents


@pytest.fixture
def broker(tmp_path, require_module):
    """A private Kafka broker, stopped (and its JVM gone) when the test ends, whatever happened."""
    require_module("kafka")
    from taishi.cluster import services

    b = services.PrivateKafka(tmp_path / "broker")
    try:
        b.start()
    except (services.ServiceError, OSError) as exc:
        unavailable(f"a private Kafka broker could not start: {exc}")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def namespace(broker, search_node, tmp_path):
    """The run's config on the private broker and the shared search node; its indices are dropped at the end
    (its topics go with the private broker)."""
    cfg = cluster_config(tmp_path / "cluster", broker.endpoint, search_node)
    yield cfg
    drop_indices(cfg)


def _wait(what: str, done, check=lambda: None, every: float = 0.25) -> None:
    """Poll ``done()`` until true (``check()`` raises on a failure), for at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        check()
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {WAIT_S} s")
        time.sleep(every)


@pytest.mark.parametrize("source", ["waits", "fails"])
def test_broker_killed_mid_stream_loses_nothing_and_duplicates_nothing(source, inputs, embedded, broker, namespace,
                                                                        spark):
    from taishi.cluster.runner import ClusterRun, FileCollector
    from taishi.cluster.search import SearchStore

    first, later = inputs
    e_stats, e_alerts, e_dls, e_incidents = embedded
    assert len(e_alerts) > 20 and e_incidents and len(e_dls) >= 2  # the comparison below has something to compare

    cfg = namespace
    if source == "fails":
        cfg.cluster["spark"] = {"kafka_source": IMPATIENT_SOURCE}
    reports: list[str] = []
    run = ClusterRun(cfg, spark)
    stream = None
    collector_errors: list[BaseException] = []
    seen: dict = {}
    try:
        col = FileCollector(cfg, run.bus, run.stats)
        for p in first:
            col.collect_file(p)
        on_kafka_before = run.bus.produced  # raw records of the campaign

        stream = run.supervise(lambda: run.detect(available_now=False, max_offsets=1000, trigger_s=0.5),
                               report=reports.append)

        def failed() -> None:
            assert stream.error is None, stream.error

        _wait("the first micro-batches", lambda: run.job.events > 0 and (stream.query.lastProgress or {}).get(
            "batchId", -1) >= 1, failed)

        # -- the crash: the stream is in the middle of the campaign, the samples are not on Kafka yet
        seen["events_at_kill"] = run.job.events
        broker.kill()
        t_down = time.monotonic()

        def produce_later() -> None:
            try:
                for p in later:
                    col.collect_file(p)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                collector_errors.append(exc)

        producer = threading.Thread(target=produce_later, name="collector", daemon=True)
        producer.start()
        time.sleep(OUTAGE_S)
        assert not collector_errors, collector_errors
        seen["collector_waited"] = producer.is_alive()  # blocked on the dead broker, not failed
        seen["events_during_outage"] = run.job.events - seen["events_at_kill"]

        broker.start()  # same port, same data directory: Kafka recovers its log after the crash
        seen["outage_s"] = round(time.monotonic() - t_down, 1)

        producer.join(WAIT_S)
        assert not producer.is_alive(), "the collector never finished after the broker came back"
        assert not collector_errors, collector_errors
        store = SearchStore.from_config(cfg)
        try:
            def caught_up() -> bool:
                store.refresh_indices()
                return store.count("events") >= e_stats.events

            _wait("the stream to store every event", caught_up, failed, every=2.0)
        finally:
            store.close()
        failed()
        stream.stop()
        stream_restarts, failures = stream.restarts, list(stream.failures)
        stream = None
        run.finish_bounded()  # from the stream's checkpoint: end of input (close windows), incidents
    finally:
        if not broker.running():  # failed during the outage: bring the broker back so the producers can close
            with contextlib.suppress(Exception):
                broker.start()
        if stream is not None:
            stream.stop()
        run.close()

    store = SearchStore.from_config(cfg)
    try:
        store.refresh_indices()
        st = store.stats()
        ids = store.search_alerts("", limit=10_000).column("id").to_pylist()
        dls = set(store.search_deadletters("", limit=10_000).column("id").to_pylist())
        incidents = {i["id"]: sorted(i["alert.ids"]) for i in store.search_incidents("", limit=1000)}
        events = store.count("events")
    finally:
        store.close()
    print(f"\nbroker crash ({source}): {seen['events_at_kill']:,} of {e_stats.events:,} events processed at the kill "
          f"({on_kafka_before:,} raw records on Kafka then), {seen['events_during_outage']:,} during the "
          f"{seen['outage_s']} s outage; collector waited: {seen['collector_waited']}; "
          f"query restarts: {stream_restarts} ({'; '.join(f[:160] for f in failures) or 'none failed'})")

    # the kill was mid-stream: some, not all, of what was on Kafka had been processed
    assert 0 < seen["events_at_kill"] < on_kafka_before
    assert seen["collector_waited"], "the collector finished while the broker was down?"
    if source == "fails":  # the source gave up on the dead broker and the runner started the query again
        assert failures and stream_restarts >= 1
    # nothing lost, nothing twice
    assert len(ids) == len(set(ids)) == st["alerts"]
    assert set(ids) == e_alerts
    assert set(run.job.alerts) == e_alerts
    assert events == st["events"] == e_stats.events
    assert dls == e_dls
    assert incidents == e_incidents
