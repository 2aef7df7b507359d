"""Sigma v2 correlation rules (event_count, value_count) in event time.

Pure and streaming: ``CorrelationEngine.process(events, matches)`` takes a
batch of ECS events and the single-rule matches on it (``rule.id``,
``event.row``, as :meth:`detect.sigma.RuleSet.match` returns) and gives back
alerts (ALERT_SCHEMA) plus the events that arrived too late.

Time model
----------
* The watermark is ``max(@timestamp seen) - allowed_lateness``; it only moves
  forward. It is *exclusive*: events with ``@timestamp < watermark`` are
  final, so an event that arrives with ``@timestamp < watermark`` is late --
  counted in ``late_events`` and returned in ``ProcessResult.late`` (never
  silently dropped), not correlated.
* Matched events wait in a buffer until the watermark passes them, then are
  evaluated in ``(@timestamp, event.id)`` order. That, and not the arrival
  order, decides the result, so any batching of the same events (as long as
  disorder stays within the allowed lateness) gives the same alerts.
* ``flush()`` (end of input) evaluates everything buffered.

Semantics per correlation and group-by value
--------------------------------------------
* Conditions with a lower bound (gt/gte/eq, alone or in a range with lt/lte):
  a sliding window of ``timespan`` ending at each event, both ends inclusive
  (an event exactly ``timespan`` older is still in). When the condition first
  holds, one alert; its window starts at the first event in the window.
  Then the group's window is reset: the next alert needs fresh events.
* Conditions with only upper bounds (lt/lte): a window opens at a group's
  first event and closes ``timespan`` later; at close the condition is
  evaluated once (needs the watermark to pass the close time, or flush()).
* event_count counts events; value_count counts distinct non-null values of
  ``field`` in the window.

Other correlation types (value_sum, temporal, ...) slot in as another
``_Metric`` and an entry in ``SUPPORTED_CORRELATION_TYPES``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field as dc_field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from taishi.ids import correlation_alert_id
from taishi.schema import ALERT_SCHEMA, EVENT_SCHEMA, LEVEL_SEVERITY, alerts_table

SUPPORTED_CORRELATION_TYPES = ("event_count", "value_count")
OPS = ("gt", "gte", "lt", "lte", "eq", "neq")
MAX_EVENT_IDS = 1000
SNAPSHOT_VERSION = 1

#: event fields copied onto correlation alerts (from the group when grouped by them,
#: else the most common value among the window's events)
ALERT_COPY_FIELDS = (
    "source.ip", "source.port", "destination.ip", "destination.port",
    "user.name", "host.name", "dns.question.name", "event.dataset",
)


def parse_condition(cond: dict) -> tuple[list[tuple[str, float]], str | None]:
    """``{gte: 5, lt: 10, field: user.name}`` -> ([("gte", 5), ("lt", 10)], "user.name")."""
    ops = []
    fld = None
    for k, v in cond.items():
        if k in OPS:
            try:
                ops.append((k, float(v)))
            except (TypeError, ValueError):
                raise ValueError(f"correlation condition {k}: {v!r} is not a number")
        elif k == "field":
            if isinstance(v, list):
                raise ValueError("correlation condition with several fields is not supported")
            fld = str(v)
        else:
            raise ValueError(f"correlation condition item {k!r} is not supported")
    if not ops:
        raise ValueError("correlation condition has no operator")
    return ops, fld


def _holds(ops: list[tuple[str, float]], x: float) -> bool:
    for op, v in ops:
        ok = {
            "gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v, "eq": x == v, "neq": x != v,
        }[op]
        if not ok:
            return False
    return True


@dataclass
class CorrelationSpec:
    id: str
    title: str
    type: str  # event_count | value_count
    rule_refs: list[str]
    group_by: list[str]
    timespan_s: int
    conditions: list[tuple[str, float]]
    field: str | None = None
    generate: bool = False
    level: str | None = None
    description: str | None = None
    tags: list[str] = dc_field(default_factory=list)
    techniques: list[str] = dc_field(default_factory=list)
    tactics: list[str] = dc_field(default_factory=list)
    path: str = ""
    name: str | None = None
    rule_ids: list[str] = dc_field(default_factory=list)  # resolved base rule ids

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "name": self.name, "level": self.level,
            "type": "sigma_correlation", "correlation_type": self.type, "description": self.description,
            "tags": self.tags, "techniques": self.techniques, "tactics": self.tactics, "logsource": "",
            "path": self.path, "rules": self.rule_ids or self.rule_refs, "group_by": self.group_by,
            "timespan_s": self.timespan_s, "condition": [list(c) for c in self.conditions],
            "field": self.field, "generate": self.generate,
        }

    @property
    def eager(self) -> bool:
        """Fires as soon as the condition holds (has a lower bound)."""
        return any(op in ("gt", "gte", "eq") for op, _ in self.conditions)


@dataclass
class ProcessResult:
    alerts: pa.Table  # ALERT_SCHEMA
    late: pa.Table  # the input events that arrived behind the watermark (dead-letter them)


# a buffered event: [ts_us, event_id, value_key|None, attrs(list aligned with ALERT_COPY_FIELDS)]
Rec = list


class _Group:
    __slots__ = ("events", "values")

    def __init__(self) -> None:
        self.events: list[Rec] = []
        self.values: Counter = Counter()

    def add(self, r: Rec) -> None:
        self.events.append(r)
        if r[2] is not None:
            self.values[r[2]] += 1

    def evict_before(self, ts: int) -> None:
        i = 0
        while i < len(self.events) and self.events[i][0] < ts:
            v = self.events[i][2]
            if v is not None:
                self.values[v] -= 1
                if self.values[v] == 0:
                    del self.values[v]
            i += 1
        if i:
            del self.events[:i]

    def clear(self) -> None:
        self.events.clear()
        self.values.clear()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _ts_us(col: pa.Array) -> np.ndarray:
    """@timestamp column -> int64 microseconds (nulls -> min int)."""
    if not pa.types.is_timestamp(col.type):
        col = col.cast(pa.timestamp("us", tz="UTC"))
    col = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
    return pc.fill_null(col, np.iinfo(np.int64).min).to_numpy(zero_copy_only=False)


class CorrelationEngine:
    def __init__(self, correlations: Iterable[CorrelationSpec], allowed_lateness_s: float = 60):
        self.correlations = list(correlations)
        self.allowed_lateness_s = allowed_lateness_s
        # infinite lateness = bounded input: the watermark never passes an event
        # before flush(), so the result is independent of input order entirely.
        self._lateness_us = None if math.isinf(allowed_lateness_s) else int(allowed_lateness_s * 1_000_000)
        self._by_rule: dict[str, list[int]] = {}
        for ci, c in enumerate(self.correlations):
            for rid in c.rule_ids:
                self._by_rule.setdefault(rid, []).append(ci)
        self.watermark_us: int | None = None
        self.max_ts_us: int | None = None
        self.pending: list[tuple[int, str, int, str, Rec]] = []  # (ts, eid, corr idx, group, rec)
        self.groups: dict[tuple[int, str], _Group] = {}
        self.late_events = 0  # matched events that arrived behind the watermark
        self.untimed_events = 0  # matched events without @timestamp (also returned as late)
        self.alerts_emitted = 0

    # ---------------------------------------------------------------- input

    def process(self, events: pa.Table, matches: pa.Table) -> ProcessResult:
        alerts: list[dict] = []
        late_rows: set[int] = set()
        n = events.num_rows
        nullts = np.iinfo(np.int64).min
        if "@timestamp" in events.column_names and n:
            ts = _ts_us(events.column("@timestamp").combine_chunks())
        else:
            ts = np.full(n, nullts, dtype=np.int64)
        if matches.num_rows and self.correlations:
            wm = self.watermark_us
            mrule = matches.column("rule.id").to_pylist()
            mrow = matches.column("event.row").to_pylist()
            wanted: dict[int, set[int]] = {}
            for rid, row in zip(mrule, mrow):
                for ci in self._by_rule.get(rid, ()):
                    wanted.setdefault(ci, set()).add(row)
            all_rows = sorted(set().union(*wanted.values())) if wanted else []
            if all_rows:
                cols = self._columns(events, all_rows)
                pos = {row: i for i, row in enumerate(all_rows)}
                late_counted: set[int] = set()
                for ci in sorted(wanted):
                    c = self.correlations[ci]
                    for row in sorted(wanted[ci]):
                        t = int(ts[row])
                        if t == nullts or (wm is not None and t < wm):
                            late_rows.add(row)
                            if row not in late_counted:
                                late_counted.add(row)
                                if t == nullts:
                                    self.untimed_events += 1
                                else:
                                    self.late_events += 1
                            continue
                        i = pos[row]
                        eid = cols["event.id"][i] or ""
                        group = json.dumps(
                            {g: _jsonable(cols[g][i]) for g in c.group_by},
                            sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                        )
                        value = None
                        if c.field:
                            v = _jsonable(cols[c.field][i])
                            value = None if v is None or v == [] else json.dumps(v, ensure_ascii=False)
                        rec = [t, eid, value, [_jsonable(cols[f][i]) for f in ALERT_COPY_FIELDS]]
                        self.pending.append((t, eid, ci, group, rec))
        valid = ts[ts != nullts]
        if len(valid):
            mx = int(valid.max())
            self.max_ts_us = mx if self.max_ts_us is None else max(self.max_ts_us, mx)
            if self._lateness_us is not None:
                new_wm = self.max_ts_us - self._lateness_us
                if self.watermark_us is None or new_wm > self.watermark_us:
                    self.watermark_us = new_wm
        if self.watermark_us is not None:
            alerts += self._advance(self.watermark_us)
        late = events.take(pa.array(sorted(late_rows), pa.int64())) if late_rows else events.schema.empty_table()
        return ProcessResult(self._alerts(alerts), late)

    def flush(self) -> ProcessResult:
        """End of input: evaluate everything buffered and close every open window."""
        alerts = self._advance(None)
        return ProcessResult(self._alerts(alerts), EVENT_SCHEMA.empty_table())

    def _columns(self, events: pa.Table, rows: list[int]) -> dict[str, list]:
        need = {"event.id", *ALERT_COPY_FIELDS}
        for c in self.correlations:
            need.update(c.group_by)
            if c.field:
                need.add(c.field)
        idx = pa.array(rows, pa.int64())
        out: dict[str, list] = {}
        for name in need:
            if name in events.column_names:
                out[name] = pc.take(events.column(name), idx).to_pylist()
            else:
                out[name] = [None] * len(rows)
        return out

    # ---------------------------------------------------------------- evaluation

    def _advance(self, wm: int | None) -> list[dict]:
        """Evaluate buffered events with ts < wm (all if wm is None), in event-time order."""
        if wm is None:
            ready, self.pending = self.pending, []
        else:
            ready = [p for p in self.pending if p[0] < wm]
            self.pending = [p for p in self.pending if p[0] >= wm]
        ready.sort(key=lambda p: (p[0], p[1], p[2]))
        out: list[dict] = []
        for t, eid, ci, group, rec in ready:
            c = self.correlations[ci]
            key = (ci, group)
            st = self.groups.get(key)
            if st is None:
                st = self.groups[key] = _Group()
            span = c.timespan_s * 1_000_000
            if c.eager:
                st.evict_before(t - span)
                st.add(rec)
                if _holds(c.conditions, self._metric(c, st)):
                    out.append(self._alert(c, group, st.events))
                    st.clear()
            else:
                if st.events and t > st.events[0][0] + span:
                    a = self._close(c, group, st)
                    if a:
                        out.append(a)
                st.add(rec)
        # close windows / evict state the watermark has passed
        for key in list(self.groups):
            ci, group = key
            c = self.correlations[ci]
            st = self.groups[key]
            span = c.timespan_s * 1_000_000
            if not c.eager and st.events and (wm is None or st.events[0][0] + span < wm):
                a = self._close(c, group, st)
                if a:
                    out.append(a)
            elif c.eager and wm is not None:
                st.evict_before(wm - span)
            elif c.eager and wm is None:
                st.clear()
            if not st.events:
                del self.groups[key]
        return out

    def _close(self, c: CorrelationSpec, group: str, st: _Group) -> dict | None:
        a = self._alert(c, group, st.events) if _holds(c.conditions, self._metric(c, st)) else None
        st.clear()
        return a

    @staticmethod
    def _metric(c: CorrelationSpec, st: _Group) -> float:
        if c.type == "event_count":
            return float(len(st.events))
        if c.type == "value_count":
            return float(len(st.values))
        raise NotImplementedError(c.type)

    def _alert(self, c: CorrelationSpec, group: str, evs: list[Rec]) -> dict:
        self.alerts_emitted += 1
        start, end = evs[0][0], evs[-1][0]
        gvals = json.loads(group)
        row: dict[str, Any] = {
            "id": correlation_alert_id(c.id, group, start),
            "@timestamp": end,
            "event.kind": "alert",
            "event.severity": LEVEL_SEVERITY.get(c.level or ""),
            "rule.id": c.id,
            "rule.name": c.title,
            "rule.level": c.level,
            "rule.description": c.description,
            "rule.type": "sigma_correlation",
            "threat.technique.id": c.techniques,
            "threat.tactic.name": c.tactics,
            "tags": c.tags,
            "event.start": start,
            "event.end": end,
            "event.count": len(evs),
            "event.ids": [e[1] for e in evs[:MAX_EVENT_IDS]],
            "taishi.group": group,
        }
        for j, f in enumerate(ALERT_COPY_FIELDS):
            if f in gvals:
                v = gvals[f]
            else:
                cnt = Counter(json.dumps(e[3][j]) for e in evs if e[3][j] is not None)
                v = json.loads(min(cnt, key=lambda k: (-cnt[k], k))) if cnt else None
            row[f] = v if not isinstance(v, list) else (v[0] if v else None)
        if c.type == "value_count":
            distinct = len({e[2] for e in evs if e[2] is not None})
            row["message"] = f"{c.title}: {distinct} distinct {c.field} in {len(evs)} events"
        else:
            row["message"] = f"{c.title}: {len(evs)} events"
        return row

    @staticmethod
    def _alerts(rows: list[dict]) -> pa.Table:
        if not rows:
            return ALERT_SCHEMA.empty_table()
        # timestamps are int microseconds until here
        from datetime import datetime, timedelta, timezone

        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        for r in rows:
            for k in ("@timestamp", "event.start", "event.end"):
                r[k] = epoch + timedelta(microseconds=int(r[k]))
        return alerts_table(rows)

    # ---------------------------------------------------------------- state

    def snapshot(self) -> bytes:
        ids = [c.id for c in self.correlations]
        state = {
            "version": SNAPSHOT_VERSION,
            "allowed_lateness_s": self.allowed_lateness_s,
            "watermark_us": self.watermark_us,
            "max_ts_us": self.max_ts_us,
            "late_events": self.late_events,
            "untimed_events": self.untimed_events,
            "alerts_emitted": self.alerts_emitted,
            "pending": [[t, e, ids[ci], g, r] for t, e, ci, g, r in self.pending],
            "groups": [[ids[ci], g, st.events] for (ci, g), st in self.groups.items()],
        }
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def restore(
        cls, correlations: Iterable[CorrelationSpec], data: bytes, allowed_lateness_s: float | None = None
    ) -> "CorrelationEngine":
        """Engine continuing from :meth:`snapshot` (lateness from the snapshot unless given)."""
        state = json.loads(data)
        if allowed_lateness_s is None:
            allowed_lateness_s = state.get("allowed_lateness_s", 60)
        eng = cls(correlations, allowed_lateness_s)
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown correlation snapshot version {state.get('version')}")
        index = {c.id: i for i, c in enumerate(eng.correlations)}
        eng.watermark_us = state["watermark_us"]
        eng.max_ts_us = state["max_ts_us"]
        eng.late_events = state["late_events"]
        eng.untimed_events = state["untimed_events"]
        eng.alerts_emitted = state["alerts_emitted"]
        for t, e, cid, g, r in state["pending"]:
            if cid in index:  # a correlation removed since the snapshot is dropped
                eng.pending.append((t, e, index[cid], g, r))
        for cid, g, evs in state["groups"]:
            if cid in index:
                st = _Group()
                for r in evs:
                    st.add(r)
                eng.groups[(index[cid], g)] = st
        return eng

    def state_size(self) -> int:
        """Buffered events (pending + in windows): what bounds memory."""
        return len(self.pending) + sum(len(s.events) for s in self.groups.values())
