"""Helpers the cluster-mode integration tests import by name (``from cluster_support import ...``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from taishi import config as config_mod


def cluster_config(tmp: Path, kafka_bootstrap: str, search_node: dict) -> config_mod.Config:
    """A cluster-mode config with its own Kafka topic prefix and index prefix (runs never see each other's data)."""
    tag = uuid.uuid4().hex[:10]
    cfg = config_mod.load(data_dir=tmp, mode="cluster")
    cfg.cluster = {
        "kafka": {"bootstrap": kafka_bootstrap, "partitions": 3, "replication": 1, "retention_hours": 2,
                  "topic_prefix": f"t{tag}."},
        "search": {"url": search_node["url"], "flavor": search_node["flavor"], "index_prefix": f"taishi-t{tag}"},
    }
    return cfg


def drop_namespace(cfg: config_mod.Config) -> None:
    """Delete a run's Kafka topics and search indices (its prefixes are its own)."""
    from taishi.cluster.kafka_bus import drop_topics

    drop_topics(cfg)
    drop_indices(cfg)


def drop_indices(cfg: config_mod.Config) -> None:
    """Delete the search indices, data streams and templates under the run's index prefix."""
    from taishi.cluster.search import SearchStore

    store = SearchStore.from_config(cfg)
    try:
        store.drop_all()
    finally:
        store.close()
