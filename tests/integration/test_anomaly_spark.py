"""Anomaly scoring gives the same scores and the same alerts on Spark as embedded.

A real local Spark session (the ``spark`` fixture) scores real labelled flows
(Stratosphere CTU-Normal-42 day 2, Zeek conn log with per-flow labels) and the
demo campaign with an IsolationForest trained on another day
(CTU-Normal-40 day 1). The embedded side is the real pipeline
(``Pipeline.run_files``, bounded like ``taishi ingest``) with the model in the
data directory and small batches, so windows straddle batch boundaries; its
anomaly alerts are read back from the store. The Spark side gets the same
events and runs ``detect.anomaly.spark``.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("sklearn")

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, shared_data) -> Path:
    from detect.anomaly.evaluate import train

    d = tmp_path_factory.mktemp("models")
    m = train([shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"])
    m.save(d / "flow-isolation_forest")
    return d


@pytest.fixture(scope="module")
def model(model_files):
    from detect.anomaly.model import AnomalyModel

    side = model_files / "flow-isolation_forest.json"
    return json.loads(side.read_text())["model_version"], AnomalyModel.load(side)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_data) -> dict[str, list[Path]]:
    from taishi.demo import generate_campaign

    demo = tmp_path_factory.mktemp("demo")
    m = generate_campaign(demo, seed=7, start=START)
    return {
        "labelled": [shared_data / "zeek/stratosphere_sdt/010-zeek-mixed/conn.log.labeled"],
        "demo": [Path(f) for f in m.files],
    }


def embedded_run(tmp: Path, model_files: Path, paths: list[Path]):
    from taishi.bus import TOPIC_EVENTS, Bus
    from taishi.config import Config
    from taishi.pipeline import Pipeline
    from taishi.store import Store

    data = tmp / "taishi-data"
    shutil.copytree(model_files, data / "models")
    cfg = Config(data_dir=data, batch_size=256)  # small batches: windows straddle them
    pipe = Pipeline(cfg, bounded=True)
    try:
        pipe.run_files(paths)
    finally:
        pipe.close()
    events = [b.table for b in Bus(cfg.bus_dir).read(TOPIC_EVENTS, 0) if b.table.num_rows]
    store = Store(data)
    try:
        alerts = store.search_alerts("", limit=None).to_pylist()
    finally:
        store.close()
    return events, [a for a in alerts if a["rule.type"] == "anomaly"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_files, model, inputs, spark):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = both_modes(name, tmp_path_factory.mktemp(name), model_files, model, inputs[name], spark)
        return cache[name]

    return get


@pytest.fixture(scope="module", params=["labelled", "demo"])
def case(request, runs):
    return runs(request.param)


def both_modes(name, tmp, model_files, model, paths, spark) -> dict:
    from detect.anomaly import spark as S
    from detect.anomaly.windows import windowed_batches

    version, m = model
    events, emb_alerts = embedded_run(tmp, model_files, paths)
    # embedded scores: the pipeline's batches through the same window buffer the pipeline's stage uses
    emb_scores = pa.concat_tables([m.score(w) for w in windowed_batches(m, events)])
    df = S.events_dataframe(spark, pa.concat_tables(events, promote_options="default"))
    spark_scores = S.score_dataframe(df, m, version).toArrow()
    spark_alerts = S.anomaly_alerts_dataframe(df, m, version).toArrow().to_pylist()
    return {
        "name": name,
        "events": events,
        "emb_scores": emb_scores,
        "spark_scores": spark_scores,
        "emb_alerts": emb_alerts,
        "spark_alerts": spark_alerts,
        "version": version,
    }


def _by_id(t: pa.Table, col: str) -> dict:
    return dict(zip(t.column("event.id").to_pylist(), t.column(col).to_pylist()))


def test_same_scores(case):
    emb, sp = case["emb_scores"], case["spark_scores"]
    assert emb.num_rows > 1000
    e, s = _by_id(emb, "anomaly.score"), _by_id(sp, "anomaly.score")
    assert len(e) == emb.num_rows and set(e) == set(s)
    worst = max(abs(e[k] - s[k]) for k in e)
    assert worst <= 1e-9, worst
    assert _by_id(emb, "anomaly.is_anomaly") == _by_id(sp, "anomaly.is_anomaly")
    assert _by_id(emb, "anomaly.explanation") == _by_id(sp, "anomaly.explanation")
    assert set(sp.column("anomaly.model_version").to_pylist()) == {case["version"]}


def test_same_alert_ids(case):
    emb = {a["id"] for a in case["emb_alerts"]}
    sp = {a["id"] for a in case["spark_alerts"]}
    assert emb, "the embedded pipeline raised no anomaly alert"
    assert emb == sp
    assert len(case["spark_alerts"]) == len(sp)  # each once
    flagged = {k for k, v in _by_id(case["emb_scores"], "anomaly.is_anomaly").items() if v}
    assert {i for a in case["spark_alerts"] for i in a["event.ids"]} == flagged


def test_same_alert_contents(case):
    fields = ("rule.id", "rule.name", "source.ip", "destination.ip", "destination.port", "event.ids", "message")
    emb = {a["id"]: tuple(json.dumps(a[f], default=str) for f in fields) for a in case["emb_alerts"]}
    sp = {a["id"]: tuple(json.dumps(a[f], default=str) for f in fields) for a in case["spark_alerts"]}
    assert emb == sp


def test_alerts_on_labelled_flows_are_mostly_attacks(runs):
    # the cross-day split of tests/test_anomaly_eval.py (measured precision .906), now through both executors
    case = runs("labelled")
    label = {}
    for t in case["events"]:
        for eid, extra in zip(t.column("event.id").to_pylist(), t.column("taishi.extra").to_pylist()):
            label[eid] = str(json.loads(extra or "{}").get("label", "")).lower().startswith("malicious")
    hits = [i for a in case["spark_alerts"] for i in a["event.ids"]]
    assert sum(label[i] for i in hits) / len(hits) >= 0.85
