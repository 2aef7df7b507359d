"""The posture index (taishi/posture.py): pure logic, hand-computed expectations from the formula."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from taishi import posture as P

H = 3600.0
L3 = P.AssetRef("jump01", "PDC-DMZ", 3, "e_government", "杭州市", "jump01")
L4 = P.AssetRef("rtu01", "PDC-OT", 4, "energy", "湖州市", "rtu01")
L4B = P.AssetRef("hmi01", "PDC-OT", 4, "energy", "湖州市", "hmi01")
L1 = P.AssetRef("kiosk", "PDC-PUB", 1, "public_services", "杭州市", "kiosk")


def test_weight_is_severity_times_mlps_factor():
    assert P.weight("critical", 3) == 15.0
    assert P.weight("high", 4) == 7.0 * 1.5
    assert P.weight("medium", 1) == pytest.approx(3.0 * 0.6)
    assert P.weight("low", None) == 1.0  # no level: level 3
    assert P.weight("informational", 5) == 0.0
    assert P.weight("nonsense", 3) == 0.0 and P.weight(None, 3) == 0.0
    assert P.weight("HIGH", 2) == pytest.approx(7.0 * 0.8)


def test_documented_examples():
    # the module docstring: one fresh critical on level 3 -> 61, high -> 79, medium -> 90, ten highs on level 4 -> 3
    assert round(P.index_from_pressure(P.weight("critical", 3))) == 61
    assert round(P.index_from_pressure(P.weight("high", 3))) == 79
    assert round(P.index_from_pressure(P.weight("medium", 3))) == 90
    assert round(P.index_from_pressure(10 * P.weight("high", 4))) == 3
    assert P.index_from_pressure(0) == 100.0
    assert P.index_from_pressure(-5) == 100.0


def test_decay_halves_the_pressure_every_half_life():
    p = P.pressure([0.0], [10.0], [0.0, 6 * H, 12 * H, -1.0])
    assert p[0] == pytest.approx(10.0) and p[1] == pytest.approx(5.0) and p[2] == pytest.approx(2.5)
    assert p[3] == 0.0  # an alert does not weigh before it happens
    fast = P.Params(half_life_h=1.0)
    assert P.pressure([0.0], [8.0], [3 * H], fast)[0] == pytest.approx(1.0)


def test_series_recovers_monotonically_after_the_last_alert():
    at = [i * H for i in range(0, 49)]
    s = P.series([2 * H, 3 * H], [15.0, 15.0], at)
    assert s[0] == s[1] == 100.0
    assert s[3] == min(s)
    assert all(a <= b for a, b in zip(s[3:], s[4:]))
    assert s[3] == P.index_from_pressure(15.0 + 15.0 * 2 ** (-1 / 6))


def test_bands():
    assert [P.band(x) for x in (100, 90, 89.9, 75, 74.9, 50, 49.9, 0)] == [
        "calm", "calm", "guarded", "guarded", "elevated", "elevated", "severe", "severe"]


def _alert(ts, level, src=None, dst=None, id=None):
    return {"@timestamp": ts, "rule.level": level, "source.ip": src, "destination.ip": dst, "id": id}


def test_alert_points_touch_both_ends_and_keep_unknown_addresses():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    by_ip = {"10.10.1.20": L3, "10.30.0.50": L4}
    pts = P.alert_points([_alert(t, "high", "10.10.1.20", "10.30.0.50", "a"),
                          _alert(t, "low", "203.0.113.50", "10.10.1.20", "b"),
                          _alert(None, "high", "10.10.1.20", None, "no time"),
                          _alert("2026-01-01T00:00:00Z", "medium", "10.30.0.50", "10.30.0.50", "c")], by_ip)
    assert [p.id for p in pts] == ["a", "b", "c"]
    assert pts[0].assets == (L3, L4) and pts[0].ips == ()
    assert pts[1].assets == (L3,) and pts[1].ips == ("203.0.113.50",)
    assert pts[2].assets == (L4,)  # the same asset at both ends counts once
    assert pts[0].time == t.timestamp() == pts[2].time


def test_compute_per_scope():
    t0 = 1_000_000.0
    pts = [
        P.AlertPoint(t0, "high", (L3, L4)),  # lateral: touches both assets
        P.AlertPoint(t0, "critical", (L4, L4B)),  # two assets of one sector/region: counted once there
        P.AlertPoint(t0, "medium", (), ("203.0.113.50",)),
    ]
    res = P.compute(pts, [t0 - H, t0], assets=[L3, L4, L4B, L1])
    assets = {r["key"]: r for r in res["asset"]}
    # per asset: its own alerts at its own level
    assert assets["jump01"]["pressure"] == pytest.approx(7.0)
    assert assets["rtu01"]["pressure"] == pytest.approx(7.0 * 1.5 + 15.0 * 1.5)
    assert assets["hmi01"]["pressure"] == pytest.approx(15.0 * 1.5)
    assert assets["kiosk"]["index"] == 100.0 and assets["kiosk"]["alerts"] == 0  # calm assets are listed
    assert assets["ip:203.0.113.50"]["pressure"] == pytest.approx(3.0)
    # worst first
    assert res["asset"][0]["key"] == "rtu01"
    assert [r["index"] for r in res["asset"]] == sorted(r["index"] for r in res["asset"])
    # sector energy: both alerts once each, at the highest level they touch there (4)
    sectors = {r["key"]: r for r in res["sector"]}
    assert sectors["energy"]["pressure"] == pytest.approx(7.0 * 1.5 + 15.0 * 1.5)
    assert sectors["energy"]["alerts"] == 2
    assert sectors["e_government"]["pressure"] == pytest.approx(7.0)
    assert sectors["public_services"]["index"] == 100.0
    regions = {r["key"]: r for r in res["region"]}
    assert regions["湖州市"]["pressure"] == sectors["energy"]["pressure"]
    # overall: every alert at the highest level it touches
    assert res["overall"]["pressure"] == pytest.approx(7.0 * 1.5 + 15.0 * 1.5 + 3.0)
    assert res["overall"]["index"] == P.index_from_pressure(res["overall"]["pressure"])
    assert res["overall"]["series"][0] == 100.0  # an hour before the alerts
    assert res["params"]["half_life_h"] == 6.0


def test_compute_needs_a_time_and_limits_scopes():
    with pytest.raises(ValueError):
        P.compute([], [])
    res = P.compute([], [0.0], by=("overall",))
    assert set(res) == {"params", "times", "overall"} and res["overall"]["index"] == 100.0


def test_params_change_the_index():
    pts = [P.AlertPoint(0.0, "high", (L3,))]
    a = P.compute(pts, [0.0], by=("overall",))["overall"]["index"]
    b = P.compute(pts, [0.0], P.Params(scale=60.0), by=("overall",))["overall"]["index"]
    assert b > a and b == round(100 * math.exp(-7 / 60), 1)
