"""`taishi dashboards push` up to the Grafana call: the flavor comes from the real search node,
and an unreachable Grafana is a clear error, not a traceback. (No Grafana server can be had
here -- see dashboards/README.md -- so the create/update decisions are unit-tested in
tests/test_dashboards.py.)"""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flavor_from_the_node(search_node):
    from taishi.cluster.grafana import detect_flavor

    flavor, version = detect_flavor(search_node["url"])
    assert flavor == search_node["flavor"]
    assert version.split(".")[0].isdigit()


def test_push_to_an_unreachable_grafana_fails_cleanly(search_node, require_module, tmp_path):
    require_module("grafana_client")
    from taishi.cli import main

    url = f"http://127.0.0.1:{_closed_port()}"
    res = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "dashboards", "push", "--grafana-url", url,
                                    "--search-url", search_node["url"], "--flavor", "auto"])
    assert res.exit_code == 1
    assert f"push to {url} failed" in res.output
    assert "Traceback" not in res.output
