"""Anomaly model (detect/anomaly/model.py): determinism, artefact round-trip, explanations, Spark adapters.

Uses the labelled Zeek capture CTU-Normal-40 day 1 (stratosphere_sdt/008) from ``shared_data``.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("sklearn")

from detect.anomaly.evaluate import _sort_by_time, load_zeek  # noqa: E402
from detect.anomaly.features import DNS_FEATURES, FLOW_FEATURES  # noqa: E402
from detect.anomaly.model import SCORE_SCHEMA, AnomalyModel, map_in_arrow  # noqa: E402


@pytest.fixture(scope="module")
def capture(shared_data):
    return _sort_by_time(*load_zeek(shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"))


@pytest.fixture(scope="module")
def model(capture):
    t, y, _ = capture
    return AnomalyModel(kind="flow", n_estimators=100).fit_events(t, y)


def test_threshold_and_metadata(model):
    assert np.isfinite(model.threshold)
    side = model.sidecar()
    assert [f["name"] for f in side["feature_schema"]] == FLOW_FEATURES
    assert side["sklearn_version"] and side["target_fpr"] == 0.01 and side["n_fit"] > 0


def test_scoring_is_deterministic(capture, model):
    t, y, _ = capture
    a = model.score(t)
    b = model.score(t)
    assert a.schema == SCORE_SCHEMA and a.num_rows == t.num_rows
    assert a.equals(b)
    # refitting with the same seed gives the same model
    again = AnomalyModel(kind="flow", n_estimators=100).fit_events(t, y)
    np.testing.assert_array_equal(a.column("anomaly.score").to_numpy(), again.score(t).column("anomaly.score").to_numpy())
    assert again.threshold == model.threshold


def test_artefact_round_trip(tmp_path, capture, model):
    t, _, _ = capture
    pkl, side = model.save(tmp_path / "flow-if")
    meta = json.loads(side.read_text())
    for key in ("feature_schema", "training_window", "sklearn_version", "threshold", "sha256", "model_version"):
        assert key in meta
    loaded = AnomalyModel.load(tmp_path / "flow-if")
    assert loaded.threshold == model.threshold and loaded.feature_names == model.feature_names
    assert loaded.score(t).equals(model.score(t))
    pkl.write_bytes(pkl.read_bytes() + b"x")
    with pytest.raises(ValueError, match="hash"):
        AnomalyModel.load(tmp_path / "flow-if")


def test_explanations_name_real_features(capture, model):
    t, y, _ = capture
    s = model.score(t)
    hit = s.column("anomaly.is_anomaly").to_numpy(zero_copy_only=False)
    expl = s.column("anomaly.explanation").to_pylist()
    assert hit.sum() > 0
    for flag, e in zip(hit, expl):
        assert (e is not None) == bool(flag)
        if e is None:
            continue
        items = json.loads(e)
        assert len(items) == model.top_k
        for it in items:
            assert it["feature"] in FLOW_FEATURES
            assert np.isfinite(it["z"]) and set(it) == {"feature", "value", "baseline", "z"}
        assert abs(items[0]["z"]) >= abs(items[-1]["z"])


def test_pickles_and_maps_over_arrow_batches(capture, model):
    t, _, _ = capture
    clone = pickle.loads(pickle.dumps(model))  # what a Spark broadcast does
    batches = t.slice(0, 2000).to_batches(max_chunksize=500)
    out = list(map_in_arrow(clone)(iter(batches)))
    direct = pa.concat_tables([model.score(b) for b in batches])
    assert pa.Table.from_batches(out).equals(direct)


def test_dns_model_and_supervised(shared_data):
    from detect.anomaly.evaluate import load_dns_csv

    t, y, _ = load_dns_csv(shared_data / "flows/dns_qname_netrack/validate.csv")
    m = AnomalyModel(kind="dns", algorithm="random_forest", n_estimators=30).fit_events(t, y, time_ordered=False)
    s = m.score(t.slice(0, 200))
    for e in s.column("anomaly.explanation").drop_null().to_pylist():
        assert all(it["feature"] in DNS_FEATURES for it in json.loads(e))
    with pytest.raises(ValueError):
        AnomalyModel(kind="dns", algorithm="random_forest").fit(np.zeros((10, len(DNS_FEATURES))), np.zeros(10))


def test_anomaly_alerts(capture, model):
    from detect.anomaly.model import anomaly_alerts
    from taishi.schema import ALERT_SCHEMA

    t, _, _ = capture
    a = anomaly_alerts(model, t.slice(0, 1000))
    hits = int(model.score(t.slice(0, 1000)).column("anomaly.is_anomaly").to_numpy(zero_copy_only=False).sum())
    assert a.schema.equals(ALERT_SCHEMA) and a.num_rows == hits > 0
    assert set(a.column("rule.type").to_pylist()) == {"anomaly"}
    assert a.equals(anomaly_alerts(model, t.slice(0, 1000)))  # stable ids on replay
    assert any(f in a.column("message")[0].as_py() for f in FLOW_FEATURES)
    dns_only = pa.table({"dns.question.name": ["x.example."], "event.type": ["protocol"]})
    assert anomaly_alerts(model, dns_only).num_rows == 0


def test_train_from_files_unlabelled_zeek(shared_data, tmp_path):
    # An unlabelled conn log is a benign baseline; the artefact records its window and sources.
    from detect.anomaly.evaluate import train

    m = train([shared_data / "zeek/stratosphere_sdt/005-simda/conn.log"], n_estimators=50)
    _, side = m.save(tmp_path / "m")
    meta = json.loads(side.read_text())
    assert meta["training_window"][0] < meta["training_window"][1]
    assert meta["n_train_malicious"] == 0 and meta["n_fit"] > 500
    assert meta["training_sources"][0].endswith("005-simda/conn.log")
