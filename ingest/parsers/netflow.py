"""NetFlow v5/v9/IPFIX flow records (decoded by ``ingest.collectors.netflow``) -> ECS.

Input: one JSON object per raw row (``event.original``), as the collector
writes it: ``ver``, ``exporter``, ``domain``, ``tid``, ``export_ms``,
``uptime_ms`` / ``init_ms`` and the flow's IPFIX information elements by
IANA name (see the collector's module doc).

Mapping: ``source.ip``/``port``, ``destination.ip``/``port``,
``network.transport`` (IANA protocol keyword: tcp, udp, icmp, ipv6-icmp ...),
``source.bytes``/``packets`` (octet/packetDeltaCount, else TotalCount),
``destination.bytes``/``packets`` from RFC 5103 reverse elements (biflows),
``network.bytes``/``packets`` (both directions), ``event.start``/``end``
(flowStart/End Seconds/Milli/Micro/Nanoseconds, DeltaMicroseconds, or
sysUpTime-relative flowStart/EndSysUpTime against the header's export time
and sysUpTime (v5/v9) or the exporter's systemInitTimeMilliseconds (IPFIX)),
``event.duration``, ``@timestamp`` = end (else start, else export time),
``observer.ip`` = exporter, ``source.mac``/``destination.mac``,
``related.ip``; ``event.kind=event``, ``event.category=network``,
``event.type=connection``, ``event.module=netflow``,
``event.dataset=netflow.flow``, ``observer.type=netflow``. Everything else
(protocol number, TCP flags as number and names, interfaces, version,
template, domain, other elements) goes to ``taishi.extra`` under ``netflow``.

Speed: a batch is read column-wise: the collector's column form of the records
(``netflow.decoded``, on the embedded bus) or else ``pyarrow.json`` turns the
JSON lines into Arrow columns (one per information element), and the mapping
above is Arrow / numpy arithmetic over whole columns (:func:`map_columns`); no
Python object is made per record. Rows the column path cannot take exactly as the per-record
mapping (:func:`map_record`) would — invalid JSON, a non-object, an address
that is not text, no address at all, a value of an unexpected type, a number
beyond int64 — go through :func:`map_record` one by one, and a test checks
that both give identical events.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from taishi.schema import EVENT_FIELDS, EVENT_SCHEMA

from . import (
    INVALID_UTF8_HINT,
    MAX_RECORD_BYTES,
    ParseResult,
    _register,
    deadletter,
    event_ids,
    parse_lines,
    precheck,
    raw_rows,
    result,
    safe_parser,
)

TRANSPORT = {1: "icmp", 2: "igmp", 4: "ipv4", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp",
             51: "ah", 58: "ipv6-icmp", 89: "ospf", 103: "pim", 112: "vrrp", 132: "sctp", 136: "udplite"}
TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
             (0x40, "ECE"), (0x80, "CWR"))
_NTP_OFFSET = 2_208_988_800  # 1900 -> 1970, seconds

# elements the ECS mapping consumes (not repeated in taishi.extra)
_MAPPED = frozenset({
    "ver", "exporter", "domain", "tid", "export_ms", "uptime_ms", "init_ms",
    "sourceIPv4Address", "sourceIPv6Address", "destinationIPv4Address", "destinationIPv6Address",
    "sourceTransportPort", "destinationTransportPort", "protocolIdentifier", "tcpControlBits",
    "octetDeltaCount", "packetDeltaCount", "octetTotalCount", "packetTotalCount",
    "reverseOctetDeltaCount", "reversePacketDeltaCount", "reverseOctetTotalCount", "reversePacketTotalCount",
    "flowStartSysUpTime", "flowEndSysUpTime", "flowStartSeconds", "flowEndSeconds",
    "flowStartMilliseconds", "flowEndMilliseconds", "flowStartMicroseconds", "flowEndMicroseconds",
    "flowStartNanoseconds", "flowEndNanoseconds", "flowStartDeltaMicroseconds", "flowEndDeltaMicroseconds",
    "sourceMacAddress", "destinationMacAddress",
})


def tcp_flag_names(flags: int) -> list[str]:
    return [n for bit, n in TCP_FLAGS if flags & bit]


_FLAG_NAMES = [tcp_flag_names(i) for i in range(256)]


def _ntp_ms(v: int) -> float:
    """dateTimeMicro/Nanoseconds (RFC 7011 6.1.9: NTP 64-bit) -> unix ms."""
    return ((v >> 32) - _NTP_OFFSET) * 1000 + (v & 0xFFFFFFFF) * 1000 / 4294967296


def _times(r: dict) -> tuple[float | None, float | None]:
    """(start, end) in unix ms."""
    for s_key, e_key, conv in (
        ("flowStartMilliseconds", "flowEndMilliseconds", float),
        ("flowStartSeconds", "flowEndSeconds", lambda v: v * 1000.0),
        ("flowStartMicroseconds", "flowEndMicroseconds", _ntp_ms),
        ("flowStartNanoseconds", "flowEndNanoseconds", _ntp_ms),
    ):
        s, e = r.get(s_key), r.get(e_key)
        if s is not None or e is not None:
            return (conv(s) if s is not None else None), (conv(e) if e is not None else None)
    export = r.get("export_ms")
    if "flowStartDeltaMicroseconds" in r or "flowEndDeltaMicroseconds" in r:
        if export is None:
            return None, None
        s, e = r.get("flowStartDeltaMicroseconds"), r.get("flowEndDeltaMicroseconds")
        return (export - s / 1000 if s is not None else None), (export - e / 1000 if e is not None else None)
    s, e = r.get("flowStartSysUpTime"), r.get("flowEndSysUpTime")
    if s is None and e is None:
        return None, None
    uptime, init = r.get("uptime_ms"), r.get("init_ms")
    if uptime is not None and export is not None:
        def rel(v: int) -> float:  # signed 32-bit distance to the header's sysUpTime (wraps after 49.7 days)
            d = (v - uptime) & 0xFFFFFFFF
            return export + (d - 0x100000000 if d >= 0x80000000 else d)
    elif init is not None:
        def rel(v: int) -> float:
            return init + v
    else:
        return None, None
    return (rel(s) if s is not None else None), (rel(e) if e is not None else None)


def _us(ms: float | None) -> int | None:
    """Unix ms -> unix µs (an int Arrow reads as a UTC timestamp), None when out of range."""
    if ms is None:
        return None
    us = int(round(ms * 1000))
    return us if -62_135_596_800_000_000 < us < 253_402_300_800_000_000 else None


# the event columns a flow fills, in the order map_record returns them
COLUMNS = (
    "@timestamp", "event.start", "event.end", "event.duration", "source.ip", "source.port", "destination.ip",
    "destination.port", "network.transport", "source.bytes", "source.packets", "destination.bytes",
    "destination.packets", "network.bytes", "network.packets", "source.mac", "destination.mac", "observer.ip",
    "related.ip", "taishi.extra",
)
CONSTANT = {"event.kind": "event", "event.category": "network", "event.type": "connection",
            "event.module": "netflow", "event.dataset": "netflow.flow", "observer.type": "netflow"}


def map_record(r: dict) -> tuple | str:
    """One decoded flow record -> values for :data:`COLUMNS` (times as unix µs), or why it is no flow."""
    if not isinstance(r, dict):
        return "netflow record is not a JSON object"
    g = r.get
    src = g("sourceIPv4Address") or g("sourceIPv6Address")
    dst = g("destinationIPv4Address") or g("destinationIPv6Address")
    bad_addr = {}
    if src is not None and not (type(src) is str and ("." in src or ":" in src)):  # odd-sized address -> hex
        bad_addr["source_address_raw"], src = src, None
    if dst is not None and not (type(dst) is str and ("." in dst or ":" in dst)):
        bad_addr["destination_address_raw"], dst = dst, None
    if src is None and dst is None:
        return "netflow record without a valid source or destination address"
    proto = g("protocolIdentifier")
    sb = g("octetDeltaCount")
    sb = g("octetTotalCount") if sb is None else sb
    sp = g("packetDeltaCount")
    sp = g("packetTotalCount") if sp is None else sp
    db = g("reverseOctetDeltaCount")
    db = g("reverseOctetTotalCount") if db is None else db
    dp = g("reversePacketDeltaCount")
    dp = g("reversePacketTotalCount") if dp is None else dp
    if not all(type(x) is int or x is None for x in (sb, sp, db, dp)):  # odd-sized counters arrive as hex
        sb, sp, db, dp = (x if type(x) is int else None for x in (sb, sp, db, dp))
    start, end = _times(r)
    start_us, end_us = _us(start), _us(end)
    ts = end_us if end_us is not None else start_us if start_us is not None else _us(r.get("export_ms"))
    duration = int(round((end - start) * 1_000_000)) if start_us is not None and end_us is not None and end >= start else None
    extra: dict[str, Any] = {"version": g("ver"), "template": g("tid"), "domain": g("domain"), **bad_addr}
    if proto is not None:
        extra["iana_number"] = proto
    flags = g("tcpControlBits")
    if isinstance(flags, int):
        extra["tcp_flags"] = flags
        extra["tcp_flags_names"] = _FLAG_NAMES[flags & 0xFF] if flags < 256 else tcp_flag_names(flags)
    for k in r.keys() - _MAPPED:
        extra[k] = r[k]
    return (
        ts, start_us, end_us, duration, src, r.get("sourceTransportPort"), dst, r.get("destinationTransportPort"),
        TRANSPORT.get(proto) if isinstance(proto, int) else None, sb, sp, db, dp,
        (sb or 0) + (db or 0) if sb is not None or db is not None else None,
        (sp or 0) + (dp or 0) if sp is not None or dp is not None else None,
        r.get("sourceMacAddress"), r.get("destinationMacAddress"), r.get("exporter"),
        [x for x in (src, dst) if x is not None] if src != dst else [src],
        orjson.dumps({"netflow": extra}, default=str, option=orjson.OPT_SORT_KEYS).decode(),
    )


def _events(raw: pa.Table, idx: list[int], rows: list[tuple]) -> pa.Table:
    """EVENT_SCHEMA batch built column-wise (no per-row dicts); ids and raw fields from ``raw``."""
    n = len(rows)
    if n == 0:
        return EVENT_SCHEMA.empty_table()
    take = raw.take(pa.array(idx, pa.int64())) if n != raw.num_rows else raw
    cols: dict[str, Any] = {}
    for name, values in zip(COLUMNS, zip(*rows)):
        try:
            cols[name] = pa.array(values, EVENT_FIELDS[name])
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):  # a bad value: null it
            cols[name] = pa.array([_clean(name, v) for v in values], EVENT_FIELDS[name])
    for name, value in CONSTANT.items():
        cols[name] = pa.array([value] * n, pa.string())
    for name in ("taishi.source", "log.offset", "log.file.path", "event.original"):
        cols[name] = take.column(name).combine_chunks()
    cols["event.id"] = event_ids(cols["taishi.source"], cols["log.offset"], cols["event.original"])
    arrays = [cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def _clean(name: str, v: Any) -> Any:
    typ = EVENT_FIELDS[name]
    if v is None:
        return None
    if typ == pa.int64() or pa.types.is_timestamp(typ):
        return v if isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 63) else None
    if typ == pa.string():
        return v if isinstance(v, str) else None
    if pa.types.is_list(typ):
        return [x for x in v if isinstance(x, str)] if isinstance(v, list) else None
    return None


@_register("netflow")
@safe_parser
def parse(raw: pa.Table) -> ParseResult:
    """Decoded NetFlow/IPFIX records (JSON) -> ECS flow events; bad rows -> dead letters."""
    cols = _read_columns(raw) if raw.num_rows else None
    if cols is None:
        return parse_lines(raw, _parse_line, build=_events)
    fast, events = map_columns(raw, cols)
    if fast.all():
        return result(events, [])
    kept, rows, dls = _per_record(raw, np.flatnonzero(~fast))
    if rows:  # back into raw order
        order = np.argsort(np.concatenate([np.flatnonzero(fast), np.asarray(kept, np.int64)]), kind="stable")
        events = pa.concat_tables([events, _events(raw, kept, rows)]).take(pa.array(order))
    return result(events, dls)


def _per_record(raw: pa.Table, idx: np.ndarray) -> tuple[list[int], list[tuple], list[dict]]:
    """:func:`map_record` on the rows ``idx``: (rows kept, their values, dead letters)."""
    kept: list[int] = []
    rows: list[tuple] = []
    dls: list[dict] = []
    for i, (source, offset, path, hint, line) in zip(idx.tolist(), raw_rows(raw.take(pa.array(idx, pa.int64())))):
        line = line or ""
        why = precheck(source, offset, hint, line)
        if why is None:
            out = _parse_line(source, offset, path, line, None)
            if not isinstance(out, str):
                kept.append(i)
                rows.append(out)
                continue
            why = out
        dls.append(deadletter(source, offset, line, why))
    return kept, rows, dls


# --- column path ---------------------------------------------------------------------------------------

_U64_TIMES = U64_TIMES = ("flowStartMicroseconds", "flowEndMicroseconds", "flowStartNanoseconds", "flowEndNanoseconds")
# the column the collector adds to raw batches on the embedded bus: each record's JSON keys as
# columns (ingest.collectors.netflow.raw_batch), read instead of the JSON text
DECODED = "netflow.decoded"
_INT_KEYS = ("ver", "domain", "tid", "export_ms", "uptime_ms", "init_ms", "sourceTransportPort",
             "destinationTransportPort", "protocolIdentifier", "tcpControlBits", "octetDeltaCount",
             "packetDeltaCount", "octetTotalCount", "packetTotalCount", "reverseOctetDeltaCount",
             "reversePacketDeltaCount", "reverseOctetTotalCount", "reversePacketTotalCount",
             "flowStartSysUpTime", "flowEndSysUpTime", "flowStartSeconds", "flowEndSeconds",
             "flowStartMilliseconds", "flowEndMilliseconds", "flowStartDeltaMicroseconds", "flowEndDeltaMicroseconds")
_STR_KEYS = ("exporter", "sourceIPv4Address", "sourceIPv6Address", "destinationIPv4Address",
             "destinationIPv6Address", "sourceMacAddress", "destinationMacAddress")
_EXPLICIT = pa.schema([pa.field(k, pa.int64()) for k in _INT_KEYS] + [pa.field(k, pa.uint64()) for k in _U64_TIMES]
                      + [pa.field(k, pa.string()) for k in _STR_KEYS])
_INFER = pajson.ParseOptions(newlines_in_values=False)
_TYPED = pajson.ParseOptions(explicit_schema=_EXPLICIT, newlines_in_values=False, unexpected_field_behavior="infer")
_INT_SET = frozenset(_INT_KEYS + _U64_TIMES)
_STR_SET = frozenset(_STR_KEYS)
_FLAG_JSON = pa.array([orjson.dumps(x).decode() for x in _FLAG_NAMES], pa.string())
_TRANSPORT_KEYS = pa.array(list(TRANSPORT), pa.int64())
_TRANSPORT_VALS = pa.array(list(TRANSPORT.values()), pa.string())
_US_MIN, _US_MAX = -62_135_596_800_000_000, 253_402_300_800_000_000
_COMMA, _EMPTY = pa.scalar(",", pa.string()), pa.scalar("", pa.string())


def _read_columns(raw: pa.Table) -> pa.Table | None:
    """The batch's JSON records as one Arrow column per element, or None when the batch must
    take the per-record path as a whole (a line that is not a one-line JSON object, an element
    whose type varies, a number out of range, a record over the size limit ...)."""
    orig = raw.column("event.original")
    if orig.null_count or pc.any(pc.equal(raw.column("hint"), INVALID_UTF8_HINT)).as_py():
        return None
    if pc.max(pc.binary_length(orig)).as_py() * 4 > MAX_RECORD_BYTES:
        return None
    if not pc.all(pc.and_(pc.starts_with(orig, "{"), pc.ends_with(orig, "}"))).as_py():
        return None
    t = _decoded(raw)
    if t is not None:
        return t if _types_ok(t) else None
    flat = orig.combine_chunks() if isinstance(orig, pa.ChunkedArray) else orig
    one = pa.ListArray.from_arrays(pa.array([0, len(flat)], pa.int32()), flat)
    data = pc.binary_join(one, "\n")[0].as_buffer().to_pybytes()
    if b"null" in data:
        # an explicit null is kept in taishi.extra, an absent key is not: such rows are read as an
        # empty object here (no address, so map_columns leaves them to the per-record path)
        nul = pc.fill_null(pc.match_substring(flat, "null"), False)
        flat = pc.if_else(nul, pa.scalar("{}", pa.string()), flat)
        one = pa.ListArray.from_arrays(pa.array([0, len(flat)], pa.int32()), flat)
        data = pc.binary_join(one, "\n")[0].as_buffer().to_pybytes()
    t = None
    for opts in (_INFER, _TYPED):  # inference is fastest; a NTP time beyond int64 needs the typed read
        try:
            t = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(use_threads=False,
                                                                                  block_size=len(data) + 1),
                                 parse_options=opts)
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
            continue
    if t is None or t.num_rows != raw.num_rows or not _types_ok(t):
        return None
    return t.combine_chunks()


def _types_ok(t: pa.Table) -> bool:
    """The decoder writes numbers and text only, each element always the same kind."""
    for f in t.schema:
        if not (pa.types.is_integer(f.type) or pa.types.is_string(f.type)):
            return False
        if (f.name in _INT_SET and not pa.types.is_integer(f.type)) or (f.name in _STR_SET and not pa.types.is_string(f.type)):
            return False
    return True


def _decoded(raw: pa.Table) -> pa.Table | None:
    """The collector's column form of the batch (:data:`DECODED`), when every row has it."""
    if DECODED not in raw.column_names:
        return None
    c = raw.column(DECODED)
    if not pa.types.is_struct(c.type) or c.null_count:
        return None
    arr = c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()
    return pa.Table.from_struct_array(arr) if arr.type.num_fields else None


def _col(t: pa.Table, name: str, typ: pa.DataType) -> pa.Array:
    if name in t.column_names:
        c = t.column(name)
        return (c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()) if isinstance(c, pa.ChunkedArray) else c
    return pa.nulls(t.num_rows, typ)


def _f64(a: pa.Array) -> np.ndarray:
    """As float(v) per value: a number beyond 2**53 is rounded, not refused (Arrow's safe cast would)."""
    return pc.cast(a, pa.float64(), safe=False).to_numpy(zero_copy_only=False)


def _ntp_ms_cols(v: pa.Array) -> np.ndarray:
    """dateTimeMicro/Nanoseconds (NTP 64-bit) -> unix ms, as :func:`_ntp_ms` computes it."""
    u = pc.fill_null(v, 0).to_numpy(zero_copy_only=False).astype(np.uint64)
    sec = (u >> np.uint64(32)).astype(np.int64) - _NTP_OFFSET
    frac = (u & np.uint64(0xFFFFFFFF)).astype(np.int64) * 1000
    out = (sec * 1000).astype(np.float64) + frac.astype(np.float64) / 4294967296
    return np.where(pc.is_valid(v).to_numpy(zero_copy_only=False), out, np.nan)


def _times_cols(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) unix ms per row (NaN = none), the column form of :func:`_times`."""
    n = t.num_rows
    g = lambda k: _col(t, k, pa.int64())  # noqa: E731
    start = np.full(n, np.nan)
    end = np.full(n, np.nan)
    done = np.zeros(n, dtype=bool)

    def put(mask: np.ndarray, s: np.ndarray, e: np.ndarray) -> None:
        nonlocal done
        m = mask & ~done
        start[m], end[m] = s[m], e[m]
        done |= m

    def valid(a: pa.Array) -> np.ndarray:
        return pc.is_valid(a).to_numpy(zero_copy_only=False)

    for sk, ek, conv in (("flowStartMilliseconds", "flowEndMilliseconds", lambda a: _f64(a)),
                         ("flowStartSeconds", "flowEndSeconds", lambda a: _f64(a) * 1000.0),
                         ("flowStartMicroseconds", "flowEndMicroseconds", _ntp_ms_cols),
                         ("flowStartNanoseconds", "flowEndNanoseconds", _ntp_ms_cols)):
        if sk in t.column_names or ek in t.column_names:
            s_a, e_a = g(sk), g(ek)
            put(valid(s_a) | valid(e_a), conv(s_a), conv(e_a))
    export = g("export_ms")
    exp = _f64(export)
    if "flowStartDeltaMicroseconds" in t.column_names or "flowEndDeltaMicroseconds" in t.column_names:
        s_a, e_a = g("flowStartDeltaMicroseconds"), g("flowEndDeltaMicroseconds")
        fam = valid(s_a) | valid(e_a)
        put(fam, exp - _f64(s_a) / 1000, exp - _f64(e_a) / 1000)  # NaN when export is missing, as _times
    s_a, e_a = g("flowStartSysUpTime"), g("flowEndSysUpTime")
    fam = valid(s_a) | valid(e_a)
    if fam.any():
        up = g("uptime_ms")
        use_up = valid(up) & valid(export)
        upn = pc.fill_null(up, 0).to_numpy(zero_copy_only=False)
        expn = pc.fill_null(export, 0).to_numpy(zero_copy_only=False)
        init = _f64(g("init_ms"))

        def rel(a: pa.Array) -> np.ndarray:
            v = pc.fill_null(a, 0).to_numpy(zero_copy_only=False).astype(np.int64)
            d = (v - upn) & 0xFFFFFFFF
            d = np.where(d >= 0x80000000, d - 0x100000000, d)
            by_up = (expn + d).astype(np.float64)
            by_init = init + v.astype(np.float64)
            return np.where(valid(a), np.where(use_up, by_up, by_init), np.nan)

        put(fam, rel(s_a), rel(e_a))
    return start, end


def _us_cols(ms: np.ndarray) -> np.ndarray:
    """Unix ms -> unix µs as float (NaN = none / out of range), like :func:`_us`."""
    with np.errstate(invalid="ignore", over="ignore"):
        us = np.round(ms * 1000)
        return np.where((us > _US_MIN) & (us < _US_MAX), us, np.nan)


def _ts(us: np.ndarray) -> pa.Array:
    valid = ~np.isnan(us)
    a = pa.array(np.where(valid, us, 0).astype(np.int64), mask=~valid)
    return a.cast(pa.timestamp("us", tz="UTC"))


def _json_values(a: pa.Array) -> pa.Array:
    """Each value as JSON text (numbers as they are; text via orjson, each distinct value once)."""
    if pa.types.is_integer(a.type):
        return pc.cast(a, pa.string())
    if pa.types.is_null(a.type):
        return pa.nulls(len(a), pa.string())
    d = pc.dictionary_encode(a)
    vals = pa.array([orjson.dumps(v).decode() for v in d.dictionary.to_pylist()], pa.string())
    return pc.take(vals, d.indices)


def map_columns(raw: pa.Table, t: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """Column form of :func:`map_record` over a whole batch: (rows taken, their events).
    Rows not taken (False) need the per-record path (see the module doc)."""
    n = t.num_rows
    s4, s6 = _col(t, "sourceIPv4Address", pa.string()), _col(t, "sourceIPv6Address", pa.string())
    d4, d6 = _col(t, "destinationIPv4Address", pa.string()), _col(t, "destinationIPv6Address", pa.string())
    # `a or b` in map_record; an empty or non-text address takes the per-record path
    src = pc.coalesce(s4, s6) if s6.null_count < n else s4
    dst = pc.coalesce(d4, d6) if d6.null_count < n else d4

    def addr_ok(a: pa.Array) -> pa.Array:
        return pc.fill_null(pc.or_(pc.match_substring(a, "."), pc.match_substring(a, ":")), True)

    fast = pc.and_(pc.and_(addr_ok(src), addr_ok(dst)), pc.or_(pc.is_valid(src), pc.is_valid(dst)))
    fast_np = fast.to_numpy(zero_copy_only=False)
    if not fast_np.all():
        t = t.filter(fast)
        raw = raw.filter(fast)
        src, dst = src.filter(fast), dst.filter(fast)
        n = t.num_rows
    g = lambda k: _col(t, k, pa.int64())  # noqa: E731
    proto = g("protocolIdentifier")
    sb = pc.coalesce(g("octetDeltaCount"), g("octetTotalCount"))
    sp = pc.coalesce(g("packetDeltaCount"), g("packetTotalCount"))
    db = pc.coalesce(g("reverseOctetDeltaCount"), g("reverseOctetTotalCount"))
    dp = pc.coalesce(g("reversePacketDeltaCount"), g("reversePacketTotalCount"))
    start, end = _times_cols(t)
    start_us, end_us = _us_cols(start), _us_cols(end)
    export_us = _us_cols(_f64(g("export_ms")))
    ts = np.where(~np.isnan(end_us), end_us, np.where(~np.isnan(start_us), start_us, export_us))
    both = ~np.isnan(start_us) & ~np.isnan(end_us)
    with np.errstate(invalid="ignore"):
        both &= end >= start
        dur_f = np.round((end - start) * 1_000_000)
    duration = pa.array(np.where(both, dur_f, 0).astype(np.int64), mask=~both)
    either_b = pc.or_(pc.is_valid(sb), pc.is_valid(db))
    net_b = pc.if_else(either_b, pc.add(pc.fill_null(sb, 0), pc.fill_null(db, 0)), pa.scalar(None, pa.int64()))
    either_p = pc.or_(pc.is_valid(sp), pc.is_valid(dp))
    net_p = pc.if_else(either_p, pc.add(pc.fill_null(sp, 0), pc.fill_null(dp, 0)), pa.scalar(None, pa.int64()))
    transport = pc.take(_TRANSPORT_VALS, pc.index_in(proto, value_set=_TRANSPORT_KEYS))
    # related.ip: [src, dst] without nulls, [src] when equal
    inc_s = pc.is_valid(src).to_numpy(zero_copy_only=False)
    inc_d = pc.is_valid(dst).to_numpy(zero_copy_only=False) & ~pc.fill_null(pc.equal(src, dst), False).to_numpy(zero_copy_only=False)
    rows = np.arange(n, dtype=np.int64)
    pick = np.stack([np.where(inc_s, rows, -1), np.where(inc_d, rows + n, -1)], axis=1).ravel()
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(inc_s.astype(np.int32) + inc_d, out=offsets[1:])
    related = pa.ListArray.from_arrays(pa.array(offsets), pa.concat_arrays([src, dst]).take(pa.array(pick[pick >= 0])))
    # taishi.extra: {"netflow": {...}} with sorted keys, as orjson writes it
    flags = g("tcpControlBits")
    pieces: dict[str, pa.Array] = {
        "version": pc.fill_null(pc.cast(g("ver"), pa.string()), "null"),
        "template": pc.fill_null(pc.cast(g("tid"), pa.string()), "null"),
        "domain": pc.fill_null(pc.cast(g("domain"), pa.string()), "null"),
        "iana_number": pc.cast(proto, pa.string()),
        "tcp_flags": pc.cast(flags, pa.string()),
        "tcp_flags_names": pc.take(_FLAG_JSON, pc.bit_wise_and(flags, 0xFF)),
    }
    for name in t.column_names:
        if name not in _MAPPED:
            pieces[name] = _json_values(t.column(name).combine_chunks() if isinstance(t.column(name), pa.ChunkedArray) else t.column(name))
    parts: list[Any] = [pa.scalar('{"netflow":{', pa.string())]
    for k in sorted(pieces):
        v = pieces[k]
        key = pa.scalar(orjson.dumps(k).decode() + ":", pa.string())
        if v.null_count == 0:  # present in every row: joined in place
            parts += [key, v, _COMMA]
        else:  # '"k":v,' where present, '' where not
            parts.append(pc.fill_null(pc.binary_join_element_wise(key, v, _COMMA, _EMPTY), _EMPTY))
    extra = pc.binary_join_element_wise(*parts, _EMPTY)
    extra = pc.binary_join_element_wise(pc.utf8_rtrim(extra, ","), pa.scalar("}}", pa.string()), _EMPTY)
    cols: dict[str, Any] = {
        "@timestamp": _ts(ts), "event.start": _ts(start_us), "event.end": _ts(end_us), "event.duration": duration,
        "source.ip": src, "source.port": g("sourceTransportPort"), "destination.ip": dst,
        "destination.port": g("destinationTransportPort"), "network.transport": transport,
        "source.bytes": sb, "source.packets": sp, "destination.bytes": db, "destination.packets": dp,
        "network.bytes": net_b, "network.packets": net_p,
        "source.mac": _col(t, "sourceMacAddress", pa.string()), "destination.mac": _col(t, "destinationMacAddress", pa.string()),
        "observer.ip": _col(t, "exporter", pa.string()), "related.ip": related, "taishi.extra": extra,
    }
    for name, value in CONSTANT.items():
        cols[name] = pa.repeat(pa.scalar(value, pa.string()), n)
    for name in ("taishi.source", "log.offset", "log.file.path", "event.original"):
        c = raw.column(name)
        cols[name] = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
    cols["event.id"] = event_ids(cols["taishi.source"], cols["log.offset"], cols["event.original"])
    nulls: dict[pa.DataType, pa.Array] = {}
    for f in EVENT_SCHEMA:
        if f.name not in cols and f.type not in nulls:
            nulls[f.type] = pa.nulls(n, f.type)
    arrays = [cols[f.name] if f.name in cols else nulls[f.type] for f in EVENT_SCHEMA]
    return fast_np, pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)


def _parse_line(source: str, offset: int, path: str | None, original: str, now: Any) -> tuple | str:
    try:
        return map_record(orjson.loads(original))  # a row tuple, or the reason it is not one
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {str(exc).splitlines()[0][:150]}"
