"""``taishi demo`` end to end: it runs the campaign, says where to look, and serves a console whose
overview shows the campaign (checked through the same API the overview page draws from)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_serves_the_campaign(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "taishi.yaml"
    cfg.write_text(f"data_dir: data\napi: {{host: 127.0.0.1, port: {port}}}\n", encoding="utf-8")
    token = "demo-admin-token-" + "x" * 24
    env = {**os.environ, "TAISHI_ADMIN_TOKEN": token, "COLUMNS": "400", "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from taishi.cli import main; main()", "--config", str(cfg), "demo"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while not any("Taishi console at" in line for line in out):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(out)
            assert time.monotonic() < deadline, "".join(out)
            out.append(line)
        text = "".join(out)
        # it says where to look: the overview, the incidents and the assets pages of this server
        assert f"http://127.0.0.1:{port}/#/overview" in text
        assert f"http://127.0.0.1:{port}/#/incidents" in text
        assert re.search(r"CII inventory: \d+ systems and assets", text)
        h = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(base + "/api/v1/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert "<title>" in httpx.get(base + "/", timeout=10).text
        ov = httpx.get(base + "/api/v1/views/overview?since=24h", headers=h, timeout=120).json()
        assert ov["totals"]["alerts"] >= 20 and ov["alerts_by_level"]["high"] >= 1
        assert ov["top_sources"][0]["ip"] == "203.0.113.50"  # the campaign's attacker
        assert min(p["index"] for p in ov["posture"]["series"]) < 50  # the campaign pushed the index down
        assert {t["tactic"] for t in ov["attack_matrix"]["tactics"]} >= {"Reconnaissance", "Credential Access",
                                                                        "Lateral Movement", "Exfiltration"}
        assert ov["totals"]["assets"] == 13
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
