"""The query language: Lucene query-string syntax compiled to DuckDB SQL.

Queries are parsed with luqum and compiled to a WHERE clause plus a list of
bound parameters. User text is never spliced into SQL: field names are
resolved against the schema's column names (an unknown field is a
:class:`QueryError`) and then quoted as identifiers; every value is a ``?``
parameter.

>>> import pyarrow as pa
>>> s = pa.schema([("source.port", pa.int64()), ("message", pa.string())])
>>> compile_query("source.port:>=1024", s, ["message"])
('("source.port" >= ?)', [1024])
>>> compile_query("failed", s, ["message"])
('(contains(lower("message"), lower(?)))', ['failed'])

Semantics, following Elasticsearch's ``query_string`` query:

* ``field:value`` on a keyword (string) field is exact, case-sensitive
  equality; ``field:"a phrase"`` likewise. Text-like fields
  (:data:`TEXT_FIELDS`: ``message``, ``event.original`` ...) match when they
  *contain* the value, case-insensitively.
* Bare terms and phrases search the ``default_fields`` (those present in the
  schema) with a case-insensitive *contains*.
* ``*`` and ``?`` are wildcards (``LIKE``; ``ILIKE`` on text-like fields and
  default fields); ``\\*`` is a literal star. ``field:*`` means the field exists.
* ``/regex/`` is a RE2 regular expression (anchored on keyword fields).
* Numeric fields compare numerically; ``field:>=10``, ``[a TO b]``,
  ``{a TO b}``, ``[10 TO *]``.
* Time fields take ISO-8601 strings (quote them or not) or date math:
  ``now-24h``, ``now/d``, ``2024-01-01||+1M``. As in Elasticsearch, a value
  with a coarse granularity (``2024-01-01``, ``now/d``) stands for the whole
  unit: ``@timestamp:2024-01-01`` is that day, ``[* TO 2024-01-31]`` includes
  the 31st, ``{2024-01-01 TO *]`` starts on the 2nd.
* IP fields (:data:`taishi.schema.IP_FIELDS`, and ``*.ip`` columns) take an
  address or a CIDR (``10.0.0.0/8``, ``"2001:db8::/32"``), for IPv4 and IPv6;
  addresses compare as addresses, not strings (``2001:db8::1`` matches a
  stored ``2001:0db8:0:0::1``; IPv4-mapped IPv6 equals its IPv4 address).
  This needs the scalar function ``taishi_ip_key``; call
  :func:`register_functions` on every DuckDB connection that runs a compiled
  query (the Store does). DuckDB's ``inet`` extension is not used: it cannot
  be installed offline.
* List columns (``related.ip``, ``tags`` ...) match when any element matches;
  ``_exists_:field`` and ``field:*`` need a non-empty list.
* Field names are the schema's column names, exactly (``timestamp`` is also
  accepted for ``@timestamp``); an unknown name is a :class:`QueryError` that
  suggests close names.
* ``AND``/``OR``/``NOT``, ``+term``/``-term``, parentheses, ``field:(a OR b)``.
  Implicit operator between terms is ``OR`` (``default_operator``); as in
  Lucene, when a group has ``+required`` clauses, its plain clauses are optional.
  ``NOT x`` matches rows where x is null too (like a document lacking the field).
* The empty query and ``*`` match everything (``TRUE``).
"""

from __future__ import annotations

import calendar
import difflib
import functools
import ipaddress
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from luqum import tree
from luqum.exceptions import IllegalCharacterError, ParseError
from luqum.parser import parser

from taishi.schema import IP_FIELDS

__all__ = [
    "QueryError",
    "TEXT_FIELDS",
    "compile_query",
    "ip_key",
    "parse_time_value",
    "quote_ident",
    "register_functions",
    "resolve_field",
]

# String columns that hold free text: matched by case-insensitive "contains".
TEXT_FIELDS = frozenset(
    {"message", "event.original", "rule.description", "reason", "process.command_line"}
)
IP_FUNCTION = "taishi_ip_key"


class QueryError(ValueError):
    """A query that cannot be compiled; ``pos`` is the 0-based offset when known."""

    def __init__(self, message: str, pos: int | None = None):
        super().__init__(message if pos is None else f"{message} (at position {pos})")
        self.pos = pos
        self.reason = message


def quote_ident(name: str) -> str:
    """A SQL identifier for a column name (which contains dots and ``@``)."""
    return '"' + name.replace('"', '""') + '"'


def resolve_field(name: str, schema: pa.Schema, pos: int | None = None) -> str:
    """The schema column ``name`` refers to (exact match), or a :class:`QueryError`."""
    names = schema.names
    if name in names:
        return name
    if name == "timestamp" and "@timestamp" in names:  # the ECS name without its @
        return "@timestamp"
    shown = name if len(name) <= 80 else name[:77] + "..."
    hint = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    msg = f"unknown field {shown!r}"
    if hint:
        msg += "; did you mean " + " or ".join(hint) + "?"
    raise QueryError(msg, pos)


# --------------------------------------------------------------------------- IPs


@functools.lru_cache(maxsize=65536)
def ip_key(text: str | None) -> str | None:
    """A fixed-width, order-preserving key for an IP address (32 hex digits).

    IPv4 addresses are mapped into ``::ffff:0:0/96`` so ``10.0.0.1`` and
    ``::ffff:10.0.0.1`` have the same key. Not an address -> None.
    """
    if text is None:
        return None
    s = text
    if "%" in s:  # zone index (fe80::1%eth0) does not take part in comparison
        s = s.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(s)
    except ValueError:
        return None
    if addr.version == 4:
        return f"{0xFFFF00000000 | int(addr):032x}"
    return f"{int(addr):032x}"


def _net_keys(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, str]:
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        lo, hi = lo | 0xFFFF00000000, hi | 0xFFFF00000000
    return f"{lo:032x}", f"{hi:032x}"


def _ip_key_arrow(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    # Addresses repeat a lot: convert each distinct value once.
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = pc.dictionary_encode(arr)
    keys = pa.array([ip_key(v) for v in enc.dictionary.to_pylist()], type=pa.string())
    return pc.take(keys, enc.indices)


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = _OCTET + r"(\." + _OCTET + "){3}"
# IPv4 in plain SQL (fast, vectorised); anything with a ':' goes to the Python UDF.
_IP_MACRO = f"""
CREATE OR REPLACE TEMP MACRO {IP_FUNCTION}(s) AS
CASE
  WHEN s IS NULL THEN NULL
  WHEN contains(s, ':') THEN {IP_FUNCTION}_py(s)
  WHEN regexp_full_match(s, '{_IPV4_RE}') THEN
    '00000000000000000000ffff' || lower(lpad(hex(
      (CAST(split_part(s, '.', 1) AS BIGINT) << 24)
      + (CAST(split_part(s, '.', 2) AS BIGINT) << 16)
      + (CAST(split_part(s, '.', 3) AS BIGINT) << 8)
      + CAST(split_part(s, '.', 4) AS BIGINT)), 8, '0'))
  ELSE NULL
END
"""


def register_functions(con: Any) -> None:
    """Register the SQL functions compiled queries use on a DuckDB connection.

    ``taishi_ip_key(varchar) -> varchar`` is a temporary macro: IPv4 is
    computed in SQL, IPv6 by a vectorised Python UDF (``ipaddress``).
    """
    import duckdb

    try:
        con.create_function(
            IP_FUNCTION + "_py",
            _ip_key_arrow,
            [duckdb.sqltype("VARCHAR")],
            duckdb.sqltype("VARCHAR"),
            type="arrow",
            null_handling="special",
            side_effects=False,
        )
    except duckdb.Error as e:  # already registered on this connection
        if "already" not in str(e).lower():
            raise
    con.execute(_IP_MACRO)


# ------------------------------------------------------------------------- times

_UNITS = "yMwdhHms"
_MATH = re.compile(r"([+-])(\d+)([yMwdhHms])|/([yMwdhHms])")
_DATE_ONLY = {
    re.compile(r"^\d{4}$"): "y",
    re.compile(r"^\d{4}-\d{2}$"): "M",
    re.compile(r"^\d{4}-\d{2}-\d{2}$"): "d",
}


def _add(dt: datetime, n: int, unit: str) -> datetime:
    if unit in "yM":
        months = n * 12 if unit == "y" else n
        m = dt.month - 1 + months
        y, m = dt.year + m // 12, m % 12 + 1
        d = min(dt.day, calendar.monthrange(y, m)[1])
        return dt.replace(year=y, month=m, day=d)
    secs = {"w": 604800, "d": 86400, "h": 3600, "H": 3600, "m": 60, "s": 1}[unit]
    return dt + timedelta(seconds=n * secs)


def _floor(dt: datetime, unit: str) -> datetime:
    if unit == "y":
        return dt.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "M":
        return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "w":
        d = dt.replace(hour=0, minute=0, second=0, microsecond=0)
        return d - timedelta(days=d.weekday())
    if unit == "d":
        return dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit in "hH":
        return dt.replace(minute=0, second=0, microsecond=0)
    if unit == "m":
        return dt.replace(second=0, microsecond=0)
    return dt.replace(microsecond=0)


def _parse_instant(text: str) -> tuple[datetime, str | None]:
    """ISO-8601 (or epoch seconds) -> (UTC datetime, granularity unit or None)."""
    s = text.strip()
    for rx, unit in _DATE_ONLY.items():
        if rx.match(s):
            parts = [int(p) for p in s.split("-")] + [1, 1]
            try:
                return datetime(parts[0], parts[1], parts[2], tzinfo=timezone.utc), unit
            except ValueError as e:
                raise ValueError(str(e)) from None
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return datetime.fromtimestamp(float(s), tz=timezone.utc), None
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    elif len(s) > 5 and s[-5] in "+-" and s[-4:].isdigit() and s[-3] != ":" and "T" in s:
        s = s[:-2] + ":" + s[-2:]
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc), None


def _time_interval(text: str, now: datetime) -> tuple[datetime, datetime | None]:
    """A time value -> (start, end). ``end`` is None for an instant, else the
    exclusive end of the unit the value stands for (date-only or rounded)."""
    s = text.strip()
    if s == "now" or s.startswith("now") and s[3:4] in ("+", "-", "/"):
        anchor, unit, math = now, None, s[3:]
    elif "||" in s:
        head, math = s.split("||", 1)
        anchor, unit = _parse_instant(head)
        if math:
            unit = None
    else:
        anchor, unit = _parse_instant(s)
        math = ""
    pos = 0
    for m in _MATH.finditer(math):
        if m.start() != pos:
            raise ValueError(f"bad date math {math[pos:]!r}")
        pos = m.end()
        if m.group(4):
            unit = m.group(4)
            anchor = _floor(anchor, unit)
        else:
            unit = None
            n = int(m.group(2)) * (1 if m.group(1) == "+" else -1)
            anchor = _add(anchor, n, m.group(3))
    if pos != len(math):
        raise ValueError(f"bad date math {math[pos:]!r}")
    return anchor, (_add(anchor, 1, unit) if unit else None)


_AGO = re.compile(r"^(\d+)([smhdw])$")


def parse_time_value(value: datetime | str, now: datetime | None = None) -> datetime:
    """A ``since``/``until`` argument -> UTC datetime: a datetime, an ISO string,
    date math (``now-24h``) or a bare duration meaning that long ago (``24h``)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    m = _AGO.match(str(value).strip())
    if m:
        return _add(now, -int(m.group(1)), m.group(2))
    try:
        return _time_interval(str(value), now)[0]
    except (ValueError, OverflowError, OSError) as e:
        raise QueryError(f"not a time: {value!r} ({e})") from None


# ---------------------------------------------------------------------- compiler

_PARSE_LOCK = threading.Lock()
_SYNTAX_POS = re.compile(r"position (\d+)")


def _unescape_parts(raw: str) -> list[tuple[str, bool]]:
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            out.append((raw[i + 1], True))
            i += 2
        else:
            out.append((c, False))
            i += 1
    return out


_RE_CHECK: Any = None
_RE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _regex_error(pattern: str) -> str | None:
    """DuckDB's (RE2's) complaint about ``pattern``, or None if it compiles."""
    global _RE_CHECK
    import duckdb

    with _RE_LOCK:
        if _RE_CHECK is None:
            _RE_CHECK = duckdb.connect()
        try:
            _RE_CHECK.execute("SELECT regexp_matches('', ?)", [pattern]).fetchone()
        except duckdb.Error as e:
            return str(e).split("Error: ", 1)[-1]
    return None


def _check_regex(pattern: str, pos: int | None) -> None:
    err = _regex_error(pattern)
    if err:
        raise QueryError(f"bad regular expression /{pattern[:80]}/: {err}", pos)


class _Value:
    """A term's text: plain (unescaped), whether it has wildcards, its LIKE pattern."""

    __slots__ = ("text", "wild", "like", "phrase", "regex")

    def __init__(self, node: tree.Item):
        self.phrase = isinstance(node, tree.Phrase)
        self.regex = isinstance(node, tree.Regex)
        raw = node.value
        if self.phrase:
            parts = [(c, True) for c, _ in _unescape_parts(raw[1:-1])]
        elif self.regex:
            parts = [(c, True) for c in raw[1:-1].replace("\\/", "/")]
        else:
            parts = _unescape_parts(raw)
        self.text = "".join(c for c, _ in parts)
        self.wild = any(c in "*?" and not esc for c, esc in parts)
        like = []
        for c, esc in parts:
            if c in "*?" and not esc:
                like.append("%" if c == "*" else "_")
            elif c in "%_\\":
                like.append("\\" + c)
            else:
                like.append(c)
        self.like = "".join(like)

    @property
    def star(self) -> bool:
        return not self.phrase and not self.regex and self.text == "*" and self.wild


class _Compiler:
    def __init__(self, schema: pa.Schema, default_fields: Sequence[str], now: datetime, op: str):
        self.schema = schema
        self.types = {f.name: f.type for f in schema}
        self.defaults = [f for f in default_fields if f in self.types]
        self.now = now
        self.op = op
        self.params: list[Any] = []

    # -- structure ---------------------------------------------------------
    def node(self, n: tree.Item, field: str | None = None) -> str:
        if isinstance(n, tree.SearchField):
            if field is not None:
                raise QueryError(f"nested field {n.name!r} inside field {field!r}", n.pos)
            name = "".join(c for c, _ in _unescape_parts(n.name))
            if name == "_exists_":
                if not isinstance(n.expr, (tree.Word, tree.Phrase)):
                    raise QueryError("_exists_ takes one field name", n.pos)
                target = resolve_field(_Value(n.expr).text, self.schema, n.expr.pos)
                return self.exists(target)
            col = resolve_field(name, self.schema, n.pos)
            if isinstance(n.expr, tree.Prohibit) and self._numeric(col):
                # field:-5 is a negative number, not NOT field:5
                inner = n.expr.a
                if isinstance(inner, tree.Word):
                    return self.leaf(col, inner, negative=True)
            return self.node(n.expr, col)
        if isinstance(n, (tree.Group, tree.FieldGroup)):
            return "(" + self.node(n.expr, field) + ")"
        if isinstance(n, tree.AndOperation):
            return " AND ".join(self.wrap(c, field) for c in n.children)
        if isinstance(n, tree.OrOperation):
            return " OR ".join(self.wrap(c, field) for c in n.children)
        if isinstance(n, tree.UnknownOperation):
            return self.boolean(n.children, field)
        if isinstance(n, (tree.Not, tree.Prohibit)):
            return f"(({self.node(n.a, field)}) IS NOT TRUE)"
        if isinstance(n, tree.Plus):
            return self.node(n.a, field)
        if isinstance(n, tree.Boost):
            return self.node(n.expr, field)
        if isinstance(n, (tree.Range, tree.From, tree.To)):
            if field is None:
                raise QueryError("a range needs a field (field:[a TO b])", n.pos)
            return self.range(field, n)
        if isinstance(n, (tree.Word, tree.Phrase, tree.Regex)):
            if field is None:
                return self.bare(n)
            return self.leaf(field, n)
        if isinstance(n, tree.Fuzzy):
            raise QueryError("fuzzy queries (term~) are not supported", n.pos)
        if isinstance(n, tree.Proximity):
            raise QueryError('proximity queries ("a b"~n) are not supported', n.pos)
        raise QueryError(f"unsupported query element {type(n).__name__}", getattr(n, "pos", None))

    def wrap(self, n: tree.Item, field: str | None) -> str:
        return "(" + self.node(n, field) + ")"

    def boolean(self, children: Iterable[tree.Item], field: str | None) -> str:
        # Each clause is compiled with its own parameter list, so clauses can be
        # reordered (or dropped) without the parameters going out of step.
        must, should, must_not = [], [], []
        for c in children:
            if isinstance(c, tree.Plus):
                must.append(self.sub(lambda c=c: self.wrap(c.a, field)))
            elif isinstance(c, (tree.Prohibit, tree.Not)):
                must_not.append(
                    self.sub(lambda c=c: f"(({self.node(c.a, field)}) IS NOT TRUE)")
                )
            elif self.op == "AND":
                must.append(self.sub(lambda c=c: self.wrap(c, field)))
            else:
                should.append(self.sub(lambda c=c: self.wrap(c, field)))
        parts = must + must_not
        if should and not must:
            parts.append(("(" + " OR ".join(s for s, _ in should) + ")",
                          [p for _, ps in should for p in ps]))
        for _, ps in parts:
            self.params.extend(ps)
        return " AND ".join(s for s, _ in parts) if parts else "TRUE"

    def sub(self, fn) -> tuple[str, list]:
        saved, self.params = self.params, []
        try:
            return fn(), self.params
        finally:
            self.params = saved

    # -- helpers -------------------------------------------------------------
    def p(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def _numeric(self, col: str) -> bool:
        t = self.types[col]
        return pa.types.is_integer(t) or pa.types.is_floating(t)

    def _is_ip(self, col: str) -> bool:
        return col in IP_FIELDS or col.endswith(".ip")

    def exists(self, col: str) -> str:
        q = quote_ident(col)
        if pa.types.is_list(self.types[col]):
            return f"({q} IS NOT NULL AND len({q}) > 0)"
        return f"{q} IS NOT NULL"

    def _on(self, col: str, pred) -> str:
        """Apply ``pred(expr, element_type)`` to a column; lists: any element."""
        t = self.types[col]
        q = quote_ident(col)
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return f"len(list_filter({q}, lambda _v: {pred('_v', t.value_type)})) > 0"
        return pred(q, t)

    # -- bare terms ------------------------------------------------------------
    def bare(self, n: tree.Item) -> str:
        v = _Value(n)
        if v.star:
            return "TRUE"
        if v.regex:
            _check_regex(v.text, n.pos)
        if not self.defaults:
            return "FALSE"

        def pred(e: str, t: pa.DataType) -> str:
            if not pa.types.is_string(t):
                e = f"CAST({e} AS VARCHAR)"
            if v.regex:
                return f"regexp_matches({e}, {self.p(v.text)})"
            if v.wild:
                return f"{e} ILIKE {self.p('%' + v.like + '%')} ESCAPE '\\'"
            return f"contains(lower({e}), lower({self.p(v.text)}))"

        return " OR ".join("(" + self._on(f, pred) + ")" for f in self.defaults)

    # -- field:value -------------------------------------------------------------
    def leaf(self, col: str, n: tree.Item, negative: bool = False) -> str:
        v = _Value(n)
        if negative:
            v.text = "-" + v.text
        pos = n.pos
        if v.star:
            return self.exists(col)
        t = self.types[col]
        elem = t.value_type if pa.types.is_list(t) else t
        if pa.types.is_struct(elem):
            raise QueryError(f"{col} is a geo point: only {col}:* (has one) can be searched", pos)
        if v.regex:
            _check_regex(v.text, pos)
            text_like = col in TEXT_FIELDS
            fn = "regexp_matches" if text_like else "regexp_full_match"

            def rx(e: str, _t: pa.DataType) -> str:
                if not pa.types.is_string(_t):
                    e = f"CAST({e} AS VARCHAR)"
                return f"{fn}({e}, {self.p(v.text)})"

            return self._on(col, rx)
        if pa.types.is_timestamp(elem):
            if v.wild:
                raise QueryError(f"wildcards are not supported on time field {col}", pos)
            return self._on(col, lambda e, _t: self.time_cmp(e, "=", v.text, pos))
        if pa.types.is_integer(elem) or pa.types.is_floating(elem):
            if v.wild:
                raise QueryError(f"wildcards are not supported on numeric field {col}", pos)
            num = self.number(col, v.text, pos)
            return self._on(col, lambda e, _t: f"{e} = {self.p(num)}")
        if pa.types.is_boolean(elem):
            b = v.text.lower()
            if b not in ("true", "false"):
                raise QueryError(f"{col} is boolean: use true or false, not {v.text!r}", pos)
            return self._on(col, lambda e, _t: f"{e} = {self.p(b == 'true')}")
        if self._is_ip(col):
            if v.wild:  # not in Elasticsearch, but handy: match the text
                return self._on(col, lambda e, _t: f"{e} LIKE {self.p(v.like)} ESCAPE '\\'")
            return self._on(col, lambda e, _t: self.ip_match(e, col, v.text, pos))
        if col in TEXT_FIELDS:
            if v.wild:
                return self._on(
                    col, lambda e, _t: f"{e} ILIKE {self.p('%' + v.like + '%')} ESCAPE '\\'"
                )
            return self._on(col, lambda e, _t: f"contains(lower({e}), lower({self.p(v.text)}))")
        if v.wild:
            return self._on(col, lambda e, _t: f"{e} LIKE {self.p(v.like)} ESCAPE '\\'")
        return self._on(col, lambda e, _t: f"{e} = {self.p(v.text)}")

    def number(self, col: str, text: str, pos: int | None) -> int | float:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)
        except ValueError:
            raise QueryError(f"{col} is numeric; {text[:80]!r} is not a number", pos) from None
        if f != f or f in (float("inf"), float("-inf")):
            raise QueryError(f"{col} is numeric; {text[:80]!r} is not a finite number", pos)
        return f

    def ip_match(self, e: str, col: str, text: str, pos: int | None) -> str:
        s = text.strip()
        if "/" in s:
            try:
                net = ipaddress.ip_network(s, strict=False)
            except ValueError:
                raise QueryError(f"{col} is an IP field; {text[:80]!r} is not a CIDR", pos) from None
            lo, hi = _net_keys(net)
            return f"{IP_FUNCTION}({e}) BETWEEN {self.p(lo)} AND {self.p(hi)}"
        key = ip_key(s)
        if key is None:
            raise QueryError(f"{col} is an IP field; {text[:80]!r} is not an IP address", pos)
        return f"{IP_FUNCTION}({e}) = {self.p(key)}"

    def time_cmp(self, e: str, op: str, text: str, pos: int | None) -> str:
        try:
            start, end = _time_interval(text, self.now)
        except (ValueError, OverflowError, OSError) as err:
            raise QueryError(f"not a time or date math: {text[:80]!r} ({err})", pos) from None
        if op == "=":
            if end is None:
                return f"{e} = {self.p(start)}"
            return f"({e} >= {self.p(start)} AND {e} < {self.p(end)})"
        if op == ">=":
            return f"{e} >= {self.p(start)}"
        if op == "<":
            return f"{e} < {self.p(start)}"
        if op == ">":
            return f"{e} >= {self.p(end)}" if end else f"{e} > {self.p(start)}"
        # <=
        return f"{e} < {self.p(end)}" if end else f"{e} <= {self.p(start)}"

    # -- ranges ---------------------------------------------------------------------
    def _bound(self, b: tree.Item) -> str | None:
        if isinstance(b, tree.Prohibit) and isinstance(b.a, (tree.Word, tree.Phrase)):
            return "-" + _Value(b.a).text
        if isinstance(b, (tree.Word, tree.Phrase)):
            v = _Value(b)
            return None if v.star else v.text
        raise QueryError("a range bound must be a term or a phrase", getattr(b, "pos", None))

    def range(self, col: str, n: tree.Item) -> str:
        if isinstance(n, tree.Range):
            lo, hi = self._bound(n.low), self._bound(n.high)
            lo_op = ">=" if n.include_low else ">"
            hi_op = "<=" if n.include_high else "<"
        elif isinstance(n, tree.From):
            lo, hi, lo_op, hi_op = self._bound(n.a), None, (">=" if n.include else ">"), "<"
        else:
            lo, hi, lo_op, hi_op = None, self._bound(n.a), ">", ("<=" if n.include else "<")
        if lo is None and hi is None:
            return self.exists(col)
        t = self.types[col]
        elem = t.value_type if pa.types.is_list(t) else t
        pos = n.pos

        def one(e: str, op: str, text: str) -> str:
            if pa.types.is_timestamp(elem):
                return self.time_cmp(e, op, text, pos)
            if pa.types.is_integer(elem) or pa.types.is_floating(elem):
                return f"{e} {op} {self.p(self.number(col, text, pos))}"
            if self._is_ip(col):
                key = ip_key(text.strip())
                if key is None:
                    raise QueryError(f"{col} is an IP field; {text[:80]!r} is not an IP address", pos)
                return f"{IP_FUNCTION}({e}) {op} {self.p(key)}"
            if pa.types.is_boolean(elem):
                raise QueryError(f"ranges are not supported on boolean field {col}", pos)
            return f"{e} {op} {self.p(text)}"

        def pred(e: str, _t: pa.DataType) -> str:
            parts = []
            if lo is not None:
                parts.append(one(e, lo_op, lo))
            if hi is not None:
                parts.append(one(e, hi_op, hi))
            return "(" + " AND ".join(parts) + ")"

        return self._on(col, pred)


def compile_query(
    text: str,
    schema: pa.Schema,
    default_fields: Sequence[str],
    *,
    now: datetime | None = None,
    default_operator: str = "OR",
) -> tuple[str, list]:
    """Compile a Lucene query string to ``(where_sql, params)`` for DuckDB.

    ``schema`` gives the column names and types fields resolve against;
    ``default_fields`` are searched by bare terms (those not in the schema are
    skipped). ``now`` anchors date math (default: the current UTC time).
    Raises :class:`QueryError` for syntax errors, unknown fields and values
    that do not fit a field's type.
    """
    if default_operator not in ("OR", "AND"):
        raise ValueError("default_operator must be 'OR' or 'AND'")
    if text is None or not text.strip() or text.strip() == "*":
        return "TRUE", []
    try:
        with _PARSE_LOCK:  # the ply parser keeps state: not thread-safe
            ast = parser.parse(text)
    except IllegalCharacterError as e:
        m = _SYNTAX_POS.search(str(e))
        raise QueryError(f"syntax error: {e}", int(m.group(1)) if m else None) from None
    except ParseError as e:
        m = _SYNTAX_POS.search(str(e))
        raise QueryError(f"syntax error: {e}", int(m.group(1)) if m else len(text)) from None
    except RecursionError:
        raise QueryError("query nests too deeply") from None
    except Exception as e:  # luqum can fail inside its own actions (e.g. "a^.")
        raise QueryError(f"syntax error: {type(e).__name__}: {e}", None) from None
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    c = _Compiler(schema, default_fields, now, default_operator)
    try:
        sql = c.node(ast)
    except RecursionError:
        raise QueryError("query nests too deeply") from None
    return sql, c.params
