"""Suricata EVE JSON -> ECS.

One record per line (or per element of a top-level JSON array, see
``ingest.files``). Mapped per ``event_type``: alert, flow, netflow, dns (v1
one-record-per-answer and v2 grouped answers), http, tls, ssh, anomaly,
fileinfo; stats and the rest get the common fields only. Whatever has no ECS
home stays in ``taishi.extra`` (the record minus the mapped keys).
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from . import (
    ParseResult,
    _register,
    extra_json,
    json_error,
    parse_lines,
    related,
    safe_parser,
    to_utc,
)



def _tls_version(v: Any) -> tuple[str | None, str | None]:
    """'TLS 1.2' -> ('1.2', 'tls'); 'TLSv1.3' -> ('1.3', 'tls'); 'SSLv3' -> ('3.0', 'ssl')."""
    if not isinstance(v, str) or not v or v.upper() == "UNDETERMINED":
        return None, None
    s = v.strip()
    low = s.lower()
    proto = "dtls" if low.startswith("dtls") else "ssl" if low.startswith("ssl") else "tls" if low.startswith("tls") else None
    num = s.lstrip("DTLSdtlsSSLssl").lstrip("v ").strip()
    if num and num.isdigit():
        num = f"{num}.0"
    return (num or None), proto


def _pop(d: Any, *path: str) -> Any:
    for k in path[:-1]:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    if not isinstance(d, dict):
        return None
    return d.pop(path[-1], None)


def _map(rec: dict[str, Any], ev: dict[str, Any]) -> None:
    et = rec.pop("event_type", None)
    et = et if isinstance(et, str) else "unknown"
    ev["event.module"] = "suricata"
    ev["event.dataset"] = f"suricata.{et}"
    ev["event.kind"] = "event"
    ev["observer.vendor"] = "OISF"
    ev["observer.product"] = "Suricata"
    ev["observer.type"] = "ids"
    ts = to_utc(rec.pop("timestamp", None))
    ev["@timestamp"] = ts
    host = rec.pop("host", None)
    if host is not None:
        ev["observer.hostname"] = host
    ev["source.ip"] = rec.pop("src_ip", None)
    ev["source.port"] = rec.pop("src_port", None)
    ev["destination.ip"] = rec.pop("dest_ip", None)
    ev["destination.port"] = rec.pop("dest_port", None)
    proto = rec.pop("proto", None)
    if isinstance(proto, str):
        ev["network.transport"] = proto.lower()
    elif proto is not None:
        ev["network.transport"] = str(proto)
    app = rec.pop("app_proto", None)
    if app and app != "failed":
        ev["network.protocol"] = str(app).lower()
    cid = rec.pop("community_id", None)
    if cid:
        ev["network.community_id"] = cid
    ev["event.category"] = "network"
    ev["event.type"] = "info"
    hosts: list[Any] = []
    users: list[Any] = []

    if et == "alert":
        a = rec.get("alert") if isinstance(rec.get("alert"), dict) else {}
        ev["event.kind"] = "alert"
        ev["event.category"] = "intrusion_detection"
        ev["rule.id"] = a.pop("signature_id", None)
        ev["rule.name"] = a.pop("signature", None)
        ev["rule.category"] = a.pop("category", None)
        ev["message"] = ev["rule.name"]
        sev = a.pop("severity", None)
        ev["event.severity"] = sev
        act = a.pop("action", None)
        ev["event.action"] = act
        ev["event.type"] = "denied" if act == "blocked" else "allowed" if act == "allowed" else "info"
        if not a:
            rec.pop("alert", None)
    elif et in ("flow", "netflow"):
        f = rec.get("flow") if isinstance(rec.get("flow"), dict) else {}
        ev["event.type"] = "connection"
        ev["event.start"] = to_utc(f.pop("start", None))
        ev["event.end"] = to_utc(f.pop("end", None))
        if ev["event.start"] and ev["event.end"]:
            ev["event.duration"] = int((ev["event.end"] - ev["event.start"]).total_seconds() * 1e9)
        ev["source.bytes"] = f.pop("bytes_toserver", None) if et == "flow" else f.pop("bytes", None)
        ev["destination.bytes"] = f.pop("bytes_toclient", None)
        ev["source.packets"] = f.pop("pkts_toserver", None) if et == "flow" else f.pop("pkts", None)
        ev["destination.packets"] = f.pop("pkts_toclient", None)
        sb, db = ev["source.bytes"], ev["destination.bytes"]
        if isinstance(sb, int) and isinstance(db, int):
            ev["network.bytes"] = sb + db
        sp, dp = ev["source.packets"], ev["destination.packets"]
        if isinstance(sp, int) and isinstance(dp, int):
            ev["network.packets"] = sp + dp
        ev["event.action"] = f.pop("state", None)
        reason = f.get("reason")
        if reason is not None:
            ev["event.reason"] = str(reason)
    elif et == "dns":
        d = rec.get("dns") if isinstance(rec.get("dns"), dict) else {}
        ev["network.protocol"] = "dns"
        ev["event.type"] = "protocol"
        typ = d.pop("type", None)
        ev["dns.type"] = typ
        ev["dns.id"] = d.pop("id", None)
        qname = d.pop("rrname", None)
        qtype = d.pop("rrtype", None)
        if typ == "answer" and ("answers" in d or "grouped" in d):  # v2: rrname/rrtype are the question
            pass
        queries = d.get("queries")  # eve v3: {"queries":[{rrname,rrtype}]}
        if qname is None and isinstance(queries, list) and queries and isinstance(queries[0], dict):
            qname = queries[0].get("rrname")
            qtype = queries[0].get("rrtype")
        ev["dns.question.name"] = qname
        ev["dns.question.type"] = qtype
        ev["dns.response_code"] = d.pop("rcode", None)
        answers: list[str] = []
        if typ == "answer" and "rdata" in d and "answers" not in d:
            # v1: one record per answer
            rd = d.pop("rdata", None)
            if rd is not None:
                answers.append(str(rd))
        ans = d.get("answers")
        if isinstance(ans, list):
            for x in ans:
                if isinstance(x, dict) and x.get("rdata") is not None:
                    answers.append(str(x["rdata"]))
        grouped = d.get("grouped")
        if isinstance(grouped, dict):
            for vals in grouped.values():
                if isinstance(vals, list):
                    answers.extend(str(v) if not isinstance(v, dict) else orjson.dumps(v).decode() for v in vals)
        if answers:
            ev["dns.answers.data"] = answers
            ips = [a for a in answers if _looks_ip(a)]
            if ips:
                ev["dns.resolved_ip"] = ips
        if qname:
            hosts.append(qname)
    elif et == "http":
        h = rec.get("http") if isinstance(rec.get("http"), dict) else {}
        ev["network.protocol"] = "http"
        ev["event.category"] = "web"
        ev["event.type"] = "access"
        host = h.pop("hostname", None)
        ev["url.domain"] = host
        url = h.pop("url", None)
        ev["url.original"] = url
        if isinstance(url, str):
            path, _, q = url.partition("?")
            ev["url.path"] = path
            ev["url.query"] = q or None
        ev["http.request.method"] = h.pop("http_method", None)
        ev["user_agent.original"] = h.pop("http_user_agent", None)
        ev["http.request.referrer"] = h.pop("http_refer", None)
        ev["http.response.status_code"] = h.pop("status", None)
        ev["http.response.mime_type"] = h.pop("http_content_type", None)
        ev["http.response.body.bytes"] = h.pop("length", None)
        proto_v = h.pop("protocol", None)
        if isinstance(proto_v, str):
            ev["http.version"] = proto_v.split("/")[-1]
        if host:
            hosts.append(host)
    elif et == "tls":
        t = rec.get("tls") if isinstance(rec.get("tls"), dict) else {}
        ev["network.protocol"] = "tls"
        ev["event.type"] = "protocol"
        ev["tls.version"], ev["tls.version_protocol"] = _tls_version(t.pop("version", None))
        ev["tls.client.server_name"] = t.pop("sni", None)
        ev["tls.server.subject"] = t.pop("subject", None)
        ev["tls.server.issuer"] = t.pop("issuerdn", None)
        ev["tls.server.not_before"] = to_utc(t.pop("notbefore", None))
        ev["tls.server.not_after"] = to_utc(t.pop("notafter", None))
        fp = t.pop("fingerprint", None)
        if isinstance(fp, str):
            ev["tls.server.hash.sha1"] = fp.replace(":", "").upper()
        ja3 = t.get("ja3")
        if isinstance(ja3, dict) and ja3.get("hash"):
            ev["tls.client.ja3"] = ja3.get("hash")
        ja3s = t.get("ja3s")
        if isinstance(ja3s, dict) and ja3s.get("hash"):
            ev["tls.server.ja3s"] = ja3s.get("hash")
        ev["tls.resumed"] = t.pop("session_resumed", None)
        if ev["tls.client.server_name"]:
            hosts.append(ev["tls.client.server_name"])
    elif et == "ssh":
        ev["network.protocol"] = "ssh"
        ev["event.type"] = "protocol"
    elif et == "anomaly":
        a = rec.get("anomaly") if isinstance(rec.get("anomaly"), dict) else {}
        ev["event.action"] = a.get("event")
        ev["event.reason"] = a.get("type")
    elif et == "fileinfo":
        ev["event.category"] = "file"
        fi = rec.get("fileinfo") if isinstance(rec.get("fileinfo"), dict) else {}
        ev["message"] = fi.get("filename")
    # http/tls context attached to alerts, flows ...
    if et != "http" and isinstance(rec.get("http"), dict):
        h = rec["http"]
        ev.setdefault("url.domain", h.get("hostname"))
        ev.setdefault("url.original", h.get("url"))
        ev.setdefault("user_agent.original", h.get("http_user_agent"))
        ev.setdefault("http.request.method", h.get("http_method"))
    if et != "tls" and isinstance(rec.get("tls"), dict):
        ev.setdefault("tls.client.server_name", rec["tls"].get("sni"))
    if et != "dns" and isinstance(rec.get("dns"), dict) and rec["dns"].get("rrname"):
        ev.setdefault("dns.question.name", rec["dns"].get("rrname"))
    ev["related.ip"] = related(ev.get("source.ip"), ev.get("destination.ip"))
    ev["related.hosts"] = related(hosts) if hosts else None
    ev["related.user"] = related(users) if users else None
    for k in [k for k, v in rec.items() if isinstance(v, dict) and not v]:
        rec.pop(k)
    ev["taishi.extra"] = extra_json(rec)


def _looks_ip(s: str) -> bool:
    if ":" in s:
        return all(c in "0123456789abcdefABCDEF:." for c in s) and s.count(":") >= 2
    parts = s.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts)


def _parse_line(source: str, offset: int, path: str | None, original: str, now: Any) -> dict[str, Any] | str:
    try:
        rec = orjson.loads(original)
    except orjson.JSONDecodeError as exc:
        return json_error(exc)
    if not isinstance(rec, dict):
        return f"EVE record is not a JSON object ({type(rec).__name__})"
    if "event_type" not in rec:
        return "EVE record has no event_type"
    ev: dict[str, Any] = {}
    _map(rec, ev)
    return ev


def parse(raw: pa.Table) -> ParseResult:
    """Suricata EVE records -> ECS; bad JSON and non-objects are dead-lettered."""
    return parse_lines(raw, _parse_line)


_register("suricata")(safe_parser(parse))
