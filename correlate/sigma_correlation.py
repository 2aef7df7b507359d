"""Sigma v2 correlation rules in event time: event_count, value_count, temporal,
temporal_ordered, value_sum, value_avg, value_percentile; group-by aliases.

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
  silently dropped), not correlated. An infinite allowed lateness means
  bounded input: nothing is evaluated before ``flush()``.
* Matched events wait in a buffer until the watermark passes them, then are
  evaluated in ``(@timestamp, event.id)`` order. That, and not the arrival
  order, decides the result, so any batching of the same events (as long as
  disorder stays within the allowed lateness) gives the same alerts.
* ``flush()`` (end of input) evaluates everything buffered.

Semantics per correlation and group-by value: one alert per burst
------------------------------------------------------------------
* Conditions with a lower bound (gt/gte/eq, alone or in a range with lt/lte):
  a sliding window of ``timespan`` ending at each event, both ends inclusive
  (an event exactly ``timespan`` older is still in). When the condition first
  holds, one alert; its window starts at the first event in the window and
  ends at the event that made the condition hold.
* Conditions with only upper bounds (lt/lte): a window opens at a group's
  first event and closes ``timespan`` later; at close the condition is
  evaluated once (needs the watermark to pass the close time, or flush()).
* Once a group has fired, its alert stays *open*: further matching events of
  that group are absorbed by it -- they start no window and raise nothing --
  until the group has been quiet for a full ``timespan``, i.e. the next event
  comes ``timespan`` or more after the group's previous matching event (event
  time). That event starts counting afresh (an empty window) and a new burst
  may raise a new alert. So a 48-attempt brute force with a threshold of 10 in
  5m gives one alert, as does a long port scan; the same attacker coming back
  after at least ``timespan`` of silence gives a second one. An alert is
  emitted when its window fires (it is not updated by the events it absorbs
  afterwards); its id is ``correlation_alert_id(rule id, group, start of the
  window that fired)``; its ``event.count``/``event.ids`` are the window's,
  not the absorbed events'. This holds for both kinds of condition (for an
  upper-bound window that fired at its close, the burst runs on from the
  window's last event). A burst still open at ``flush()`` ends there.
* event_count counts events; value_count counts distinct non-null values of
  ``field`` in the window.
* temporal: the metric is how many of the referenced rules matched in the
  window (an event matching several counts for each); no condition means all
  of them (``gte: n``), a condition (e.g. ``gte: 2``) counts rules as the spec
  says. temporal_ordered: the length of the longest prefix of the rule list
  matched in that order with *strictly increasing* @timestamp (equal
  timestamps are no order; one event matching A and B is not "A then B"; a
  rule listed twice needs two events) whose first event is within
  ``timespan`` of the current one; no condition: the whole list. Its alert
  window starts at the chain's first event (the latest such start).
* value_sum / value_avg / value_percentile aggregate the numeric ``field``
  (numbers, numeric strings; missing, non-numeric, NaN and infinite values
  are skipped, a window without values has no metric). Sums are exact
  (correctly rounded, independent of eviction order); value_percentile needs
  ``percentile`` (0..100, pySigma's ``condition.percentile`` key) and uses
  numpy's default ``linear`` interpolation (Hyndman-Fan type 7, the spec's
  "median is percentile 50" holds for even counts). See
  :mod:`correlate.correlation_metrics`.
* Conditions: gt/gte/lt/lte/eq/neq and ranges (several at once, AND).
  Eager (fires when it first holds) iff there is a gt/gte/eq; otherwise
  (lt/lte/neq only) evaluated once per window at its close -- for all types.
* aliases (``{alias: {rule name or id: field}}``): the group-by entry named
  ``alias`` reads ``field`` in events of that rule; the group key uses the
  alias name. An event matched by several referenced rules is counted once
  per distinct group it falls in. A rule the alias gives no field for does
  not count (its events have no group value).
* ``taishi.group`` (and the id) use the group-by values as a compact JSON
  object with sorted keys, e.g. ``{"source.ip":"10.0.0.5"}``.

Implementation notes
--------------------
Per batch and correlation the matched rows are taken column-wise with Arrow
(group key built vectorised as that JSON text, value key as JSON text, event
id, the alert-copy fields) into a *chunk* sorted by ``(@timestamp, event.id)``.
Chunks wait for the watermark; the ready part of every chunk is merged and
walked once in event-time order by a small per-event loop over per-group
windows (lists of ``(ts, value, rows, index)``); event ids and alert-copy
fields are only read back (from the chunk's Arrow columns) for windows that
fire. Idle groups are dropped through a per-correlation timer heap, so an
advance costs the ready events, not the number of groups. Cyclic GC is
paused while evaluating (many small acyclic objects; with a large heap the
collector would otherwise dominate).

Snapshots are JSON, column-wise: pending chunks (serialised once per chunk and
cached, so frequent snapshots of a large bounded-mode buffer are cheap) and,
per correlation, the open windows and bursts.

The metric and temporal types keep a per-group state (correlation_metrics)
that is a pure function of the window's records; it is not serialised but
rebuilt on restore by replaying the window. Rows of correlations with aliases
or of temporal type are taken per referenced rule (own group-by fields, own
rule bit in ``val``).

``SUPPORTED_CORRELATION_TYPES`` is what detect.sigma loads today (it imports
it); ``ENGINE_CORRELATION_TYPES`` is what this engine runs.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import json
import math
import operator
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field as dc_field
from itertools import repeat
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from correlate.correlation_metrics import new_state
from taishi.ids import correlation_alert_id
from taishi.schema import ALERT_SCHEMA, EVENT_FIELDS, EVENT_SCHEMA, LEVEL_SEVERITY, alerts_table

#: the types detect.sigma.RuleSet loads today (it imports this); see ENGINE_CORRELATION_TYPES
SUPPORTED_CORRELATION_TYPES = ("event_count", "value_count")
#: the types CorrelationEngine runs
ENGINE_CORRELATION_TYPES = (
    "event_count", "value_count", "temporal", "temporal_ordered", "value_sum", "value_avg", "value_percentile",
)
TEMPORAL_TYPES = ("temporal", "temporal_ordered")
NUMERIC_TYPES = ("value_sum", "value_avg", "value_percentile")
OPS = ("gt", "gte", "lt", "lte", "eq", "neq")
MAX_EVENT_IDS = 1000
SNAPSHOT_VERSION = 2

#: event fields copied onto correlation alerts (from the group when grouped by them,
#: else the most common value among the window's events)
ALERT_COPY_FIELDS = (
    "source.ip", "source.port", "destination.ip", "destination.port",
    "user.name", "host.name", "dns.question.name", "event.dataset",
)


def parse_condition(cond: dict) -> tuple[list[tuple[str, float]], str | None]:
    """``{gte: 5, lt: 10, field: user.name}`` -> ([("gte", 5), ("lt", 10)], "user.name")."""
    ops, fld, _ = parse_condition_ex(cond, allow_percentile=False)
    if not ops:
        raise ValueError("correlation condition has no operator")
    return ops, fld


def parse_condition_ex(
    cond: dict, allow_percentile: bool = True
) -> tuple[list[tuple[str, float]], str | None, float | None]:
    """Like :func:`parse_condition`, plus value_percentile's ``percentile`` (0..100); may have no operator
    (temporal rules without a condition)."""
    ops = []
    fld = None
    pct = None
    for k, v in (cond or {}).items():
        if k in OPS:
            try:
                ops.append((k, float(v)))
            except (TypeError, ValueError):
                raise ValueError(f"correlation condition {k}: {v!r} is not a number")
        elif k == "field":
            if isinstance(v, list):
                raise ValueError("correlation condition with several fields is not supported")
            fld = str(v)
        elif k == "percentile" and allow_percentile:
            try:
                pct = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"correlation condition percentile: {v!r} is not a number")
            if isinstance(v, bool) or not 0 <= pct <= 100:
                raise ValueError(f"correlation condition percentile: {v!r} is not in 0..100")
        else:
            raise ValueError(f"correlation condition item {k!r} is not supported")
    for k, v in ops:
        if not math.isfinite(v):
            raise ValueError(f"correlation condition {k}: {v!r} is not a finite number")
    return ops, fld, pct


def _holds(ops: list[tuple[str, float]], x: float) -> bool:
    for op, v in ops:
        ok = {
            "gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v, "eq": x == v, "neq": x != v,
        }[op]
        if not ok:
            return False
    return True


_OPF = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
        "eq": operator.eq, "neq": operator.ne}


def _lower_bound(ops: list[tuple[str, float]]) -> int:
    """Smallest integer count that can satisfy the lower bounds of ``ops`` (0 when none)."""
    lo = 0
    for op, v in ops:
        if op == "gt":
            lo = max(lo, math.floor(v) + 1)
        elif op in ("gte", "eq"):
            lo = max(lo, math.ceil(v))
    return lo


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while building many small acyclic objects (groups, windows):
    with a large live heap the collector would otherwise dominate."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _predicate(ops: list[tuple[str, float]]) -> Callable[[float], bool]:
    """``_holds(ops, .)`` as one fast callable."""
    pairs = [(_OPF[op], v) for op, v in ops]
    if len(pairs) == 1:
        (f, v), = pairs
        return lambda x: f(x, v)
    return lambda x: all(f(x, v) for f, v in pairs)


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
    rule_ids: list[str] = dc_field(default_factory=list)  # resolved base rule ids (parallel to rule_refs)
    percentile: float | None = None  # value_percentile: which percentile (0..100) of ``field``
    #: group-by alias -> {referenced rule (name or id, as in rule_refs / rule_ids) -> event field}
    aliases: dict[str, dict[str, str]] = dc_field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "name": self.name, "level": self.level,
            "type": "sigma_correlation", "correlation_type": self.type, "description": self.description,
            "tags": self.tags, "techniques": self.techniques, "tactics": self.tactics, "logsource": "",
            "path": self.path, "rules": self.rule_ids or self.rule_refs, "group_by": self.group_by,
            "timespan_s": self.timespan_s, "condition": [list(c) for c in self.conditions],
            "field": self.field, "generate": self.generate, "percentile": self.percentile,
            "aliases": self.aliases,
        }

    @property
    def effective_conditions(self) -> list[tuple[str, float]]:
        """The conditions; temporal types without one: all referenced rules (``gte: n``)."""
        if self.conditions or self.type not in TEMPORAL_TYPES:
            return list(self.conditions)
        refs = self.rule_ids or self.rule_refs
        n = len(refs) if self.type == "temporal_ordered" else len(set(refs))
        return [("gte", float(n))]

    @property
    def eager(self) -> bool:
        """Fires as soon as the condition holds (has a lower bound)."""
        return any(op in ("gt", "gte", "eq") for op, _ in self.effective_conditions)

    def rule_fields(self) -> dict[str, list[tuple[str, str | None]]]:
        """Per referenced rule id: ``(group name, event field)`` for each group-by entry, aliases
        resolved (event field None: the alias names no field for that rule)."""
        ids = self.rule_ids or self.rule_refs
        refs = self.rule_refs if len(self.rule_refs) == len(ids) else ids
        out: dict[str, list[tuple[str, str | None]]] = {}
        for rid, ref in zip(ids, refs):
            pairs = []
            for g in sorted(set(self.group_by)):
                m = self.aliases.get(g)
                pairs.append((g, g if m is None else (m.get(rid) or m.get(ref))))
            out.setdefault(rid, pairs)
        return out

    def value_field(self, rid: str) -> str | None:
        """``field`` for events of rule ``rid`` (through an alias when ``field`` names one)."""
        m = self.aliases.get(self.field or "")
        if m is None:
            return self.field
        ids = self.rule_ids or self.rule_refs
        refs = self.rule_refs if len(self.rule_refs) == len(ids) else ids
        ref = dict(zip(ids, refs)).get(rid, rid)
        return m.get(rid) or m.get(ref)


@dataclass
class ProcessResult:
    alerts: pa.Table  # ALERT_SCHEMA
    late: pa.Table  # the input events that arrived behind the watermark (dead-letter them)


_NULL_TS = int(np.iinfo(np.int64).min)
_CONTROL = r"[\x00-\x1f]"
_JSON_SPECIAL = r'[\x00-\x1f"\\]'  # what a JSON string literal escapes


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
    return pc.fill_null(col, _NULL_TS).to_numpy(zero_copy_only=False)


def _plain(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array, dictionaries decoded."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _column(events: pa.Table, name: str, idx: pa.Array) -> pa.Array:
    if name in events.column_names:
        return _plain(events.column(name).take(idx))
    return pa.nulls(len(idx))


def _json_text(col: pa.Array, group: bool) -> pa.Array:
    """Each value as the JSON text the group key (``group``) or the value key uses.

    Group: ``json.dumps(_jsonable(v), separators=(",", ":"), ensure_ascii=False)``,
    null -> ``"null"``. Value: ``json.dumps(_jsonable(v), ensure_ascii=False)``,
    null and ``[]`` -> null. Vectorised for strings, integers and booleans
    (the result is the same text); per value otherwise.
    """
    t = col.type
    out = None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        col = col.cast(pa.string())
        if not pc.any(pc.match_substring_regex(col, _JSON_SPECIAL)).as_py():  # the usual case: nothing to escape
            out = pc.binary_join_element_wise('"', col, '"', "")
        elif not pc.any(pc.match_substring_regex(col, _CONTROL)).as_py():
            esc = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
            out = pc.binary_join_element_wise('"', esc, '"', "")
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        out = col.cast(pa.string())
    elif pa.types.is_null(t):
        out = pa.nulls(len(col), pa.string())
    if out is None:  # floats, lists, timestamps, strings with control characters ...
        vals = []
        for v in col.to_pylist():
            v = _jsonable(v)
            if group:
                vals.append(json.dumps(v, separators=(",", ":"), ensure_ascii=False))
            else:
                vals.append(None if v is None or v == [] else json.dumps(v, ensure_ascii=False))
        return pa.array(vals, pa.string())
    return pc.fill_null(out, "null") if group else out


def _group_keys(fields: list[str], events: pa.Table, idx: pa.Array) -> pa.Array:
    """The group's JSON object per row (sorted keys, compact), as json.dumps would write it."""
    if not fields:
        return pa.array(["{}"] * len(idx), pa.string())
    parts: list[Any] = []
    for j, f in enumerate(fields):
        parts.append(("{" if j == 0 else ",") + json.dumps(f, ensure_ascii=False) + ":")
        parts.append(_json_text(_column(events, f, idx), group=True))
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def _group_keys_pairs(pairs: list[tuple[str, str | None]], events: pa.Table, idx: pa.Array) -> pa.Array:
    """Like :func:`_group_keys`, the JSON object keyed by group name (alias) with each value
    read from its own event field; ``pairs`` sorted by group name."""
    if not pairs:
        return pa.array(["{}"] * len(idx), pa.string())
    parts: list[Any] = []
    for j, (g, f) in enumerate(pairs):
        parts.append(("{" if j == 0 else ",") + json.dumps(g, ensure_ascii=False) + ":")
        parts.append(_json_text(_column(events, f, idx) if f else pa.nulls(len(idx)), group=True))
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def _numeric(col: pa.Array) -> pa.Array:
    """A field's values as float64 for value_sum/avg/percentile: numbers as they are, numeric
    strings parsed; anything else (missing, not a number, NaN, infinite) null."""
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        out = pc.cast(col, pa.float64(), safe=False)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        vals = []
        for v in col.to_pylist():
            try:
                vals.append(float(v) if v is not None else None)
            except ValueError:
                vals.append(None)
        out = pa.array(vals, pa.float64())
    else:
        return pa.nulls(len(col), pa.float64())
    return pc.if_else(pc.fill_null(pc.is_finite(out), False), out, pa.scalar(None, pa.float64()))


def _attr_column(col: pa.Array, name: str) -> pa.Array:
    want = EVENT_FIELDS.get(name, pa.string())
    if col.type == want:
        return col
    try:
        return col.cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # a batch with this field of an unexpected, unconvertible type: it is not
        # copied onto alerts (the alert columns have the ECS type)
        return pa.nulls(len(col), want)


def _time_order(ts: np.ndarray, eid: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """The permutation ordering rows by (ts, event id) -- the evaluation order; None when
    they are in it already (strictly increasing ts)."""
    if len(ts) < 2 or bool((ts[1:] > ts[:-1]).all()):
        return None
    return pc.sort_indices(pa.table({"t": ts, "e": eid}),
                           sort_keys=[("t", "ascending"), ("e", "ascending")]).to_numpy()


def _sort_by_time(ts: np.ndarray, table: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """Order rows by (ts, event id) -- the evaluation order."""
    order = _time_order(ts, table.column("eid"))
    if order is None:
        return ts, table
    return ts[order], table.take(pa.array(order))


def _drop_hopeless(cr: _Corr, ts: np.ndarray, table: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """At the end of input: without the events of groups that cannot fire.

    A count correlation's window metric is at most the group's number of events
    (event_count) or of distinct values (value_count) among all it will ever see;
    a new group whose total stays below the condition's lower bound fires no
    alert, and its state is dropped when every window closes. Groups with state
    (a streaming run's open windows) are always evaluated.
    """
    if cr.generic or cr.least <= 1 or len(ts) == 0:
        return ts, table
    if cr.vc:
        agg = table.select(["key", "val"]).group_by("key", use_threads=False).aggregate([("val", "count_distinct")])
        counts = agg.column("val_count_distinct")
    else:
        agg = table.select(["key"]).group_by("key", use_threads=False).aggregate([([], "count_all")])
        counts = agg.column("count_all")
    hopeful = pc.greater_equal(counts, cr.least)
    if pc.all(hopeful).as_py():
        return ts, table
    keys = agg.column("key").filter(hopeful)
    if cr.groups:
        keys = pa.concat_arrays([keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys,
                                 pa.array(list(cr.groups), pa.string())])
    keep = _plain(pc.is_in(table.column("key"), value_set=keys)).to_numpy(zero_copy_only=False)
    return ts[keep], table.filter(pa.array(keep))


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    """``np.unique(rows)``; one rule's matched rows are sorted and distinct already."""
    if len(rows) < 2 or bool((rows[1:] > rows[:-1]).all()):
        return rows
    return np.unique(rows)


class _Chunk:
    """Matched events of one correlation from one batch, waiting for the watermark.

    ``ts`` (int64 us) and ``table`` (eid, key, [val], alert-copy fields) are
    sorted by (ts, eid). Immutable; its snapshot text is made once.
    """

    __slots__ = ("ts", "table", "_json")

    def __init__(self, ts: np.ndarray, table: pa.Table):
        self.ts = ts
        self.table = table
        self._json: str | None = None

    def to_json(self) -> str:
        if self._json is None:
            d: dict[str, list] = {"ts": self.ts.tolist()}
            for name in self.table.column_names:
                d[name] = self.table.column(name).to_pylist()
            self._json = json.dumps(d, separators=(",", ":"), ensure_ascii=False)
        return self._json


class _Rows:
    """The evaluated events a window's records point into (read back only for alerts, snapshots)."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table):
        self.table = table


# a record in a window: (ts_us, value key | None, _Rows, row in it)
Rec = tuple


class _Group:
    __slots__ = ("ev", "vals", "open")

    def __init__(self, vc: bool, state: Any = None) -> None:
        self.ev: list[Rec] = []  # the window, oldest first
        # value_count: count per distinct value; metric/temporal types: a correlation_metrics state
        self.vals: Any = state if state is not None else ({} if vc else None)
        self.open: int | None = None  # ts of the last event of the open (fired) burst


class _Corr:
    """Runtime state of one correlation."""

    __slots__ = ("spec", "span", "eager", "vc", "holds", "least", "fields", "attrs", "rule_ids", "pending", "groups",
                 "timers", "kind", "generic", "per_rule", "has_val", "val_type", "rule_bits", "stage_bits", "rule_fields")

    def __init__(self, spec: CorrelationSpec):
        self.spec = spec
        self.span = spec.timespan_s * 1_000_000
        self.eager = spec.eager
        if spec.type not in ENGINE_CORRELATION_TYPES:
            raise NotImplementedError(spec.type)
        self.kind = spec.type
        self.vc = spec.type == "value_count"
        # metric / temporal types: evaluated through a correlation_metrics state per group
        self.generic = spec.type not in ("event_count", "value_count")
        # temporal types and aliases: matched rows are taken per referenced rule
        self.per_rule = spec.type in TEMPORAL_TYPES or bool(spec.aliases)
        self.has_val = spec.type != "event_count"
        self.val_type = (pa.string() if self.vc else pa.float64() if spec.type in NUMERIC_TYPES
                         else pa.int64() if spec.type in TEMPORAL_TYPES else pa.null())
        if spec.type in NUMERIC_TYPES and not spec.field:
            raise ValueError(f"correlation {spec.id}: {spec.type} needs a condition field")
        if spec.type == "value_count" and not spec.field:
            raise ValueError(f"correlation {spec.id}: value_count needs a condition field")
        if spec.type == "value_percentile" and (spec.percentile is None or not 0 <= spec.percentile <= 100):
            raise ValueError(f"correlation {spec.id}: value_percentile needs a percentile in 0..100")
        conds = spec.effective_conditions
        if not conds:
            raise ValueError(f"correlation {spec.id}: no condition")
        self.holds = _predicate(conds)
        # the count metrics are integers: below this they cannot hold
        self.least = _lower_bound(conds) if not self.generic else -math.inf
        refs = list(spec.rule_ids or spec.rule_refs)
        # temporal: one bit per distinct referenced rule; temporal_ordered: stage k needs rule refs[k]
        self.rule_bits = {rid: 1 << i for i, rid in enumerate(dict.fromkeys(refs))}
        self.stage_bits = [self.rule_bits[r] for r in refs]
        self.rule_fields = spec.rule_fields()
        self.fields = sorted(set(spec.group_by))
        self.attrs = [f for f in ALERT_COPY_FIELDS if f not in self.fields]
        self.rule_ids = pa.array(sorted(set(spec.rule_ids)), pa.string())
        self.pending: list[_Chunk] = []
        self.groups: dict[str, _Group] = {}
        # (due ts, group key): one entry per group, never later than the group
        # next needs the watermark (window close, state expiry); stale ones re-armed
        self.timers: list[tuple[int, str]] = []

    def due(self, g: _Group) -> int | None:
        """When the watermark must pass to close g's window / forget g (None: nothing left)."""
        if g.ev:
            return (g.ev[-1][0] if self.eager else g.ev[0][0]) + self.span
        if g.open is not None:
            return g.open + self.span
        return None

    def new_state(self) -> Any:
        return new_state(self.kind, self.stage_bits, self.spec.percentile)

    def metric_of(self, ev: list[Rec]) -> float | None:
        """The metric of a whole window (replayed through a fresh state)."""
        if not self.generic:
            return len({r[1] for r in ev if r[1] is not None}) if self.vc else len(ev)
        st = self.new_state()
        for r in ev:
            if r[1] is not None:
                st.add(r[0], r[1])
        return st.value(ev[-1][0], self.span) if ev else None

    def chunk_from_lists(self, d: dict[str, list], sort: bool = False) -> _Chunk:
        n = len(d["ts"])
        cols = {"eid": pa.array(d["eid"], pa.string()), "key": pa.array(d["key"], pa.string())}
        if self.has_val:
            cols["val"] = pa.array(d.get("val") or [None] * n, self.val_type)
        for f in self.attrs:
            cols[f] = pa.array(d[f], EVENT_FIELDS.get(f, pa.string())) if f in d else pa.nulls(n, EVENT_FIELDS.get(f, pa.string()))
        ts = np.asarray(d["ts"], dtype=np.int64)
        table = pa.table(cols)
        if sort:
            ts, table = _sort_by_time(ts, table)
        return _Chunk(ts, table)


class CorrelationEngine:
    def __init__(self, correlations: Iterable[CorrelationSpec], allowed_lateness_s: float = 60):
        self.correlations = list(correlations)
        self.allowed_lateness_s = allowed_lateness_s
        # infinite lateness = bounded input: the watermark never passes an event
        # before flush(), so the result is independent of input order entirely.
        self._lateness_us = None if math.isinf(allowed_lateness_s) else int(allowed_lateness_s * 1_000_000)
        self._c = [_Corr(c) for c in self.correlations]
        self.watermark_us: int | None = None
        self.max_ts_us: int | None = None
        self.late_events = 0  # matched events that arrived behind the watermark
        self.untimed_events = 0  # matched events without @timestamp (also returned as late)
        self.ungrouped_events = 0  # matched events missing a group-by field (not counted)
        self.alerts_emitted = 0

    # ---------------------------------------------------------------- input

    def process(self, events: pa.Table, matches: pa.Table) -> ProcessResult:
        n = events.num_rows
        if "@timestamp" in events.column_names and n:
            ts = _ts_us(_plain(events.column("@timestamp")))
        else:
            ts = np.full(n, _NULL_TS, dtype=np.int64)
        late_idx = None
        if matches.num_rows and self._c:
            wm = self.watermark_us
            mrule = matches.column("rule.id")
            mrow = _plain(matches.column("event.row")).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            late = np.zeros(n, dtype=bool)
            for cr in self._c:
                if not len(cr.rule_ids):
                    continue
                if cr.per_rule:
                    ch = self._rule_chunk(cr, events, mrule, mrow, ts, wm, late)
                    if ch is not None:
                        cr.pending.append(ch)
                    continue
                sel = _plain(pc.fill_null(pc.is_in(mrule, value_set=cr.rule_ids), False)).to_numpy(zero_copy_only=False)
                if not sel.any():
                    continue
                rows = _unique_rows(mrow[sel])
                rows = self._grouped_rows(cr, events, rows)
                if not len(rows):
                    continue
                t = ts[rows]
                bad = t == _NULL_TS
                if wm is not None:
                    bad |= t < wm
                if bad.any():
                    late[rows[bad]] = True
                    keep = ~bad
                    rows, t = rows[keep], t[keep]
                if len(rows):
                    cr.pending.append(self._chunk(cr, events, rows, t))
            if late.any():
                late_idx = np.flatnonzero(late)
                untimed = int((ts[late_idx] == _NULL_TS).sum())
                self.untimed_events += untimed
                self.late_events += len(late_idx) - untimed
        valid = ts[ts != _NULL_TS]
        if len(valid):
            mx = int(valid.max())
            self.max_ts_us = mx if self.max_ts_us is None else max(self.max_ts_us, mx)
            if self._lateness_us is not None:
                new_wm = self.max_ts_us - self._lateness_us
                if self.watermark_us is None or new_wm > self.watermark_us:
                    self.watermark_us = new_wm
        alerts = self._advance(self.watermark_us) if self.watermark_us is not None else []
        late_t = events.take(pa.array(late_idx, pa.int64())) if late_idx is not None else events.schema.empty_table()
        return ProcessResult(self._alerts(alerts), late_t)

    def flush(self) -> ProcessResult:
        """End of input: evaluate everything buffered and close every open window and burst."""
        alerts = self._advance(None)
        return ProcessResult(self._alerts(alerts), EVENT_SCHEMA.empty_table())

    def _grouped_rows(self, cr: _Corr, events: pa.Table, rows: np.ndarray) -> np.ndarray:
        """Rows that have a value for every group-by field.

        An event without one cannot be attributed to a group (a brute force
        "from nowhere"), so, as Elasticsearch's terms aggregation ignores
        documents missing the field, it does not count toward the correlation.
        """
        return self._rows_with(events, rows, list(cr.fields))

    def _rule_chunk(self, cr: _Corr, events: pa.Table, mrule: Any, mrow: np.ndarray, ts: np.ndarray,
                    wm: int | None, late: np.ndarray) -> _Chunk | None:
        """Matched rows of a correlation taken per referenced rule: each rule has its own
        group-by fields (aliases) and, for temporal types, its own bit. A row matched by
        several of the rules counts once per group it falls in (bits or-ed)."""
        rows_p: list[np.ndarray] = []
        keys_p: list[pa.Array] = []
        vals_p: list[pa.Array] = []
        for rid, bit in cr.rule_bits.items():
            sel = _plain(pc.fill_null(pc.equal(mrule, rid), False)).to_numpy(zero_copy_only=False)
            if not sel.any():
                continue
            rows = np.unique(mrow[sel])
            pairs = cr.rule_fields.get(rid, [])
            rows = self._rows_with(events, rows, [f for _, f in pairs])
            if not len(rows):
                continue
            t = ts[rows]
            bad = t == _NULL_TS
            if wm is not None:
                bad |= t < wm
            if bad.any():
                late[rows[bad]] = True
                rows = rows[~bad]
            if not len(rows):
                continue
            idx = pa.array(rows, pa.int64())
            rows_p.append(rows)
            keys_p.append(_group_keys_pairs(pairs, events, idx))
            vals_p.append(self._values(cr, events, idx, cr.spec.value_field(rid), bit))
        if not rows_p:
            return None
        rows = np.concatenate(rows_p)
        key = pa.concat_arrays(keys_p)
        val = pa.concat_arrays(vals_p)
        if len(rows_p) > 1 and len(np.unique(rows)) < len(rows):
            seen: dict[tuple[int, str], int] = {}
            keep: list[int] = []
            vl = val.to_pylist()
            for i, rk in enumerate(zip(rows.tolist(), key.to_pylist())):
                j = seen.get(rk)
                if j is None:
                    seen[rk] = i
                    keep.append(i)
                elif cr.kind in TEMPORAL_TYPES:
                    vl[j] |= vl[i]
            rows = rows[keep]
            key = key.take(pa.array(keep, pa.int64()))
            val = pa.array([vl[i] for i in keep], cr.val_type)
        return self._chunk(cr, events, rows, ts[rows], key, val)

    def _rows_with(self, events: pa.Table, rows: np.ndarray, fields: list[str | None]) -> np.ndarray:
        """Rows with a value for every field (None: a field the rule has no alias for -> none)."""
        if not len(rows):
            return rows
        if any(f is None for f in fields):
            self.ungrouped_events += len(rows)
            return rows[:0]
        idx = pa.array(rows, pa.int64())
        keep = np.ones(len(rows), dtype=bool)
        for f in dict.fromkeys(fields):
            if f not in events.column_names:
                return rows[:0]
            col = pc.take(events.column(f), idx)
            ok = pc.is_valid(col)
            if pa.types.is_list(col.type):
                ok = pc.and_(ok, pc.greater(pc.fill_null(pc.list_value_length(col), 0), 0))
            keep &= _plain(pc.fill_null(ok, False)).to_numpy(zero_copy_only=False)
        self.ungrouped_events += int((~keep).sum())
        return rows[keep]

    @staticmethod
    def _values(cr: _Corr, events: pa.Table, idx: pa.Array, fld: str | None, bit: int = 0) -> pa.Array:
        """The ``val`` column: value key (value_count), number (metric types), rule bit (temporal)."""
        if cr.vc:
            return _json_text(_column(events, fld, idx) if fld else pa.nulls(len(idx)), group=False)
        if cr.kind in NUMERIC_TYPES:
            return _numeric(_column(events, fld, idx) if fld else pa.nulls(len(idx)))
        if cr.kind in TEMPORAL_TYPES:
            return pa.array(np.full(len(idx), bit, dtype=np.int64), pa.int64())
        return pa.nulls(len(idx), pa.null())

    def _chunk(self, cr: _Corr, events: pa.Table, rows: np.ndarray, t: np.ndarray,
               key: pa.Array | None = None, val: pa.Array | None = None) -> _Chunk:
        idx = pa.array(rows, pa.int64())
        eid = _column(events, "event.id", idx)
        eid = pc.fill_null(eid if eid.type == pa.string() else eid.cast(pa.string()), "")
        order = _time_order(t, eid)
        if order is not None:  # rows in evaluation order first: every other column is taken once, in order
            o = pa.array(order)
            rows, t, eid = rows[order], t[order], eid.take(o)
            idx = pa.array(rows, pa.int64())
            key = key.take(o) if key is not None else None
            val = val.take(o) if val is not None else None
        cols = {"eid": eid, "key": key if key is not None else _group_keys(cr.fields, events, idx)}
        if cr.has_val:
            cols["val"] = val if val is not None else self._values(cr, events, idx, cr.spec.field)
        for f in cr.attrs:
            cols[f] = _attr_column(_column(events, f, idx), f)
        return _Chunk(t, pa.table(cols))

    # ---------------------------------------------------------------- evaluation

    def _advance(self, wm: int | None) -> list[dict]:
        """Evaluate buffered events with ts < wm (all if wm is None), in event-time order."""
        fired: list[tuple[_Corr, str, list[Rec]]] = []
        with _gc_paused():
            for cr in self._c:
                ready = self._take_ready(cr, wm)
                if ready is not None:
                    self._evaluate(cr, *ready, fired)
                if wm is None:
                    self._close_all(cr, fired)
                else:
                    self._expire(cr, wm, fired)
            rows = self._build_alerts(fired)
        rows.sort(key=lambda r: r["@timestamp"])
        return rows

    @staticmethod
    def _take_ready(cr: _Corr, wm: int | None) -> tuple[np.ndarray, pa.Table, np.ndarray | None] | None:
        """The pending events before ``wm`` (all when None): their times in evaluation
        order, their rows, and the order as a permutation of the rows (None: in order)."""
        parts: list[tuple[np.ndarray, pa.Table]] = []
        keep: list[_Chunk] = []
        for ch in cr.pending:
            n = len(ch.ts)
            k = n if wm is None else int(np.searchsorted(ch.ts, wm, "left"))
            if k == 0:
                keep.append(ch)
            elif k == n:
                parts.append((ch.ts, ch.table))
            else:
                parts.append((ch.ts[:k], ch.table.slice(0, k)))
                keep.append(_Chunk(ch.ts[k:], ch.table.slice(k)))
        cr.pending = keep
        if not parts:
            return None
        if len(parts) == 1:
            ts, table = parts[0]
        else:
            ts, table = np.concatenate([p[0] for p in parts]), pa.concat_tables([p[1] for p in parts])
        if wm is None:
            ts, table = _drop_hopeless(cr, ts, table)
        # one chunk is in order; chunks together are ordered by a permutation (no copy of the rows)
        order = _time_order(ts, table.column("eid")) if len(parts) > 1 else None
        return (ts if order is None else ts[order]), table, order

    @staticmethod
    def _evaluate(cr: _Corr, ts: np.ndarray, table: pa.Table, order: np.ndarray | None, fired: list) -> None:
        """Walk ready events (``ts`` sorted by (ts, eid); ``table`` in that order, or
        ``order`` giving it) through their groups' windows."""
        n = len(ts)
        o = None if order is None else pa.array(order)
        keys = (table.column("key") if o is None else table.column("key").take(o)).to_pylist()
        rows = _Rows(table)  # a record keeps its row in ``table``
        vc = cr.vc
        if cr.has_val:
            vals = (table.column("val") if o is None else table.column("val").take(o)).to_pylist()
        else:
            vals = repeat(None, n)
        recs = zip(ts.tolist(), vals, repeat(rows, n), range(n) if order is None else order.tolist())
        groups, timers, span, holds, least = cr.groups, cr.timers, cr.span, cr.holds, cr.least
        push = heapq.heappush
        if cr.generic and cr.eager:
            ordered = cr.kind == "temporal_ordered"
            for key, rec in zip(keys, recs):
                t = rec[0]
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group(False, cr.new_state())
                    push(timers, (t + span, key))
                else:
                    o = g.open
                    if o is not None:
                        if t - o < span:  # absorbed by the open alert
                            g.open = t
                            continue
                        g.open = None
                ev = g.ev
                lo = t - span
                if ev and ev[0][0] < lo:
                    _evict(ev, g.vals, lo)
                ev.append(rec)
                st = g.vals
                v = rec[1]
                if v is not None:
                    st.add(t, v)
                m = st.value(t, span)
                if m is not None and holds(m):
                    w = ev
                    if ordered and st.start is not None:  # the alert's window starts with the chain
                        w = ev[bisect.bisect_left(ev, st.start, key=_rec_ts):]
                    fired.append((cr, key, w))
                    g.ev = []
                    st.clear()
                    g.open = t
        elif cr.eager:
            for key, rec in zip(keys, recs):
                t = rec[0]
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group(vc)
                    push(timers, (t + span, key))
                else:
                    o = g.open
                    if o is not None:
                        if t - o < span:  # absorbed by the open alert
                            g.open = t
                            continue
                        g.open = None  # quiet for a full timespan: a new burst
                ev = g.ev
                lo = t - span
                if ev and ev[0][0] < lo:
                    _evict(ev, g.vals, lo)
                ev.append(rec)
                if vc:
                    cnt = g.vals
                    v = rec[1]
                    if v is not None:
                        cnt[v] = cnt.get(v, 0) + 1
                    m = len(cnt)
                else:
                    m = len(ev)
                if m >= least and holds(m):
                    fired.append((cr, key, ev))  # the window goes to the alert
                    g.ev = []
                    if vc:
                        cnt.clear()
                    g.open = t
        else:
            for key, rec in zip(keys, recs):
                t = rec[0]
                g = groups.get(key)
                if g is None:
                    g = groups[key] = _Group(vc)
                    push(timers, (t + span, key))
                ev = g.ev
                if ev and t > ev[0][0] + span:
                    w = _close_window(cr, g)
                    if w:
                        fired.append((cr, key, w))
                    ev = g.ev
                o = g.open
                if o is not None:
                    if t - o < span:
                        g.open = t
                        continue
                    g.open = None
                ev.append(rec)
                if vc:
                    v = rec[1]
                    if v is not None:
                        g.vals[v] = g.vals.get(v, 0) + 1

    @staticmethod
    def _expire(cr: _Corr, wm: int, fired: list) -> None:
        """Close windows and forget state the watermark has passed (groups whose timer is due)."""
        timers, groups, span = cr.timers, cr.groups, cr.span
        while timers and timers[0][0] < wm:
            _, key = heapq.heappop(timers)
            g = groups.get(key)
            if g is None:
                continue
            ev = g.ev
            if cr.eager:
                lo = wm - span  # no future event (ts >= wm) has these in its window
                if ev and ev[0][0] < lo:
                    _evict(ev, g.vals, lo)
            elif ev and ev[0][0] + span < wm:
                w = _close_window(cr, g)
                if w:
                    fired.append((cr, key, w))
            if g.open is not None and g.open + span <= wm:
                g.open = None  # every future event comes a full timespan later
            due = cr.due(g)
            if due is None:
                del groups[key]
            else:
                heapq.heappush(timers, (due, key))

    @staticmethod
    def _close_all(cr: _Corr, fired: list) -> None:
        if not cr.eager:
            for key, g in cr.groups.items():
                if g.ev:
                    w = _close_window(cr, g)
                    if w:
                        fired.append((cr, key, w))
        cr.groups.clear()
        cr.timers.clear()

    # ---------------------------------------------------------------- alerts

    def _build_alerts(self, fired: list[tuple[_Corr, str, list[Rec]]]) -> list[dict]:
        if not fired:
            return []
        by_corr: dict[int, list[int]] = {}
        for i, (cr, _, _) in enumerate(fired):
            by_corr.setdefault(id(cr), []).append(i)
        out: list[dict | None] = [None] * len(fired)
        for ii in by_corr.values():
            cr = fired[ii[0]][0]
            cols = _stored_columns(cr, [r for i in ii for r in fired[i][2]])
            off = 0
            for i in ii:
                _, key, w = fired[i]
                out[i] = self._alert(cr, key, w, {k: v[off:off + len(w)] for k, v in cols.items()})
                off += len(w)
        return out  # type: ignore[return-value]

    def _alert(self, cr: _Corr, group: str, evs: list[Rec], cols: dict[str, list]) -> dict:
        """The alert of window ``evs``; ``cols``: the stored columns (eid, alert-copy fields) of its events."""
        c = cr.spec
        self.alerts_emitted += 1
        start, end = evs[0][0], evs[-1][0]
        gvals = json.loads(group)
        eids = cols["eid"][:MAX_EVENT_IDS]
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
            "event.ids": eids,
            "taishi.group": group,
        }
        for f in ALERT_COPY_FIELDS:
            if f in gvals:
                v = gvals[f]
            else:
                cnt = Counter(cols[f]) if f in cols else Counter()
                cnt.pop(None, None)
                if cnt:
                    best = max(cnt.values())
                    tied = [x for x, k in cnt.items() if k == best]
                    # the most common value; ties: the smallest JSON text
                    v = tied[0] if len(tied) == 1 else min(tied, key=_json_sort_key(tied))
                else:
                    v = None
            row[f] = v if not isinstance(v, list) else (v[0] if v else None)
        if c.type == "value_count":
            distinct = len({r[1] for r in evs if r[1] is not None})
            row["message"] = f"{c.title}: {distinct} distinct {c.field} in {len(evs)} events"
        elif c.type in TEMPORAL_TYPES:
            m = cr.metric_of(evs)
            n = len(cr.stage_bits) if c.type == "temporal_ordered" else len(cr.rule_bits)
            how = "in order " if c.type == "temporal_ordered" else ""
            row["message"] = f"{c.title}: {m:g} of {n} rules matched {how}in {len(evs)} events"
        elif c.type in NUMERIC_TYPES:
            m = cr.metric_of(evs)
            what = {"value_sum": "sum", "value_avg": "average"}.get(c.type) or f"percentile {c.percentile:g}"
            row["message"] = f"{c.title}: {what} of {c.field} = {m:g} over {len(evs)} events"
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
        """The whole state as JSON (column-wise); pending chunks are serialised once each."""
        head = json.dumps({
            "version": SNAPSHOT_VERSION,
            "allowed_lateness_s": self.allowed_lateness_s,
            "watermark_us": self.watermark_us,
            "max_ts_us": self.max_ts_us,
            "late_events": self.late_events,
            "untimed_events": self.untimed_events,
            "alerts_emitted": self.alerts_emitted,
        }, separators=(",", ":"))
        parts = []
        with _gc_paused():
            for cr in self._c:
                pending = ",".join(ch.to_json() for ch in cr.pending)
                parts.append(f'{{"id":{json.dumps(cr.spec.id)},"pending":[{pending}],"groups":{self._groups_json(cr)}}}')
        return (head[:-1] + ',"correlations":[' + ",".join(parts) + "]}").encode()

    @staticmethod
    def _groups_json(cr: _Corr) -> str:
        keys: list[str] = []
        opens: list[int | None] = []
        lens: list[int] = []
        recs: list[Rec] = []
        for key, g in cr.groups.items():
            keys.append(key)
            opens.append(g.open)
            lens.append(len(g.ev))
            recs.extend(g.ev)
        d: dict[str, list] = {"key": keys, "open": opens, "n": lens, "ts": [r[0] for r in recs]}
        if cr.has_val:
            d["val"] = [r[1] for r in recs]
        d.update(_stored_columns(cr, recs))
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def restore(
        cls, correlations: Iterable[CorrelationSpec], data: bytes | str | dict, allowed_lateness_s: float | None = None
    ) -> "CorrelationEngine":
        """Engine continuing from :meth:`snapshot` (lateness from the snapshot unless given).

        ``data`` is the snapshot (bytes or text) or it already parsed; version 1
        snapshots (before one-alert-per-burst) are read too (no open bursts).
        """
        state = data if isinstance(data, dict) else json.loads(data)
        if allowed_lateness_s is None:
            allowed_lateness_s = state.get("allowed_lateness_s", 60)
        eng = cls(correlations, allowed_lateness_s)
        version = state.get("version")
        if version == 1:
            state = _upgrade_v1(state)
        elif version != SNAPSHOT_VERSION:
            raise ValueError(f"unknown correlation snapshot version {version}")
        eng.watermark_us = state["watermark_us"]
        eng.max_ts_us = state["max_ts_us"]
        eng.late_events = state["late_events"]
        eng.untimed_events = state["untimed_events"]
        eng.alerts_emitted = state["alerts_emitted"]
        by_id = {cr.spec.id: cr for cr in eng._c}
        with _gc_paused():
            for entry in state["correlations"]:
                cr = by_id.get(entry["id"])
                if cr is None:  # a correlation removed since the snapshot is dropped
                    continue
                for d in entry["pending"]:
                    cr.pending.append(cr.chunk_from_lists(d, sort=version == 1))
                _restore_groups(cr, entry["groups"])
        return eng

    def state_size(self) -> int:
        """Buffered events (pending + in windows): what bounds memory."""
        return sum(len(ch.ts) for cr in self._c for ch in cr.pending) + sum(
            len(g.ev) for cr in self._c for g in cr.groups.values()
        )

    @property
    def groups(self) -> dict[tuple[int, str], _Group]:
        """Live groups by (correlation index, group key) -- for inspection."""
        return {(ci, k): g for ci, cr in enumerate(self._c) for k, g in cr.groups.items()}


def _json_sort_key(values: list) -> Callable[[Any], str]:
    """A key giving ``json.dumps(x)`` for these values (C-speed for all-str / all-int)."""
    t = type(values[0])
    if all(type(x) is t for x in values):
        if t is str:
            return encode_basestring_ascii
        if t is int:
            return int.__repr__
    return lambda x: json.dumps(_jsonable(x))


def _rec_ts(r: Rec) -> int:
    return r[0]


def _close_window(cr: _Corr, g: _Group) -> list[Rec] | None:
    """Evaluate and empty g's window; the window's records if the condition held (g's burst opens)."""
    ev = g.ev
    m = cr.metric_of(ev) if cr.generic else (len(g.vals) if cr.vc else len(ev))
    g.ev = []
    if g.vals is not None:
        g.vals.clear()
    if m is not None and cr.holds(m):
        g.open = ev[-1][0]
        return ev
    return None


def _evict(ev: list[Rec], vals: dict[str, int] | None, lo: int) -> None:
    """Drop the window's records older than ``lo`` (and their values' counts)."""
    k = 1
    n = len(ev)
    while k < n and ev[k][0] < lo:
        k += 1
    if type(vals) is dict:
        for r in ev[:k]:
            v = r[1]
            if v is not None:
                c = vals[v] - 1
                if c:
                    vals[v] = c
                else:
                    del vals[v]
    elif vals is not None:  # a correlation_metrics state
        for r in ev[:k]:
            if r[1] is not None:
                vals.remove(r[0], r[1])
    del ev[:k]


def _stored_columns(cr: _Corr, recs: list[Rec]) -> dict[str, list]:
    """Event id and alert-copy fields of ``recs``, as lists aligned with them (one take per rows)."""
    names = ["eid", *cr.attrs]
    if not recs:
        return {n: [] for n in names}
    idx = np.fromiter((r[3] for r in recs), np.int64, len(recs))
    first = recs[0][2]
    if all(r[2] is first for r in recs):
        t = first.table.select(names).take(pa.array(idx))
    else:
        where: dict[int, list[int]] = {}
        rows: dict[int, _Rows] = {}
        for p, r in enumerate(recs):
            k = id(r[2])
            if k not in rows:
                rows[k] = r[2]
                where[k] = []
            where[k].append(p)
        order = np.concatenate([np.asarray(ps, np.int64) for ps in where.values()])
        t = pa.concat_tables([rows[k].table.select(names).take(pa.array(idx[ps])) for k, ps in where.items()])
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        t = t.take(pa.array(inv))
    return {n: t.column(n).to_pylist() for n in names}


def _restore_groups(cr: _Corr, d: dict[str, list]) -> None:
    n = len(d["ts"])
    cols = {"eid": pa.array(d["eid"], pa.string())}
    for f in cr.attrs:
        typ = EVENT_FIELDS.get(f, pa.string())
        cols[f] = pa.array(d[f], typ) if f in d else pa.nulls(n, typ)
    rows = _Rows(pa.table(cols))
    vals = d.get("val") if cr.has_val else None
    stateful = cr.generic and cr.eager
    i = 0
    for key, o, k in zip(d["key"], d["open"], d["n"]):
        g = _Group(cr.vc, cr.new_state() if stateful else None)
        g.open = o
        for j in range(i, i + k):
            v = vals[j] if vals is not None else None
            g.ev.append((d["ts"][j], v, rows, j))
            if v is not None:
                if cr.vc:
                    g.vals[v] = g.vals.get(v, 0) + 1
                elif stateful:  # the state is a function of the window's records: replay them
                    g.vals.add(d["ts"][j], v)
        i += k
        due = cr.due(g)
        if due is not None:
            cr.groups[key] = g
            heapq.heappush(cr.timers, (due, key))


def _upgrade_v1(state: dict) -> dict:
    """A version 1 snapshot (a dict per event) in the version 2 layout."""
    corrs: dict[str, dict] = {}

    def entry(cid: str) -> dict:
        if cid not in corrs:
            corrs[cid] = {"id": cid, "pending": [{"ts": [], "eid": [], "key": [], "val": [], **{f: [] for f in ALERT_COPY_FIELDS}}],
                          "groups": {"key": [], "open": [], "n": [], "ts": [], "eid": [], "val": [],
                                     **{f: [] for f in ALERT_COPY_FIELDS}}}
        return corrs[cid]

    def add(d: dict, group: str | None, rec: list) -> None:
        t, eid, value, attrs = rec
        d["ts"].append(t)
        d["eid"].append(eid or "")
        d["val"].append(value)
        if group is not None:
            d["key"].append(group)
        for f, a in zip(ALERT_COPY_FIELDS, attrs):
            d[f].append(a[0] if isinstance(a, list) and a else (None if isinstance(a, list) else a))

    for _t, _e, cid, g, rec in state["pending"]:
        add(entry(cid)["pending"][0], g, rec)
    for cid, g, evs in state["groups"]:
        d = entry(cid)["groups"]
        d["key"].append(g)
        d["open"].append(None)
        d["n"].append(len(evs))
        for rec in evs:
            add(d, None, rec)
    return {**state, "version": SNAPSHOT_VERSION, "correlations": list(corrs.values())}
