"""Every Grafana panel's query, as Grafana sends it, against the real search node.

A small fixed world -- flows and host events, alerts, incidents, CII assets,
posture points, dead letters and MLPS verdicts -- is written through the search
store under a prefix of its own. Each panel's targets are translated into the
search request Grafana's backend makes (:func:`dashboards.panel_requests`), run
on the node, flattened into rows (:func:`dashboards.rows`), and compared with
numbers computed here, in plain Python, from the same fixture rows. A panel
with no check below fails :func:`test_every_panel_has_a_check`.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

import dashboards as D

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=timezone.utc)
HOURS = 6
START = int(T0.timestamp() * 1000)
END = START + HOURS * 3_600_000 - 1
HOUR_KEYS = [START + h * 3_600_000 for h in range(HOURS)]
DATA = Path(__file__).resolve().parents[1] / "data" / "compliance"
ALL = D.load_all()


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def hour_of(t: datetime) -> int:
    return START + (ms(t) - START) // 3_600_000 * 3_600_000


# ------------------------------------------------------------------------------ the world


def _inventory():
    from compliance.inventory import Inventory

    inv = Inventory()
    assert inv.import_yaml(DATA / "inventory.yaml", who="test").ok
    return inv


INVENTORY = _inventory()
# (asset id, first IPv4 address, sector, MLPS level) of every inventoried asset
ASSETS = [(a.asset_id, a.ips[0], INVENTORY.systems[a.system_id].sector, INVENTORY.systems[a.system_id].mlps_level)
          for a in sorted(INVENTORY.assets.values(), key=lambda a: a.asset_id)]
ASSET_BY_IP = {ip: (aid, sector, lvl) for aid, ip, sector, lvl in ASSETS}
# attack sources: public ones with a GeoIP point, private ones without
ATTACKERS = {"203.0.113.50": None, "198.51.100.7": (39.9, 116.4), "45.33.12.9": (37.75, -97.8),
             "5.188.10.3": (55.75, 37.6), "10.20.5.10": None, "10.20.5.11": None,
             "185.220.101.4": (52.5, 13.4), "91.240.118.2": (50.45, 30.5)}
LEVELS = ["critical", "high", "high", "medium", "medium", "medium", "low", "low", "informational"]
SEVERITY = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
ATTACK = [(["reconnaissance"], ["T1595"]), (["initial-access"], ["T1190"]),
          (["credential-access", "lateral-movement"], ["T1110", "T1021.004"]),
          (["command-and-control"], ["T1071.001", "T1571"]), (["exfiltration"], ["T1041"]), ([], [])]
RULES = ["Port scan", "SSH brute force", "Web exploit", "C2 beacon", "Large upload", "Telnet to OT"]


def _flows(rng: random.Random) -> list[dict[str, Any]]:
    talkers = [f"10.20.{i}.{10 + i}" for i in range(12)] + list(ATTACKERS)[:3]
    out = []
    for i in range(60):
        dst = rng.choice([ip for _, ip, _, _ in ASSETS] + ["8.8.8.8", "10.99.0.5"])
        t = T0 + timedelta(seconds=rng.randrange(HOURS * 3600))
        ev = {"event.id": f"flow-{i}", "@timestamp": t, "event.kind": "event", "event.category": "network",
              "event.type": "connection", "source.ip": rng.choice(talkers), "destination.ip": dst,
              "destination.port": rng.choice([22, 23, 53, 80, 443, 502, 3389, 445, 8080, 20000, 161, 25]),
              "network.transport": rng.choice(["tcp", "tcp", "tcp", "udp", "icmp"]),
              "network.protocol": rng.choice(["ssl", "http", "dns", "ssh", "modbus", None]),
              "network.bytes": rng.randrange(40, 2_000_000), "taishi.source": rng.choice(
                  ["conn.log", "netflow-udp:0.0.0.0:2055", "capture.pcap"])}
        ev["source.bytes"] = ev["network.bytes"] // 3
        ev["destination.bytes"] = ev["network.bytes"] - ev["source.bytes"]
        out.append(ev)
    # host events: not flows, but collector health and asset activity count them
    for i in range(14):
        dst = rng.choice([ip for _, ip, _, _ in ASSETS][:4])
        out.append({"event.id": f"auth-{i}", "@timestamp": T0 + timedelta(seconds=rng.randrange(HOURS * 3600)),
                    "event.kind": "event", "event.category": "authentication", "event.type": "start",
                    "event.action": "ssh_login", "event.outcome": rng.choice(["success", "failure"]),
                    "source.ip": rng.choice(list(ATTACKERS)), "destination.ip": dst, "user.name": "ops",
                    "taishi.source": "syslog-udp:0.0.0.0:514"})
    # outside the time range: must not count anywhere
    out.append({"event.id": "flow-late", "@timestamp": T0 + timedelta(hours=HOURS, minutes=5),
                "event.kind": "event", "event.category": "network", "event.type": "connection",
                "source.ip": talkers[0], "destination.ip": ASSETS[0][1], "destination.port": 22,
                "network.transport": "tcp", "network.bytes": 10**9, "taishi.source": "conn.log"})
    for ev in out:
        hit = ASSET_BY_IP.get(ev["destination.ip"])
        if hit:
            ev["taishi.destination.asset.id"], ev["taishi.destination.asset.sector"], ev["taishi.destination.asset.level"] = hit
    return out


def _alerts(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(48):
        level = rng.choice(LEVELS)
        src = rng.choice(list(ATTACKERS))
        dst = rng.choice([ip for _, ip, _, _ in ASSETS] + ["10.99.0.5"])
        anomaly = i % 6 == 0
        tactics, techniques = ([], []) if anomaly else rng.choice(ATTACK)
        t = T0 + timedelta(seconds=rng.randrange(HOURS * 3600))
        a = {"id": f"alert-{i:02d}", "@timestamp": t, "event.kind": "alert", "event.severity": SEVERITY[level],
             "rule.level": "low" if anomaly else level,
             "rule.id": (f"anomaly:{rng.choice(['flow', 'dns'])}-isolation_forest" if anomaly
                         else f"sigma-{RULES.index(r := rng.choice(RULES))}"),
             "rule.type": "anomaly" if anomaly else "sigma",
             "source.ip": src, "destination.ip": dst, "destination.port": rng.choice([22, 443, 502]),
             "event.start": t, "event.end": t, "event.count": 1, "event.ids": [f"flow-{i}"],
             "message": f"fixture alert {i}"}
        a["rule.name"] = "Anomalous flow (isolation_forest)" if anomaly else r
        if anomaly:
            a["event.severity"] = 2
        a["event.risk_score"] = float(rng.choice([5, 20, 30, 40, 50, 60, 70, 75, 80, 90, 100]))
        if tactics:
            a["threat.tactic.name"], a["threat.technique.id"] = tactics, techniques
        geo = ATTACKERS[src]
        if geo:
            a["source.geo.location"] = {"lat": geo[0], "lon": geo[1]}
        hit = ASSET_BY_IP.get(dst)
        if hit:
            a["taishi.destination.asset.id"], a["taishi.destination.asset.sector"], a["taishi.destination.asset.level"] = hit
        out.append(a)
    return out


def _incidents(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups = [["alert-01", "alert-02", "alert-05"], ["alert-07", "alert-11"], ["alert-20"]]
    out = []
    for i, ids in enumerate(groups):
        times = [a["@timestamp"] for a in alerts if a["id"] in ids]
        out.append({"id": f"inc-{i}", "title": f"fixture incident {i}", "status": "new", "assignee": None,
                    "severity": "high", "risk_score": 50 + i, "first_seen": min(times), "last_seen": max(times),
                    "alert.ids": ids, "alert.count": len(ids), "rule.names": []})
    out.append({"id": "inc-empty", "title": "no alerts", "status": "resolved", "severity": "low", "risk_score": 1,
                "first_seen": T0, "last_seen": T0 + timedelta(minutes=1), "alert.ids": [],
                "alert.count": 0, "rule.names": []})
    return out


def _posture(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    keys = [("overall", "overall")] + [("sector", s) for s in ("energy", "finance", "e-government")] + \
           [("asset", aid) for aid, *_ in ASSETS]
    for step in range(HOURS * 4):  # every 15 minutes
        t = T0 + timedelta(minutes=15 * step, seconds=30)
        for scope, key in keys:
            out.append({"id": f"{scope}:{key}:{step}", "@timestamp": t, "scope": scope, "key": key,
                        "name": key, "index": round(rng.uniform(20, 100), 1)})
    return out


def _deadletters(rng: random.Random) -> list[dict[str, Any]]:
    return [{"id": f"dl-{i}", "@timestamp": T0 + timedelta(seconds=rng.randrange(HOURS * 3600)),
             "taishi.source": "conn.log", "log.offset": i, "stage": rng.choice(["read", "parse", "parse", "detect"]),
             "reason": "fixture", "event.original": "garbage"} for i in range(9)]


def _asset_docs() -> list[dict[str, Any]]:
    return [{"asset_id": aid} for aid, *_ in ASSETS]


def _compliance_report(tmp_path: Path):
    """A real report (compliance.report.build over an embedded store) on the compliance tests'
    inventory; published exactly as `taishi compliance publish` does."""
    from compliance.report import build
    from taishi.config import Config
    from taishi.schema import events_table
    from taishi.store import Store

    now = T0 + timedelta(hours=3)
    store = Store(tmp_path / "data", clock=lambda: now, keep_open=True)
    rows = []
    for i in range(6):
        rows.append({"event.id": f"c-auth-{i}", "@timestamp": now - timedelta(minutes=5 + i), "event.dataset": "system.auth",
                     "event.category": "authentication", "event.action": "ssh_login", "event.outcome": "success",
                     "user.name": "ops", "host.name": "jump01", "log.syslog.hostname": "jump01"})
    rows.append({"event.id": "c-telnet", "@timestamp": now - timedelta(hours=1), "event.dataset": "zeek.conn",
                 "source.ip": "10.30.0.100", "destination.ip": "10.30.0.50", "destination.port": 23,
                 "network.transport": "tcp", "network.protocol": "telnet", "event.action": "SF"})
    store.write_events(events_table(rows))
    try:
        return build(store, INVENTORY, Config(), level=3, now=now)
    finally:
        store.close()


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def world(search_node, require_module, tmp_path_factory):
    from compliance.report import records

    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")

    rng = random.Random(20260302)
    w = {"events": _flows(rng), "alerts": _alerts(rng), "posture": _posture(rng), "deadletters": _deadletters(rng),
         "assets": _asset_docs()}
    w["incidents"] = _incidents(w["alerts"])
    w["report"] = _compliance_report(tmp_path_factory.mktemp("compliance"))
    w["compliance"] = records(w["report"])
    prefix = f"dashtest-{uuid.uuid4().hex[:8]}"
    store = _search_store(search_node, prefix)
    try:
        for kind in ("events", "alerts", "incidents", "assets", "posture", "deadletters", "compliance"):
            _write(store, kind, w[kind])
        _refresh(store)
        w["prefix"], w["store"] = prefix, store
        w["gaps"] = _gaps(store, w)
        yield w
    finally:
        _drop(store)


def _gaps(store, w) -> dict[str, str]:
    """What the search node cannot do that some panels need, found by asking it (so a check runs
    for real as soon as the gap is closed)."""
    gaps = {}
    probe = store._req("POST", f"/{store.index_name('alerts')}/_search", {
        "size": 0, "aggs": {"g": {"geohash_grid": {"field": "source.geo.location", "precision": 1}}}}, ok=(400,))
    if probe is None:
        gaps["geohash_grid"] = ("the node has no geohash_grid aggregation (OpenSearch moved it to the geo module, "
                                "org.opensearch.plugin:geo, class org.opensearch.geo.GeoModulePlugin)")
    return gaps


def needs(w, *gaps: str) -> None:
    """Expected failure (reported, not hidden) while the search store has one of ``gaps``."""
    have = [w["gaps"][g] for g in gaps if g in w["gaps"]]
    if have:
        pytest.xfail("; ".join(have))


def run(world, uid: str, pid: int, values: dict | None = None, adhoc=(), now: int | None = None
        ) -> list[list[dict[str, Any]]]:
    """Rows of each target of panel ``pid`` of dashboard ``uid`` over [START, END] (absolute), or
    over a range relative to ``now`` that ended at END (then a panel's ``timeFrom`` applies)."""
    dash = ALL[uid]
    panel = next(p for p in D.panels(dash) if p["id"] == pid)
    out = []
    for req in D.panel_requests(dash, panel, start=START, end=END, interval="1h", values=values, adhoc=adhoc,
                                prefix=world["prefix"], now=now):
        resp = _search(world["store"], req["index"], req["body"])
        out.append(D.rows(req["target"], resp))
    return out


def in_range(rows: list[dict]) -> list[dict]:
    return [r for r in rows if START <= ms(r["@timestamp"]) <= END]


def per_hour(rows: list[dict], value: Callable[[list[dict]], Any] = len) -> dict[int, Any]:
    by: dict[int, list] = defaultdict(list)
    for r in rows:
        by[hour_of(r["@timestamp"])].append(r)
    return {h: value(by[h]) if by[h] else None for h in HOUR_KEYS}


def term_order(key: Any) -> tuple:
    """How the node orders terms keys: addresses by their bytes, numbers by value, strings by text."""
    if isinstance(key, (int, float)):
        return (0, key, "")
    try:
        ip = ipaddress.ip_address(key)
        return (1, int(ip if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}")), "")
    except ValueError:
        return (2, 0, str(key))


def top(counter: Counter | dict, n: int, *, reverse: bool = True) -> list[tuple[Any, Any]]:
    """The first ``n`` of ``counter`` by value (ties by key ascending, as the node breaks them)."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1] if reverse else kv[1], term_order(kv[0])))
    if len(items) > n:  # the fixture must not put a tie on the cut
        assert items[n - 1][1] != items[n][1], f"tie at the size cut: {items[n - 1]} {items[n]}"
    return items[:n]


def terms_rows(rows: list[dict], field: str, metric: str = "Count") -> list[tuple[Any, Any]]:
    return [(r[field], r[metric]) for r in rows]


def series(rows: list[dict], split: str | None, metric: str = "Count") -> dict:
    """{(split value, hour) or hour: value} from histogram rows, empty buckets dropped."""
    out = {}
    for r in rows:
        if r[metric] in (None, 0):
            continue
        key = (r[split], r["@timestamp"]) if split else r["@timestamp"]
        out[key] = r[metric]
    return out


def count_series(rows: list[dict], split: str | None) -> dict:
    out: Counter = Counter()
    for r in rows:
        out[(r[split], hour_of(r["@timestamp"])) if split else hour_of(r["@timestamp"])] += 1
    return dict(out)


GEOHASH = "0123456789bcdefghjkmnpqrstuvwxyz"


def geohash(lat: float, lon: float, precision: int) -> str:
    """Standard geohash encoding (independent of the search node)."""
    lat_rng, lon_rng, bits, out, even, ch = [-90.0, 90.0], [-180.0, 180.0], 0, [], True, 0
    while len(out) < precision:
        rng, val = (lon_rng, lon) if even else (lat_rng, lat)
        mid = (rng[0] + rng[1]) / 2
        ch = ch * 2 + (val >= mid)
        rng[0 if val >= mid else 1] = mid
        even, bits = not even, bits + 1
        if bits == 5:
            out.append(GEOHASH[ch])
            bits, ch = 0, 0
    return "".join(out)


# ------------------------------------------------------------------------------ the checks

CHECKS: dict[tuple[str, int], Callable[[dict], None]] = {}


def check(uid: str, title_part: str):
    """Register the check of the panel of ``uid`` whose title contains ``title_part``."""
    panel = [p for p in D.panels(ALL[uid]) if title_part in p["title"]]
    assert len(panel) == 1, f"{uid}: {len(panel)} panels match {title_part!r}"

    def deco(fn):
        CHECKS[(uid, panel[0]["id"])] = lambda w: fn(w, panel[0]["id"])
        return fn

    return deco


def alerts_in(w, pred=lambda a: True) -> list[dict]:
    return [a for a in in_range(w["alerts"]) if pred(a)]


def flows_in(w) -> list[dict]:
    return [e for e in in_range(w["events"]) if e.get("event.category") == "network" and e.get("event.type") == "connection"]


# -- situation overview
OV = "taishi-overview"


@check(OV, "Posture index 态势指数")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    assert [r["@timestamp"] for r in rows] == HOUR_KEYS  # empty buckets too (min_doc_count 0)
    pts = [p for p in in_range(w["posture"]) if p["scope"] == "overall"]
    want = per_hour(pts, lambda g: sum(p["index"] for p in g) / len(g))
    for r in rows:
        assert r["Average index"] == pytest.approx(want[r["@timestamp"]], abs=1e-4)


@check(OV, "Posture index by sector")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    pts = [p for p in in_range(w["posture"]) if p["scope"] == "sector"]
    keys = sorted({p["key"] for p in pts})
    assert sorted({r["key"] for r in rows}) == keys
    assert [r["key"] for r in rows][:: HOURS] == keys  # ordered by term, ascending
    for k in keys:
        want = per_hour([p for p in pts if p["key"] == k], lambda g: sum(p["index"] for p in g) / len(g))
        got = {r["@timestamp"]: r["Average index"] for r in rows if r["key"] == k}
        assert got.keys() == want.keys()
        for h in HOUR_KEYS:
            assert got[h] == pytest.approx(want[h], abs=1e-4)


@check(OV, "Alerts by severity")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    assert series(rows, "rule.level") == count_series(alerts_in(w), "rule.level")


@check(OV, "Alert severity mix")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    assert terms_rows(rows, "rule.level") == top(Counter(a["rule.level"] for a in alerts_in(w)), 5)


@check(OV, "Alerts on CII assets")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    assert sum(r["Count"] for r in rows) == len(alerts_in(w, lambda a: "taishi.destination.asset.id" in a))
    assert len(rows) == HOURS


@check(OV, "Top attacking sources")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    assert terms_rows(rows, "source.ip") == top(Counter(a["source.ip"] for a in alerts_in(w)), 10)


@check(OV, "Most attacked CII assets")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    want = Counter(a["taishi.destination.asset.id"] for a in alerts_in(w, lambda a: "taishi.destination.asset.id" in a))
    assert terms_rows(rows, "taishi.destination.asset.id") == top(want, 10)


@check(OV, "Attack sources map")
def _(w, pid):
    needs(w, "geohash_grid")
    (rows,) = run(w, OV, pid)
    want = Counter(geohash(a["source.geo.location"]["lat"], a["source.geo.location"]["lon"], 3)
                   for a in alerts_in(w, lambda a: "source.geo.location" in a))
    assert {r["source.geo.location"]: r["Count"] for r in rows} == dict(want)
    assert len(want) >= 4


@check(OV, "ATT&CK")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    want: Counter = Counter()
    for a in alerts_in(w, lambda a: a.get("threat.tactic.name")):
        for ta in a["threat.tactic.name"]:
            for te in a["threat.technique.id"]:
                want[(ta, te)] += 1
    assert {(r["threat.tactic.name"], r["threat.technique.id"]): r["Count"] for r in rows} == dict(want)


@check(OV, "Collector health")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    want = count_series(in_range(w["events"]), "taishi.source")  # stored as taishi.input (search store)
    assert series(rows, "taishi.input") == want


@check(OV, "Dead letters by stage")
def _(w, pid):
    (rows,) = run(w, OV, pid)
    assert terms_rows(rows, "stage") == top(Counter(d["stage"] for d in in_range(w["deadletters"])), 10)


# -- alert triage
TR = "taishi-alert-triage"
PICK = {"severity": ["high", "critical"], "q": "destination.port:22 OR destination.port:502"}


def triage_pick(a: dict) -> bool:
    return a["rule.level"] in ("high", "critical") and a["destination.port"] in (22, 502)


@check(TR, "Alerts over time")
def _(w, pid):
    (rows,) = run(w, TR, pid)
    assert series(rows, "rule.level") == count_series(alerts_in(w), "rule.level")
    (rows,) = run(w, TR, pid, values=PICK)
    assert series(rows, "rule.level") == count_series(alerts_in(w, triage_pick), "rule.level")


@check(TR, "Alerts by rule")
def _(w, pid):
    (rows,) = run(w, TR, pid)
    assert terms_rows(rows, "rule.name") == top(Counter(a["rule.name"] for a in alerts_in(w)), 10)
    (rows,) = run(w, TR, pid, values=PICK, adhoc=[("rule.name", "!=", "Port scan")])
    want = Counter(a["rule.name"] for a in alerts_in(w, lambda a: triage_pick(a) and a["rule.name"] != "Port scan"))
    assert terms_rows(rows, "rule.name") == top(want, 10) and want


@check(TR, "Alerts 告警")
def _(w, pid):
    (rows,) = run(w, TR, pid)
    want = sorted(alerts_in(w), key=lambda a: a["@timestamp"], reverse=True)
    assert [r["id"] for r in rows] == [a["id"] for a in want]  # newest first
    assert [r["_id"] for r in rows] == [r["id"] for r in rows]  # the document id is the Taishi id
    (rows,) = run(w, TR, pid, adhoc=[("source.ip", "=", "203.0.113.50")])
    assert {r["id"] for r in rows} == {a["id"] for a in alerts_in(w, lambda a: a["source.ip"] == "203.0.113.50")}


@check(TR, "Incidents containing the alert")
def _(w, pid):
    (rows,) = run(w, TR, pid)  # alert_id = * : incidents that have alerts
    assert {r["id"] for r in rows} == {i["id"] for i in w["incidents"] if i["alert.ids"]}
    (rows,) = run(w, TR, pid, values={"alert_id": "alert-07"})
    assert [r["id"] for r in rows] == ["inc-1"]
    (rows,) = run(w, TR, pid, values={"alert_id": "alert-99"})
    assert rows == []


# -- network flows
NF = "taishi-network-flows"


@check(NF, "Traffic volume")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    fl = flows_in(w)
    want_bytes = per_hour(fl, lambda g: sum(e["network.bytes"] for e in g))
    want_n = per_hour(fl)
    assert {r["@timestamp"]: r["Sum network.bytes"] for r in rows} == {h: v or 0 for h, v in want_bytes.items()}
    assert {r["@timestamp"]: r["Count"] for r in rows} == {h: v or 0 for h, v in want_n.items()}
    (rows,) = run(w, NF, pid, values={"q": "destination.port:443"})
    assert sum(r["Count"] for r in rows) == sum(1 for e in fl if e["destination.port"] == 443)


@check(NF, "Distinct sources")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    assert rows == [{"Filters": "flows", "Unique Count source.ip": len({e["source.ip"] for e in flows_in(w)})}]
    (rows,) = run(w, NF, pid, values={"q": "destination.port:443"})
    assert rows[0]["Unique Count source.ip"] == len({e["source.ip"] for e in flows_in(w) if e["destination.port"] == 443})


@check(NF, "Top talkers")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    sums: Counter = Counter()
    for e in flows_in(w):
        sums[e["source.ip"]] += e["network.bytes"]
    assert len(sums) > 10  # the size cut matters
    assert terms_rows(rows, "source.ip", "Sum network.bytes") == top(sums, 10)


@check(NF, "Top destination ports")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    got = terms_rows(rows, "destination.port")
    want = Counter(e["destination.port"] for e in flows_in(w))
    assert len(want) > 10
    # equal counts at the cut are ordered by key by the node; compare counts, then members above the cut
    assert [n for _, n in got] == sorted(want.values(), reverse=True)[:10]
    for port, n in got:
        assert want[port] == n


@check(NF, "Transport protocols")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    assert terms_rows(rows, "network.transport") == top(Counter(e["network.transport"] for e in flows_in(w)), 5)


@check(NF, "Application protocols")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    want = Counter(e["network.protocol"] for e in flows_in(w) if e["network.protocol"])
    assert terms_rows(rows, "network.protocol") == top(want, 8)


@check(NF, "Anomalous flows")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    assert series(rows, "rule.id") == count_series(alerts_in(w, lambda a: a["rule.type"] == "anomaly"), "rule.id")


@check(NF, "Most anomalous sources")
def _(w, pid):
    (rows,) = run(w, NF, pid)
    want = Counter(a["source.ip"] for a in alerts_in(w, lambda a: a["rule.type"] == "anomaly"))
    assert terms_rows(rows, "source.ip") == top(want, 10)


# -- CII assets
CA = "taishi-cii-assets"


@check(CA, "Inventory")
def _(w, pid):
    # Asset documents are stamped when the inventory snapshot was indexed (now, long after END). The
    # panel's relative override (timeFrom 100y) replaces a relative dashboard range with
    # [now - 100y, now], as Grafana does: the whole current inventory, even when the picked range
    # ("now-270d" to "now-269d", say) holds none of its documents.
    from taishi.schema import parse_time

    hits = _search(w["store"], w["store"].index_name("assets"), {"size": 100})["hits"]["hits"]
    assert len(hits) == len(w["assets"])
    assert all(ms(parse_time(h["_source"]["@timestamp"])) > END for h in hits)  # none in the picked range
    (rows,) = run(w, CA, pid)  # an absolute range: Grafana applies no relative override
    assert rows == []
    (rows,) = run(w, CA, pid, now=int(datetime.now(timezone.utc).timestamp() * 1000))
    assert sorted(r["asset_id"] for r in rows) == sorted(a["asset_id"] for a in w["assets"])
    assert {r["system"]["sector"] for r in rows} == {sector for _, _, sector, _ in ASSETS}


@check(CA, "Posture per asset")
def _(w, pid):
    (rows,) = run(w, CA, pid)
    mins: dict[str, float] = {}
    for p in in_range(w["posture"]):
        if p["scope"] == "asset":
            mins[p["key"]] = min(mins.get(p["key"], 101), p["index"])
    got = terms_rows(rows, "key", "Min index")
    assert [k for k, _ in got] == [k for k, _ in top(mins, 15, reverse=False)]  # worst first
    for k, v in got:
        assert v == pytest.approx(mins[k], abs=1e-4)


@check(CA, "Alerts per asset")
def _(w, pid):
    (rows,) = run(w, CA, pid)
    on = alerts_in(w, lambda a: "taishi.destination.asset.id" in a)
    n = Counter(a["taishi.destination.asset.id"] for a in on)
    worst: dict[str, int] = {}
    risk: dict[str, float] = {}
    for a in on:
        k = a["taishi.destination.asset.id"]
        worst[k] = max(worst.get(k, 0), a["event.severity"])
        risk[k] = max(risk.get(k, 0.0), a["event.risk_score"])
    assert terms_rows(rows, "taishi.destination.asset.id") == top(n, 50)
    assert {r["taishi.destination.asset.id"]: r["Max event.severity"] for r in rows} == worst
    assert {r["taishi.destination.asset.id"]: r["Max event.risk_score"] for r in rows} == risk


@check(CA, "Asset activity")
def _(w, pid):
    (rows,) = run(w, CA, pid)
    on = [e for e in in_range(w["events"]) if "taishi.destination.asset.id" in e]
    n = Counter(e["taishi.destination.asset.id"] for e in on)
    last: dict[str, int] = {}
    for e in on:
        k = e["taishi.destination.asset.id"]
        last[k] = max(last.get(k, 0), ms(e["@timestamp"]))
    assert terms_rows(rows, "taishi.destination.asset.id") == top(n, 50)
    assert {r["taishi.destination.asset.id"]: r["Max @timestamp"] for r in rows} == last


@check(CA, "Alerts on CII assets by sector")
def _(w, pid):
    (rows,) = run(w, CA, pid)
    want = count_series(alerts_in(w, lambda a: "taishi.destination.asset.id" in a), "taishi.destination.asset.sector")
    assert series(rows, "taishi.destination.asset.sector") == want


# -- MLPS compliance
MC = "taishi-mlps-compliance"


@check(MC, "Verdicts 判定")
def _(w, pid):
    (rows,) = run(w, MC, pid)
    total = Counter()
    for counts in w["report"].summary.values():  # the report's own summary, independent of records()
        total.update(counts)
    assert dict(terms_rows(rows, "compliance.verdict")) == {k: n for k, n in total.items() if n}


@check(MC, "Verdicts per CII system")
def _(w, pid):
    (rows,) = run(w, MC, pid)
    got = {(r["taishi.system.id"], r["compliance.verdict"]): r["Count"] for r in rows}
    want = {(s, v): n for s, counts in w["report"].summary.items() for v, n in counts.items() if n}
    assert got == want
    sys1 = sorted(w["report"].summary)[0]
    (rows,) = run(w, MC, pid, values={"system": sys1})
    assert {r["taishi.system.id"] for r in rows} == {sys1}


@check(MC, "Controls × verdict")
def _(w, pid):
    (rows,) = run(w, MC, pid)
    rep = w["report"]
    want: Counter = Counter()
    for v in rep.verdicts:
        want[(v.gbt22239, v.verdict)] += len(rep.systems) if v.scope == "global" else 1
    assert {(r["compliance.control"], r["compliance.verdict"]): r["Count"] for r in rows} == dict(want)


@check(MC, "Failed controls")
def _(w, pid):
    (rows,) = run(w, MC, pid)
    rep = w["report"]
    fails = [v for v in rep.verdicts if v.verdict == "fail"]
    assert fails, "the fixture should fail some control"
    want = Counter((v.check_id, v.target) for v in fails for _ in (rep.systems if v.scope == "global" else [0]))
    assert Counter((r["compliance.check.id"], r["compliance.target"]) for r in rows) == want
    assert all(r["compliance.reason"] for r in rows)


# ------------------------------------------------------------------------------ the tests

PANELS = [(uid, p["id"], p["title"]) for uid, d in sorted(ALL.items()) for p in D.panels(d)]


def test_every_panel_has_a_check():
    missing = [f"{uid} panel {pid} {title!r}" for uid, pid, title in PANELS if (uid, pid) not in CHECKS]
    assert not missing, "panels without a check: " + "; ".join(missing)
    stale = set(CHECKS) - {(uid, pid) for uid, pid, _ in PANELS}
    assert not stale


@pytest.mark.parametrize("uid,pid,title", PANELS, ids=[f"{u}-{p}" for u, p, _ in PANELS])
def test_panel_numbers(world, uid, pid, title):
    CHECKS[(uid, pid)](world)


def test_panel_fields_are_mapped(world):
    """Every field a panel aggregates or filters on exists in its index's mapping."""
    known = {name: _mapped_fields(world["store"], f"{world['prefix']}-{name}") for name in D.INDICES}
    issues = [str(i) for d in ALL.values() for i in D.validate(d, known)]
    assert issues == []
    assert "source.geo.location" in known["alerts"] and "taishi.destination.asset.id" in known["alerts"]
    mapping = world["store"]._req("GET", f"/{world['prefix']}-alerts/_mapping")
    (m,) = mapping.values()
    assert m["mappings"]["properties"]["source"]["properties"]["geo"]["properties"]["location"]["type"] == "geo_point"


# ------------------------------------------------------------------------------ through the search store

def _search_store(node, prefix):
    from taishi.cluster.search import SearchStore

    store = SearchStore(node["url"], node["flavor"], index_prefix=prefix, refresh="wait_for")
    store.setup()
    return store


def _write(store, kind, rows):
    from taishi.cluster import compliance_index
    from taishi.schema import ALERT_SCHEMA, alerts_table, deadletters_table, events_table

    if kind == "events":
        n = store.write_events(events_table(rows))
    elif kind == "alerts":  # only the columns the alert schema has (see _stored_alert_fields)
        n = store.write_alerts(alerts_table([{k: v for k, v in r.items() if k in ALERT_SCHEMA.names} for r in rows]))
    elif kind == "deadletters":
        n = store.write_deadletters(deadletters_table(rows))
    elif kind == "incidents":
        n = store.write_incidents(rows)
    elif kind == "assets":
        n = store.write_assets(INVENTORY)
    elif kind == "posture":
        n = store.write_posture(rows)
    else:
        n = compliance_index.publish(store, rows)
    assert n == len(rows), f"{kind}: {n} of {len(rows)} written"


def _refresh(store):
    store.refresh_indices()


def _drop(store):
    store._req("DELETE", f"/_data_stream/{store.index_name('events')}", ok=(404,))
    for name in D.INDICES:
        idx = store.index_name(name)
        store._req("DELETE", f"/{idx}", ok=(404,))
        store._req("DELETE", f"/_index_template/{idx}", ok=(404,))
    store.close()


def _search(store, index, body):
    return store._req("POST", f"/{index}/_search", body)


def _mapped_fields(store, index):
    m = store._req("GET", f"/{index}/_mapping")
    out = set()

    def walk(props, path):
        for k, v in props.items():
            name = f"{path}.{k}" if path else k
            if "properties" in v:
                walk(v["properties"], name)
            else:
                out.add(name)

    for idx in m.values():
        walk(idx["mappings"].get("properties", {}), "")
    return out


def test_probe_command_runs_every_panel(world, search_node, tmp_path):
    """`taishi dashboards probe` sends every panel's query to the node and reports rows or the error."""
    import json

    import yaml
    from click.testing import CliRunner

    from taishi.cli import main

    cfg = tmp_path / "taishi.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"), "cluster": {"search": {
        "url": search_node["url"], "flavor": search_node["flavor"], "index_prefix": world["prefix"]}}}))
    res = CliRunner().invoke(main, ["--config", str(cfg), "dashboards", "probe", "--since", T0.isoformat(), "--json"])
    out = json.loads(res.output)
    assert {(r["dashboard"], r["panel"]) for r in out} == {(u, p) for u, p, _ in PANELS}
    failed = [r for r in out if "error" in r]
    assert res.exit_code == (1 if failed else 0)
    map_panel = [p for u, p, t in PANELS if u == OV and "map" in t]
    if "geohash_grid" in world["gaps"]:
        assert [(r["dashboard"], r["panel"]) for r in failed] == [(OV, map_panel[0])]
        assert "geohash_grid" in failed[0]["error"]
    else:
        assert failed == []
    rows = {(r["dashboard"], r["panel"]): r.get("rows") for r in out}
    assert rows[(TR, next(p for u, p, t in PANELS if u == TR and t.startswith("Alerts 告警")))] == len(alerts_in(world))
