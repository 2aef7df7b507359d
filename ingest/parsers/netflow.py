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
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from taishi.schema import EVENT_FIELDS, EVENT_SCHEMA

from . import (
    ParseResult,
    _register,
    parse_lines,
    event_ids,
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
    return parse_lines(raw, _parse_line, build=_events)


def _parse_line(source: str, offset: int, path: str | None, original: str, now: Any) -> tuple | str:
    try:
        return map_record(orjson.loads(original))  # a row tuple, or the reason it is not one
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {str(exc).splitlines()[0][:150]}"
