"""Generic JSON lines -> ECS.

Keys that are already ECS names (dotted, ``{"source.ip": ..}``, or nested
objects, ``{"source": {"ip": ..}}``) and exist in ``taishi.schema`` are taken;
everything else goes (flattened, dotted) into ``taishi.extra``. ``@timestamp``
comes from ``@timestamp``, ``timestamp``, ``time`` or ``ts`` when parseable.
The pipeline's own fields (event.id, event.original, taishi.source, log.offset,
log.file.path) are never taken from the record (the record's values go to extra).
Registered as ``json`` (and ``jsonl``).
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from . import (
    EVENT_FIELDS,
    ParseResult,
    _register,
    extra_json,
    json_error,
    parse_lines,
    related,
    safe_parser,
    to_utc,
)

_RESERVED = frozenset({"event.id", "event.original", "taishi.source", "log.offset", "log.file.path", "taishi.extra"})
_TIME_KEYS = ("@timestamp", "timestamp", "time", "ts")


def flatten(obj: dict[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nested objects -> dotted keys; an object that is the value of a schema
    field (there is none of type object) or is empty stays as it is."""
    out = {} if out is None else out
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in EVENT_FIELDS:
            flatten(v, key + ".", out)
        else:
            out[key] = v
    return out


def map_record(rec: dict[str, Any], ev: dict[str, Any]) -> None:
    flat = flatten(rec)
    extra: dict[str, Any] = {}
    for k, v in flat.items():
        if k in EVENT_FIELDS and k not in _RESERVED and k != "@timestamp":
            ev[k] = v
        elif k not in _TIME_KEYS:
            extra[k] = v
    ts = None
    for k in _TIME_KEYS:
        if k in flat and flat[k] is not None:
            ts = to_utc(flat[k])
            if ts is not None:
                if k != "@timestamp":
                    extra.pop(k, None)
                break
            extra[k] = flat[k]
    ev["@timestamp"] = ts
    ev.setdefault("event.kind", "event")
    if not ev.get("event.module"):
        ev["event.module"] = "json"
    if not ev.get("event.dataset"):
        ev["event.dataset"] = "json.generic"
    if not ev.get("related.ip"):
        ev["related.ip"] = related(ev.get("source.ip"), ev.get("destination.ip"))
    if not ev.get("related.user") and ev.get("user.name"):
        ev["related.user"] = related(ev.get("user.name"))
    ev["taishi.extra"] = extra_json(extra)


def _parse_line(source: str, offset: int, path: str | None, line: str, now: Any) -> dict[str, Any] | str:
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return json_error(exc)
    if not isinstance(rec, dict):
        return f"JSON record is not an object ({type(rec).__name__})"
    ev: dict[str, Any] = {}
    map_record(rec, ev)
    return ev


def parse(raw: pa.Table) -> ParseResult:
    """JSON lines (objects) -> ECS; bad JSON and non-objects are dead-lettered."""
    return parse_lines(raw, _parse_line)


_parser = safe_parser(parse)
_register("json")(_parser)
_register("jsonl")(_parser)
