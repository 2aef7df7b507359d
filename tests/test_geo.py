"""GeoIP (taishi/geo.py): classification is pure; lookups use the offline geoip2fast database
(the geo extra, installed by make test) or a fake database."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from taishi import geo


@pytest.mark.parametrize("ip, kind, reason", [
    ("10.20.0.10", "internal", "private network"),
    ("192.168.1.1", "internal", "private network"),
    ("172.16.5.4", "internal", "private network"),
    ("fd00::1", "internal", "private network"),
    ("127.0.0.1", "internal", "loopback"),
    ("::1", "internal", "loopback"),
    ("169.254.1.1", "internal", "link-local"),
    ("fe80::1%eth0", "internal", "link-local"),
    ("100.64.1.1", "internal", "shared address space (CGNAT)"),
    ("203.0.113.50", "unknown", "documentation range"),
    ("198.51.100.7", "unknown", "documentation range"),
    ("2001:db8::5", "unknown", "documentation range"),
    ("224.0.0.251", "unknown", "multicast"),
    ("0.0.0.0", "unknown", "unspecified address"),
    ("198.18.0.1", "unknown", "benchmarking range"),
    ("240.0.0.1", "unknown", "reserved range"),
    ("8.8.8.8", "public", ""),
    ("::ffff:8.8.8.8", "public", ""),
    ("2400:3200::1", "public", ""),
    ("", "unknown", "no address"),
    (None, "unknown", "no address"),
    ("not-an-ip", "unknown", "not an IP address"),
    ("999.1.1.1", "unknown", "not an IP address"),
])
def test_classify(ip, kind, reason):
    assert geo.classify(ip) == (kind, reason)


def test_site_networks_are_internal_even_in_public_space():
    assert geo.classify("8.8.8.8", ["8.8.8.0/24"]) == ("internal", "site network")
    assert geo.classify("8.8.4.4", ["8.8.8.0/24", "garbage"]) == ("public", "")


class FakeDB:
    def __init__(self, table):
        self.table, self.asked = table, []

    def lookup(self, ip):
        self.asked.append(ip)
        if ip == "6.6.6.6":
            raise RuntimeError("corrupt record")
        return SimpleNamespace(country_code=self.table.get(ip, "--"))


def test_lookup_with_a_fake_database():
    db = FakeDB({"1.2.4.8": "CN", "5.5.5.5": "ZZ", "8.8.8.8": "us"})
    g = geo.GeoIP(db=db, home=geo.Home(30.3, 120.2, "SOC"))
    cn = g.lookup("1.2.4.8")
    assert cn["kind"] == "public" and cn["country_iso_code"] == "CN"
    assert cn["country_name"] == "China" and cn["country_name_zh"] == "中国"
    assert cn["location"] == {"lat": geo.COUNTRIES["CN"][0], "lon": geo.COUNTRIES["CN"][1]}
    assert g.lookup("8.8.8.8")["country_iso_code"] == "US"
    zz = g.lookup("5.5.5.5")  # a country without a known centre: named, not placed
    assert zz["kind"] == "public" and zz["location"] is None and "not drawn" in zz["reason"]
    assert g.lookup("9.9.9.9") == {**g.lookup("9.9.9.9"), "kind": "unknown", "reason": "not in the GeoIP database"}
    assert g.lookup("6.6.6.6")["kind"] == "unknown"  # a failing database record never raises
    home = g.lookup("10.0.0.1")
    assert home["kind"] == "internal" and home["location"] == {"lat": 30.3, "lon": 120.2} and home["site"] == "SOC"
    assert "10.0.0.1" not in db.asked and "203.0.113.50" not in db.asked  # only global addresses reach the database
    g.lookup("::ffff:1.2.4.8")
    assert db.asked[-1] == "1.2.4.8"  # mapped addresses are looked up as IPv4


def test_no_database_degrades_to_unknown():
    g = geo.GeoIP(db=None)
    assert not g.available and "no GeoIP database" in g.source
    r = g.lookup("8.8.8.8")
    assert r["kind"] == "unknown" and r["reason"] == "GeoIP database not installed" and r["location"] is None
    assert g.lookup("10.1.1.1")["kind"] == "internal"


def test_aggregate_points():
    db = FakeDB({"1.2.4.8": "CN", "1.2.4.9": "CN", "8.8.8.8": "US"})
    g = geo.GeoIP(db=db, home=geo.Home(35.0, 104.0, "protected networks"))
    out = geo.aggregate_points([("1.2.4.8", 5), ("8.8.8.8", 2), ("1.2.4.9", 3), ("10.0.0.1", 4),
                                ("203.0.113.50", 16), ("198.51.100.1", 1), ("bad", 1)], g)
    pts = {p["key"]: p for p in out["points"]}
    assert [p["key"] for p in out["points"]] == ["CN", "internal", "US"]
    assert pts["CN"]["count"] == 8 and [i["ip"] for i in pts["CN"]["ips"]] == ["1.2.4.8", "1.2.4.9"]
    assert pts["internal"]["kind"] == "internal" and pts["internal"]["name_zh"] == "受保护网络"
    unplaced = {u["reason"]: u for u in out["unplaced"]}
    assert unplaced["documentation range"]["count"] == 17
    assert unplaced["not an IP address"]["ips"] == [{"ip": "bad", "count": 1}]


def test_country_table_is_well_formed():
    for cc, (lat, lon, en, zh) in geo.COUNTRIES.items():
        assert len(cc) == 2 and cc.isupper()
        assert -90 <= lat <= 90 and -180 <= lon <= 180 and en and zh


def test_the_shipped_offline_database():
    pytest.importorskip("geoip2fast", reason="the geo extra (make test installs it)")
    g = geo.GeoIP()
    assert g.available and "geoip2fast" in g.source
    # well-known allocations: APNIC's 1.0.0.0/8 block in China and Australia, a US resolver
    assert g.lookup("1.2.4.8")["country_iso_code"] == "CN"
    assert g.lookup("8.8.8.8")["country_iso_code"] == "US"
    assert g.lookup("2400:3200::1")["country_iso_code"] == "CN"
    assert g.lookup("203.0.113.50")["reason"] == "documentation range"
