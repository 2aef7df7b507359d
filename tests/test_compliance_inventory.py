"""CII inventory: credit codes, validation with per-row errors, change log, enrichment."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from compliance.inventory import (
    ENRICH_FIELDS,
    Inventory,
    NetworkIndex,
    credit_code_check_char,
    credit_code_valid,
    enrich,
)
from taishi.schema import events_table

DATA = Path(__file__).parent / "data" / "compliance"


# ------------------------------------------------------------------ credit code (GB 32100-2015)


@pytest.mark.parametrize("code", [
    "91350100M000100Y43",  # the example code of GB 32100-2015 itself
    "91330000MA2CD0001A",
    "12330000470051726F",
    "11330000002482060M",
    "91330000ma2cd0001a",  # lower case is accepted (normalised to upper case)
])
def test_credit_code_valid(code: str) -> None:
    assert credit_code_valid(code) == (True, "")


@pytest.mark.parametrize("code, reason", [
    ("91350100M000100Y44", "check character is 4, should be 3"),
    ("91350100M000100Y4", "must be 18 characters, got 17"),
    ("91350100M000100I43", "characters not allowed by GB 32100-2015: I"),
    ("913501O0M000100Y43", "characters not allowed by GB 32100-2015: O"),
    ("91350A00M000100Y43", "characters 3-8 must be digits (administrative division code)"),
])
def test_credit_code_invalid(code: str, reason: str) -> None:
    assert credit_code_valid(code) == (False, reason)


def test_check_char_cycles_through_zero() -> None:
    # sum % 31 == 0 must give '0', not the 32nd character
    base = "0" * 17
    assert credit_code_check_char(base) == "0"


# ------------------------------------------------------------------ import with per-row errors


def test_csv_import_keeps_valid_rows_and_reports_bad_ones() -> None:
    inv = Inventory()
    res = inv.import_csv(DATA / "systems_mixed.csv", "system", who="auditor1")
    assert sorted(res.added) == ["CII-A", "CII-G"]
    got = {(e.row, e.field): e.reason for e in res.errors}
    assert got == {
        (3, "credit_code"): "check character is B, should be A",
        (4, "sector"): "one of communications, energy, transport, water, finance, public_services, "
                       "e_government, defence_industry (or its Chinese name), not 'mining'",
        (5, "mlps_level"): "must be 1-5, not 6",
        (6, "cidrs"): "'10.0.0.1/24': 10.0.0.1/24 has host bits set",
        (7, "last_assessment_date"): "an ISO date (YYYY-MM-DD), not '2026-13-01'",
        (8, "cii_id"): "duplicate 'CII-A' in this import",
        (10, "cii_id"): "required",
    }
    assert str(res.errors[0]) == "system row 3: credit_code: check character is B, should be A"
    g = inv.systems["CII-G"]
    assert g.sector == "finance" and g.mlps_level == 4  # Chinese sector name mapped
    assert g.cidrs == ["10.50.0.0/16", "2001:db8:50::/48"]
    a = inv.systems["CII-A"]
    assert a.last_assessment_result == "good" and a.dependencies == ["SCADA", "PLC"]

    res = inv.import_csv(DATA / "assets_mixed.csv", "asset", who="auditor1")
    assert sorted(res.added) == ["core01", "plc01"]
    assert [(e.row, e.field, e.reason) for e in res.errors] == [
        (3, "system_id", "no CII system 'CII-NOPE' in the inventory"),
        (4, "ips", "'10.40.0.300': '10.40.0.300' does not appear to be an IPv4 or IPv6 address"),
        (5, "criticality", "one of low, medium, high, critical, not 'extreme'"),
        (6, "services", "'http': expected PORT or PROTO/PORT (tcp/443)"),
    ]
    assert inv.assets["core01"].services == ["tcp/1521", "udp/123"]


def test_yaml_import_errors_name_the_list_position() -> None:
    inv = Inventory()
    doc = yaml.safe_load((DATA / "inventory.yaml").read_text())
    doc["systems"][1]["mlps_level"] = "three"
    doc["assets"].append({"asset_id": "x1", "system_id": "CII-ZJ-EN-0001", "ips": ["10.30.0.7"], "colour": "red"})
    res = inv.import_yaml(yaml.safe_dump(doc, allow_unicode=True), who="t")
    errs = [(e.kind, e.row, e.field, e.reason) for e in res.errors]
    assert errs == [
        ("system", 2, "mlps_level", "an integer 1-5, not 'three'"),
        # portal01 and jump01 belong to the rejected system: rejected with the reason, the rest kept
        ("asset", 1, "system_id", "no CII system 'CII-ZJ-EG-0002' in the inventory"),
        ("asset", 2, "system_id", "no CII system 'CII-ZJ-EG-0002' in the inventory"),
        ("asset", 8, "colour", "unknown field"),
    ]
    assert set(inv.systems) == {"CII-ZJ-EN-0001", "OA-ZJ-0003"}
    assert set(inv.assets) == {"hmi01", "hist01", "rtu01", "spare01", "adm01"}


def test_export_round_trips(tmp_path: Path) -> None:
    inv = Inventory.open(tmp_path)
    assert inv.import_yaml(DATA / "inventory.yaml", who="t").ok
    inv.save()
    again = Inventory.open(tmp_path)
    assert again.export_yaml() == inv.export_yaml()
    # CSV export -> import into a fresh inventory gives the same records
    fresh = Inventory()
    assert fresh.import_csv(inv.export_csv("system"), "system", who="t").ok
    assert fresh.import_csv(inv.export_csv("asset"), "asset", who="t").ok
    assert fresh.export_yaml() == inv.export_yaml()
    # re-importing the same data changes nothing
    res = again.import_yaml(DATA / "inventory.yaml", who="t")
    assert res.added == [] and res.updated == [] and len(res.unchanged) == 10


def test_change_log_and_material_change_flags_reidentification(tmp_path: Path) -> None:
    inv = Inventory.open(tmp_path)
    inv.import_yaml(DATA / "inventory.yaml", who="loader")
    inv.save()
    sys = inv.systems["CII-ZJ-EG-0002"]
    assert not sys.reidentify
    row = {k: v for k, v in vars(sys).items() if k != "reidentify"}
    assert inv.put_system({**row, "owner": "新的信息中心"}, who="alice") == "updated"
    assert not inv.systems["CII-ZJ-EG-0002"].reidentify  # not a material field
    assert inv.put_system({**row, "owner": "新的信息中心", "cidrs": ["10.10.0.0/23"]}, who="bob") == "updated"
    assert inv.systems["CII-ZJ-EG-0002"].reidentify
    inv.save()
    hist = Inventory.open(tmp_path).history()
    edits = [(h["who"], h["field"], h["old"], h["new"], h["material"]) for h in hist if h["field"] != "*"]
    assert edits == [
        ("alice", "owner", "信息中心", "新的信息中心", False),
        ("bob", "cidrs", ["10.10.1.0/24", "2001:db8:10::/48"], ["10.10.0.0/23"], True),
        ("bob", "reidentify", False, True, True),
    ]
    assert all(h["at"] for h in hist)
    assert len([h for h in hist if h["field"] == "*"]) == 10  # creations logged
    assert Inventory.open(tmp_path).systems["CII-ZJ-EG-0002"].reidentify  # persisted
    inv.clear_reidentify("CII-ZJ-EG-0002", who="protection-dept")
    assert inv.history()[-1]["who"] == "protection-dept"
    # level change is material too
    row2 = {k: v for k, v in vars(inv.systems["OA-ZJ-0003"]).items() if k != "reidentify"}
    inv.put_system({**row2, "mlps_level": 3}, who="carol")
    assert inv.systems["OA-ZJ-0003"].reidentify


def test_put_rejects_bad_data_with_the_field() -> None:
    inv = Inventory()
    with pytest.raises(ValueError, match="credit_code: check character"):
        inv.put_system({"cii_id": "X", "name": "x", "operator": "o", "credit_code": "91350100M000100Y44",
                        "sector": "energy", "mlps_level": 3}, who="t")


# ------------------------------------------------------------------ enrichment


def _inv() -> Inventory:
    inv = Inventory()
    assert inv.import_yaml(DATA / "inventory.yaml", who="t").ok
    return inv


def test_enrich_ipv4_ipv6_and_most_specific_wins() -> None:
    inv = _inv()
    # overlapping system CIDRs: a /25 carved out of the office /16 for a level-4 system
    row = {"cii_id": "CII-SUB", "name": "sub", "operator": "o", "credit_code": "91330000MA2CD0001A",
           "sector": "finance", "mlps_level": 4, "cidrs": ["10.20.7.0/25"]}
    inv.put_system(row, who="t")
    inv.put_asset({"asset_id": "sub01", "system_id": "CII-SUB", "ips": ["10.20.7.5"]}, who="t")
    # an asset declared by CIDR inside a system CIDR
    inv.put_asset({"asset_id": "pool", "system_id": "CII-ZJ-EN-0001", "ips": ["10.30.0.128/26"]}, who="t")
    ev = events_table([
        {"event.id": "1", "source.ip": "10.10.1.10", "destination.ip": "10.30.0.50"},  # asset -> asset
        {"event.id": "2", "source.ip": "2001:db8:10::10", "destination.ip": "2001:db8:10::99"},  # v6 asset, v6 system
        {"event.id": "3", "source.ip": "10.20.7.5", "destination.ip": "10.20.7.100"},  # /25 beats /16
        {"event.id": "4", "source.ip": "10.20.7.200", "destination.ip": "10.30.0.130"},  # /16 only; CIDR asset
        {"event.id": "5", "source.ip": "8.8.8.8", "destination.ip": None},
        {"event.id": "6", "source.ip": "::ffff:10.10.1.20", "destination.ip": "not-an-ip"},
        {"event.id": "7", "source.ip": "2001:DB8:10:0::10", "destination.ip": "fe80::1%eth0"},
    ])
    out = enrich(ev, inv)
    assert out.num_rows == 7 and out.column_names[: ev.num_columns] == ev.column_names
    for name, typ in ENRICH_FIELDS.items():
        assert out.schema.field(name).type == typ
    col = lambda n: out.column(n).to_pylist()  # noqa: E731
    assert col("taishi.source.asset.id") == ["portal01", "portal01", "sub01", None, None, "jump01", "portal01"]
    assert col("taishi.source.asset.system") == ["CII-ZJ-EG-0002", "CII-ZJ-EG-0002", "CII-SUB", "OA-ZJ-0003",
                                                 None, "CII-ZJ-EG-0002", "CII-ZJ-EG-0002"]
    assert col("taishi.source.asset.level") == [3, 3, 4, 2, None, 3, 3]
    assert col("taishi.source.asset.sector") == ["e_government", "e_government", "finance", "public_services",
                                                 None, "e_government", "e_government"]
    assert col("taishi.destination.asset.id") == ["rtu01", None, None, "pool", None, None, None]
    assert col("taishi.destination.asset.system") == ["CII-ZJ-EN-0001", "CII-ZJ-EG-0002", "CII-SUB",
                                                      "CII-ZJ-EN-0001", None, None, None]
    assert col("taishi.destination.asset.level") == [4, 3, 4, 4, None, None, None]
    # enriching twice replaces, does not duplicate
    assert enrich(out, inv).num_columns == out.num_columns


def test_network_index_nested_and_disjoint() -> None:
    idx = NetworkIndex([("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"), ("10.1.2.0/24", "c"),
                        ("10.1.2.3/32", "d"), ("10.2.0.0/16", "e"), ("0.0.0.0/0", "any"),
                        ("::/0", "any6"), ("2001:db8::/32", "f"), ("2001:db8:1::/48", "g")])
    ips = ["10.1.2.3", "10.1.2.4", "10.1.3.1", "10.2.255.255", "10.3.0.0", "11.0.0.0", "255.255.255.255",
           "0.0.0.0", "2001:db8:1::1", "2001:db8:2::1", "2002::1", None]
    assert idx.lookup(pa.array(ips)).to_pylist() == [
        "d", "c", "b", "e", "a", "any", "any", "any", "g", "f", "any6", None]
    assert NetworkIndex([]).lookup(pa.array(["10.0.0.1"])).to_pylist() == [None]


def test_enrich_is_vectorised_over_many_rows() -> None:
    inv = _inv()
    n = 200_000
    ips = pa.array([f"10.30.0.{i % 256}" for i in range(n)])
    tbl = pa.table({"source.ip": ips, "destination.ip": pa.nulls(n, pa.string())})
    out = enrich(tbl, inv)
    ids = out.column("taishi.source.asset.id")
    assert ids.to_pylist()[:51:10] == [None, "hmi01", "hist01", None, None, "rtu01"]
    assert out.column("taishi.source.asset.system").null_count == 0


def test_concurrent_editors_lose_nothing(tmp_path: Path) -> None:
    import threading

    base = {"name": "n", "operator": "o", "credit_code": "91330000MA2CD0001A", "sector": "water", "mlps_level": 3}

    def edit(i: int) -> None:
        with Inventory.editing(tmp_path) as inv:
            inv.put_system({**base, "cii_id": f"S{i}"}, who=f"user{i}")

    threads = [threading.Thread(target=edit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inv = Inventory.open(tmp_path)
    assert sorted(inv.systems) == [f"S{i}" for i in range(8)]
    assert sorted(h["who"] for h in inv.history()) == [f"user{i}" for i in range(8)]
