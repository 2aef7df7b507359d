"""The search store: cluster mode's counterpart of :mod:`taishi.store`.

One interface over an Elasticsearch 8 node (the ``elasticsearch`` 8.x client)
and an OpenSearch 2 node (``opensearch-py``); ``flavor: auto`` asks the root
endpoint which one answers. Method names and return types parallel
:class:`taishi.store.Store` (``write_events``, ``search_alerts``, ``count``,
``alert(id)``, ``aggregate``, ``histogram`` ...), so the CLI and the API can
use either store.

Indices (prefix ``taishi`` by default, from ``cluster.search.index_prefix``)::

    taishi-events       a data stream (backing indices .ds-taishi-events-*),
                        rolled over monthly and kept >= 180 days
    taishi-alerts       alerts, _id = alert id
    taishi-incidents    incidents, _id = incident id
    taishi-assets       the CII inventory (one document per asset, with its system)
    taishi-deadletters  dead letters, _id = dead-letter id
    taishi-posture      posture index time series, _id = digest(scope, key, time)

Mappings are generated from :mod:`taishi.schema`: ``ip`` for addresses (a
``.text`` keyword sub-field keeps the embedded store's wildcard match on
addresses), ``date`` for times, ``long``/``double``/``boolean`` for numbers
and flags, ``keyword`` for the rest, ``text`` for the free-text fields the
query language treats as text (``message`` ...), and ``match_only_text`` for
``event.original`` (searchable, not scored, no positions: the raw record is
big and read rarely). Documents are the flattened dotted ECS names (the node
expands them into objects), with one exception: ``taishi.source`` (the input a
record came from) is both a value and the parent of ``taishi.source.asset.*``,
which a mapping cannot be, so it is stored as ``taishi.input`` and renamed on
the way in and out (queries name it ``taishi.source`` as in embedded mode).

Writes are idempotent: every document's ``_id`` is its Taishi id and is written
with ``op_type=create``, so a replay changes nothing (the first version wins,
as in the embedded store). Incidents are the exception, as in the embedded
store: the builder's newer version replaces the built fields while the
workflow (status, assignee, history, notes) is kept, by compare-and-set writes
that apply the rules of :mod:`correlate.incidents` (see ``upsert_incidents``). Events go to a data stream whose backing index
changes at rollover, so ids already stored are looked up first (an ``ids``
query over the stream, the counterpart of the embedded store's anti-join).

Retention (the Cybersecurity Law, art. 21: network logs kept at least six
months): events are kept ``max(retention_days.events, 180)`` days after their
backing index rolled over. On Elasticsearch an ILM policy does it; on
OpenSearch an ISM policy when the node has the Index State Management plugin;
on a node without it (the one ``taishi services up`` assembles from Maven
Central has no ISM plugin: Maven Central does not serve it) the policy is
recorded in the index template's ``_meta`` and :meth:`SearchStore.apply_retention`
enforces it (rollover after 30 days, delete a backing index once the next one
is older than the retention). :meth:`retention_policy` reads back what the
node holds.

Queries are the Lucene syntax of :mod:`taishi.query`, run by the node's
``query_string`` with the table's default fields. Each query is first compiled
by :func:`taishi.query.compile_query` against the same schema (so unknown
fields and bad values give the same :class:`QueryError` in both modes), then
parsed with luqum and re-serialised with these rewrites: ``timestamp`` ->
``@timestamp`` and ``taishi.source`` -> ``taishi.input``; values on IP and
time fields are quoted (``/`` and ``:`` are query-string syntax); ``>=x`` style
bounds become ranges; a wildcard on an IP field goes to its ``.text``
sub-field; and bare words and words on the text fields (``message``,
``event.original``, ``rule.description``, ``reason``, ``process.command_line``)
become ``*word*``, the embedded store's case-insensitive *contains*, matched
against the analysed words of text fields and the lowercase ``.lc`` sub-field
of keyword default fields. Left different (docs/architecture.md): substrings
spanning words of a text field, and bare phrases on keyword default fields.
"""

from __future__ import annotations

import hashlib
import logging
import re
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

import orjson
import pyarrow as pa
from luqum import tree
from luqum.parser import parser

from taishi.query import TEXT_FIELDS, QueryError, compile_query, parse_time_value, resolve_field
from taishi.schema import (
    ALERT_SCHEMA,
    DEADLETTER_SCHEMA,
    EVENT_SCHEMA,
    IP_FIELDS,
    TS,
    conform,
    rows_table,
)

__all__ = ["SearchStore", "SearchStoreError", "QueryError", "detect_flavor", "MIN_EVENT_RETENTION_DAYS"]

TIME = "@timestamp"
INGESTED = "event.ingested"
MIN_EVENT_RETENTION_DAYS = 180  # Cybersecurity Law of the PRC, art. 21: network logs >= six months
ROLLOVER_DAYS = 30
RENAMED = {"taishi.source": "taishi.input"}  # a value and an object parent at once: see module doc
UNRENAMED = {v: k for k, v in RENAMED.items()}
MATCH_ONLY = frozenset({"event.original"})
KEYWORD_MAX = 8191  # longer keyword values stay in _source but are not indexed (Lucene's term limit)
NORMALIZER = "taishi_lc"
ANALYSIS = {"normalizer": {NORMALIZER: {"type": "custom", "filter": ["lowercase"]}}}


class SearchStoreError(RuntimeError):
    """The search node refused a request; the message has its status and reason."""


# --------------------------------------------------------------------------- tables
class _Kind:
    def __init__(self, name: str, schema: pa.Schema, key: str, defaults: tuple[str, ...], ingested: bool):
        self.name, self.schema, self.key, self.defaults, self.ingested = name, schema, key, defaults, ingested

    @property
    def query_schema(self) -> pa.Schema:
        if self.ingested and INGESTED not in self.schema.names:
            return self.schema.append(pa.field(INGESTED, TS))
        return self.schema


# The same tables, keys and default fields as taishi.store.TABLES
KINDS: dict[str, _Kind] = {
    "events": _Kind("events", EVENT_SCHEMA, "event.id", ("message", "event.original", "rule.name"), True),
    "alerts": _Kind("alerts", ALERT_SCHEMA, "id", ("message", "rule.name", "rule.description"), True),
    "deadletters": _Kind("deadletters", DEADLETTER_SCHEMA, "id", ("reason", "event.original", "taishi.source"), False),
}


def _is_ip(name: str) -> bool:
    return name in IP_FIELDS or name.endswith(".ip")


def _field_mapping(name: str, typ: pa.DataType, lc: bool = False) -> dict:
    elem = typ.value_type if pa.types.is_list(typ) else typ
    if pa.types.is_struct(elem) and {f.name for f in elem} == {"lat", "lon"}:  # source.geo.location
        return {"type": "geo_point", "ignore_malformed": True}
    if pa.types.is_timestamp(elem):
        return {"type": "date", "ignore_malformed": True}
    if pa.types.is_integer(elem):
        return {"type": "long", "ignore_malformed": True}
    if pa.types.is_floating(elem):
        return {"type": "double", "ignore_malformed": True}
    if pa.types.is_boolean(elem):
        return {"type": "boolean"}
    if _is_ip(name):
        return {"type": "ip", "ignore_malformed": True,
                "fields": {"text": {"type": "keyword", "ignore_above": 64}}}
    if name in MATCH_ONLY:
        return {"type": "match_only_text"}
    if name in TEXT_FIELDS:
        return {"type": "text"}
    m: dict = {"type": "keyword", "ignore_above": KEYWORD_MAX}
    if lc:  # a default field: bare terms match it case-insensitively, as in the embedded store
        m["fields"] = {"lc": {"type": "keyword", "normalizer": NORMALIZER, "ignore_above": KEYWORD_MAX}}
    return m


def _properties(fields: Iterable[tuple[str, pa.DataType]], lc: frozenset[str] = frozenset()) -> dict:
    """Nested ``properties`` for dotted names (what the node builds from dotted keys)."""
    root: dict = {}
    for name, typ in fields:
        parts = RENAMED.get(name, name).split(".")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {"properties": {}})["properties"]
        node[parts[-1]] = _field_mapping(name, typ, name in lc)
    return root


def mappings_for(kind: str) -> dict:
    """The index mapping of ``events``, ``alerts`` or ``deadletters`` from :mod:`taishi.schema`."""
    k = KINDS[kind]
    return {"dynamic": False,
            "properties": _properties(((f.name, f.type) for f in k.query_schema), frozenset(k.defaults))}


def _is_keyword(name: str, typ: pa.DataType) -> bool:
    return _field_mapping(name, typ)["type"] == "keyword"


def default_fields(k: "_Kind") -> list[str]:
    """What bare terms search on the node: the table's default fields, keyword ones through ``.lc``."""
    out = []
    for f in k.defaults:
        if f in k.query_schema.names:
            name = RENAMED.get(f, f)
            out.append(name + ".lc" if _is_keyword(f, k.query_schema.field(f).type) else name)
    return out


INCIDENT_DEFAULT_LC = ("title.lc", "rule.names.lc", "entity.value.lc")  # the embedded store's bare-term fields
INCIDENT_MAPPING = {"dynamic": False, "properties": {
    **_properties([
        ("id", pa.string()), ("status", pa.string()), ("assignee", pa.string()), ("severity", pa.string()),
        ("risk_score", pa.int64()), ("alert.count", pa.int64()),
        ("threat.tactic.name", pa.list_(pa.string())), ("threat.technique.id", pa.list_(pa.string())),
        ("rule.names", pa.list_(pa.string())), ("entity.value", pa.list_(pa.string())),
        ("alert.ids", pa.list_(pa.string())), ("merged_into", pa.string()), ("closed", pa.bool_()),
        ("worked", pa.bool_()),
    ], lc=frozenset({"rule.names", "entity.value"})),
    # microseconds, as the builder writes them: the list's order (last_seen, id) is the embedded one
    "first_seen": {"type": "date_nanos", "ignore_malformed": True},
    "last_seen": {"type": "date_nanos", "ignore_malformed": True},
    "title": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024},
                                         "lc": {"type": "keyword", "normalizer": NORMALIZER, "ignore_above": 1024}}},
    "entities": {"type": "object", "enabled": False},
    "graph": {"type": "object", "enabled": False},
    "history": {"type": "object", "enabled": False},
    "notes": {"type": "object", "enabled": False},
}}

ASSET_MAPPING = {"dynamic": False, "properties": {
    "@timestamp": {"type": "date"},
    "asset_id": {"type": "keyword"}, "system_id": {"type": "keyword"}, "hostname": {"type": "keyword"},
    "ips": {"type": "ip_range"}, "role": {"type": "keyword"}, "criticality": {"type": "keyword"},
    "services": {"type": "keyword"},
    "system": {"properties": {
        "cii_id": {"type": "keyword"}, "name": {"type": "keyword"}, "operator": {"type": "keyword"},
        "credit_code": {"type": "keyword"}, "sector": {"type": "keyword"}, "protection_dept": {"type": "keyword"},
        "key_business": {"type": "keyword"}, "mlps_level": {"type": "integer"}, "zone": {"type": "keyword"},
        "cidrs": {"type": "ip_range"}, "location": {"type": "keyword"}, "owner": {"type": "keyword"},
        "filing_no": {"type": "keyword"}, "crypto_assessment": {"type": "keyword"},
        "last_assessment_date": {"type": "date", "ignore_malformed": True},
        "last_assessment_result": {"type": "keyword"}, "reidentify": {"type": "boolean"},
    }},
}}

POSTURE_MAPPING = {"dynamic_templates": [
    {"numbers": {"match_mapping_type": "double", "mapping": {"type": "double"}}},
    {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}},
], "properties": {"@timestamp": {"type": "date"}, "scope": {"type": "keyword"}, "key": {"type": "keyword"},
                  "index": {"type": "double"},
                  "band": {"type": "keyword"}, "pressure": {"type": "double"}}}


def detect_flavor(url: str, timeout: float = 5.0) -> str:
    """``elasticsearch`` or ``opensearch``, from the node's root endpoint."""
    from taishi.cluster.services import search_info

    info = search_info(url, timeout=timeout)
    if info is None:
        raise SearchStoreError(f"no search node answers at {url} (start one: taishi services up --search)")
    return "opensearch" if (info.get("version") or {}).get("distribution") == "opensearch" else "elasticsearch"


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime) -> str:
    return _utc(dt).astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)


def _docs(tbl: pa.Table) -> list[dict]:
    """Rows as documents: dotted names, no nulls or empty lists, renamed fields."""
    out = []
    tbl = tbl.select([c for c in tbl.column_names if tbl.column(c).null_count < tbl.num_rows])  # ~130 columns, most null
    for row in tbl.to_pylist():
        doc = {}
        for k, v in row.items():
            if v is None or (isinstance(v, list) and not v):
                continue
            doc[RENAMED.get(k, k)] = v
        out.append(doc)
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


# --------------------------------------------------------------------------- the store
class SearchStore:
    """The cluster's store on a search node (see module doc)."""

    def __init__(self, url: str = "http://127.0.0.1:9200", flavor: str = "auto", index_prefix: str = "taishi",
                 *, retention_days: dict | None = None, refresh: str | bool = "wait_for",
                 clock: Callable[[], datetime] | None = None, timeout: float = 60.0,
                 replicas: int = 0):
        self.url = url.rstrip("/")
        self.flavor = detect_flavor(self.url) if flavor in (None, "", "auto") else flavor
        if self.flavor not in ("elasticsearch", "opensearch"):
            raise ValueError(f"flavor must be auto, elasticsearch or opensearch, not {flavor!r}")
        self.prefix = index_prefix
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.refresh = refresh
        self._touched: set[str] | None = None  # indices written inside one_refresh()
        self.replicas = int(replicas)
        days = dict(retention_days or {})
        self.retention_days = {
            "events": max(int(days.get("events") or MIN_EVENT_RETENTION_DAYS), MIN_EVENT_RETENTION_DAYS),
            "alerts": days.get("alerts", 365),
            "deadletters": days.get("deadletters", 30),
        }
        for name in ("opensearch", "elastic_transport.transport"):  # the clients log every 404 we probe for
            lg = logging.getLogger(name)
            if lg.level == logging.NOTSET:
                lg.setLevel(logging.ERROR)
        if self.flavor == "elasticsearch":
            from elasticsearch import Elasticsearch

            self._client = Elasticsearch(self.url, request_timeout=timeout)
        else:
            from opensearchpy import OpenSearch

            self._client = OpenSearch(hosts=[self.url], timeout=timeout)
        self._ready = False
        self._retention_kind: str | None = None

    @classmethod
    def from_config(cls, cfg, **kw) -> "SearchStore":
        """The store ``cfg.cluster.search`` names (url, flavor, index_prefix)."""
        conf = dict((cfg.cluster or {}).get("search") or {})
        return cls(conf.get("url", "http://127.0.0.1:9200"), conf.get("flavor", "auto"),
                   conf.get("index_prefix", "taishi"), retention_days=getattr(cfg, "retention_days", None), **kw)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "SearchStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------
    def _req(self, method: str, path: str, body: Any = None, params: dict | None = None,
             ok: tuple[int, ...] = (), ndjson: bool = False) -> Any:
        """One REST call through the flavor's client; a status in ``ok`` returns None."""
        headers = {"accept": "application/json",
                   "content-type": "application/x-ndjson" if ndjson else "application/json"}
        if self.flavor == "elasticsearch":
            from elasticsearch import ApiError

            try:
                return self._client.perform_request(method, path, params=params, headers=headers, body=body).body
            except ApiError as e:
                status, info = e.meta.status, e.body
        else:
            from opensearchpy import TransportError

            try:
                return self._client.transport.perform_request(method, path, params=params, body=body,
                                                              headers=headers)
            except TransportError as e:
                status, info = e.status_code, e.info
        if status in ok:
            return None
        reason = info.get("error", info) if isinstance(info, dict) else info
        if isinstance(reason, dict):
            causes = reason.get("root_cause") or []
            reason = "; ".join(f"{c.get('type')}: {c.get('reason')}" for c in causes if isinstance(c, dict)) \
                or reason.get("reason") or reason.get("type") or reason
        raise SearchStoreError(f"{method} {path}: {status} {str(reason)[:500]}")

    def index_name(self, kind: str) -> str:
        return f"{self.prefix}-{kind}"

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create (or update) policies, templates, the events data stream and the indices. Idempotent."""
        settings = {"number_of_shards": 1, "number_of_replicas": self.replicas, "refresh_interval": "1s",
                    "analysis": ANALYSIS}
        ev = self.index_name("events")
        kind = self._setup_retention(ev)
        ev_settings = dict(settings)
        if kind == "ilm":
            ev_settings["index.lifecycle.name"] = ev
        meta = {"taishi": {"retention_days": self.retention_days["events"], "rollover_days": ROLLOVER_DAYS,
                           "enforced_by": {"ilm": "ilm", "ism": "ism"}.get(kind, "taishi apply_retention"),
                           "law": "Cybersecurity Law of the PRC, art. 21: network logs kept >= 6 months"}}
        self._req("PUT", f"/_index_template/{ev}", {
            "index_patterns": [f"{ev}*"], "data_stream": {}, "priority": 200, "_meta": meta,
            "template": {"settings": ev_settings, "mappings": mappings_for("events")},
        })
        if self._req("GET", f"/_data_stream/{ev}", ok=(404,)) is None:
            self._req("PUT", f"/_data_stream/{ev}", ok=(400,))  # 400: created concurrently
        for name, mapping in (("alerts", mappings_for("alerts")), ("deadletters", mappings_for("deadletters")),
                              ("incidents", INCIDENT_MAPPING), ("assets", ASSET_MAPPING),
                              ("posture", POSTURE_MAPPING)):
            idx = self.index_name(name)
            self._req("PUT", f"/_index_template/{idx}", {
                "index_patterns": [idx], "priority": 200,
                "template": {"settings": settings, "mappings": mapping}})
            if self._req("GET", f"/{idx}", ok=(404,)) is None:
                self._req("PUT", f"/{idx}", ok=(400,))  # 400: resource_already_exists (a concurrent setup)
            else:  # an index made by an older Taishi: fields added since (e.g. alerts' assets and geo) get mapped
                self._req("PUT", f"/{idx}/_mapping", {"properties": mapping["properties"]}, ok=(400,))
        self._ready = True

    def _ensure(self) -> None:
        if not self._ready:
            self.setup()

    def _has_ism(self) -> bool:
        r = self._req("GET", "/_plugins/_ism/policies", params={"size": 1}, ok=(400, 404, 405))
        return r is not None

    def _setup_retention(self, ev: str) -> str:
        days = self.retention_days["events"]
        if self.flavor == "elasticsearch":
            self._req("PUT", f"/_ilm/policy/{ev}", {"policy": {
                "_meta": {"taishi.retention_days": days},
                "phases": {
                    "hot": {"actions": {"rollover": {"max_age": f"{ROLLOVER_DAYS}d",
                                                     "max_primary_shard_size": "50gb"}}},
                    # min_age of the delete phase counts from rollover: every event is kept >= days
                    "delete": {"min_age": f"{days}d", "actions": {"delete": {}}},
                }}})
            self._retention_kind = "ilm"
        elif self._has_ism():
            policy = {"policy": {
                "description": f"Taishi events: kept >= {days} days (Cybersecurity Law art. 21)",
                "default_state": "hot",
                "states": [
                    {"name": "hot", "actions": [{"rollover": {"min_index_age": f"{ROLLOVER_DAYS}d"}}],
                     # ISM ages from index creation: the rollover period is added so that the
                     # newest document of a backing index is kept >= days too
                     "transitions": [{"state_name": "delete",
                                      "conditions": {"min_index_age": f"{days + ROLLOVER_DAYS}d"}}]},
                    {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
                ],
                "ism_template": [{"index_patterns": [f".ds-{ev}-*"], "priority": 100}],
            }}
            cur = self._req("GET", f"/_plugins/_ism/policies/{ev}", ok=(404,))
            params = ({"if_seq_no": cur["_seq_no"], "if_primary_term": cur["_primary_term"]} if cur else None)
            self._req("PUT", f"/_plugins/_ism/policies/{ev}", policy, params=params)
            self._retention_kind = "ism"
        else:
            self._retention_kind = "taishi"
        return self._retention_kind

    def retention_policy(self) -> dict:
        """The events retention the node holds: ``{"kind": ilm|ism|taishi, "name", "min_days"}``."""
        self._ensure()
        ev = self.index_name("events")
        if self._retention_kind == "ilm":
            pol = self._req("GET", f"/_ilm/policy/{ev}")[ev]["policy"]
            min_age = pol["phases"]["delete"]["min_age"]
            return {"kind": "ilm", "name": ev, "min_days": _days(min_age), "policy": pol}
        if self._retention_kind == "ism":
            pol = self._req("GET", f"/_plugins/_ism/policies/{ev}")["policy"]
            hot = next(s for s in pol["states"] if s["name"] == "hot")
            age = _days(hot["transitions"][0]["conditions"]["min_index_age"])
            return {"kind": "ism", "name": ev, "min_days": age - ROLLOVER_DAYS, "policy": pol}
        tpl = self._req("GET", f"/_index_template/{ev}")["index_templates"][0]["index_template"]
        meta = tpl.get("_meta", {}).get("taishi", {})
        return {"kind": "taishi", "name": ev, "min_days": int(meta["retention_days"]), "policy": meta}

    # -- writes ---------------------------------------------------------------------------------------
    def write_events(self, tbl: pa.Table) -> int:
        """Store events not stored yet (by ``event.id``); returns how many were new."""
        return self._write_table(KINDS["events"], tbl)

    def write_alerts(self, tbl: pa.Table) -> int:
        """Store alerts not stored yet (by ``id``); returns how many were new."""
        return self._write_table(KINDS["alerts"], tbl)

    def write_deadletters(self, tbl: pa.Table) -> int:
        """Store dead letters not stored yet (by ``id``); returns how many were new."""
        return self._write_table(KINDS["deadletters"], tbl)

    def _write_table(self, k: _Kind, tbl: pa.Table) -> int:
        if isinstance(tbl, pa.RecordBatch):
            tbl = pa.Table.from_batches([tbl])
        if tbl.num_rows == 0:
            return 0
        unknown = [c for c in tbl.column_names if c not in k.schema.names]
        if unknown:
            raise ValueError(f"columns not in the {k.name} schema: {', '.join(unknown)}")
        tbl = conform(tbl, k.schema)
        keys = tbl.column(k.key)
        if keys.null_count:
            raise ValueError(f"{keys.null_count} {k.name} rows have no {k.key}")
        self._ensure()
        docs = _docs(tbl)
        now = _iso(self.clock())
        seen: set[str] = set()
        uniq = []
        for d in docs:  # duplicates inside a batch: the first wins
            if d[k.key] not in seen:
                seen.add(d[k.key])
                if k.ingested:
                    d[INGESTED] = now
                uniq.append(d)
        if k.name == "events":
            for d in uniq:
                d.setdefault(TIME, d[INGESTED])  # a data stream needs @timestamp on every document
            stored = self._existing_ids(self.index_name("events"), [d[k.key] for d in uniq])
            uniq = [d for d in uniq if d[k.key] not in stored]
        return self._bulk_create(self.index_name(k.name), ((d[k.key], d) for d in uniq))

    def _existing_ids(self, index: str, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 5000):
            chunk = ids[i:i + 5000]
            r = self._req("POST", f"/{index}/_search", {"query": {"ids": {"values": chunk}}, "_source": False,
                                                        "size": len(chunk)}, params={"ignore_unavailable": "true"})
            found.update(h["_id"] for h in r["hits"]["hits"])
        return found

    @contextmanager
    def one_refresh(self):
        """Writes inside do not wait for a refresh each (``refresh=wait_for`` costs up to the 1 s
        refresh interval per bulk request); leaving without an error refreshes the indices written, once,
        so everything written inside is searchable when the block returns, as with ``wait_for``.
        (A sink writing a micro-batch's events, alerts and dead letters: one refresh, not one wait per request.)"""
        prev, self.refresh, self._touched = self.refresh, False, set()
        try:
            yield self
        finally:
            self.refresh, touched, self._touched = prev, self._touched, None
        if prev and touched:
            self._req("POST", "/" + ",".join(sorted(touched)) + "/_refresh")

    def _refresh_params(self, index: str) -> dict[str, Any]:
        """The refresh parameter of a write to ``index`` (none inside :meth:`one_refresh`, which
        remembers the index and refreshes it once at the end)."""
        if self._touched is not None:
            self._touched.add(index)
        return {"refresh": self.refresh} if self.refresh else {}

    def _bulk_create(self, index: str, docs: Iterable[tuple[str, dict]], op: str = "create") -> int:
        """Bulk ``op`` (create: existing ids are skipped, 409) in ~4 MB requests; returns how many were written."""
        created = 0
        lines: list[bytes] = []
        size = 0

        def flush() -> None:
            nonlocal created, lines, size
            if not lines:
                return
            r = self._req("POST", f"/{index}/_bulk", b"\n".join(lines) + b"\n", params=self._refresh_params(index) or None,
                          ndjson=True)
            for item in r["items"]:
                res = item.get(op) or next(iter(item.values()))
                st = res.get("status", 500)
                if st in (200, 201):
                    created += 1
                elif st != 409:
                    raise SearchStoreError(f"bulk {op} into {index} failed for {res.get('_id')}: {res.get('error')}")
            lines, size = [], 0

        for _id, doc in docs:
            lines.append(_dumps({op: {"_id": _id}}))
            body = _dumps(doc)
            lines.append(body)
            size += len(body)
            if size > 4_000_000 or len(lines) >= 4000:
                flush()
        flush()
        return created

    def write_incidents(self, incidents: Iterable[dict], who: str = "taishi") -> int:
        """Store incidents as the builder made them (the incidents job's output) by ``id``, with the
        embedded store's workflow semantics (:meth:`upsert_incidents`): the built fields are replaced,
        status, assignee, history and notes are kept. Returns how many documents were created or changed."""
        return self._upsert_incidents(incidents, who)[1]

    def write_assets(self, inventory) -> int:
        """Index the CII inventory (:class:`compliance.inventory.Inventory`): one document per asset, with its system."""
        from dataclasses import asdict

        self._ensure()
        systems = {s.cii_id: asdict(s) for s in _values(getattr(inventory, "systems", {}))}
        now = _iso(self.clock())  # when this snapshot of the inventory was indexed (Grafana filters on a time field)
        docs = []
        for a in _values(getattr(inventory, "assets", {})):
            d = asdict(a)
            d["ips"] = _cidrs(d.get("ips"))  # ip_range takes prefixes: an address becomes /32 or /128
            sysd = dict(systems.get(a.system_id) or {})
            sysd.pop("dependencies", None)
            sysd.pop("security_contacts", None)
            sysd["cidrs"] = _cidrs(sysd.get("cidrs"))
            d["system"] = {k: v for k, v in sysd.items() if v not in ("", None, [])}
            docs.append((a.asset_id, {"@timestamp": now, **{k: v for k, v in d.items() if v not in ("", None, [])}}))
        return self._bulk_create(self.index_name("assets"), docs, op="index")

    def write_posture(self, rows: Iterable[dict]) -> int:
        """Index posture points (``@timestamp``, ``scope``, ``key``, ``index``, ``band`` ...);
        ``_id`` = digest(scope, key, time), so a recomputed point replaces the old one."""
        self._ensure()
        docs = []
        for r in rows:
            ts = r["@timestamp"]
            ts = _iso(ts) if isinstance(ts, datetime) else str(ts)
            key = hashlib.blake2b(f"ps2\x1f{r.get('scope')}\x1f{r.get('key')}\x1f{ts}".encode(),
                                  digest_size=16).hexdigest()
            docs.append((key, {**r, "@timestamp": ts}))
        return self._bulk_create(self.index_name("posture"), docs, op="index")

    def refresh_indices(self) -> None:
        self._ensure()
        self._req("POST", f"/{self.prefix}-*/_refresh", params={"expand_wildcards": "all"})

    # -- queries ------------------------------------------------------------------------------------------
    def _kind(self, name: str) -> _Kind:
        try:
            return KINDS[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; one of {', '.join(KINDS)}") from None

    def query_dsl(self, table: str, query: str | None = "", since: datetime | str | None = None,
                  until: datetime | str | None = None) -> dict:
        """The node's query for a Lucene ``query`` on ``table`` (validated as the embedded store does)."""
        k = self._kind(table)
        now = self.clock()
        compile_query(query or "", k.query_schema, k.defaults, now=now)  # same errors as embedded
        filters: list[dict] = []
        text = translate_query(query or "", k.query_schema)
        if text is not None:
            filters.append({"query_string": {
                "query": text, "fields": default_fields(k),
                "default_operator": "OR", "allow_leading_wildcard": True, "analyze_wildcard": True,
                "time_zone": "UTC"}})
        rng: dict = {}
        if since is not None:
            rng["gte"] = _iso(parse_time_value(since, now))
        if until is not None:
            rng["lt"] = _iso(parse_time_value(until, now))
        if rng:
            filters.append({"range": {TIME: rng}})
        if not filters:
            return {"match_all": {}}
        return {"bool": {"filter": filters}}

    def _search_raw(self, table: str, dsl: dict, limit: int | None, order: str, offset: int) -> list[dict]:
        k = self._kind(table)
        direction = {"desc": "desc", "asc": "asc"}.get(str(order).lower())
        if direction is None:
            raise ValueError("order must be 'asc' or 'desc'")
        self._ensure()
        sort = [{TIME: {"order": direction, "missing": "_last"}}, {k.key: {"order": direction}}]
        index = self.index_name(table)
        want = None if limit is None else max(0, int(limit))
        offset = max(0, int(offset))
        if want == 0:
            return []
        if want is not None and offset + want <= 10_000:
            r = self._req("POST", f"/{index}/_search", {"query": dsl, "sort": sort, "from": offset, "size": want,
                                                        "track_total_hits": False})
            return [h["_source"] for h in r["hits"]["hits"]]
        out: list[dict] = []
        after = None
        skip = offset
        while want is None or len(out) < want:
            body = {"query": dsl, "sort": sort, "size": 5000, "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            hits = self._req("POST", f"/{index}/_search", body)["hits"]["hits"]
            if not hits:
                break
            for h in hits:
                if skip:
                    skip -= 1
                    continue
                out.append(h["_source"])
            after = hits[-1]["sort"]
        return out if want is None else out[:want]

    def _table_of(self, k: _Kind, sources: list[dict]) -> pa.Table:
        names = set(k.schema.names)
        rows = [{UNRENAMED.get(f, f): v for f, v in s.items() if UNRENAMED.get(f, f) in names} for s in sources]
        return conform(rows_table(rows, k.schema), k.schema)

    def _search(self, table: str, query, since, until, limit, order, offset) -> pa.Table:
        k = self._kind(table)
        dsl = self.query_dsl(table, query, since, until)
        return self._table_of(k, self._search_raw(table, dsl, limit, order, offset))

    def search_events(self, query: str | None = "", since: datetime | str | None = None,
                      until: datetime | str | None = None, limit: int | None = 100, order: str = "desc",
                      offset: int = 0) -> pa.Table:
        """Events matching a Lucene ``query`` with ``since <= @timestamp < until``, newest first."""
        return self._search("events", query, since, until, limit, order, offset)

    def search_alerts(self, query: str | None = "", since: datetime | str | None = None,
                      until: datetime | str | None = None, limit: int | None = 100, order: str = "desc",
                      offset: int = 0) -> pa.Table:
        return self._search("alerts", query, since, until, limit, order, offset)

    def search_deadletters(self, query: str | None = "", since: datetime | str | None = None,
                           until: datetime | str | None = None, limit: int | None = 100, order: str = "desc",
                           offset: int = 0) -> pa.Table:
        return self._search("deadletters", query, since, until, limit, order, offset)

    def count(self, table: str, query: str | None = "", since: datetime | str | None = None,
              until: datetime | str | None = None) -> int:
        dsl = self.query_dsl(table, query, since, until)
        self._ensure()
        return int(self._req("POST", f"/{self.index_name(table)}/_count", {"query": dsl})["count"])

    def alert(self, id: str) -> dict | None:
        """One alert as a dict keyed by field name, or None."""
        self._ensure()
        r = self._req("GET", f"/{self.index_name('alerts')}/_doc/{_path_id(id)}", ok=(404,))
        if r is None or not r.get("found"):
            return None
        return self._table_of(KINDS["alerts"], [r["_source"]]).to_pylist()[0]

    def events_by_ids(self, ids: Iterable[str]) -> pa.Table:
        """The stored events with these ids (unknown ids are skipped), oldest first."""
        ids = [i for i in dict.fromkeys(ids) if i is not None]
        k = KINDS["events"]
        if not ids:
            return conform(k.schema.empty_table(), k.schema)
        out: list[dict] = []
        for i in range(0, len(ids), 5000):
            out += self._search_raw("events", {"ids": {"values": ids[i:i + 5000]}}, None, "asc", 0)
        out.sort(key=lambda s: (s.get(TIME) is None, s.get(TIME) or "", s.get(k.key)))
        return self._table_of(k, out)

    def aggregate(self, table: str, field: str, query: str | None = "", since: datetime | str | None = None,
                  size: int = 10, until: datetime | str | None = None) -> list[tuple[Any, int]]:
        """Top ``size`` values of ``field`` among matching rows, most frequent first (ties by value)."""
        k = self._kind(table)
        col = resolve_field(field, k.query_schema)
        typ = k.query_schema.field(col).type
        elem = typ.value_type if pa.types.is_list(typ) else typ
        if col in TEXT_FIELDS:
            raise QueryError(f"{col} is a text field: it cannot be aggregated on the search node")
        dsl = self.query_dsl(table, query, since, until)
        self._ensure()
        # addresses: the stored strings (the .text sub-field), so ties sort by value as embedded
        agg_field = f"{col}.text" if _is_ip(col) and pa.types.is_string(elem) else RENAMED.get(col, col)
        body = {"query": dsl, "size": 0, "aggs": {"top": {"terms": {
            "field": agg_field, "size": max(1, int(size)),
            "order": [{"_count": "desc"}, {"_key": "asc"}]}}}}
        r = self._req("POST", f"/{self.index_name(table)}/_search", body)
        out = []
        for b in r["aggregations"]["top"]["buckets"][: max(0, int(size))]:
            key = b["key"]
            if pa.types.is_timestamp(elem):
                key = datetime.fromtimestamp(key / 1000, tz=timezone.utc)
            elif pa.types.is_boolean(elem):
                key = bool(key)
            out.append((key, int(b["doc_count"])))
        return out

    def histogram(self, table: str, query: str | None = "", since: datetime | str | None = None,
                  interval_s: int = 3600, until: datetime | str | None = None,
                  fill: bool = True) -> list[tuple[datetime, int]]:
        """Row counts per ``interval_s``-second bucket of ``@timestamp`` (epoch-aligned), oldest first;
        the same buckets and filling as :meth:`taishi.store.Store.histogram`."""
        step = int(interval_s)
        if step <= 0:
            raise ValueError("interval_s must be a positive number of seconds")
        now = self.clock()
        dsl = self.query_dsl(table, query, since, until)
        self._ensure()
        body = {"query": dsl, "size": 0, "aggs": {"h": {"date_histogram": {
            "field": TIME, "fixed_interval": f"{step}s", "min_doc_count": 1}}}}
        r = self._req("POST", f"/{self.index_name(table)}/_search", body)
        step_ms = step * 1000
        rows = {int(b["key"]): int(b["doc_count"]) for b in r["aggregations"]["h"]["buckets"]}

        def at(ms: int) -> datetime:
            return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)

        if not fill:
            return [(at(b), n) for b, n in sorted(rows.items())]

        def floor_ms(dt: datetime) -> int:
            return (int(_utc(dt).timestamp() * 1000) // step_ms) * step_ms

        if since is not None:
            start = floor_ms(parse_time_value(since, now))
        elif rows:
            start = min(rows)
        else:
            return []
        if until is not None:
            end = ((int(parse_time_value(until, now).timestamp() * 1000) - 1) // step_ms) * step_ms
        elif since is not None:
            end = max([floor_ms(now)] + list(rows))
        else:
            end = max(rows)
        if (end - start) // step_ms > 100_000:
            raise ValueError("histogram would have more than 100000 buckets; use a larger interval")
        return [(at(b), rows.get(b, 0)) for b in range(start, end + 1, step_ms)]

    def stats(self) -> dict[str, int]:
        """Document count per table."""
        self._ensure()
        return {name: int(self._req("POST", f"/{self.index_name(name)}/_count", {"query": {"match_all": {}}})["count"])
                for name in KINDS}

    # -- incidents -----------------------------------------------------------------------------------------
    # A document is the incident as the builder made it, plus its workflow (status, assignee,
    # merged_into and the append-only history; notes are the history's notes, as in the embedded
    # store), ``entity.value`` (indexed) and ``worked`` (its history holds more than its creation).
    # Every change is a compare-and-set write: read the document with its sequence number, ask
    # the workflow rules of correlate.incidents what changes, write with if_seq_no; a 409 (someone
    # wrote in between: a responder, the incidents job) reads again and retries.
    _WORKFLOW = ("status", "assignee", "merged_into", "history", "notes")
    _INTERNAL = ("entity.value", "worked", "created", "updated")
    _CAS_ATTEMPTS = 10

    def _incident_out(self, src: dict) -> dict:
        """A stored document as the embedded store returns an incident (same keys, same order)."""
        from correlate.incidents import notes_of
        from taishi.schema import parse_time

        inc = {k: v for k, v in src.items() if k not in self._WORKFLOW and k not in self._INTERNAL}
        inc["status"], inc["assignee"] = src.get("status") or "new", src.get("assignee")
        if src.get("merged_into"):
            inc["merged_into"] = src["merged_into"]
        inc["history"] = [{"at": parse_time(h["at"]), "who": h.get("who"), "field": h["field"], "old": h.get("old"),
                           "new": h.get("new")} for h in src.get("history") or []]
        inc["notes"] = notes_of(inc["history"])
        return inc

    def _incident_doc(self, src: dict, history: list[dict], now: str) -> dict:
        from correlate.incidents import unworked

        doc = dict(src)
        doc["history"] = history
        doc["worked"] = not unworked(history)
        doc["entity.value"] = [e.get("value") for e in src.get("entities") or [] if e.get("value")]
        doc["updated"] = now
        return doc

    def _mget(self, index: str, ids: list[str]) -> dict[str, dict]:
        """``id -> {"_source", "_seq_no", "_primary_term"}`` of the stored documents among ``ids``."""
        out: dict[str, dict] = {}
        for i in range(0, len(ids), 1000):
            r = self._req("POST", f"/{index}/_mget", {"ids": ids[i:i + 1000]})
            for d in r["docs"]:
                if d.get("found"):
                    out[d["_id"]] = d
        return out

    def _bulk_results(self, index: str, ops: list[tuple[dict, dict | None]]) -> list[dict]:
        """Bulk ``ops`` (action line, document or None) in chunks; the per-item results in order."""
        out: list[dict] = []
        params = self._refresh_params(index) or None
        for i in range(0, len(ops), 500):
            lines: list[bytes] = []
            for action, doc in ops[i:i + 500]:
                lines.append(_dumps(action))
                if doc is not None:
                    lines.append(_dumps(doc))
            r = self._req("POST", f"/{index}/_bulk", b"\n".join(lines) + b"\n", params=params, ndjson=True)
            out += [next(iter(item.values())) for item in r["items"]]
        return out

    def _upsert_incidents(self, built: Iterable[dict], who: str) -> tuple[int, int]:
        """The builder's output into the index with the workflow rules of correlate.incidents
        (:func:`~correlate.incidents.upsert_changes`); returns (new, written)."""
        from correlate.incidents import apply_changes, upsert_changes

        self._ensure()
        index = self.index_name("incidents")
        todo: dict[str, dict] = {}
        for inc in built:
            todo[inc["id"]] = inc
        new = written = 0
        for _ in range(self._CAS_ATTEMPTS):
            if not todo:
                return new, written
            now = _iso(self.clock())
            stored = self._mget(index, list(todo))
            ops: list[tuple[dict, dict | None]] = []
            pending: list[tuple[str, str]] = []
            for iid in sorted(todo):
                inc, cur = todo[iid], stored.get(iid)
                src = cur["_source"] if cur else None
                action, changes = upsert_changes(
                    None if src is None else {"status": src.get("status") or "new",
                                              "alert.count": src.get("alert.count"),
                                              "merged_into": src.get("merged_into")}, inc)
                if action == "skip":
                    del todo[iid]
                    continue
                history = list(src.get("history") or []) if src else []
                history += [{"at": now, "who": who, "field": f, "old": None if o is None else str(o),
                             "new": None if n is None else str(n)} for f, o, n in changes]
                if action == "merge":
                    base = dict(src)
                else:  # the built fields replace the stored ones; the workflow stays the store's
                    base = {k: v for k, v in inc.items() if k not in self._WORKFLOW}
                    if src is not None:
                        for k in ("status", "assignee", "merged_into", "created"):
                            if src.get(k) is not None:
                                base[k] = src[k]
                    else:
                        base["created"] = now
                status, assignee, merged = apply_changes(base.get("status") or "new", base.get("assignee"),
                                                         base.get("merged_into"), changes)
                base.update({"status": status, "assignee": assignee})
                if merged:
                    base["merged_into"] = merged
                doc = self._incident_doc(base, history, now)
                if cur is None:
                    ops.append(({"create": {"_id": iid}}, doc))
                else:
                    ops.append(({"index": {"_id": iid, "if_seq_no": cur["_seq_no"],
                                           "if_primary_term": cur["_primary_term"]}}, doc))
                pending.append((iid, action))
            for (iid, action), res in zip(pending, self._bulk_results(index, ops)):
                st = res.get("status", 500)
                if st in (200, 201):
                    del todo[iid]
                    written += 1
                    new += action == "create"
                elif st != 409:  # 409: written in between (a responder, a concurrent job): read again
                    raise SearchStoreError(f"writing incident {iid} into {index} failed: {res.get('error')}")
        if todo:
            raise SearchStoreError(f"{len(todo)} incident(s) kept changing while being written: {sorted(todo)[:5]}")
        return new, written

    def upsert_incidents(self, built: Iterable[dict], who: str = "taishi") -> int:
        """Store incidents as the builder made them (by ``id``); workflow fields are kept, as in
        :meth:`taishi.store.Store.upsert_incidents`: a new incident starts as ``new`` (history:
        created), new alerts reopen a resolved one (``acknowledged``, by ``who``), a
        ``{"id", "merged_into"}`` marker records the merge. Returns how many incidents were new."""
        return self._upsert_incidents(built, who)[0]

    def update_incident(self, iid: str, who: str, *, status: str | None = None, assignee: str | None = None,
                        set_assignee: bool = False, note: str | None = None) -> dict | None:
        """A responder's change (status transition, assignee, note), appended to the history;
        None if no such incident. An illegal transition raises ``correlate.incidents.WorkflowError``
        and changes nothing (the rules are :func:`correlate.incidents.workflow_changes`)."""
        from correlate.incidents import apply_changes, workflow_changes

        self._ensure()
        index = self.index_name("incidents")
        path = f"/{index}/_doc/{_path_id(iid)}"
        for _ in range(self._CAS_ATTEMPTS):
            r = self._req("GET", path, ok=(404,))
            if r is None or not r.get("found"):
                return None
            src = r["_source"]
            changes = workflow_changes(src.get("status") or "new", src.get("assignee"), status=status,
                                       assignee=assignee, set_assignee=set_assignee, note=note)
            if not changes:
                return self._incident_out(src)
            now = _iso(self.clock())
            st, asg, _ = apply_changes(src.get("status") or "new", src.get("assignee"), None, changes)
            history = list(src.get("history") or []) + [
                {"at": now, "who": who, "field": f, "old": o, "new": n} for f, o, n in changes]
            doc = self._incident_doc({**src, "status": st, "assignee": asg}, history, now)
            params = {"if_seq_no": r["_seq_no"], "if_primary_term": r["_primary_term"], **self._refresh_params(index)}
            if self._req("PUT", path, doc, params=params, ok=(409,)) is not None:
                return self._incident_out(doc)
        raise SearchStoreError(f"incident {iid} kept changing while being updated; try again")

    def incident(self, iid: str) -> dict | None:
        """One incident (built part, workflow, history, notes), or None."""
        self._ensure()
        r = self._req("GET", f"/{self.index_name('incidents')}/_doc/{_path_id(iid)}", ok=(404,))
        if r is None or not r.get("found"):
            return None
        return self._incident_out(r["_source"])

    def incident_dsl(self, query: str | None = "", since: datetime | str | None = None,
                     status: str | Sequence[str] | None = None, include_merged: bool = False) -> dict:
        """The node's query for :meth:`search_incidents` (validated as the embedded store does)."""
        from taishi.store import INCIDENT_DEFAULT_FIELDS, INCIDENT_QUERY_SCHEMA

        now = self.clock()
        compile_query(query or "", INCIDENT_QUERY_SCHEMA, INCIDENT_DEFAULT_FIELDS, now=now)
        filters: list[dict] = []
        if not include_merged:
            filters.append({"bool": {"must_not": [{"exists": {"field": "merged_into"}}]}})
        # title:x is the whole title, as embedded (title.keyword); bare terms search title.lc (contains)
        text = translate_query(query or "", INCIDENT_QUERY_SCHEMA, {"title": "title.keyword"})
        if text is not None:
            filters.append({"query_string": {"query": text, "fields": list(INCIDENT_DEFAULT_LC),
                                             "default_operator": "OR", "allow_leading_wildcard": True,
                                             "analyze_wildcard": True, "time_zone": "UTC"}})
        if since is not None:
            filters.append({"range": {"last_seen": {"gte": _iso(parse_time_value(since, now))}}})
        if status:
            filters.append({"terms": {"status": [status] if isinstance(status, str) else list(status)}})
        return {"bool": {"filter": filters}} if filters else {"match_all": {}}

    def search_incidents(self, query: str | None = "", since: datetime | str | None = None,
                         status: str | Sequence[str] | None = None, limit: int | None = 100,
                         include_merged: bool = False) -> list[dict]:
        """Incidents matching a Lucene ``query`` over the incident fields, last seen at or after
        ``since``, most recently active first (as :meth:`taishi.store.Store.search_incidents`)."""
        dsl = self.incident_dsl(query, since, status, include_merged)
        self._ensure()
        index = self.index_name("incidents")
        sort = [{"last_seen": {"order": "desc"}}, {"id": {"order": "asc"}}]
        want = None if limit is None else max(0, int(limit))
        if want == 0:
            return []
        out: list[dict] = []
        after = None
        while want is None or len(out) < want:
            size = 5000 if want is None else min(5000, want - len(out))
            body: dict = {"query": dsl, "sort": sort, "size": size, "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            hits = self._req("POST", f"/{index}/_search", body)["hits"]["hits"]
            out += [self._incident_out(h["_source"]) for h in hits]
            if len(hits) < size:
                break
            after = hits[-1]["sort"]
        return out

    def delete_unworked_incidents(self, keep: Iterable[str]) -> int:
        """Drop incidents nobody worked on (history holds only their creation) whose id is not in
        ``keep`` (a rebuild replaces them); a document changed since it was read is kept.
        Returns how many were dropped."""
        self._ensure()
        keep = set(keep)
        index = self.index_name("incidents")
        dsl = {"bool": {"must_not": [{"term": {"worked": True}}]}}
        doomed: list[tuple[str, int, int]] = []
        after = None
        while True:
            body: dict = {"query": dsl, "sort": [{"id": {"order": "asc"}}], "size": 5000, "_source": False,
                          "seq_no_primary_term": True, "track_total_hits": False}
            if after is not None:
                body["search_after"] = after
            hits = self._req("POST", f"/{index}/_search", body)["hits"]["hits"]
            doomed += [(h["_id"], h["_seq_no"], h["_primary_term"]) for h in hits if h["_id"] not in keep]
            if len(hits) < 5000:
                break
            after = hits[-1]["sort"]
        ops = [({"delete": {"_id": i, "if_seq_no": s, "if_primary_term": t}}, None) for i, s, t in doomed]
        res = self._bulk_results(index, ops) if ops else []
        return sum(1 for r in res if r.get("status") == 200)

    # -- traceback: what the incident view reads from the events --------------------------------------------
    def _composite(self, index: str, dsl: dict, sources: list[tuple[str, str]], aggs: dict | None = None,
                   size: int = 1000) -> Iterable[dict]:
        """Every bucket of a composite aggregation over ``sources`` ((name, field), missing values
        as None buckets), paged by ``after_key``."""
        after = None
        while True:
            comp: dict = {"size": size, "sources": [{n: {"terms": {"field": f, "missing_bucket": True}}}
                                                    for n, f in sources]}
            if after is not None:
                comp["after"] = after
            agg: dict = {"composite": comp}
            if aggs:
                agg["aggs"] = aggs
            r = self._req("POST", f"/{index}/_search", {"query": dsl, "size": 0, "aggs": {"c": agg}},
                          params={"ignore_unavailable": "true"})
            c = r["aggregations"]["c"]
            yield from c["buckets"]
            after = c.get("after_key")
            if not c["buckets"] or after is None:
                return

    def _edge_time(self, index: str, dsl: dict, field: str, top: list[dict], newest: bool) -> str | None:
        """The earliest (``newest``: latest) ``field`` value, as stored (to the microsecond), of the
        documents ``dsl`` finds, from a top_hits sorted on it; the node sorts dates by the
        millisecond, so ties within that millisecond are read."""
        from taishi.schema import parse_time

        vals = [h["_source"][field] for h in top if h["_source"].get(field)]
        if not vals:
            return None
        pick = max if newest else min
        edge = parse_time(pick(vals, key=parse_time))
        ms = edge.replace(microsecond=edge.microsecond // 1000 * 1000)
        if len(vals) > 1 and all(ms <= parse_time(v) < ms + timedelta(milliseconds=1) for v in vals):
            rng = {"range": {field: {"gte": _iso(ms), "lt": _iso(ms + timedelta(milliseconds=1))}}}
            hits = self._req("POST", f"/{index}/_search", {
                "query": {"bool": {"filter": [dsl, rng]}}, "size": 10_000, "_source": [field]})["hits"]["hits"]
            vals += [h["_source"][field] for h in hits if h["_source"].get(field)]
        return pick(vals, key=parse_time)

    def connections_between(self, ips: Sequence[str], since: datetime, until: datetime,
                            limit: int = 5000) -> list[dict]:
        """Observed connections (flow/conn events) whose both ends are in ``ips`` within
        ``[since, until]``, per (source, destination, port, protocol): first time, count, bytes
        and the smallest event id -- :meth:`taishi.store.Store.connections_between` as terms, range
        and composite aggregations (addresses compared as the stored strings, as embedded)."""
        from taishi.schema import parse_time

        ips = sorted({i for i in ips if i})
        if len(ips) < 2:
            return []
        self._ensure()
        index = self.index_name("events")
        dsl = {"bool": {
            "filter": [{"terms": {"source.ip.text": ips}}, {"terms": {"destination.ip.text": ips}},
                       {"range": {TIME: {"gte": _iso(since), "lte": _iso(until)}}},
                       {"term": {"event.category": "network"}},
                       {"bool": {"should": [{"term": {"event.type": "connection"}},
                                            {"bool": {"must_not": [{"exists": {"field": "event.type"}}]}}],
                                 "minimum_should_match": 1}}]}}
        sources = [("s", "source.ip.text"), ("d", "destination.ip.text"), ("p", "destination.port"),
                   ("t", "network.transport"), ("q", "network.protocol")]
        aggs = {
            "first": {"top_hits": {"size": 3, "sort": [{TIME: {"order": "asc"}}], "_source": [TIME]}},
            "eid": {"top_hits": {"size": 1, "sort": [{"event.id": {"order": "asc"}}], "_source": ["event.id"]}},
            # bytes: network.bytes, else source.bytes + destination.bytes (the embedded coalesce)
            "nb": {"filter": {"exists": {"field": "network.bytes"}}, "aggs": {"v": {"sum": {"field": "network.bytes"}}}},
            "sd": {"filter": {"bool": {"must_not": [{"exists": {"field": "network.bytes"}}]}},
                   "aggs": {"s": {"sum": {"field": "source.bytes"}}, "d": {"sum": {"field": "destination.bytes"}}}},
        }
        groups: dict[tuple, dict] = {}
        for b in self._composite(index, dsl, sources, aggs):
            k = b["key"]
            if k["s"] is None or k["d"] is None or k["s"] == k["d"]:
                continue
            key = (k["s"], k["d"], k["p"], k["t"] if k["t"] is not None else k["q"])
            flt = {"bool": {"filter": [dsl] + [
                {"term": {f: k[n]}} if k[n] is not None else {"bool": {"must_not": [{"exists": {"field": f}}]}}
                for n, f in sources]}}
            first = self._edge_time(index, flt, TIME, b["first"]["hits"]["hits"], newest=False)
            nbytes = int(b["nb"]["v"]["value"] or 0) + int(b["sd"]["s"]["value"] or 0) + int(b["sd"]["d"]["value"] or 0)
            eid = b["eid"]["hits"]["hits"][0]["_source"].get("event.id")
            g = groups.get(key)
            if g is None:
                groups[key] = {"first": first, "count": int(b["doc_count"]), "bytes": nbytes, "eid": eid}
            else:  # transport and protocol folded into one (coalesce): merge the buckets
                if parse_time(first) < parse_time(g["first"]):
                    g["first"] = first
                g["count"] += int(b["doc_count"])
                g["bytes"] += nbytes
                g["eid"] = min(g["eid"], eid)
        rows = sorted(((parse_time(g["first"]), s, d, p, proto, g) for (s, d, p, proto), g in groups.items()),
                      key=lambda r: (r[0], r[1], r[2], r[3] is None, r[3] or 0, r[4] is None, r[4] or ""))
        return [{"source.ip": s, "destination.ip": d, "destination.port": p, "network.protocol": proto,
                 "first": first, "count": g["count"], "bytes": g["bytes"], "event.id": g["eid"]}
                for first, s, d, p, proto, g in rows[:int(limit)]]

    def _last_time(self, index: str, dsl: dict, field: str, top: list[dict]) -> datetime | None:
        """The newest ``field`` of the documents ``dsl`` finds, from a descending top_hits."""
        from taishi.schema import parse_time

        last = self._edge_time(index, dsl, field, top, newest=True)
        return parse_time(last) if last else None

    def dataset_activity(self, since: datetime, until: datetime, lookback: datetime | None = None,
                         limit: int = 50) -> list[tuple[str | None, int, datetime | None, datetime | None]]:
        """:meth:`taishi.store.Store.dataset_activity` as a composite aggregation per ``event.dataset``
        (events in the window counted by a filter, the newest times read as stored)."""
        self._ensure()
        index = self.index_name("events")
        dsl = self.query_dsl("events", "", min(lookback or since, since), until)
        aggs = {"n": {"filter": {"range": {TIME: {"gte": _iso(since)}}}}}
        for name, field in (("last", TIME), ("ing", INGESTED)):
            aggs[name] = {"top_hits": {"size": 3, "sort": [{field: {"order": "desc", "missing": "_last"}}],
                                       "_source": [field]}}
        rows = []
        for b in self._composite(index, dsl, [("ds", "event.dataset")], aggs):
            ds = b["key"]["ds"]
            flt = {"bool": {"filter": [dsl, {"term": {"event.dataset": ds}}]}} if ds is not None else \
                {"bool": {"filter": [dsl], "must_not": [{"exists": {"field": "event.dataset"}}]}}
            rows.append((ds, int(b["n"]["doc_count"]),
                         self._last_time(index, flt, TIME, b["last"]["hits"]["hits"]),
                         self._last_time(index, flt, INGESTED, b["ing"]["hits"]["hits"])))
        rows.sort(key=lambda r: (-r[1], r[0] is None, r[0] or ""))
        return rows[:max(0, int(limit))]

    def last_seen(self, field: str, since: datetime | str | None = None, until: datetime | str | None = None,
                  limit: int = 10_000) -> dict[Any, datetime]:
        """:meth:`taishi.store.Store.last_seen`: the newest ``@timestamp`` per value of ``field``
        (a composite aggregation, the times read as stored)."""
        k = KINDS["events"]
        col = resolve_field(field, k.query_schema)
        typ = k.query_schema.field(col).type
        if pa.types.is_list(typ):
            raise ValueError(f"{col} is a list field")
        if col in TEXT_FIELDS:
            raise QueryError(f"{col} is a text field: it cannot be aggregated on the search node")
        self._ensure()
        index = self.index_name("events")
        dsl = self.query_dsl("events", "", since, until)
        name = f"{col}.text" if _is_ip(col) and pa.types.is_string(typ) else RENAMED.get(col, col)
        aggs = {"last": {"top_hits": {"size": 3, "sort": [{TIME: {"order": "desc", "missing": "_last"}}],
                                      "_source": [TIME]}}}
        out: dict[Any, datetime] = {}
        for b in self._composite(index, dsl, [("v", name)], aggs):
            v = b["key"]["v"]
            if v is None:
                continue
            last = self._last_time(index, {"bool": {"filter": [dsl, {"term": {name: v}}]}}, TIME,
                                   b["last"]["hits"]["hits"])
            if last is not None:
                out[v] = last
            if len(out) >= max(0, int(limit)):
                break
        return out

    # network.bytes, else source.bytes + destination.bytes (the embedded store's coalesce), per document
    _FLOW_BYTES = {"script": {"lang": "painless", "source": (
        "if (doc['network.bytes'].size() > 0) { return doc['network.bytes'].value; } "
        "long s = doc['source.bytes'].size() > 0 ? doc['source.bytes'].value : 0L; "
        "long d = doc['destination.bytes'].size() > 0 ? doc['destination.bytes'].value : 0L; return s + d;")}}

    def flow_summary(self, query: str | None, since: datetime | str | None, until: datetime | str | None,
                     interval_s: int, top: int = 10, ports: int = 15, protocols: int = 15,
                     transports: int = 10) -> dict[str, Any]:
        """:meth:`taishi.store.Store.flow_summary` with the node's aggregations (bytes by a script over
        the three byte fields; distinct addresses by ``cardinality``, exact below 40000 values and
        approximate above)."""
        self._ensure()
        index = self.index_name("events")
        dsl = self.query_dsl("events", query, since, until)
        step = max(1, int(interval_s))
        by = {"b": {"sum": self._FLOW_BYTES}}
        aggs = {
            "bytes": {"sum": self._FLOW_BYTES},
            "ns": {"cardinality": {"field": "source.ip.text", "precision_threshold": 40000}},
            "nd": {"cardinality": {"field": "destination.ip.text", "precision_threshold": 40000}},
            "vol": {"date_histogram": {"field": TIME, "fixed_interval": f"{step}s", "min_doc_count": 1}, "aggs": by},
            "pro": {"terms": {"field": "network.protocol", "missing": "(unknown)", "size": int(protocols),
                              "order": [{"_count": "desc"}, {"_key": "asc"}]}},
            "tra": {"terms": {"field": "network.transport", "missing": "(unknown)", "size": int(transports),
                              "order": [{"_count": "desc"}, {"_key": "asc"}]}},
        }
        r = self._req("POST", f"/{index}/_search", {"query": dsl, "size": 0, "track_total_hits": True,
                                                    "aggs": aggs}, params={"ignore_unavailable": "true"})
        a = r["aggregations"]
        n = int(r["hits"]["total"]["value"])
        # talkers and ports over every group (composite), ordered as the embedded SQL orders them
        talk = [(b["key"]["ip"], int(b["doc_count"]), int(b["b"]["value"] or 0)) for b in self._composite(
            index, {"bool": {"filter": [dsl, {"exists": {"field": "source.ip"}}]}}, [("ip", "source.ip.text")], by)
            if b["key"]["ip"] is not None]
        talk.sort(key=lambda x: (-x[2], -x[1], x[0]))
        prt = [(int(b["key"]["p"]), b["key"]["t"], int(b["doc_count"]), int(b["b"]["value"] or 0))
               for b in self._composite(index, {"bool": {"filter": [dsl, {"exists": {"field": "destination.port"}}]}},
                                        [("p", "destination.port"), ("t", "network.transport")], by)
               if b["key"]["p"] is not None]
        prt.sort(key=lambda x: (-x[2], x[0], x[1] is None, x[1] or ""))
        return {"totals": (n, int(a["bytes"]["value"] or 0), int(a["ns"]["value"]), int(a["nd"]["value"])),
                "volume": [(int(b["key"]) // 1000, int(b["doc_count"]), int(b["b"]["value"] or 0))
                           for b in a["vol"]["buckets"]],
                "talkers": talk[:int(top)], "ports": prt[:int(ports)],
                "protocols": [(b["key"], int(b["doc_count"])) for b in a["pro"]["buckets"]],
                "transports": [(b["key"], int(b["doc_count"])) for b in a["tra"]["buckets"]]}

    def deadletter_summary(self, limit: int = 20) -> list[tuple[str | None, str | None, int]]:
        """:meth:`taishi.store.Store.deadletter_summary`: dead letters per (source, stage), most first."""
        self._ensure()
        rows = [(b["key"]["s"], b["key"]["g"], int(b["doc_count"])) for b in self._composite(
            self.index_name("deadletters"), {"match_all": {}},
            [("s", RENAMED.get("taishi.source", "taishi.source")), ("g", "stage")])]
        rows.sort(key=lambda r: (-r[2], r[0] is None, r[0] or "", r[1] is None, r[1] or ""))
        return rows[:max(0, int(limit))]

    def host_addresses(self, hosts: Sequence[str], since: datetime, until: datetime) -> dict[str, str]:
        """Host names to addresses from the events, as :meth:`taishi.store.Store.host_addresses`:
        the client address and port a host log line names (sshd's "from A port P") pair with the
        connections a network sensor saw from that port; the most frequent destination wins."""
        hosts = sorted({h for h in hosts if h})
        if not hosts:
            return {}
        self._ensure()
        index = self.index_name("events")
        margin = timedelta(hours=1)
        window = {"range": {TIME: {"gte": _iso(since - margin), "lte": _iso(until + margin)}}}
        logged = self._composite(index, {"bool": {"filter": [
            {"terms": {"host.name": hosts}}, {"exists": {"field": "source.ip"}}, {"exists": {"field": "source.port"}},
            window]}}, [("h", "host.name"), ("sip", "source.ip.text"), ("sport", "source.port")])
        by_client: dict[tuple[str, int], list[str]] = {}
        for b in logged:
            k = b["key"]
            if k["sip"] is not None and k["sport"] is not None:
                by_client.setdefault((k["sip"], k["sport"]), []).append(k["h"])
        if not by_client:
            return {}
        counts: dict[tuple[str, str], int] = {}
        sips = sorted({c[0] for c in by_client})
        ports = sorted({c[1] for c in by_client})
        seen = self._composite(index, {"bool": {"filter": [
            {"term": {"event.category": "network"}}, {"exists": {"field": "destination.ip"}}, window,
            {"terms": {"source.ip.text": sips}}, {"terms": {"source.port": ports}}]}},
            [("sip", "source.ip.text"), ("sport", "source.port"), ("dip", "destination.ip.text")])
        for b in seen:
            k = b["key"]
            for h in by_client.get((k["sip"], k["sport"]), ()):
                if k["dip"] is not None:
                    counts[(h, k["dip"])] = counts.get((h, k["dip"]), 0) + int(b["doc_count"])
        out: dict[str, str] = {}
        for (h, dip), _n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
            out.setdefault(h, dip)
        return out

    # -- retention --------------------------------------------------------------------------------------------
    def drop_all(self) -> None:
        """Delete every data stream, index and index template under this store's prefix
        (a test's or a retired deployment's namespace). The node deletes by name only, so the
        names are listed by pattern first."""
        pattern = f"{self.prefix}-*"
        streams = self._req("GET", f"/_data_stream/{pattern}", ok=(404,)) or {}
        for ds in streams.get("data_streams", []):
            self._req("DELETE", f"/_data_stream/{ds['name']}", ok=(404,))
        for ix in self._req("GET", f"/_cat/indices/{pattern}", params={"format": "json"}, ok=(404,)) or []:
            self._req("DELETE", f"/{ix['index']}", ok=(404,))
        templates = self._req("GET", f"/_index_template/{pattern}", ok=(404,)) or {}
        for t in templates.get("index_templates", []):
            self._req("DELETE", f"/_index_template/{t['name']}", ok=(404,))

    def apply_retention(self, max_age_days: dict[str, int | float | None] | None = None,
                        now: datetime | None = None) -> dict[str, int]:
        """Enforce retention by ``now`` (default: the store's clock); returns what was deleted per table.

        Events: with ILM/ISM the node does it and nothing happens here; otherwise the
        data stream is rolled over when its write index is older than 30 days, and a
        backing index is deleted once the one after it (so its last write) is older
        than the retention (never less than 180 days). Alerts age by ``event.ingested``
        and dead letters by ``@timestamp``, as in the embedded store."""
        self._ensure()
        now = _utc(now or self.clock())
        days = {**self.retention_days, **(max_age_days or {})}
        days["events"] = max(int(days.get("events") or MIN_EVENT_RETENTION_DAYS), MIN_EVENT_RETENTION_DAYS)
        out = {"events": 0}
        if self._retention_kind == "taishi":
            out["events"] = self._expire_event_indices(now, days["events"])
        for name, field in (("alerts", INGESTED), ("deadletters", TIME)):
            d = days.get(name)
            out[name] = 0 if not d or d <= 0 else self._delete_older(name, field, now - timedelta(days=float(d)))
        return out

    def _backing(self) -> list[tuple[str, datetime]]:
        ev = self.index_name("events")
        ds = self._req("GET", f"/_data_stream/{ev}")["data_streams"][0]
        names = [i["index_name"] for i in ds["indices"]]
        st = self._req("GET", f"/{','.join(names)}/_settings/index.creation_date", params={"expand_wildcards": "all"})
        return [(n, datetime.fromtimestamp(int(st[n]["settings"]["index"]["creation_date"]) / 1000, tz=timezone.utc))
                for n in names]

    def _expire_event_indices(self, now: datetime, days: int) -> int:
        ev = self.index_name("events")
        backing = self._backing()
        if now - backing[-1][1] >= timedelta(days=ROLLOVER_DAYS):
            self._req("POST", f"/{ev}/_rollover")
            backing = self._backing()
        deleted = 0
        cutoff = now - timedelta(days=days)
        for (name, _created), (_next, next_created) in zip(backing, backing[1:]):
            if next_created < cutoff:  # its last write was before the next one was created
                n = int(self._req("POST", f"/{name}/_count", {"query": {"match_all": {}}})["count"])
                self._req("DELETE", f"/{name}")
                deleted += n
        return deleted

    def _delete_older(self, table: str, field: str, cutoff: datetime) -> int:
        index = self.index_name(table)
        dsl = {"range": {field: {"lt": _iso(cutoff)}}}
        deleted = 0
        while True:
            hits = self._req("POST", f"/{index}/_search", {"query": dsl, "_source": False, "size": 5000})["hits"]["hits"]
            if not hits:
                return deleted
            lines = [_dumps({"delete": {"_id": h["_id"]}}) for h in hits]
            self._req("POST", f"/{index}/_bulk", b"\n".join(lines) + b"\n", params={"refresh": "true"}, ndjson=True)
            deleted += len(hits)


def _cidrs(values: Iterable[str] | None) -> list[str]:
    import ipaddress

    out = []
    for v in values or []:
        try:
            out.append(str(ipaddress.ip_network(str(v).strip(), strict=False)))
        except ValueError:
            continue  # the inventory validated them; a stray value is not an address range
    return out


def _values(x: Any) -> list:
    return list(x.values()) if isinstance(x, dict) else list(x or [])


def _path_id(i: str) -> str:
    from urllib.parse import quote

    return quote(str(i), safe="")


def _days(age: str) -> int:
    m = re.fullmatch(r"(\d+)d", str(age))
    if not m:
        raise SearchStoreError(f"unexpected age {age!r} in the retention policy")
    return int(m.group(1))


# --------------------------------------------------------------------------- query translation
def translate_query(query: str, schema: pa.Schema, fields: dict[str, str] | None = None) -> str | None:
    """The query string the node runs for an embedded-syntax ``query`` (None: match everything).

    Field names are resolved as the embedded store resolves them and renamed for the
    index; address values on IP fields are quoted; wildcards on IP fields go to the
    ``.text`` sub-field (see module doc). ``fields`` sends a field's terms to another
    (sub-)field of the index, e.g. ``{"title": "title.keyword"}``."""
    q = (query or "").strip()
    if not q or q == "*":
        return None
    return str(_rewrite(parser.parse(q), None, schema, fields or {}))


def _quote(node: tree.Item) -> None:
    if isinstance(node, tree.Word) and not any(c in node.value for c in "*?"):
        node.value = '"' + _unescape(node.value).replace('"', '\\"') + '"'


def _as_range(node: tree.Item) -> tree.Range:
    """``>=x`` / ``<x`` ... as ``[x TO *]`` / ``[* TO x}`` (the node's parser takes quoted bounds only there)."""
    star = tree.Word("*")
    bound = node.a
    outer_head, outer_tail = node.head + bound.head, bound.tail + node.tail
    if isinstance(node, tree.From):
        low, high, inc_low, inc_high = bound, star, node.include, True
    else:
        low, high, inc_low, inc_high = star, bound, True, node.include
    low.head, low.tail, high.head, high.tail = "", " ", " ", ""
    r = tree.Range(low, high, include_low=inc_low, include_high=inc_high)
    r.head, r.tail = outer_head, outer_tail
    return r


def _rewrite(node: tree.Item, field: str | None, schema: pa.Schema, fields: dict[str, str] | None = None) -> tree.Item:
    """Rewrite ``node`` in place for the node's query_string; returns it or its replacement."""
    if isinstance(node, tree.SearchField):
        name = _unescape(node.name)
        if name == "_exists_":
            if isinstance(node.expr, tree.Word):
                target = resolve_field(_unescape(node.expr.value), schema)
                node.expr.value = (fields or {}).get(target) or RENAMED.get(target, target)
            return node
        col = resolve_field(name, schema)
        target = (fields or {}).get(col) or RENAMED.get(col, col)
        if _is_ip(col) and _has_wildcard(node.expr):
            target += ".text"
        node.name = target
        node.children = [_rewrite(node.expr, col, schema, fields)]
        return node
    if field is None or field in TEXT_FIELDS:
        if isinstance(node, tree.Word) and node.value != "*" and not node.value.startswith("/"):
            # the embedded store's "contains": *word* (the words of text fields, the lowercased
            # value of keyword default fields)
            node.value = ("" if node.value.startswith("*") else "*") + node.value + \
                ("" if node.value.endswith("*") and not node.value.endswith("\\*") else "*")
            return node
    if field is not None:
        ftype = schema.field(field).type
        elem = ftype.value_type if pa.types.is_list(ftype) else ftype
        quote = _is_ip(field) or pa.types.is_timestamp(elem)
        if isinstance(node, (tree.From, tree.To)):
            node = _as_range(node)
        if isinstance(node, tree.Word):
            if quote or ":" in node.value:
                _quote(node)
            return node
        if isinstance(node, tree.Range):
            if quote:
                _quote(node.low)
                _quote(node.high)
            return node
    if node.children:
        node.children = [_rewrite(c, field, schema, fields) for c in node.children]
    return node


def _has_wildcard(node: tree.Item) -> bool:
    if isinstance(node, tree.Word):
        return any(c in node.value for c in "*?") and node.value != "*"
    return any(_has_wildcard(c) for c in node.children)
