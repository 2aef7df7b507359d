"""ArcSight CEF (``CEF:Version|Vendor|Product|Version|Signature ID|Name|Severity|Extension``) -> ECS.

An optional syslog header before ``CEF:`` gives ``@timestamp`` (unless the
extension has ``rt``) and ``host.name``. Header fields escape ``\\|`` and
``\\\\``; extension values escape ``\\=``, ``\\\\``, ``\\n``/``\\r`` and may contain
spaces. Mapped: observer vendor/product/version, rule.id (signature id),
rule.name (name), event.severity (0-10, or Low/Medium/High/Very-High ->
3/6/8/10), src/dst/spt/dpt/smac/dmac/shost/dhost, suser/duser (user.name is
suser, else duser; both in related.user), proto, app, act, outcome, msg,
rt/start/end, request*, in/out bytes, dvc/dvchost, sproc/spid. Custom strings
``csN`` are kept in ``taishi.extra`` under their ``csNLabel`` (or csN), with
every other extension key.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from . import (
    ParseResult,
    _register,
    extra_json,
    parse_lines,
    related,
    safe_parser,
    to_utc,
)
from .syslog import IPISH, RFC3164, RFC5424, ISO_HEADER, _MONTHS, infer_year

_CEF_START = re.compile(r"(?:^|(?<=\s))CEF:(?P<ver>\d+)\|")
_EXT_KEY = re.compile(r"(?:^|(?<=\s))(?P<key>[A-Za-z0-9_.\[\]-]+)=")
_SEVERITY_WORDS = {"unknown": 0, "low": 3, "medium": 6, "high": 8, "very-high": 10, "very high": 10, "veryhigh": 10}
_EXT_UNESCAPE = {"\\": "\\", "=": "=", "n": "\n", "r": "\r", "|": "|"}

_DIRECT = {
    "src": "source.ip",
    "dst": "destination.ip",
    "spt": "source.port",
    "dpt": "destination.port",
    "smac": "source.mac",
    "dmac": "destination.mac",
    "shost": "source.domain",
    "dhost": "destination.domain",
    "app": "network.protocol",
    "act": "event.action",
    "msg": "message",
    "requestURL": "url.original",
    "requestMethod": "http.request.method",
    "requestClientApplication": "user_agent.original",
    "dvc": "observer.ip",
    "dvchost": "observer.hostname",
    "sproc": "process.name",
    "spid": "process.pid",
    "reason": "event.reason",
    "externalId": "event.code",
}


def split_header(text: str) -> list[str] | None:
    """The 6 header fields after 'CEF:<version>|' (unescaped) plus the extension, or None."""
    fields: list[str] = []
    cur: list[str] = []
    i, n = 0, len(text)
    while i < n and len(fields) < 6:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "|\\":
            cur.append(text[i + 1])
            i += 2
            continue
        if c == "|":
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if len(fields) < 6:
        return None
    fields.append(text[i:])
    return fields


def _unescape_value(v: str) -> str:
    if "\\" not in v:
        return v
    out: list[str] = []
    i, n = 0, len(v)
    while i < n:
        c = v[i]
        if c == "\\" and i + 1 < n and v[i + 1] in _EXT_UNESCAPE:
            out.append(_EXT_UNESCAPE[v[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_extension(ext: str) -> dict[str, str]:
    """``k=v k2=v with spaces`` -> dict (values unescaped, trailing blanks trimmed)."""
    keys = list(_EXT_KEY.finditer(ext))
    out: dict[str, str] = {}
    for j, m in enumerate(keys):
        end = keys[j + 1].start() if j + 1 < len(keys) else len(ext)
        out[m.group("key")] = _unescape_value(ext[m.end() : end].rstrip())
    return out


def _severity(s: str) -> int | None:
    s = s.strip()
    if s.isdigit():
        return int(s)
    return _SEVERITY_WORDS.get(s.lower())


_TS_FORMATS = ("%b %d %Y %H:%M:%S.%f", "%b %d %Y %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z")


def cef_time(v: str | None, now: datetime) -> datetime | None:
    """rt/start/end: epoch millis, 'MMM dd yyyy HH:mm:ss[.SSS] [zone]', 'MMM dd HH:mm:ss' or ISO."""
    if not v:
        return None
    v = v.strip()
    if v.isdigit():
        n = int(v)
        return datetime.fromtimestamp(n / 1000 if n > 10**11 else n, tz=timezone.utc)
    parts = v.split(" ")
    for cand in (v, " ".join(parts[:-1]) if len(parts) > 3 else None):
        if not cand:
            continue
        for fmt in _TS_FORMATS:
            try:
                dt = datetime.strptime(cand, fmt)
            except ValueError:
                continue
            return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    m = re.match(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d\d:\d\d:\d\d)$", v)
    if m and m.group(1) in _MONTHS:
        return infer_year(_MONTHS[m.group(1)], int(m.group(2)), m.group(3), now)
    return to_utc(v)


def _prefix(prefix: str, ev: dict[str, Any], now: datetime) -> None:
    """Syslog header before 'CEF:' -> @timestamp, host.name."""
    p = prefix.strip()
    if not p:
        return
    m5 = RFC5424.match(p + " ")
    if m5:
        ev["@timestamp"] = to_utc(m5.group("ts")) if m5.group("ts") != "-" else None
        if m5.group("host") != "-":
            ev["host.name"] = m5.group("host")
        return
    m3 = RFC3164.match(p + " ")
    if m3:
        try:
            ev["@timestamp"] = infer_year(_MONTHS[m3.group("mon")], int(m3.group("day")), m3.group("time"), now,
                                          int(m3.group("year")) if m3.group("year") else None)
        except ValueError:
            pass
        rest = m3.group("rest").split()
        if rest:
            ev["host.name"] = rest[0]
        return
    mi = ISO_HEADER.match(p + " ")
    if mi:
        ev["@timestamp"] = to_utc(mi.group("ts"))
        rest = mi.group("rest").split()
        if rest:
            ev["host.name"] = rest[0]


def _parse_line(source: str, offset: int, path: str | None, line: str, now: datetime) -> dict[str, Any] | str:
    m = _CEF_START.search(line)
    if not m:
        return "no 'CEF:<version>|' in record"
    header = split_header(line[m.end() :])
    if header is None:
        return "CEF header has fewer than 7 '|'-separated fields (Version|Vendor|Product|Version|ID|Name|Severity)"
    vendor, product, dversion, sig_id, name, severity, ext = header
    ev: dict[str, Any] = {}
    _prefix(line[: m.start()], ev, now)
    ev["event.module"] = "cef"
    ev["event.dataset"] = "cef.log"
    ev["event.kind"] = "event"
    ev["observer.vendor"] = vendor or None
    ev["observer.product"] = product or None
    ev["rule.id"] = sig_id or None
    ev["rule.name"] = name or None
    ev["event.code"] = sig_id or None
    sev = _severity(severity)
    ev["event.severity"] = sev
    x = parse_extension(ext)
    extra: dict[str, Any] = {"cef.version": m.group("ver")}
    if dversion:
        extra["cef.device_version"] = dversion
    if sev is None and severity:
        extra["cef.severity"] = severity
    labels = {k[:-5]: v for k, v in x.items() if re.fullmatch(r"(?:cs|cn|cfp|flex(?:String|Number|Date))\d+Label", k)}
    for k, v in x.items():
        if k in labels.values() or k.endswith("Label") and k[:-5] in labels:
            continue
        if k in _DIRECT:
            target = _DIRECT[k]
            if target.endswith((".port", ".pid")):
                try:
                    ev[target] = int(v)
                except ValueError:
                    extra[k] = v
                    continue
            else:
                ev[target] = v
            continue
        if k in ("rt", "start", "end"):
            t = cef_time(v, now)
            key = {"rt": "@timestamp", "start": "event.start", "end": "event.end"}[k]
            if t is None:
                extra[k] = v
            else:
                ev[key] = t
            continue
        if k == "proto":
            ev["network.transport"] = v.lower()
            continue
        if k == "outcome":
            low = v.strip().lower()
            ev["event.outcome"] = "success" if low in ("success", "succeeded", "allowed", "ok") else "failure" if low in ("failure", "failed", "fail", "denied", "blocked") else "unknown"
            extra["outcome"] = v
            continue
        if k in ("in", "out", "bytesIn", "bytesOut"):
            try:
                ev["destination.bytes" if k in ("in", "bytesIn") else "source.bytes"] = int(v)
            except ValueError:
                extra[k] = v
            continue
        if k in labels:
            extra[labels[k] or k] = v
            continue
        extra[k] = v
    suser, duser = x.get("suser"), x.get("duser")
    ev["user.name"] = suser or duser
    for k in ("suser", "duser"):
        if k in x:
            extra[k] = x[k]
    if ev.get("source.ip") and not IPISH.match(str(ev["source.ip"])):
        extra["src"] = ev.pop("source.ip")
    if ev.get("destination.ip") and not IPISH.match(str(ev["destination.ip"])):
        extra["dst"] = ev.pop("destination.ip")
    if ev.get("@timestamp") is None:
        ev["@timestamp"] = ev.get("event.start") or ev.get("event.end")
    ev["related.ip"] = related(ev.get("source.ip"), ev.get("destination.ip"))
    ev["related.user"] = related(suser, duser)
    ev["related.hosts"] = related(ev.get("source.domain"), ev.get("destination.domain"), ev.get("host.name"))
    ev["taishi.extra"] = extra_json(extra)
    return ev


def parse(raw: pa.Table) -> ParseResult:
    """CEF lines -> ECS; lines without a CEF header are dead-lettered."""
    return parse_lines(raw, _parse_line)


_register("cef")(safe_parser(parse))
