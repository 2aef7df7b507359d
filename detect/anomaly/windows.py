"""Whole event-time windows for anomaly scoring, however the stream is batched.

A row's window features (:func:`detect.anomaly.features.window_features`) are a
function of the rows sharing its ``(source.ip, window)``. A stream arrives in
batches that cut windows anywhere, so the embedded pipeline does not score a
batch as it comes: :class:`WindowBuffer` holds scoreable rows until their
window is closed and releases whole windows, and :class:`AnomalyStage` runs
that as a stage over the bus. Spark gets the same whole windows by grouping
(:mod:`detect.anomaly.spark`).

Window semantics (both executors):

* window of a row = ``floor(@timestamp µs / window_us)`` (:func:`F.window_index`);
* the watermark after row ``i`` is the largest event time among rows ``0..i``
  (in log order) minus the allowed lateness; a window closes once the
  watermark reaches its end;
* a row whose window had closed before the row arrived is *late*: it is not
  scored (counted in :attr:`WindowBuffer.late`; the correlation stage
  dead-letters the same events with the reason). Lateness is judged row by
  row, so which rows are late does not depend on batch boundaries either;
* bounded input (``taishi ingest``: infinite lateness) closes every window at
  the end of input, so nothing is late and every flow is scored with its
  whole window.

>>> import pyarrow as pa
>>> from datetime import datetime, timezone
>>> t = lambda m: datetime(2024, 1, 1, 0, m, tzinfo=timezone.utc)
>>> b = WindowBuffer(window_s=300, lateness_s=60)
>>> rows = lambda *ms: pa.table({"@timestamp": pa.array([t(m) for m in ms], pa.timestamp("us", tz="UTC"))})
>>> b.push(rows(0, 1)).num_rows, b.push(rows(6)).num_rows, b.push(rows(2)).num_rows, b.late
(0, 2, 0, 1)
>>> b.flush().num_rows
1
"""

from __future__ import annotations

import io
import json
import math
import struct
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from detect.anomaly import features as F

WIN_COL = "taishi.anomaly.window"
_NO_TIME = np.iinfo(np.int64).min


class WindowBuffer:
    """Scoreable rows held until their event-time window closes.

    ``window_s=None``: features without windows (DNS names, or a model fitted
    with ``window_features=False``); rows pass straight through.
    ``lateness_s=inf``: bounded input, everything is released by :meth:`flush`.
    """

    def __init__(self, window_s: float | None, lateness_s: float = math.inf) -> None:
        self.window_us = F.window_us(window_s) if window_s else None
        self.lateness_us = None if math.isinf(lateness_s) else int(round(lateness_s * 1e6))
        self.max_us = _NO_TIME  # largest event time seen
        self.parts: list[pa.Table] = []  # held rows, each with WIN_COL
        self.min_win: int | None = None  # smallest window held
        self.late = 0

    @property
    def held(self) -> int:
        return sum(p.num_rows for p in self.parts)

    def push(self, rows: pa.Table) -> pa.Table:
        """Take rows (in log order); return the rows of every window this closed (whole windows)."""
        rows = F.as_table(rows)
        if self.window_us is None:
            return rows
        if rows.num_rows == 0:
            return rows.slice(0, 0)
        us = F._ts_micros(rows)
        win = np.floor_divide(us, self.window_us)
        if self.lateness_us is not None:
            run = np.maximum.accumulate(np.maximum(us, self.max_us))
            before = np.concatenate([[self.max_us], run[:-1]])  # largest time before each row
            seen = before != _NO_TIME
            wm = np.where(seen, before, 0) - self.lateness_us
            late = seen & ((win + 1) * self.window_us <= wm)
            if late.any():
                self.late += int(late.sum())
                keep = ~late
                rows, win = rows.filter(pa.array(keep)), win[keep]
            self.max_us = int(run[-1])
        if rows.num_rows:
            self.parts.append(rows.append_column(WIN_COL, pa.array(win, pa.int64())))
            lo = int(win.min())
            self.min_win = lo if self.min_win is None else min(self.min_win, lo)
        if self.lateness_us is None or self.max_us == _NO_TIME:
            return _strip(rows.slice(0, 0))
        cut = (self.max_us - self.lateness_us) // self.window_us  # windows < cut are closed
        if self.min_win is None or self.min_win >= cut:
            return _strip(rows.slice(0, 0))
        return self._release(cut)

    def flush(self) -> pa.Table:
        """End of input: release every held window."""
        return self._release(None)

    def _release(self, cut: int | None) -> pa.Table:
        if not self.parts:
            return pa.table({})
        held = pa.concat_tables(self.parts, promote_options="default") if len(self.parts) > 1 else self.parts[0]
        win = held.column(WIN_COL).to_numpy()
        out_mask = np.ones(len(win), bool) if cut is None else win < cut
        out = held.filter(pa.array(out_mask))
        rest = held.filter(pa.array(~out_mask))
        self.parts = [rest] if rest.num_rows else []
        self.min_win = int(pc_min(rest.column(WIN_COL))) if rest.num_rows else None
        order = np.argsort(out.column(WIN_COL).to_numpy(), kind="stable")  # by window, then log order
        return _strip(out.take(pa.array(order)))

    # -- state ----------------------------------------------------------------
    def snapshot(self) -> bytes:
        head = json.dumps(
            {"window_us": self.window_us, "lateness_us": self.lateness_us, "max_us": self.max_us, "late": self.late}
        ).encode()
        body = b""
        if self.parts:
            held = pa.concat_tables(self.parts, promote_options="default")
            sink = io.BytesIO()
            with ipc.new_stream(sink, held.schema) as w:
                w.write_table(held)
            body = sink.getvalue()
        return struct.pack(">I", len(head)) + head + body

    def restore(self, data: bytes) -> "WindowBuffer":
        """Load :meth:`snapshot` state (a buffer of another window size starts empty)."""
        (n,) = struct.unpack(">I", data[:4])
        head = json.loads(data[4 : 4 + n])
        if head["window_us"] != self.window_us:
            return self
        self.max_us, self.late = int(head["max_us"]), int(head["late"])
        body = data[4 + n :]
        if body:
            held = ipc.open_stream(pa.BufferReader(body)).read_all()
            self.parts = [held] if held.num_rows else []
            self.min_win = int(pc_min(held.column(WIN_COL))) if held.num_rows else None
        return self


def pc_min(col: Any) -> int:
    import pyarrow.compute as pc

    return pc.min(col).as_py()


def _strip(t: pa.Table) -> pa.Table:
    return t.drop_columns([WIN_COL]) if WIN_COL in t.column_names else t


def model_window_s(model: Any) -> float | None:
    """The window a model's features need, or None when it has no window features."""
    return model.window_s if model.kind == "flow" and model.window_features else None


def windowed_batches(model: Any, batches: Sequence[Any], lateness_s: float = math.inf) -> list[pa.Table]:
    """What the embedded stage hands the scorer for ``batches`` in order: whole windows.

    A pure helper (no bus) for tests and benchmarks; :class:`AnomalyStage` does
    the same over the events topic.
    """
    from detect.anomaly.model import scoreable

    buf = WindowBuffer(model_window_s(model), lateness_s)
    out = [buf.push(scoreable(model, b)) for b in batches]
    out.append(buf.flush())
    return [t for t in out if t.num_rows]


# ---------------------------------------------------------------------------
# the embedded stage


class AnomalyStage:
    """Scores the ``events`` topic with every loaded model; anomaly alerts go to ``alerts``.

    Its own reader of ``events`` (consumer group ``anomaly``) with a checkpoint
    holding its input offset *and* the held windows in one atomic file, like
    the detect stage: a crash replays from the checkpoint, re-raising the
    same alerts with the same ids (the store upserts by id). The committed
    group offset is the checkpoint's, so compaction never drops events the
    checkpoint would replay. Without a checkpoint it starts at
    ``start_offset`` (the pipeline passes the detect stage's position, so a
    model added later scores from then on) and checkpoints that at once.
    """

    GROUP = "anomaly"

    def __init__(
        self,
        bus: Any,
        models: Sequence[tuple[str, Any]],
        checkpoint: Path,
        lateness_s: float,
        start_offset: int = 0,
        max_records: int | None = None,
        checkpoint_every_s: float = 30.0,
    ) -> None:
        self.bus, self.models, self.ckpt = bus, list(models), Path(checkpoint)
        self.max_records, self.every = max_records, checkpoint_every_s
        self.buffers = {v: WindowBuffer(model_window_s(m), lateness_s) for v, m in self.models}
        self.offset = int(start_offset)
        if self.ckpt.exists():
            self._restore(self.ckpt.read_bytes())
            self._saved_at = time.monotonic()
        else:  # the first checkpoint at once: a crash before the next one replays from here
            self.save()

    def _restore(self, data: bytes) -> None:
        (n,) = struct.unpack(">I", data[:4])
        head = json.loads(data[4 : 4 + n])
        self.offset = int(head["offset"])
        pos = 4 + n
        for version, size in head["buffers"]:
            if version in self.buffers:  # a model no longer loaded: its windows are dropped
                self.buffers[version].restore(data[pos : pos + size])
            pos += size

    def save(self) -> None:
        from taishi.bus import TOPIC_EVENTS, atomic_write

        snaps = [(v, b.snapshot()) for v, b in self.buffers.items()]
        head = json.dumps({"offset": self.offset, "buffers": [(v, len(s)) for v, s in snaps]}).encode()
        atomic_write(self.ckpt, struct.pack(">I", len(head)) + head + b"".join(s for _, s in snaps))
        self.bus.commit(self.GROUP, TOPIC_EVENTS, self.offset)
        self._saved_at = time.monotonic()

    def _emit(self, version: str, model: Any, rows: pa.Table) -> None:
        from detect.anomaly.model import anomaly_alerts
        from taishi.bus import TOPIC_ALERTS

        if rows.num_rows:
            self.bus.produce(TOPIC_ALERTS, anomaly_alerts(model, rows, version))

    def step(self) -> int:
        """Read what ``events`` holds past the offset; score the windows it closes."""
        from detect.anomaly.model import scoreable
        from taishi.bus import TOPIC_EVENTS

        done = 0
        for batch in self.bus.read(TOPIC_EVENTS, self.offset, self.max_records):
            for version, model in self.models:
                self._emit(version, model, self.buffers[version].push(scoreable(model, batch.table)))
            self.offset = batch.next_offset
            done += batch.table.num_rows
            if time.monotonic() - self._saved_at > self.every:
                self.save()
        return done

    def finish(self) -> None:
        """End of bounded input: score every held window, then checkpoint."""
        self.step()
        for version, model in self.models:
            self._emit(version, model, self.buffers[version].flush())
        self.save()

    @property
    def late(self) -> int:
        return sum(b.late for b in self.buffers.values())


# ---------------------------------------------------------------------------
# the same buffer as keyed state (Spark streaming)


def stream_step(
    model: Any,
    version: str,
    state: bytes | None,
    rows: Any,
    *,
    lateness_s: float = math.inf,
    flush: bool = False,
) -> tuple[bytes, pa.Table]:
    """One micro-batch of a model's window buffer kept as opaque state: ``(new state, alerts)``.

    For a streaming engine's keyed state (e.g. one ``applyInPandasWithState``
    group per model, as the cluster job keeps one per correlation rule): the
    state is :meth:`WindowBuffer.snapshot`, ``rows`` the micro-batch's events
    in arrival order, ``flush`` the end of bounded input. It is the embedded
    stage's code, so with bounded input (infinite lateness) the alerts are the
    embedded pipeline's whatever the micro-batches; with a finite lateness they
    are too as long as the rows arrive in the same order.
    """
    from detect.anomaly.model import anomaly_alerts, scoreable

    buf = WindowBuffer(model_window_s(model), lateness_s)
    if state:
        buf.restore(state)
    out = [buf.push(scoreable(model, rows))]
    if flush:
        out.append(buf.flush())
    ready = [t for t in out if t.num_rows]
    alerts = [anomaly_alerts(model, t, version) for t in ready]
    from taishi.schema import alerts_table

    return buf.snapshot(), (pa.concat_tables(alerts) if alerts else alerts_table([]))
