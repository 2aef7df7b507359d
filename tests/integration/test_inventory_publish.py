"""Cluster mode keeps the CII inventory on the search node: `taishi --mode cluster inventory import`
publishes it, `taishi inventory publish` replaces it, one document per asset."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "compliance"


def test_import_in_cluster_mode_publishes_the_assets(search_node, require_module, tmp_path):
    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")
    from compliance.inventory import Inventory
    from taishi.cli import main
    from taishi.cluster.search import SearchStore

    prefix = f"invtest-{uuid.uuid4().hex[:8]}"
    cfg_file = tmp_path / "taishi.yaml"
    cfg_file.write_text(yaml.safe_dump({"mode": "cluster", "data_dir": str(tmp_path / "data"), "cluster": {
        "search": {"url": search_node["url"], "flavor": search_node["flavor"], "index_prefix": prefix}}}))
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(cfg_file), "inventory", "import", str(DATA / "inventory.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    inv = Inventory.open(tmp_path / "data")
    assert inv.assets and json.loads(res.output)["published"] == len(inv.assets)

    search = SearchStore(search_node["url"], search_node["flavor"], index_prefix=prefix)
    idx = f"{prefix}-assets"
    try:
        search._req("POST", f"/{idx}/_refresh")
        hits = search._req("POST", f"/{idx}/_search", {"size": 1000})["hits"]["hits"]
        by_id = {h["_id"]: h["_source"] for h in hits}
        assert set(by_id) == set(inv.assets)
        a = next(iter(inv.assets.values()))
        assert by_id[a.asset_id]["system"]["cii_id"] == a.system_id

        again = runner.invoke(main, ["--config", str(cfg_file), "inventory", "publish", "--json"])
        assert again.exit_code == 0, again.output
        assert json.loads(again.output) == {"index": idx, "documents": len(inv.assets)}
        search._req("POST", f"/{idx}/_refresh")
        assert search._req("POST", f"/{idx}/_count", {})["count"] == len(inv.assets)  # replaced, not added
    finally:
        search.drop_all()
        search.close()
