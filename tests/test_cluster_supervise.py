"""``taishi.cluster.runner.SupervisedQuery``: when a failed streaming query is started again, and when not.

Pure control logic, so the queries are stand-ins with the attributes the
supervisor reads (``tests/integration/test_broker_restart.py`` runs it on a real
Spark query and a Kafka broker that is killed).
"""

from __future__ import annotations

import time

import pytest

from taishi.cluster.runner import SupervisedQuery, failure_summary


class FakeQuery:
    def __init__(self, fails_with: str | None = None, progress: bool = False) -> None:
        self.name = "taishi-detect"
        self._exc = RuntimeError(fails_with) if fails_with else None
        self.isActive = fails_with is None
        self.lastProgress = {"batchId": 0} if progress else None
        self.stopped = self.drained = False

    def exception(self):
        return self._exc

    def fail(self, msg: str) -> None:
        self._exc, self.isActive = RuntimeError(msg), False

    def processAllAvailable(self) -> None:
        self.drained = True

    def stop(self) -> None:
        self.stopped, self.isActive = True, False


def _supervise(queries: list[FakeQuery], **kw) -> tuple[SupervisedQuery, list[FakeQuery]]:
    started: list[FakeQuery] = []

    def start() -> FakeQuery:
        q = queries.pop(0)
        started.append(q)
        return q

    return SupervisedQuery(start, backoff_max_s=0.01, poll_s=0.01, **kw), started


def _until(cond, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        time.sleep(0.01)
    pytest.fail(f"never: {what}")


def test_a_failed_query_is_started_again():
    queries = [FakeQuery("broker gone"), FakeQuery()]
    sup, started = _supervise(queries)
    try:
        _until(lambda: sup.restarts == 1, "restarted")
        assert sup.query is started[1] and sup.query.isActive
        assert sup.failures == ["broker gone"] and sup.error is None
    finally:
        sup.stop()
    assert started[1].stopped


def test_it_gives_up_after_max_restarts_failures_in_a_row():
    queries = [FakeQuery(f"down {i}") for i in range(5)]
    sup, started = _supervise(queries, max_restarts=3)
    try:
        _until(lambda: sup.error is not None, "gave up")
    finally:
        sup.stop()
    assert sup.restarts == 3 and len(started) == 4
    assert "failed 4 times in a row" in str(sup.error) and "down 3" in str(sup.error)


def test_a_completed_micro_batch_resets_the_count():
    """Two outages, each failing the query once, do not add up to max_restarts=1."""
    second, third = FakeQuery(), FakeQuery()
    sup, started = _supervise([FakeQuery("outage 1"), second, third], max_restarts=1)
    try:
        _until(lambda: sup.restarts == 1, "first restart")
        second.lastProgress = {"batchId": 7}  # it works again ...
        time.sleep(0.1)
        second.fail("outage 2")  # ... until the next outage
        _until(lambda: sup.restarts == 2, "second restart")
        assert sup.error is None and sup.query is third
    finally:
        sup.stop()


def test_a_stopped_query_is_not_restarted_and_stop_drains():
    first = FakeQuery()
    sup, started = _supervise([first, FakeQuery()])
    first.stop()  # stopped on purpose: no exception
    time.sleep(0.1)
    assert sup.restarts == 0 and len(started) == 1
    other = FakeQuery()
    sup2, _ = _supervise([other])
    sup2.stop(drain=True)
    assert other.drained and other.stopped


def test_failure_summary_names_the_root_cause():
    exc = RuntimeError("An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n"
                       "  File x\nCaused by: org.apache.spark.SparkException: Job aborted\n\tat a.b\n"
                       "Caused by: org.apache.kafka.common.errors.TimeoutException: Timeout of 5000ms expired\n\tat c.d\n"
                       "Caused by: py4j.Py4JException: An exception was raised by the Python Proxy. Return Message:")
    assert failure_summary(exc) == "org.apache.kafka.common.errors.TimeoutException: Timeout of 5000ms expired"
    assert failure_summary(RuntimeError("one line")) == "one line"
    assert failure_summary(RuntimeError()) == "RuntimeError"
