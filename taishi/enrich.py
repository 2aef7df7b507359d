"""Context added to alerts where they are stored: one function, both modes.

:func:`enrich_alerts` is called by the embedded pipeline's store stage
(``Pipeline._store_alerts``) and by the cluster's detect job where it writes
alerts (``taishi.cluster.spark_jobs.write_rows``), before the alerts reach the
store, the ``alerts`` topic and the incident builder. It adds, to an
``ALERT_SCHEMA`` batch:

* the CII asset each end touches, ``taishi.{source,destination}.asset.{id,
  system,sector,level}`` -- :func:`compliance.inventory.enrich`, the same
  lookup the events get (nothing when there is no inventory);
* where a public source address is: ``source.geo.country_iso_code``,
  ``source.geo.country_name`` and ``source.geo.location`` (``{lat, lon}`` of
  the country's centre) from the offline database of :mod:`taishi.geo`.
  Private, loopback, CGNAT and the inventory's own networks (which may be
  public space) are internal: no geo. Documentation ranges, multicast,
  reserved and addresses the database lacks are unknown: no geo. Never an
  exception;
* ``event.risk_score`` (ECS: the risk of the alert, 0-100): the rule level
  weighed by the protection level of the assets the alert touches
  (:func:`risk_score`).

Deterministic (a pure function of the alert, the inventory and the GeoIP
database shipped in the ``geoip2fast`` package), so the same input gives the
same stored alerts in both modes.

Risk score
----------
``event.risk_score = LEVEL_BASE[rule.level] + PROTECTION_WEIGHT[L]`` where
``L`` is the highest MLPS protection level (等级保护级别) among the CII assets
at either end (none: +0)::

    rule.level   informational 5 | low 20 | medium 40 | high 60 | critical 80
    MLPS level   1: +0 | 2: +5 | 3: +10 | 4: +15 | 5: +20

so a critical alert on a level-5 system scores 100, a high one on a level-3
asset 70, the same alert on a host outside the inventory 60. A missing or
unknown ``rule.level`` falls back to ``event.severity`` (1-5).

>>> risk_score("high", [3, None])
70.0
>>> risk_score("critical", [])
80.0
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from taishi.schema import ALERT_SCHEMA, GEO_POINT, LEVELS, conform

LEVEL_BASE = {"informational": 5.0, "low": 20.0, "medium": 40.0, "high": 60.0, "critical": 80.0}
PROTECTION_WEIGHT = {1: 0.0, 2: 5.0, 3: 10.0, 4: 15.0, 5: 20.0}
GEO_COLUMNS = ("source.geo.country_iso_code", "source.geo.country_name", "source.geo.location")


def risk_score(level: str | None, asset_levels: Iterable[int | None] = (), severity: int | None = None) -> float:
    """The alert's ``event.risk_score`` (see module doc)."""
    base = LEVEL_BASE.get(str(level or "").lower())
    if base is None:
        sev = min(max(int(severity or 1), 1), len(LEVELS))
        base = LEVEL_BASE[LEVELS[sev - 1]]
    lv = max((int(v) for v in asset_levels if v is not None), default=0)
    return min(100.0, base + PROTECTION_WEIGHT.get(min(lv, 5), 0.0))


def site_networks(inventory: Any) -> list:
    """The inventory's own networks (systems' CIDRs, assets' addresses): internal for GeoIP."""
    nets = []
    if inventory is None:
        return nets
    texts = [c for s in getattr(inventory, "systems", {}).values() for c in (s.cidrs or [])]
    texts += [ip for a in getattr(inventory, "assets", {}).values() for ip in (a.ips or [])]
    for c in texts:
        try:
            nets.append(ipaddress.ip_network(str(c), strict=False))
        except ValueError:
            continue
    return nets


def geo_columns(ips: pa.Array | pa.ChunkedArray, internal_networks: Iterable[Any] = ()) -> dict[str, pa.Array]:
    """``source.geo.*`` arrays for ``ips``: each distinct address looked up once (Arrow
    ``unique`` / ``index_in``, then ``take``), so the cost follows the distinct addresses, not the rows."""
    from taishi import geo

    nets = tuple(internal_networks)
    ips = ips.combine_chunks() if isinstance(ips, pa.ChunkedArray) else ips
    if not pa.types.is_string(ips.type):
        ips = ips.cast(pa.string())
    uniq = pc.unique(ips).drop_null()
    codes, names, points = [], [], []
    for ip in uniq.to_pylist():
        g = None
        if ip and geo.classify(ip, nets)[0] == "public":
            g = geo.lookup(ip)
        ok = bool(g) and g.get("kind") == "public"
        codes.append(g.get("country_iso_code") if ok else None)
        names.append(g.get("country_name") if ok else None)
        points.append(g.get("location") if ok else None)
    idx = pc.index_in(ips, value_set=uniq)
    return {
        "source.geo.country_iso_code": pa.array(codes, pa.string()).take(idx),
        "source.geo.country_name": pa.array(names, pa.string()).take(idx),
        "source.geo.location": pa.array(points, GEO_POINT).take(idx),
    }


def _put(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    fld = pa.field(name, arr.type)
    if name in t.column_names:
        return t.set_column(t.column_names.index(name), fld, arr)
    return t.append_column(fld, arr)


def enrich_alerts(alerts: pa.Table, inventory: Any = None) -> pa.Table:
    """``alerts`` (ALERT_SCHEMA) with the asset, geo and risk columns filled (see module doc)."""
    from compliance.inventory import enrich

    t = conform(alerts, ALERT_SCHEMA)
    if t.num_rows == 0:
        return t
    if inventory is not None:
        t = conform(enrich(t, inventory), ALERT_SCHEMA)
    for name, arr in geo_columns(t.column("source.ip"), site_networks(inventory)).items():
        t = _put(t, name, arr)
    levels = t.column("rule.level").to_pylist()
    sev = t.column("event.severity").to_pylist()
    src = t.column("taishi.source.asset.level").to_pylist()
    dst = t.column("taishi.destination.asset.level").to_pylist()
    risk = [risk_score(lv, (a, b), s) for lv, a, b, s in zip(levels, src, dst, sev)]
    return _put(t, "event.risk_score", pa.array(risk, pa.float64()))
