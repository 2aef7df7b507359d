"""``taishi inventory import|export|list`` and ``taishi compliance report|discover``."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner

from taishi.cli import main
from taishi.schema import events_table
from taishi.store import Store

DATA = Path(__file__).parent / "data" / "compliance"


def _run(data_dir: Path, *args: str):
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def test_inventory_import_export_list(data_dir: Path) -> None:
    r = _run(data_dir, "inventory", "import", str(DATA / "inventory.yaml"), "--who", "auditor1", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["added"]) == 10
    r = _run(data_dir, "inventory", "import", str(DATA / "systems_mixed.csv"), "--kind", "system", "--json")
    assert r.exit_code == 1  # some rows rejected
    out = json.loads(r.output)
    assert sorted(out["added"]) == ["CII-A", "CII-G"]
    assert {"kind": "system", "row": 3, "field": "credit_code",
            "reason": "check character is B, should be A"} in out["errors"]
    r = _run(data_dir, "inventory", "list", "--json")
    systems = {s["cii_id"]: s for s in json.loads(r.output)}
    assert set(systems) == {"CII-A", "CII-G", "CII-ZJ-EN-0001", "CII-ZJ-EG-0002", "OA-ZJ-0003"}
    assert [a["asset_id"] for a in systems["CII-ZJ-EG-0002"]["assets"]] == ["jump01", "portal01"]
    r = _run(data_dir, "inventory", "export", "--format", "csv", "--kind", "asset")
    assert {row["asset_id"] for row in csv.DictReader(io.StringIO(r.output))} >= {"hmi01", "rtu01"}
    assert "CII-ZJ-EN-0001" in _run(data_dir, "inventory", "export").output
    changes = (data_dir / "compliance" / "inventory_changes.jsonl").read_text().splitlines()
    assert json.loads(changes[0])["who"] == "auditor1"


def test_compliance_report_and_discover(data_dir: Path, tmp_path: Path) -> None:
    assert _run(data_dir, "inventory", "import", str(DATA / "inventory.yaml")).exit_code == 0
    now = datetime.now(timezone.utc)
    with Store(data_dir) as store:
        store.write_events(events_table([
            {"event.id": "t1", "@timestamp": now - timedelta(hours=1), "event.dataset": "zeek.conn",
             "source.ip": "10.30.0.100", "destination.ip": "10.30.0.50", "destination.port": 23,
             "network.transport": "tcp", "network.protocol": "telnet", "event.action": "SF"},
        ]))
    r = _run(data_dir, "compliance", "report", "--level", "3", "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    rtu = next(x for x in rows if x["check_id"] == "plaintext_management" and x["target"] == "rtu01")
    assert rtu["verdict"] == "fail" and rtu["sample_event_ids"] == "t1"
    out = tmp_path / "r.html"
    r = _run(data_dir, "compliance", "report", "--system", "CII-ZJ-EN-0001", "--format", "html", "-o", str(out))
    assert r.exit_code == 0 and "c-telnet" not in out.read_text() and "t1" in out.read_text()
    assert _run(data_dir, "compliance", "report", "--system", "NOPE").exit_code == 2
    r = _run(data_dir, "compliance", "discover", "--json")
    d = json.loads(r.output)
    assert [h["ip"] for h in d["unknown_hosts"]] == ["10.30.0.100"]
    assert [(s["asset_id"], s["service"]) for s in d["undeclared_services"]] == [("rtu01", "tcp/23")]
