"""End to end on the demo campaign: real Zeek/Suricata/syslog files, the real parsers,
a real Store; the inventory is the demo network. The campaign's OT stage (RC4 on the
HMI, telnet to the RTU, FTP to the historian) and clear-text admin login must show up
as failed controls with the campaign's own records as evidence."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from compliance import discovery
from compliance.checks import evaluate
from compliance.inventory import Inventory, enrich
from compliance.report import build, to_csv, to_html
from taishi.demo import FILES, HOSTS, ZONES, generate_campaign
from taishi.schema import conform
from taishi.store import Store

FMTS = {"conn.log": "zeek", "dns.log": "zeek", "http.log": "zeek", "ssl.log": "zeek",
        "ssh.log": "zeek", "eve.json": "suricata", "auth.log": "syslog"}
ZONE_META = {"dmz": ("e_government", 3), "office": ("public_services", 3), "ot": ("energy", 4)}
SERVICES = {"portal01": ["tcp/443", "tcp/80"], "jump01": ["tcp/22"], "hmi01": ["tcp/443", "tcp/1433", "tcp/4840"],
            "rtu01": ["tcp/502"], "hist01": ["tcp/1433"]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from ingest.files import read_records
    from ingest.parsers import parse

    d = tmp_path_factory.mktemp("demo")
    generate_campaign(d / "logs")
    tables = []
    for name in FILES:
        for raw in read_records(d / "logs" / name, FMTS[name]):
            tables.append(conform(parse(FMTS[name], raw).events))
    events = pa.concat_tables(tables)
    store = Store(d / "data", keep_open=True)
    store.write_events(events)
    inv = Inventory()
    for z, cidr in ZONES.items():
        inv.put_system({"cii_id": f"PDC-{z}", "name": f"dispatch centre {z}", "operator": "PDC",
                        "credit_code": "12330000470051726F", "sector": ZONE_META[z][0],
                        "mlps_level": ZONE_META[z][1], "zone": z, "cidrs": [cidr]}, who="test")
    for h, ip in HOSTS.items():
        if h == "opws01":  # left out on purpose: discovery must find it
            continue
        z = next(z for z, c in ZONES.items() if ipaddress.ip_address(ip) in ipaddress.ip_network(c))
        inv.put_asset({"asset_id": h, "system_id": f"PDC-{z}", "hostname": h, "ips": [ip],
                       "services": SERVICES.get(h, [])}, who="test")
    yield store, inv, events
    store.close()


def test_demo_verdicts(demo) -> None:
    store, inv, _ = demo
    v = {(x.check_id, x.target): x for x in evaluate(store, inv)}
    tls = v[("tls_crypto_posture", "hmi01")]
    assert tls.verdict == "fail" and "weak cipher" in tls.reason
    assert [s["tls.cipher"] for s in tls.evidence["samples"]] == ["TLS_RSA_WITH_RC4_128_SHA"]
    assert v[("plaintext_management", "rtu01")].verdict == "fail"
    assert {s["destination.port"] for s in v[("plaintext_management", "rtu01")].evidence["samples"]} == {23}
    assert v[("plaintext_management", "hist01")].verdict == "fail"  # FTP
    assert v[("plaintext_management", "adm01")].verdict == "fail"  # basic auth in clear
    assert "password in clear" in v[("plaintext_management", "adm01")].reason
    assert v[("plaintext_management", "db01")].verdict == "pass"
    assert v[("audit_log_coverage_24h", "jump01")].verdict == "pass"  # auth.log
    assert v[("audit_log_coverage_24h", "db01")].verdict == "fail"  # Windows host, no logs collected
    assert {v[("ids_zone_coverage", f"PDC-{z}")].verdict for z in ZONES} == {"pass"}
    assert v[("tls_crypto_posture", "portal01")].verdict == "no_evidence"  # strong TLS, no SM suites
    assert v[("clock_skew", "jump01")].verdict == "no_evidence"  # replayed files, not a live listener


def test_demo_discovery(demo) -> None:
    store, inv, _ = demo
    unknown = {h.ip: h for h in discovery.unknown_hosts(store, inv)}
    assert unknown[HOSTS["opws01"]].system == "PDC-ot"
    assert not any(ip.startswith("203.0.113.") for ip in unknown)
    svc = {(s.asset_id, s.service) for s in discovery.undeclared_services(store, inv)}
    assert {("rtu01", "tcp/23"), ("hist01", "tcp/21")} <= svc
    assert ("rtu01", "tcp/502") not in svc and ("hmi01", "tcp/4840") not in svc
    assert discovery.silent_assets(store, inv, days=1) == []


def test_demo_enrichment(demo) -> None:
    _, inv, events = demo
    out = enrich(events, inv)
    to_hmi = out.filter(pc.equal(out.column("destination.ip"), HOSTS["hmi01"]))
    assert to_hmi.num_rows > 0
    assert set(to_hmi.column("taishi.destination.asset.id").to_pylist()) == {"hmi01"}
    assert set(to_hmi.column("taishi.destination.asset.level").to_pylist()) == {4}
    assert set(to_hmi.column("taishi.destination.asset.sector").to_pylist()) == {"energy"}
    opws = out.filter(pc.equal(out.column("source.ip"), HOSTS["opws01"]))
    assert set(opws.column("taishi.source.asset.id").to_pylist()) == {None}
    assert set(opws.column("taishi.source.asset.system").to_pylist()) == {"PDC-ot"}


def test_demo_report(demo, tmp_path: Path) -> None:
    store, inv, _ = demo
    rep = build(store, inv, level=3)
    html = to_html(rep)
    assert "TLS_RSA_WITH_RC4_128_SHA" in html and "PDC-ot" in html
    assert to_csv(rep).count("\n") == len(rep.verdicts) + 1
