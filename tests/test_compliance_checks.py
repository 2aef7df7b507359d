"""Compliance checks (rules/compliance/*.yaml) over a real Store: every check passes
and fails for a known reason; discovery; the HTML/CSV report.

The scenario is the demo's power-dispatch network (tests/data/compliance/inventory.yaml)
with hand-written ECS events, so each verdict's cause is visible here.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from compliance import discovery
from compliance.checks import CheckError, Engine, load_check, load_checks
from compliance.inventory import Inventory
from compliance.report import build, to_csv, to_html
from taishi.config import Config
from taishi.schema import events_table
from taishi.store import Store

DATA = Path(__file__).parent / "data" / "compliance"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
EST = "SF"


def ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


def _events() -> list[dict]:
    ev: list[dict] = []

    def add(eid: str, **f) -> None:
        ev.append({"event.id": eid, **f})

    # --- the assets' own logs (audit coverage / audit fields / clock skew) -------------
    for i in range(10):  # jump01: complete auth records, live via syslog, stored 2-11 s after their stamp
        add(f"jump-auth-{i}", **{"@timestamp": ago(seconds=2 + i), "event.dataset": "system.auth",
            "event.category": "authentication", "event.action": "ssh_login", "event.outcome": "success",
            "user.name": "ops", "host.name": "jump01", "log.syslog.hostname": "jump01",
            "taishi.source": "syslog-udp"})
    # portal01: its last own log is 30 h old -> no audit coverage in 24 h
    add("portal-old", **{"@timestamp": ago(hours=30), "event.dataset": "system.auth", "host.name": "portal01",
        "event.category": "authentication", "user.name": "www", "event.action": "x", "event.outcome": "success"})
    # rtu01: 5 auth records, 4 without user; its clock is 10 minutes behind (stored at NOW,
    # stamped NOW-10..14 min)
    for i in range(5):
        add(f"rtu-auth-{i}", **{"@timestamp": ago(minutes=10 + i), "event.dataset": "system.auth",
            "event.category": "authentication", "event.action": "login", "event.outcome": "failure",
            "user.name": "admin" if i == 0 else None, "host.ip": "10.30.0.50", "taishi.source": "syslog-tcp"})
    # --- IDS: Suricata sees the DMZ, nothing for the OT zone --------------------------
    add("suri-1", **{"@timestamp": ago(hours=2), "event.module": "suricata", "event.dataset": "suricata.flow",
        "source.ip": "203.0.113.50", "destination.ip": "10.10.1.10", "destination.port": 443})
    add("suri-old-ot", **{"@timestamp": ago(days=3), "event.module": "suricata", "event.dataset": "suricata.flow",
        "source.ip": "10.30.0.100", "destination.ip": "10.30.0.10", "destination.port": 443})
    # --- connections (plaintext management, discovery) ---------------------------------
    conn = lambda eid, s, d, p, state="SF", proto=None, when=ago(hours=3): add(  # noqa: E731
        eid, **{"@timestamp": when, "event.dataset": "zeek.conn", "source.ip": s, "destination.ip": d,
                "destination.port": p, "network.transport": "tcp", "network.protocol": proto,
                "event.action": state, "destination.bytes": 100 if state == "SF" else 0})
    conn("c-ssh-jump", "10.20.5.10", "10.10.1.20", 22, proto="ssh")
    conn("c-telnet-rtu", "10.30.0.100", "10.30.0.50", 23, proto="telnet")
    conn("c-telnet-hmi-rej", "10.30.0.100", "10.30.0.10", 23, state="REJ")  # refused: not a session
    conn("c-https-hmi", "10.30.0.100", "10.30.0.10", 443, proto="ssl")
    conn("c-https-portal", "203.0.113.7", "10.10.1.10", 443, proto="ssl")
    conn("c-http-portal", "203.0.113.8", "10.10.1.10", 80, proto="http")  # undeclared service
    conn("c-unknown-dmz", "10.10.1.99", "10.10.1.10", 443, proto="ssl")  # unregistered host in the DMZ
    conn("c-unknown-int", "10.20.5.10", "10.99.0.5", 445)  # unregistered internal server, answers
    conn("c-scan-unused", "10.20.5.10", "10.99.0.6", 445, state="S0")  # no answer: not a host
    conn("c-internet", "10.20.0.53", "8.8.8.8", 53)  # external: not reported
    conn("c-spare-old", "10.30.0.100", "10.30.0.99", 443, when=ago(days=10))  # spare01 silent since
    conn("c-adm-telnet", "10.20.5.10", "10.20.0.25", 23, proto="telnet")  # level-2 system
    add("h-portal-basic", **{"@timestamp": ago(hours=1), "event.dataset": "zeek.http",
        "source.ip": "10.20.5.11", "destination.ip": "10.10.1.10", "destination.port": 80,
        "url.username": "admin", "url.password": "hunter2"})
    # --- TLS ---------------------------------------------------------------------------
    tls = lambda eid, s, d, ver, cipher: add(  # noqa: E731
        eid, **{"@timestamp": ago(hours=5), "event.dataset": "zeek.ssl", "source.ip": s, "destination.ip": d,
                "destination.port": 443, "tls.version": ver, "tls.version_protocol": "tls",
                "tls.cipher": cipher})
    tls("t-hmi-rc4", "10.30.0.100", "10.30.0.10", "1.2", "TLS_RSA_WITH_RC4_128_SHA")
    tls("t-hmi-ok", "10.30.0.100", "10.30.0.10", "1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
    tls("t-jump-tls10", "10.20.5.10", "10.10.1.20", "1.0", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
    tls("t-portal-tlcp", "10.20.5.11", "10.10.1.10", None, "unknown-57425")  # TLCP ECC_SM4_GCM_SM3 (0xE051)
    tls("t-portal-v6", "2001:db8:99::1", "2001:db8:10::10", "1.3", "TLS_SM4_GCM_SM3")  # RFC 8998 over IPv6
    tls("t-rtu-aes13", "10.30.0.100", "10.30.0.50", "1.3", "TLS_AES_256_GCM_SHA384")
    return ev


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    store = Store(tmp_path_factory.mktemp("compliance") / "data", clock=lambda: NOW, keep_open=True)
    rows = _events()
    store.write_events(events_table(rows))  # event.ingested = NOW (the collector's clock)
    inv = Inventory()
    assert inv.import_yaml(DATA / "inventory.yaml", who="test").ok
    yield store, inv
    store.close()


def _by(verdicts, check_id):
    return {v.target: v for v in verdicts if v.check_id == check_id}


@pytest.fixture(scope="module")
def verdicts(world):
    store, inv = world
    return Engine(store, inv, Config(), now=NOW).evaluate(load_checks(), level=3)


def test_shipped_checks_load_and_cite_gbt_items() -> None:
    checks = load_checks()
    assert {c.id: c.gbt22239 for c in checks} == {
        "audit_log_coverage_24h": "8.1.4.3 a",
        "audit_record_fields": "8.1.4.3 b; 8.1.3.5 b",
        "clock_skew": "8.1.4.3 b",
        "ids_zone_coverage": "8.1.3.3 a; 8.1.3.3 b",
        "log_retention_180d": "8.1.5.4 d",
        "plaintext_management": "8.1.4.1 c",
        "tls_crypto_posture": "8.1.2.2 b",
    }
    assert all(c.level == 3 and c.requirement for c in checks)


def test_check_files_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\ntitle: t\ngbt22239: '1'\nscope: asset\nkind: count\noutcomes:\n"
                   "  - {query: '*', verdict: maybe}\n")
    with pytest.raises(CheckError, match="verdict must be one of"):
        load_check(bad)
    bad.write_text("id: x\ntitle: t\ngbt22239: '1'\nscope: asset\nkind: magic\n")
    with pytest.raises(CheckError, match="kind must be one of"):
        load_check(bad)


def test_audit_log_coverage(verdicts) -> None:
    v = _by(verdicts, "audit_log_coverage_24h")
    assert v["jump01"].verdict == "pass"
    assert v["jump01"].reason == "10 log records from the asset in the last 24 h"
    assert len(v["jump01"].evidence["samples"]) == 5
    assert all(s["event.id"].startswith("jump-auth-") for s in v["jump01"].evidence["samples"])
    assert 'host.name:"jump01"' in v["jump01"].evidence["query"]
    assert v["portal01"].verdict == "fail"  # only a 30 h old record
    assert v["portal01"].evidence["samples"] == []
    assert list(v["portal01"].evidence["counts"].values()) == [0]
    assert v["rtu01"].verdict == "pass"  # matched by host.ip
    assert v["hmi01"].verdict == "fail"  # sensors saw it, but it sends no logs
    assert v["adm01"].verdict == "not_applicable"  # level-2 system
    assert "MLPS level 2" in v["adm01"].reason


def test_audit_record_fields(verdicts) -> None:
    v = _by(verdicts, "audit_record_fields")
    assert v["jump01"].verdict == "pass"
    assert v["jump01"].evidence["counts"] == {"population": 10, "complete": 10, "ratio": 1.0}
    assert v["rtu01"].verdict == "fail"
    assert v["rtu01"].evidence["counts"] == {"population": 5, "complete": 1, "ratio": 0.2}
    assert v["rtu01"].reason.startswith("1 of 5 records (20.0%) carry @timestamp, user.name")
    assert sorted(s["event.id"] for s in v["rtu01"].evidence["samples"]) == [
        "rtu-auth-1", "rtu-auth-2", "rtu-auth-3", "rtu-auth-4"]
    assert v["portal01"].verdict == "no_evidence"  # no audit records in 24 h
    assert v["hist01"].verdict == "no_evidence"


def test_log_retention_reads_the_config(world, tmp_path: Path) -> None:
    store, inv = world
    check = [c for c in load_checks() if c.id == "log_retention_180d"]
    ok = Engine(store, inv, Config(), now=NOW).evaluate(check)
    assert [(v.target, v.verdict) for v in ok] == [("*", "pass")]
    assert ok[0].evidence["value"] == 180
    cfg_file = tmp_path / "taishi.yaml"
    cfg_file.write_text("retention_days: {events: 90}\n")
    from taishi.config import load

    cfg = load(cfg_file)
    bad = Engine(store, inv, cfg, now=NOW).evaluate(check)
    assert bad[0].verdict == "fail"
    assert bad[0].reason == f"retention_days.events = 90 in {cfg_file}; required gte 180"


def test_ids_zone_coverage(verdicts) -> None:
    v = _by(verdicts, "ids_zone_coverage")
    assert set(v) == {"CII-ZJ-EN-0001", "CII-ZJ-EG-0002", "OA-ZJ-0003"}
    assert v["CII-ZJ-EG-0002"].verdict == "pass"
    assert [s["event.id"] for s in v["CII-ZJ-EG-0002"].evidence["samples"]] == ["suri-1"]
    assert v["CII-ZJ-EN-0001"].verdict == "fail"  # only a 3-day-old Suricata record for the OT zone
    assert v["OA-ZJ-0003"].verdict == "not_applicable"


def test_plaintext_management(verdicts) -> None:
    v = _by(verdicts, "plaintext_management")
    assert v["rtu01"].verdict == "fail"
    assert v["rtu01"].reason == "1 established telnet/FTP sessions to the asset in 7 days"
    assert [s["event.id"] for s in v["rtu01"].evidence["samples"]] == ["c-telnet-rtu"]
    assert v["portal01"].verdict == "fail"
    assert "clear" in v["portal01"].reason
    assert [s["event.id"] for s in v["portal01"].evidence["samples"]] == ["h-portal-basic"]
    assert v["hmi01"].verdict == "pass"  # the refused telnet attempt is not a session
    assert v["jump01"].verdict == "pass"
    assert v["hist01"].verdict == "no_evidence"
    assert v["adm01"].verdict == "not_applicable"


def test_tls_crypto_posture(verdicts) -> None:
    v = _by(verdicts, "tls_crypto_posture")
    assert v["hmi01"].verdict == "fail" and "weak cipher" in v["hmi01"].reason
    assert [s["event.id"] for s in v["hmi01"].evidence["samples"]] == ["t-hmi-rc4"]
    assert v["jump01"].verdict == "fail" and "below 1.2" in v["jump01"].reason
    assert v["portal01"].verdict == "pass"  # TLCP on IPv4 and RFC 8998 on IPv6
    assert sorted(s["event.id"] for s in v["portal01"].evidence["samples"]) == ["t-portal-tlcp", "t-portal-v6"]
    assert v["rtu01"].verdict == "no_evidence" and "no national SM suite" in v["rtu01"].reason
    assert v["hist01"].verdict == "no_evidence" and v["hist01"].reason == "no TLS session of the asset observed in 7 days"


def test_clock_skew(world) -> None:
    store, inv = world
    check = [c for c in load_checks() if c.id == "clock_skew"]
    v = {x.target: x for x in Engine(store, inv, Config(), now=NOW).evaluate(check)}
    assert v["jump01"].verdict == "pass"
    assert v["jump01"].evidence["counts"] == {"records": 10, "median_s": 6.5, "min_s": 2.0, "max_s": 11.0}
    assert v["rtu01"].verdict == "fail"
    assert v["rtu01"].reason == ("median event.ingested - @timestamp = +720.0 s over 5 records; "
                                 "allowed +/-120 s")
    assert {s["event.id"] for s in v["rtu01"].evidence["samples"]} == {f"rtu-auth-{i}" for i in range(5)}
    # portal01's only own record came from a file, not a live listener: skew cannot be measured
    assert v["portal01"].verdict == "no_evidence"
    assert v["adm01"].verdict == "not_applicable"


def test_report_html_and_csv(world) -> None:
    store, inv = world
    rep = build(store, inv, Config(), level=3, now=NOW)
    html = to_html(rep)
    assert html.startswith("<!DOCTYPE html>")
    for text in ("CII-ZJ-EN-0001", "8.1.4.1 c", "1 established telnet/FTP sessions", "c-telnet-rtu",
                 "12330000470051726F", "省级电力调度控制系统"):
        assert text in html
    assert "<script" not in html
    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert len(rows) == len(rep.verdicts)
    row = next(r for r in rows if r["check_id"] == "plaintext_management" and r["target"] == "rtu01")
    assert row["verdict"] == "fail" and row["sample_event_ids"] == "c-telnet-rtu"
    assert row["system_id"] == "CII-ZJ-EN-0001" and row["gbt22239"] == "8.1.4.1 c"
    assert rep.summary["CII-ZJ-EN-0001"]["fail"] > 0
    one = build(store, inv, Config(), level=3, systems=["CII-ZJ-EG-0002"], now=NOW)
    assert {v.system_id for v in one.verdicts} <= {"CII-ZJ-EG-0002", None}
    with pytest.raises(ValueError, match="no CII system"):
        build(store, inv, Config(), systems=["NOPE"], now=NOW)


# ------------------------------------------------------------------ discovery


def test_unknown_hosts(world) -> None:
    store, inv = world
    got = {h.ip: h for h in discovery.unknown_hosts(store, inv, days=7, now=NOW)}
    assert set(got) == {"10.10.1.99", "10.99.0.5", "10.20.5.10", "10.30.0.100", "10.20.0.53"}  # conn records only
    assert got["10.10.1.99"].system == "CII-ZJ-EG-0002"  # inside a system's CIDRs, not registered
    assert got["10.99.0.5"].system is None
    # the operator workstation is in the OT system's range but not registered; its 10-day-old
    # connection is outside the 7-day window
    assert (got["10.30.0.100"].system, got["10.30.0.100"].events) == ("CII-ZJ-EN-0001", 3)
    assert got["10.30.0.100"].first_seen == got["10.30.0.100"].last_seen == NOW - timedelta(hours=3)
    assert "8.8.8.8" not in got and "203.0.113.7" not in got  # external
    assert "10.99.0.6" not in got  # only ever probed, never answered


def test_undeclared_services(world) -> None:
    store, inv = world
    got = {(s.asset_id, s.service): s for s in discovery.undeclared_services(store, inv, days=7, now=NOW)}
    assert set(got) == {("portal01", "tcp/80"), ("rtu01", "tcp/23"), ("adm01", "tcp/23")}
    assert got[("rtu01", "tcp/23")].protocol == "telnet" and got[("rtu01", "tcp/23")].connections == 1


def test_silent_assets(world) -> None:
    store, inv = world
    got = {s.asset_id: s for s in discovery.silent_assets(store, inv, days=7, now=NOW)}
    assert set(got) == {"hist01", "spare01"}
    assert got["hist01"].last_seen is None
    assert got["spare01"].last_seen == NOW - timedelta(days=10)


@pytest.mark.slow
def test_report_pdf_pages_render(world, tmp_path: Path) -> None:
    """PDF via weasyprint; pages converted to PNG with pdftoppm and looked at: A4
    landscape, not blank, and the text (Chinese included) is really in the PDF."""
    import subprocess

    from support import require_tool

    # make test installs weasyprint (test extra) and poppler-utils (system-deps); CI must not skip
    pdftoppm, pdftotext = require_tool("pdftoppm"), require_tool("pdftotext")
    from compliance.report import to_pdf

    store, inv = world
    pdf = to_pdf(build(store, inv, Config(), level=3, now=NOW))
    assert pdf.startswith(b"%PDF-")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    subprocess.run([pdftoppm, "-r", "40", "-png", str(path), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2
    import struct
    import zlib

    for png in pages:
        data = png.read_bytes()
        w, h = struct.unpack(">II", data[16:24])
        assert w > h  # landscape
        assert abs(w / h - 297 / 210) < 0.02  # A4
        # decode enough of the image to see that the page is not blank
        idat = b"".join(data[i + 8:i + 8 + struct.unpack(">I", data[i:i + 4])[0]]
                        for i in _chunks(data, b"IDAT"))
        raw = zlib.decompress(idat)
        assert raw.count(b"\xff") < 0.995 * len(raw), f"{png.name} is blank"
    text = subprocess.run([pdftotext, "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout
    for needle in ("GB/T 22239-2019 level 3", "CII-ZJ-EN-0001", "c-telnet-rtu", "8.1.4.1 c"):
        assert needle in text
    assert "省级电力调度控制系统" in text  # make test installs a CJK font (fonts-wqy-microhei)


def _chunks(data: bytes, kind: bytes):
    """Offsets of the length fields of the PNG chunks of ``kind``."""
    i = 8
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        if data[i + 4:i + 8] == kind:
            yield i
        i += 12 + n

