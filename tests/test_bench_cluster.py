"""The cluster benchmark's pure helpers: percentiles, pairing alerts with their events' produce
times, the steady-state rate from Spark's progress reports, the caught-up test, the input slicing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_cluster import (  # noqa: E402
    alert_latencies, batch_ms, caught_up, percentile, slice_of, steady_rate, warm_up_files,
)


def test_percentile_interpolates_between_ranks():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]  # unsorted on purpose
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 5.0
    assert percentile(xs, 25) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_alert_latency_is_from_the_newest_event_to_the_write():
    produced = {"e1": 100.0, "e2": 101.5, "e3": 102.0}
    written = {"a1": 103.0, "a2": 110.0, "a3": 104.0}
    alerts = [
        {"id": "a1", "rule.type": "sigma", "event.ids": ["e1"]},
        {"id": "a2", "rule.type": "sigma_correlation", "event.ids": ["e1", "e3", "e2"]},
        {"id": "a3", "rule.type": "sigma", "event.ids": ["elsewhere"]},  # none of its events produced here
        {"id": "a4", "rule.type": "sigma", "event.ids": ["e2"]},  # never written by this run
    ]
    lat, unpaired = alert_latencies(alerts, produced, written)
    assert lat["sigma"] == [3.0]
    assert lat["sigma_correlation"] == [8.0]  # 110 - 102, the last of its events
    assert sorted(lat["all"]) == [3.0, 8.0]
    assert unpaired == 2


def _progress(ts: str, rows: int, ms: int) -> dict:
    return {"timestamp": ts, "numInputRows": rows, "durationMs": {"triggerExecution": ms}}


def test_steady_rate_leaves_out_the_first_batch_and_idle_triggers():
    progress = [
        _progress("2026-11-29T15:00:00.000Z", 5000, 30000),  # warm-up batch, ends 15:00:30
        _progress("2026-11-29T15:00:30.000Z", 0, 10),  # no data
        _progress("2026-11-29T15:00:30.000Z", 4000, 5000),  # ends 15:00:35
        _progress("2026-11-29T15:00:35.000Z", 6000, 5000),  # ends 15:00:40
    ]
    assert steady_rate(progress) == pytest.approx(10000 / 10.0)
    assert steady_rate(progress[:3]) is None  # one batch after the warm-up is no steady state


def test_caught_up_needs_a_trigger_after_the_feed_that_read_to_the_end():
    src_done = {"endOffset": {"t": {"0": 10}}, "latestOffset": {"t": {"0": 10}}}
    src_behind = {"endOffset": {"t": {"0": 5}}, "latestOffset": {"t": {"0": 10}}}
    since = "2026-11-29T15:00:10.000Z"
    assert caught_up({"timestamp": "2026-11-29T15:00:12.000Z", "sources": [src_done]}, since)
    assert not caught_up({"timestamp": "2026-11-29T15:00:12.000Z", "sources": [src_behind]}, since)
    assert not caught_up({"timestamp": "2026-11-29T15:00:09.000Z", "sources": [src_done]}, since)
    assert not caught_up(None, since)


def test_slices_of_event_time():
    assert slice_of(1000.0, 1000.0, 7200) == 0
    assert slice_of(1000.0 + 7199, 1000.0, 7200) == 0
    assert slice_of(1000.0 + 7200, 1000.0, 7200) == 1
    assert slice_of(900.0, 1000.0, 7200) == 0  # before the first event: the first slice


def test_batch_parts_are_medians_over_the_batches_given():
    progress = [{"durationMs": {"triggerExecution": t, "addBatch": a}} for t, a in ((100, 80), (300, 250), (200, 150))]
    assert batch_ms(progress) == {"triggerExecution": 200, "addBatch": 150}
    assert batch_ms([]) == {}


def test_warm_up_takes_whole_files_from_the_start_of_the_stream():
    files = [["a", "zeek", 4], ["b", "zeek", 1500], ["c", "syslog", 900], ["d", "zeek", 3000]]
    assert warm_up_files(files, 2000) == files[:3]
    assert warm_up_files(files, 4) == files[:1]
    assert warm_up_files([], 2000) == []
