"""The Grafana dashboards: load, validate, and say what each panel asks the search node.

The JSON files beside this module are the source of truth (edit them in
Grafana, export, commit). Every panel reads one Taishi index through a
datasource whose uid is a dashboard *constant* variable (``${ds_alerts}`` ->
``taishi-alerts``), so the same JSON works when Grafana loads it from the
provisioning directory and when ``taishi dashboards push`` uploads it.

:func:`datasources` is the one definition of those datasources, for both
provisioning (:func:`provisioning_yaml`) and push: Grafana's built-in
``elasticsearch`` type for an Elasticsearch 8 node, the
``grafana-opensearch-datasource`` plugin for OpenSearch (Grafana's
Elasticsearch datasource is documented for Elasticsearch only and warns or
refuses on OpenSearch's 2.x version number). Both plugins take the same
Lucene query model (``query``, ``metrics``, ``bucketAggs``, ``timeField``),
which is all the panels use.

:func:`panel_requests` turns a panel's targets into the search request
Grafana's backend sends (``query_string`` + time range filter,
``date_histogram`` with ``fixed_interval`` and extended bounds, ``terms`` with
size/order/min_doc_count, metric sub-aggregations, raw documents sorted by
time); :func:`rows` flattens the response the way Grafana's data frames do.
The integration test runs every panel through them against the real node.

>>> dash = load("overview")
>>> [r["index"] for r in panel_requests(dash, dash["panels"][0], start=0, end=3600_000)]
['taishi-posture']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

DIR = Path(__file__).resolve().parent
PROVISIONING = DIR / "provisioning"
FOLDER_UID = "taishi"
FOLDER_TITLE = "Taishi"
# The indices panels read (index name = "<prefix>-<name>", datasource uid = "taishi-<name>").
INDICES = ("events", "alerts", "incidents", "assets", "posture", "compliance", "deadletters")
FLAVORS = ("elasticsearch", "opensearch")
PLUGIN = {"elasticsearch": "elasticsearch", "opensearch": "grafana-opensearch-datasource"}
DEFAULT_OPENSEARCH_VERSION = "2.19.0"
TIME_FIELD = "@timestamp"
# An index's time field when it is not @timestamp (incidents: their last activity).
TIME_FIELDS = {"incidents": "last_seen"}

BUCKET_AGGS = ("date_histogram", "terms", "geohash_grid", "filters")
METRICS = ("count", "sum", "avg", "min", "max", "cardinality", "raw_data")
_METRIC_AGG = {"sum": "sum", "avg": "avg", "min": "min", "max": "max", "cardinality": "cardinality"}

_VAR = re.compile(r"\$(?:\{(\w+)(?::(\w+))?\}|(\w+))")
_LUCENE_SPECIAL = re.compile(r'([!*+\-=<>\s&|()\[\]{}^~?:\\/"])')


class DashboardError(ValueError):
    pass


# ------------------------------------------------------------------------------ loading

def files() -> list[Path]:
    return sorted(DIR.glob("*.json"))


def load(name: str | Path) -> dict[str, Any]:
    """One dashboard by file stem (``overview``) or path."""
    path = Path(name) if str(name).endswith(".json") else DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def load_all() -> dict[str, dict[str, Any]]:
    """Every dashboard, by uid."""
    out: dict[str, dict[str, Any]] = {}
    for f in files():
        d = load(f)
        if d.get("uid") in out:
            raise DashboardError(f"{f.name}: uid {d.get('uid')!r} used twice")
        out[d["uid"]] = d
    return out


def panels(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows; rows themselves are not panels."""
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


# ------------------------------------------------------------------------------ datasources

def datasource_uid(index: str) -> str:
    return f"taishi-{index}"


def index_time_field(name: str) -> str:
    """The time field of Taishi index ``name`` (``alerts``, ``incidents`` ...)."""
    return TIME_FIELDS.get(name, TIME_FIELD)


def datasources(url: str, flavor: str = "elasticsearch", *, prefix: str = "taishi",
                version: str | None = None) -> list[dict[str, Any]]:
    """The Grafana datasources, one per index, as the HTTP API and provisioning both take them."""
    if flavor not in FLAVORS:
        raise DashboardError(f"flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
    out = []
    for name in INDICES:
        index = f"{prefix}-{name}"
        json_data: dict[str, Any] = {"timeField": index_time_field(name), "maxConcurrentShardRequests": 5,
                                     "logMessageField": "message"}
        if flavor == "elasticsearch":
            json_data["index"] = index
        else:
            json_data.update({"database": index, "flavor": "opensearch",
                              "version": version or DEFAULT_OPENSEARCH_VERSION, "pplEnabled": False})
        out.append({"uid": datasource_uid(name), "name": f"Taishi {name}", "type": PLUGIN[flavor],
                    "access": "proxy", "url": url, "database": index, "isDefault": False,
                    "editable": True, "jsonData": json_data})
    return out


def provisioning_yaml(url: str, flavor: str = "elasticsearch", *, prefix: str = "taishi",
                      version: str | None = None) -> str:
    """``provisioning/datasources/taishi.yaml`` for ``flavor`` (Grafana expands ``${VAR}`` in ``url``)."""
    import yaml

    doc = {"apiVersion": 1,
           "deleteDatasources": [],
           "datasources": [{"orgId": 1, **d} for d in datasources(url, flavor, prefix=prefix, version=version)]}
    head = (f"# Generated by `taishi dashboards provisioning` (flavor {flavor}) from dashboards/__init__.py:\n"
            "# one datasource per Taishi index; the dashboards refer to them by uid through constant\n"
            "# variables. TAISHI_SEARCH_URL is expanded by Grafana from its environment.\n")
    if flavor == "opensearch":
        head += "# Needs the grafana-opensearch-datasource plugin (GF_INSTALL_PLUGINS=grafana-opensearch-datasource).\n"
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def provider_yaml(path: str = "/etc/taishi/dashboards") -> str:
    """``provisioning/dashboards/taishi.yaml``: a file provider over the JSON in ``path``."""
    import yaml

    doc = {"apiVersion": 1, "providers": [{
        "name": "taishi", "orgId": 1, "folder": FOLDER_TITLE, "folderUid": FOLDER_UID, "type": "file",
        "disableDeletion": False, "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": path, "foldersFromFilesStructure": False}}]}
    head = ("# Generated by `taishi dashboards provisioning` from dashboards/__init__.py: Grafana loads\n"
            f"# every dashboards/*.json mounted at {path} into the folder {FOLDER_TITLE!r}.\n")
    return head + yaml.safe_dump(doc, sort_keys=False)


def provisioning_files(url: str = "${TAISHI_SEARCH_URL}") -> dict[str, str]:
    """The committed provisioning files (path relative to ``dashboards/``) -> content. The default
    datasources are OpenSearch's (the node ``taishi services up`` runs is OpenSearch 2.19); mount
    ``provisioning/elasticsearch/datasources`` instead for an Elasticsearch 8 node."""
    return {"provisioning/datasources/taishi.yaml": provisioning_yaml(url, "opensearch"),
            "provisioning/elasticsearch/datasources/taishi.yaml": provisioning_yaml(url, "elasticsearch"),
            "provisioning/dashboards/taishi.yaml": provider_yaml()}


# ------------------------------------------------------------------------------ variables

def variables(dash: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash.get("templating", {}).get("list", [])}


def default_values(dash: Mapping[str, Any]) -> dict[str, Any]:
    """Each variable's value when the dashboard opens (``$__all`` for an All selection)."""
    out: dict[str, Any] = {}
    for name, v in variables(dash).items():
        if v["type"] == "adhoc":
            continue
        if v["type"] in ("constant", "textbox"):
            out[name] = v.get("query", "")
            continue
        cur = (v.get("current") or {}).get("value")
        if cur is None:
            opts = [o.strip() for o in str(v.get("query", "")).split(",") if o.strip()]
            cur = "$__all" if v.get("includeAll") else (opts[0] if opts else "")
        out[name] = cur
    return out


def lucene_escape(value: str) -> str:
    """Grafana's ``lucene`` variable format for one value."""
    return _LUCENE_SPECIAL.sub(r"\\\1", value)


def interpolate(text: str, dash: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> str:
    """Replace ``$var``, ``${var}`` and ``${var:fmt}`` as Grafana does in an Elasticsearch/OpenSearch
    query (default format ``lucene``: one value escaped, several as ``("a" OR "b")``; a custom
    *All* value verbatim; ``raw`` verbatim)."""
    vars_ = variables(dash)
    vals = {**default_values(dash), **(values or {})}

    def one(m: re.Match) -> str:
        name, fmt = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), None)
        if name not in vals:
            return m.group(0)  # a Grafana built-in ($__interval ...) or unknown: left as is
        value, var = vals[name], vars_.get(name, {})
        if value in ("$__all", ["$__all"]):
            if var.get("allValue") is not None:
                return str(var["allValue"])
            value = [o.strip() for o in str(var.get("query", "")).split(",") if o.strip()]
        if fmt == "raw":
            return ",".join(value) if isinstance(value, list) else str(value)
        if fmt not in (None, "lucene"):
            raise DashboardError(f"variable format {fmt!r} is not used by Taishi dashboards")
        if isinstance(value, list):
            if len(value) == 1:
                return lucene_escape(str(value[0]))
            return "(" + " OR ".join('"' + lucene_escape(str(x)) + '"' for x in value) + ")"
        return lucene_escape(str(value))

    return _VAR.sub(one, text)


def _adhoc(query: str, filters: Sequence[tuple[str, str, str]]) -> str:
    """Ad-hoc filters appended as Grafana's Elasticsearch query builder does."""
    parts = [query] if query.strip() else []
    for key, op, value in filters:
        term = f'{key}:"{value}"'
        if op == "=":
            parts.append(term)
        elif op == "!=":
            parts.append(f"-{term}")
        else:
            raise DashboardError(f"ad-hoc operator {op!r} is not supported here")
    return " AND ".join(parts)


# ------------------------------------------------------------------------------ requests

_REL = re.compile(r"^(?:now-)?(\d+)([smhdwMy])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
            "M": 30 * 86_400_000, "y": 365 * 86_400_000}


def _relative_ms(text: str) -> int:
    m = _REL.match(str(text).strip())
    if not m:
        raise DashboardError(f"relative time {text!r}: expected N followed by s, m, h, d, w, M or y")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def _index_of(ref: Mapping[str, Any] | None, dash: Mapping[str, Any], prefix: str) -> str:
    uid = str((ref or {}).get("uid", ""))
    var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if var:  # a datasource uid variable: its value, verbatim
        uid = str(default_values(dash).get(var.group(1), uid))
    m = re.fullmatch(r"taishi-(\w+)", uid)
    if not m or m.group(1) not in INDICES:
        raise DashboardError(f"datasource uid {uid!r} is not one of Taishi's ({', '.join(map(datasource_uid, INDICES))})")
    return f"{prefix}-{m.group(1)}"


def _int(settings: Mapping[str, Any], key: str, default: int) -> int:
    v = settings.get(key, default)
    return int(v) if str(v).strip() not in ("", "None") else default


def _metric_aggs(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    aggs = {}
    for m in metrics:
        if m["type"] in _METRIC_AGG:
            aggs[str(m["id"])] = {_METRIC_AGG[m["type"]]: {"field": m["field"]}}
    return aggs


def _bucket(agg: Mapping[str, Any], start: int, end: int, interval: str,
            interp: Any = lambda q: q) -> dict[str, Any]:
    s = agg.get("settings", {})
    if agg["type"] == "date_histogram":
        iv = s.get("interval", "auto")
        return {"date_histogram": {"field": agg.get("field") or TIME_FIELD,
                                   "fixed_interval": interval if iv in ("auto", "", None) else iv,
                                   "min_doc_count": _int(s, "min_doc_count", 0),
                                   "extended_bounds": {"min": start, "max": end}, "format": "epoch_millis"}}
    if agg["type"] == "terms":
        size = _int(s, "size", 10) or 500  # Grafana: size 0 means 500
        order_by = s.get("orderBy", "_term")
        key = "_key" if order_by == "_term" else str(order_by)
        return {"terms": {"field": agg["field"], "size": size, "order": {key: s.get("order", "desc")},
                          "min_doc_count": _int(s, "min_doc_count", 1)}}
    if agg["type"] == "geohash_grid":
        return {"geohash_grid": {"field": agg["field"], "precision": _int(s, "precision", 3)}}
    if agg["type"] == "filters":  # one bucket per Lucene filter, named by its label or query
        fs = s.get("filters") or [{"query": "*", "label": ""}]
        return {"filters": {"filters": {(f.get("label") or f.get("query") or "*"):
                                        {"query_string": {"query": interp(f.get("query") or "*"),
                                                          "analyze_wildcard": True}}
                                        for f in fs}}}
    raise DashboardError(f"bucket aggregation {agg['type']!r} is not supported")


def target_request(dash: Mapping[str, Any], target: Mapping[str, Any], *, start: int, end: int,
                   interval: str = "1h", values: Mapping[str, Any] | None = None,
                   adhoc: Sequence[tuple[str, str, str]] = (), time_field: str | None = None) -> dict[str, Any]:
    """The search body Grafana sends for one target (times in epoch ms). The time field is the
    datasource's (Grafana's backend ignores the target's copy); default the target's, then @timestamp."""
    query = interpolate(str(target.get("query") or ""), dash, values)
    if adhoc:
        query = _adhoc(query, adhoc)
    time_field = time_field or target.get("timeField") or TIME_FIELD
    filters: list[dict[str, Any]] = [{"range": {time_field: {"gte": start, "lte": end, "format": "epoch_millis"}}}]
    if query.strip():
        filters.append({"query_string": {"analyze_wildcard": True, "query": query}})
    body: dict[str, Any] = {"query": {"bool": {"filter": filters}}}
    metrics = target.get("metrics") or [{"id": "1", "type": "count"}]
    for m in metrics:
        if m["type"] not in METRICS:
            raise DashboardError(f"metric {m['type']!r} is not supported")
    if metrics[0]["type"] == "raw_data":
        body["size"] = _int(metrics[0].get("settings", {}), "size", 500)
        body["sort"] = [{time_field: {"order": "desc", "unmapped_type": "boolean"}}, {"_doc": {"order": "desc"}}]
        return body
    body["size"] = 0
    buckets = target.get("bucketAggs") or []
    inner = _metric_aggs(metrics)
    if not buckets:
        if inner:
            body["aggs"] = inner
        return body
    aggs: dict[str, Any] | None = None
    for b in reversed(buckets):
        node = _bucket(b, start, end, interval, lambda q: interpolate(q, dash, values))
        sub = aggs if aggs is not None else inner
        if sub:
            node["aggs"] = sub
        aggs = {str(b["id"]): node}
    body["aggs"] = aggs
    return body


def panel_requests(dash: Mapping[str, Any], panel: Mapping[str, Any], *, start: int, end: int,
                   interval: str = "1h", values: Mapping[str, Any] | None = None,
                   adhoc: Sequence[tuple[str, str, str]] = (), prefix: str = "taishi",
                   now: int | None = None) -> list[dict[str, Any]]:
    """``[{"refId", "index", "body", "target"}]`` for each target of ``panel`` over [start, end] ms.

    ``now`` (ms) says the dashboard's range is relative (``now-7d`` to ``now``, the
    dashboards' default); then a panel's relative time override, ``timeFrom``,
    replaces the whole range with [now - timeFrom, now], as Grafana does. With an
    absolute range (``now`` None) Grafana ignores the override, and so does this."""
    if panel.get("timeFrom") and now is not None:
        start, end = now - _relative_ms(panel["timeFrom"]), now
    out = []
    for t in panel.get("targets", []):
        if t.get("hide"):
            continue
        ref = t.get("datasource") or panel.get("datasource")
        index = _index_of(ref, dash, prefix)
        out.append({"refId": t.get("refId"), "index": index, "target": t,
                    "body": target_request(dash, t, start=start, end=end, interval=interval, values=values,
                                           adhoc=adhoc, time_field=index_time_field(index[len(prefix) + 1:]))})
    return out


# ------------------------------------------------------------------------------ responses

def _metric_value(bucket: Mapping[str, Any], m: Mapping[str, Any]) -> Any:
    if m["type"] == "count":
        return bucket.get("doc_count")
    agg = bucket.get(str(m["id"])) or {}
    return agg.get("value")


def _metric_name(m: Mapping[str, Any]) -> str:
    if m["type"] == "count":
        return "Count"
    nice = {"avg": "Average", "sum": "Sum", "min": "Min", "max": "Max", "cardinality": "Unique Count"}
    return f"{nice[m['type']]} {m['field']}"


def rows(target: Mapping[str, Any], response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten a search response into the rows Grafana's table view shows: one row per leaf
    bucket, keyed by the bucket fields (``"@timestamp"`` for a date histogram, the field name for
    terms/geohash) and the metric names (``Count``, ``Average posture.index``, ...). Raw data:
    the documents' ``_source`` with ``_id``."""
    metrics = target.get("metrics") or [{"id": "1", "type": "count"}]
    if metrics[0]["type"] == "raw_data":
        return [{**h.get("_source", {}), "_id": h.get("_id")} for h in response["hits"]["hits"]]
    buckets = target.get("bucketAggs") or []
    if not buckets:
        total = response["hits"]["total"]
        top = {"doc_count": total["value"] if isinstance(total, dict) else total, **response.get("aggregations", {})}
        return [{_metric_name(m): _metric_value(top, m) for m in metrics}]
    out: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any], level: int, keys: dict[str, Any]) -> None:
        b = buckets[level]
        name = TIME_FIELD if b["type"] == "date_histogram" else b.get("field") or "Filters"
        buckets_ = node[str(b["id"])]["buckets"]
        if isinstance(buckets_, dict):  # filters: {name: bucket}
            buckets_ = [{**v, "key": k} for k, v in buckets_.items()]
        for bucket in buckets_:
            k = {**keys, name: bucket["key"]}
            if level + 1 < len(buckets):
                walk(bucket, level + 1, k)
            else:
                out.append({**k, **{_metric_name(m): _metric_value(bucket, m) for m in metrics}})

    walk(response.get("aggregations", {}), 0, {})
    return out


# ------------------------------------------------------------------------------ validation

@dataclass
class Issue:
    dashboard: str
    panel: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.dashboard}" + (f" panel {self.panel}" if self.panel is not None else "")
        return f"{where}: {self.message}"


def validate(dash: Mapping[str, Any], known_fields: Mapping[str, Iterable[str]] | None = None) -> list[Issue]:
    """Problems of one dashboard: missing uid/title, duplicate panel ids, datasources not taken
    from a ``ds_<index>`` constant variable, unsupported aggregations, queries (with the variables'
    default values) that do not parse as Lucene, and -- when ``known_fields`` (index -> field
    names) is given -- fields no index document has."""
    from luqum.exceptions import ParseError
    from luqum.parser import parser
    from luqum.tree import SearchField

    name = str(dash.get("uid") or "?")
    issues: list[Issue] = []

    def bad(panel: int | None, msg: str) -> None:
        issues.append(Issue(name, panel, msg))

    for key in ("uid", "title", "panels", "templating"):
        if not dash.get(key):
            bad(None, f"no {key}")
    if "__inputs" in dash:
        bad(None, "has __inputs (an export for sharing): provisioning cannot resolve them")
    vars_ = variables(dash)
    for vname, v in vars_.items():
        if vname.startswith("ds_"):
            idx = vname[3:]
            if v.get("type") != "constant" or idx not in INDICES or v.get("query") != datasource_uid(idx):
                bad(None, f"variable {vname} must be a constant holding {datasource_uid(idx)!r}")
    seen: dict[int, str] = {}
    for p in panels(dash):
        pid = p.get("id")
        if not isinstance(pid, int):
            bad(None, f"panel {p.get('title')!r} has no integer id")
            continue
        if pid in seen:
            bad(pid, f"id also used by {seen[pid]!r}")
        seen[pid] = p.get("title", "")
        if not p.get("targets"):
            bad(pid, "no query")
        refs = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]
        for ref in refs:
            uid = str((ref or {}).get("uid", ""))
            m = re.fullmatch(r"\$\{(ds_\w+)\}", uid)
            if not m or m.group(1) not in vars_:
                bad(pid, f"datasource uid {uid!r} is not a ${{ds_<index>}} variable of this dashboard")
        refids = [t.get("refId") for t in p.get("targets", [])]
        if len(set(refids)) != len(refids):
            bad(pid, "duplicate refId")
        for t in p.get("targets", []):
            try:
                index = _index_of(t.get("datasource") or p.get("datasource"), dash, "taishi")[len("taishi-"):]
            except DashboardError as e:
                bad(pid, str(e))
                continue
            if t.get("timeField", index_time_field(index)) != index_time_field(index):
                bad(pid, f"timeField {t.get('timeField')!r}: the {index} datasource's is {index_time_field(index)!r}")
            fields_used: list[str] = []
            for m in t.get("metrics", []):
                if m.get("type") not in METRICS:
                    bad(pid, f"metric type {m.get('type')!r} not supported")
                if m.get("field"):
                    fields_used.append(m["field"])
            metric_types = [m.get("type") for m in t.get("metrics", [])]
            if not t.get("bucketAggs") and metric_types[:1] != ["raw_data"]:
                bad(pid, "a metric query needs a bucket aggregation (Grafana refuses it without one; "
                         "a single 'filters' bucket gives a total)")
            for b in t.get("bucketAggs", []):
                if b.get("type") not in BUCKET_AGGS:
                    bad(pid, f"bucket aggregation {b.get('type')!r} not supported")
                if b.get("field"):
                    fields_used.append(b["field"])
                order_by = b.get("settings", {}).get("orderBy")
                if order_by not in (None, "_term", "_count") and order_by not in {str(m["id"]) for m in t.get("metrics", [])}:
                    bad(pid, f"terms ordered by metric {order_by!r}, which the target does not have")
            q = interpolate(str(t.get("query") or "*"), dash)
            try:
                tree = parser.parse(q)
            except (ParseError, Exception) as e:  # luqum raises ParseError and plain exceptions
                bad(pid, f"query {q!r} does not parse: {e}")
                continue
            for node in _walk(tree):
                if isinstance(node, SearchField):
                    fields_used.append(str(node.expr).strip() if node.name == "_exists_" else node.name)
            if known_fields is not None:
                known = set(known_fields.get(index, ()))
                for f in fields_used:
                    if f not in known:
                        bad(pid, f"field {f!r} is not a field of {index} documents")
    return issues


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for c in getattr(node, "children", ()):
        yield from _walk(c)
