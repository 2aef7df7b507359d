"""Incident building (correlate.incidents): grouping, pivots, gaps, merges, determinism across
batch cuts, snapshot/restore mid-stream, tactics in kill-chain order, scoring, bounded state;
and the workflow in the store (transitions, history)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from correlate.incidents import (
    KILL_CHAIN,
    TRANSITIONS,
    IncidentBuilder,
    WorkflowError,
    build,
    check_transition,
    incident_id,
    merge_outputs,
    tactics_of,
)
from taishi.schema import alerts_table
from taishi.store import Store

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
INF = float("inf")


def A(aid: str, minute: float, src: str | None = None, dst: str | None = None, *, tags=(), level="medium",
      rule="r", host=None, user=None, dns=None, **extra) -> dict:
    row = {"id": aid, "@timestamp": T0 + timedelta(minutes=minute), "rule.id": rule, "rule.name": f"rule {rule}",
           "rule.level": level, "tags": list(tags), "source.ip": src, "destination.ip": dst, "host.name": host,
           "user.name": user, "dns.question.name": dns}
    row.update(extra)
    return row


def run(alerts: list[dict], lateness=INF, gap_s=3600.0) -> list[dict]:
    """Alerts through a builder; rows with enrichment columns go in as dicts (the alert schema has none)."""
    b = IncidentBuilder(gap_s=gap_s, allowed_lateness_s=lateness)
    enriched = any(k.startswith("taishi.") for a in alerts for k in a)
    out = b.process(alerts if enriched else alerts_table(alerts))
    return [i for i in merge_outputs(out, b.flush()) if "merged_into" not in i]


def by_alert(incidents: list[dict]) -> dict[str, str]:
    return {a: i["id"] for i in incidents for a in i["alert.ids"]}


# ------------------------------------------------------------------ grouping
def test_same_attacker_one_incident_unrelated_attackers_apart():
    incs = run([A("a1", 0, "203.0.113.5", "10.0.0.1"), A("a2", 5, "203.0.113.5", "10.0.0.2"),
                A("b1", 1, "198.51.100.9", "10.0.0.3")])
    groups = by_alert(incs)
    assert groups["a1"] == groups["a2"] != groups["b1"]
    assert len(incs) == 2
    assert incs[0]["id"] in {incident_id("a1"), incident_id("b1")}


def test_attack_followed_as_it_moves_and_host_logs_join():
    alerts = [
        A("scan", 0, "203.0.113.5", "10.1.0.20", tags=["attack.discovery"]),
        A("login", 10, "203.0.113.5", None, host="jump", user="ops", tags=["attack.initial-access"]),
        A("sudo", 11, None, None, host="jump", user="ops", tags=["attack.privilege-escalation"]),
        A("lateral", 30, "10.1.0.20", "10.2.0.40", tags=["attack.lateral-movement"]),  # the jump host moves on
        A("exfil", 60, "10.2.0.40", "10.2.0.53", dns="x1.t.evil.example", tags=["attack.exfiltration"]),
        A("other", 61, "10.9.9.9", "10.2.0.53", tags=["attack.discovery"]),  # same resolver, another actor
    ]
    incs = run(alerts)
    g = by_alert(incs)
    assert g["scan"] == g["login"] == g["sudo"] == g["lateral"] == g["exfil"]
    assert g["other"] != g["scan"]  # a shared target alone does not link two actors
    main = next(i for i in incs if i["id"] == g["scan"])
    assert main["threat.tactic.name"] == ["Initial Access", "Privilege Escalation", "Discovery",
                                          "Lateral Movement", "Exfiltration"]
    roles = {(e["type"], e["value"]): e["role"] for e in main["entities"]}
    assert roles[("ip", "10.1.0.20")] == "both" and roles[("ip", "203.0.113.5")] == "source"
    assert roles[("domain", "evil.example")] == "target" and roles[("user", "ops")] == "source"
    edges = {(e["source"], e["target"]) for e in main["graph"]["edges"]}
    assert ("ip:10.2.0.40", "domain:evil.example") in edges and ("ip:10.1.0.20", "ip:10.2.0.40") in edges


def test_user_names_alone_do_not_link():
    incs = run([A("h1", 0, "203.0.113.5", None, host="web1", user="root"),
                A("h2", 3, "198.51.100.9", None, host="web2", user="root")])
    assert len(incs) == 2


def test_gap_closes_an_incident():
    b = IncidentBuilder(gap_s=1800, allowed_lateness_s=0)
    out = b.process(alerts_table([A("a1", 0, "203.0.113.5", "10.0.0.1"), A("a2", 20, "203.0.113.5", "10.0.0.1")]))
    out += b.process(alerts_table([A("a3", 20 + 31, "203.0.113.5", "10.0.0.1")]))  # 31 min of silence
    out = merge_outputs(out, b.process(alerts_table([A("z", 200, "192.0.2.1", "10.0.0.9")])), b.flush())
    g = by_alert([i for i in out if "merged_into" not in i])
    assert g["a1"] == g["a2"] != g["a3"]
    first = next(i for i in out if i["id"] == g["a1"])
    assert first["closed"] is True and first["alert.count"] == 2


def test_an_alert_linking_two_incidents_merges_them_into_the_oldest():
    b = IncidentBuilder(allowed_lateness_s=INF)
    b.process(alerts_table([A("x1", 0, "203.0.113.5", "10.0.0.1"), A("y1", 5, "198.51.100.9", "10.0.0.1"),
                            A("link", 9, "10.0.0.1", "10.0.0.7")]))  # the host both attacked moves on
    out = b.flush()
    merged = [i for i in out if "merged_into" in i]
    live = [i for i in out if "merged_into" not in i]
    assert len(live) == 1 and live[0]["id"] == incident_id("x1")
    assert merged == [{"id": incident_id("y1"), "merged_into": incident_id("x1")}]
    assert set(live[0]["alert.ids"]) == {"x1", "y1", "link"} and live[0]["merged"] == [incident_id("y1")]
    assert live[0]["title"].startswith("Alerts: 203.0.113.5 → ")


# ------------------------------------------------------------------ tactics, scoring
def test_tactics_from_enterprise_and_ics_tags_in_kill_chain_order():
    assert tactics_of(["attack.exfiltration", "attack.t1048", "attack.command-and-control", "attack.credential_access",
                       "attack.inhibit-response-function", "attack.impair-process-control", "car.2016"]) == [
        "Exfiltration", "Command and Control", "Credential Access", "Inhibit Response Function",
        "Impair Process Control"]
    assert tactics_of([], ["Lateral Movement"]) == ["Lateral Movement"]
    incs = run([A("1", 0, "10.0.0.5", "10.3.0.9", tags=["attack.impair-process-control"]),
                A("2", 1, "10.0.0.5", "10.3.0.9", tags=["attack.reconnaissance"]),
                A("3", 2, "10.0.0.5", "10.3.0.9", tags=["attack.evasion", "attack.t0820"])])
    tac = incs[0]["threat.tactic.name"]
    assert tac == ["Reconnaissance", "Evasion", "Impair Process Control"]
    assert [KILL_CHAIN.index(t) for t in tac] == sorted(KILL_CHAIN.index(t) for t in tac)
    assert [s["tactic"] for s in incs[0]["stages"]] == tac


def test_severity_from_rule_levels_and_asset_criticality():
    low = run([A("1", 0, "203.0.113.5", "10.0.0.1", level="low")])[0]
    crit = run([A("1", 0, "203.0.113.5", "10.0.0.1", level="critical")])[0]
    cii = run([A("1", 0, "203.0.113.5", "10.0.0.1", level="low", **{
        "taishi.destination.asset.id": "rtu01", "taishi.destination.asset.system": "OT",
        "taishi.destination.asset.level": 4})])[0]
    assert low["severity"] == "low" and crit["severity"] == "critical"
    assert cii["risk_score"] > low["risk_score"] and cii["severity"] == "medium"  # one step up for level 4
    assert all(0 <= i["risk_score"] <= 100 for i in (low, crit, cii))
    ent = next(e for e in cii["entities"] if e["value"] == "10.0.0.1")
    assert ent["asset"]["id"] == "rtu01" and ent["asset"]["level"] == 4
    many = run([A(str(i), i, "203.0.113.5", "10.0.0.1", level="high",
                  tags=[f"attack.{t.lower().replace(' ', '-')}"]) for i, t in enumerate(KILL_CHAIN[:8])])[0]
    assert many["risk_score"] > run([A("1", 0, "203.0.113.5", "10.0.0.1", level="high")])[0]["risk_score"]


# ------------------------------------------------------------------ determinism
def _campaigns(seed: int, n: int = 400) -> list[dict]:
    rng = random.Random(seed)
    attackers = [f"203.0.113.{i}" for i in range(1, 8)]
    hosts = [f"10.0.{i // 10}.{i % 10}" for i in range(40)]
    tags = ["attack.discovery", "attack.credential-access", "attack.lateral-movement", "attack.exfiltration"]
    out = []
    for i in range(n):
        src = rng.choice(attackers + hosts[:10])
        out.append(A(f"al{i:04d}", rng.uniform(0, 600), src, rng.choice(hosts), tags=[rng.choice(tags)],
                     level=rng.choice(["low", "medium", "high"]), rule=f"r{rng.randrange(5)}",
                     user=rng.choice([None, "root", "ops"])))
    return out


def _final(outs: list[list[dict]]) -> dict[str, dict]:
    return {i["id"]: i for i in merge_outputs(*outs)}


@pytest.mark.parametrize("lateness", [INF, 3600.0])
def test_same_incidents_and_ids_for_any_batch_cut(lateness):
    alerts = _campaigns(1)
    ordered = sorted(alerts, key=lambda a: a["@timestamp"])
    b = IncidentBuilder(gap_s=900, allowed_lateness_s=lateness)
    ref = _final([b.process(alerts_table(ordered)), b.flush()])
    assert len([i for i in ref.values() if "merged_into" not in i]) > 1
    rng = random.Random(7)
    for _ in range(4):
        # cut the time-ordered stream into random batches, shuffled within each batch (disorder
        # stays within the allowed lateness of one hour: the whole stream spans ten)
        cuts = sorted(rng.sample(range(1, len(ordered)), 12))
        batches = [ordered[a:b] for a, b in zip([0] + cuts, cuts + [len(ordered)])]
        b = IncidentBuilder(gap_s=900, allowed_lateness_s=lateness)
        outs = []
        for batch in batches:
            batch = batch[:]
            rng.shuffle(batch)
            outs.append(b.process(alerts_table(batch)))
        outs.append(b.flush())
        assert _final(outs) == ref
        assert b.late_alerts == 0


def test_restart_mid_stream_continues_and_a_replayed_batch_is_not_doubled():
    alerts = sorted(_campaigns(2, 300), key=lambda a: a["@timestamp"])
    half = len(alerts) // 2
    b = IncidentBuilder(gap_s=900, allowed_lateness_s=120)
    ref = _final([b.process(alerts_table(alerts[:half])), b.process(alerts_table(alerts[half:])), b.flush()])

    b1 = IncidentBuilder(gap_s=900, allowed_lateness_s=120)
    out1 = b1.process(alerts_table(alerts[:half]))
    snap = b1.snapshot()
    json.loads(snap)  # plain JSON: checkpointable anywhere
    b2 = IncidentBuilder.restore(snap)
    # the store had not committed the last batch: it comes again after the restart
    out2 = b2.process(alerts_table(alerts[half - 40:half]))
    out3 = b2.process(alerts_table(alerts[half:]))
    assert _final([out1, out2, out3, b2.flush()]) == ref
    total = sum(i["alert.count"] for i in ref.values() if "merged_into" not in i)
    assert total == len(alerts)


def test_functional_form_state_in_alerts_in():
    alerts = sorted(_campaigns(3, 120), key=lambda a: a["@timestamp"])
    state, outs = None, []
    for k in range(0, len(alerts), 25):
        state, out = build(state, alerts_table(alerts[k:k + 25]), allowed_lateness_s=INF,
                           flush=k + 25 >= len(alerts))
        outs.append(out)
    b = IncidentBuilder(allowed_lateness_s=INF)
    assert _final(outs) == _final([b.process(alerts_table(alerts)), b.flush()])


def test_late_alert_is_applied_not_lost():
    b = IncidentBuilder(gap_s=3600, allowed_lateness_s=60)
    b.process(alerts_table([A("a", 0, "203.0.113.5", "10.0.0.1"), A("b", 30, "203.0.113.5", "10.0.0.2")]))
    out = b.process(alerts_table([A("late", 1, "203.0.113.5", "10.0.0.3")]))  # 29 min behind the newest
    assert b.late_alerts == 1
    out = merge_outputs(out, b.flush())
    assert "late" in by_alert([i for i in out if "merged_into" not in i])


def test_state_is_bounded():
    b = IncidentBuilder(gap_s=86400, allowed_lateness_s=0, max_open=5)
    for i in range(40):
        b.process(alerts_table([A(f"a{i}", i, f"198.51.100.{i}", f"10.0.0.{i}")]))
    assert b.open_count <= 5


# ------------------------------------------------------------------ workflow
def test_transition_table():
    check_transition("new", "acknowledged")
    check_transition("resolved", "acknowledged")  # reopen
    for bad in (("new", "resolved"), ("new", "in_progress"), ("acknowledged", "resolved"), ("new", "new"),
                ("in_progress", "bogus")):
        with pytest.raises(WorkflowError):
            check_transition(*bad)
    assert set(TRANSITIONS) == {"new", "acknowledged", "in_progress", "resolved", "false_positive"}


@pytest.fixture
def stored(data_dir):
    store = Store(data_dir)
    rows = [A("a1", 0, "203.0.113.5", "10.0.0.1", level="high"), A("a2", 5, "203.0.113.5", "10.0.0.2")]
    b = IncidentBuilder(allowed_lateness_s=INF)
    b.process(alerts_table(rows))
    store.upsert_incidents(b.flush())
    yield store, b, rows
    store.close()


def test_workflow_transitions_and_history(stored):
    store, _, _ = stored
    iid = incident_id("a1")
    inc = store.incident(iid)
    assert inc["status"] == "new" and inc["assignee"] is None
    assert inc["history"] == [{"at": inc["history"][0]["at"], "who": "taishi", "field": "status", "old": None,
                               "new": "new"}]
    store.update_incident(iid, "alice", status="acknowledged", assignee="bob", set_assignee=True, note="mine")
    with pytest.raises(WorkflowError):
        store.update_incident(iid, "alice", status="resolved", note="skipping a step")
    inc = store.incident(iid)
    assert inc["status"] == "acknowledged" and inc["assignee"] == "bob"
    assert [n["text"] for n in inc["notes"]] == ["mine"]  # the refused change left nothing behind
    store.update_incident(iid, "bob", status="in_progress")
    store.update_incident(iid, "bob", status="resolved", note="contained")
    store.update_incident(iid, "carol", status="acknowledged")  # reopen
    store.update_incident(iid, "carol", assignee="", set_assignee=True)
    h = store.incident(iid)["history"]
    assert [(r["who"], r["field"], r["old"], r["new"]) for r in h] == [
        ("taishi", "status", None, "new"),
        ("alice", "status", "new", "acknowledged"),
        ("alice", "assignee", None, "bob"),
        ("alice", "note", None, "mine"),
        ("bob", "status", "acknowledged", "in_progress"),
        ("bob", "status", "in_progress", "resolved"),
        ("bob", "note", None, "contained"),
        ("carol", "status", "resolved", "acknowledged"),
        ("carol", "assignee", "bob", None),
    ]
    assert [r["at"] for r in h] == sorted(r["at"] for r in h)
    assert store.update_incident("nope", "x", status="acknowledged") is None


def test_rebuilt_incident_keeps_its_workflow_and_new_alerts_reopen_a_resolved_one(stored):
    store, b, rows = stored
    iid = incident_id("a1")
    for st in ("acknowledged", "in_progress", "resolved"):
        store.update_incident(iid, "alice", status=st)
    store.upsert_incidents(b.process(alerts_table([A("a3", 10, "203.0.113.5", "10.0.0.3")])) + b.flush())
    inc = store.incident(iid)
    assert inc["alert.count"] == 3 and inc["status"] == "acknowledged"
    assert inc["history"][-1]["who"] == "taishi" and inc["history"][-1]["old"] == "resolved"
    assert store.upsert_incidents(b.flush()) == 0  # nothing new: nothing changes
    assert [i["id"] for i in store.search_incidents("alert.ids:a3")] == [iid]
    assert store.search_incidents("severity:high AND entity.value:10.0.0.3", status=["acknowledged"])[0]["id"] == iid
    assert store.search_incidents("", status="new") == []


def test_pandas_batches_as_spark_hands_them_give_the_same_incidents():
    """applyInPandasWithState hands pandas frames (NaN for missing strings, numpy arrays for
    lists, Timestamps) and keeps the state as bytes between calls."""
    pd = pytest.importorskip("pandas")
    alerts = sorted(_campaigns(4, 150), key=lambda a: a["@timestamp"])
    b = IncidentBuilder(gap_s=900, allowed_lateness_s=INF)
    ref = _final([b.process(alerts_table(alerts)), b.flush()])
    state, outs = None, []
    for k in range(0, len(alerts), 40):
        frame = alerts_table(alerts[k:k + 40]).to_pandas()
        assert isinstance(frame, pd.DataFrame)
        state, out = build(state, frame, gap_s=900, allowed_lateness_s=INF, flush=k + 40 >= len(alerts))
        assert isinstance(state, bytes)
        outs.append(out)
    assert _final(outs) == ref


def test_replay_guard_is_bounded_but_keeps_the_latest_arrivals(monkeypatch):
    import correlate.incidents as mod

    monkeypatch.setattr(mod, "MAX_SEEN", 64)
    b = IncidentBuilder(gap_s=60, allowed_lateness_s=0)
    batches = [[A(f"a{k}-{i}", k * 10 + i * 0.01, f"198.51.100.{k}", "10.0.0.1") for i in range(20)]
               for k in range(20)]
    outs = [b.process(alerts_table(batch)) for batch in batches]
    assert len(b.seen) <= 64
    outs.append(b.process(alerts_table(batches[-1])))  # the latest batch again: still recognised
    final = _final(outs + [b.flush()])
    assert sum(i["alert.count"] for i in final.values() if "merged_into" not in i) == 400


def test_unreadable_checkpoint_is_set_aside_not_a_crash(data_dir):
    from taishi.incidents import CHECKPOINT, IncidentStage

    state = data_dir / "state"
    state.mkdir()
    (state / CHECKPOINT).write_text('{"version": 99}')
    store = Store(data_dir)
    try:
        stage = IncidentStage(store, state, 60.0)
        assert stage.restore_error and (state / (CHECKPOINT + ".bad")).exists()
        stage.process(alerts_table([A("a1", 0, "203.0.113.5", "10.0.0.1")]))
        stage.finish()
        assert [i["id"] for i in store.search_incidents("")] == [incident_id("a1")]
        assert IncidentStage(store, state, 60.0).restore_error is None  # the new checkpoint reads back
    finally:
        store.close()


def test_json_rows_with_iso_times_as_from_a_topic():
    alerts = sorted(_campaigns(5, 60), key=lambda a: a["@timestamp"])
    rows = [{**a, "@timestamp": a["@timestamp"].isoformat().replace("+00:00", "Z")} for a in alerts]
    b1, b2 = IncidentBuilder(allowed_lateness_s=INF), IncidentBuilder(allowed_lateness_s=INF)
    assert _final([b1.process(rows), b1.flush()]) == _final([b2.process(alerts_table(alerts)), b2.flush()])
