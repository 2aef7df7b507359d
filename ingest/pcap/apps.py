"""Application-metadata events from the tshark field columns.

Per-packet protocols (DNS, Modbus/TCP, DNP3, EtherNet/IP-CIP) are built
column-wise with Arrow compute: one event per DNS message, per Modbus ADU, per
DNP3 application fragment, per EtherNet/IP encapsulation PDU (a frame with
several PDUs gives several events, ``pdu_index`` in ``taishi.extra``).
Per-session protocols (HTTP requests/responses, TLS handshakes, SSH banners)
are few per flow and built as row dicts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingest.parsers import event_ids, events_from_rows, extra_json, lit
from taishi.ids import event_id
from taishi.schema import EVENT_SCHEMA, TS, conform

from . import names
from .flows import conn_states, flags_text, transport_names
from .tshark import AGG, first, hex_to_int, map_values, split, to_int, valid_utf8

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
              7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS"}


def const(value: Any, n: int, typ: pa.DataType = pa.string()) -> pa.Array:
    return pa.repeat(lit(value, typ), n)


def ts_array(ns: np.ndarray | pa.Array) -> pa.Array:
    a = ns.to_numpy() if isinstance(ns, pa.Array) else ns
    return pa.array(np.asarray(a, dtype=np.int64) // 1000).view(TS)


def json_str(arr: pa.Array) -> pa.Array:
    """Each value as a JSON string literal (``null`` for null); distinct values encoded once."""
    out = map_values(arr, lambda v: orjson.dumps(v).decode())
    return pc.fill_null(out, "null")


def json_num(arr: pa.Array) -> pa.Array:
    return pc.fill_null(pc.cast(arr, pa.string()), "null")


def json_obj(pairs: list[tuple[str, pa.Array]]) -> pa.Array:
    """``{"k": v, ...}`` per row from already JSON-encoded value columns."""
    parts: list[Any] = []
    for i, (k, v) in enumerate(pairs):
        parts.append(("{" if i == 0 else ",") + orjson.dumps(k).decode() + ":")
        parts.append(v)
    parts.append("}")
    return pc.binary_join_element_wise(*[lit(p) if isinstance(p, str) else p for p in parts], lit(""))


def kv_text(prefix: str, pairs: list[tuple[str, pa.Array]]) -> pa.Array:
    """Compact ``prefix k=v k=v`` text (the event.original of an app event)."""
    parts: list[Any] = [lit(prefix)]
    for k, v in pairs:
        parts.append(lit(f" {k}="))
        parts.append(pc.fill_null(pc.cast(v, pa.string()), "-"))
    return pc.binary_join_element_wise(*parts, lit(""))


class Ctx:
    """What every event of one capture shares."""

    def __init__(self, source: str, path: str | None, observer: str, observer_type: str = "pcap") -> None:
        self.source = source
        self.path = path
        self.observer = observer
        self.observer_type = observer_type  # "pcap" for a capture file, "sensor" for a live interface

    def base(self, core: dict[str, pa.Array], idx: pa.Array, dataset: str, protocol: str) -> dict[str, pa.Array]:
        n = len(idx)
        t = core["ts_ns"].take(idx)
        src = core["src"].take(idx)
        dst = core["dst"].take(idx)
        return {
            "@timestamp": ts_array(t),
            "event.kind": const("event", n),
            "event.category": const("network", n),
            "event.type": const("protocol", n),
            "event.module": const("pcap", n),
            "event.dataset": const(dataset, n),
            "network.protocol": const(protocol, n),
            "network.transport": transport_names(core["proto"].take(idx)),
            "source.ip": src,
            "source.port": core["sport"].take(idx),
            "source.mac": core["smac"].take(idx),
            "destination.ip": dst,
            "destination.port": core["dport"].take(idx),
            "destination.mac": core["dmac"].take(idx),
            "related.ip": related_ips(src, dst),
            "observer.name": const(self.observer, n),
            "observer.type": const(self.observer_type, n),
            "taishi.source": const(self.source, n),
            "log.file.path": const(self.path, n),
            "log.offset": core["frame"].take(idx),
        }

    def finish(self, cols: dict[str, pa.Array], original: pa.Array) -> pa.Table:
        cols["event.original"] = original
        cols["event.id"] = event_ids(cols["taishi.source"], cols["log.offset"], original)
        return conform(pa.table(cols))


def join_skip(*arrs: pa.Array) -> pa.Array:
    """Non-null values of each row joined with AGG ("" when all are null).

    (``binary_join_element_wise(null_handling="skip")`` drops all-null rows in
    pyarrow 26, so nulls are replaced and the empty pieces squeezed out.)
    """
    j = pc.binary_join_element_wise(*[pc.fill_null(a, "") for a in arrs], lit(AGG))
    j = pc.replace_substring_regex(j, AGG + "{2,}", AGG)
    return pc.replace_substring_regex(j, "^" + AGG + "|" + AGG + "$", "")


def related_ips(src: pa.Array, dst: pa.Array) -> pa.Array:
    """[src, dst] per row (nulls dropped, duplicates once)."""
    n = len(src)
    same = pc.fill_null(pc.equal(src, dst), False)
    vals = join_skip(src, pc.if_else(same, pa.scalar(None, pa.string()), dst))
    out = pc.split_pattern(vals, AGG)
    empty = pc.equal(pc.fill_null(vals, ""), "")
    return pc.if_else(empty, pa.scalar(None, pa.list_(pa.string())), out) if n else pa.array([], pa.list_(pa.string()))


def explode(col: pa.Array, idx: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """Occurrences of ``col`` at rows ``idx`` -> (values, row index, pdu index, per-row lengths)."""
    lists = split(col.take(idx))
    flat = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists).to_numpy()
    offs = lists.offsets.to_numpy()
    pdu = np.arange(len(flat), dtype=np.int64) - offs[parent]
    rows = pc.take(idx, pa.array(parent))
    return flat, rows, pa.array(pdu), pc.list_value_length(lists)


def aligned(col: pa.Array, idx: pa.Array, lens: pa.Array, parent_in_idx: np.ndarray) -> pa.Array:
    """Occurrences of ``col`` matched one-to-one with an exploded column where the counts agree,
    else the row's first occurrence repeated."""
    sub = col.take(idx)
    lists = split(sub)
    l2 = pc.fill_null(pc.list_value_length(lists), 0)
    if pc.all(pc.equal(l2, lens)).as_py():
        return pc.list_flatten(lists)
    return first(sub).take(pa.array(parent_in_idx))


def _snake(s: str | None) -> str | None:
    if s is None:
        return None
    return "".join(ch if ch.isalnum() else "_" for ch in s.lower()).strip("_")


def _name_map(table: dict[int, str]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else table.get(int(v), f"unknown_{int(v)}")


def _rows_in(b: pa.RecordBatch, name: str) -> pa.Array:
    return pa.array(np.flatnonzero(pc.is_valid(b.column(name)).to_numpy(zero_copy_only=False)), pa.int64())


# --- flows ------------------------------------------------------------------------------

# Flows are the capture's conn log: they carry Zeek's conn_state in event.action and the
# zeek//conn logsource tag, so Zeek conn rules (port scans, fan-out ...) apply to captures.
FLOW_LOGSOURCE = "zeek//conn"


def flow_events(f: dict[str, Any], ctx: Ctx) -> pa.Table:
    """Flow events (``pcap.flow``) from :func:`ingest.pcap.flows.aggregate` columns, in
    (event.start, frame) order."""
    n = f["n"]
    transport = transport_names(f["proto"])
    proto = np.nan_to_num(pc.fill_null(f["proto"], -1).to_numpy(zero_copy_only=False)).astype(np.int64)
    is_tcp = pc.equal(f["proto"], 6)
    flags = pa.array(f["tcp_flags"])
    ftext = map_values(flags, flags_text)
    state = conn_states(proto, np.asarray(f["orig_flags"]), np.asarray(f["resp_flags"]),
                        np.asarray(f["dst_packets"]), pc.is_valid(f["sport"]).to_numpy(zero_copy_only=False))
    extra = pc.if_else(
        is_tcp,
        json_obj([("tcp.flags", json_str(ftext)),
                  ("tcp.flags_hex", json_str(map_values(flags, lambda v: f"0x{v:03x}"))),
                  ("tcp.syn_seen", pc.cast(pa.array(f["syn_seen"]), pa.string())),
                  ("tcp.orig_flags", json_str(map_values(pa.array(f["orig_flags"]), flags_text))),
                  ("tcp.resp_flags", json_str(map_values(pa.array(f["resp_flags"]), flags_text)))]),
        pa.scalar(None, pa.string()),
    )
    start = np.asarray(f["start_ns"])
    end = np.asarray(f["end_ns"])
    cols = {
        "@timestamp": ts_array(start),
        "event.kind": const("event", n),
        "event.category": const("network", n),
        "event.type": const("connection", n),
        "event.action": state,
        "event.module": const("pcap", n),
        "event.dataset": const("pcap.flow", n),
        "event.start": ts_array(start),
        "event.end": ts_array(end),
        "event.duration": pa.array(end - start, pa.int64()),
        "source.ip": f["src"],
        "source.port": f["sport"],
        "source.mac": f["smac"],
        "source.bytes": pa.array(f["src_bytes"], pa.int64()),
        "source.packets": pa.array(f["src_packets"], pa.int64()),
        "destination.ip": f["dst"],
        "destination.port": f["dport"],
        "destination.mac": f["dmac"],
        "destination.bytes": pa.array(f["dst_bytes"], pa.int64()),
        "destination.packets": pa.array(f["dst_packets"], pa.int64()),
        "network.transport": transport,
        "network.bytes": pa.array(f["bytes"], pa.int64()),
        "network.packets": pa.array(f["packets"], pa.int64()),
        "related.ip": related_ips(f["src"], f["dst"]),
        "observer.name": const(ctx.observer, n),
        "observer.type": const(ctx.observer_type, n),
        "taishi.source": const(ctx.source, n),
        "taishi.logsource": const(FLOW_LOGSOURCE, n),
        "log.file.path": const(ctx.path, n),
        "log.offset": pa.array(f["frame"], pa.int64()),
        "taishi.extra": extra,
    }
    sp = pc.fill_null(pc.cast(f["sport"], pa.string()), "")
    dp = pc.fill_null(pc.cast(f["dport"], pa.string()), "")
    orig = pc.binary_join_element_wise(
        lit("flow "), transport, lit(" "), f["src"], lit(":"), sp, lit(" -> "),
        f["dst"], lit(":"), dp, lit(" start_ns="), pc.cast(pa.array(start), pa.string()), lit(""))
    cols["event.original"] = orig
    cols["event.id"] = event_ids(cols["taishi.source"], cols["log.offset"], orig)
    table = conform(pa.table(cols))
    order = pc.sort_indices(table, sort_keys=[("event.start", "ascending"), ("log.offset", "ascending")])
    return table.take(order)


# --- DNS ------------------------------------------------------------------------------


def dns_events(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> pa.Table | None:
    idx = _rows_in(b, "dns.id")
    if not len(idx):
        return None
    c = lambda f: b.column(f).take(idx)  # noqa: E731
    cols = ctx.base(core, idx, "pcap.dns", "dns")
    resp = pc.equal(first(c("dns.flags.response")), "1")
    dns_id = pc.cast(hex_to_int(c("dns.id")), pa.string())
    qname = valid_utf8(first(c("dns.qry.name")))
    qtype_n = to_int(c("dns.qry.type"))
    qtype = map_values(qtype_n, lambda v: None if v is None else names.DNS_TYPES.get(int(v), f"TYPE{int(v)}").split(" ")[0])
    rcode_n = to_int(c("dns.flags.rcode"))
    rcode = pc.if_else(resp, map_values(rcode_n, lambda v: None if v is None else DNS_RCODES.get(int(v), str(v))),
                       pa.scalar(None, pa.string()))
    answers_txt = join_skip(
        *[valid_utf8(c(f)) for f in ("dns.a", "dns.aaaa", "dns.cname", "dns.ptr.domain_name", "dns.ns",
                                      "dns.mx.mail_exchange", "dns.txt")])
    answers = pc.if_else(pc.equal(answers_txt, ""), pa.scalar(None, pa.list_(pa.string())), split(answers_txt))
    ips_txt = join_skip(c("dns.a"), c("dns.aaaa"))
    ips = pc.if_else(pc.equal(ips_txt, ""), pa.scalar(None, pa.list_(pa.string())), split(ips_txt))
    cols.update({
        "dns.id": dns_id,
        "dns.type": pc.if_else(resp, lit("answer"), lit("query")),
        "dns.question.name": qname,
        "dns.question.type": qtype,
        "dns.response_code": rcode,
        "dns.answers.data": answers,
        "dns.resolved_ip": ips,
        "event.action": pc.if_else(resp, lit("dns_response"), lit("dns_query")),
    })
    orig = kv_text("dns", [("frame", cols["log.offset"]), ("id", dns_id), ("qr", pc.cast(resp, pa.int8())),
                            ("name", qname), ("qtype", qtype_n), ("rcode", rcode_n),
                            ("answers", pc.replace_substring(answers_txt, AGG, ","))])
    return ctx.finish(cols, orig)


# --- Modbus/TCP -------------------------------------------------------------------------


def modbus_events(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> pa.Table | None:
    idx = _rows_in(b, "modbus.func_code")
    if not len(idx):
        return None
    fc_txt, rows, pdu, lens = explode(b.column("modbus.func_code"), idx)
    parent = pc.list_parent_indices(split(b.column("modbus.func_code").take(idx))).to_numpy()
    fc = pc.cast(fc_txt, pa.int64())
    unit = pc.cast(aligned(b.column("mbtcp.unit_id"), idx, lens, parent), pa.int64())
    trans = pc.cast(aligned(b.column("mbtcp.trans_id"), idx, lens, parent), pa.int64())
    exc = pc.cast(aligned(b.column("modbus.exception_code"), idx, lens, parent), pa.int64())
    cols = ctx.base(core, rows, "pcap.modbus", "modbus")
    fname = map_values(fc, _name_map(names.MODBUS_FUNCTIONS))
    sport, dport = cols["source.port"], cols["destination.port"]
    direction = pc.if_else(pc.fill_null(pc.equal(dport, 502), False), lit("request"),
                           pc.if_else(pc.fill_null(pc.equal(sport, 502), False), lit("response"),
                                      pa.scalar(None, pa.string())))
    cols["event.action"] = map_values(fname, _snake)
    cols["event.outcome"] = pc.if_else(pc.is_valid(exc), lit("failure"), pa.scalar(None, pa.string()))
    cols["taishi.extra"] = json_obj([
        ("modbus.func_code", json_num(fc)), ("modbus.function", json_str(fname)),
        ("modbus.unit_id", json_num(unit)), ("modbus.transaction_id", json_num(trans)),
        ("modbus.exception_code", json_num(exc)), ("modbus.direction", json_str(direction)),
        ("pdu_index", json_num(pdu)),
    ])
    orig = kv_text("modbus", [("frame", cols["log.offset"]), ("pdu", pdu), ("func", fc), ("unit", unit),
                               ("trans", trans), ("exc", exc)])
    return ctx.finish(cols, orig)


# --- DNP3 ------------------------------------------------------------------------------------


def dnp3_events(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> pa.Table | None:
    idx = _rows_in(b, "dnp3.al.func")
    if not len(idx):
        return None
    fc_txt, rows, pdu, lens = explode(b.column("dnp3.al.func"), idx)
    parent = pc.list_parent_indices(split(b.column("dnp3.al.func").take(idx))).to_numpy()
    fc = pc.cast(fc_txt, pa.int64())
    dsrc = pc.cast(aligned(b.column("dnp3.src"), idx, lens, parent), pa.int64())
    ddst = pc.cast(aligned(b.column("dnp3.dst"), idx, lens, parent), pa.int64())
    cols = ctx.base(core, rows, "pcap.dnp3", "dnp3")
    fname = map_values(fc, _name_map(names.DNP3_FUNCTIONS))
    is_resp = pc.is_in(fc, value_set=pa.array([129, 130], pa.int64()))
    cols["event.action"] = map_values(fname, _snake)
    cols["taishi.extra"] = json_obj([
        ("dnp3.func_code", json_num(fc)), ("dnp3.function", json_str(fname)),
        ("dnp3.src", json_num(dsrc)), ("dnp3.dst", json_num(ddst)),
        ("dnp3.direction", pc.if_else(is_resp, lit('"response"'), lit('"request"'))),
        ("pdu_index", json_num(pdu)),
    ])
    orig = kv_text("dnp3", [("frame", cols["log.offset"]), ("pdu", pdu), ("func", fc), ("src", dsrc), ("dst", ddst)])
    return ctx.finish(cols, orig)


# --- EtherNet/IP + CIP ---------------------------------------------------------------------


def _cip_codes(raw: str | None) -> str:
    if raw is None:
        return "null"
    return orjson.dumps([int(x, 16) for x in raw.split(AGG) if x]).decode()


def _cip_names(raw: str | None) -> str:
    if raw is None:
        return "null"
    return orjson.dumps([names.CIP_SERVICES.get(int(x, 16) & 0x7F, f"unknown_0x{int(x, 16) & 0x7F:02x}")
                         for x in raw.split(AGG) if x]).decode()


def enip_events(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> pa.Table | None:
    idx = _rows_in(b, "enip.command")
    if not len(idx):
        return None
    cmd_txt, rows, pdu, lens = explode(b.column("enip.command"), idx)
    parent = pc.list_parent_indices(split(b.column("enip.command").take(idx))).to_numpy()
    cmd = map_values(cmd_txt, lambda v: int(v, 16), pa.int64())
    session = map_values(aligned(b.column("enip.session"), idx, lens, parent), lambda v: int(v, 16), pa.int64())
    svc_raw = b.column("cip.service").take(rows)
    cols = ctx.base(core, rows, "pcap.enip", "enip")
    cname = map_values(cmd, _name_map(names.ENIP_COMMANDS))
    first_svc = map_values(first(svc_raw), lambda v: int(v, 16), pa.int64())
    svc_name = map_values(first_svc, lambda v: None if v is None else names.CIP_SERVICES.get(v & 0x7F, f"unknown_0x{v & 0x7F:02x}"))
    cols["event.action"] = pc.coalesce(map_values(svc_name, _snake), map_values(cname, _snake))
    cols["taishi.extra"] = json_obj([
        ("enip.command", json_num(cmd)), ("enip.command_name", json_str(cname)),
        ("enip.session", json_num(session)),
        ("cip.service_codes", map_values(svc_raw, _cip_codes)), ("cip.services", map_values(svc_raw, _cip_names)),
        ("cip.response", pc.fill_null(pc.cast(pc.greater_equal(first_svc, 0x80), pa.string()), "null")),
        ("pdu_index", json_num(pdu)),
    ])
    cols["taishi.extra"] = pc.fill_null(cols["taishi.extra"], "{}")
    orig = kv_text("enip", [("frame", cols["log.offset"]), ("pdu", pdu), ("cmd", cmd), ("session", session),
                             ("cip", pc.replace_substring(pc.fill_null(svc_raw, "-"), AGG, ","))])
    return ctx.finish(cols, orig)


# --- row-built protocols: HTTP, TLS, SSH ------------------------------------------------------------


def _rows_of(b: pa.RecordBatch, core: dict[str, pa.Array], idx: pa.Array, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    sub = {f: b.column(f).take(idx) for f in fields}
    for f in fields:
        if pa.types.is_string(sub[f].type):
            sub[f] = valid_utf8(sub[f])
    for k in ("frame", "ts_ns", "src", "dst", "sport", "dport", "proto", "stream", "smac", "dmac"):
        sub["@" + k] = core[k].take(idx)
    cols = {k: v.to_pylist() for k, v in sub.items()}
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def _split(v: str | None) -> list[str]:
    return [] if v is None else [x for x in v.split(AGG) if x != ""]


def _first(v: str | None) -> str | None:
    return None if v is None else v.split(AGG, 1)[0]


def _int(v: str | None, base: int = 10) -> int | None:
    v = _first(v)
    try:
        return None if v is None else int(v, base)
    except ValueError:
        return None


def _base_row(r: dict[str, Any], ctx: Ctx, dataset: str, protocol: str) -> dict[str, Any]:
    ts = _EPOCH + timedelta(microseconds=r["@ts_ns"] // 1000)
    return {
        "@timestamp": ts,
        "event.kind": "event",
        "event.category": "network",
        "event.type": "protocol",
        "event.module": "pcap",
        "event.dataset": dataset,
        "network.protocol": protocol,
        "network.transport": {6: "tcp", 17: "udp"}.get(r["@proto"]),
        "source.ip": r["@src"],
        "source.port": r["@sport"],
        "source.mac": r["@smac"],
        "destination.ip": r["@dst"],
        "destination.port": r["@dport"],
        "destination.mac": r["@dmac"],
        "related.ip": [x for x in dict.fromkeys((r["@src"], r["@dst"])) if x] or None,
        "observer.name": ctx.observer,
        "observer.type": ctx.observer_type,
        "taishi.source": ctx.source,
        "log.file.path": ctx.path,
        "log.offset": r["@frame"],
    }


def _finish_row(row: dict[str, Any], original: str) -> dict[str, Any]:
    row["event.original"] = original
    row["event.id"] = event_id(row["taishi.source"], row["log.offset"], original)
    return row


HTTP_FIELDS = ("http.request.method", "http.host", "http.request.uri", "http.request.version", "http.user_agent",
               "http.referer", "http.response.code", "http.response_for.uri", "http.content_type", "http.content_length")


def http_rows(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> list[dict[str, Any]]:
    m = pc.or_(pc.is_valid(b.column("http.request.method")), pc.is_valid(b.column("http.response.code")))
    idx = pa.array(np.flatnonzero(m.to_numpy(zero_copy_only=False)), pa.int64())
    out = []
    for r in _rows_of(b, core, idx, HTTP_FIELDS) if len(idx) else []:
        row = _base_row(r, ctx, "pcap.http", "http")
        row["event.category"] = "web"
        method = _first(r["http.request.method"])
        if method is not None:
            uri = _first(r["http.request.uri"])
            host = _first(r["http.host"])
            ver = _first(r["http.request.version"])
            row.update({
                "event.type": "access",
                "event.action": "http_request",
                "http.request.method": method,
                "url.original": uri,
                "url.domain": host.rsplit(":", 1)[0] if host and not host.startswith("[") else host,
                "http.version": ver.split("/", 1)[1] if ver and "/" in ver else ver,
                "user_agent.original": _first(r["http.user_agent"]),
                "http.request.referrer": _first(r["http.referer"]),
            })
            if uri:
                path, _, query = uri.partition("?")
                row["url.path"] = path if path.startswith("/") else None
                row["url.query"] = query or None
            orig = f"http frame={r['@frame']} {method} {host or '-'} {uri or '-'}"
        else:
            code = _int(r["http.response.code"])
            row.update({
                "event.type": "access",
                "event.action": "http_response",
                "http.response.status_code": code,
                "url.original": _first(r["http.response_for.uri"]),
                "http.response.mime_type": _first(r["http.content_type"]),
                "http.response.body.bytes": _int(r["http.content_length"]),
                "event.outcome": None if code is None else ("success" if code < 400 else "failure"),
            })
            orig = f"http frame={r['@frame']} {code} {row['url.original'] or '-'}"
        out.append(_finish_row(row, orig))
    return out


TLS_FIELDS = ("tls.handshake.type", "tls.handshake.version", "tls.handshake.extensions.supported_version",
              "tls.handshake.extensions_server_name", "tls.handshake.ciphersuite", "tls.handshake.extensions_alpn_str",
              "tls.handshake.ja3", "tls.handshake.ja3s")


def tls_hellos(b: pa.RecordBatch, core: dict[str, pa.Array]) -> list[dict[str, Any]]:
    """ClientHello / ServerHello frames as small dicts (paired per TCP stream by :func:`tls_rows`)."""
    col = b.column("tls.handshake.type")
    if col.null_count == len(col):
        return []
    m = pc.match_substring_regex(col, "(^|\x1d)(1|2)(\x1d|$)")
    idx = pa.array(np.flatnonzero(pc.fill_null(m, False).to_numpy(zero_copy_only=False)), pa.int64())
    if not len(idx):
        return []
    out = []
    for r in _rows_of(b, core, idx, TLS_FIELDS):
        types = _split(r["tls.handshake.type"])
        r["hello"] = "client" if "1" in types else "server"
        out.append(r)
    return out


def _hexes(v: str | None) -> list[int]:
    out = []
    for x in _split(v):
        try:
            out.append(int(x, 16))
        except ValueError:
            pass
    return out


def _suite(code: int) -> str:
    return names.CIPHER_SUITES.get(code, f"0x{code:04X}")


def tls_rows(hellos: list[dict[str, Any]], ctx: Ctx) -> list[dict[str, Any]]:
    """One event per TLS handshake: the ClientHello paired with the next ServerHello of its TCP stream."""
    hellos = sorted(hellos, key=lambda r: (r["@stream"] if r["@stream"] is not None else -1, r["@ts_ns"], r["@frame"]))
    out = []
    i = 0
    while i < len(hellos):
        ch = hellos[i] if hellos[i]["hello"] == "client" else None
        sh = None
        if ch is not None:
            j = i + 1
            if j < len(hellos) and hellos[j]["hello"] == "server" and hellos[j]["@stream"] == ch["@stream"] and ch["@stream"] is not None:
                sh = hellos[j]
                i = j
        else:
            sh = hellos[i]
        i += 1
        out.append(_tls_event(ch, sh, ctx))
    return out


def _tls_event(ch: dict[str, Any] | None, sh: dict[str, Any] | None, ctx: Ctx) -> dict[str, Any]:
    lead = ch or sh
    assert lead is not None
    row = _base_row(lead, ctx, "pcap.tls", "tls")
    if ch is None and sh is not None:  # only the server side seen: orient client -> server
        row.update({"source.ip": sh["@dst"], "source.port": sh["@dport"], "source.mac": sh["@dmac"],
                    "destination.ip": sh["@src"], "destination.port": sh["@sport"], "destination.mac": sh["@smac"]})
    extra: dict[str, Any] = {}
    offered: list[int] = []
    if ch is not None:
        offered = _hexes(ch["tls.handshake.ciphersuite"])
        row["tls.client.server_name"] = _first(ch["tls.handshake.extensions_server_name"])
        row["tls.client.ja3"] = _first(ch["tls.handshake.ja3"])
        extra["tls.client.cipher_suites"] = [f"0x{c:04X}" for c in offered]
        extra["tls.client.cipher_suite_names"] = [_suite(c) for c in offered]
        sv = _hexes(ch["tls.handshake.extensions.supported_version"])
        hv = _hexes(ch["tls.handshake.version"])
        extra["tls.client.versions"] = [f"0x{v:04X}" for v in (sv or hv[:1])]
        alpn = _split(ch["tls.handshake.extensions_alpn_str"])
        if alpn:
            extra["tls.client.alpn"] = alpn
        extra["tls.client.offers_sm"] = any(c in names.SM_CIPHER_SUITES for c in offered)
        extra["client_hello_frame"] = ch["@frame"]
    version = None
    chosen = None
    if sh is not None:
        sv = _hexes(sh["tls.handshake.extensions.supported_version"])
        hv = _hexes(sh["tls.handshake.version"])
        version = sv[0] if sv else (hv[0] if hv else None)
        cs = _hexes(sh["tls.handshake.ciphersuite"])
        chosen = cs[0] if cs else None
        row["tls.server.ja3s"] = _first(sh["tls.handshake.ja3s"])
        alpn = _split(sh["tls.handshake.extensions_alpn_str"])
        row["tls.next_protocol"] = alpn[0] if alpn else None
        extra["server_hello_frame"] = sh["@frame"]
    elif ch is not None:
        hv = _hexes(ch["tls.handshake.version"])
        if hv and hv[0] == 0x0101:  # TLCP client: record what it asked for
            version = 0x0101
    if version is not None:
        v = names.TLS_VERSIONS.get(version)
        row["tls.version"] = v[0] if v else f"0x{version:04X}"
        row["tls.version_protocol"] = v[1] if v else None
        extra["tls.version_hex"] = f"0x{version:04X}"
    if chosen is not None:
        row["tls.cipher"] = _suite(chosen)
        extra["tls.cipher_hex"] = f"0x{chosen:04X}"
        extra["tls.sm_cipher"] = chosen in names.SM_CIPHER_SUITES
        if chosen in names.SM_CIPHER_SUITES:
            row["tags"] = ["shangmi"]
    row["event.action"] = "tls_handshake" if ch is not None and sh is not None else ("tls_client_hello" if ch else "tls_server_hello")
    row["taishi.extra"] = extra_json(extra)
    orig = (f"tls frame={lead['@frame']} stream={lead['@stream']} sni={row.get('tls.client.server_name') or '-'} "
            f"version={extra.get('tls.version_hex', '-')} cipher={extra.get('tls.cipher_hex', '-')} "
            f"offered={','.join(extra.get('tls.client.cipher_suites', []))}")
    return _finish_row(row, orig)


def ssh_rows(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> list[dict[str, Any]]:
    idx = _rows_in(b, "ssh.protocol")
    out = []
    for r in _rows_of(b, core, idx, ("ssh.protocol",)) if len(idx) else []:
        banner = _first(r["ssh.protocol"])
        row = _base_row(r, ctx, "pcap.ssh", "ssh")
        sp, dp = r["@sport"], r["@dport"]
        role = None
        if sp is not None and dp is not None:
            role = "server" if (sp < dp and sp < 1024) or sp == 22 else ("client" if (dp < sp and dp < 1024) or dp == 22 else None)
        row["event.action"] = "ssh_banner"
        row["message"] = banner
        row["taishi.extra"] = extra_json({"ssh.banner": banner, "ssh.role": role})
        out.append(_finish_row(row, f"ssh frame={r['@frame']} {banner}"))
    return out


def rows_table(rows: list[dict[str, Any]]) -> pa.Table | None:
    return events_from_rows(rows) if rows else None


EMPTY = EVENT_SCHEMA.empty_table()


# --- one batch of frames -> its application events --------------------------------------------


def frame_events(b: pa.RecordBatch, core: dict[str, pa.Array], ctx: Ctx) -> tuple[pa.Table | None, list[dict[str, Any]]]:
    """The application events of a batch of frames (DNS, Modbus, DNP3, ENIP, HTTP, SSH) and its
    TLS hellos, which :func:`tls_rows` pairs once their stream's ServerHello has been seen."""
    tables = [t for t in (dns_events(b, core, ctx), modbus_events(b, core, ctx), dnp3_events(b, core, ctx),
                          enip_events(b, core, ctx)) if t is not None]
    rows = http_rows(b, core, ctx) + ssh_rows(b, core, ctx)
    if rows:
        tables.append(conform(events_from_rows(rows)))
    out = (pa.concat_tables(tables) if len(tables) > 1 else tables[0]) if tables else None
    return out, tls_hellos(b, core)


def malformed(b: pa.RecordBatch, core: dict[str, pa.Array]) -> list[tuple[int, str, str]]:
    """(frame, compact text, reason) of each frame a dissector gave up on."""
    col = b.column("_ws.malformed")
    if col.null_count == len(col):
        return []
    idx = _rows_in(b, "_ws.malformed")
    out = []
    for r in _rows_of(b, core, idx, ("_ws.malformed",)):
        what = (_first(r["_ws.malformed"]) or "").strip("[]") or "Malformed Packet"
        text = (f"frame={r['@frame']} {r['@src'] or '-'}:{r['@sport'] if r['@sport'] is not None else '-'} -> "
                f"{r['@dst'] or '-'}:{r['@dport'] if r['@dport'] is not None else '-'} proto={r['@proto']}")
        out.append((r["@frame"], text, f"malformed packet: {what}"))
    return out


def tls_ready(hellos: list[dict[str, Any]], now_ns: int, hold_ns: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split live hellos into (ready to pair, still waiting): a stream's last ClientHello waits
    up to ``hold_ns`` for its ServerHello."""
    last: dict[Any, dict[str, Any]] = {}
    for h in sorted(hellos, key=lambda r: (r["@ts_ns"], r["@frame"])):
        last[h["@stream"]] = h
    wait = {id(h) for h in last.values()
            if h["hello"] == "client" and h["@stream"] is not None and now_ns - h["@ts_ns"] <= hold_ns}
    return [h for h in hellos if id(h) not in wait], [h for h in hellos if id(h) in wait]

