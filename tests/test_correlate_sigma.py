"""Sigma correlations (event_count, value_count) in event time with a watermark."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from correlate.sigma_correlation import CorrelationEngine, CorrelationSpec
from detect import Detector
from detect.sigma import RuleSet
from taishi.ids import correlation_alert_id
from taishi.schema import events_table

BASE = "bbbbbbbb-0000-4000-8000-000000000001"
CORR = "cccccccc-0000-4000-8000-000000000001"
T0 = 1_700_000_000


def ruleset(ctype="event_count", cond="{gte: 3}", timespan="60s", group="[source.ip]") -> RuleSet:
    return RuleSet.from_yaml(f"""title: ssh fail
id: {BASE}
name: ssh_fail
logsource: {{product: linux, service: auth}}
detection:
  sel: {{event.outcome: failure}}
  condition: sel
level: low
---
title: brute force
id: {CORR}
level: high
tags: [attack.t1110, attack.credential-access]
correlation:
  type: {ctype}
  rules: [ssh_fail]
  group-by: {group}
  timespan: {timespan}
  condition: {cond}
""")


def ev(i: int, t: float, ip="10.0.0.5", user="root", outcome="failure", dst="192.168.1.1") -> dict:
    return {"event.id": f"e{i:04d}", "@timestamp": T0 + t, "event.dataset": "system.auth", "event.outcome": outcome,
            "source.ip": ip, "user.name": user, "destination.ip": dst}


def run(rs: RuleSet, events: list[dict], batches: list[int] | None = None, lateness=60) -> tuple[list[dict], Detector]:
    """Feed ``events`` split at ``batches`` sizes (default: one batch), then flush."""
    det = Detector(rs, allowed_lateness_s=lateness)
    out: list[dict] = []
    sizes = batches or [len(events)]
    i = 0
    for n in sizes:
        r = det.process(events_table(events[i:i + n]))
        out += [a for a in r.alerts.to_pylist() if a["rule.type"] == "sigma_correlation"]
        i += n
    assert i == len(events)
    out += det.flush().alerts.to_pylist()
    return sorted(out, key=lambda a: a["id"]), det


def test_event_count_fires_once_per_burst_with_fields():
    evs = [ev(i, i * 5) for i in range(10)]  # 10 failures in 45 s: one burst
    alerts, det = run(ruleset(), evs)
    assert len(alerts) == 1  # fires on the 3rd; the 7 after it are absorbed by the open alert
    a = alerts[0]
    group = json.dumps({"source.ip": "10.0.0.5"}, separators=(",", ":"))
    assert a["id"] == correlation_alert_id(CORR, group, (T0) * 1_000_000)
    assert a["event.ids"] == ["e0000", "e0001", "e0002"] and a["event.count"] == 3
    assert a["source.ip"] == "10.0.0.5" and a["destination.ip"] == "192.168.1.1" and a["user.name"] == "root"
    assert a["taishi.group"] == group and a["rule.type"] == "sigma_correlation"
    assert a["event.severity"] == 4 and a["threat.technique.id"] == ["T1110"]
    assert a["event.start"].timestamp() == T0 and a["event.end"].timestamp() == T0 + 10
    # base rule has generate: false by default: no single-event alerts
    assert det.counters.alerts == 0 and det.counters.matches == 10


def test_one_burst_one_alert_with_large_threshold():
    alerts, _ = run(ruleset(cond="{gte: 5}"), [ev(i, i) for i in range(7)])
    assert len(alerts) == 1 and alerts[0]["event.count"] == 5


def test_window_boundary_exactly_timespan_is_inclusive():
    rs = ruleset(cond="{gte: 2}", timespan="60s")
    assert len(run(rs, [ev(0, 0), ev(1, 60)])[0]) == 1  # exactly timespan apart: same window
    assert len(run(rs, [ev(0, 0), ev(1, 60.000001)])[0]) == 0  # one microsecond more: not


def test_groups_are_separate():
    evs = [ev(0, 0, ip="a"), ev(1, 1, ip="b"), ev(2, 2, ip="a"), ev(3, 3, ip="b"), ev(4, 4, ip="a")]
    alerts, _ = run(ruleset(), evs)
    assert [a["source.ip"] for a in alerts] == ["a"]


def test_non_matching_events_do_not_count():
    evs = [ev(0, 0), ev(1, 1, outcome="success"), ev(2, 2), ev(3, 3, outcome="success")]
    assert run(ruleset(), evs)[0] == []


def test_value_count_distinct_users():
    rs = ruleset(ctype="value_count", cond="{gte: 3, field: user.name}")
    evs = [ev(0, 0, user="a"), ev(1, 1, user="a"), ev(2, 2, user="b"), ev(3, 3, user="b"), ev(4, 4, user="c"), ev(5, 5, user="d")]
    alerts, _ = run(rs, evs)
    assert len(alerts) == 1
    assert alerts[0]["event.count"] == 5 and "3 distinct user.name" in alerts[0]["message"]


def test_range_condition():
    rs = ruleset(cond="{gte: 3, lte: 4}")
    assert len(run(rs, [ev(i, i) for i in range(3)])[0]) == 1


def test_upper_bound_only_fires_at_window_close():
    rs = ruleset(cond="{lt: 3}", timespan="10s")
    evs = [ev(0, 0, ip="few"), ev(1, 1, ip="few"), ev(2, 0, ip="many"), ev(3, 1, ip="many"), ev(4, 2, ip="many")]
    alerts, _ = run(rs, sorted(evs, key=lambda e: e["@timestamp"]))
    assert [a["source.ip"] for a in alerts] == ["few"] and alerts[0]["event.count"] == 2


def test_out_of_order_within_lateness_equals_in_order():
    evs = [ev(i, i * 3) for i in range(30)]
    shuffled = evs[:]
    rnd = random.Random(1)
    # swap neighbours: disorder of a few seconds, well within the 60 s lateness
    for i in range(0, 28, 2):
        if rnd.random() < 0.7:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    ref, _ = run(ruleset(), evs)
    got, det = run(ruleset(), shuffled, batches=[1] * 30)
    assert got == ref and det.engine.late_events == 0


def test_late_beyond_lateness_counted_and_returned():
    rs = ruleset()
    det = Detector(rs, allowed_lateness_s=10)
    det.process(events_table([ev(0, 100)]))  # watermark -> 90
    r = det.process(events_table([ev(1, 50), ev(2, 95)]))
    assert r.late.column("event.id").to_pylist() == ["e0001"]
    assert det.engine.late_events == 1 and det.counters.late_events == 1
    # a late event that matches no correlation rule is not correlation-late
    r = det.process(events_table([ev(3, 10, outcome="success")]))
    assert r.late.num_rows == 0


@pytest.mark.parametrize("batches", [None, [1] * 40, [7, 13, 1, 19], [20, 20]])
def test_batch_boundary_invariance(batches):
    evs = []
    for i in range(40):
        evs.append(ev(i, i * 7, ip=["a", "b", "c"][i % 3], user=f"u{i % 5}"))
    for ctype, cond in (("event_count", "{gte: 3}"), ("value_count", "{gte: 2, field: user.name}")):
        ref, _ = run(ruleset(ctype=ctype, cond=cond), evs)
        assert ref, ctype
        got, _ = run(ruleset(ctype=ctype, cond=cond), evs, batches=batches)
        assert got == ref, (ctype, batches)


def test_snapshot_restore_mid_window():
    rs = ruleset(cond="{gte: 4}", timespan="5m")
    evs = [ev(i, i * 20, ip=["a", "b"][i % 2]) for i in range(24)]
    ref, _ = run(rs, evs, batches=[1] * 24)
    det = Detector(rs)
    out = []
    for e in evs[:11]:
        out += det.process(events_table([e])).alerts.to_pylist()
    blob = det.snapshot()
    assert det.engine.state_size() > 0  # really mid-window
    det2 = Detector.restore(rs, blob)
    for e in evs[11:]:
        out += det2.process(events_table([e])).alerts.to_pylist()
    out += det2.flush().alerts.to_pylist()
    assert sorted(out, key=lambda a: a["id"]) == ref
    # the engine on its own, too
    eng = CorrelationEngine.restore(rs.correlations, det.engine.snapshot())
    assert eng.watermark_us == det.engine.watermark_us and eng.state_size() == det.engine.state_size()


def test_state_is_bounded():
    rs = ruleset(cond="{gte: 1000}", timespan="60s")
    det = Detector(rs, allowed_lateness_s=10)
    for i in range(200):
        det.process(events_table([ev(i, i * 30, ip=f"10.0.{i}.1")]))
    assert det.engine.state_size() < 10 and len(det.engine.groups) < 10


def test_event_ids_capped_count_exact():
    rs = ruleset(cond="{gte: 1500}", timespan="1h")
    alerts, _ = run(rs, [ev(i, i * 0.5) for i in range(1500)])
    [a] = alerts
    assert a["event.count"] == 1500 and len(a["event.ids"]) == 1000


def test_alert_ids_deterministic_across_runs():
    evs = [ev(i, i) for i in range(9)]
    assert [a["id"] for a in run(ruleset(), evs)[0]] == [a["id"] for a in run(ruleset(), evs, batches=[4, 5])[0]]


def test_spec_engine_directly():
    spec = CorrelationSpec(id="c", title="c", type="event_count", rule_refs=["r"], group_by=[], timespan_s=10,
                           conditions=[("gte", 2)], rule_ids=["r"])
    eng = CorrelationEngine([spec], allowed_lateness_s=0)
    t = events_table([{"event.id": "x", "@timestamp": T0}, {"event.id": "y", "@timestamp": T0 + 1}])
    m = pa.table({"rule.id": ["r", "r"], "event.row": pa.array([0, 1], pa.int64())})
    res = eng.process(t, m)
    got = res.alerts.to_pylist() + eng.flush().alerts.to_pylist()
    assert len(got) == 1 and got[0]["taishi.group"] == "{}"


def test_snapshot_restore_value_count_and_detector_counters():
    rs = ruleset(ctype="value_count", cond="{gte: 3, field: user.name}", timespan="5m")
    evs = [ev(i, i * 10, user=f"u{i % 6}", ip=["a", "b"][i % 2]) for i in range(30)]
    ref, det_ref = run(rs, evs, batches=[3] * 10)
    assert ref
    det = Detector(rs)
    out = []
    for k in range(0, 15, 3):
        out += det.process(events_table(evs[k:k + 3])).alerts.to_pylist()
    det2 = Detector.restore(rs, det.snapshot())
    for k in range(15, 30, 3):
        out += det2.process(events_table(evs[k:k + 3])).alerts.to_pylist()
    out += det2.flush().alerts.to_pylist()
    assert sorted(out, key=lambda a: a["id"]) == ref
    c = det2.counters.as_dict()
    assert c["events"] == 30 and c["matches"] == 30 and c["batches"] == 10
    assert c["correlation_alerts"] == len(ref) == det_ref.counters.correlation_alerts


def test_events_without_timestamp_are_returned_not_dropped():
    rs = ruleset()
    det = Detector(rs)
    e = ev(0, 0)
    del e["@timestamp"]
    r = det.process(events_table([e]))
    assert r.late.column("event.id").to_pylist() == ["e0000"] and det.engine.untimed_events == 1


def _multi_ruleset() -> RuleSet:
    return RuleSet.from_yaml(f"""title: ssh fail
id: {BASE}
name: ssh_fail
logsource: {{product: linux, service: auth}}
detection:
  sel: {{event.outcome: failure}}
  condition: sel
---
title: burst per source
id: cccccccc-0000-4000-8000-000000000011
correlation: {{type: event_count, rules: [ssh_fail], group-by: [source.ip], timespan: 30s, condition: {{gte: 3}}}}
---
title: many users per source
id: cccccccc-0000-4000-8000-000000000012
correlation: {{type: value_count, rules: [ssh_fail], group-by: [source.ip], timespan: 2m, condition: {{gt: 2, field: user.name}}}}
---
title: quiet source
id: cccccccc-0000-4000-8000-000000000013
correlation: {{type: event_count, rules: [{BASE}], group-by: [source.ip, user.name], timespan: 20s, condition: {{lte: 1}}}}
---
title: global count range
id: cccccccc-0000-4000-8000-000000000014
correlation: {{type: event_count, rules: [ssh_fail], timespan: 10s, condition: {{gte: 4, lt: 8}}}}
""")


@pytest.mark.parametrize("seed", range(12))
def test_randomised_batching_and_bounded_disorder(seed):
    rnd = random.Random(seed)
    evs = []
    t = 0.0
    for i in range(120):
        t += rnd.choice([0.5, 1, 2, 3, 7, 15])
        evs.append(ev(i, t, ip=rnd.choice("abc"), user=rnd.choice(["u1", "u2", "u3", "u4"]),
                      outcome=rnd.choice(["failure", "failure", "success"])))
    rs = _multi_ruleset()
    assert len(rs.correlations) == 4
    ref, _ = run(rs, evs)
    assert {a["rule.id"] for a in ref} >= {"cccccccc-0000-4000-8000-000000000011", "cccccccc-0000-4000-8000-000000000013"}
    # disorder bounded by 30 s (< 60 s lateness), random batch sizes
    shuffled = sorted(evs, key=lambda e: e["@timestamp"] + rnd.uniform(0, 30))
    sizes = []
    left = len(shuffled)
    while left:
        n = min(left, rnd.randint(1, 15))
        sizes.append(n)
        left -= n
    got, det = run(rs, shuffled, batches=sizes)
    assert det.engine.late_events == 0
    assert got == ref


# ---------------------------------------------------------------------------
# one alert per burst: a fired group stays open until quiet for a full timespan


def brute(start: float, n: int, step: float, first_id: int = 0, ip="10.0.0.5") -> list[dict]:
    return [ev(first_id + i, start + i * step, ip=ip) for i in range(n)]


def test_long_burst_yields_exactly_one_alert():
    rs = ruleset(cond="{gte: 10}", timespan="5m")
    evs = brute(0, 48, 3.75)  # 48 failures over 3 minutes
    alerts, det = run(rs, evs)
    [a] = alerts
    assert a["event.count"] == 10 and a["event.ids"] == [f"e{i:04d}" for i in range(10)]
    assert a["event.start"].timestamp() == T0 and a["event.end"].timestamp() == T0 + 9 * 3.75
    group = json.dumps({"source.ip": "10.0.0.5"}, separators=(",", ":"))
    assert a["id"] == correlation_alert_id(CORR, group, T0 * 1_000_000)
    assert det.counters.correlation_alerts == 1


def test_value_count_long_port_scan_one_alert():
    rs = ruleset(ctype="value_count", cond="{gte: 20, field: user.name}", timespan="5m")
    evs = [ev(i, i * 1.5, user=f"port{i}") for i in range(105)]  # 105 distinct values in ~2.6 min
    [a], _ = run(rs, evs)
    assert a["event.count"] == 20 and "20 distinct user.name" in a["message"]


@pytest.mark.parametrize("gap", [300, 300.000001, 1200])
def test_second_burst_after_quiet_timespan_is_a_new_alert(gap):
    rs = ruleset(cond="{gte: 10}", timespan="5m")
    first = brute(0, 48, 3.75)
    last = first[-1]["@timestamp"] - T0
    second = brute(last + gap, 12, 2, first_id=100)  # quiet for >= timespan, then a new burst
    alerts, _ = run(rs, first + second)
    assert len(alerts) == 2
    a1, a2 = sorted(alerts, key=lambda a: a["event.start"])
    assert a1["id"] != a2["id"]
    assert a2["event.start"].timestamp() == T0 + last + gap  # counting started afresh
    assert a2["event.ids"] == [f"e{100 + i:04d}" for i in range(10)]


@pytest.mark.parametrize("gap", [1, 120, 299.999999])
def test_second_burst_within_timespan_is_absorbed(gap):
    rs = ruleset(cond="{gte: 10}", timespan="5m")
    first = brute(0, 48, 3.75)
    last = first[-1]["@timestamp"] - T0
    # would fire on its own, but the group never went quiet for 5 minutes
    second = brute(last + gap, 12, 2, first_id=100)
    alerts, _ = run(rs, first + second)
    assert len(alerts) == 1 and alerts[0]["event.start"].timestamp() == T0


def test_absorption_extends_with_each_event():
    """A slow trickle (every 4 min, below the 5 min timespan) keeps the alert open for hours."""
    rs = ruleset(cond="{gte: 3}", timespan="5m")
    evs = brute(0, 3, 1) + brute(240, 40, 240, first_id=10)
    alerts, det = run(rs, evs, batches=[5] * 8 + [3], lateness=30)
    assert len(alerts) == 1
    # and the state of that group stays small: no window, just the open burst
    assert det.engine.state_size() == 0


def test_groups_bursts_are_independent():
    rs = ruleset(cond="{gte: 10}", timespan="5m")
    evs = sorted(brute(0, 30, 5, ip="a") + brute(2, 30, 5, first_id=100, ip="b")
                 + brute(2000, 10, 1, first_id=200, ip="a"), key=lambda e: e["@timestamp"])
    alerts, _ = run(rs, evs)
    assert sorted((a["source.ip"], a["event.start"].timestamp() - T0) for a in alerts) == [
        ("a", 0), ("a", 2000), ("b", 2)]


def test_upper_bound_window_burst_semantics():
    rs = ruleset(cond="{lt: 3}", timespan="10s")
    # window [0, 10] has 2 events: fires at its close; the event at 15 is 5 s after the
    # window's last event (t=10) -> absorbed; 30 is 15 s after 15 -> a new window, alone, fires
    evs = [ev(0, 0), ev(1, 10), ev(2, 15), ev(3, 30)]
    alerts, _ = run(rs, evs)
    assert sorted(a["event.start"].timestamp() - T0 for a in alerts) == [0, 30]


def _burst_events(seed: int) -> list[dict]:
    rnd = random.Random(seed)
    evs = []
    t = 0.0
    for i in range(160):
        # bursts separated by gaps around the timespan (60 s): some absorbed, some new
        t += rnd.choice([0.5, 1, 2, 3, 5]) if rnd.random() < 0.9 else rnd.choice([45, 59, 60, 61, 90, 200])
        evs.append(ev(i, t, ip=rnd.choice("ab"), user=rnd.choice(["u1", "u2", "u3", "u4", "u5"])))
    return evs


@pytest.mark.parametrize("seed", range(6))
def test_burst_semantics_batch_boundary_invariance(seed):
    rnd = random.Random(100 + seed)
    evs = _burst_events(seed)
    for ctype, cond in (("event_count", "{gte: 5}"), ("value_count", "{gte: 3, field: user.name}"),
                        ("event_count", "{lt: 4}")):
        rs = ruleset(ctype=ctype, cond=cond, timespan="60s")
        ref, _ = run(rs, evs)
        assert ref, (ctype, cond)
        sizes = []
        left = len(evs)
        while left:
            n = min(left, rnd.randint(1, 25))
            sizes.append(n)
            left -= n
        shuffled = sorted(evs, key=lambda e: e["@timestamp"] + rnd.uniform(0, 20))  # within the lateness
        for lateness in (60, 30, float("inf")):
            got, det = run(rs, shuffled, batches=sizes, lateness=lateness)
            assert det.engine.late_events == 0
            assert got == ref, (ctype, cond, lateness)
        # fewer alerts than the old reset-after-firing semantics would give, never more
        assert len(ref) <= len(evs) // 5 + 1


@pytest.mark.parametrize("cut", [5, 15, 25, 40, 55])
def test_snapshot_restore_mid_burst(cut):
    """Snapshot before the alert, while it is open (absorbing) and between bursts."""
    rs = ruleset(cond="{gte: 10}", timespan="5m")
    first = brute(0, 48, 3.75)
    second = brute(180 + 301, 12, 2, first_id=100)  # a second burst after a quiet 5 min
    evs = first + second
    ref, _ = run(rs, evs, batches=[1] * len(evs))
    assert len(ref) == 2
    det = Detector(rs, allowed_lateness_s=30)
    out = []
    for e in evs[:cut]:
        out += det.process(events_table([e])).alerts.to_pylist()
    blob = det.snapshot()
    if 18 < cut < 48:  # the watermark (30 s behind) passed the 10th: mid-burst, the open alert is state
        assert any(g.open is not None for g in det.engine.groups.values())
    det2 = Detector.restore(rs, blob, allowed_lateness_s=30)
    assert det2.engine.snapshot() == det.engine.snapshot()
    for e in evs[cut:]:
        out += det2.process(events_table([e])).alerts.to_pylist()
    out += det2.flush().alerts.to_pylist()
    assert sorted(out, key=lambda a: a["id"]) == ref


def test_snapshot_restore_bounded_mode_pending():
    rs = _multi_ruleset()
    rnd = random.Random(5)
    evs = [ev(i, i * rnd.choice([1, 2, 9]), ip=rnd.choice("abc"), user=rnd.choice(["u1", "u2", "u3"])) for i in range(90)]
    ref, _ = run(rs, evs, lateness=float("inf"))
    det = Detector(rs, allowed_lateness_s=float("inf"))
    for k in range(0, 45, 9):
        assert det.process(events_table(evs[k:k + 9])).alerts.num_rows == 0  # nothing before flush
    blob = det.snapshot()
    assert det.snapshot() == blob  # cached chunk texts: the same bytes
    det2 = Detector.restore(rs, blob, allowed_lateness_s=float("inf"))
    assert det2.engine.state_size() == det.engine.state_size() == sum(
        1 for e in evs[:45] if e["event.outcome"] == "failure") * 4
    out = []
    for k in range(45, 90, 9):
        out += det2.process(events_table(evs[k:k + 9])).alerts.to_pylist()
    out += det2.flush().alerts.to_pylist()
    assert sorted(out, key=lambda a: a["id"]) == ref


def test_restore_version_1_snapshot_and_old_detector_layout():
    rs = ruleset(cond="{gte: 3}", timespan="60s")
    cid = rs.correlations[0].id
    group = json.dumps({"source.ip": "10.0.0.5"}, separators=(",", ":"))
    t0 = T0 * 1_000_000
    attrs = ["10.0.0.5", None, "192.168.1.1", None, "root", None, None, "system.auth"]
    v1 = {"version": 1, "allowed_lateness_s": 60, "watermark_us": t0 - 50_000_000, "max_ts_us": t0 + 10_000_000,
          "late_events": 0, "untimed_events": 0, "alerts_emitted": 0,
          "pending": [[t0 + 10_000_000, "e0001", cid, group, [t0 + 10_000_000, "e0001", None, attrs]]],
          "groups": [[cid, group, [[t0, "e0000", None, attrs]]]]}
    blob = json.dumps({"engine": json.dumps(v1), "counters": {}}).encode()  # the old Detector layout too
    det = Detector.restore(rs, blob)
    assert det.engine.state_size() == 2
    out = det.process(events_table([ev(2, 20)])).alerts.to_pylist() + det.flush().alerts.to_pylist()
    [a] = out
    assert a["event.ids"] == ["e0000", "e0001", "e0002"] and a["user.name"] == "root"
    assert a["id"] == correlation_alert_id(CORR, group, t0)


def test_group_keys_are_exact_json():
    """Group keys are built column-wise; they must be what json.dumps gives (ids depend on them)."""
    rs = RuleSet.from_yaml(f"""title: ssh fail
id: {BASE}
name: ssh_fail
logsource: {{product: linux, service: auth}}
detection:
  sel: {{event.outcome: failure}}
  condition: sel
---
title: multi
id: {CORR}
correlation: {{type: event_count, rules: [ssh_fail], group-by: [user.name, source.ip, destination.port], timespan: 1m, condition: {{gte: 1}}}}
""")
    odd = ['q"uote', "back\\slash", "ctl\x01", "ünï", "", None]
    evs = [dict(ev(i, i, ip=ip, user=odd[-1 - i]), **{"destination.port": [22, None][i % 2]}) for i, ip in enumerate(odd)]
    alerts, _ = run(rs, evs)
    got = sorted(a["taishi.group"] for a in alerts)
    keys = ("destination.port", "source.ip", "user.name")
    grouped = [e for e in evs if all(e[k] is not None for k in keys)]  # a null group-by value: not counted
    assert 0 < len(grouped) < len(evs)
    want = sorted(json.dumps({k: e[k] for k in keys}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                  for e in grouped)
    assert got == want


def test_events_without_the_group_by_field_do_not_count() -> None:
    """sshd lines without an address must not add up to a brute force 'from null'."""
    from datetime import datetime, timedelta, timezone

    import pyarrow as pa

    from detect import Detector
    from detect.sigma import RuleSet
    from taishi.schema import events_table

    rs = RuleSet.from_yaml(
        """
title: fail
id: 11111111-1111-1111-1111-111111111111
name: fail
logsource: {product: linux, service: auth}
detection:
  sel: {event.outcome: failure}
  condition: sel
---
title: brute
id: 22222222-2222-2222-2222-222222222222
correlation: {type: event_count, rules: [fail], group-by: [source.ip], timespan: 5m, condition: {gte: 3}}
level: high
"""
    )
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = [
        {"event.id": f"n{i}", "@timestamp": t0 + timedelta(seconds=i), "event.dataset": "system.auth",
         "event.outcome": "failure"}
        for i in range(10)
    ] + [
        {"event.id": f"a{i}", "@timestamp": t0 + timedelta(seconds=i), "event.dataset": "system.auth",
         "event.outcome": "failure", "source.ip": "198.51.100.7"}
        for i in range(2)
    ]
    det = Detector(rs, allowed_lateness_s=float("inf"))
    det.process(events_table(rows))
    alerts = det.flush().alerts
    assert alerts.num_rows == 0, "ten failures without an address and two with one: no group reaches three"
    assert det.engine.ungrouped_events == 10
    more = [{"event.id": "a2", "@timestamp": t0 + timedelta(seconds=3), "event.dataset": "system.auth",
             "event.outcome": "failure", "source.ip": "198.51.100.7"}]
    det2 = Detector(rs, allowed_lateness_s=float("inf"))
    det2.process(events_table(rows + more))
    got = det2.flush().alerts
    assert got.column("source.ip").to_pylist() == ["198.51.100.7"]
    assert isinstance(got, pa.Table)


@pytest.mark.parametrize("ctype,cond", [("event_count", "{gte: 5}"), ("value_count", "{field: user.name, gte: 5}")])
def test_end_of_input_completes_an_open_window_with_its_pending_rest(ctype, cond):
    """At the end of input the groups that cannot reach the condition are skipped, but a group
    with an open window counts its evaluated events too: 3 evaluated + 2 pending reach 5."""
    rs = ruleset(ctype=ctype, cond=cond, timespan="60s")
    first = [ev(i, i, user=f"u{i}") for i in range(3)] + [ev(50, 70, ip="10.9.9.9")]  # the watermark passes 0..2
    rest = [ev(3, 20, user="u3"), ev(4, 21, user="u4")]  # after the watermark: still pending at the end
    det = Detector(rs, allowed_lateness_s=60)
    assert det.process(events_table(first)).alerts.num_rows == 0
    assert det.engine.state_size() == 4
    assert det.process(events_table(rest)).alerts.num_rows == 0
    got = det.flush().alerts.to_pylist()
    assert [a["source.ip"] for a in got] == ["10.0.0.5"]
    assert got[0]["event.count"] == 5 and got[0]["event.ids"] == [f"e{i:04d}" for i in range(5)]
    ref, _ = run(rs, first + rest, lateness=float("inf"))  # bounded: the same alert
    assert [a["id"] for a in ref] == [got[0]["id"]]


def test_end_of_input_groups_below_the_condition_fire_nothing_and_leave_no_state():
    rs = ruleset(ctype="value_count", cond="{field: user.name, gte: 3}", timespan="60s")
    evs = [ev(i, i, ip=f"10.0.0.{i % 7}", user=f"u{i % 2}") for i in range(70)]  # two users per address at most
    evs += [ev(100 + i, i, ip="10.1.1.1", user=f"x{i}") for i in range(3)]  # three: the one alert
    for lateness in (float("inf"), 60):
        alerts, det = run(rs, evs, batches=[30, 43], lateness=lateness)
        assert [a["source.ip"] for a in alerts] == ["10.1.1.1"]
        assert det.engine.state_size() == 0
