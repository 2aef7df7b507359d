"""The situation views (/api/v1/views/*) over a small store and inventory, by role.

Expected figures are computed here from the rows written (and from the posture
formula by hand), not read back from the code under test."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compliance.inventory import Inventory, enrich
from taishi.api.app import create_app
from taishi.api.auth import ADMIN_TOKEN_ENV, ROLES
from taishi.ids import alert_id, event_id
from taishi.schema import alerts_table, events_table
from taishi.store import Store

API = "/api/v1"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
ATTACKER, SCANNER = "203.0.113.9", "1.2.4.8"  # documentation range; a Chinese public address
CC = "12330000470051726F"


def _flow(i: int, src: str, dst: str, port: int, proto: str, nbytes: int, ago_min: int) -> dict:
    line = f"flow {i}"
    return {"event.id": event_id("conn.log", i, line), "@timestamp": NOW - timedelta(minutes=ago_min),
            "event.dataset": "zeek.conn", "event.category": "network", "event.type": "connection",
            "source.ip": src, "destination.ip": dst, "destination.port": port, "network.transport": proto,
            "network.protocol": {22: "ssh", 53: "dns", 502: "modbus"}.get(port), "network.bytes": nbytes,
            "event.original": line}


FLOWS = [
    _flow(0, ATTACKER, "10.0.1.20", 22, "tcp", 1_000, 30),
    _flow(1, ATTACKER, "10.0.1.20", 22, "tcp", 2_000, 29),
    _flow(2, "10.0.1.20", "10.0.3.50", 502, "tcp", 50_000, 20),
    _flow(3, "10.0.2.53", "8.8.8.8", 53, "udp", 300, 10),
    _flow(4, SCANNER, "10.0.1.20", 22, "tcp", 100, 5),
    _flow(5, "10.0.9.9", "10.0.2.53", 53, "udp", 200, 4),  # not an inventoried host
]
AUTH = {"event.id": event_id("auth.log", 0, "x"), "@timestamp": NOW - timedelta(minutes=15),
        "event.dataset": "system.auth", "source.ip": ATTACKER, "destination.ip": "10.0.1.20", "event.original": "x"}


def _alert(n: int, level: str, src: str, dst: str, ago_min: float, tactic: str, tech: str) -> dict:
    return {"id": alert_id(f"r{n}", [str(n)]), "@timestamp": NOW - timedelta(minutes=ago_min), "event.kind": "alert",
            "rule.id": f"r{n}", "rule.name": f"rule {n}", "rule.level": level, "rule.type": "sigma",
            "source.ip": src, "destination.ip": dst, "threat.tactic.name": [tactic], "threat.technique.id": [tech],
            "event.ids": [str(n)]}


ALERTS = [
    _alert(1, "high", ATTACKER, "10.0.1.20", 30, "credential-access", "T1110"),
    _alert(2, "high", ATTACKER, "10.0.1.20", 28, "credential-access", "T1110"),
    _alert(3, "critical", "10.0.1.20", "10.0.3.50", 20, "lateral-movement", "T1021"),
    _alert(4, "medium", SCANNER, "10.0.1.20", 5, "reconnaissance", "T1595"),
    _alert(5, "low", "10.0.9.9", "10.0.2.53", 4, "command-and-control", "T1071"),
    _alert(6, "high", ATTACKER, "10.0.1.20", 60 * 24 * 9, "credential-access", "T1110"),  # 9 days old
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    import os

    os.environ.pop(ADMIN_TOKEN_ENV, None)
    d = tmp_path_factory.mktemp("views") / "data"
    with Inventory.editing(d) as inv:
        for cid, sector, level, region, cidr in (("SYS-DMZ", "e_government", 3, "杭州市", "10.0.1.0/24"),
                                                 ("SYS-CORE", "energy", 3, "杭州市", "10.0.2.0/24"),
                                                 ("SYS-OT", "energy", 4, "湖州市", "10.0.3.0/24")):
            inv.put_system({"cii_id": cid, "name": cid, "operator": "op", "credit_code": CC, "sector": sector,
                            "mlps_level": level, "cidrs": [cidr], "location": region, "zone": cid[4:].lower()}, who="t")
        for aid, sysid, ip in (("jump", "SYS-DMZ", "10.0.1.20"), ("dns", "SYS-CORE", "10.0.2.53"),
                               ("rtu", "SYS-OT", "10.0.3.50"), ("spare", "SYS-CORE", "10.0.2.99")):
            inv.put_asset({"asset_id": aid, "system_id": sysid, "hostname": aid, "ips": [ip]}, who="t")
    inv = Inventory.open(d)
    store = Store(d)
    store.write_events(enrich(events_table(FLOWS + [AUTH]), inv))
    store.write_alerts(alerts_table(ALERTS))
    store.close()
    app = create_app(d)
    tokens = {r: app.state.users.add_user(f"{r}1", r) for r in ROLES}
    with TestClient(app) as c:
        yield {"client": c, "tokens": tokens, "dir": d}


def get(env, path, role="analyst", code=200):
    r = env["client"].get(API + path, headers={"Authorization": f"Bearer {env['tokens'][role]}"})
    assert r.status_code == code, (path, r.status_code, r.text[:300])
    return r.json()


ROUTES = ["/views/overview", "/views/posture", "/views/flows", "/views/assets", "/views/geo"]


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_every_view(env, role):
    for path in ROUTES:
        get(env, path, role)


def test_no_token_no_view(env):
    for path in ROUTES:
        assert env["client"].get(API + path).status_code == 401


def _expected_index(alerts: list[dict], levels: dict[str, int], at: datetime) -> float:
    """100 exp(-P/30), P = sum of S[level] L[mlps] 2^(-age/6h): the README's formula, by hand."""
    S = {"low": 1, "medium": 3, "high": 7, "critical": 15}
    L = {3: 1.0, 4: 1.5}
    p = 0.0
    for a in alerts:
        age_h = (at - a["@timestamp"]).total_seconds() / 3600
        lv = max([levels.get(a["source.ip"], 3), levels.get(a["destination.ip"], 3)])
        p += S[a["rule.level"]] * L[lv] * 2 ** (-age_h / 6)
    return 100 * math.exp(-p / 30)


def test_overview(env):
    d = get(env, "/views/overview?since=24h")
    assert d["alerts_by_level"] == {"informational": 0, "low": 1, "medium": 1, "high": 2, "critical": 1}
    assert d["totals"]["alerts"] == 5 and d["totals"]["events"] == 7 and d["totals"]["assets"] == 4
    assert sum(sum(b[lv] for lv in d["alerts_by_level"]) for b in d["alerts_histogram"]["buckets"]) == 5
    # top sources: the attacker twice (documentation range: not on the map), then one each
    top = d["top_sources"]
    assert [(s["ip"], s["count"]) for s in top[:1]] == [(ATTACKER, 2)]
    assert top[0]["geo"]["kind"] == "unknown" and top[0]["geo"]["reason"] == "documentation range"
    internal = next(s for s in top if s["ip"] == "10.0.1.20")
    assert internal["asset"]["asset_id"] == "jump" and internal["asset"]["mlps_level"] == 3
    # the most attacked CII asset
    assert d["top_targets"][0]["ip"] == "10.0.1.20" and d["top_targets"][0]["count"] == 3
    assert d["top_targets"][0]["asset"]["system_id"] == "SYS-DMZ"
    # ATT&CK columns in kill-chain order whatever the tag spelling
    assert [t["tactic"] for t in d["attack_matrix"]["tactics"]] == [
        "Reconnaissance", "Credential Access", "Lateral Movement", "Command and Control"]
    ca = d["attack_matrix"]["tactics"][1]
    assert ca["count"] == 2 and ca["techniques"] == [{"id": "T1110", "count": 2}]
    # the overall posture: the 9-day-old alert has decayed to nothing
    levels = {"10.0.3.50": 4}
    until = datetime.fromisoformat(d["until"].replace("Z", "+00:00"))
    assert d["posture"]["index"] == pytest.approx(_expected_index(ALERTS[:5], levels, until), abs=0.06)
    assert d["posture"]["series"][-1]["index"] == d["posture"]["index"]
    assert d["posture"]["series"][0]["index"] == 100.0
    assert {s["key"] for s in d["posture"]["sectors"]} == {"e_government", "energy"}
    assert all(not a["key"].startswith("ip:") for a in d["posture"]["worst_assets"])
    assert d["posture"]["worst_assets"][0]["key"] in ("jump", "rtu")
    # map: the internal sources at the protected networks' marker, the attacker unplaced with its reason
    unplaced = {u["reason"]: u["count"] for u in d["map"]["unplaced"]}
    assert unplaced.get("documentation range") == 2
    assert any(p["kind"] == "internal" for p in d["map"]["points"])


def test_overview_filter_and_bad_query(env):
    d = get(env, '/views/overview?since=24h&q=rule.level:high')
    assert d["totals"]["alerts"] == 2 and d["alerts_by_level"]["critical"] == 0
    assert "bad query" in get(env, "/views/overview?q=nope.field:1", code=400)["detail"]
    get(env, "/views/overview?since=banana", code=400)


def test_posture_scopes(env):
    d = get(env, "/views/posture?since=6h&step=3600")
    assets = {a["key"]: a for a in d["asset"]}
    until = datetime.fromisoformat(d["times"][-1].replace("Z", "+00:00"))
    assert assets["rtu"]["index"] == pytest.approx(_expected_index([ALERTS[2]], {"10.0.3.50": 4}, until), abs=0.06)
    assert assets["spare"]["index"] == 100.0 and assets["spare"]["alerts"] == 0
    assert "ip:203.0.113.9" in assets and "ip:10.0.9.9" in assets
    # e-government (the jump host: brute force, scan, the lateral critical) is under more pressure than
    # energy (the lateral critical at level 4, one low): worst first
    assert [s["key"] for s in d["sector"]] == ["e_government", "energy"]
    assert [s["alerts"] for s in d["sector"]] == [4, 2]
    assert {r["key"] for r in d["region"]} == {"杭州市", "湖州市"}
    assert len(d["times"]) == len(d["overall"]["series"]) == 7  # 6 whole hours + now
    get(env, "/views/posture?by=planet", code=422)
    get(env, "/views/posture?since=30d&step=60", code=422)  # too many points


def test_flows(env):
    d = get(env, "/views/flows?since=24h", role="responder")
    assert d["totals"] == {"flows": 6, "bytes": sum(f["network.bytes"] for f in FLOWS), "sources": 5, "destinations": 4}
    assert sum(v["flows"] for v in d["volume"]) == 6 and sum(v["bytes"] for v in d["volume"]) == 53_600
    talkers = [(t["ip"], t["bytes"]) for t in d["top_talkers"]]
    assert talkers[:2] == [("10.0.1.20", 50_000), (ATTACKER, 3_000)]
    assert d["top_talkers"][0]["asset"]["asset_id"] == "jump"
    cn = next(t for t in d["top_talkers"] if t["ip"] == SCANNER)["geo"]
    assert cn["kind"] in ("public", "unknown")  # public when the geo extra is installed
    assert [(p["port"], p["transport"], p["flows"]) for p in d["ports"]] == [(22, "tcp", 3), (53, "udp", 2), (502, "tcp", 1)]
    assert {p["protocol"]: p["flows"] for p in d["protocols"]} == {"ssh": 3, "dns": 2, "modbus": 1}
    assert d["anomalies"] == {"count": 0, "items": [], "models": []}
    q = get(env, "/views/flows?since=24h&q=destination.port:22")
    assert q["totals"]["flows"] == 3


def test_assets(env):
    d = get(env, "/views/assets?since=24h", role="auditor")
    rows = {r["asset_id"]: r for r in d["items"]}
    assert set(rows) == {"jump", "dns", "rtu", "spare"}
    assert rows["spare"]["status"] == "silent" and rows["spare"]["last_seen"] is None
    assert rows["jump"]["alerts"] == 4 and rows["jump"]["open_alerts"] == 4
    assert rows["jump"]["events"] == 5  # 4 flows + the auth record touch it
    assert rows["rtu"]["mlps_level"] == 4 and rows["rtu"]["region"] == "湖州市"
    assert d["items"][0]["index"] == min(r["index"] for r in d["items"])
    assert {r["status"] for r in d["items"] if r["index"] < 75} <= {"at_risk", "silent"}
    assert len(rows["jump"]["series"]) == len(d["times"])
    assert [s["cii_id"] for s in d["systems"]] == ["SYS-CORE", "SYS-DMZ", "SYS-OT"]
    assert {u["name"] for u in d["uninventoried"]} >= {ATTACKER, "10.0.9.9"}


def test_triage_changes_open_alerts(env):
    a = ALERTS[3]["id"]
    r = env["client"].post(f"{API}/alerts/{a}/triage", json={"status": "closed"},
                           headers={"Authorization": f"Bearer {env['tokens']['responder']}"})
    assert r.status_code == 200
    rows = {r["asset_id"]: r for r in get(env, "/views/assets?since=24h")["items"]}
    assert rows["jump"]["open_alerts"] == 3


def test_geo_points(env):
    d = get(env, "/views/geo?since=24h&table=events&side=source", role="admin")
    total = sum(p["count"] for p in d["points"]) + sum(u["count"] for u in d["unplaced"])
    assert total == 7  # every event with a source address
    unplaced = {u["reason"]: u["count"] for u in d["unplaced"]}
    assert unplaced["documentation range"] == 3
    internal = next(p for p in d["points"] if p["kind"] == "internal")
    assert internal["count"] == 3  # 10.0.1.20, 10.0.2.53, 10.0.9.9
    get(env, "/views/geo?table=users", code=422)


def test_collectors_from_the_bus_directory(env, tmp_path: Path):
    from taishi.bus import Bus
    import pyarrow as pa

    bus = Bus(env["dir"] / "bus")
    bus.produce("raw.syslog", pa.table({"x": [1, 2, 3]}))
    bus.commit("parse", "raw.syslog", 1)
    d = get(env, "/views/overview")
    topic = next(t for t in d["collectors"]["topics"] if t["topic"] == "raw.syslog")
    assert topic["records"] == 3 and topic["lag"] == {"parse": 2} and topic["status"] == "lagging"
    assert {s["dataset"]: s["events"] for s in d["collectors"]["sources"]} == {"zeek.conn": 6, "system.auth": 1}
    # a source silent in the window is still listed (seen this week), with no events in the window
    quiet = get(env, "/views/overview?since=2m")["collectors"]["sources"]
    assert {s["dataset"]: s["events"] for s in quiet} == {"zeek.conn": 0, "system.auth": 0}
    assert all(s["last_event"] for s in quiet)


def test_views_on_an_empty_data_dir(tmp_path: Path):
    """No events, no alerts, no inventory, no bus: every view answers, calm and empty."""
    app = create_app(tmp_path / "empty")
    tok = app.state.users.add_user("a1", "analyst")
    with TestClient(app) as c:
        h = {"Authorization": f"Bearer {tok}"}
        ov = c.get(f"{API}/views/overview", headers=h).json()
        assert ov["posture"]["index"] == 100.0 and ov["posture"]["band"] == "calm"
        assert ov["totals"]["alerts"] == 0 and ov["top_sources"] == [] and ov["attack_matrix"]["tactics"] == []
        assert ov["collectors"]["topics"] == [] and ov["map"]["points"] == []
        assert c.get(f"{API}/views/assets", headers=h).json()["items"] == []
        fl = c.get(f"{API}/views/flows", headers=h).json()
        assert fl["totals"]["flows"] == 0 and all(v["flows"] == 0 for v in fl["volume"])
        assert c.get(f"{API}/views/geo", headers=h).json()["points"] == []
