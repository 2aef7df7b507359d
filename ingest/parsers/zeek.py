"""Zeek logs (TSV with a header hint, or JSON lines) -> ECS, a whole batch at a time.

TSV lines are split with one ``split_pattern`` over the batch and converted by
their ``#types``; JSON lines are read with ``pyarrow.json.read_json`` over the
joined batch. Both give the same typed columns (Zeek field name -> Arrow
array), mapped to ECS by log type with vectorised ``pyarrow.compute``. Lines
that do not fit (wrong field count, bad JSON) are isolated and dead-lettered;
only then is anything done per line.

Mapping notes:

* ``source.bytes``/``destination.bytes`` are Zeek's ``orig_bytes``/``resp_bytes``
  (payload bytes, what Zeek and Elastic's Zeek module use); the IP-level
  ``orig_ip_bytes``/``resp_ip_bytes`` stay in ``taishi.extra``.
  ``network.bytes``/``network.packets`` are the sums.
* conn ``conn_state`` -> ``event.action``; ``local_orig``/``local_resp`` ->
  ``network.direction`` (internal/outbound/inbound/external) and also kept in
  extra, as are ``uid``, ``history``, labels (``label``/``detailedlabel``) ...
* Unset (``-``) -> null; ``(empty)`` -> null for scalars, ``[]`` for sets/vectors.
* Fields without an ECS home go, as a JSON object, to ``taishi.extra``
  (unset fields are omitted there).
"""

from __future__ import annotations

from typing import Any, Callable

import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from . import (
    EVENT_SCHEMA,
    INVALID_UTF8_HINT,
    MAX_RECORD_BYTES,
    ParseResult,
    _register,
    concat_results,
    deadletter,
    event_ids,
    fast_pc as pc,
    lit,
    json_error,
    one_chunk,
    precheck,
    raw_rows,
    result,
    safe_parser,
)

TS = pa.timestamp("us", tz="UTC")
STRS = pa.list_(pa.string())
_NULL_STR = pa.scalar(None, pa.string())
_EMPTY_LIST = pa.scalar([], STRS)

# ---------------------------------------------------------------------------
# typed columns


_ESC = re.compile(rb"\\x([0-9a-fA-F]{2})")


def _unescape_one(v: str) -> str:
    """Zeek's ASCII writer escapes non-printable bytes (and separators) as \\xHH;
    undo it, re-escaping byte sequences that are not UTF-8."""
    raw = _ESC.sub(lambda m: bytes([int(m.group(1), 16)]), v.encode("utf-8"))
    return raw.decode("utf-8", errors="backslashreplace")


def _unescape(col: pa.Array, escaped: bool = True) -> pa.Array:
    if not escaped or len(col) == 0 or not pc.any(pc.match_substring(col, "\\x")).as_py():
        return col
    return pa.array([None if v is None else _unescape_one(v) if "\\x" in v else v for v in col.to_pylist()], pa.string())


def _null_where(col: pa.Array, drop: pa.Array) -> pa.Array:
    """``col`` (strings) with nulls where ``drop`` is true. A column fresh from the
    split (no nulls, no offset) keeps its offsets and data buffers and only gets
    a validity bitmap, instead of having every string copied by ``if_else``."""
    if drop.null_count or drop.offset or col.offset or col.null_count or not pa.types.is_string(col.type):
        return pc.if_else(pc.fill_null(drop, False), _NULL_STR, col)
    keep = pc.invert(drop)
    bufs = col.buffers()
    return pa.StringArray.from_buffers(len(col), bufs[1], bufs[2], keep.buffers()[1])


def _tsv_convert(col: pa.Array, ztype: str, header: dict[str, Any], escaped: bool = True,
                 marks: tuple[np.ndarray, np.ndarray] | None = None) -> pa.Array:
    """A TSV column of strings -> typed by its Zeek type; ``escaped``: the batch may hold \\xHH escapes;
    ``marks``: (is unset, is empty) per value when known (:func:`_marks`)."""
    unset = header.get("unset_field", "-")
    empty = header.get("empty_field", "(empty)")
    if ztype.startswith(("set[", "vector[", "table[")):
        if marks is not None:
            col = _null_where(col, pa.array(marks[0]))
            is_empty = pa.array(marks[1] & ~marks[0])
        else:
            col = _null_where(col, pc.equal(col, unset))
            is_empty = pc.fill_null(pc.equal(col, empty), False)
        lists = pc.split_pattern(col, header.get("set_separator", ","))
        if escaped and pc.any(pc.match_substring(col, "\\x")).as_py():
            lists = pa.ListArray.from_arrays(lists.offsets, _unescape(lists.values), mask=lists.is_null())
        return pc.if_else(is_empty, _EMPTY_LIST, lists)
    if marks is not None:
        col = _null_where(col, pa.array(marks[0] | marks[1]))
    else:
        col = _null_where(col, pc.or_(pc.equal(col, unset), pc.equal(col, empty)))
    if ztype == "time":
        return _secs_to_ts(col.cast(pa.float64()))
    if ztype in ("interval", "double"):
        return col.cast(pa.float64())
    if ztype in ("count", "int", "port", "counter"):
        return col.cast(pa.int64())
    if ztype == "bool":
        return pc.equal(col, "T")
    return _unescape(col, escaped)


def _equal_bytes(offsets: np.ndarray, data: np.ndarray, token: bytes) -> np.ndarray:
    """Per value of a string array (its offsets and data as numpy): equal to ``token``?"""
    lengths = offsets[1:] - offsets[:-1]
    hit = lengths == len(token)
    if not token:
        return hit
    idx = np.flatnonzero(hit)
    starts = offsets[:-1][idx]
    for k, byte in enumerate(token):  # narrowed byte by byte: few candidates are left after the first
        ok = data[starts + k] == byte
        idx, starts = idx[ok], starts[ok]
    out = np.zeros(len(lengths), dtype=bool)
    out[idx] = True
    return out


def _marks(flat: pa.Array, header: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(is unset, is empty) for every value of the split batch, in one pass over all columns;
    None when ``flat`` is not a plain string array."""
    if not pa.types.is_string(flat.type) or flat.null_count:
        return None
    bufs = flat.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int32, count=len(flat) + 1, offset=flat.offset * 4)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, dtype=np.uint8)
    unset = header.get("unset_field", "-").encode("utf-8")
    empty = header.get("empty_field", "(empty)").encode("utf-8")
    return _equal_bytes(offsets, data, unset), _equal_bytes(offsets, data, empty)


def _json_special_but(sep: str) -> str:
    """RE2 class of the characters a JSON string literal escapes (control characters,
    quote, backslash), except a one-character field separator (never inside a value)."""
    if len(sep) == 1 and ord(sep) < 0x20:
        c = ord(sep)
        ranges = [(a, b) for a, b in ((0, c - 1), (c + 1, 0x1F)) if a <= b]
        controls = "".join(f"\\x{a:02x}-\\x{b:02x}" if a < b else f"\\x{a:02x}" for a, b in ranges)
    else:
        controls = "\\x00-\\x1f"
    return f'[{controls}"\\\\]'


def _secs_to_ts(secs: pa.Array) -> pa.Array:
    us = pc.round(pc.multiply(secs, 1e6))
    return us.cast(pa.int64(), safe=False).cast(TS)


def _as(arr: pa.Array, kind: str) -> pa.Array:
    """Convert a typed Zeek column (from TSV or JSON) to an ECS value kind."""
    t = arr.type
    if kind == "str":
        if pa.types.is_string(t):
            # Zeek JSON writes an empty string as "", TSV as (empty): both -> null
            return pc.if_else(pc.fill_null(pc.equal(arr, ""), False), _NULL_STR, arr) if len(arr) else arr
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pc.binary_join(arr.cast(STRS), ",")
        if pa.types.is_null(t):
            return pa.nulls(len(arr), pa.string())
        return arr.cast(pa.string())
    if kind == "int":
        if pa.types.is_integer(t) or pa.types.is_null(t):
            return arr.cast(pa.int64())
        if pa.types.is_floating(t):
            return arr.cast(pa.int64(), safe=False)
        if pa.types.is_string(t):
            return arr.cast(pa.float64()).cast(pa.int64(), safe=False)
        return arr.cast(pa.int64())
    if kind == "float":
        return arr.cast(pa.float64())
    if kind == "bool":
        if pa.types.is_boolean(t) or pa.types.is_null(t):
            return arr.cast(pa.bool_())
        s = pc.utf8_lower(arr.cast(pa.string()))
        return pc.is_in(s, value_set=pa.array(["t", "true", "1"]))
    if kind == "ts":
        if pa.types.is_timestamp(t):
            return arr.cast(TS) if t.tz else pc.assume_timezone(arr, "UTC").cast(TS)
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            return _secs_to_ts(arr.cast(pa.float64()))
        if pa.types.is_null(t):
            return pa.nulls(len(arr), TS)
        try:
            return arr.cast(TS)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            return _secs_to_ts(arr.cast(pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            from . import to_utc

            return pa.array([to_utc(v) for v in arr.to_pylist()], TS)
    if kind == "ns":
        f = _as(arr, "float")
        return pc.round(pc.multiply(f, 1e9)).cast(pa.int64(), safe=False)
    if kind == "strs":
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return arr.cast(STRS)
        if pa.types.is_null(t):
            return pa.nulls(len(arr), STRS)
        s = _as(arr, "str")
        offsets = pa.array(np.arange(len(s) + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, s, mask=s.is_null())
    raise ValueError(kind)


# ---------------------------------------------------------------------------
# extras -> JSON, vectorised


def _json_escaped(arr: pa.Array, plain: bool = False) -> pa.Array | None:
    """The strings escaped for a JSON string literal, without the quotes; None when
    a control character needs the slow path. ``plain``: known to hold no quote,
    backslash or control character."""
    if not plain and pc.any(pc.match_substring_regex(arr, '[\\x00-\\x1f"\\\\]')).as_py():
        if pc.any(pc.match_substring_regex(arr, "[\\x00-\\x1f]")).as_py():
            return None
        arr = pc.replace_substring(arr, "\\", "\\\\")
        arr = pc.replace_substring(arr, '"', '\\"')
    return arr


def _json_strings(arr: pa.Array, plain: bool = False) -> pa.Array:
    """Quoted, escaped JSON string literals (null stays null); ``plain``: known to
    hold no quote, backslash or control character."""
    esc = _json_escaped(arr, plain)
    if esc is None:
        return pa.array([None if v is None else orjson.dumps(v).decode() for v in arr.to_pylist()], pa.string())
    return pc.binary_join_element_wise('"', esc, '"', "")


def _json_values(arr: pa.Array, plain: bool = False) -> pa.Array:
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _json_strings(arr.cast(pa.string()), plain)
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false")
    if pa.types.is_integer(t):
        return arr.cast(pa.string())
    if pa.types.is_floating(t):
        s = arr.cast(pa.string())
        return pc.if_else(pc.fill_null(pc.is_finite(arr), True), s, _NULL_STR)
    if pa.types.is_timestamp(t):
        iso = pc.strftime(_as(arr, "ts"), format="%Y-%m-%dT%H:%M:%SZ")
        return pc.binary_join_element_wise('"', iso, '"', "")
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_list(t) and not pa.types.is_nested(t.value_type):
        vals = pc.fill_null(_json_values(arr.values, plain), "null")
        lst = pa.ListArray.from_arrays(arr.offsets, vals, mask=arr.is_null())
        return pc.binary_join_element_wise("[", pc.binary_join(lst, ","), "]", "")
    return pa.array(
        [None if v is None else orjson.dumps(v, default=str).decode() for v in arr.to_pylist()], pa.string()
    )


def _extras(cols: dict[str, pa.Array], names: list[str], n: int, plain: bool = False) -> pa.Array:
    """One JSON object per row of the ``names`` columns (unset values -> null)."""
    if not names:
        return pa.nulls(n, pa.string())
    parts: list[Any] = []
    text = ""  # literal text between value columns; a string column without nulls gets its quotes here
    for i, name in enumerate(names):
        text += ("{" if i == 0 else ",") + orjson.dumps(name).decode() + ":"
        col = cols[name]
        if (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)) and not col.null_count:
            esc = _json_escaped(col.cast(pa.string()), plain)
            if esc is not None:
                parts += [lit(text + '"'), esc]
                text = '"'
                continue
        parts += [lit(text), pc.fill_null(_json_values(col, plain), lit("null"))]
        text = ""
    parts.append(lit(text + "}"))
    return pc.binary_join_element_wise(*parts, lit(""))


# ---------------------------------------------------------------------------
# mapping


class _Cols:
    def __init__(self, cols: dict[str, pa.Array], n: int) -> None:
        self.cols = cols
        self.n = n
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.cols

    def get(self, name: str, kind: str, consume: bool = True) -> pa.Array | None:
        arr = self.cols.get(name)
        if consume:
            self.used.add(name)
        if arr is None:
            return None
        return _as(arr, kind)


def _const(value: Any, n: int, typ: pa.DataType = pa.string()) -> pa.Array:
    return pa.repeat(lit(value, typ), n)


def _coalesce(*arrs: pa.Array | None) -> pa.Array | None:
    got = [a for a in arrs if a is not None]
    if not got:
        return None
    return got[0] if len(got) == 1 else pc.coalesce(*got)


def _related(n: int, *arrs: pa.Array | None) -> pa.Array | None:
    """list<string> per row of the non-null values of ``arrs`` (distinct, in order)."""
    got = [a for a in arrs if a is not None]
    if not got:
        return None
    k = len(got)
    stack = pa.concat_arrays([a.cast(pa.string()) for a in got])
    idx = (np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None]).ravel()
    vals = stack.take(pa.array(idx))
    valid = vals.is_valid().to_numpy(zero_copy_only=False).reshape(n, k)
    if k == 2:
        a, b = got[0].cast(pa.string()), got[1].cast(pa.string())
        dup = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
        valid[:, 1] &= ~dup
    counts = valid.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    flat = vals.filter(pa.array(valid.ravel()))
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat, mask=pa.array(counts == 0))
    return lists


def _direction(lo: pa.Array | None, lr: pa.Array | None) -> pa.Array | None:
    if lo is None or lr is None:
        return None
    both = pc.if_else(lr, "internal", "outbound")
    neither = pc.if_else(lr, "inbound", "external")
    return pc.if_else(lo, both, neither)


def _ssl_version(v: pa.Array) -> tuple[pa.Array, pa.Array]:
    """'TLSv12' -> ('1.2', 'tls'); 'SSLv3' -> ('3.0', 'ssl'); 'DTLSv12' -> ('1.2', 'dtls')."""
    parts = pc.extract_regex(v, r"^(?P<p>[A-Za-z]+)v(?P<a>\d)(?P<b>\d?)$")
    proto = pc.utf8_lower(pc.struct_field(parts, "p"))
    a = pc.struct_field(parts, "a")
    b = pc.struct_field(parts, "b")
    b = pc.if_else(pc.equal(b, ""), "0", b)
    return pc.binary_join_element_wise(a, b, "."), proto


_CN = r"(?:^|,)CN=(?P<cn>(?:[^,\\]|\\.)*)"


def _common_name(dn: pa.Array | None) -> pa.Array | None:
    if dn is None:
        return None
    cn = pc.struct_field(pc.extract_regex(dn, _CN), "cn")
    return _as(cn, "strs")


def _base(c: _Cols, out: dict[str, pa.Array]) -> None:
    ts = c.get("ts", "ts")
    if ts is not None:
        out["@timestamp"] = ts
    for z, e, kind in (
        ("id.orig_h", "source.ip", "str"),
        ("id.orig_p", "source.port", "int"),
        ("id.resp_h", "destination.ip", "str"),
        ("id.resp_p", "destination.port", "int"),
    ):
        a = c.get(z, kind)
        if a is not None:
            out[e] = a
    if c.has("proto"):
        out["network.transport"] = pc.utf8_lower(c.get("proto", "str"))


def _put(out: dict[str, pa.Array], c: _Cols, pairs: tuple[tuple[str, str, str], ...]) -> None:
    for z, e, kind in pairs:
        a = c.get(z, kind)
        if a is not None:
            out[e] = a


def _map_conn(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("network", n)
    out["event.type"] = _const("connection", n)
    _put(
        out,
        c,
        (
            ("service", "network.protocol", "str"),
            ("duration", "event.duration", "ns"),
            ("orig_bytes", "source.bytes", "int"),
            ("resp_bytes", "destination.bytes", "int"),
            ("orig_pkts", "source.packets", "int"),
            ("resp_pkts", "destination.packets", "int"),
            ("conn_state", "event.action", "str"),
        ),
    )
    if "source.bytes" in out and "destination.bytes" in out:
        out["network.bytes"] = pc.add(out["source.bytes"], out["destination.bytes"])
    if "source.packets" in out and "destination.packets" in out:
        out["network.packets"] = pc.add(out["source.packets"], out["destination.packets"])
    d = _direction(c.get("local_orig", "bool", consume=False), c.get("local_resp", "bool", consume=False))
    if d is not None:
        out["network.direction"] = d
    if c.has("orig_l2_addr"):
        out["source.mac"] = c.get("orig_l2_addr", "str")
        out["destination.mac"] = c.get("resp_l2_addr", "str")
    if c.has("community_id"):
        out["network.community_id"] = c.get("community_id", "str")


_IP_RE = r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+)$"


def _map_dns(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("network", n)
    out["event.type"] = _const("protocol", n)
    out["network.protocol"] = _const("dns", n)
    _put(
        out,
        c,
        (
            ("trans_id", "dns.id", "str"),
            ("query", "dns.question.name", "str"),
            ("qtype_name", "dns.question.type", "str"),
            ("qclass_name", "dns.question.class", "str"),
            ("rcode_name", "dns.response_code", "str"),
            ("answers", "dns.answers.data", "strs"),
        ),
    )
    rcode = c.get("rcode", "int")
    has_answer = out.get("dns.response_code")
    if has_answer is None and rcode is not None:
        has_answer = rcode
    if has_answer is not None:
        out["dns.type"] = pc.if_else(has_answer.is_valid(), "answer", "query")
    else:
        out["dns.type"] = _const("query", n)
    ans = out.get("dns.answers.data")
    if ans is not None:
        flat = ans.values
        is_ip = pc.fill_null(pc.match_substring_regex(flat, _IP_RE), False)
        # rebuild per-row lists of the IP answers
        parent = pc.list_parent_indices(ans)
        start = ans.offsets[0].as_py()
        flat = flat.slice(start, len(parent))
        is_ip = is_ip.slice(start, len(parent))
        keep_parent = parent.filter(is_ip).to_numpy(zero_copy_only=False)
        counts = np.bincount(keep_parent, minlength=n) if len(keep_parent) else np.zeros(n, dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        out["dns.resolved_ip"] = pa.ListArray.from_arrays(
            pa.array(offsets), flat.filter(is_ip), mask=pa.array(counts == 0)
        )
    q = out.get("dns.question.name")
    if q is not None:
        out["related.hosts"] = _related(n, q)


def _map_http(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("web", n)
    out["event.type"] = _const("access", n)
    out["network.protocol"] = _const("http", n)
    _put(
        out,
        c,
        (
            ("method", "http.request.method", "str"),
            ("uri", "url.original", "str"),
            ("host", "url.domain", "str"),
            ("referrer", "http.request.referrer", "str"),
            ("version", "http.version", "str"),
            ("user_agent", "user_agent.original", "str"),
            ("request_body_len", "http.request.body.bytes", "int"),
            ("response_body_len", "http.response.body.bytes", "int"),
            ("status_code", "http.response.status_code", "int"),
            ("username", "url.username", "str"),
            ("password", "url.password", "str"),
        ),
    )
    uri = out.get("url.original")
    if uri is not None:
        out["url.path"] = pc.replace_substring_regex(uri, r"[?#].*$", "")
        q = pc.struct_field(pc.extract_regex(uri, r"\?(?P<q>[^#]*)"), "q")
        out["url.query"] = q
    mimes = c.get("resp_mime_types", "strs", consume=False)
    if mimes is not None:
        out["http.response.mime_type"] = pc.list_element(
            pc.if_else(pc.greater(pc.fill_null(pc.list_value_length(mimes), 0), 0), mimes, pa.scalar(None, STRS)),
            0,
        )
    if "url.username" in out:
        out["related.user"] = _related(n, out["url.username"])
    if "url.domain" in out:
        out["related.hosts"] = _related(n, out["url.domain"])


def _map_ssl(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("network", n)
    out["event.type"] = _const("protocol", n)
    out["network.protocol"] = _const("tls", n)
    v = c.get("version", "str")
    if v is not None:
        out["tls.version"], out["tls.version_protocol"] = _ssl_version(v)
    _put(
        out,
        c,
        (
            ("cipher", "tls.cipher", "str"),
            ("curve", "tls.curve", "str"),
            ("server_name", "tls.client.server_name", "str"),
            ("established", "tls.established", "bool"),
            ("resumed", "tls.resumed", "bool"),
            ("next_protocol", "tls.next_protocol", "str"),
            ("subject", "tls.server.subject", "str"),
            ("issuer", "tls.server.issuer", "str"),
            ("ja3", "tls.client.ja3", "str"),
            ("ja3s", "tls.server.ja3s", "str"),
        ),
    )
    if "tls.client.server_name" in out:
        out["related.hosts"] = _related(n, out["tls.client.server_name"])


def _map_ssh(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("authentication", n)
    out["event.type"] = _const("start", n)
    out["event.action"] = _const("ssh_login", n)
    out["network.protocol"] = _const("ssh", n)
    ok = c.get("auth_success", "bool")
    if ok is not None:
        out["event.outcome"] = pc.if_else(ok, "success", "failure")
    d = c.get("direction", "str")
    if d is not None:
        out["network.direction"] = pc.utf8_lower(d)


def _map_notice(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.kind"] = _const("alert", n)
    out["event.category"] = _const("intrusion_detection", n)
    out["event.type"] = _const("info", n)
    _put(out, c, (("note", "rule.name", "str"), ("msg", "message", "str")))
    src = _coalesce(out.get("source.ip"), c.get("src", "str"))
    dst = _coalesce(out.get("destination.ip"), c.get("dst", "str"))
    port = _coalesce(out.get("destination.port"), c.get("p", "int"))
    for k, v in (("source.ip", src), ("destination.ip", dst), ("destination.port", port)):
        if v is not None:
            out[k] = v


def _map_weird(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("network", n)
    out["event.type"] = _const("info", n)
    _put(out, c, (("name", "event.action", "str"),))


def _map_x509(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("network", n)
    out["event.type"] = _const("info", n)
    _put(
        out,
        c,
        (
            ("certificate.serial", "x509.serial_number", "str"),
            ("certificate.not_valid_before", "x509.not_before", "ts"),
            ("certificate.not_valid_after", "x509.not_after", "ts"),
            ("certificate.key_alg", "x509.public_key_algorithm", "str"),
            ("certificate.key_length", "x509.public_key_size", "int"),
            ("certificate.sig_alg", "x509.signature_algorithm", "str"),
            ("san.dns", "x509.alternative_names", "strs"),
        ),
    )
    # full DNs stay in extra (no ECS field here); the CN is mapped
    for z, e in (("certificate.subject", "x509.subject.common_name"), ("certificate.issuer", "x509.issuer.common_name")):
        cn = _common_name(c.get(z, "str", consume=False))
        if cn is not None:
            out[e] = cn


def _map_generic(c: _Cols, out: dict[str, pa.Array], n: int) -> None:
    out["event.category"] = _const("network", n)
    out["event.type"] = _const("info", n)
    if c.has("service") and not pa.types.is_list(c.cols["service"].type):
        out["network.protocol"] = c.get("service", "str")


_MAPPERS: dict[str, Callable[[_Cols, dict[str, pa.Array], int], None]] = {
    "conn": _map_conn,
    "dns": _map_dns,
    "http": _map_http,
    "ssl": _map_ssl,
    "ssh": _map_ssh,
    "notice": _map_notice,
    "weird": _map_weird,
    "x509": _map_x509,
}
_DROP = frozenset({"_path"})


def _to_ecs(path: str, cols: dict[str, pa.Array], meta: pa.Table, plain: bool = False) -> pa.Table:
    """ECS batch for rows of one Zeek log type: typed columns + aligned raw rows."""
    n = meta.num_rows
    c = _Cols(cols, n)
    out: dict[str, pa.Array] = {}
    _base(c, out)
    _MAPPERS.get(path, _map_generic)(c, out, n)
    out.setdefault("event.kind", _const("event", n))
    out["event.module"] = _const("zeek", n)
    out["event.dataset"] = _const(f"zeek.{path}", n)
    out["observer.vendor"] = _const("Zeek", n)
    out["observer.type"] = _const("ids", n)
    rel = _related(n, out.get("source.ip"), out.get("destination.ip"))
    if rel is not None:
        out["related.ip"] = rel
    extra_names = [k for k in cols if k not in c.used and k not in _DROP]
    out["taishi.extra"] = _extras(cols, extra_names, n, plain)
    src = one_chunk(meta.column("taishi.source"))
    off = one_chunk(meta.column("log.offset"))
    orig = one_chunk(meta.column("event.original"))
    out["event.id"] = event_ids(src, off, orig)
    out["event.original"] = orig
    out["taishi.source"] = src
    out["log.offset"] = off
    out["log.file.path"] = one_chunk(meta.column("log.file.path"))
    arrays = []
    nulls: dict[pa.DataType, pa.Array] = {}  # one all-null array per type, shared by the absent fields
    for f in EVENT_SCHEMA:
        a = out.get(f.name)
        if a is None:
            a = nulls.get(f.type)
            if a is None:
                a = nulls[f.type] = pa.nulls(n, f.type)
            arrays.append(a)
        else:
            if isinstance(a, pa.ChunkedArray):
                a = a.combine_chunks()
            arrays.append(a if a.type == f.type else a.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


# ---------------------------------------------------------------------------
# TSV


_HEADERS: dict[str, dict[str, Any]] = {}


def _header(hint: str) -> dict[str, Any]:
    h = _HEADERS.get(hint)
    if h is None:
        h = orjson.loads(hint)
        if len(_HEADERS) > 256:
            _HEADERS.clear()
        _HEADERS[hint] = h
    return h


def _parse_tsv(sub: pa.Table, header: dict[str, Any]) -> ParseResult:
    fields: list[str] = header["fields"]
    types: list[str] = header.get("types") or ["string"] * len(fields)
    if len(types) < len(fields):
        types = types + ["string"] * (len(fields) - len(types))
    nf = len(fields)
    orig = one_chunk(sub.column("event.original"))
    lists = pc.split_pattern(orig, header.get("separator", "\t"))
    counts = pc.list_value_length(lists)
    ok = pc.equal(counts, nf)
    dls: list[dict[str, Any]] = []
    if not pc.all(ok).as_py():
        bad = sub.filter(pc.invert(ok))
        bad_counts = counts.filter(pc.invert(ok)).to_pylist()
        for (s, o, _p, _h, text), k in zip(raw_rows(bad), bad_counts):
            dls.append(deadletter(s, o, text, f"zeek TSV line has {k} fields, header has {nf}"))
        sub = sub.filter(ok)
        lists = lists.filter(ok)
    m = sub.num_rows
    if m == 0:
        return result([], dls)
    flat = lists.flatten()
    orig = one_chunk(sub.column("event.original"))
    # no quote, backslash or control character in any value: extras need no JSON escaping
    plain = not pc.any(pc.match_substring_regex(orig, _json_special_but(header.get("separator", "\t")))).as_py()
    escaped = not plain and pc.any(pc.match_substring(orig, "\\x")).as_py()  # an escape has a backslash
    marks = _marks(flat, header)
    cols: dict[str, pa.Array] = {}
    try:
        for j, (name, ztype) in enumerate(zip(fields, types)):
            col = flat.take(pa.array(np.arange(j, m * nf, nf, dtype=np.int64))) if nf > 1 else flat
            mk = None if marks is None else (marks[0][j::nf], marks[1][j::nf])
            cols[name] = _tsv_convert(col, ztype, header, escaped, mk)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if m == 1:
            s, o, _p, _h, text = next(iter(raw_rows(sub)))
            return result([], dls + [deadletter(s, o, text, f"zeek TSV value does not fit its #types ({name}: {ztype})")])
        # isolate the bad value(s): halve the batch
        half = m // 2
        parts = [_parse_tsv(sub.slice(0, half), header), _parse_tsv(sub.slice(half), header)]
        r = concat_results(parts)
        return concat_results([r, result([], dls)]) if dls else r
    ev = _to_ecs(header.get("path") or "unknown", cols, sub, plain)
    return result(ev, dls)


# ---------------------------------------------------------------------------
# JSON


def _read_json_batch(orig: pa.Array) -> pa.Table:
    joined = pc.binary_join_element_wise(orig, "", "\n")
    bufs = joined.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
    data = bufs[2][offs[0] : offs[-1]]
    return pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16)),
        parse_options=pajson.ParseOptions(newlines_in_values=False),
    )


def _json_group(table: pa.Table, sub: pa.Table) -> ParseResult:
    """Map a read_json table (rows aligned with ``sub``) grouped by log type."""
    hint = sub.column("hint").combine_chunks()
    if "_path" in table.column_names:
        paths = pc.coalesce(table.column("_path").combine_chunks().cast(pa.string()), hint)
    else:
        paths = hint
    paths = pc.fill_null(paths, "unknown")
    uniq = pc.unique(paths).to_pylist()
    parts = []
    for p in uniq:
        if len(uniq) == 1:
            t, s = table, sub
        else:
            mask = pc.equal(paths, p)
            t, s = table.filter(mask), sub.filter(mask)
        cols = {}
        for name in t.column_names:
            col = t.column(name).combine_chunks()
            if len(uniq) > 1 and col.null_count == len(col):
                continue  # a field of another log type in this batch
            cols[name] = col
        parts.append(result(_to_ecs(p, cols, s), []))
    return concat_results(parts)


def _parse_json(sub: pa.Table) -> ParseResult:
    orig = one_chunk(sub.column("event.original"))
    try:
        return _json_group(_read_json_batch(orig), sub)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    # isolate the lines that are not JSON objects
    dls = []
    good = []
    for i, (s, o, _p, _h, text) in enumerate(raw_rows(sub)):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            dls.append(deadletter(s, o, text, json_error(exc)))
            continue
        if not isinstance(obj, dict):
            dls.append(deadletter(s, o, text, f"zeek JSON record is not an object ({type(obj).__name__})"))
            continue
        good.append(i)
    parts = [result([], dls)]
    if good:
        gsub = sub.take(pa.array(good, pa.int64()))
        try:
            parts.append(_json_group(_read_json_batch(gsub.column("event.original").combine_chunks()), gsub))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # values of varying type across lines: one line at a time
            for i in range(gsub.num_rows):
                one = gsub.slice(i, 1)
                try:
                    parts.append(_json_group(_read_json_batch(one.column("event.original").combine_chunks()), one))
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    s, o, _p, _h, text = next(iter(raw_rows(one)))
                    parts.append(result([], [deadletter(s, o, text, f"zeek JSON value of an unexpected type: {exc}"[:200])]))
    return concat_results(parts)


# ---------------------------------------------------------------------------


def parse(raw: pa.Table) -> ParseResult:
    """Zeek raw batch (TSV lines with a header hint, or JSON lines) -> ECS."""
    if raw.num_rows == 0:
        return result([], [])
    orig = one_chunk(raw.column("event.original"))
    # the text once as one array, shared by every step below; hints (each row a
    # copy of its file's header) stay chunked and are compared where they are
    raw = raw.set_column(raw.schema.get_field_index("event.original"), "event.original", orig)
    hint = raw.column("hint")
    too_big = pc.greater(pc.binary_length(orig), MAX_RECORD_BYTES)
    bad = pc.fill_null(pc.or_(too_big, pc.equal(hint, INVALID_UTF8_HINT)), False)
    parts: list[ParseResult] = []
    if pc.any(bad).as_py():
        dls = []
        for s, o, _p, h, text in raw_rows(raw.filter(bad)):
            dls.append(deadletter(s, o, text, precheck(s, o, h, text) or "unreadable record"))
        parts.append(result([], dls))
        raw = raw.filter(pc.invert(bad))
        hint = raw.column("hint")
    if raw.num_rows == 0:
        return concat_results(parts)
    is_tsv = pc.fill_null(pc.starts_with(hint, "{"), False)
    n_tsv = pc.sum(is_tsv).as_py() or 0
    if n_tsv:
        tsv = raw if n_tsv == raw.num_rows else raw.filter(is_tsv)
        tsv_hint = tsv.column("hint")
        first = tsv_hint[0].as_py()
        # one file's lines share one header: a cheap equality test before hashing them all
        same = first is not None and pc.all(pc.equal(tsv_hint, first)).as_py()
        uniq = [first] if same else pc.unique(tsv_hint).to_pylist()
        for h in uniq:
            sub = tsv if len(uniq) == 1 else tsv.filter(pc.equal(tsv_hint, h))
            try:
                header = _header(h)
                header["fields"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                parts.append(
                    result([], [deadletter(s, o, t, "zeek TSV header hint is unreadable") for s, o, _p, _h, t in raw_rows(sub)])
                )
                continue
            parts.append(_parse_tsv(sub, header))
    if n_tsv < raw.num_rows:
        parts.append(_parse_json(raw if n_tsv == 0 else raw.filter(pc.invert(is_tsv))))
    return concat_results(parts)


_register("zeek")(safe_parser(parse))
