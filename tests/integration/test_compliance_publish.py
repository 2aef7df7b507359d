"""`taishi compliance publish`: the report's verdicts land on the real search node, once per
verdict and system, and publishing again replaces them instead of adding."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "compliance"


def test_publish_is_the_report_and_idempotent(search_node, require_module, tmp_path):
    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")
    from compliance.inventory import Inventory
    from compliance.report import build
    from taishi.cli import main
    from taishi.cluster.search import SearchStore
    from taishi.config import Config
    from taishi.schema import events_table
    from taishi.store import Store

    prefix = f"pubtest-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    cfg_file = tmp_path / "taishi.yaml"
    cfg_file.write_text(yaml.safe_dump({"data_dir": str(data), "cluster": {"search": {
        "url": search_node["url"], "flavor": search_node["flavor"], "index_prefix": prefix}}}))
    with Inventory.editing(data) as inv:
        assert inv.import_yaml(DATA / "inventory.yaml", who="test").ok
    now = datetime.now(timezone.utc)
    store = Store(data)
    store.write_events(events_table([{"event.id": "tel", "@timestamp": now - timedelta(hours=1),
                                      "event.dataset": "zeek.conn", "source.ip": "10.30.0.100",
                                      "destination.ip": "10.30.0.50", "destination.port": 23,
                                      "network.transport": "tcp", "network.protocol": "telnet",
                                      "event.action": "SF"}]))
    store.close()

    runner = CliRunner()
    args = ["--config", str(cfg_file), "compliance", "publish", "--json"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.output)
    search = SearchStore(search_node["url"], search_node["flavor"], index_prefix=prefix)
    idx = f"{prefix}-compliance"
    try:
        search._req("POST", f"/{idx}/_refresh")
        docs = [h["_source"] for h in search._req("POST", f"/{idx}/_search", {"size": 1000})["hits"]["hits"]]
        # the same verdicts as the report the CLI builds (independently rebuilt here)
        store = Store(data)
        try:
            rep = build(store, Inventory.open(data), Config(), level=3)
        finally:
            store.close()
        per_system = Counter((d["taishi.system.id"], d["compliance.verdict"]) for d in docs)
        assert per_system == Counter({(s, v): n for s, c in rep.summary.items() for v, n in c.items() if n})
        assert out["documents"] == len(docs) and out["index"] == idx
        telnet = [d for d in docs if d["compliance.check.id"] == "plaintext_management" and d["compliance.target"] == "rtu01"]
        assert [d["compliance.verdict"] for d in telnet] == ["fail"]
        assert "telnet" in telnet[0]["compliance.evidence.query"]

        second = runner.invoke(main, args)
        assert second.exit_code == 0, second.output
        search._req("POST", f"/{idx}/_refresh")
        assert search._req("POST", f"/{idx}/_count", {})["count"] == len(docs)
    finally:
        search.drop_all()
        search.close()
