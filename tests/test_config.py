"""Configuration: defaults, taishi.yaml, flags — and the CLI honouring them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from taishi import config
from taishi.cli import main


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAISHI_CONFIG", raising=False)
    monkeypatch.delenv("TAISHI_DATA_DIR", raising=False)
    cfg = config.load()
    assert cfg.mode == "embedded"
    assert cfg.data_dir == Path("taishi-data")
    assert cfg.rules == [config.DEFAULT_RULES] and config.DEFAULT_RULES.is_dir()
    assert cfg.retention_days["events"] >= 180  # Cybersecurity Law art. 21: six months


def test_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "taishi.yaml"
    f.write_text("data_dir: store\nrules: [r1, /abs/r2]\nretention_days: {events: 200}\napi: {port: 9000}\n")
    cfg = config.load(f)
    assert cfg.data_dir == (tmp_path / "store").resolve()
    assert cfg.rules == [(tmp_path / "r1").resolve(), Path("/abs/r2")]
    assert cfg.retention_days == {"events": 200, "alerts": 365, "deadletters": 30}
    assert cfg.api_port == 9000
    over = config.load(f, data_dir=tmp_path / "x", mode="cluster")
    assert over.data_dir == tmp_path / "x" and over.mode == "cluster"


@pytest.mark.parametrize("text, msg", [
    ("colour: blue\n", "unknown setting"),
    ("mode: turbo\n", "mode must be one of"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, msg: str) -> None:
    f = tmp_path / "taishi.yaml"
    f.write_text(text)
    with pytest.raises(config.ConfigError, match=msg):
        config.load(f)


def test_cli_reads_taishi_yaml_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAISHI_CONFIG", raising=False)
    rules = tmp_path / "myrules"
    rules.mkdir()
    (rules / "one.yml").write_text(
        "title: Telnet seen\nid: 0f6a3a52-6a43-4a0e-9a57-3f2b9a1f7c11\nlevel: low\n"
        "logsource: {product: zeek, service: conn}\n"
        "detection: {sel: {destination.port: 23}, condition: sel}\n"
    )
    (tmp_path / "taishi.yaml").write_text(
        "data_dir: d\nrules: [myrules]\ncluster: {search: {url: 'http://127.0.0.1:9'}}\n")
    res = CliRunner().invoke(main, ["rules", "list", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["title"] for r in json.loads(res.stdout)] == ["Telnet seen"]
    # --mode overrides the file's (default) mode, and cluster mode reads the file's cluster section:
    # the search node it names (a closed port here) is the one asked.
    res = CliRunner().invoke(main, ["--mode", "cluster", "alerts"])
    assert res.exit_code != 0
    assert "no search node answers at http://127.0.0.1:9" in " ".join(res.output.split())


def test_rules_commands_exit_codes(tmp_path: Path) -> None:
    ok = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "rules", "test"])
    assert ok.exit_code == 0, ok.output
    assert " 0 failed" in ok.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.yml").write_text("title: x\nid: 5b0c2d1e-1111-4c1e-9a57-3f2b9a1f7c11\nlogsource: {product: zeek, service: conn}\n"
                               "detection: {sel: {destination.port|nosuchmodifier: 23}, condition: sel}\n")
    res = CliRunner().invoke(main, ["--data-dir", str(tmp_path), "--rules", str(bad), "rules", "check", "--json"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["loaded"] == 0 and (doc["failed"] or doc["issues"])
