"""Alerts are stored with the CII asset they touch, where a public source is, and a risk score
weighed by the protection level (taishi.enrich.enrich_alerts), in the embedded pipeline.

The demo campaign runs with the demo network's CII inventory; its external attacker is moved
from the documentation range (which has no location) to a public address, so the map has a point.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taishi import config as config_mod
from taishi.demo import ATTACKER_IP, HOSTS, demo_inventory, generate_campaign
from taishi.enrich import enrich_alerts, risk_score
from taishi.pipeline import Pipeline
from taishi.schema import ALERT_SCHEMA, alerts_table
from taishi.store import Store

PUBLIC_ATTACKER = "185.220.101.4"  # in the offline GeoIP database: Germany
DB01 = HOSTS["db01"]


def campaign_inputs(out: Path) -> list[Path]:
    """The demo campaign with its attacker at a public address."""
    files = [Path(f) for f in generate_campaign(out, seed=7).files]
    for f in files:
        f.write_bytes(f.read_bytes().replace(ATTACKER_IP.encode(), PUBLIC_ATTACKER.encode()))
    return files


def with_demo_inventory(data_dir: Path) -> Path:
    from compliance.inventory import Inventory

    data_dir.mkdir(parents=True, exist_ok=True)
    with Inventory.editing(data_dir) as inv:
        assert inv.import_yaml(yaml.safe_dump(demo_inventory(), allow_unicode=True), who="test").ok
    return data_dir


def embedded_run(inputs: list[Path], data_dir: Path) -> tuple[dict[str, dict], list[dict]]:
    cfg = config_mod.load(data_dir=data_dir)
    pipe = Pipeline(cfg, bounded=True)
    try:
        pipe.run_files(inputs)
    finally:
        pipe.close()
    store = Store(cfg.data_dir)
    try:
        alerts = {a["id"]: a for a in store.search_alerts("", limit=None).to_pylist()}
        incidents = store.search_incidents("", limit=None)
    finally:
        store.close()
    return alerts, incidents


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enrich")
    return embedded_run(campaign_inputs(tmp / "campaign"), with_demo_inventory(tmp / "data"))


def test_alerts_on_the_database_server_carry_its_asset(embedded):
    alerts, _ = embedded
    inv = demo_inventory()
    system = next(s for s in inv["systems"] if s["cii_id"] == next(a["system_id"] for a in inv["assets"]
                                                                      if a["asset_id"] == "db01"))
    on_db = [a for a in alerts.values() if a["destination.ip"] == DB01]
    assert on_db, "the campaign attacks the database server"
    for a in on_db:
        assert (a["taishi.destination.asset.id"], a["taishi.destination.asset.system"],
                a["taishi.destination.asset.sector"], a["taishi.destination.asset.level"]) == \
               ("db01", system["cii_id"], system["sector"], system["mlps_level"])
    # an address outside the inventory has no asset; every inventoried one has
    hosts = {a["ips"][0]: a["asset_id"] for a in inv["assets"]}
    for a in alerts.values():
        assert a["taishi.source.asset.id"] == hosts.get(a["source.ip"])
        assert a["taishi.destination.asset.id"] == hosts.get(a["destination.ip"])


def test_public_sources_are_placed_private_ones_not(embedded):
    alerts, _ = embedded
    public = [a for a in alerts.values() if a["source.ip"] == PUBLIC_ATTACKER]
    assert public, "the external attacker raises alerts"
    for a in public:
        assert a["source.geo.country_iso_code"] == "DE"
        assert a["source.geo.country_name"] == "Germany"
        assert a["source.geo.location"] == pytest.approx({"lat": 51.2, "lon": 10.4})
    internal = [a for a in alerts.values() if (a["source.ip"] or "").startswith("10.")]
    assert internal, "the campaign moves laterally"
    assert all(a["source.geo.location"] is None and a["source.geo.country_iso_code"] is None for a in internal)


def test_risk_score_weighs_the_protection_level(embedded):
    alerts, _ = embedded
    base = {"informational": 5, "low": 20, "medium": 40, "high": 60, "critical": 80}
    bonus = {None: 0, 1: 0, 2: 5, 3: 10, 4: 15, 5: 20}
    seen_levels = set()
    for a in alerts.values():
        lv = max([v for v in (a["taishi.source.asset.level"], a["taishi.destination.asset.level"]) if v] or [None],
                 key=lambda v: v or 0)
        seen_levels.add(lv)
        assert a["event.risk_score"] == base[a["rule.level"]] + bonus[lv], a["id"]
    assert {3, 4} <= seen_levels  # alerts on level-3 office systems and the level-4 SCADA zone


def test_incidents_see_the_stored_assets(embedded):
    """The incident builder reads the columns the alerts are stored with."""
    alerts, incidents = embedded
    assert incidents
    by_alert = {aid: i for i in incidents for aid in i["alert.ids"]}
    on_db = [a["id"] for a in alerts.values() if a["destination.ip"] == DB01]
    inc = by_alert[on_db[0]]
    assets = {e["value"]: e["asset"] for e in inc["entities"] if e["type"] == "asset"}
    assert assets["db01"]["level"] == 3 and assets["db01"]["sector"] == "energy"


def test_enrich_alerts_never_fails_on_odd_input():
    t = alerts_table([{"id": "a", "source.ip": "not an ip", "rule.level": "bogus", "event.severity": 4},
                      {"id": "b", "source.ip": None}, {"id": "c", "source.ip": "239.1.2.3", "rule.level": "high"},
                      {"id": "d", "source.ip": "::ffff:185.220.101.4", "rule.level": "low"}])
    out = enrich_alerts(t, None)
    assert out.schema.equals(ALERT_SCHEMA)
    assert out.column("source.geo.country_iso_code").to_pylist() == [None, None, None, "DE"]
    assert out.column("event.risk_score").to_pylist() == [60.0, 5.0, 60.0, 20.0]  # "bogus" -> event.severity 4
    assert enrich_alerts(ALERT_SCHEMA.empty_table()).num_rows == 0
    assert risk_score("critical", [5]) == 100.0 and risk_score("critical", [9]) == 100.0


def test_the_inventory_networks_are_internal(tmp_path):
    """A CII system in public address space is the site's own: no country for it."""
    from compliance.inventory import Inventory

    inv = Inventory()
    demo = demo_inventory()
    demo["systems"][0]["cidrs"] = ["185.220.101.0/24"]
    demo["assets"] = [a for a in demo["assets"] if a["system_id"] != demo["systems"][0]["cii_id"]]
    assert inv.import_yaml(yaml.safe_dump(demo, allow_unicode=True), who="test").ok
    t = alerts_table([{"id": "a", "source.ip": "185.220.101.4", "rule.level": "high"}])
    out = enrich_alerts(t, inv).to_pylist()[0]
    assert out["source.geo.location"] is None and out["taishi.source.asset.system"] == demo["systems"][0]["cii_id"]
    assert out["event.risk_score"] == 60.0 + 10.0  # the system's level 3
