"""MLPS verdicts on the search node: the ``<prefix>-compliance`` index the Grafana MLPS dashboard reads.

:func:`publish` writes :func:`compliance.report.records` -- the verdicts of one
``compliance.report.build`` run, one document per verdict and CII system it
counts for -- with ``_id`` = the record's ``id``, so publishing again replaces
each verdict with the latest and the index always holds the current state.
``taishi compliance publish`` is the command.
"""

from __future__ import annotations

from typing import Any, Iterable

KIND = "compliance"


def _kw() -> dict:
    return {"type": "keyword", "ignore_above": 8191}


MAPPING: dict[str, Any] = {"dynamic": False, "properties": {
    "@timestamp": {"type": "date"},
    "id": _kw(),
    "compliance": {"properties": {
        "check": {"properties": {"id": _kw(), "title": _kw()}},
        "control": _kw(), "scope": _kw(), "target": _kw(), "verdict": _kw(),
        "reason": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}},
        "level": {"type": "integer"},
        "evidence": {"properties": {
            "query": {"type": "keyword", "index": False, "doc_values": False},
            "counts": {"type": "keyword", "index": False, "doc_values": False},
            "sample_event_ids": _kw(),
        }},
    }},
    "taishi": {"properties": {"system": {"properties": {
        "id": _kw(), "name": _kw(), "sector": _kw(), "level": {"type": "integer"}}}}},
}}


def index_name(store) -> str:
    return store.index_name(KIND)


def setup(store) -> str:
    """Create or update the index template and the index (idempotent); returns the index name."""
    idx = index_name(store)
    store._req("PUT", f"/_index_template/{idx}", {
        "index_patterns": [idx], "priority": 200,
        "template": {"settings": {"number_of_shards": 1, "number_of_replicas": getattr(store, "replicas", 0)},
                     "mappings": MAPPING}})
    if store._req("GET", f"/{idx}", ok=(404,)) is None:
        store._req("PUT", f"/{idx}", ok=(400,))  # 400: created concurrently
    return idx


def publish(store, records: Iterable[dict[str, Any]]) -> int:
    """Index the verdict records (``id`` as ``_id``; a newer verdict replaces the older); returns how many."""
    from taishi.cluster.search import _iso

    idx = setup(store)
    docs = []
    for r in records:
        d = {k: v for k, v in r.items() if v not in (None, [], "")}
        ts = d.get("@timestamp")
        if ts is not None and not isinstance(ts, str):
            d["@timestamp"] = _iso(ts)
        docs.append((r["id"], d))
    return store._bulk_create(idx, docs, op="index")
