"""Both modes, one semantics: the same input gives the same alerts and incidents, with the same ids.

Alerts are single-event Sigma alerts, Sigma correlation alerts (keyed state in
Spark) and anomaly alerts (an IsolationForest in both data directories).

The demo campaign and shared samples (Zeek, Suricata, syslog, a packet capture)
plus a file with bad lines go through the embedded pipeline and through cluster mode on real
services: Kafka (``kafka_bootstrap``), Spark Structured Streaming (``spark``)
and the search node (``search_node``). Each cluster run gets its own Kafka
topic prefix and index prefix, so runs never see each other's data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cluster_support import cluster_config, drop_namespace
from taishi import config as config_mod
from taishi.demo import generate_campaign
from taishi.pipeline import Pipeline
from taishi.store import Store

pytestmark = pytest.mark.integration

#: incident fields the builder makes (the rest -- status, assignee, history, notes -- is each store's workflow)
BUILT = ("id", "title", "severity", "risk_score", "first_seen", "last_seen", "threat.tactic.name",
         "threat.technique.id", "entities", "alert.ids", "alert.count", "rule.names", "graph")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data: Path) -> list[Path]:
    d = tmp_path_factory.mktemp("inputs")
    manifest = generate_campaign(d / "campaign", seed=7)
    bad = d / "bad.json"
    bad.write_text('{"event": {"kind": "event"}, "source": {"ip": "10.1.2.3"}}\nthis is not JSON\n[1, 2\n',
                   encoding="utf-8")
    return [Path(f) for f in manifest.files] + [
        shared_data / "zeek/slips/port-scans/vertical/conn.log",
        shared_data / "zeek/slips/port-scans/horizontal/conn.log",
        shared_data / "suricata/frank_samples/wrccdc-2017/alerts-only.json",
        shared_data / "logs/loghub/OpenSSH/OpenSSH_2k.log",
        shared_data / "pcap/scan/evilfingers_nmap/TCP_SYN_SCAN.pcap",  # events straight onto `events`
        bad,
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_data: Path) -> Path:
    """An anomaly model (IsolationForest on a labelled Stratosphere conn log) for both data directories."""
    from detect.anomaly.evaluate import train

    d = tmp_path_factory.mktemp("models")
    train([shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"]).save(d / "flow-isolation_forest")
    return d


def _data_dir(tmp: Path, models: Path) -> Path:
    """A data directory with the anomaly model and the demo network as the CII inventory (enrichment)."""
    import yaml

    from compliance.inventory import Inventory
    from taishi.demo import demo_inventory

    shutil.copytree(models, tmp / "models")
    with Inventory.editing(tmp) as inv:
        inv.import_yaml(yaml.safe_dump(demo_inventory(), allow_unicode=True), who="test")
    return tmp


@pytest.fixture(scope="module")
def embedded(inputs, models, tmp_path_factory):
    cfg = config_mod.load(data_dir=_data_dir(tmp_path_factory.mktemp("embedded"), models))
    pipe = Pipeline(cfg, bounded=True)
    try:
        stats = pipe.run_files(inputs)
    finally:
        pipe.close()
    store = Store(cfg.data_dir)
    try:
        alerts = {a["id"]: a for a in store.search_alerts("", limit=None).to_pylist()}
        dls = set(store.search_deadletters("", limit=None).column("id").to_pylist())
        incidents = {i["id"]: i for i in store.search_incidents("", limit=None)}
        enriched = store.count("events", "taishi.destination.asset.level:3")
    finally:
        store.close()
    return stats, alerts, dls, incidents, enriched


@pytest.fixture(scope="module")
def cluster(inputs, models, spark, kafka_bootstrap, search_node, tmp_path_factory):
    from taishi.cluster import runner
    from taishi.cluster.search import SearchStore

    cfg = cluster_config(_data_dir(tmp_path_factory.mktemp("cluster"), models), kafka_bootstrap, search_node)
    stats, store_stats = runner.ingest(cfg, inputs, spark=spark)
    store = SearchStore.from_config(cfg)
    store.refresh_indices()
    yield cfg, stats, store_stats, store
    store.close()
    drop_namespace(cfg)


def _alerts(store) -> dict[str, dict]:
    return {a["id"]: a for a in store.search_alerts("", limit=10_000).to_pylist()}


def test_same_alert_ids(embedded, cluster):
    e_stats, e_alerts, *_ = embedded
    _, c_stats, _, store = cluster
    assert len(e_stats.alert_ids) > 20  # every stage of the campaign, the scans in the samples
    assert any(a["rule.type"] == "anomaly" for a in e_alerts.values())  # the model flags some flows
    assert c_stats.alert_ids == e_stats.alert_ids
    assert set(_alerts(store)) == set(e_alerts)
    # the summary the CLI prints is the embedded one
    assert c_stats.as_dict()["alerts_by_rule"] == e_stats.as_dict()["alerts_by_rule"]
    assert c_stats.as_dict()["alerts_by_level"] == e_stats.as_dict()["alerts_by_level"]


def test_same_alert_contents(embedded, cluster):
    _, e_alerts, *_ = embedded
    _, _, _, store = cluster
    c_alerts = _alerts(store)
    for aid, a in e_alerts.items():
        c = c_alerts[aid]
        for f in ("rule.id", "rule.level", "rule.type", "@timestamp", "source.ip", "destination.ip", "user.name",
                  "event.count", "taishi.group", "threat.technique.id"):
            assert c.get(f) == a.get(f) or (not c.get(f) and not a.get(f)), (aid, f, c.get(f), a.get(f))
        assert sorted(c["event.ids"] or []) == sorted(a["event.ids"] or [])


def test_same_events_and_dead_letters(embedded, cluster):
    e_stats, _, e_dls, *_ = embedded
    _, c_stats, store_stats, store = cluster
    assert c_stats.records == e_stats.records
    assert c_stats.events == e_stats.events == store_stats["events"]
    assert c_stats.as_dict()["events_by_dataset"] == e_stats.as_dict()["events_by_dataset"]
    c_dls = set(store.search_deadletters("", limit=10_000).column("id").to_pylist())
    assert len(e_dls) >= 2  # the bad file's two broken lines
    assert c_dls == e_dls
    reasons = store.search_deadletters("taishi.source:bad.json", limit=10).column("reason").to_pylist()
    assert reasons and all(r.startswith("invalid JSON") for r in reasons)


def test_same_cii_enrichment(embedded, cluster):
    enriched = embedded[4]
    store = cluster[3]
    assert enriched > 0  # events towards MLPS level-3 assets of the demo network
    assert store.count("events", "taishi.destination.asset.level:3") == enriched


def test_same_incidents(embedded, cluster):
    _, _, _, e_inc, _ = embedded
    _, _, _, store = cluster
    c_inc = {i["id"]: i for i in store.search_incidents("", limit=1000)}
    assert e_inc, "the campaign makes incidents"
    assert set(c_inc) == set(e_inc)
    for iid, inc in e_inc.items():
        for f in BUILT:
            assert c_inc[iid].get(f) == inc.get(f), (iid, f)


def test_kafka_topics_carry_the_results(embedded, cluster):
    from taishi.cluster.kafka_bus import consume

    e_stats = embedded[0]
    cfg = cluster[0]
    ids = {r["id"] for r in consume(cfg, "alerts", timeout_s=5)}
    assert ids == e_stats.alert_ids
    assert any(r["stage"] == "parse" for r in consume(cfg, "deadletter", timeout_s=5))


def test_restart_and_replay_write_nothing_twice(inputs, cluster, spark, tmp_path):
    """The same checkpoint resumes after the input (nothing re-read); a fresh checkpoint replays
    every Kafka record, and the deterministic ids leave the search store as it was."""
    from taishi.cluster.runner import ClusterRun

    cfg, c_stats, _, store = cluster
    before = {**store.stats(), "incidents": len(store.search_incidents("", limit=1000))}
    run = ClusterRun(cfg, spark)
    try:
        run.detect()  # resumes from the checkpoint: the input is consumed already
        assert run.job.events == 0 and not run.job.alerts
        run.finish_bounded(checkpoint=tmp_path / "replay", incidents_checkpoint=tmp_path / "replay-incidents")
    finally:
        run.close()
    assert run.job.events == c_stats.events  # everything was read again ...
    assert set(run.job.alerts) == c_stats.alert_ids  # ... and raised the same alerts ...
    assert run.job.events_stored == 0 and run.job.alerts_stored == 0  # ... which were all stored already
    store.refresh_indices()
    after = {**store.stats(), "incidents": len(store.search_incidents("", limit=1000))}
    assert after["events"] == before["events"]
    assert after["alerts"] == before["alerts"]
    assert after["incidents"] == before["incidents"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stream_mode_syslog_collector_to_search(spark, kafka_bootstrap, search_node, shared_data, tmp_path):
    """``taishi run`` in cluster mode: a TCP syslog collector produces to Kafka, the detect job runs on a
    processing-time trigger with the configured allowed lateness, and the correlation windows close on the
    event-time watermark (heartbeats), not at a flush: each alert it raises is one the bounded run raises."""
    import socket
    import threading
    import time

    from ingest.collectors import Listener
    from taishi.cluster.runner import run_stream
    from taishi.cluster.search import SearchStore

    lines = (shared_data / "logs/loghub/OpenSSH/OpenSSH_2k.log").read_text().splitlines()[:600]
    sample = tmp_path / "auth.log"
    sample.write_text("\n".join(lines) + "\n")
    bounded_cfg = config_mod.load(data_dir=tmp_path / "bounded")
    pipe = Pipeline(bounded_cfg, bounded=True)
    try:
        bounded = pipe.run_files([sample])
    finally:
        pipe.close()
    st = Store(bounded_cfg.data_dir)
    try:
        bounded_corr = set(st.search_alerts("rule.type:sigma_correlation", limit=None).column("id").to_pylist())
    finally:
        st.close()
    assert bounded_corr  # the sample holds brute-force bursts

    cfg = cluster_config(tmp_path / "stream", kafka_bootstrap, search_node)
    port = _free_port()
    stop, result, errors = threading.Event(), {}, []

    def serve() -> None:
        try:
            result.update(run_stream(cfg, [Listener("tcp", "127.0.0.1", port)], [], stop=stop, spark=spark,
                                     trigger_s=1.0))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    store = SearchStore.from_config(cfg)
    try:
        for _ in range(240):  # the collector listens once the Spark queries were started
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert not errors, errors
                time.sleep(0.5)
        else:
            pytest.fail("the cluster-mode collector never listened")
        with conn:
            conn.sendall("".join(f"<38>{line}\n" for line in lines).encode())
        seen: set[str] = set()
        for _ in range(300):  # bounded wait for the stream to catch up
            assert not errors, errors
            store.refresh_indices()
            seen = set(store.search_alerts("rule.type:sigma_correlation", limit=1000).column("id").to_pylist())
            if store.count("events") == len(lines) and seen:
                break
            time.sleep(1)
    finally:
        stop.set()
        th.join(180)
        store.close()
        drop_namespace(cfg)
    assert not errors, errors
    assert result["events"] == len(lines) == bounded.events
    assert result["syslog"]["received"] == len(lines)
    assert seen, "the watermark closed windows while streaming"
    assert seen <= bounded_corr


def test_query_stopped_mid_stream_resumes_without_loss_or_duplicates(inputs, embedded, spark, kafka_bootstrap,
                                                                       search_node, tmp_path):
    """The detect query runs in small micro-batches and is stopped after its second batch, in the middle
    of the input (an in-flight batch is cut off); a restart from the same checkpoint finishes the input.
    Every alert of the embedded run is there once, no other alert is; every event is stored once."""
    import time

    from taishi.cluster.runner import ClusterRun, FileCollector
    from taishi.cluster.search import SearchStore

    e_stats, e_alerts, *_ = embedded
    expected = {i for i, a in e_alerts.items() if a["rule.type"] != "anomaly"}  # no model in this data dir
    cfg = cluster_config(tmp_path / "restart", kafka_bootstrap, search_node)
    run = ClusterRun(cfg, spark)
    try:
        col = FileCollector(cfg, run.bus, run.stats)
        for p in inputs:
            col.collect_file(p)
        q = run.detect(available_now=False, max_offsets=2000, trigger_s=0.5)
        for _ in range(1200):  # bounded wait for two finished micro-batches
            progress = q.lastProgress
            if progress and progress["batchId"] >= 1 or q.exception() is not None:
                break
            time.sleep(0.25)
        q.stop()
        assert q.exception() is None
        assert 0 < run.job.events < e_stats.events  # stopped mid-stream
        run.finish_bounded()  # restart from the checkpoint, end of input, incidents
    finally:
        run.close()
    assert set(run.job.alerts) == expected
    store = SearchStore.from_config(cfg)
    try:
        store.refresh_indices()
        st = store.stats()
        ids = store.search_alerts("", limit=10_000).column("id").to_pylist()
    finally:
        store.close()
        drop_namespace(cfg)
    assert len(ids) == len(set(ids)) == len(expected) == st["alerts"]
    assert st["events"] == e_stats.events
