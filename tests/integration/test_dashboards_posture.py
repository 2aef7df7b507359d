"""`taishi dashboards posture`: the posture index series on the real search node, as the
overview's posture panel reads it. The expected index is worked out here from the formula
in taishi/posture.py (weights x protection level, 6 h half-life, 100 exp(-P/30))."""

from __future__ import annotations

import json
import math
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import dashboards as D

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "compliance"


def test_posture_series_and_the_overview_panel(search_node, require_module, tmp_path):
    require_module("opensearchpy" if search_node["flavor"] == "opensearch" else "elasticsearch")
    from compliance.inventory import Inventory
    from taishi.cli import main
    from taishi.cluster.search import SearchStore
    from taishi.schema import alerts_table

    prefix = f"posttest-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    cfg = tmp_path / "taishi.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(data), "cluster": {"search": {
        "url": search_node["url"], "flavor": search_node["flavor"], "index_prefix": prefix}}}))
    with Inventory.editing(data) as inv:
        assert inv.import_yaml(DATA / "inventory.yaml", who="test").ok
    now = datetime.now(timezone.utc)
    # (level, source, destination, age): hmi01 is in a level-4 system, portal01 level 3, 10.99.0.5 unknown
    spec = [("critical", "203.0.113.50", "10.30.0.10", timedelta(hours=3)),
            ("high", "203.0.113.50", "10.10.1.10", timedelta(hours=1)),
            ("medium", "8.8.8.8", "10.99.0.5", timedelta(minutes=30))]
    weight = {"critical": 15 * 1.5, "high": 7 * 1.0, "medium": 3 * 1.0}
    rows = [{"id": f"p{i}", "@timestamp": now - age, "event.kind": "alert", "rule.id": "r", "rule.name": "r",
             "rule.level": lvl, "source.ip": s, "destination.ip": d} for i, (lvl, s, d, age) in enumerate(spec)]
    search = SearchStore(search_node["url"], search_node["flavor"], index_prefix=prefix)
    try:
        search.write_alerts(alerts_table(rows))
        res = CliRunner().invoke(main, ["--config", str(cfg), "dashboards", "posture", "--since", "6h",
                                        "--step", "15m", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["points"] > 0
        search.refresh_indices()
        idx = search.index_name("posture")
        pts = [h["_source"] for h in search._req("POST", f"/{idx}/_search", {
            "size": 1000, "query": {"term": {"scope": "overall"}}})["hits"]["hits"]]
        assert len(pts) >= 24  # 6 h in 15 min steps (+ now)

        def expected(t: datetime) -> float:
            p = sum(weight[lvl] * 2 ** (-((t - (now - age)).total_seconds()) / (6 * 3600))
                    for lvl, _, _, age in spec if now - age <= t)
            return round(100 * math.exp(-p / 30), 1)

        for p in pts:
            t = datetime.fromisoformat(p["@timestamp"].replace("Z", "+00:00"))
            assert p["index"] == pytest.approx(expected(t), abs=0.11), p
        assert min(p["index"] for p in pts) < 60  # the critical alert on a level-4 asset weighs

        # the overview's posture panel: hourly averages of those points
        dash = D.load("overview")
        panel = next(p for p in D.panels(dash) if p["title"].startswith("Posture index 态势指数"))
        end = int(now.timestamp() * 1000) + 60_000
        start = end - 6 * 3_600_000
        (req,) = D.panel_requests(dash, panel, start=start, end=end, interval="1h", prefix=prefix)
        got = D.rows(req["target"], search._req("POST", f"/{req['index']}/_search", req["body"]))
        by_hour = defaultdict(list)
        for p in pts:
            ms = int(datetime.fromisoformat(p["@timestamp"].replace("Z", "+00:00")).timestamp() * 1000)
            if start <= ms <= end:
                by_hour[ms // 3_600_000 * 3_600_000].append(p["index"])
        want = {h: sum(v) / len(v) for h, v in by_hour.items()}
        assert {r["@timestamp"]: r["Average index"] for r in got if r["Average index"] is not None} == \
            pytest.approx(want)
    finally:
        search.drop_all()
        search.close()
