"""The one event model: Elastic Common Schema (ECS) field names, Arrow types.

Every stage passes ``pyarrow.Table`` batches whose columns are the flattened,
dotted ECS names below (``source.ip``, ``dns.question.name`` ...). Columns a
source does not fill are null. Fields a parser cannot map to ECS are kept, as
a JSON object, in ``taishi.extra`` so nothing a source said is lost; the raw
record is always in ``event.original``.

Parsers build rows as plain dicts keyed by these names and call
:func:`events_table`; detection reads columns; the store writes the same
columns. Adding a field means adding one line to ``EVENT_FIELDS``.

>>> t = events_table([{"event.id": "e1", "source.ip": "10.0.0.1", "source.port": 22}])
>>> t.column("source.port").to_pylist()
[22]
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
STR = pa.string()
INT = pa.int64()
FLOAT = pa.float64()
BOOL = pa.bool_()
STRS = pa.list_(pa.string())
# ECS geo_point as an object: {"lat": .., "lon": ..} (the search node maps it as geo_point)
GEO_POINT = pa.struct([pa.field("lat", pa.float64()), pa.field("lon", pa.float64())])

# name -> arrow type. Order is the column order of every events batch.
EVENT_FIELDS: dict[str, pa.DataType] = {
    "@timestamp": TS,
    "message": STR,
    "tags": STRS,
    # event.*
    "event.id": STR,
    "event.kind": STR,
    "event.category": STR,
    "event.type": STR,
    "event.action": STR,
    "event.outcome": STR,
    "event.module": STR,
    "event.dataset": STR,
    "event.provider": STR,
    "event.code": STR,
    "event.reason": STR,
    "event.severity": INT,
    "event.duration": INT,  # nanoseconds, as ECS says
    "event.start": TS,
    "event.end": TS,
    "event.original": STR,
    # source / destination
    "source.ip": STR,
    "source.port": INT,
    "source.mac": STR,
    "source.domain": STR,
    "source.bytes": INT,
    "source.packets": INT,
    "destination.ip": STR,
    "destination.port": INT,
    "destination.mac": STR,
    "destination.domain": STR,
    "destination.bytes": INT,
    "destination.packets": INT,
    # network
    "network.transport": STR,
    "network.protocol": STR,
    "network.direction": STR,
    "network.bytes": INT,
    "network.packets": INT,
    "network.community_id": STR,
    # host / user / process
    "host.name": STR,
    "host.hostname": STR,
    "host.ip": STR,
    "user.name": STR,
    "user.id": STR,
    "user.effective.name": STR,
    "process.name": STR,
    "process.pid": INT,
    "process.executable": STR,
    "process.command_line": STR,
    "process.working_directory": STR,
    # dns
    "dns.id": STR,
    "dns.type": STR,
    "dns.question.name": STR,
    "dns.question.type": STR,
    "dns.question.class": STR,
    "dns.question.registered_domain": STR,
    "dns.response_code": STR,
    "dns.answers.data": STRS,
    "dns.resolved_ip": STRS,
    # url / http / user_agent
    "url.original": STR,
    "url.domain": STR,
    "url.path": STR,
    "url.query": STR,
    "url.username": STR,
    "url.password": STR,
    "http.version": STR,
    "http.request.method": STR,
    "http.request.referrer": STR,
    "http.request.body.bytes": INT,
    "http.response.status_code": INT,
    "http.response.body.bytes": INT,
    "http.response.mime_type": STR,
    "user_agent.original": STR,
    # tls
    "tls.version": STR,
    "tls.version_protocol": STR,
    "tls.cipher": STR,
    "tls.curve": STR,
    "tls.established": BOOL,
    "tls.resumed": BOOL,
    "tls.next_protocol": STR,
    "tls.client.server_name": STR,
    "tls.client.ja3": STR,
    "tls.server.ja3s": STR,
    "tls.server.subject": STR,
    "tls.server.issuer": STR,
    "tls.server.not_before": TS,
    "tls.server.not_after": TS,
    "tls.server.hash.sha1": STR,
    # x509 (zeek x509.log)
    "x509.serial_number": STR,
    "x509.subject.common_name": STRS,
    "x509.issuer.common_name": STRS,
    "x509.not_before": TS,
    "x509.not_after": TS,
    "x509.public_key_algorithm": STR,
    "x509.public_key_size": INT,
    "x509.signature_algorithm": STR,
    "x509.alternative_names": STRS,
    # observer (the sensor that saw it)
    "observer.name": STR,
    "observer.hostname": STR,
    "observer.ip": STR,
    "observer.type": STR,
    "observer.vendor": STR,
    "observer.product": STR,
    # rule / threat (IDS alerts that arrive as events, e.g. Suricata, CEF)
    "rule.id": STR,
    "rule.name": STR,
    "rule.category": STR,
    "rule.ruleset": STR,
    "threat.technique.id": STRS,
    "threat.tactic.name": STRS,
    # log
    "log.file.path": STR,
    "log.offset": INT,
    "log.level": STR,
    "log.logger": STR,
    "log.syslog.facility.code": INT,
    "log.syslog.severity.code": INT,
    "log.syslog.priority": INT,
    "log.syslog.hostname": STR,
    "log.syslog.appname": STR,
    "log.syslog.procid": STR,
    "log.syslog.msgid": STR,
    "log.syslog.version": STR,
    "log.syslog.structured_data": STR,
    # related (pivot fields)
    "related.ip": STRS,
    "related.user": STRS,
    "related.hosts": STRS,
    # CII asset enrichment (compliance.inventory.enrich): the asset and system each end touches
    "taishi.source.asset.id": STR,
    "taishi.source.asset.system": STR,
    "taishi.source.asset.sector": STR,
    "taishi.source.asset.level": INT,  # MLPS protection level 1-5
    "taishi.destination.asset.id": STR,
    "taishi.destination.asset.system": STR,
    "taishi.destination.asset.sector": STR,
    "taishi.destination.asset.level": INT,
    # Taishi's own namespace
    "taishi.source": STR,  # the input a record came from (file name, listener)
    "taishi.logsource": STR,  # sigma logsource "product/category/service" hint
    "taishi.extra": STR,  # JSON object: source fields with no ECS home
}

EVENT_SCHEMA = pa.schema([pa.field(n, t) for n, t in EVENT_FIELDS.items()])

# Alerts: one row per alert, ECS names where ECS has them.
ALERT_FIELDS: dict[str, pa.DataType] = {
    "id": STR,
    "@timestamp": TS,
    "event.kind": STR,  # always "alert"
    "event.severity": INT,  # 1 informational .. 5 critical
    "rule.id": STR,
    "rule.name": STR,
    "rule.level": STR,
    "rule.description": STR,
    "rule.type": STR,  # "sigma" or "sigma_correlation"
    "threat.technique.id": STRS,
    "threat.tactic.name": STRS,
    "tags": STRS,
    "source.ip": STR,
    "source.port": INT,
    "destination.ip": STR,
    "destination.port": INT,
    "user.name": STR,
    "host.name": STR,
    "dns.question.name": STR,
    "event.dataset": STR,
    "event.start": TS,
    "event.end": TS,
    "event.count": INT,
    "event.ids": STRS,
    "taishi.group": STR,  # correlation group-by values, as JSON
    "message": STR,
    # Context added where alerts are stored, by taishi.enrich.enrich_alerts (both modes):
    # the CII asset each end touches (as events have it) ...
    "taishi.source.asset.id": STR,
    "taishi.source.asset.system": STR,
    "taishi.source.asset.sector": STR,
    "taishi.source.asset.level": INT,  # MLPS protection level 1-5
    "taishi.destination.asset.id": STR,
    "taishi.destination.asset.system": STR,
    "taishi.destination.asset.sector": STR,
    "taishi.destination.asset.level": INT,
    # ... where a public source address is (offline GeoIP, taishi.geo; internal/unknown -> null) ...
    "source.geo.country_iso_code": STR,
    "source.geo.country_name": STR,
    "source.geo.location": GEO_POINT,
    # ... and the alert's risk: rule level weighed by the protection level of the assets it touches
    "event.risk_score": FLOAT,  # 0-100, see taishi.enrich.risk_score
}
ALERT_SCHEMA = pa.schema([pa.field(n, t) for n, t in ALERT_FIELDS.items()])

# Dead letters: bad input is data, with where it came from and why it failed.
DEADLETTER_FIELDS: dict[str, pa.DataType] = {
    "id": STR,
    "@timestamp": TS,  # when it was dead-lettered
    "taishi.source": STR,
    "log.offset": INT,
    "stage": STR,  # read, parse, detect, store ...
    "reason": STR,
    "event.original": STR,
}
DEADLETTER_SCHEMA = pa.schema([pa.field(n, t) for n, t in DEADLETTER_FIELDS.items()])

LEVELS = ("informational", "low", "medium", "high", "critical")
LEVEL_SEVERITY = {lvl: i + 1 for i, lvl in enumerate(LEVELS)}

IP_FIELDS = frozenset(
    n for n in EVENT_FIELDS if n.endswith(".ip") or n in ("related.ip", "dns.resolved_ip")
)
TIME_FIELDS = frozenset(n for n, t in {**EVENT_FIELDS, **ALERT_FIELDS}.items() if t == TS)


def _coerce(value: Any, typ: pa.DataType) -> Any:
    """Best-effort conversion of one python value to what the column holds."""
    if value is None:
        return None
    if typ == TS:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        return parse_time(str(value))
    if typ == INT:
        return int(value)
    if typ == FLOAT:
        return float(value)
    if typ == BOOL:
        return bool(value)
    if typ == GEO_POINT:  # {"lat", "lon"} or (lat, lon)
        lat, lon = (value["lat"], value["lon"]) if isinstance(value, Mapping) else value
        return {"lat": float(lat), "lon": float(lon)}
    if typ == STRS:
        if isinstance(value, (list, tuple, set)):
            return [str(v) for v in value if v is not None]
        return [str(value)]
    return value if isinstance(value, str) else str(value)


def parse_time(text: str) -> datetime:
    """ISO-8601 (with Z, +hh:mm or +hhmm offsets) or epoch seconds -> aware UTC datetime."""
    s = text.strip()
    try:
        return datetime.fromtimestamp(float(s), tz=timezone.utc)
    except ValueError:
        pass
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    elif len(s) > 5 and s[-5] in "+-" and s[-4:].isdigit() and s[-3] != ":":
        s = s[:-2] + ":" + s[-2:]
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def rows_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a batch of ``schema`` from dict rows; unknown keys are an error.

    Values are coerced to the column type, so parsers may hand in epoch floats
    or ISO strings for times and ints-as-strings for ports.
    """
    rows = list(rows)
    cols: dict[str, list[Any]] = {f.name: [None] * len(rows) for f in schema}
    types = {f.name: f.type for f in schema}
    for i, row in enumerate(rows):
        for k, v in row.items():
            if k not in cols:
                raise KeyError(f"{k!r} is not a field of this schema")
            cols[k][i] = _coerce(v, types[k])
    return pa.Table.from_pydict(cols, schema=schema)


def events_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Events batch from dict rows keyed by ECS names (see module doc)."""
    return rows_table(rows, EVENT_SCHEMA)


def alerts_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return rows_table(rows, ALERT_SCHEMA)


def deadletters_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return rows_table(rows, DEADLETTER_SCHEMA)


def conform(table: pa.Table, schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order (missing -> null)."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    n = table.num_rows
    arrays = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            arrays.append(col if col.type == f.type else col.cast(f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def empty(schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    return schema.empty_table()
