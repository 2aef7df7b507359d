"""Parsers: raw record batches -> ECS event batches, bad records -> dead letters.

A raw batch (``RAW_SCHEMA``) carries one record per row: the input it came
from (``taishi.source``, a stable name such as a file's base name), its offset
in that input, the file path when there is one, a framing ``hint`` and the raw
text. For Zeek TSV the hint is the file's header as JSON (``#path``,
``#fields``, ``#types``, separators), so a data line can be parsed on its own
anywhere, on a Spark executor as well as here.

Every parser is a function ``parse(raw: pa.Table) -> ParseResult`` registered
by format name in ``PARSERS``. It never raises on bad input: a record it cannot
read becomes a dead-letter row with the reason.

Registered formats: ``zeek``, ``suricata``, ``syslog``, ``cef``, ``netflow``, ``json``
(and its alias ``jsonl``); call ``parse(fmt, raw)``. Records over
``MAX_RECORD_BYTES`` (1 MiB) and records framed with the ``invalid-utf8`` hint
are dead-lettered by every parser. The helpers below (dead letters, lenient row
-> column conversion, vectorised event ids) are shared by the parser modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

RAW_SCHEMA = pa.schema(
    [
        pa.field("taishi.source", pa.string()),
        pa.field("log.offset", pa.int64()),
        pa.field("log.file.path", pa.string()),
        pa.field("hint", pa.string()),
        pa.field("event.original", pa.string()),
    ]
)


@dataclass
class ParseResult:
    events: pa.Table  # taishi.schema.EVENT_SCHEMA
    deadletters: pa.Table  # taishi.schema.DEADLETTER_SCHEMA


Parser = Callable[[pa.Table], ParseResult]

# format name -> parser; filled in by the parser modules (see _register below),
# which are imported at the end of this module.
PARSERS: dict[str, Parser] = {}

# --------------------------------------------------------------------------
# Shared helpers for the parser modules (keep them import-light: the parser
# modules import from here, and this module imports them at the bottom).

from datetime import datetime as _datetime, timezone as _timezone
from typing import Any, Iterable, Mapping

import orjson as _orjson
import pyarrow.compute as _pc

import json as _json

from taishi.ids import deadletter_id as _deadletter_id, event_id as _event_id
from taishi.schema import (
    DEADLETTER_SCHEMA,
    EVENT_FIELDS,
    EVENT_SCHEMA,
    STRS as _STRS,
    TS as _TS,
    conform as _conform,
    deadletters_table as _deadletters_table,
)

MAX_RECORD_BYTES = 1 << 20  # a record larger than this is dead-lettered
DEADLETTER_KEEP_BYTES = 64 << 10  # an oversized original is kept truncated to this
INVALID_UTF8_HINT = "invalid-utf8"  # framing hint: the line had undecodable bytes


def _register(name: str) -> Callable[[Parser], Parser]:
    def deco(fn: Parser) -> Parser:
        PARSERS[name] = fn
        return fn

    return deco


SET_HINT = '{"set"'  # a hint that starts so carries fields to fill: {"set": {field: value}}


def set_hint(fields: Mapping[str, Any]) -> str:
    """A raw record hint asking the parse step to fill ``fields`` where the record left them empty.

    Collectors use it for what the wire told them and the text does not say
    (the sender's address as ``observer.ip``); ``taishi ingest --logsource``
    uses it to tag a file's events with a Sigma logsource.
    """
    unknown = set(fields) - EVENT_FIELDS.keys()
    if unknown:
        raise KeyError(f"{sorted(unknown)[0]!r} is not an event field")
    return _json.dumps({"set": dict(fields)}, separators=(",", ":"))


def parse(fmt: str, raw: pa.Table) -> ParseResult:
    """Parse a ``RAW_SCHEMA`` batch with the parser registered as ``fmt``,
    then apply the records' ``set`` hints (see :func:`set_hint`)."""
    try:
        parser = PARSERS[fmt]
    except KeyError:
        raise ValueError(f"no parser for format {fmt!r}; known: {sorted(PARSERS)}") from None
    res = parser(raw)
    return ParseResult(_apply_set_hints(raw, res.events), res.deadletters)


def _apply_set_hints(raw: pa.Table, events: pa.Table) -> pa.Table:
    hints = raw.column("hint")
    if events.num_rows == 0 or hints.null_count == len(hints):
        return events
    is_set = _pc.fill_null(_pc.starts_with(hints, SET_HINT), False)
    if not _pc.any(is_set).as_py():
        return events
    key = lambda t: _pc.binary_join_element_wise(  # noqa: E731 - (source, offset) identifies a record
        _pc.fill_null(t.column("taishi.source"), ""), _pc.cast(t.column("log.offset"), pa.string()), "\x1f"
    )
    raw_keys, ev_keys = key(raw), key(events)
    for hint in _pc.unique(hints.filter(is_set)).to_pylist():
        rows = _pc.is_in(ev_keys, value_set=raw_keys.filter(_pc.equal(hints, hint)))
        for name, value in _json.loads(hint)["set"].items():
            if name not in EVENT_FIELDS:
                continue
            i = events.schema.get_field_index(name)
            col = events.column(i)
            fill = _pc.and_(rows, _pc.is_null(col))
            events = events.set_column(i, name, _pc.if_else(fill, pa.scalar(value, col.type), col))
    return events


def now_utc() -> _datetime:
    return _datetime.now(_timezone.utc)


def deadletter(source: str, offset: int, original: str, reason: str) -> dict[str, Any]:
    """One dead-letter row (stage ``parse``); huge originals are truncated."""
    if len(original) > DEADLETTER_KEEP_BYTES and len(original.encode("utf-8", "replace")) > MAX_RECORD_BYTES:
        original = original[:DEADLETTER_KEEP_BYTES]
        reason += f" (original truncated to first {DEADLETTER_KEEP_BYTES // 1024} KiB)"
    return {
        "id": _deadletter_id(source, offset, "parse", original),
        "@timestamp": now_utc(),
        "taishi.source": source,
        "log.offset": offset,
        "stage": "parse",
        "reason": reason,
        "event.original": original,
    }


def precheck(source: str, offset: int, hint: str | None, original: str) -> str | None:
    """Reason a record must be dead-lettered before any parsing, else None."""
    if hint == INVALID_UTF8_HINT:
        return "invalid UTF-8 in record (undecodable bytes shown as U+FFFD)"
    if len(original) * 4 > MAX_RECORD_BYTES and len(original.encode("utf-8", "replace")) > MAX_RECORD_BYTES:
        return f"record exceeds {MAX_RECORD_BYTES // (1 << 20)} MiB"
    return None


def raw_rows(raw: pa.Table) -> Iterable[tuple[str, int, str | None, str | None, str]]:
    """(source, offset, path, hint, original) per raw row."""
    cols = [raw.column(n).to_pylist() for n in ("taishi.source", "log.offset", "log.file.path", "hint", "event.original")]
    return zip(*cols)


def json_error(exc: Exception) -> str:
    """Short reason for a JSON decode error."""
    msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return f"invalid JSON: {msg}"[:200]


def new_event(source: str, offset: int, path: str | None, original: str) -> dict[str, Any]:
    return {
        "event.id": _event_id(source, offset, original),
        "event.original": original,
        "taishi.source": source,
        "log.file.path": path,
        "log.offset": offset,
    }


def to_utc(value: Any) -> _datetime | None:
    """Epoch seconds (number or numeric string) or ISO-8601 text -> aware UTC datetime."""
    from taishi.schema import parse_time

    if value is None or value == "":
        return None
    if isinstance(value, _datetime):
        return value if value.tzinfo else value.replace(tzinfo=_timezone.utc)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return _datetime.fromtimestamp(float(value), tz=_timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and len(value) > 9 and value[4] == "-":
        try:  # fast path: python 3.11 reads ISO 8601 with Z / +hh:mm / +hhmm
            dt = _datetime.fromisoformat(value)
            return dt.replace(tzinfo=_timezone.utc) if dt.tzinfo is None else dt.astimezone(_timezone.utc)
        except ValueError:
            pass
    try:
        return parse_time(str(value))
    except (ValueError, OverflowError, OSError):
        return None


def extra_json(extra: Mapping[str, Any]) -> str | None:
    if not extra:
        return None
    return _orjson.dumps(extra, default=str).decode()


def related(*values: Any) -> list[str] | None:
    out: list[str] = []
    for v in values:
        if v is None or v == "":
            continue
        if isinstance(v, (list, tuple)):
            for x in v:
                if x not in (None, "") and str(x) not in out:
                    out.append(str(x))
        elif str(v) not in out:
            out.append(str(v))
    return out or None


def _clean(name: str, v: Any) -> Any:
    typ = EVENT_FIELDS[name]
    if v is None:
        return None
    try:
        if typ == _TS:
            return to_utc(v)
        if typ == pa.int64():
            if isinstance(v, bool):
                return int(v)
            return int(v) if not isinstance(v, str) else int(float(v)) if v.strip() else None
        if typ == pa.bool_():
            if isinstance(v, str):
                return v.strip().lower() in ("t", "true", "1", "yes")
            return bool(v)
        if typ == _STRS:
            if isinstance(v, (list, tuple)):
                return [x if isinstance(x, str) else _orjson.dumps(x).decode() if isinstance(x, (dict, list)) else str(x) for x in v if x is not None]
            return [str(v)]
        if typ == pa.float64():
            return float(v)
    except (ValueError, TypeError, OverflowError):
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list)):
        return _orjson.dumps(v).decode()
    return str(v)


def events_from_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """EVENT_SCHEMA batch from dict rows; values are coerced leniently (bad -> null).

    Column-wise (one ``pa.array`` per column present), so cheaper than
    :func:`taishi.schema.events_table` for big batches of sparse rows.
    """
    n = len(rows)
    if n == 0:
        return EVENT_SCHEMA.empty_table()
    keys: set[str] = set()
    for row in rows:
        keys.update(row)
    unknown = keys - EVENT_FIELDS.keys()
    if unknown:
        raise KeyError(f"{sorted(unknown)[0]!r} is not an event field")
    cols: dict[str, list[Any]] = {k: [row.get(k) for row in rows] for k in keys}
    arrays = []
    nulls: dict[pa.DataType, pa.Array] = {}  # one all-null array per type, shared by the absent fields
    for f in EVENT_SCHEMA:
        vals = cols.get(f.name)
        if vals is None:
            if f.type not in nulls:
                nulls[f.type] = pa.nulls(n, f.type)
            arrays.append(nulls[f.type])
            continue
        try:  # values are usually of the right type already
            if f.type == _TS and any(v is not None and not isinstance(v, _datetime) for v in vals):
                raise TypeError
            arrays.append(pa.array(vals, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            arrays.append(pa.array([_clean(f.name, v) for v in vals], type=f.type))
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


_RAW_COPIED = ("taishi.source", "log.offset", "log.file.path", "event.original")


def events_from_raw(raw: pa.Table, idx: list[int], rows: list[dict[str, Any]]) -> pa.Table:
    """EVENT_SCHEMA batch: mapped ``rows`` for raw rows ``idx``, with event.id,
    event.original, taishi.source, log.offset and log.file.path taken from ``raw``."""
    t = events_from_rows(rows)
    if not rows:
        return t
    take = raw.take(pa.array(idx, pa.int64())) if len(idx) != raw.num_rows else raw
    for name, arr in raw_event_columns(take).items():
        t = t.set_column(t.schema.get_field_index(name), name, arr)
    return t


def raw_event_columns(take: pa.Table) -> dict[str, pa.Array]:
    """What an event keeps of its raw record (``_RAW_COPIED``) for the raw rows ``take``, and the event ids."""
    cols = {n: one_chunk(take.column(n)) for n in _RAW_COPIED}
    cols["event.id"] = event_ids(cols["taishi.source"], cols["log.offset"], cols["event.original"])
    return cols


def result(events: pa.Table | list[dict[str, Any]], deadletters: list[dict[str, Any]]) -> ParseResult:
    if isinstance(events, list):
        events = events_from_rows(events)
    dl = _deadletters_table(deadletters) if deadletters else DEADLETTER_SCHEMA.empty_table()
    return ParseResult(events=events, deadletters=dl)


def parse_lines(
    raw: pa.Table,
    parse_line: Callable[[str, int, str | None, str, _datetime], Any],
    build: Callable[[pa.Table, list[int], list[Any]], pa.Table] | None = None,
) -> ParseResult:
    """Run a per-line parser over a raw batch: each line gives an ECS row, or the
    reason it could not (a str: a dead letter). ``parse_line(source, offset, path,
    line, now)``. Rows are dicts keyed by ECS names unless ``build(raw, idx, rows)``
    turns the parser's own row shape into the events table."""
    now = now_utc()
    events: list[dict[str, Any]] = []
    dls: list[dict[str, Any]] = []
    idx: list[int] = []
    for i, (source, offset, path, hint, line) in enumerate(raw_rows(raw)):
        line = line or ""
        why = precheck(source, offset, hint, line)
        if why is None:
            out = parse_line(source, offset, path, line, now)
            if not isinstance(out, str):
                events.append(out)
                idx.append(i)
                continue
            why = out
        dls.append(deadletter(source, offset, line, why))
    return result((build or events_from_raw)(raw, idx, events), dls)


def concat_results(parts: list[ParseResult]) -> ParseResult:
    if not parts:
        return ParseResult(EVENT_SCHEMA.empty_table(), DEADLETTER_SCHEMA.empty_table())
    if len(parts) == 1:
        return parts[0]
    ev = pa.concat_tables([_conform(p.events) for p in parts])
    dl = pa.concat_tables([p.deadletters for p in parts])
    return ParseResult(ev, dl)


def safe_parser(fn: Callable[[pa.Table], ParseResult]) -> Callable[[pa.Table], ParseResult]:
    """Wrap a parser so an unexpected bug dead-letters the batch row by row instead of raising."""

    def wrapper(raw: pa.Table) -> ParseResult:
        try:
            return fn(raw)
        except Exception:  # noqa: BLE001 - the pipeline never raises on input
            if raw.num_rows <= 1:
                import traceback

                err = traceback.format_exc(limit=1).strip().splitlines()[-1]
                dls = [
                    deadletter(s, o, orig or "", f"parser error: {err}"[:300])
                    for s, o, _p, _h, orig in raw_rows(raw)
                ]
                return result([], dls)
            mid = raw.num_rows // 2
            return concat_results([wrapper(raw.slice(0, mid)), wrapper(raw.slice(mid))])

    wrapper.__name__ = getattr(fn, "__name__", "parser")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _register_all() -> None:
    from . import cef, jsonl, netflow, suricata, syslog, zeek  # noqa: F401



class _FastCompute:
    """``pyarrow.compute`` with python literals turned into cached Arrow scalars.

    Converting a python literal to an Arrow scalar retries a failing optional
    import (``dateutil``) inside pyarrow on every call (~70 us); vectorised
    parsers make thousands of such calls, so the literals are cached here.
    """

    _DATA = frozenset(
        {"equal", "not_equal", "multiply", "if_else", "binary_join_element_wise", "greater", "less", "add",
         "coalesce", "fill_null", "subtract", "divide", "greater_equal", "less_equal"}
    )

    def __getattr__(self, name: str) -> Any:
        f = getattr(_pc, name)
        if name in self._DATA:
            def call(*args: Any, **kw: Any) -> Any:
                return f(*[lit(a) if isinstance(a, (str, int, float, bool)) else a for a in args], **kw)

            call.__name__ = name
            setattr(self, name, call)
            return call
        setattr(self, name, f)
        return f


_LITS: dict[tuple[type, Any], pa.Scalar] = {}


def lit(value: Any, typ: pa.DataType | None = None) -> pa.Scalar:
    """Cached ``pa.scalar(value, typ)`` for python literals."""
    key = (type(value), value, typ)
    s = _LITS.get(key)
    if s is None:
        if len(_LITS) > 4096:
            _LITS.clear()
        s = _LITS[key] = pa.scalar(value, typ)
    return s


fast_pc = _FastCompute()


def one_chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``col`` as one array: a single chunk as it is (``combine_chunks`` would copy it)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def event_ids(sources: pa.Array, offsets: pa.Array, originals: pa.Array) -> pa.Array:
    """Vector of :func:`taishi.ids.event_id` (the same digest, one loop, no per-row decode)."""
    import hashlib

    import numpy as np

    blake = hashlib.blake2b
    sep = lit("\x1f")
    msgs = fast_pc.binary_join_element_wise(
        lit("ev1"), sources, _pc.cast(offsets, pa.string()), originals, lit(""), sep
    )
    msgs = one_chunk(msgs)
    # raw 16-byte digests, hex-encoded in one go into a fixed-width string column
    n = len(msgs)
    if msgs.null_count:
        digests = b"".join([blake(b, digest_size=16).digest() for b in _pc.cast(msgs, pa.binary()).to_pylist()])
    else:  # each message a slice of the joined buffer; a copy of a fresh hasher is cheaper than a new one
        bufs = msgs.buffers()
        offs = np.frombuffer(bufs[1], dtype=np.int32, count=n + 1, offset=msgs.offset * 4).tolist()
        data = memoryview(bufs[2]) if bufs[2] is not None else memoryview(b"")
        fresh = blake(digest_size=16).copy
        out: list[bytes] = []
        add = out.append
        for a, b in zip(offs, offs[1:]):
            h = fresh()
            h.update(data[a:b])
            add(h.digest())
        digests = b"".join(out)
    offsets32 = pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets32, pa.py_buffer(digests.hex().encode()))


_register_all()
