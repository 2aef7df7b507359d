"""The demo campaign (taishi.demo) and the rule set it exercises (rules/sigma).

* generation is deterministic and fast, every file is well-formed in its real
  format, the manifest is consistent with what the logs say;
* every rule file loads with pySigma, carries the metadata we require, and has
  tests beside it (run through the real engine when it is importable);
* end to end: generate -> parse every file -> detect -> each stage's expected
  rules fire inside the stage's window and nothing fires on the background.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from taishi.demo import (
    FILES,
    HOSTS,
    RULE_IDS,
    ZEEK_FIELDS,
    CampaignManifest,
    default_start,
    generate_campaign,
)

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules" / "sigma"
START = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)
ZEEK_LOGS = [f"{p}.log" for p in ZEEK_FIELDS]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> tuple[Path, CampaignManifest]:
    out = tmp_path_factory.mktemp("campaign")
    return out, generate_campaign(out, seed=7, start=START)


def _parse_iso(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------
# determinism, speed


def _read_all(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in (*FILES, "campaign.json")}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate_campaign(tmp_path / "a", seed=11, start=START)
    generate_campaign(tmp_path / "b", seed=11, start=START)
    assert _read_all(tmp_path / "a") == _read_all(tmp_path / "b")


def test_different_seed_differs(tmp_path: Path) -> None:
    generate_campaign(tmp_path / "a", seed=1, start=START)
    generate_campaign(tmp_path / "b", seed=2, start=START)
    a, b = _read_all(tmp_path / "a"), _read_all(tmp_path / "b")
    for name in FILES:
        assert a[name] != b[name], name


def test_different_start_shifts_time(tmp_path: Path) -> None:
    m1 = generate_campaign(tmp_path / "a", seed=7, start=START)
    m2 = generate_campaign(tmp_path / "b", seed=7, start=START + timedelta(days=3))
    assert _parse_iso(m2.stages[0].start) - _parse_iso(m1.stages[0].start) == timedelta(days=3)


def test_default_start_puts_the_capture_in_the_last_20_hours() -> None:
    now = datetime(2026, 11, 29, 9, 41, 17, tzinfo=timezone.utc)
    assert default_start(now) == datetime(2026, 11, 28, 13, 0, tzinfo=timezone.utc)
    assert default_start(datetime(2027, 1, 1, 0, 5, tzinfo=timezone.utc)) == datetime(2026, 12, 31, 4, 0, tzinfo=timezone.utc)


def test_default_start_used_when_none(tmp_path: Path) -> None:
    m = generate_campaign(tmp_path, seed=7)
    assert _parse_iso(m.start) == default_start()


# ---------------------------------------------------------------------------
# file formats

ZEEK_HEADER = [
    re.compile(r"^#separator \\x09$"),
    re.compile(r"^#set_separator\t,$"),
    re.compile(r"^#empty_field\t\(empty\)$"),
    re.compile(r"^#unset_field\t-$"),
    re.compile(r"^#path\t(?P<path>\w+)$"),
    re.compile(r"^#open\t\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d$"),
    re.compile(r"^#fields\t"),
    re.compile(r"^#types\t"),
]


@pytest.mark.parametrize("name", ZEEK_LOGS)
def test_zeek_tsv_well_formed(campaign, name: str) -> None:
    out, _ = campaign
    lines = (out / name).read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "file ends with a newline"
    lines = lines[:-1]
    for rx, line in zip(ZEEK_HEADER, lines[:8]):
        assert rx.match(line), (rx.pattern, line)
    assert lines[4] == f"#path\t{name[:-4]}"
    fields = lines[6].split("\t")[1:]
    types = lines[7].split("\t")[1:]
    assert len(fields) == len(types) and fields[:2] == ["ts", "uid"]
    assert fields == [f for f, _ in ZEEK_FIELDS[name[:-4]]]
    assert re.match(r"^#close\t\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d$", lines[-1])
    data = lines[8:-1]
    assert data, "has records"
    last = 0.0
    for line in data:
        assert not line.startswith("#")
        cols = line.split("\t")
        assert len(cols) == len(fields), line
        assert all(c != "" for c in cols), "empty strings are written as (empty)"
        ts = float(cols[0])
        assert ts >= last, "sorted by ts"
        last = ts
        assert re.match(r"^C[0-9A-Za-z]{17}$", cols[1])
        row = dict(zip(fields, cols))
        for f, t in zip(fields, types):
            v = row[f]
            if v in ("-", "(empty)"):
                continue
            if t == "port" or t == "count":
                assert v.isdigit(), (f, v)
            elif t == "bool":
                assert v in ("T", "F"), (f, v)
            elif t == "addr":
                assert re.match(r"^\d{1,3}(\.\d{1,3}){3}$", v), (f, v)
            elif t in ("time", "interval"):
                assert re.match(r"^\d+\.\d{6}$", v), (f, v)


def test_zeek_uids_join_to_conn(campaign) -> None:
    out, _ = campaign

    def uids(name: str) -> set[str]:
        return {
            ln.split("\t")[1]
            for ln in (out / name).read_text().splitlines()
            if not ln.startswith("#")
        }

    conn = uids("conn.log")
    for name in ("dns.log", "http.log", "ssl.log", "ssh.log"):
        assert uids(name) <= conn, name


def test_eve_json_well_formed(campaign) -> None:
    out, _ = campaign
    seen: set[str] = set()
    for line in (out / "eve.json").read_text(encoding="utf-8").splitlines():
        ev = json.loads(line)
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000$", ev["timestamp"])
        for k in ("flow_id", "event_type", "src_ip", "src_port", "dest_ip", "dest_port", "proto"):
            assert k in ev, (k, ev)
        et = ev["event_type"]
        seen.add(et)
        assert et in ev if et != "flow" else "flow" in ev
        if et == "alert":
            a = ev["alert"]
            assert {"action", "gid", "signature_id", "rev", "signature", "category", "severity"} <= set(a)
        if et == "dns":
            assert ev["dns"]["type"] in ("query", "answer") and ev["dns"]["rrname"]
    assert seen == {"alert", "flow", "dns", "tls"}


SYSLOG = re.compile(
    r"^(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 1-3]\d \d\d:\d\d:\d\d "
    r"(?P<host>[a-z0-9-]+) (?P<tag>[A-Za-z0-9_.()/-]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*\S)$"
)


def test_auth_log_rfc3164(campaign) -> None:
    out, _ = campaign
    lines = (out / "auth.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) > 100
    hosts = set()
    for line in lines:
        m = SYSLOG.match(line)
        assert m, line
        hosts.add(m["host"])
    assert {"jump01", "portal01"} <= hosts


def test_background_volume_and_spread(campaign) -> None:
    out, m = campaign
    total = sum(
        sum(1 for ln in (out / n).read_text().splitlines() if not ln.startswith("#")) for n in FILES
    )
    assert total > 5000
    hours = {
        datetime.fromtimestamp(float(ln.split("\t")[0]), tz=timezone.utc).hour
        for ln in (out / "conn.log").read_text().splitlines()
        if not ln.startswith("#")
    }
    assert len(hours) >= 15, "background spread over the day"


# ---------------------------------------------------------------------------
# manifest vs. logs


def test_manifest_consistent(campaign) -> None:
    out, m = campaign
    assert json.loads((out / "campaign.json").read_text()) == json.loads(m.to_json())
    assert m.files == [str(out / f) for f in FILES] and all(Path(f).is_file() for f in m.files)
    assert json.loads((out / "campaign.json").read_text())["files"] == list(FILES)
    assert m.stages[0].attacker == "203.0.113.50" and m.stages[0].expected_rules == m.stages[0].expected_rule_ids
    assert [s.name for s in m.stages] == [
        "reconnaissance", "ssh_brute_force", "valid_account_login", "lateral_movement",
        "cleartext_admin_login", "ot_access", "dns_tunnel_exfiltration",
    ]
    lo, hi = _parse_iso(m.start), _parse_iso(m.end)
    prev_end = lo
    for s in m.stages:
        start, end = _parse_iso(s.start), _parse_iso(s.end)
        assert prev_end < start < end < hi, s.name  # in order, each at a distinct time
        prev_end = end
        assert re.match(r"^T\d{4}(\.\d{3})?$", s.technique)
        assert s.expected_rule_ids and set(s.expected_rule_ids) <= set(RULE_IDS.values())
        assert set(s.files) <= set(FILES)
        assert all(HOSTS[h] in s.victim_ips for h in s.victim_hosts)
    fired = {r for s in m.stages for r in s.expected_rule_ids}
    assert fired == set(RULE_IDS.values()), "every campaign rule is expected somewhere"


def _records_in(out: Path, name: str, lo: datetime, hi: datetime, year: int) -> list[str]:
    """Raw lines of ``name`` whose own timestamp lies in [lo, hi]."""
    keep = []
    for line in (out / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        if name.endswith(".log") and name != "auth.log":
            t = datetime.fromtimestamp(float(line.split("\t", 1)[0]), tz=timezone.utc)
        elif name == "eve.json":
            ev = json.loads(line)
            if ev["event_type"] == "flow":  # written at flow timeout; use when the flow started
                t = datetime.fromisoformat(ev["flow"]["start"])
            else:
                t = datetime.fromisoformat(ev["timestamp"])
        else:
            t = datetime.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S").replace(tzinfo=timezone.utc)
        if lo <= t <= hi:
            keep.append(line)
    return keep


def test_stage_addresses_appear_in_logs(campaign) -> None:
    out, m = campaign
    for s in m.stages:
        lo, hi = _parse_iso(s.start), _parse_iso(s.end)
        seen_victims: set[str] = set()
        for name in s.files:
            lines = _records_in(out, name, lo, hi, lo.year)
            assert lines, (s.name, name)
            att = [ln for ln in lines if any(a in ln for a in s.attacker_ips)]
            assert att, f"{s.name}: no attacker address in {name}"
            if name == "auth.log":
                assert any(any(f" {h} " in ln for h in s.victim_hosts) for ln in att), (s.name, name)
                seen_victims |= {HOSTS[h] for h in s.victim_hosts if any(f" {h} " in ln for ln in att)}
            else:
                hit = {v for v in s.victim_ips if any(v in ln for ln in att)}
                assert hit, f"{s.name}: attacker lines in {name} name no victim"
                seen_victims |= hit
        assert seen_victims == set(s.victim_ips), (s.name, set(s.victim_ips) - seen_victims)


def test_story_details(campaign) -> None:
    out, m = campaign
    auth = (out / "auth.log").read_text()
    assert re.search(r" jump01 sshd\[\d+\]: Accepted password for ops from 203\.0\.113\.50 port \d+ ssh2$", auth, re.M)
    assert len(re.findall(r"Failed password for .* from 203\.0\.113\.50 port \d+ ssh2", auth)) >= 30
    assert re.search(r" jump01 sudo: +ops : TTY=pts/\d ; PWD=/home/ops ; USER=root ; COMMAND=/bin/bash$", auth, re.M)
    ssl = (out / "ssl.log").read_text()
    assert re.search(r"\t10\.30\.0\.10\t443\tTLSv10\tTLS_RSA_WITH_RC4_128_SHA\t", ssl)
    dns = [ln.split("\t") for ln in (out / "dns.log").read_text().splitlines() if "exfil-cdn.net" in ln]
    assert len(dns) >= 100 and {c[13] for c in dns} == {"TXT", "NULL"}
    assert all(len(c[9].split(".")[0]) >= 40 for c in dns)
    http = (out / "http.log").read_text()
    assert re.search(r"\toa\.pdc\.local\t/admin/.*\tadmin\tPdc@2024\t", http)
    eve = (out / "eve.json").read_text()
    assert '"signature":"ET SCAN NMAP -sS window 1024"' in eve


# ---------------------------------------------------------------------------
# rules

ALLOWED_MODIFIERS = {"contains", "startswith", "endswith", "re", "cidr", "exists", "gte", "lte", "gt", "lt", "all"}
ALLOWED_LOGSOURCES = {
    ("zeek", None, "conn"), ("zeek", None, "dns"), ("zeek", None, "http"), ("zeek", None, "ssl"),
    ("zeek", None, "ssh"), ("zeek", None, "notice"), ("zeek", None, "weird"), ("zeek", None, "x509"),
    ("linux", None, "auth"), ("linux", None, "sshd"), ("linux", None, "sudo"),
    (None, "dns", None), ("suricata", None, None),
}


def _rule_files() -> list[Path]:
    return sorted(p for p in RULES.rglob("*.yml") if not p.name.endswith(".tests.yml"))


def test_rule_files_exist() -> None:
    files = _rule_files()
    assert len(files) >= 15
    assert {p.parent.name for p in files} >= {"network", "linux", "dns", "ids"}


@pytest.mark.parametrize("path", _rule_files(), ids=lambda p: p.name)
def test_rule_file_valid(path: Path) -> None:
    from sigma.collection import SigmaCollection
    from sigma.correlations import SigmaCorrelationRule
    from sigma.modifiers import modifier_mapping
    from sigma.rule import SigmaDetection, SigmaRule

    text = path.read_text(encoding="utf-8")
    coll = SigmaCollection.from_yaml(text)
    coll.resolve_rule_references()  # correlation references resolve within the file
    assert not coll.errors, coll.errors
    docs = [d for d in yaml.safe_load_all(text) if d]
    corrs = [r for r in coll.rules if isinstance(r, SigmaCorrelationRule)]
    rules = [r for r in coll.rules if isinstance(r, SigmaRule)]
    assert len(corrs) <= 1 and rules
    primary = corrs[0] if corrs else rules[0]
    if not corrs:
        assert len(rules) == 1, "one detection per file"
    # metadata of the rule that alerts
    pdoc = next(d for d in docs if str(d.get("id")) == str(primary.id))
    for key in ("title", "id", "status", "description", "author", "date", "tags", "falsepositives", "level"):
        assert pdoc.get(key), f"{path.name}: missing {key}"
    assert pdoc["author"] == "Taishi"
    assert pdoc["level"] in ("informational", "low", "medium", "high", "critical")
    tags = [str(t) for t in primary.tags]
    tactics = [t.split(".", 1)[1] for t in tags if t.startswith("attack.") and not re.match(r"^attack\.t\d{4}", t)]
    techniques = [t for t in tags if re.match(r"^attack\.t\d{4}(\.\d{3})?$", t)]
    assert tactics and techniques, tags
    assert path.name.startswith(tactics[0].replace("-", "_") + "_"), "file name starts with the first tactic"
    # correlation shape
    if corrs:
        c = corrs[0]
        assert c.type.name.lower() in ("event_count", "value_count")
        assert c.group_by and c.timespan and c.condition
        assert "generate" not in pdoc
        names = {d.get("name") for d in docs if "detection" in d}
        assert {ref.reference for ref in c.rules} <= names, "base rules are in the same file, by name"
        assert path.stem.endswith(c.type.name.lower()), "correlation files are named after their type"
    # detection rules: logsource and constructs
    allowed = {modifier_mapping[m] for m in ALLOWED_MODIFIERS if m in modifier_mapping}
    for r in rules:
        ls = (r.logsource.product, r.logsource.category, r.logsource.service)
        assert ls in ALLOWED_LOGSOURCES, ls

        def walk(d):
            for item in d.detection_items:
                if isinstance(item, SigmaDetection):
                    yield from walk(item)
                else:
                    yield item

        for det in r.detection.detections.values():
            for item in walk(det):
                assert item.field and ("." in item.field or item.field.startswith("@")), "ECS field names"
                assert set(item.modifiers) <= allowed, (item.field, item.modifiers)
    # tests beside the rule
    tests = path.with_name(path.stem + ".tests.yml")
    assert tests.is_file(), f"missing {tests.name}"
    spec = yaml.safe_load(tests.read_text(encoding="utf-8"))
    assert spec.get("match") and spec.get("no_match")


def test_rule_ids_unique_and_cover_campaign() -> None:
    ids: list[str] = []
    names: list[str] = []
    for p in _rule_files():
        for d in yaml.safe_load_all(p.read_text(encoding="utf-8")):
            if d:
                ids.append(str(d["id"]))
                if d.get("name"):
                    names.append(d["name"])
    assert len(ids) == len(set(ids)), "rule ids are unique"
    assert len(names) == len(set(names)), "rule names are unique across the rule set"
    assert all(re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", i) for i in ids)
    assert set(RULE_IDS.values()) <= set(ids)


def test_whole_rule_set_loads_with_pysigma() -> None:
    from sigma.collection import SigmaCollection

    coll = SigmaCollection.load_ruleset([str(p) for p in _rule_files()])
    assert not coll.errors
    assert len(coll.rules) >= 22


def test_rule_tests_pass_on_engine() -> None:
    rule_tests = pytest.importorskip("detect.rule_tests")
    results = rule_tests.run_rule_tests([RULES])
    failed = [r for r in results if not r.passed]
    assert results and not failed, "\n".join(f"{r.rule} {r.case}: {r.detail}" for r in failed)
    # every test file contributed cases
    assert {Path(r.rule).name for r in results} == {p.name for p in _rule_files()}


# ---------------------------------------------------------------------------
# end to end: the real parsers and engine on the campaign

SLACK = timedelta(minutes=5)


@pytest.mark.parametrize("seed", [7, 1234])
def test_campaign_end_to_end(tmp_path: Path, seed: int) -> None:
    pytest.importorskip("ingest.parsers.zeek")
    pytest.importorskip("ingest.parsers.suricata")
    pytest.importorskip("ingest.parsers.syslog")
    detect = pytest.importorskip("detect")
    import pyarrow as pa

    from ingest.files import read_records
    from ingest.parsers import parse
    from ingest.sniff import sniff
    from taishi.schema import conform

    # default start (yesterday): RFC 3164 lines carry no year, the parser infers it from "now"
    m = generate_campaign(tmp_path, seed=seed)
    fmts = {"conn.log": "zeek", "dns.log": "zeek", "http.log": "zeek", "ssl.log": "zeek",
            "ssh.log": "zeek", "eve.json": "suricata", "auth.log": "syslog"}
    tables = []
    for name in FILES:
        assert sniff(tmp_path / name) == fmts[name], name
        for raw in read_records(tmp_path / name, fmts[name]):
            r = parse(fmts[name], raw)
            assert r.deadletters.num_rows == 0, (name, r.deadletters.column("reason").to_pylist()[:3])
            tables.append(conform(r.events))
    events = pa.concat_tables(tables).sort_by("@timestamp")

    rs = detect.RuleSet.load([RULES])
    assert not [i for i in rs.check() if i.severity == "error"]
    det = detect.Detector(rs, allowed_lateness_s=3600)
    alerts = pa.concat_tables([det.process(events).alerts, det.flush().alerts]).to_pylist()
    assert alerts

    windows = [(s, _parse_iso(s.start), _parse_iso(s.end) + SLACK) for s in m.stages]
    fired: dict[str, set[str]] = {s.name: set() for s in m.stages}
    stray = []
    for a in alerts:
        ts = a["@timestamp"]
        stage = next((s for s, lo, hi in windows if lo <= ts <= hi), None)
        if stage is None or a["rule.id"] not in stage.expected_rule_ids:
            stray.append((ts.isoformat(), a["rule.name"], a["source.ip"], stage and stage.name))
            continue
        if a["source.ip"] is not None:
            assert a["source.ip"] in stage.attacker_ips, (stage.name, a["rule.name"], a["source.ip"])
        fired[stage.name].add(a["rule.id"])
    for s in m.stages:
        assert fired[s.name] == set(s.expected_rule_ids), (s.name, set(s.expected_rule_ids) - fired[s.name])
    assert not stray, f"alerts outside the expected stage/rule: {stray[:10]}"
