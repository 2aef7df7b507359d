"""Anomaly models: fit, threshold at a target false-positive rate, score + explain, save/load.

An :class:`AnomalyModel` holds one scikit-learn estimator, the feature names
it was fitted on, a robust per-feature baseline (median and IQR) per entity
class, and an alert threshold. It is a plain picklable object, so Spark can
broadcast it and call :meth:`AnomalyModel.score` inside ``mapInPandas`` /
``mapInArrow`` (see :func:`map_in_arrow`, :func:`map_in_pandas`).

Algorithms (``algorithm=``):

* ``isolation_forest`` (default, unsupervised; fitted on benign rows only),
* ``lof`` (LocalOutlierFactor, novelty mode; benign rows only),
* ``random_forest`` and ``gradient_boosting`` (supervised, need labels).

Score: higher = more anomalous (``-score_samples`` for the unsupervised
models, ``P(malicious)`` for the supervised ones). The threshold is the
``1 - target_fpr`` quantile of the scores of benign calibration rows that the
estimator did not see (a held-out slice of the training data: the last 20 %
by time when rows are in time order).

Explanation of a row: the features with the largest robust z-score
``(x - median) / (IQR / 1.349)`` against the training baseline of the row's
entity class (internal / external ``source.ip``), e.g.
``[{"feature": "win_log_distinct_dport", "value": 4.1, "baseline": 0.69, "z": 12.3}]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import joblib
import numpy as np
import pyarrow as pa
import sklearn

from detect.anomaly import features as F

FORMAT_VERSION = 1
ALGORITHMS = ("isolation_forest", "lof", "random_forest", "gradient_boosting")
SUPERVISED = ("random_forest", "gradient_boosting")
SCORE_SCHEMA = pa.schema(
    [
        pa.field("event.id", pa.string()),
        pa.field("anomaly.score", pa.float64()),
        pa.field("anomaly.is_anomaly", pa.bool_()),
        pa.field("anomaly.explanation", pa.string()),  # JSON list, null below threshold
    ]
)


def _estimator(algorithm: str, random_state: int, params: dict[str, Any]) -> Any:
    if algorithm == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        kw = {"n_estimators": 200, "max_samples": 256, "random_state": random_state, "n_jobs": 1}
        return IsolationForest(**{**kw, **params})
    if algorithm == "lof":
        from sklearn.neighbors import LocalOutlierFactor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import RobustScaler

        # distances need comparable scales; IQR-scaled like the explanations
        return make_pipeline(RobustScaler(unit_variance=True), LocalOutlierFactor(**{"n_neighbors": 20, "novelty": True, **params}))
    if algorithm == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        kw = {"n_estimators": 200, "min_samples_leaf": 2, "random_state": random_state, "n_jobs": 1}
        return RandomForestClassifier(**{**kw, **params})
    if algorithm == "gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(**{"max_iter": 200, "random_state": random_state, **params})
    raise ValueError(f"unknown algorithm {algorithm!r}; one of {ALGORITHMS}")


@dataclass
class Baseline:
    """Robust per-feature centre and scale, per entity class (plus ``*`` = all)."""

    median: dict[str, np.ndarray] = field(default_factory=dict)
    scale: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, classes: np.ndarray, min_rows: int = 30) -> "Baseline":
        b = cls()
        groups = {"*": np.ones(len(X), bool)}
        for c in sorted(set(classes.tolist())):
            m = classes == c
            if m.sum() >= min_rows:
                groups[str(c)] = m
        for name, m in groups.items():
            x = X[m]
            med = np.median(x, axis=0)
            iqr = np.subtract(*np.percentile(x, [75, 25], axis=0)) / 1.349
            std = x.std(axis=0)
            scale = np.where(iqr > 1e-9, iqr, np.where(std > 1e-9, std, 1.0))
            b.median[name], b.scale[name] = med, scale
        return b

    def z(self, X: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = list(self.median)
        pos = {k: i for i, k in enumerate(keys)}
        idx = np.array([pos.get(c, pos["*"]) for c in classes], dtype=np.int64)
        med = np.stack([self.median[k] for k in keys])[idx]
        sc = np.stack([self.scale[k] for k in keys])[idx]
        return (X - med) / sc, med


class AnomalyModel:
    """One fitted detector over one feature kind ("flow" or "dns")."""

    def __init__(
        self,
        kind: str = "flow",
        algorithm: str = "isolation_forest",
        target_fpr: float = 0.01,
        random_state: int = 0,
        window_s: float = F.DEFAULT_WINDOW_S,
        window_features: bool = True,
        top_k: int = 3,
        **params: Any,
    ) -> None:
        if kind not in F.EXTRACTORS:
            raise ValueError(f"unknown kind {kind!r}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; one of {ALGORITHMS}")
        self.kind, self.algorithm = kind, algorithm
        self.target_fpr, self.random_state = float(target_fpr), int(random_state)
        self.window_s, self.top_k, self.params = float(window_s), int(top_k), params
        self.window_features = bool(window_features)
        self.feature_names: list[str] = list(F.EXTRACTORS[kind][0])
        self.estimator: Any = None
        self.baseline: Baseline | None = None
        self.threshold: float = float("inf")
        self.meta: dict[str, Any] = {}

    # -- features -----------------------------------------------------------
    def features(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "flow":
            return F.flow_features(batch, window_s=self.window_s, window=self.window_features)
        return F.extract(self.kind, batch)

    # -- fitting ------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray | None = None,
        classes: np.ndarray | None = None,
        calib_fraction: float = 0.2,
        time_ordered: bool = True,
        training_window: tuple[str, str] | None = None,
        sources: list[str] | None = None,
    ) -> "AnomalyModel":
        """Fit on a feature matrix. ``y``: 1 malicious / 0 benign (unsupervised models use only 0 rows).

        The last ``calib_fraction`` of rows (``time_ordered``) or a seeded random
        slice sets the threshold and is not used to fit the estimator.
        """
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        y = np.zeros(n, int) if y is None else np.asarray(y, int)
        classes = np.full(n, "*", dtype=object) if classes is None else np.asarray(classes, dtype=object)
        if self.algorithm in SUPERVISED and len(set(y.tolist())) < 2:
            raise ValueError(f"{self.algorithm} needs both benign and malicious rows")
        rng = np.random.default_rng(self.random_state)
        if time_ordered:
            calib = np.zeros(n, bool)
            calib[int(round(n * (1 - calib_fraction))) :] = True
        else:
            calib = rng.random(n) < calib_fraction
        if not (calib & (y == 0)).any():  # no benign rows late: fall back to a seeded random slice
            calib = rng.random(n) < calib_fraction
        fit_rows = ~calib if self.algorithm in SUPERVISED else (~calib & (y == 0))
        if self.algorithm in SUPERVISED and len(set(y[fit_rows].tolist())) < 2:
            fit_rows = np.ones(n, bool)
        self.estimator = _estimator(self.algorithm, self.random_state, self.params)
        if self.algorithm in SUPERVISED:
            self.estimator.fit(X[fit_rows], y[fit_rows])
        else:
            self.estimator.fit(X[fit_rows])
        benign_cal = X[calib & (y == 0)]
        s = self._raw_score(benign_cal)
        self.threshold = float(np.quantile(s, 1 - self.target_fpr, method="higher")) if len(s) else float("inf")
        benign = y == 0
        self.baseline = Baseline.fit(X[benign] if benign.any() else X, classes[benign] if benign.any() else classes)
        self.meta = {
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_window": list(training_window) if training_window else None,
            "training_sources": sources or [],
            "n_fit": int(fit_rows.sum()),
            "n_calibration_benign": int(len(benign_cal)),
            "n_train_malicious": int((y == 1).sum()),
        }
        return self

    def fit_events(self, batch: Any, y: np.ndarray | None = None, **kw: Any) -> "AnomalyModel":
        X, cls = self.features(batch)
        return self.fit(X, y, classes=cls, **kw)

    # -- scoring ------------------------------------------------------------
    def _raw_score(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0)
        if self.algorithm in SUPERVISED:
            return self.estimator.predict_proba(X)[:, 1]
        return -self.estimator.score_samples(X)

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        if self.estimator is None:
            raise RuntimeError("model is not fitted")
        return self._raw_score(np.asarray(X, dtype=np.float64))

    def explain(self, X: np.ndarray, classes: np.ndarray, rows: np.ndarray | None = None) -> list[list[dict]]:
        """Top-k features by |robust z| vs the entity-class baseline, for ``rows`` (default all)."""
        assert self.baseline is not None
        idx = np.arange(len(X)) if rows is None else np.asarray(rows)
        if len(idx) == 0:
            return []
        z, med = self.baseline.z(X[idx], np.asarray(classes, dtype=object)[idx])
        out = []
        for r in range(len(idx)):
            top = np.argsort(-np.abs(z[r]), kind="stable")[: self.top_k]
            out.append(
                [
                    {
                        "feature": self.feature_names[j],
                        "value": round(float(X[idx[r], j]), 4),
                        "baseline": round(float(med[r, j]), 4),
                        "z": round(float(z[r, j]), 2),
                    }
                    for j in top
                ]
            )
        return out

    def score(self, batch: Any, explain_all: bool = False) -> pa.Table:
        """Score an event batch: ``SCORE_SCHEMA`` rows in input order (explanations for anomalies)."""
        t = F.as_table(batch)
        X, cls = self.features(t)
        s = self.score_matrix(X)
        hit = s > self.threshold
        rows = np.arange(len(s)) if explain_all else np.flatnonzero(hit)
        expl: list[str | None] = [None] * len(s)
        for i, e in zip(rows, self.explain(X, cls, rows)):
            expl[int(i)] = json.dumps(e)
        ids = t.column("event.id") if "event.id" in t.column_names else pa.nulls(len(s), pa.string())
        return pa.table(
            [pc_cast_str(ids), pa.array(s, pa.float64()), pa.array(hit), pa.array(expl, pa.string())],
            schema=SCORE_SCHEMA,
        )

    # -- persistence --------------------------------------------------------
    def sidecar(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "feature_schema": [{"name": n, "dtype": "float64"} for n in self.feature_names],
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "window_s": self.window_s,
            "window_features": self.window_features,
            "random_state": self.random_state,
            "params": self.params,
            "sklearn_version": sklearn.__version__,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
            **self.meta,
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.joblib`` and the ``<path>.json`` sidecar (with the pickle's sha256)."""
        path = Path(path)
        if path.suffix in (".joblib", ".json"):
            path = path.with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        joblib.dump(self, buf)
        blob = buf.getvalue()
        pkl, side = path.with_suffix(".joblib"), path.with_suffix(".json")
        pkl.write_bytes(blob)
        meta = {**self.sidecar(), "artifact": pkl.name, "sha256": hashlib.sha256(blob).hexdigest()}
        meta["model_version"] = f"{self.kind}-{self.algorithm}-{meta['sha256'][:12]}"
        side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return pkl, side

    @staticmethod
    def load(path: str | Path) -> "AnomalyModel":
        """Load ``<path>.joblib`` after checking it against its sidecar (hash, feature schema, sklearn)."""
        path = Path(path)
        if path.suffix in (".joblib", ".json"):
            path = path.with_suffix("")
        meta = json.loads(path.with_suffix(".json").read_text())
        blob = path.with_suffix(".joblib").read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            raise ValueError(f"{path}.joblib does not match its sidecar hash")
        if meta["sklearn_version"] != sklearn.__version__:
            warnings.warn(
                f"model trained with scikit-learn {meta['sklearn_version']}, running {sklearn.__version__}",
                stacklevel=2,
            )
        model = joblib.load(io.BytesIO(blob))
        if [f["name"] for f in meta["feature_schema"]] != model.feature_names:
            raise ValueError("feature schema in sidecar differs from the model's")
        if model.feature_names != list(F.EXTRACTORS[model.kind][0]):
            raise ValueError("model was fitted on a different feature set than this code computes")
        return model


def pc_cast_str(col: Any) -> pa.Array:
    import pyarrow.compute as pc

    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.cast(arr, pa.string())


# ---------------------------------------------------------------------------
# Spark adapters (pure functions of the broadcast model)


def map_in_arrow(model: AnomalyModel):
    """A function for ``df.mapInArrow(fn, schema)``: RecordBatch iterator -> score batches."""

    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            yield from model.score(b).to_batches()

    return fn


def map_in_pandas(model: AnomalyModel):
    """A function for ``df.mapInPandas(fn, schema)``: DataFrame iterator -> score DataFrames."""

    def fn(frames: Iterator[Any]) -> Iterator[Any]:
        for df in frames:
            yield model.score(df).to_pandas()

    return fn


# ---------------------------------------------------------------------------
# alerts for the pipeline

# what scoring and the alerts read of an event (windows and Spark carry only these)
INPUT_COLUMNS = (
    "event.id", "@timestamp", "event.type", "event.action", "event.duration", "event.dataset",
    "source.ip", "source.port", "source.bytes", "source.packets",
    "destination.ip", "destination.port", "destination.bytes", "destination.packets",
    "network.transport", "dns.question.name", "host.name",
)


def scoreable(model: AnomalyModel, events: Any) -> pa.Table:
    """The rows of ``events`` that ``model``'s kind applies to, with :data:`INPUT_COLUMNS` only.

    Flows (``event.type`` = connection, or no such column) for ``kind="flow"``;
    events with a ``dns.question.name`` for ``kind="dns"``. Window features are
    computed over these rows only, in both executors.
    """
    import pyarrow.compute as pc

    t = F.as_table(events)
    if t.num_rows == 0:
        return t.select([c for c in INPUT_COLUMNS if c in t.column_names])
    if model.kind == "dns":
        if "dns.question.name" not in t.column_names:
            return t.slice(0, 0).select([c for c in INPUT_COLUMNS if c in t.column_names])
        mask = pc.is_valid(t.column("dns.question.name"))
    elif "event.type" in t.column_names:
        mask = pc.fill_null(pc.equal(t.column("event.type"), "connection"), False)
    else:
        mask = None
    t = t.select([c for c in INPUT_COLUMNS if c in t.column_names])
    return t if mask is None else t.filter(mask)



def anomaly_alerts(model: AnomalyModel, events: Any, model_version: str | None = None) -> pa.Table:
    """``ALERT_SCHEMA`` rows (rule.type "anomaly") for the events ``model`` flags.

    Only events its kind applies to are scored: flows (``event.type`` =
    connection, or no such column) for ``kind="flow"``, events with a
    ``dns.question.name`` for ``kind="dns"``. Ids are stable
    (``ids.alert_id(rule id, [event.id])``), so replays give the same alerts.
    Window features are computed over ``events`` as given: hand it whole
    ``(source.ip, window)`` groups (:class:`detect.anomaly.windows.WindowBuffer`
    in the embedded pipeline, :func:`detect.anomaly.spark.anomaly_alerts_dataframe`
    on Spark) and the alerts do not depend on how the stream was batched.
    """
    from taishi import ids
    from taishi.schema import alerts_table

    t = scoreable(model, events)
    if t.num_rows == 0:
        return alerts_table([])
    s = model.score(t)
    hit = s.column("anomaly.is_anomaly").to_numpy(zero_copy_only=False)
    if not hit.any():
        return alerts_table([])
    version = model_version or f"{model.kind}-{model.algorithm}"
    rule_id = f"anomaly:{version}"
    rows = []
    sub = t.filter(pa.array(hit))
    sc = s.filter(pa.array(hit))
    get = lambda name: sub.column(name).to_pylist() if name in sub.column_names else [None] * sub.num_rows  # noqa: E731
    cols = {n: get(n) for n in ("event.id", "@timestamp", "source.ip", "source.port", "destination.ip",
                                "destination.port", "dns.question.name", "event.dataset", "host.name")}
    for i, (score, expl) in enumerate(zip(sc.column("anomaly.score").to_pylist(), sc.column("anomaly.explanation").to_pylist())):
        drivers = json.loads(expl) if expl else []
        eid = cols["event.id"][i] or ""
        rows.append(
            {
                "id": ids.alert_id(rule_id, [eid]),
                "@timestamp": cols["@timestamp"][i],
                "event.kind": "alert",
                "event.severity": 2,
                "rule.id": rule_id,
                "rule.name": f"Anomalous {'DNS query name' if model.kind == 'dns' else 'flow'} ({model.algorithm})",
                "rule.level": "low",
                "rule.description": "score above the threshold set at a "
                f"{model.target_fpr:.1%} false-positive rate on benign training data",
                "rule.type": "anomaly",
                "tags": ["anomaly", model.kind],
                "source.ip": cols["source.ip"][i],
                "source.port": cols["source.port"][i],
                "destination.ip": cols["destination.ip"][i],
                "destination.port": cols["destination.port"][i],
                "dns.question.name": cols["dns.question.name"][i],
                "event.dataset": cols["event.dataset"][i],
                "host.name": cols["host.name"][i],
                "event.start": cols["@timestamp"][i],
                "event.end": cols["@timestamp"][i],
                "event.count": 1,
                "event.ids": [eid] if eid else [],
                "message": f"anomaly score {score:.3f} > {model.threshold:.3f}; drivers: "
                + ", ".join(f"{d['feature']}={d['value']} (z={d['z']})" for d in drivers),
            }
        )
    return alerts_table(rows)
