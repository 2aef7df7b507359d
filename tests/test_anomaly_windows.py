"""Window features do not depend on how the input is cut into batches.

Real flows (Stratosphere CTU-Normal-40 day 1, Zeek conn log) are cut at random
places; the embedded window buffer and the Spark grouping keys must give every
flow the same window features and the same score as one call over the whole
input. The naive per-batch computation is checked to differ, so the tests
would notice a buffer that passed batches through.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("sklearn")

from detect.anomaly import features as F  # noqa: E402
from detect.anomaly.evaluate import load_zeek, train  # noqa: E402
from detect.anomaly.model import anomaly_alerts, scoreable  # noqa: E402
from detect.anomaly.spark import BUCKET_COL, prepare  # noqa: E402
from detect.anomaly.windows import WIN_COL, AnomalyStage, WindowBuffer, windowed_batches  # noqa: E402
from taishi.bus import TOPIC_ALERTS, TOPIC_EVENTS, Bus  # noqa: E402


@pytest.fixture(scope="module")
def flows(shared_data):
    t, _, _ = load_zeek(shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled")
    return t  # file order: Zeek writes a connection when it ends, so start times are not sorted


@pytest.fixture(scope="module")
def model(shared_data):
    return train([shared_data / "zeek/stratosphere_sdt/010-zeek-mixed/conn.log.labeled"])


def cuts(t: pa.Table, seed: int) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    points = np.sort(rng.choice(np.arange(1, t.num_rows), size=rng.integers(3, 40), replace=False))
    edges = [0, *points.tolist(), t.num_rows]
    return [t.slice(a, b - a) for a, b in zip(edges, edges[1:])]


def by_id(t: pa.Table, X: np.ndarray) -> dict[str, tuple]:
    return {e: tuple(row) for e, row in zip(t.column("event.id").to_pylist(), X.tolist())}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_window_features_independent_of_batches(flows, seed):
    whole = by_id(flows, F.window_features(flows))
    buf = WindowBuffer(window_s=F.DEFAULT_WINDOW_S)  # bounded input: windows close at the end
    released = [buf.push(b) for b in cuts(flows, seed)] + [buf.flush()]
    got: dict[str, tuple] = {}
    for r in released:
        if r.num_rows:
            got.update(by_id(r, F.window_features(r)))
    assert got == whole
    naive: dict[str, tuple] = {}
    for b in cuts(flows, seed):
        naive.update(by_id(b, F.window_features(b)))
    assert naive != whole  # cutting a window changes its features: the buffer is what prevents it


def test_window_features_ignore_other_groups_and_order(flows):
    whole = by_id(flows, F.window_features(flows))
    rng = np.random.default_rng(0)
    shuffled = flows.take(pa.array(rng.permutation(flows.num_rows)))
    assert by_id(shuffled, F.window_features(shuffled)) == whole
    src = flows.column("source.ip").to_pylist()
    one = src[0]
    mine = flows.filter(pa.array([s == one for s in src]))
    assert by_id(mine, F.window_features(mine)).items() <= whole.items()


@pytest.mark.parametrize("seed", [4, 5])
def test_streaming_lateness_independent_of_batches(flows, model, seed):
    # 60 s allowed lateness on the file's own (unsorted) order: some flows are late
    def run(batches):
        buf = WindowBuffer(window_s=model.window_s, lateness_s=60)
        out = [buf.push(scoreable(model, b)) for b in batches] + [buf.flush()]
        s = model.score(pa.concat_tables([r for r in out if r.num_rows]))  # releases are whole windows
        return dict(zip(s.column("event.id").to_pylist(), s.column("anomaly.score").to_pylist())), buf.late

    one, late_one = run([flows])
    rows, late_rows = run(flows.to_batches(max_chunksize=1))
    cut, late_cut = run(cuts(flows, seed))
    assert late_one > 0
    assert late_one == late_rows == late_cut
    assert len(one) == flows.num_rows - late_one
    assert one == rows == cut


def test_spark_groups_hold_whole_windows(flows, model):
    # the (block, bucket) keys detect.anomaly.spark groups by: scoring each group alone = scoring all at once
    whole = model.score(flows)
    ref = dict(zip(whole.column("event.id").to_pylist(), whole.column("anomaly.score").to_pylist()))
    p = prepare(model, flows, buckets=2, block_s=1800)
    keys = list(zip(p.column(WIN_COL).to_pylist(), p.column(BUCKET_COL).to_pylist()))
    assert len(set(keys)) > 5
    got = {}
    for k in set(keys):
        g = p.filter(pa.array([x == k for x in keys])).drop_columns([WIN_COL, BUCKET_COL])
        s = model.score(g)
        got.update(zip(s.column("event.id").to_pylist(), s.column("anomaly.score").to_pylist()))
    assert got == ref


def test_windowed_batches_match_one_call(flows, model):
    ref = {r["id"] for r in anomaly_alerts(model, flows, "v").to_pylist()}
    got = set()
    for w in windowed_batches(model, flows.to_batches(max_chunksize=333)):
        got |= set(anomaly_alerts(model, w, "v").column("id").to_pylist())
    assert ref and got == ref


def test_stage_restart_from_checkpoint(tmp_path, flows, model):
    """A crash after a checkpoint replays from it: the alerts equal one uninterrupted run's."""
    batches = [pa.Table.from_batches([b]) for b in flows.to_batches(max_chunksize=400)]
    ref = {r for r in anomaly_alerts(model, flows, "v").column("id").to_pylist()}

    bus = Bus(tmp_path / "bus", fsync=False)
    ckpt = tmp_path / "anomaly.ckpt"
    stage = AnomalyStage(bus, [("v", model)], ckpt, lateness_s=math.inf, checkpoint_every_s=1e9)
    half = len(batches) // 2
    for b in batches[:half]:
        bus.produce(TOPIC_EVENTS, b)
    stage.step()
    stage.save()
    for b in batches[half:]:
        bus.produce(TOPIC_EVENTS, b)
    stage.step()  # progress after the checkpoint, then a "crash": the object is dropped
    del stage
    stage = AnomalyStage(bus, [("v", model)], ckpt, lateness_s=math.inf)
    assert stage.offset == sum(b.num_rows for b in batches[:half])
    assert stage.buffers["v"].held == sum(b.num_rows for b in batches[:half])
    stage.finish()
    got = [i for b in bus.read(TOPIC_ALERTS, 0) for i in b.table.column("id").to_pylist()]
    assert set(got) == ref
    assert len(got) == len(ref)  # bounded: nothing was released before the end, so nothing twice


def test_spark_partition_chunks_hold_whole_keys(flows, model):
    # what one Spark partition's scorer sees: rows sorted by key, cut by size anywhere
    from detect.anomaly.spark import _safe_names, whole_key_chunks

    p = _safe_names(prepare(model, flows, buckets=8, block_s=900))
    keys = ("taishi__anomaly__window", "taishi__anomaly__bucket")
    p = p.sort_by([(k, "ascending") for k in keys])
    chunks = list(whole_key_chunks(iter(b for t in cuts(p, 7) for b in t.to_batches()), chunk_rows=700))
    assert len(chunks) > 3
    seen: set = set()
    for c in chunks:
        ks = set(zip(c.column(keys[0]).to_pylist(), c.column(keys[1]).to_pylist()))
        assert not ks & seen  # a key never spans two chunks
        seen |= ks
    assert sum(c.num_rows for c in chunks) == flows.num_rows


def test_stream_step_state_round_trip(flows, model):
    # micro-batches through the keyed-state form (snapshot between every batch) = one call over all flows
    from detect.anomaly.windows import stream_step

    ref = set(anomaly_alerts(model, flows, "v").column("id").to_pylist())
    state, got = None, []
    batches = cuts(flows, 9)
    for i, b in enumerate(batches):
        state, a = stream_step(model, "v", state, b, flush=i == len(batches) - 1)
        got += a.column("id").to_pylist()
    assert ref and set(got) == ref and len(got) == len(ref)


def test_stage_crash_before_its_first_periodic_checkpoint(tmp_path, flows, model):
    batches = [pa.Table.from_batches([b]) for b in flows.to_batches(max_chunksize=1000)]
    ref = set(anomaly_alerts(model, flows, "v").column("id").to_pylist())
    bus = Bus(tmp_path / "bus", fsync=False)
    for b in batches:
        bus.produce(TOPIC_EVENTS, b)
    ckpt = tmp_path / "anomaly.ckpt"
    stage = AnomalyStage(bus, [("v", model)], ckpt, lateness_s=math.inf, checkpoint_every_s=1e9)
    stage.step()  # everything read and held, never checkpointed: then a crash
    del stage
    # the pipeline passes the detect stage's position, which has moved on meanwhile
    stage = AnomalyStage(bus, [("v", model)], ckpt, lateness_s=math.inf, start_offset=flows.num_rows)
    assert stage.offset == 0
    stage.finish()
    assert set(i for b in bus.read(TOPIC_ALERTS, 0) for i in b.table.column("id").to_pylist()) == ref
