"""Anomaly scoring (issue 7): flow / DNS features, scikit-learn models, evaluation.

>>> from detect.anomaly import AnomalyModel, evaluate  # doctest: +SKIP
>>> m = AnomalyModel(kind="flow").fit_events(benign_batch)  # doctest: +SKIP
>>> m.score(batch)  # event.id, anomaly.score, anomaly.is_anomaly, anomaly.explanation  # doctest: +SKIP

Everything here is a pure function of a batch (``pa.Table``/``RecordBatch``/
pandas ``DataFrame``) or a picklable model, so it runs unchanged inside Spark
``mapInArrow``/``mapInPandas`` with the model broadcast.
"""

from detect.anomaly.features import DNS_FEATURES, FLOW_FEATURES, dns_features, flow_features, qname_features
from detect.anomaly.model import AnomalyModel, map_in_arrow, map_in_pandas

__all__ = [
    "AnomalyModel",
    "FLOW_FEATURES",
    "DNS_FEATURES",
    "flow_features",
    "dns_features",
    "qname_features",
    "map_in_arrow",
    "map_in_pandas",
    "evaluate",
]


def evaluate(*args, **kwargs):  # lazy: evaluate pulls in the ingest package
    from detect.anomaly.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
