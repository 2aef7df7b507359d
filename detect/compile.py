"""Compile a pySigma condition tree into a vectorised predicate over an Arrow batch.

A rule is compiled ONCE into a small tree of :class:`Node` objects. Evaluating
it on a batch gives a numpy bool mask (one entry per row). No per-row Python
runs on the hot path:

* Every string-like comparison is evaluated on the *dictionary* (the unique
  values) of the column and mapped back to rows with a numpy take. The
  dictionary encoding, its lower-cased form and parsed IP addresses are cached
  per batch in :class:`BatchContext` and shared by all rules; leaf results are
  memoised per batch too (many rules test ``event.dataset == 'zeek.conn'``).
* List-typed columns (``related.ip``, ``dns.answers.data`` ...) are flattened;
  a row matches if any element matches.
* A field the batch lacks is null: ``field: value`` is false, ``field: null``
  is true, ``field|exists: false`` is true.

Case: plain strings and wildcards are case-insensitive (Sigma default),
``|cased`` is case-sensitive, ``|re`` is case-sensitive unless ``|i``.
Regular expressions run on RE2 (Arrow): look-around and back-references are
rejected at compile time as unsupported.

Time parts (``|minute |hour |day |week |month |year``) read the field as a UTC
time: a timestamp column, ISO 8601 text (naive = UTC) or epoch seconds; ``week``
is the ISO 8601 week. ``|expand`` placeholders are resolved before compiling
(detect/placeholders.yaml, see :mod:`detect.sigma`). ``|fieldref`` compares
two fields of the same event, case-insensitively: equal, or with
``|startswith``/``|endswith``/``|contains`` the other field's value as prefix,
suffix or infix; with a list field any element may match.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import orjson as _orjson
import pyarrow as pa
import pyarrow.compute as pc

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
    TimestampPart,
)

#: fields a keyword (field-less) detection searches
KEYWORD_FIELDS = ("message", "event.original")

#: modifiers the evaluator implements (pySigma names)
SUPPORTED_MODIFIERS = frozenset(
    {
        "contains", "startswith", "endswith", "all", "re", "i", "ignorecase", "m",
        "multiline", "s", "dotall", "cidr", "gt", "gte", "lt", "lte", "neq", "exists",
        "cased", "base64", "base64offset", "wide", "utf16", "utf16le", "utf16be",
        "windash", "fieldref", "expand", "minute", "hour", "day", "week", "month", "year",
    }
)


class Unsupported(Exception):
    """The rule uses something this evaluator does not implement."""


# --------------------------------------------------------------------------- batch


class StrView:
    """A column seen as strings: dictionary of unique values + per-element index.

    For list columns the elements are the flattened list items and ``parents``
    maps each element to its row.
    """

    def __init__(self, values: pa.Array, parents: np.ndarray | None, n: int):
        if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            if pa.types.is_timestamp(values.type):
                values = pc.strftime(values, format="%Y-%m-%dT%H:%M:%S.%fZ")
            else:
                values = values.cast(pa.string())
        enc = pc.dictionary_encode(values)
        self.dict: pa.Array = enc.dictionary
        self.idx: np.ndarray = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)
        self.parents = parents
        self.n = n
        self._lower: pa.Array | None = None
        self._ipv4: tuple[np.ndarray, np.ndarray] | None = None
        self._ipv6: dict[int, Any] | None = None
        self._floats: np.ndarray | None = None

    @property
    def lower(self) -> pa.Array:
        if self._lower is None:
            self._lower = pc.utf8_lower(self.dict)
        return self._lower

    @property
    def ipv4(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 address, valid) per dictionary entry, parsed vectorised."""
        if self._ipv4 is None:
            d = self.dict
            ok = _np_bool(pc.match_substring_regex(d, _V4_RE))
            addr = np.zeros(len(d), dtype=np.uint32)
            if ok.any():
                sel = pc.filter(d, pa.array(ok))
                parts = pc.list_flatten(pc.split_pattern(pc.utf8_trim_whitespace(sel), "."))
                octets = parts.cast(pa.int64()).to_numpy().reshape(-1, 4)
                good = (octets <= 255).all(axis=1)
                vals = (octets[:, 0] << 24) | (octets[:, 1] << 16) | (octets[:, 2] << 8) | octets[:, 3]
                idx = np.flatnonzero(ok)
                addr[idx] = vals.astype(np.uint32)
                ok[idx[~good]] = False
            self._ipv4 = (addr, ok)
        return self._ipv4

    @property
    def ipv6(self) -> dict[int, Any]:
        """{dictionary index: ip address} for entries with ':' (IPv6; IPv4-mapped ones as IPv4)."""
        if self._ipv6 is None:
            out: dict[int, Any] = {}
            has_colon = np.flatnonzero(_np_bool(pc.match_substring(self.dict, ":")))
            for i in has_colon:
                s = self.dict[int(i)].as_py()
                try:
                    ip = ipaddress.ip_address(s.strip().split("%")[0])
                    out[int(i)] = (ip.ipv4_mapped or ip) if ip.version == 6 else ip
                except ValueError:
                    pass
            self._ipv6 = out
        return self._ipv6

    @property
    def floats(self) -> np.ndarray:
        if self._floats is None:
            out = np.full(len(self.dict), np.nan)
            for i, s in enumerate(self.dict.to_pylist()):
                try:
                    out[i] = float(s)
                except (TypeError, ValueError):
                    pass
            self._floats = out
        return self._floats

    def rows(self, on_dict: np.ndarray) -> np.ndarray:
        """Row mask from a mask over the dictionary entries (null elements -> False)."""
        elem = np.append(np.asarray(on_dict, dtype=bool), False)[self.idx]
        if self.parents is None:
            return elem
        mask = np.zeros(self.n, dtype=bool)
        mask[self.parents[elem]] = True
        return mask


def _np_bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


EXTRA = "taishi.extra"


def _lookup(d: Any, name: str) -> Any:
    """``d[name]``, or the nested value along ``name``'s dotted path."""
    if not isinstance(d, dict):
        return None
    if name in d:
        return d[name]
    cur: Any = d
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class BatchContext:
    """Per-batch caches shared by every rule evaluated on ``table``."""

    def __init__(self, table: pa.Table, rows: pa.Array | None = None):
        """Over all of ``table``, or (``rows``) over those rows only: columns are
        then taken lazily, just the ones a rule reads."""
        self.table = table
        self._rows = rows
        self.n = table.num_rows if rows is None else len(rows)
        self._cols: dict[str, Any] = {}
        self._views: dict[str, StrView | None] = {}
        self._memo: dict[Any, np.ndarray] = {}
        self._extra: list | None = None
        self._subs: dict[Any, tuple["BatchContext", np.ndarray]] = {}
        self.false = np.zeros(self.n, dtype=bool)
        self.true = np.ones(self.n, dtype=bool)

    def subset(self, key: Any, mask: np.ndarray) -> tuple["BatchContext", np.ndarray]:
        """A context over the rows where ``mask`` holds (cached by ``key``), and their indices."""
        hit = self._subs.get(key)
        if hit is None:
            rows = np.flatnonzero(mask)
            take = pa.array(rows, pa.int64())
            if self._rows is not None:  # a subset of a subset: indices into the original table
                take = self._rows.take(take)
            hit = self._subs[key] = (BatchContext(self.table, rows=take), rows)
        return hit

    def column(self, name: str) -> pa.Array | None:
        if name not in self._cols:
            if name in self.table.column_names:
                col = self.table.column(name)
                if self._rows is not None:
                    col = col.take(self._rows)
                self._cols[name] = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            else:
                self._cols[name] = self._extra_column(name)
        return self._cols[name]

    def _extra_column(self, name: str) -> pa.Array | None:
        """A field the schema has no column for, taken from ``taishi.extra``.

        Parsers keep what has no ECS home in that JSON object, so rules for
        sources without an ECS mapping (``taishi ingest --logsource ...``) see
        fields as named in the event, flat (``"Image"``) or nested
        (``"winlog.event_id"`` into ``{"winlog": {"event_id": ...}}``). The
        JSON is parsed once per batch, and only when a rule asks for such a field.
        """
        if self._extra is None:
            col = self.table.column(EXTRA) if EXTRA in self.table.column_names else None
            if col is not None and self._rows is not None:
                col = col.take(self._rows)
            if col is None or col.null_count == len(col):
                self._extra = []
            else:
                self._extra = [_orjson.loads(x) if x else None for x in col.to_pylist()]
        if not self._extra:
            return None
        vals = [_lookup(d, name) if d else None for d in self._extra]
        if all(v is None for v in vals):
            return None
        try:
            arr = pa.array(vals)
            if pa.types.is_struct(arr.type) or pa.types.is_null(arr.type):
                raise pa.ArrowInvalid("not a scalar field")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else v if isinstance(v, str) else _orjson.dumps(v).decode() for v in vals],
                           pa.string())
        return arr

    def is_list(self, name: str) -> bool:
        col = self.column(name)
        return col is not None and (pa.types.is_list(col.type) or pa.types.is_large_list(col.type))

    def view(self, name: str) -> StrView | None:
        if name not in self._views:
            col = self.column(name)
            if col is None:
                self._views[name] = None
            elif self.is_list(name):
                parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
                self._views[name] = StrView(pc.list_flatten(col), parents, self.n)
            else:
                self._views[name] = StrView(col, None, self.n)
        return self._views[name]

    def null_mask(self, name: str) -> np.ndarray:
        col = self.column(name)
        if col is None:
            return self.true
        if self.is_list(name):
            v = self.view(name)
            assert v is not None
            return ~v.rows(np.ones(len(v.dict), dtype=bool))
        return _np_bool(pc.is_null(col))

    def memo(self, key: Any, fn: Callable[[], np.ndarray]) -> np.ndarray:
        r = self._memo.get(key)
        if r is None:
            r = fn()
            self._memo[key] = r
        return r


# --------------------------------------------------------------------------- nodes


@dataclass
class Node:
    op: str  # "and" | "or" | "not" | "leaf" | "const"
    children: list["Node"] = field(default_factory=list)
    key: Any = None
    fn: Callable[[BatchContext], np.ndarray] | None = None
    fields: frozenset[str] = frozenset()
    # set on leaves computed over the column's dictionary: (field, fn(StrView) -> bool per entry)
    dict_pred: tuple[str, Callable[["StrView"], np.ndarray]] | None = None

    def eval(self, ctx: BatchContext) -> np.ndarray:
        if self.op == "leaf":
            assert self.fn is not None
            return ctx.memo(self.key, lambda: self.fn(ctx))
        if self.op == "and":
            out = None
            for c in self.children:
                m = c.eval(ctx)
                out = m if out is None else (out & m)
                if not out.any():
                    return ctx.false
            return ctx.true if out is None else out
        if self.op == "or":
            out = None
            for c in self.children:
                m = c.eval(ctx)
                out = m if out is None else (out | m)
            return ctx.false if out is None else out
        if self.op == "not":
            return ~self.children[0].eval(ctx)
        if self.op == "const":
            return ctx.true if self.key else ctx.false
        raise AssertionError(self.op)

    def all_fields(self) -> set[str]:
        s = set(self.fields)
        for c in self.children:
            s |= c.all_fields()
        return s


def leaf(key: Any, fn: Callable[[BatchContext], np.ndarray], fields: set[str] | None = None) -> Node:
    return Node("leaf", key=key, fn=fn, fields=frozenset(fields or ()))


def dict_leaf(key: Any, fld: str, dfn: Callable[[StrView], np.ndarray]) -> Node:
    """Leaf evaluated on the unique values of ``fld`` (memoised per batch), mapped to rows."""

    def on_dict(ctx: BatchContext, v: StrView) -> np.ndarray:
        return ctx.memo(("dict",) + tuple(key), lambda: np.asarray(dfn(v), dtype=bool))

    def run(ctx: BatchContext) -> np.ndarray:
        v = ctx.view(fld)
        if v is None:
            return ctx.false
        return v.rows(on_dict(ctx, v))

    n = leaf(key, run, {fld})
    n.dict_pred = (fld, dfn)
    n._on_dict = on_dict  # type: ignore[attr-defined]
    return n


def merge_dict_or(fld: str, nodes: list[Node]) -> Node:
    """OR of dictionary leaves on one field, computed in dictionary space: one row mapping."""
    key = ("dictor", fld, tuple(n.key for n in nodes))

    def run(ctx: BatchContext) -> np.ndarray:
        v = ctx.view(fld)
        if v is None:
            return ctx.false
        acc = np.zeros(len(v.dict), dtype=bool)
        for n in nodes:
            acc |= n._on_dict(ctx, v)  # type: ignore[attr-defined]
        return v.rows(acc)

    return leaf(key, run, {fld})


# --------------------------------------------------------------------------- string matching

_V4_RE = r"^\s*\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\s*$"
_RE2_SPECIAL = set("\\.^$|?*+()[]{}")


def _re_escape(s: str) -> str:
    return "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in s)


def string_matcher(s: SigmaString, cased: bool) -> tuple[Any, Callable[[pa.Array], pa.Array], bool]:
    """(key, fn over a string array -> bool array, cased) for a Sigma string with wildcards."""
    parts: list = []
    for p in s.s:
        if isinstance(p, Placeholder):
            raise Unsupported(f"placeholder %{p.name}% (|expand) has no values in detect/placeholders.yaml")
        parts.append(p)
    norm = (lambda x: x) if cased else (lambda x: x.lower())
    parts = [norm(p) if isinstance(p, str) else p for p in parts]
    M, S = SpecialChars.WILDCARD_MULTI, SpecialChars.WILDCARD_SINGLE
    strs = [p for p in parts if isinstance(p, str)]
    if not any(isinstance(p, SpecialChars) for p in parts):
        val = "".join(strs)
        return ("eq", val), lambda a: pc.equal(a, val), cased
    if parts == [M]:
        return ("any",), lambda a: pc.is_valid(a), cased
    if len(parts) == 3 and parts[0] == M and parts[2] == M and isinstance(parts[1], str):
        val = parts[1]
        return ("contains", val), lambda a: pc.match_substring(a, val), cased
    if len(parts) == 2 and parts[1] == M and isinstance(parts[0], str):
        val = parts[0]
        return ("startswith", val), lambda a: pc.starts_with(a, val), cased
    if len(parts) == 2 and parts[0] == M and isinstance(parts[1], str):
        val = parts[1]
        return ("endswith", val), lambda a: pc.ends_with(a, val), cased
    rx = "(?s)^" + "".join(
        ".*" if p == M else "." if p == S else _re_escape(p) for p in parts
    ) + "$"
    return ("regex", rx), lambda a: pc.match_substring_regex(a, rx), cased


def _str_leaf(fld: str, s: SigmaString, cased: bool) -> Node:
    key, fn, cased = string_matcher(s, cased)
    return dict_leaf(("str", fld, cased, key), fld, lambda v: _np_bool(fn(v.dict if cased else v.lower)))


def _in_leaf(fld: str, values: list[str]) -> Node:
    """Case-insensitive equality with any of ``values`` (OR of plain strings)."""
    vals = sorted({v.lower() for v in values})
    value_set = pa.array(vals, pa.string())
    return dict_leaf(("in", fld, tuple(vals)), fld, lambda v: _np_bool(pc.is_in(v.lower, value_set=value_set)))


def _regex_leaf(fld: str, r: SigmaRegularExpression) -> Node:
    rx = r.regexp.to_plain() if isinstance(r.regexp, SigmaString) else str(r.regexp)
    flags = ""
    if SigmaRegularExpressionFlag.IGNORECASE in r.flags:
        flags += "i"
    if SigmaRegularExpressionFlag.MULTILINE in r.flags:
        flags += "m"
    if SigmaRegularExpressionFlag.DOTALL in r.flags:
        flags += "s"
    pattern = (f"(?{flags})" if flags else "") + rx
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise Unsupported(f"regular expression {rx!r} is not valid RE2 (look-around/back-references?): {e}")

    return dict_leaf(("re", fld, pattern), fld, lambda v: _np_bool(pc.match_substring_regex(v.dict, pattern)))


def _cidr_leaf(fld: str, c: SigmaCIDRExpression) -> Node:
    net = c.network

    def on_dict(v: StrView) -> np.ndarray:
        if net.version == 4:
            addr, ok = v.ipv4
            mask = np.uint32(int(net.netmask))
            on = ok & ((addr & mask) == np.uint32(int(net.network_address)))
            # IPv4-mapped IPv6 (::ffff:10.0.0.1) also counts
            for i, ip in v.ipv6.items():
                if ip.version == 4 and ip in net:
                    on[i] = True
        else:
            on = np.zeros(len(v.dict), dtype=bool)
            for i, ip in v.ipv6.items():
                if ip.version == 6 and ip in net:
                    on[i] = True
        return on

    return dict_leaf(("cidr", fld, str(net)), fld, on_dict)


def _num_leaf(fld: str, op: str, number: float) -> Node:
    """Numeric comparison; op in lt/lte/gt/gte/eq/neq. Strings are parsed per unique value."""
    fn = {
        "lt": np.less, "lte": np.less_equal, "gt": np.greater, "gte": np.greater_equal,
        "eq": np.equal, "neq": np.not_equal,
    }[op]

    def run(ctx: BatchContext) -> np.ndarray:
        col = ctx.column(fld)
        if col is None:
            return ctx.false
        typ = col.type
        if not ctx.is_list(fld) and (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            vals = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                res = fn(vals, number)
            return np.asarray(res & ~np.isnan(vals), dtype=bool)
        v = ctx.view(fld)
        assert v is not None
        fl = v.floats
        with np.errstate(invalid="ignore"):
            on = fn(fl, number) & ~np.isnan(fl)
        return v.rows(on)

    return leaf(("num", fld, op, number), run, {fld})


_TIME_PARTS = {
    TimestampPart.MINUTE: ("minute", pc.minute),
    TimestampPart.HOUR: ("hour", pc.hour),
    TimestampPart.DAY: ("day", pc.day),
    TimestampPart.WEEK: ("week", pc.iso_week),
    TimestampPart.MONTH: ("month", pc.month),
    TimestampPart.YEAR: ("year", pc.year),
}


def _parse_time(s: str | None) -> datetime | None:
    """ISO 8601 text (``Z`` or offset; naive = UTC) or epoch seconds -> aware UTC datetime."""
    if s is None:
        return None
    t = s.strip()
    try:
        if re.fullmatch(r"-?\d+(\.\d+)?", t):
            return datetime.fromtimestamp(float(t), tz=timezone.utc)
        d = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
    except (ValueError, OverflowError, OSError):
        return None
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


def _time_part_leaf(fld: str, v: SigmaTimestampPart) -> Node:
    """``field|hour: 3`` ... the field read as a UTC timestamp (timestamp column, ISO 8601 text or
    epoch seconds); ``week`` is the ISO 8601 week number."""
    name, fn = _TIME_PARTS[v.timestamp_part]
    want = int(v.number)

    def per_value(d: datetime) -> int:
        if name == "week":
            return d.isocalendar()[1]
        return getattr(d, name)

    def run(ctx: BatchContext) -> np.ndarray:
        col = ctx.column(fld)
        if col is None:
            return ctx.false
        if pa.types.is_timestamp(col.type):
            if col.type.tz is not None and col.type.tz.upper() not in ("UTC", "Z", "+00:00"):
                col = col.cast(pa.timestamp(col.type.unit, "UTC"))
            return _np_bool(pc.equal(fn(col), want))
        v = ctx.view(fld)
        assert v is not None
        on = np.zeros(len(v.dict), dtype=bool)
        for i, text in enumerate(v.dict.to_pylist()):
            d = _parse_time(text)
            on[i] = d is not None and per_value(d) == want
        return v.rows(on)

    return leaf(("timepart", fld, name, want), run, {fld})


def _null_leaf(fld: str) -> Node:
    return leaf(("null", fld), lambda ctx: ctx.null_mask(fld), {fld})


def _exists_leaf(fld: str, exists: bool) -> Node:
    n = _null_leaf(fld)
    return n if not exists else Node("not", [n])


def _affix_compare(a: pa.Array, b: pa.Array, starts: bool, ends: bool) -> np.ndarray:
    """Row-wise, case-insensitive: ``a`` starts with / ends with / contains ``b`` (nulls: False).

    Element-wise over two columns, so numpy's vectorised string functions, not
    Arrow's (whose patterns are one scalar per call)."""
    la = pc.utf8_lower(a.cast(pa.string()))
    lb = pc.utf8_lower(b.cast(pa.string()))
    valid = _np_bool(pc.and_(pc.is_valid(la), pc.is_valid(lb)))
    xa = np.asarray(pc.fill_null(la, "").to_numpy(zero_copy_only=False), dtype=str)
    xb = np.asarray(pc.fill_null(lb, "").to_numpy(zero_copy_only=False), dtype=str)
    if starts and ends:
        hit = np.char.find(xa, xb) >= 0
    elif starts:
        hit = np.char.startswith(xa, xb)
    else:
        hit = np.char.endswith(xa, xb)
    return valid & hit


def _fieldref_leaf(fld: str, ref: SigmaFieldReference) -> Node:
    other = ref.field
    affix = ref.starts_with or ref.ends_with  # |fieldref|startswith, |endswith, |contains

    def compare(a: pa.Array, b: pa.Array) -> np.ndarray:
        if affix:
            return _affix_compare(a, b, ref.starts_with, ref.ends_with)
        return _np_bool(pc.equal(pc.utf8_lower(a.cast(pa.string())), pc.utf8_lower(b.cast(pa.string()))))

    def run(ctx: BatchContext) -> np.ndarray:
        a, b = ctx.column(fld), ctx.column(other)
        if a is None or b is None:
            return ctx.false
        la_list, lb_list = ctx.is_list(fld), ctx.is_list(other)
        if la_list and lb_list:
            return ctx.false  # element pairs of two lists: not defined by Sigma, never matches
        if la_list or lb_list:
            # a list on one side: any element equal to the other field's value
            lst, scalar = (a, b) if la_list else (b, a)
            parents = pc.list_parent_indices(lst)
            elems = pc.list_flatten(lst)
            other_vals = pc.take(scalar, parents)
            hit = compare(elems, other_vals) if la_list else compare(other_vals, elems)
            mask = np.zeros(ctx.n, dtype=bool)
            mask[parents.to_numpy(zero_copy_only=False)[hit]] = True
            return mask
        return compare(a, b)

    return leaf(("fieldref", fld, other, ref.starts_with, ref.ends_with), run, {fld, other})


def value_node(fld: str | None, value: Any) -> Node:
    """Node for one (field, value) leaf of the condition tree. fld None = keyword."""
    if fld is None:
        return _keyword_node(value)
    if isinstance(value, SigmaExpansion):
        return _merge_or([value_node(fld, v) for v in value.values])
    if isinstance(value, SigmaNull):
        return _null_leaf(fld)
    if isinstance(value, SigmaExists):
        return _exists_leaf(fld, bool(value.exists))
    if isinstance(value, SigmaRegularExpression):
        return _regex_leaf(fld, value)
    if isinstance(value, SigmaCIDRExpression):
        return _cidr_leaf(fld, value)
    if isinstance(value, SigmaCompareExpression):
        op = {
            CompareOperators.LT: "lt", CompareOperators.LTE: "lte",
            CompareOperators.GT: "gt", CompareOperators.GTE: "gte",
        }.get(value.op)
        if op is None:
            if getattr(CompareOperators, "NEQ", None) is not None and value.op == CompareOperators.NEQ:
                op = "neq"
            else:
                raise Unsupported(f"comparison operator {value.op} is not supported")
        return _num_leaf(fld, op, float(value.number.number))
    if isinstance(value, SigmaFieldReference):
        return _fieldref_leaf(fld, value)
    if isinstance(value, SigmaString):
        return _str_leaf(fld, value, cased=isinstance(value, SigmaCasedString))
    if isinstance(value, SigmaBool):
        return _str_leaf(fld, literal("true" if value.boolean else "false"), cased=False)
    if isinstance(value, SigmaTimestampPart):
        return _time_part_leaf(fld, value)
    if type(value) is SigmaNumber:
        return _number_eq_node(fld, value.number)
    raise Unsupported(f"value type {type(value).__name__} ({value}) is not supported")


def _number_eq_node(fld: str, number: int | float) -> Node:
    """``field: 22`` -- numeric equality on numeric columns, text equality on strings."""
    text = str(number)
    as_num = _num_leaf(fld, "eq", float(number))
    as_str = _str_leaf(fld, literal(text), cased=False)

    def run(ctx: BatchContext) -> np.ndarray:
        col = ctx.column(fld)
        if col is None:
            return ctx.false
        if not ctx.is_list(fld) and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            return as_num.eval(ctx)
        return as_str.eval(ctx)

    return leaf(("numeq", fld, text), run, {fld})


def _keyword_node(value: Any) -> Node:
    """Field-less value: substring search over message and event.original."""
    if isinstance(value, SigmaExpansion):
        return _merge_or([_keyword_node(v) for v in value.values])
    if isinstance(value, SigmaRegularExpression):
        return Node("or", [_regex_leaf(f, value) for f in KEYWORD_FIELDS])
    if isinstance(value, SigmaNumber) and not isinstance(value, SigmaString):
        value = SigmaString(str(value.number))
    if not isinstance(value, SigmaString):
        raise Unsupported(f"keyword value of type {type(value).__name__} is not supported")
    parts = list(value.s)
    M = SpecialChars.WILDCARD_MULTI
    if not parts or parts[0] != M:
        parts.insert(0, M)
    if parts[-1] != M:
        parts.append(M)
    s = SigmaString()
    s.s = tuple(parts)
    cased = isinstance(value, SigmaCasedString)
    return _merge_or([_str_leaf(f, s, cased) for f in KEYWORD_FIELDS])


# --------------------------------------------------------------------------- tree


def _plain_string(expr: Any) -> str | None:
    """The text of a plain (no wildcard, not cased) string leaf, else None."""
    if not isinstance(expr, ConditionFieldEqualsValueExpression):
        return None
    v = expr.value
    if type(v) is not SigmaString:
        return None
    if any(not isinstance(p, str) for p in v.s):
        return None
    return "".join(v.s)


def compile_condition(tree: Any) -> Node:
    """pySigma postprocessed condition tree -> :class:`Node`."""
    if isinstance(tree, ConditionAND):
        return Node("and", [compile_condition(a) for a in tree.args])
    if isinstance(tree, ConditionOR):
        # OR of plain equalities on one field -> one is_in over the dictionary
        by_field: dict[str, list[str]] = {}
        rest = []
        for a in tree.args:
            s = _plain_string(a)
            if s is not None:
                by_field.setdefault(a.field, []).append(s)
            else:
                rest.append(a)
        children = [
            _in_leaf(f, vals) if len(vals) > 1 else _str_leaf(f, literal(vals[0]), False)
            for f, vals in by_field.items()
        ]
        children += [compile_condition(a) for a in rest]
        return _merge_or(children)
    if isinstance(tree, ConditionNOT):
        return Node("not", [compile_condition(tree.args[0])])
    if isinstance(tree, ConditionFieldEqualsValueExpression):
        return value_node(tree.field, tree.value)
    if isinstance(tree, ConditionValueExpression):
        return value_node(None, tree.value)
    if tree is None:
        raise Unsupported("empty condition")
    raise Unsupported(f"condition element {type(tree).__name__} is not supported")


def _merge_or(children: list[Node]) -> Node:
    """Fold dictionary leaves on the same field into one (fewer row mappings)."""
    flat: list[Node] = []
    stack = list(reversed(children))
    while stack:
        c = stack.pop()
        if c.op == "or":
            stack.extend(reversed(c.children))
        else:
            flat.append(c)
    by: dict[str, list[Node]] = {}
    other: list[Node] = []
    for c in flat:
        if c.op == "leaf" and c.dict_pred is not None:
            by.setdefault(c.dict_pred[0], []).append(c)
        else:
            other.append(c)
    merged = [ns[0] if len(ns) == 1 else merge_dict_or(f, ns) for f, ns in by.items()]
    out = merged + other
    return out[0] if len(out) == 1 else Node("or", out)


def literal(text: str) -> SigmaString:
    """A SigmaString that is exactly ``text`` (no wildcards)."""
    s = SigmaString()
    s.s = (text,) if text else ()
    return s
