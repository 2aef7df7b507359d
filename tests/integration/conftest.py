"""Real services for the integration tests, started once per test session.

``kafka_bootstrap`` (``"127.0.0.1:9092"``) and ``search_node``
(``{"url": "http://127.0.0.1:9200", "flavor": "opensearch"|"elasticsearch"}``)
start the service through :mod:`taishi.cluster.services` (the first run
fetches it from Maven Central into ``.cache/services``), or reuse one that
already runs. A service a test session started is stopped when the last
session using it ends (:func:`taishi.cluster.services.acquire`/``release``:
several sessions may share it); one started by ``taishi services up`` is left
running (``TAISHI_KEEP_SERVICES=1`` keeps the session's own too, for quick
re-runs). When a service cannot start
the tests that need it skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import importlib
import os

import pytest

from support import unavailable




def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}); `pip install -e '.[cluster]'` (make test does)")


@pytest.fixture(scope="session")
def require_module():
    """``require_module("kafka")``: import a client library the cluster extra installs;
    skip (fail under CI=true) when it is missing."""
    return _import


def _service(name: str):
    from taishi.cluster import services

    try:
        info = services.acquire(name)
    except (services.ServiceError, OSError) as exc:
        unavailable(f"{name} could not start: {exc}")
    yield info
    services.release(name, info["lease"], keep=os.environ.get("TAISHI_KEEP_SERVICES") == "1")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """``host:port`` of a running Kafka broker (KRaft, one node)."""
    gen = _service("kafka")
    info = next(gen)
    yield info["endpoint"]
    next(gen, None)


@pytest.fixture(scope="session")
def search_node():
    """``{"url", "flavor"}`` of a running search node."""
    from taishi.cluster.search import detect_flavor

    gen = _service("search")
    info = next(gen)
    yield {"url": info["endpoint"], "flavor": detect_flavor(info["endpoint"])}
    next(gen, None)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A local Spark session (``taishi.cluster.spark_jobs.session``: the config's master, default
    ``local[2]``, UTC, Arrow, the Kafka source), shared by the session's tests and stopped at the end."""
    _import("pyspark")
    from taishi.cluster import spark_jobs
    from taishi.config import Config

    try:
        s = spark_jobs.session(Config(data_dir=tmp_path_factory.mktemp("spark-data")), app="taishi-tests")
    except Exception as exc:  # no Java, or the Kafka source could not be fetched
        unavailable(f"Spark could not start: {exc}")
    yield s
    s.stop()
