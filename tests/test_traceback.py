"""Traceback (correlate.traceback): the attack path is time-respecting and made of alerts, host
names fold into addresses, drawings are real PNG/SVG laid out by kill-chain stage; and on a
multi-stage shared capture (WRCCDC 2018 red team vs blue teams, Zeek logs) the incidents and
their paths follow the attack."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from correlate.incidents import KILL_CHAIN, STAGE
from correlate.traceback import attack_path, draw, layout, merge_hosts, path_lines, path_nodes


def E(s, t, time, tactic=None, kind="alert", rule="r", alert_id=None, **kw):
    return {"source": s, "target": t, "kind": kind, "time": f"2026-03-01T{time}Z", "rule": rule,
            "tactic": tactic, "alert_id": alert_id or f"{s}-{t}-{time}", "count": 1, **kw}


def N(i, role="target", typ=None):
    typ = typ or i.split(":")[0]
    return {"id": i, "type": typ, "label": i.split(":", 1)[1], "role": role, "asset": None, "stage": None}


def test_path_is_time_respecting_and_ends_at_the_most_advanced_stage():
    g = {"nodes": [N("ip:x", "source"), N("ip:j", "both"), N("ip:d", "both"), N("ip:e"), N("domain:t.example")],
         "edges": [
             E("ip:d", "ip:e", "08:00:00", "Lateral Movement"),  # before d was reached: not a hop
             E("ip:x", "ip:j", "08:10:00", "Discovery"),
             E("ip:x", "ip:j", "08:20:00", "Credential Access"),
             E("ip:j", "ip:d", "08:30:00", "Lateral Movement"),
             E("ip:j", "ip:d", "08:29:00", kind="connection", rule=None, ports=["tcp/445"]),
             E("ip:d", "ip:x", "07:00:00", kind="connection", rule=None, ports=["tcp/22"]),
             E("ip:d", "domain:t.example", "09:00:00", "Exfiltration"),
             E("ip:j", "ip:e", "09:30:00", "Collection"),
         ]}
    path = attack_path(g)
    assert path_nodes(path) == ["ip:x", "ip:j", "ip:d", "domain:t.example"]
    assert path[0]["tactics"] == ["Discovery", "Credential Access"]
    assert [e["kind"] for e in path[1]["evidence"]] == ["connection", "alert"]  # the SMB flow corroborates
    lines = path_lines({**g, "path": path})
    assert lines[0].startswith("1. x → j") and any("tcp/445" in ln for ln in lines)


def test_connections_alone_never_reach_a_node():
    g = {"nodes": [N("ip:x", "source"), N("ip:a"), N("ip:b")],
         "edges": [E("ip:x", "ip:a", "08:00:00", "Discovery"),
                   E("ip:a", "ip:b", "08:05:00", kind="connection", rule=None, ports=["tcp/1433"]),
                   E("ip:x", "ip:b", "09:00:00", "Discovery")]}
    assert path_nodes(attack_path(g)) == ["ip:x", "ip:b"]
    assert attack_path({"nodes": [], "edges": []}) == []


def test_host_names_fold_into_their_addresses():
    g = {"nodes": [N("ip:203.0.113.5", "source"), N("host:jump01"), N("ip:10.1.0.20", "both")],
         "edges": [E("ip:203.0.113.5", "host:jump01", "08:00:00", "Initial Access"),
                   E("ip:10.1.0.20", "ip:10.2.0.4", "09:00:00", "Lateral Movement")]}
    m = merge_hosts(g, {"jump01": "10.1.0.20"})
    ids = {n["id"] for n in m["nodes"]}
    assert "host:jump01" not in ids and "ip:10.1.0.20" in ids
    node = next(n for n in m["nodes"] if n["id"] == "ip:10.1.0.20")
    assert node["label"] == "jump01 (10.1.0.20)" and node["aliases"] == ["jump01"]
    assert m["edges"][0]["target"] == "ip:10.1.0.20"
    assert merge_hosts(g, {}) is g


def test_layout_orders_columns_by_kill_chain_stage():
    g = {"nodes": [N("ip:d", "both"), N("ip:x", "source"), N("ip:j", "both"), N("ip:t")],
         "edges": [E("ip:x", "ip:j", "08:00:00", "Initial Access"), E("ip:j", "ip:d", "09:00:00", "Lateral Movement"),
                   E("ip:d", "ip:t", "10:00:00", "Exfiltration"), E("ip:x", "ip:t", "08:01:00", "Discovery")]}
    g["path"] = attack_path(g)
    pos = layout(g)
    assert pos["ip:x"][0] < pos["ip:j"][0] < pos["ip:d"][0]
    assert STAGE["Initial Access"] < STAGE["Lateral Movement"] < STAGE["Exfiltration"]
    assert all(pos[n][1] == 0.0 for n in path_nodes(g["path"]))  # the path runs straight


def test_draw_png_and_svg(tmp_path: Path):
    g = {"nodes": [N("ip:x", "source"), N("ip:j", "both"), N("domain:t.example")],
         "edges": [E("ip:x", "ip:j", "08:00:00", "Initial Access", rule="SSH login"),
                   E("ip:j", "ip:j", "08:01:00", "Privilege Escalation", rule="sudo"),
                   E("ip:j", "domain:t.example", "09:00:00", "Exfiltration", rule="DNS tunnel")]}
    g["path"] = attack_path(g)
    png = draw(g, tmp_path / "a.png", "t")
    svg = draw(g, tmp_path / "b.svg", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = svg.read_text()
    assert "<svg" in text and "DNS tunnel" in text and "Exfiltration" in text


# ---------------------------------------------------------------- shared data (integration)
@pytest.mark.integration
def test_wrccdc_red_team_incidents_and_paths(shared_data: Path, tmp_path: Path):
    """WRCCDC 2018 (Zeek JSON, red team vs student blue teams) with SigmaHQ's Zeek rules and ours:
    every red-team source of MITRE BZAR execution calls (DCE-RPC) has one incident holding all its
    BZAR alerts, its tactics in kill-chain order, and a path that starts at it and hops to a host
    it called; where a called host then acts itself, the incident follows it (the path goes on
    from that host)."""
    from taishi import config as config_mod
    from taishi.pipeline import Pipeline
    from taishi.store import Store

    zeek = shared_data / "zeek" / "wrccdc2018_zed"
    rules = [Path(__file__).resolve().parent.parent / "rules",
             shared_data / "rules" / "sigma" / "rules" / "network" / "zeek"]
    cfg = config_mod.load(None, data_dir=tmp_path / "data", rules=rules)
    pipe = Pipeline(cfg, bounded=True)
    try:
        pipe.run_files([zeek / "dce_rpc.json.gz", zeek / "ssl.json.gz"])
    finally:
        pipe.close()
    from correlate.traceback import attack_graph

    store = Store(cfg.data_dir)
    try:
        bzar = store.search_alerts('rule.name:"MITRE BZAR Indicators for Execution"', limit=None).to_pylist()
        assert bzar, "the BZAR rule raised nothing on the WRCCDC DCE-RPC log"
        by_src: dict[str, set[str]] = defaultdict(set)
        called: dict[str, set[str]] = defaultdict(set)
        for a in bzar:
            by_src[a["source.ip"]].add(a["id"])
            called[a["source.ip"]].add(a["destination.ip"])
        followed = 0
        for src, ids in sorted(by_src.items()):
            incs = store.search_incidents(f'alert.ids:"{sorted(ids)[0]}"', limit=None)
            assert len(incs) == 1
            inc = incs[0]
            assert ids <= set(inc["alert.ids"]), src
            tac = inc["threat.tactic.name"]
            assert {"Execution", "Persistence", "Privilege Escalation"} <= set(tac)
            assert tac == sorted(tac, key=KILL_CHAIN.index)
            graph = attack_graph(inc, store)
            path = graph["path"]
            assert path and path[0]["source"] == f"ip:{src}", (src, path_nodes(path))
            assert path[0]["target"][3:] in called[src]
            assert any(ev["kind"] == "alert" and ev["rule"].startswith("MITRE BZAR") for ev in path[0]["evidence"])
            if len(path) > 1:
                followed += 1
                assert path[1]["source"] == path[0]["target"]  # the next hop starts where the last one landed
                assert len(tac) > 3
        assert followed >= 1, "no red-team victim acted afterwards in this capture"
    finally:
        store.close()


@pytest.mark.integration
@pytest.mark.parametrize("capture, scanner, victim", [
    # MANIFEST ground truth (Slips' own test baselines): "Horizontal port scan to port http 80/tcp. From
    # 10.0.2.112" and "vertical port scan to IP 45.33.32.156 from 192.168.1.9."
    ("zeek/slips/port-scans/horizontal/conn.log", "10.0.2.112", None),
    ("zeek/slips/port-scans/vertical/conn.log", "192.168.1.9", "45.33.32.156"),
])
def test_slips_scans_incident_and_path(shared_data: Path, tmp_path: Path, capture, scanner, victim):
    """Single-stage Slips captures: the scanner Slips names is the incident's source, its path starts
    there and is backed by the observed connections."""
    from correlate.traceback import attack_graph
    from taishi import config as config_mod
    from taishi.pipeline import Pipeline
    from taishi.store import Store

    cfg = config_mod.load(None, data_dir=tmp_path / "data")
    pipe = Pipeline(cfg, bounded=True)
    try:
        pipe.run_files([shared_data / capture])
    finally:
        pipe.close()
    store = Store(cfg.data_dir)
    try:
        incs = store.search_incidents("", limit=None)
        assert len(incs) == 1
        inc = incs[0]
        assert {(e["value"], e["role"]) for e in inc["entities"] if e["type"] == "ip"} >= {(scanner, "source")}
        assert inc["threat.tactic.name"] == ["Discovery"]
        graph = attack_graph(inc, store)
    finally:
        store.close()
    (hop,) = graph["path"]
    assert hop["source"] == f"ip:{scanner}" and (victim is None or hop["target"] == f"ip:{victim}")
    assert [e["kind"] for e in hop["evidence"]].count("connection") == 1  # the scan's flows to that host
