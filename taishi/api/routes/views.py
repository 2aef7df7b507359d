"""Situation views for the console (and the same figures the Grafana dashboards show).

Routes (JSON; permission ``views:read``, which every role holds)::

    GET /api/v1/views/overview?since=24h&q=   posture now and over time, alerts by level over time,
                                             top attacking sources (with geo), top attacked CII assets,
                                             ATT&CK tactic x technique counts, collector health, map points
    GET /api/v1/views/posture?since&step&by   the posture index (taishi.posture) per asset, sector, region
    GET /api/v1/views/flows?since&q           flow volume over time, top talkers, ports, protocols,
                                             anomaly scores
    GET /api/v1/views/assets?since            each inventoried asset: status, last seen, alerts, risk
    GET /api/v1/views/geo?since&table&side    map points (taishi.geo) for alert or event addresses

Every view reads the store through public methods both stores have
(``search_alerts``, ``count``, ``aggregate``, ``flow_summary``,
``dataset_activity``, ``last_seen`` ...), so the same views answer in cluster
mode from the search node.

``q`` is a Lucene filter compiled by the store (bound parameters; never
spliced); alerts for the posture index are read once per request (at most
:data:`MAX_ALERTS`, newest kept).
"""

from __future__ import annotations

import math
import re
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query

from taishi import geo as geo_mod
from taishi import posture as posture_mod
from taishi.api.app import API, iso, jsonable, parse_when, perm
from taishi.schema import LEVELS

MAX_ALERTS = 20_000
TOP = 10
# ATT&CK enterprise tactics in kill-chain order (the heat map's columns).
TACTICS = ("Reconnaissance", "Resource Development", "Initial Access", "Execution", "Persistence",
           "Privilege Escalation", "Defense Evasion", "Credential Access", "Discovery", "Lateral Movement",
           "Collection", "Command and Control", "Exfiltration", "Impact")
_TACTIC_KEY = {t.lower().replace(" ", "_").replace("-", "_"): t for t in TACTICS}
_SCORE_RE = re.compile(r"anomaly score (-?[0-9.]+)")
_HOME = geo_mod.Home(*geo_mod.COUNTRIES["CN"][:2], name="protected networks")
_INTERVALS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _interval(span_s: float, points: int = 48) -> int:
    return next((i for i in _INTERVALS if span_s / i <= points), 86400 * max(1, math.ceil(span_s / 86400 / points)))


def _tactic(name: str) -> str:
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return _TACTIC_KEY.get(key, str(name))


# --------------------------------------------------------------------------------------------
# store access: public methods both stores have (taishi.store.Store, taishi.cluster.search.SearchStore)
# --------------------------------------------------------------------------------------------
def _alert_rows(store: Any, q: str, since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
    cols = ["id", "@timestamp", "rule.id", "rule.name", "rule.level", "rule.type", "source.ip", "destination.ip",
            "threat.technique.id", "threat.tactic.name", "message"]
    tbl = store.search_alerts(q, since=since, until=until, limit=MAX_ALERTS, order="desc")
    return list(reversed(tbl.select(cols).to_pylist()))


def _asset_refs(inv: Any) -> tuple[dict[str, posture_mod.AssetRef], list[posture_mod.AssetRef]]:
    """(address -> AssetRef for every address an asset lists, all AssetRefs)."""
    refs, by_ip = [], {}
    for a in inv.assets.values():
        s = inv.systems.get(a.system_id)
        ref = posture_mod.AssetRef(asset_id=a.asset_id, system_id=a.system_id,
                                   mlps_level=s.mlps_level if s else None, sector=s.sector if s else None,
                                   region=(s.location or None) if s else None, name=a.hostname or a.asset_id)
        refs.append(ref)
        for ip in a.ips:
            if "/" not in ip:
                by_ip[ip] = ref
    return by_ip, refs


def _resolve_refs(inv: Any, ips: set[str], by_ip: dict[str, posture_mod.AssetRef],
                  refs: list[posture_mod.AssetRef]) -> dict[str, posture_mod.AssetRef]:
    """Address -> asset for the addresses seen, through the inventory's CIDR index (an asset may list a network)."""
    out = {ip: by_ip[ip] for ip in ips if ip in by_ip}
    rest = sorted(ip for ip in ips if ip not in out)
    if rest and inv.assets:
        ids = inv.lookup(rest)["asset.id"].to_pylist()
        by_id = {r.asset_id: r for r in refs}
        for ip, aid in zip(rest, ids):
            if aid in by_id:
                out[ip] = by_id[aid]
    return out


def _posture(inv: Any, alerts: list[dict[str, Any]], since: datetime, until: datetime, step: int,
             by: tuple[str, ...]) -> dict[str, Any]:
    by_ip, refs = _asset_refs(inv)
    ips = {a[k] for a in alerts for k in ("source.ip", "destination.ip") if a.get(k)}
    points = posture_mod.alert_points(alerts, _resolve_refs(inv, ips, by_ip, refs))
    start = int(since.timestamp()) // step * step + step
    end = int(until.timestamp())
    at = list(range(start, end, step)) + [end]
    res = posture_mod.compute(points, at, assets=refs, by=by)
    res["times"] = [iso(datetime.fromtimestamp(t, timezone.utc)) for t in res["times"]]
    return res


def _lookback(since: datetime) -> datetime:
    """Alerts older than ``since`` still weigh on the index: read 6 half-lives back (1/64 left)."""
    return since - timedelta(hours=6 * posture_mod.DEFAULT.half_life_h)


# --------------------------------------------------------------------------------------------
# collector health: read the bus directory without opening it (opening recovers, i.e. may cut a tail)
# --------------------------------------------------------------------------------------------
_HEADER = struct.Struct(">4sIIQII")


def _topic_stats(topic_dir: Path) -> dict[str, Any]:
    """Records and last write of a bus topic, walking frame headers read-only."""
    segs = sorted(topic_dir.glob("*.seg"))
    end, last = 0, None
    if segs:
        end = int(segs[0].stem) if segs[0].stem.isdigit() else 0
        last = max(s.stat().st_mtime for s in segs)
        seg = segs[-1]
        try:
            size = seg.stat().st_size
            with open(seg, "rb") as f:
                pos = 0
                while pos + _HEADER.size <= size:
                    f.seek(pos)
                    magic, length, _crc, base, records, _ml = _HEADER.unpack(f.read(_HEADER.size))
                    if magic != b"TSB1" or pos + _HEADER.size + length > size:
                        break
                    end = base + records
                    pos += _HEADER.size + length
        except OSError:
            pass
    return {"end": end, "last_write": iso(datetime.fromtimestamp(last, timezone.utc)) if last else None}


def _collectors(data_dir: Path, store: Any, since: datetime, now: datetime, mode: str = "embedded") -> dict[str, Any]:
    bus = data_dir / "bus"
    topics = []
    tdir = bus / "topics"
    if mode != "cluster" and tdir.is_dir():  # cluster mode: the bus is Kafka, not this directory
        for d in sorted(p for p in tdir.iterdir() if p.is_dir()):
            st = _topic_stats(d)
            lags = {}
            odir = bus / "offsets"
            if odir.is_dir():
                for g in sorted(p for p in odir.iterdir() if p.is_dir()):
                    f = g / d.name
                    if f.is_file():
                        try:
                            lags[g.name] = max(0, st["end"] - int(f.read_text().strip() or 0))
                        except (OSError, ValueError):
                            continue
            age = None
            if st["last_write"]:
                age = (now - datetime.fromisoformat(st["last_write"].replace("Z", "+00:00"))).total_seconds()
            status = "lagging" if any(v > 0 for v in lags.values()) else ("idle" if age is None or age > 3600 else "ok")
            topics.append({"topic": d.name, "records": st["end"], "last_write": st["last_write"],
                           "lag": lags, "status": status})
    # per data source: events in the window, and the last event of the week (a source silent in the
    # window still shows, with 0); bounded to a week so the poll does not scan the whole store
    rows = store.dataset_activity(since, now, lookback=now - timedelta(days=7), limit=50)
    sources = [{"dataset": ds, "events": int(n), "last_event": jsonable(last), "last_ingested": jsonable(ing)}
               for ds, n, last, ing in rows]
    dead = [{"source": s, "stage": stage, "count": int(n)} for s, stage, n in store.deadletter_summary(20)]
    return {"bus": "kafka" if mode == "cluster" else "embedded", "topics": topics, "sources": sources,
            "deadletters": dead}


# --------------------------------------------------------------------------------------------
def register(app: FastAPI, ctx: Any) -> None:
    SINCE = Query("24h", description="window start: 15m, 24h, 7d ... or ISO-8601")
    Q = Query("", max_length=4000, description="Lucene filter over ECS field names")

    def window(since: str | None) -> tuple[datetime, datetime]:
        now = datetime.now(timezone.utc)
        s = parse_when(since, "since", now=now) or (now - timedelta(hours=24))
        if s >= now:
            raise HTTPException(400, "since must be in the past")
        return s, now

    geo_cache: dict[str, Any] = {}

    def geoip(inv: Any) -> geo_mod.GeoIP:
        nets = tuple(sorted({c for s in inv.systems.values() for c in s.cidrs}))
        g = geo_cache.get("g")
        if g is None or geo_cache.get("nets") != nets:
            base = geo_cache.get("base")
            if base is None:
                base = geo_cache["base"] = geo_mod.GeoIP()
            g = geo_mod.GeoIP(db=base.db, internal_networks=nets, home=_HOME)
            if base.db is None:
                g._db_error = base._db_error
            geo_cache.update(g=g, nets=nets)
        return g

    def asset_of(inv: Any, ips: list[str]) -> dict[str, dict[str, Any]]:
        if not ips or not inv.assets:
            return {}
        res = inv.lookup(ips)
        out = {}
        for i, ip in enumerate(ips):
            aid, sysid = res["asset.id"][i].as_py(), res["asset.system"][i].as_py()
            if aid or sysid:
                a = inv.assets.get(aid) if aid else None
                s = inv.systems.get(sysid) if sysid else None
                out[ip] = {"asset_id": aid, "hostname": a.hostname if a else None, "system_id": sysid,
                           "system_name": s.name if s else None, "mlps_level": s.mlps_level if s else None,
                           "sector": s.sector if s else None, "region": s.location if s else None}
        return out

    @app.get(f"{API}/views/overview", tags=["views"], **perm("views:read"))
    def overview(since: str = SINCE, q: str = Q) -> dict[str, Any]:
        """Everything the situation overview draws, in one request."""
        s, now = window(since)
        store, inv = ctx.store(), ctx.inventory()
        span = (now - s).total_seconds()
        step = _interval(span)
        alerts = _alert_rows(store, q, _lookback(s), now)
        in_window = [a for a in alerts if a["@timestamp"] is not None and a["@timestamp"] >= s]
        post = _posture(inv, alerts, s, now, step, ("overall", "asset", "sector", "region"))

        by_level = {lv: 0 for lv in LEVELS}
        buckets: dict[int, dict[str, int]] = {}
        first = int(s.timestamp()) // step * step
        for b in range(first, int(now.timestamp()) + 1, step):
            buckets[b] = {lv: 0 for lv in LEVELS}
        tactic: dict[str, dict[str, int]] = {}
        src: dict[str, int] = {}
        dst: dict[str, int] = {}
        for a in in_window:
            lv = a["rule.level"] if a["rule.level"] in by_level else "informational"
            by_level[lv] += 1
            b = int(a["@timestamp"].timestamp()) // step * step
            buckets.setdefault(b, {x: 0 for x in LEVELS})[lv] += 1
            techs = a["threat.technique.id"] or ["—"]
            for tname in a["threat.tactic.name"] or []:
                row = tactic.setdefault(_tactic(tname), {})
                for tech in techs:
                    row[tech] = row.get(tech, 0) + 1
            if a["source.ip"]:
                src[a["source.ip"]] = src.get(a["source.ip"], 0) + 1
            if a["destination.ip"]:
                dst[a["destination.ip"]] = dst.get(a["destination.ip"], 0) + 1
        g = geoip(inv)
        top_src = sorted(src.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        top_dst = sorted(dst.items(), key=lambda kv: (-kv[1], kv[0]))
        assets = asset_of(inv, [ip for ip, _ in top_src] + [ip for ip, _ in top_dst])
        cii_targets = [(ip, n) for ip, n in top_dst if ip in assets][:TOP]
        order = {t: i for i, t in enumerate(TACTICS)}
        matrix = [{"tactic": t, "count": sum(row.values()),
                   "techniques": [{"id": k, "count": v} for k, v in sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))]}
                  for t, row in sorted(tactic.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))]
        ov = post["overall"]
        return jsonable({
            "since": iso(s), "until": iso(now), "interval_s": step,
            "totals": {"events": store.count("events", "", since=s), "alerts": len(in_window),
                       "deadletters": store.count("deadletters", "", since=s),
                       "assets": len(inv.assets), "systems": len(inv.systems),
                       "alerts_truncated": len(alerts) >= MAX_ALERTS},
            "posture": {"index": ov["index"], "band": ov["band"], "pressure": ov["pressure"],
                        "series": [{"time": t, "index": v} for t, v in zip(post["times"], ov["series"])],
                        "sectors": [{k: r[k] for k in ("key", "name", "index", "band", "alerts")} for r in post["sector"]],
                        "regions": [{k: r[k] for k in ("key", "name", "index", "band", "alerts")} for r in post["region"]],
                        "worst_assets": [{k: r[k] for k in ("key", "name", "index", "band", "alerts", "mlps_level", "system")}
                                         for r in post["asset"] if not r["key"].startswith("ip:")][:5],
                        "params": post["params"]},
            "alerts_by_level": by_level,
            "alerts_histogram": {"interval_s": step, "buckets": [{"time": iso(datetime.fromtimestamp(b, timezone.utc)), **c}
                                                                 for b, c in sorted(buckets.items())]},
            "top_sources": [{"ip": ip, "count": n, "geo": g.lookup(ip), "asset": assets.get(ip)} for ip, n in top_src],
            "top_targets": [{"ip": ip, "count": n, "asset": assets[ip]} for ip, n in cii_targets],
            "attack_matrix": {"tactics": matrix, "order": list(TACTICS)},
            "map": {**geo_mod.aggregate_points(top_src + [(ip, n) for ip, n in sorted(src.items(), key=lambda kv: (-kv[1], kv[0]))[TOP:200]], g),
                    "home": {"lat": _HOME.lat, "lon": _HOME.lon, "name": _HOME.name},
                    "source": g.source, "available": g.available},
            "collectors": _collectors(ctx.data_dir, store, s, now, ctx.mode),
        })

    @app.get(f"{API}/views/posture", tags=["views"], **perm("views:read"))
    def posture(since: str = SINCE, q: str = Q,
                step: int | None = Query(None, ge=60, le=86400, description="seconds between points"),
                by: list[str] = Query(["overall", "asset", "sector", "region"])) -> dict[str, Any]:
        """The posture index (态势指数) now and over time per scope; formula in taishi/posture.py."""
        bad = set(by) - {"overall", "asset", "sector", "region"}
        if bad:
            raise HTTPException(422, f"unknown scope(s) {sorted(bad)}: use overall, asset, sector, region")
        s, now = window(since)
        span = (now - s).total_seconds()
        step = step or _interval(span)
        if span / step > 2000:
            raise HTTPException(422, "too many points: use a larger step")
        alerts = _alert_rows(ctx.store(), q, _lookback(s), now)
        return jsonable(_posture(ctx.inventory(), alerts, s, now, step, tuple(by)))

    @app.get(f"{API}/views/flows", tags=["views"], **perm("views:read"))
    def flows(since: str = SINCE, q: str = Q) -> dict[str, Any]:
        """Connections (``event.type:connection``: Zeek conn, Suricata flow, NetFlow, pcap flows)."""
        s, now = window(since)
        store, inv = ctx.store(), ctx.inventory()
        step = _interval((now - s).total_seconds(), 60)
        fq = f"event.type:connection AND ({q})" if q.strip() else "event.type:connection"
        fs = store.flow_summary(fq, s, now, step, top=TOP, ports=15, protocols=15, transports=10)
        bucket_map = {int(b): (int(n), int(by_)) for b, n, by_ in fs["volume"]}
        first = int(s.timestamp()) // step * step
        volume = [{"time": iso(datetime.fromtimestamp(b, timezone.utc)), "flows": bucket_map.get(b, (0, 0))[0],
                   "bytes": bucket_map.get(b, (0, 0))[1]} for b in range(first, int(now.timestamp()) + 1, step)]
        talkers, ports, protos, transports, totals = (fs["talkers"], fs["ports"], fs["protocols"], fs["transports"],
                                                      fs["totals"])
        g = geoip(inv)
        assets = asset_of(inv, [r[0] for r in talkers])
        anomalies = []
        for a in _alert_rows(store, "rule.type:anomaly", s, now):
            m = _SCORE_RE.search(a.get("message") or "")
            anomalies.append({"id": a["id"], "time": a["@timestamp"], "rule": a["rule.name"],
                              "source.ip": a["source.ip"], "destination.ip": a["destination.ip"],
                              "score": float(m.group(1)) if m else None, "message": a.get("message")})
        anomalies.sort(key=lambda x: (-(x["score"] or 0), str(x["time"])))
        models = sorted(p.name for p in (ctx.data_dir / "models").glob("*")) if (ctx.data_dir / "models").is_dir() else []
        return jsonable({
            "since": iso(s), "until": iso(now), "interval_s": step,
            "totals": {"flows": int(totals[0]), "bytes": int(totals[1]), "sources": int(totals[2]),
                       "destinations": int(totals[3])},
            "volume": volume,
            "top_talkers": [{"ip": ip, "flows": int(n), "bytes": int(b), "geo": g.lookup(ip), "asset": assets.get(ip)}
                            for ip, n, b in talkers],
            "ports": [{"port": int(p), "transport": tr, "flows": int(n), "bytes": int(b)} for p, tr, n, b in ports],
            "protocols": [{"protocol": p, "flows": int(n)} for p, n in protos],
            "transports": [{"transport": p, "flows": int(n)} for p, n in transports],
            "anomalies": {"count": len(anomalies), "items": anomalies[:50], "models": models},
        })

    @app.get(f"{API}/views/assets", tags=["views"], **perm("views:read"))
    def assets(since: str = SINCE, silent_days: float = Query(1.0, gt=0, le=3650)) -> dict[str, Any]:
        """Each inventoried asset with its system, status (at risk / silent / ok), last seen, alerts and
        posture index over the window."""
        s, now = window(since)
        store, inv = ctx.store(), ctx.inventory()
        step = _interval((now - s).total_seconds(), 24)
        alerts = _alert_rows(store, "", _lookback(s), now)
        post = _posture(inv, alerts, s, now, step, ("asset",))
        risk = {r["key"]: r for r in post["asset"]}
        counts: dict[str, int] = {}  # events in the window that touch the asset (either end)
        for side in ("source", "destination"):
            for aid, n in store.aggregate("events", f"taishi.{side}.asset.id", "", s, 10_000, until=now):
                counts[aid] = counts.get(aid, 0) + int(n)
        ever: dict[str, datetime] = {}  # last event ever (silence is not bound to the window)
        for side in ("source", "destination"):
            for aid, last in store.last_seen(f"taishi.{side}.asset.id").items():
                if ever.get(aid) is None or last > ever[aid]:
                    ever[aid] = last
        states = _triage_states(app, alerts)
        rows = []
        for a in sorted(inv.assets.values(), key=lambda a: (a.system_id, a.asset_id)):
            sy = inv.systems.get(a.system_id)
            r = risk.get(a.asset_id, {})
            last = ever.get(a.asset_id)
            silent = last is None or (now - last).total_seconds() > silent_days * 86400
            touched = [x for x in alerts if x["@timestamp"] >= s and
                       any(ip in a.ips for ip in (x["source.ip"], x["destination.ip"]))]
            open_n = sum(1 for x in touched if states.get(x["id"], "open") in ("open", "acknowledged"))
            idx = r.get("index", 100.0)
            status = "silent" if silent else ("at_risk" if idx < 75 else ("watch" if idx < 90 else "ok"))
            rows.append({"asset_id": a.asset_id, "hostname": a.hostname, "ips": a.ips, "role": a.role,
                         "criticality": a.criticality, "services": a.services, "system_id": a.system_id,
                         "system_name": sy.name if sy else None, "sector": sy.sector if sy else None,
                         "mlps_level": sy.mlps_level if sy else None, "region": sy.location if sy else None,
                         "zone": sy.zone if sy else None, "status": status, "last_seen": last,
                         "events": counts.get(a.asset_id, 0), "alerts": len(touched), "open_alerts": open_n,
                         "index": idx, "band": r.get("band", "calm"), "series": r.get("series", [])})
        rows.sort(key=lambda r: (r["index"], -r["alerts"], r["asset_id"]))
        systems = [{"cii_id": sy.cii_id, "name": sy.name, "sector": sy.sector, "mlps_level": sy.mlps_level,
                    "zone": sy.zone, "region": sy.location, "reidentify": sy.reidentify,
                    "assets": sum(1 for a in inv.assets.values() if a.system_id == sy.cii_id)}
                   for sy in sorted(inv.systems.values(), key=lambda x: x.cii_id)]
        return jsonable({"since": iso(s), "until": iso(now), "times": post["times"], "count": len(rows),
                         "items": rows, "systems": systems,
                         "uninventoried": [{k: r[k] for k in ("key", "name", "index", "band", "alerts")}
                                           for r in post["asset"] if r["key"].startswith("ip:")]})

    @app.get(f"{API}/views/geo", tags=["views"], **perm("views:read"))
    def geo(since: str = SINCE, q: str = Q,
            table: str = Query("alerts", pattern="^(alerts|events)$"),
            side: str = Query("source", pattern="^(source|destination)$"),
            limit: int = Query(200, ge=1, le=2000)) -> dict[str, Any]:
        """Map points: the addresses of one side of alerts (or events) grouped by country; internal
        addresses at the protected networks' marker; the rest listed as unplaced, with the reason."""
        s, now = window(since)
        store, inv = ctx.store(), ctx.inventory()
        counts = store.aggregate(table, f"{side}.ip", q, s, limit, until=now)
        g = geoip(inv)
        return jsonable({"since": iso(s), "until": iso(now), "table": table, "side": side,
                         **geo_mod.aggregate_points([(str(ip), int(n)) for ip, n in counts], g),
                         "home": {"lat": _HOME.lat, "lon": _HOME.lon, "name": _HOME.name},
                         "source": g.source, "available": g.available})


def _triage_states(app: FastAPI, alerts: list[dict[str, Any]]) -> dict[str, str]:
    log = getattr(app.state, "triage", None)
    if log is None:
        return {}
    return {k: v["status"] for k, v in log.states([a["id"] for a in alerts]).items()}

