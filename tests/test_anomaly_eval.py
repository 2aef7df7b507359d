"""Detection quality of detect/anomaly on the shared labelled data (real data, ``shared_data``).

Floors are set a little below what ``python -m detect.anomaly.evaluate`` measured
(docs/anomaly/results.json; scikit-learn 1.9.1, seeds fixed), so a regression
fails but platform noise does not. Each split is leak-free: by capture/day, by
the source's own train/validate files, or by time (earlier trains, later tests).
Thresholds are chosen at a 1 % false-positive rate on held-out benign training
rows, never on test data.
"""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from detect.anomaly.evaluate import evaluate, standard_runs  # noqa: E402

NETRACK_PRECISION, NETRACK_RECALL = 0.841, 0.818  # the source's own model (netrack/learn metrics.txt)


def run(shared_data, name, algorithms):
    kw = dict(standard_runs(shared_data)[name])
    kw["algorithms"] = algorithms
    return evaluate(**kw)


def check(m, auc, precision, recall):
    assert m["auc"] >= auc, m
    assert m["precision"] >= precision, m
    assert m["recall"] >= recall, m


def test_zeek_cross_day(shared_data):
    # Train CTU-Normal-40 day 1, test CTU-Normal-42 day 2 (different day and host).
    # Measured: IF auc .966 P .906 R 1.0; RF auc 1.0 P .983 R 1.0. The IF threshold drifts
    # across days: 1768 false alerts / 10k benign at a 1 % training FPR (reported, not floored).
    r = run(shared_data, "zeek_008_to_010", ("isolation_forest", "random_forest"))
    check(r["models"]["isolation_forest"], auc=0.94, precision=0.85, recall=0.95)
    check(r["models"]["random_forest"], auc=0.98, precision=0.95, recall=0.97)
    assert r["recall_per_family"]["External-Attack-to-Device"]["recall"] >= 0.95


def test_zeek_time_split(shared_data):
    # CTU-Normal-40 day 1, first half (by time) trains. Measured IF: auc .997 P .993 R .997.
    r = run(shared_data, "zeek_008_timesplit", ("isolation_forest",))
    check(r, auc=0.97, precision=0.97, recall=0.95)
    assert r["false_alerts_per_10k_benign"] <= 300  # measured 179


def test_zeek_njrat_time_split(shared_data):
    # NjRAT capture (244 C&C flows), first half trains. Measured IF: auc 1.0 P 1.0 R .503
    # (half the C&C flows score under the 1 % FPR threshold); RF: auc 1.0 P 1.0 R 1.0.
    r = run(shared_data, "zeek_njrat_timesplit", ("isolation_forest", "random_forest"))
    check(r["models"]["isolation_forest"], auc=0.95, precision=0.9, recall=0.4)
    check(r["models"]["random_forest"], auc=0.97, precision=0.9, recall=0.9)


def test_dns_beats_netrack_baseline(shared_data):
    # Source's train.csv trains, validate.csv tests. Measured: GradientBoosting P .996 R 1.0;
    # unsupervised IsolationForest (benign names only) P .989 R .9995.
    r = run(shared_data, "dns_netrack", ("gradient_boosting", "isolation_forest"))
    gb, iso = r["models"]["gradient_boosting"], r["models"]["isolation_forest"]
    check(gb, auc=0.99, precision=0.97, recall=0.97)
    check(iso, auc=0.98, precision=0.95, recall=0.97)
    for m in (gb, iso):
        assert m["precision"] > NETRACK_PRECISION and m["recall"] > NETRACK_RECALL


def test_cicids2017(shared_data):
    # Per-class samples, time split inside each file; per-flow features only.
    # Measured RF: auc .9986 P .9992 R .976 (weakest family DoS Slowhttptest .789).
    # IF: auc .898 but recall 0 at the 1 % FPR threshold: unsupervised per-flow scoring
    # does not separate these DoS/brute-force flows from benign ones (reported, only auc floored).
    r = run(shared_data, "cicids2017", ("random_forest", "isolation_forest"))
    rf = r["models"]["random_forest"]
    check(rf, auc=0.98, precision=0.98, recall=0.94)
    assert min(f["recall"] for f in rf["recall_per_family"].values()) >= 0.7
    assert r["models"]["isolation_forest"]["auc"] >= 0.85
