"""The CLI end to end on real samples: counts checked against independent counting."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from taishi.cli import main


def run(data_dir: Path, *args: str, code: int = 0):
    res = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


def run_json(data_dir: Path, *args: str):
    return json.loads(run(data_dir, *args).stdout)


def _zeek_records(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return sum(1 for line in f if line.strip() and not line.startswith("#"))


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> dict[str, Path]:
    return {
        "vertical": shared_data / "zeek/slips/port-scans/vertical/conn.log",
        "horizontal": shared_data / "zeek/slips/port-scans/horizontal/conn.log",
        "honeypot": shared_data / "zeek/stratosphere_sdt/006-ssh-honeypot",
        "eve": shared_data / "suricata/slips_test6-malicious.suricata.json",
        "eve_array": shared_data / "suricata/frank_samples/wrccdc-2017/alerts-only.json",
        "sshd": shared_data / "logs/loghub/OpenSSH/OpenSSH_2k.log",
        "dns_gz": shared_data / "zeek/wrccdc2018_zed/dns.json.gz",
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, samples: dict[str, Path]):
    d = tmp_path_factory.mktemp("data")
    summary = run_json(d, "ingest", "--json", *(str(p) for p in samples.values()))
    return d, summary


def test_every_record_becomes_an_ecs_event(ingested, samples) -> None:
    d, summary = ingested
    eve = _json_lines(samples["eve"])
    expected = {
        "zeek.conn": _zeek_records(samples["vertical"]) + _zeek_records(samples["horizontal"])
        + _zeek_records(samples["honeypot"] / "conn.log"),
        "zeek.ssh": _zeek_records(samples["honeypot"] / "ssh.log"),
        "zeek.dns": _zeek_records(samples["dns_gz"]),
        "system.auth": sum(1 for l in samples["sshd"].read_text().splitlines() if l.strip()),
    }
    by_type: dict[str, int] = {}
    for rec in eve:
        by_type[f"suricata.{rec['event_type']}"] = by_type.get(f"suricata.{rec['event_type']}", 0) + 1
    by_type["suricata.alert"] += len(json.loads(samples["eve_array"].read_text()))
    expected.update(by_type)
    got = summary["events_by_dataset"]
    # loghub's OpenSSH sample is all sshd: every line is an authentication-log event
    assert got == expected
    assert summary["events"] == sum(expected.values()) == summary["store"]["events"]
    assert summary["deadletters"] == 0


def test_events_keep_raw_record_and_ecs_fields(ingested) -> None:
    d, _ = ingested
    rows = run_json(d, "search", 'event.dataset:zeek.ssh AND event.outcome:failure', "--json", "--limit", "100")
    assert rows, "the honeypot ssh.log has failed authentications"
    for r in rows:
        assert r["source.ip"] and r["destination.port"] == 902
        assert "\tF\t" in r["event.original"]  # auth_success column is F in the raw TSV
    dns = run_json(d, "search", "dns.question.name:ise.wrccdc.org", "--json", "--limit", "5")
    assert dns and all(r["dns.question.name"] == "ise.wrccdc.org" for r in dns)


def test_port_scans_in_the_slips_captures_raise_the_expected_alerts(ingested) -> None:
    d, _ = ingested
    # ground truth from the Slips integration tests quoted in MANIFEST.md
    vertical = run_json(d, "alerts", 'rule.name:"Network Port Scan From a Single Source"', "--since", "all", "--json")
    assert {(a["source.ip"], a["destination.ip"]) for a in vertical} == {("192.168.1.9", "45.33.32.156")}
    horizontal = run_json(d, "alerts", "rule.name:Horizontal*", "--since", "all", "--json")
    assert [(a["source.ip"], a["destination.port"]) for a in horizontal] == [("10.0.2.112", 80)]


def test_alert_json_carries_the_ecs_contract(ingested) -> None:
    d, _ = ingested
    alerts = run_json(d, "alerts", "--since", "all", "--json", "--limit", "1000")
    assert alerts
    for a in alerts:
        for key in ("id", "rule.id", "rule.name", "rule.level", "threat.technique.id", "threat.tactic.name",
                    "@timestamp", "event.ids"):
            assert key in a, (key, a)
        assert "source.ip" in a or "destination.ip" in a
        datetime.fromisoformat(a["@timestamp"].replace("Z", "+00:00"))
    # every alert's events exist in the store
    some = alerts[0]
    evs = run_json(d, "search", " OR ".join(f'event.id:"{i}"' for i in some["event.ids"][:20]), "--json")
    assert {e["event.id"] for e in evs} == set(some["event.ids"][:20])


def _event_count_alerts(times: list[float], threshold: int, span: float) -> int:
    """Independent model of an event_count rule with one alert per burst:
    a sliding window of `span` seconds (both ends included) fires at
    `threshold` events; the fired alert then absorbs the group's events until
    one comes `span` or more after the previous, which starts afresh."""
    alerts, window, open_burst, last = 0, [], False, None
    for t in sorted(times):
        if open_burst:
            if t - last >= span:
                open_burst, window = False, []
            else:
                last = t
                continue
        window = [w for w in window if t - w <= span] + [t]
        if len(window) >= threshold:
            alerts, open_burst, window = alerts + 1, True, []
        last = t
    return alerts


def test_ssh_brute_force_alerts_match_an_independent_count(ingested) -> None:
    d, _ = ingested
    failures = run_json(d, "search", "event.dataset:system.auth AND process.name:sshd AND event.outcome:failure "
                        "AND event.category:authentication", "--json", "--limit", "100000")
    per_ip: dict[str, list[float]] = {}
    for e in failures:
        if e.get("source.ip"):
            ts = datetime.fromisoformat(e["@timestamp"].replace("Z", "+00:00")).timestamp()
            per_ip.setdefault(e["source.ip"], []).append(ts)
    expected = {ip: n for ip, ts in per_ip.items() if (n := _event_count_alerts(ts, 10, 300))}
    alerts = run_json(d, "alerts", 'rule.name:"SSH Password Brute Force From One Source (sshd auth log)"',
                      "--since", "all", "--json", "--limit", "10000")
    got: dict[str, int] = {}
    for a in alerts:
        got[a["source.ip"]] = got.get(a["source.ip"], 0) + 1
    assert expected, "loghub's sshd sample contains brute force"
    assert got == expected


def test_reingest_stores_nothing_twice(ingested, samples) -> None:
    d, summary = ingested
    again = run_json(d, "ingest", "--json", "--from-start", str(samples["sshd"]))
    assert again["events"] == 2000
    assert again["events_stored"] == 0 and again["alerts_stored"] == 0
    resumed = run_json(d, "ingest", "--json", str(samples["sshd"]))
    assert resumed["records"] == 0, "without --from-start a finished file resumes at its end"


def test_bad_input_is_dead_lettered_with_reason(tmp_path: Path) -> None:
    d = tmp_path / "data"
    bad = tmp_path / "eve.json"
    good = {"timestamp": "2024-01-01T00:00:00+0000", "event_type": "flow", "src_ip": "10.0.0.1", "dest_ip": "10.0.0.2",
            "src_port": 1, "dest_port": 2, "proto": "TCP"}
    bad.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good | {"src_port": 3}) + "\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01\x02 nothing anyone can parse \xff\xfe")
    summary = run_json(d, "ingest", "--json", str(bad), str(blob))
    assert summary["events"] == 2
    assert summary["deadletters"] == 2
    dl = run_json(d, "deadletters", "--json")
    by_source = {r["taishi.source"]: r for r in dl}
    assert by_source["eve.json"]["log.offset"] == len(json.dumps(good)) + 1
    assert "JSON" in by_source["eve.json"]["reason"] and by_source["eve.json"]["event.original"] == "{not json"
    assert by_source["blob.bin"]["stage"] == "read" and "unknown format" in by_source["blob.bin"]["reason"]


@pytest.mark.parametrize("query", ['source.ip:"1\' OR 1=1 --"', "'; DROP TABLE alerts; --", 'rule.id") OR 1=1 --:x'])
def test_hostile_queries_do_no_harm(ingested, query: str) -> None:
    d, summary = ingested
    res = CliRunner().invoke(main, ["--data-dir", str(d), "alerts", query, "--since", "all", "--json"])
    assert res.exit_code in (0, 2)
    if res.exit_code == 0:
        assert json.loads(res.stdout) == []
    status = run_json(d, "status", "--json")
    assert status["store"]["events"] == summary["store"]["events"]
    assert status["store"]["alerts"] == summary["store"]["alerts"]


def test_demo_raises_alerts_for_every_stage(tmp_path: Path) -> None:
    out = run_json(tmp_path / "data", "demo", "--json")
    stages = out["stages"]
    assert [s["name"] for s in stages][:2] == ["reconnaissance", "ssh_brute_force"]
    assert [s["name"] for s in stages][-1] == "dns_tunnel_exfiltration"
    for s in stages:
        assert s["alerts"] > 0, f"stage {s['name']} raised no alert"
        assert s["rules"], s
    assert out["deadletters"] == 0 and out["late_events"] == 0
    # every alert's time lies within the campaign day and is ordered like the stages
    first = [min(a["@timestamp"] for a in run_json(tmp_path / "data", "alerts", " OR ".join(
        f'rule.id:"{r}"' for r in s["expected_rules"]), "--since", "all", "--json")) for s in stages]
    assert first == sorted(first)


def test_appended_lines_are_read_once_and_a_replaced_file_is_read_afresh(tmp_path: Path) -> None:
    d = tmp_path / "data"
    log = tmp_path / "auth.log"
    line = "Nov 29 10:00:0{i} jump01 sshd[1{i}]: Failed password for root from 203.0.113.{i} port 22 ssh2\n"
    log.write_text("".join(line.format(i=i) for i in range(3)))
    assert run_json(d, "ingest", "--json", str(log))["events"] == 3
    with open(log, "a") as f:
        f.write(line.format(i=3))
    again = run_json(d, "ingest", "--json", str(log))
    assert again["records"] == 1 and again["events_stored"] == 1, "only the appended line"
    replacement = tmp_path / "auth.log.new"
    replacement.write_text(line.format(i=7) + line.format(i=8))
    replacement.replace(log)  # rotation: a new file under the old name
    rotated = run_json(d, "ingest", "--json", str(log))
    assert rotated["records"] == 2 and rotated["events_stored"] == 2
    assert run_json(d, "status", "--json")["store"]["events"] == 6


def test_logsource_tags_generic_json_events(tmp_path: Path) -> None:
    d = tmp_path / "data"
    f = tmp_path / "proc.json"
    f.write_text('{"@timestamp":"2026-11-29T10:00:00Z","Image":"C:\\\\Windows\\\\System32\\\\cmd.exe"}\n'
                 '{"@timestamp":"2026-11-29T10:00:01Z","Image":"C:\\\\Windows\\\\notepad.exe"}\n')
    run_json(d, "ingest", "--json", "--format", "json", "--logsource", "windows/process_creation/", str(f))
    tagged = run_json(d, "search", 'taishi.logsource:"windows/process_creation/"', "--json")
    assert len(tagged) == 2
    assert all('"Image"' in e["taishi.extra"] for e in tagged)
    bad = CliRunner().invoke(main, ["--data-dir", str(d), "ingest", "--logsource", "windows; rm -rf /", str(f)])
    assert bad.exit_code == 2 and "product/category/service" in bad.output


def test_rules_for_unmapped_logsources_match_fields_as_named_in_the_event(tmp_path: Path) -> None:
    """A Windows process-creation rule, unmodified, over exported JSON events."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "cmd.yml").write_text(
        "title: Cmd Launched\nid: 7a3bb0b1-3c2c-4d7e-9a3e-1f0a5c0e4b11\nlevel: medium\n"
        "logsource: {product: windows, category: process_creation}\n"
        "detection:\n  sel:\n    Image|endswith: '\\\\cmd.exe'\n    User.Domain: CORP\n  condition: sel\n"
    )
    f = tmp_path / "proc.json"
    f.write_text('{"@timestamp":"2026-11-29T10:00:00Z","Image":"C:\\\\Windows\\\\System32\\\\cmd.exe","User":{"Domain":"CORP"}}\n'
                 '{"@timestamp":"2026-11-29T10:00:01Z","Image":"C:\\\\Windows\\\\notepad.exe","User":{"Domain":"CORP"}}\n'
                 '{"@timestamp":"2026-11-29T10:00:02Z","Image":"C:\\\\Windows\\\\System32\\\\cmd.exe","User":{"Domain":"HOME"}}\n')
    d = tmp_path / "data"
    untagged = run_json(d, "--rules", str(rules), "ingest", "--json", "--format", "json", str(f))
    assert untagged["alerts"] == 0, "without the logsource tag the rule does not apply"
    tagged = run_json(tmp_path / "data2", "--rules", str(rules), "ingest", "--json", "--format", "json",
                      "--logsource", "windows/process_creation/", str(f))
    assert tagged["alerts_by_rule"] == {"Cmd Launched": 1}
