"""Passive discovery: what the traffic says that the inventory does not.

* :func:`unknown_hosts` -- internal addresses seen in connection records
  (Zeek conn, flow records) that match no asset of the inventory: as the
  source of a connection, or as the destination of an established one.
* :func:`undeclared_services` -- ``destination ip:port/transport`` with
  established connections on an asset that does not declare that service.
* :func:`silent_assets` -- assets with no event at all for ``days`` days.

"Connection records" are ``event.dataset:(zeek.conn OR flow OR netflow.*)``
by default (``CONN_QUERY``); "established" is a Zeek ``conn_state`` in which
the responder answered (S1 S2 S3 SF RSTO RSTR, in ``event.action``) or a flow
with bytes from the responder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from compliance import _sql
from compliance.inventory import Inventory, NetworkIndex
from taishi.store import Store

CONN_QUERY = "event.dataset:(zeek.conn OR flow OR netflow.*)"
ESTABLISHED_QUERY = (
    "event.action:(S1 OR S2 OR S3 OR SF OR RSTO OR RSTR) OR "
    "(NOT event.dataset:zeek.conn AND destination.bytes:>0)"
)
INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")


@dataclass
class UnknownHost:
    ip: str
    system: str | None  # the CII system whose CIDRs contain it, if any
    first_seen: datetime
    last_seen: datetime
    events: int


@dataclass
class UndeclaredService:
    asset_id: str
    ip: str
    service: str  # "tcp/443"
    protocol: str | None  # application protocol Zeek recognised
    connections: int
    clients: int
    first_seen: datetime
    last_seen: datetime


@dataclass
class SilentAsset:
    asset_id: str
    system_id: str
    last_seen: datetime | None  # None: never seen in the store


def _now(store: Store, now: datetime | None) -> datetime:
    return now or store.clock()


def unknown_hosts(store: Store, inv: Inventory, *, days: float = 7, now: datetime | None = None,
                  internal: tuple[str, ...] = INTERNAL, query: str = CONN_QUERY) -> list[UnknownHost]:
    """Addresses in ``internal`` ranges or in a system's CIDRs, seen as source or
    destination of a connection record in the last ``days``, that match no asset."""
    now = _now(store, now)
    since = now - timedelta(days=days)
    tbl = _hosts(store, query, since, now)
    if tbl.num_rows == 0:
        return []
    ips = tbl.column("ip")
    asset = inv.indexes()[0].lookup(ips)
    system = inv.indexes()[1].lookup(ips)
    inside = NetworkIndex([(n, "internal") for n in internal]).lookup(ips)
    keep = pc.and_(pc.is_null(asset), pc.or_(pc.is_valid(system), pc.is_valid(inside)))
    out = tbl.append_column("system", system).filter(keep)
    return [UnknownHost(r["ip"], r["system"], r["first"], r["last"], int(r["n"])) for r in out.to_pylist()]


def _hosts(store: Store, query: str, since: datetime, until: datetime) -> pa.Table:
    """ip, first, last, n over source.ip and destination.ip of matching events."""
    parts = []
    # a source sent the packets; a destination only counts when it answered (a scan of
    # unused addresses must not invent hosts)
    for col, q in (("source.ip", query), ("destination.ip", f"({query}) AND ({ESTABLISHED_QUERY})")):
        parts.append(_sql.select(store, "events",
                                 f'"{col}" AS ip, min("@timestamp") AS first, max("@timestamp") AS last, count(*) AS n',
                                 q, since, until, f'AND "{col}" IS NOT NULL GROUP BY 1'))
    both = pa.concat_tables(parts)
    if both.num_rows == 0:
        return both
    return (both.group_by("ip").aggregate([("first", "min"), ("last", "max"), ("n", "sum")])
            .rename_columns(["ip", "first", "last", "n"]).sort_by("ip"))


def undeclared_services(store: Store, inv: Inventory, *, days: float = 7, now: datetime | None = None,
                        query: str = CONN_QUERY) -> list[UndeclaredService]:
    """Services answering on inventoried assets that the asset does not declare."""
    now = _now(store, now)
    q = f"({query}) AND ({ESTABLISHED_QUERY}) AND destination.port:*"
    tbl = _sql.select(
        store, "events",
        '"destination.ip" AS ip, "destination.port" AS port, lower(coalesce("network.transport", \'tcp\')) AS tr, '
        'any_value("network.protocol") AS proto, count(*) AS n, count(DISTINCT "source.ip") AS clients, '
        'min("@timestamp") AS first, max("@timestamp") AS last',
        q, now - timedelta(days=days), now, "AND \"destination.ip\" IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    if tbl.num_rows == 0:
        return []
    assets = inv.indexes()[0].lookup(tbl.column("ip")).to_pylist()
    out = []
    for a, r in zip(assets, tbl.to_pylist()):
        if a is None:
            continue
        svc = f"{r['tr']}/{r['port']}"
        if svc in inv.assets[a].services:
            continue
        out.append(UndeclaredService(a, r["ip"], svc, r["proto"], int(r["n"]), int(r["clients"]),
                                     r["first"], r["last"]))
    return out


def last_seen(store: Store, inv: Inventory, *, since: datetime | None = None,
              until: datetime | None = None) -> dict[str, datetime]:
    """asset id -> newest ``@timestamp`` of any event naming one of its addresses
    (source, destination, host or observer ip)."""
    parts = []
    for col in ("source.ip", "destination.ip", "host.ip", "observer.ip"):
        parts.append(_sql.select(store, "events", f'"{col}" AS ip, max("@timestamp") AS last', "", since, until,
                                 f'AND "{col}" IS NOT NULL GROUP BY 1'))
    tbl = pa.concat_tables(parts)
    if tbl.num_rows == 0:
        return {}
    asset = inv.indexes()[0].lookup(tbl.column("ip"))
    tbl = tbl.append_column("asset", asset).filter(pc.is_valid(asset))
    agg = tbl.group_by("asset").aggregate([("last", "max")])
    return dict(zip(agg.column("asset").to_pylist(), agg.column("last_max").to_pylist()))


def silent_assets(store: Store, inv: Inventory, *, days: float = 7, now: datetime | None = None,
                  lookback_days: float | None = None) -> list[SilentAsset]:
    """Assets with no event in the last ``days`` (``last_seen`` is the newest event
    within ``lookback_days``, all stored events by default, or None)."""
    now = _now(store, now)
    since = now - timedelta(days=lookback_days) if lookback_days else None
    seen = last_seen(store, inv, since=since, until=now + timedelta(seconds=1))
    cutoff = now - timedelta(days=days)
    out = []
    for a in sorted(inv.assets.values(), key=lambda a: a.asset_id):
        t = seen.get(a.asset_id)
        if t is None or t < cutoff:
            out.append(SilentAsset(a.asset_id, a.system_id, t))
    return out


def as_rows(items: list[Any]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(i) for i in items]
