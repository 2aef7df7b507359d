"""Anomaly features (detect/anomaly/features.py): batch-pure, same code for every source."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from detect.anomaly.features import DNS_FEATURES, FLOW_FEATURES, flow_features, qname_features

pytest.importorskip("sklearn")


def _flows(times, src="10.0.0.5", dst="203.0.113.9", dports=None, state="SF"):
    n = len(times)
    return pa.table(
        {
            "@timestamp": pa.array([int(t * 1e6) for t in times], pa.timestamp("us", tz="UTC")),
            "source.ip": [src] * n,
            "destination.ip": [dst] * n if isinstance(dst, str) else dst,
            "destination.port": dports or [443] * n,
            "network.transport": ["tcp"] * n,
            "event.action": [state] * n,
            "event.duration": [1_000_000_000] * n,
            "source.bytes": [300] * n,
            "destination.bytes": [4000] * n,
            "source.packets": [5] * n,
            "destination.packets": [6] * n,
        }
    )


def col(X, name):
    return X[:, FLOW_FEATURES.index(name)]


def test_flow_features_shape_and_missing_columns():
    X, cls = flow_features(pa.table({"source.ip": ["8.8.8.8", "192.168.1.2"]}))
    assert X.shape == (2, len(FLOW_FEATURES)) and np.isfinite(X).all()
    assert cls.tolist() == ["external", "internal"]
    X0, _ = flow_features(pa.table({"source.ip": pa.array([], pa.string())}))
    assert X0.shape == (0, len(FLOW_FEATURES))


def test_beaconing_is_periodic_and_jitter_is_not():
    rng = np.random.default_rng(1)
    beacon, _ = flow_features(_flows([i * 10.0 for i in range(20)]))
    jitter, _ = flow_features(_flows(np.sort(rng.uniform(0, 200, 20)).tolist()))
    assert col(beacon, "pair_periodicity").min() > 0.95
    assert col(jitter, "pair_periodicity").max() < 0.7


def test_scan_window_features():
    t = _flows([float(i) for i in range(50)], dst=[f"10.0.1.{i}" for i in range(50)], dports=list(range(1, 51)), state="S0")
    X, _ = flow_features(t)
    assert col(X, "win_log_distinct_dst")[0] == pytest.approx(np.log1p(50))
    assert col(X, "win_log_distinct_dport")[0] == pytest.approx(np.log1p(50))
    assert col(X, "win_failed_ratio")[0] == 1.0 and col(X, "state_S0").all()
    Xoff, _ = flow_features(t, window=False)
    assert not Xoff[:, FLOW_FEATURES.index("win_log_flows") :].any()


def test_flow_features_are_batch_pure():
    t = _flows([float(i) for i in range(30)])
    a, _ = flow_features(t)
    b, _ = flow_features(pa.Table.from_batches(t.to_batches()))
    np.testing.assert_array_equal(a, b)


def test_qname_features():
    q = qname_features(["www.google.com.", "q+Z8BnweCORdAGL4+W7DB5xH1cUwcwM1gejAQoJF8hbs2Jf6p3n1rvyE.hidemyself.org.", None])
    f = {n: i for i, n in enumerate(DNS_FEATURES)}
    assert q[0, f["label_count"]] == 3 and q[0, f["length"]] == len("www.google.com")
    assert q[1, f["entropy"]] > q[0, f["entropy"]]
    assert q[1, f["bigram_rarity"]] > q[0, f["bigram_rarity"]]
    assert q[1, f["symbol_ratio"]] > 0 and q[0, f["symbol_ratio"]] == 0
    assert np.isfinite(q).all()
