"""Evaluate anomaly models on labelled data, without train/test leakage.

``evaluate(paths, train=None, ...) -> dict`` detects the kind of data from the
files:

* Zeek conn logs with Stratosphere labels (``label``/``detailedlabel`` kept in
  ``taishi.extra``): ``Malicious`` = 1, ``Benign`` and ``Background`` = 0,
  ``Unknown`` rows dropped; the attack family is the ``detailedlabel``. Split
  by capture: fit on ``train`` captures, test on ``paths``; without ``train``,
  the first half of ``paths`` by time trains and the second half tests.
* The netrack DNS query-name CSV (``label,qname``): fit on ``train`` (the
  source's own train.csv), test on ``paths`` (its validate.csv).
* CIC-IDS2017 "improved" CSVs (per-class samples): columns mapped to ECS flow
  fields, then the same flow features; split by time *within each file* (the
  first ``1 - test_fraction`` of each class's rows by Timestamp train). The
  entity/window features are switched off here: the files are random samples
  per class, so which flows share a window is an artefact of the sampling.

Reported per model: ``auc`` (ROC AUC of the score), ``precision`` and
``recall`` at the model's threshold (chosen on benign calibration rows at the
target false-positive rate), ``false_alerts_per_10k_benign``,
``recall_per_family``. The first model in ``algorithms`` is also copied to the
top level of the result. ``plot=`` writes score-over-time with attack periods
shaded (PNG).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import roc_auc_score

from detect.anomaly import features as F
from detect.anomaly.model import SUPERVISED, AnomalyModel


# ---------------------------------------------------------------------------
# loaders: (events table, y, family)


def load_zeek(path: str | Path) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """A Zeek conn log as ECS events, labels (1 malicious) and attack family.

    Stratosphere labels: Malicious = 1; Benign, Background = 0; Unknown rows are
    dropped. A log without a ``label`` field is taken as all benign (baseline).
    """
    import ingest.files
    import ingest.parsers

    parts = [ingest.parsers.parse("zeek", raw).events for raw in ingest.files.read_records(path, "zeek")]
    t = pa.concat_tables(parts) if parts else pa.table({})
    lab, fam = [], []
    for x in t.column("taishi.extra").to_pylist():
        e = json.loads(x) if x else {}
        if "label" not in e:  # an unlabelled log: a training baseline, taken as benign
            lab.append(0)
            fam.append("unlabelled")
            continue
        label = str(e.get("label") or "").lower()
        detailed = e.get("detailedlabel") or ""
        if label.startswith("malicious"):
            lab.append(1)
            fam.append(detailed or "malicious")
        elif label.startswith(("benign", "background", "normal")):
            lab.append(0)
            fam.append("benign")
        else:
            lab.append(-1)
            fam.append("unknown")
    y = np.array(lab)
    keep = y >= 0
    if not keep.all():
        t = t.filter(pa.array(keep))
    return t, y[keep], np.array(fam, dtype=object)[keep]


def load_dns_csv(path: str | Path) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The netrack ``label,qname`` CSV as DNS events (``dns.question.name``)."""
    names, y = [], []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0] not in ("0", "1"):
                continue
            y.append(int(row[0]))
            names.append(",".join(row[1:]))
    y_arr = np.array(y)
    fam = np.array(["tunnel" if v else "benign" for v in y], dtype=object)
    for i, q in enumerate(names):
        if y[i]:
            parts = q.rstrip(".").split(".")
            fam[i] = "tunnel:" + ".".join(parts[-2:])  # test domain, e.g. hidemyself.org
    return pa.table({"dns.question.name": names}), y_arr, fam


_CIC_PROTO = {6: "tcp", 17: "udp", 1: "icmp"}


def load_cicids(path: str | Path) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """A CIC-IDS2017 "improved" CSV mapped to ECS flow fields (no conn_state: CICFlowMeter has none)."""
    from pyarrow import csv as pacsv

    t = pacsv.read_csv(path)
    label = [str(x) for x in t.column("Label").to_pylist()]
    y = np.array([0 if x.upper() == "BENIGN" else 1 for x in label])
    ts = pc.strptime(pc.utf8_slice_codeunits(pc.cast(t.column("Timestamp"), pa.string()), 0, 19), "%Y-%m-%d %H:%M:%S", "us")
    proto = [_CIC_PROTO.get(int(p), str(p)) for p in t.column("Protocol").to_pylist()]
    ev = pa.table(
        {
            "@timestamp": pc.cast(ts, pa.timestamp("us", tz="UTC")),
            "event.id": pc.cast(t.column("id"), pa.string()),
            "source.ip": pc.cast(t.column("Src IP"), pa.string()),
            "destination.ip": pc.cast(t.column("Dst IP"), pa.string()),
            "destination.port": pc.cast(t.column("Dst Port"), pa.int64()),
            "network.transport": proto,
            "event.duration": pc.multiply(pc.cast(t.column("Flow Duration"), pa.int64()), 1000),  # us -> ns
            "source.packets": pc.cast(t.column("Total Fwd Packet"), pa.int64()),
            "destination.packets": pc.cast(t.column("Total Bwd packets"), pa.int64()),
            "source.bytes": pc.cast(t.column("Total Length of Fwd Packet"), pa.int64()),
            "destination.bytes": pc.cast(t.column("Total Length of Bwd Packet"), pa.int64()),
        }
    )
    return ev, y, np.array(["benign" if v == 0 else label[i] for i, v in enumerate(y)], dtype=object)


def detect_kind(path: str | Path) -> str:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512).decode("utf-8", "replace")
    if head.startswith("#separator") or head.startswith("{"):
        return "zeek"
    if head.startswith(("0,", "1,")):
        return "dns"
    if "Flow ID" in head.splitlines()[0]:
        return "cicids"
    raise ValueError(f"cannot tell what kind of labelled data {path} is")


LOADERS = {"zeek": load_zeek, "dns": load_dns_csv, "cicids": load_cicids}


def _load_many(paths: Sequence[str | Path], kind: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    tabs, ys, fams = [], [], []
    for p in paths:
        t, y, f = LOADERS[kind](p)
        tabs.append(t)
        ys.append(y)
        fams.append(f)
    return pa.concat_tables(tabs, promote_options="default"), np.concatenate(ys), np.concatenate(fams)


def _sort_by_time(t: pa.Table, *arrs: np.ndarray) -> tuple:
    if "@timestamp" not in t.column_names or t.num_rows == 0:
        return (t, *arrs)
    order = np.argsort(F._ts_seconds(t), kind="stable")
    return (t.take(pa.array(order)), *(a[order] for a in arrs))


def _subsample(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


# ---------------------------------------------------------------------------
# metrics


def metrics(scores: np.ndarray, threshold: float, y: np.ndarray, fam: np.ndarray) -> dict[str, Any]:
    pred = scores > threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    nb = int((y == 0).sum())
    per_family = {}
    for f in sorted(set(fam[y == 1].tolist())):
        m = (fam == f) & (y == 1)
        per_family[str(f)] = {"n": int(m.sum()), "recall": round(float(pred[m].mean()), 4)}
    auc = float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")
    return {
        "auc": round(auc, 4),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 0.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 0.0,
        "false_alerts_per_10k_benign": round(1e4 * fp / nb, 1) if nb else float("nan"),
        "threshold": threshold,
        "n_test_benign": nb,
        "n_test_malicious": int((y == 1).sum()),
        "recall_per_family": per_family,
    }


# ---------------------------------------------------------------------------
# evaluation


def evaluate(
    paths: Sequence[str | Path],
    train: Sequence[str | Path] | None = None,
    algorithms: Sequence[str] = ("isolation_forest", "random_forest"),
    target_fpr: float = 0.01,
    test_fraction: float = 0.4,
    max_rows: int | None = None,
    plot: str | Path | None = None,
    random_state: int = 0,
    models_out: dict[str, AnomalyModel] | None = None,
) -> dict[str, Any]:
    """Fit each algorithm on the training part and report metrics on the test part (see module doc)."""
    paths = [Path(p) for p in paths]
    kind = detect_kind(paths[0])
    fkind = "dns" if kind == "dns" else "flow"

    if kind == "cicids":
        tr_parts, te_parts = [], []
        for p in paths:
            t, y, fam = _sort_by_time(*load_cicids(p))
            cut = int(round(t.num_rows * (1 - test_fraction)))
            tr_parts.append((t.slice(0, cut), y[:cut], fam[:cut]))
            te_parts.append((t.slice(cut), y[cut:], fam[cut:]))
        join = lambda parts: (  # noqa: E731
            pa.concat_tables([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )
        tr, te = _sort_by_time(*join(tr_parts)), _sort_by_time(*join(te_parts))
        split = f"time split within each file: first {1 - test_fraction:.0%} by Timestamp trains"
    elif train:
        tr = _load_many(train, kind)
        te = _load_many(paths, kind)
        if kind != "dns":
            tr, te = _sort_by_time(*tr), _sort_by_time(*te)
        split = "by file/capture: train=" + ",".join(Path(p).parent.name + "/" + Path(p).name for p in train)
    else:
        t, y, fam = _sort_by_time(*_load_many(paths, kind))
        cut = t.num_rows // 2
        tr, te = (t.slice(0, cut), y[:cut], fam[:cut]), (t.slice(cut), y[cut:], fam[cut:])
        split = "time split: first half trains"

    # features are computed on the full (time-ordered) batches, then rows are subsampled
    t_tr, y_tr, _ = tr
    t_te, y_te, fam_te = te
    # CIC files are per-class random samples: batch co-occurrence (window features) is a sampling artefact
    window_features = kind != "cicids"
    probe = AnomalyModel(kind=fkind, window_features=window_features)
    X_tr, c_tr = probe.features(t_tr)
    X_te, _ = probe.features(t_te)
    i_tr = _subsample(len(X_tr), max_rows, random_state)
    i_te = _subsample(len(X_te), max_rows, random_state + 1)
    X_tr, c_tr, y_tr = X_tr[i_tr], c_tr[i_tr], y_tr[i_tr]
    X_te, y_te, fam_te = X_te[i_te], y_te[i_te], fam_te[i_te]
    ts_te = F._ts_seconds(t_te)[i_te] if "@timestamp" in t_te.column_names else np.arange(len(i_te), dtype=float)

    window = None
    if "@timestamp" in t_tr.column_names and t_tr.num_rows:
        tsr = F._ts_seconds(t_tr)
        iso = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))  # noqa: E731
        window = (iso(tsr.min()), iso(tsr.max()))

    out: dict[str, Any] = {
        "dataset": kind,
        "split": split,
        "test_files": [str(p) for p in paths],
        "n_train": int(len(X_tr)),
        "n_train_malicious": int(y_tr.sum()),
        "n_test": int(len(X_te)),
        "models": {},
    }
    scores_first = None
    for alg in algorithms:
        if alg in SUPERVISED and len(set(y_tr.tolist())) < 2:
            out["models"][alg] = {"skipped": "training data has one class only"}
            continue
        m = AnomalyModel(
            kind=fkind, algorithm=alg, target_fpr=target_fpr, random_state=random_state, window_features=window_features
        )
        t0 = time.perf_counter()
        m.fit(
            X_tr, y_tr, classes=c_tr, time_ordered=kind != "dns", training_window=window,
            sources=[str(p) for p in (train or paths)],
        )
        fit_s = time.perf_counter() - t0
        s = m.score_matrix(X_te)
        res = metrics(s, m.threshold, y_te, fam_te)
        res["fit_seconds"] = round(fit_s, 3)
        out["models"][alg] = res
        if models_out is not None:
            models_out[alg] = m
        if scores_first is None:
            scores_first = (alg, s, m.threshold)
            out.update({k: res[k] for k in ("auc", "precision", "recall", "false_alerts_per_10k_benign", "recall_per_family")})
            out["algorithm"] = alg
    if plot and scores_first is not None:
        out["plot"] = str(plot_scores(ts_te, scores_first[1], y_te, scores_first[2], plot, title=f"{kind}: {scores_first[0]}"))
    return out


def plot_scores(ts: np.ndarray, scores: np.ndarray, y: np.ndarray, threshold: float, path: str | Path, title: str = "") -> Path:
    """Score over time, attack periods (time bins holding malicious rows) shaded, threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = ts.min() if len(ts) else 0.0
    x = (ts - t0) / 60.0
    fig, ax = plt.subplots(figsize=(11, 4), dpi=110)
    if len(x):
        edges = np.linspace(x.min(), x.max() + 1e-9, 241)
        b = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
        bad = np.bincount(b[y == 1], minlength=len(edges) - 1) > 0
        for i in np.flatnonzero(bad):
            ax.axvspan(edges[i], edges[i + 1], color="tab:red", alpha=0.12, lw=0)
    ax.scatter(x[y == 0], scores[y == 0], s=3, c="tab:blue", label="benign", alpha=0.5)
    ax.scatter(x[y == 1], scores[y == 1], s=3, c="tab:red", label="malicious", alpha=0.5)
    ax.axhline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("minutes since first test flow")
    ax.set_ylabel("anomaly score")
    ax.set_title(title + " (shaded: time bins with labelled attack flows)")
    ax.legend(loc="upper right", markerscale=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def train(
    paths: Sequence[str | Path],
    algorithm: str = "isolation_forest",
    target_fpr: float = 0.01,
    random_state: int = 0,
    **params: Any,
) -> AnomalyModel:
    """Fit a model on files (Zeek conn logs, the DNS qname CSV or CIC CSVs; labels used when present).

    Unsupervised algorithms learn from the benign/unlabelled rows only; the
    threshold comes from the last 20 % (by time) of them.
    """
    paths = [Path(p) for p in paths]
    kind = detect_kind(paths[0])
    fkind = "dns" if kind == "dns" else "flow"
    t, y, _ = _load_many(paths, kind)
    if kind != "dns":
        t, y = _sort_by_time(t, y)
    m = AnomalyModel(kind=fkind, algorithm=algorithm, target_fpr=target_fpr, random_state=random_state,
                     window_features=kind != "cicids", **params)
    X, cls = m.features(t)
    window = None
    if "@timestamp" in t.column_names and t.num_rows:
        tsr = F._ts_seconds(t)
        iso = lambda s: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s))  # noqa: E731
        window = (iso(tsr.min()), iso(tsr.max()))
    return m.fit(X, y, classes=cls, time_ordered=kind != "dns", training_window=window, sources=[str(p) for p in paths])


# ---------------------------------------------------------------------------
# the standard evaluation of the shared data set (tests/test_anomaly_eval.py asserts floors on it)


def standard_runs(shared: str | Path) -> dict[str, dict[str, Any]]:
    """name -> evaluate() kwargs for the labelled sets in ``shared`` (../shared/data)."""
    d = Path(shared)
    z = d / "zeek/stratosphere_sdt"
    return {
        "zeek_008_to_010": {  # train CTU-Normal-40 day 1, test CTU-Normal-42 day 2 (other day, other host)
            "paths": [z / "010-zeek-mixed/conn.log.labeled"],
            "train": [z / "008-zeek-mixed/conn.log.labeled"],
        },
        "zeek_010_to_008": {"paths": [z / "008-zeek-mixed/conn.log.labeled"], "train": [z / "010-zeek-mixed/conn.log.labeled"]},
        "zeek_008_timesplit": {"paths": [z / "008-zeek-mixed/conn.log.labeled"]},
        "zeek_njrat_timesplit": {"paths": [z / "001-njrat/labeled-conn.log"]},
        "dns_netrack": {
            "paths": [d / "flows/dns_qname_netrack/validate.csv"],
            "train": [d / "flows/dns_qname_netrack/train.csv"],
            "algorithms": ("gradient_boosting", "isolation_forest", "random_forest", "lof"),
        },
        "cicids2017": {"paths": sorted((d / "flows/cicids2017_improved").glob("*.csv"))},
    }


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import os

    ap = argparse.ArgumentParser(description="Evaluate the anomaly models on the shared labelled data.")
    ap.add_argument("--shared", default=os.environ.get("TAISHI_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    ap.add_argument("--out", default=Path(__file__).resolve().parents[2] / "docs" / "anomaly")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = {}
    for name, kw in standard_runs(args.shared).items():
        kw = {"algorithms": ("isolation_forest", "random_forest", "lof"), **kw}
        plot = out / f"{name}_score_time.png" if name.startswith("zeek") or name == "cicids2017" else None
        r = evaluate(plot=plot, **kw)
        if "plot" in r:
            r["plot"] = os.path.relpath(r["plot"], out)
        r["test_files"] = [os.path.relpath(p, args.shared) for p in r["test_files"]]
        results[name] = r
        print(f"{name}: n_train={r['n_train']} n_test={r['n_test']}")
        for alg, m in r["models"].items():
            if "auc" in m:
                print(f"  {alg:18s} auc={m['auc']:.4f} P={m['precision']:.4f} R={m['recall']:.4f} "
                      f"FA/10k={m['false_alerts_per_10k_benign']}")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
