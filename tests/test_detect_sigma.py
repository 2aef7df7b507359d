"""Single-event Sigma evaluation: every supported construct on small hand-made batches."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest

from detect.rule_tests import events_from_dicts
from detect.sigma import RuleSet, threat_from_tags
from taishi.ids import alert_id
from taishi.schema import ALERT_SCHEMA, events_table

RID = "aaaaaaaa-0000-4000-8000-000000000001"


def rule(detection: str, logsource: str = "{product: zeek, service: conn}", extra: str = "") -> RuleSet:
    text = f"title: t\nid: {RID}\nlogsource: {logsource}\nlevel: high\n{extra}detection:\n{detection}"
    rs = RuleSet.from_yaml(text)
    assert rs.rules, rs.check()
    return rs


def rows(rs: RuleSet, events: list[dict], dataset: str | None = "zeek.conn") -> list[int]:
    evs = [{"event.id": f"e{i}", **({"event.dataset": dataset} if dataset else {}), **e} for i, e in enumerate(events)]
    return rs.match(events_table(evs)).column("event.row").to_pylist()


def test_equality_is_case_insensitive_and_list_is_or():
    rs = rule("  sel: {source.ip: [10.0.0.1, 10.0.0.2], network.transport: TCP}\n  condition: sel")
    got = rows(rs, [
        {"source.ip": "10.0.0.1", "network.transport": "tcp"},
        {"source.ip": "10.0.0.2", "network.transport": "Tcp"},
        {"source.ip": "10.0.0.3", "network.transport": "tcp"},
        {"source.ip": "10.0.0.1", "network.transport": "udp"},
    ])
    assert got == [0, 1]


def test_wildcards_and_escaping():
    rs = rule("  a: {url.path: '/adm?n/*.php'}\n  b: {url.query: 'x\\*y'}\n  condition: a or b", "{category: proxy}")
    got = rows(rs, [
        {"http.request.method": "GET", "url.path": "/ADMIN/x/y.php"},
        {"http.request.method": "GET", "url.path": "/admn/x.php"},  # ? needs one char
        {"http.request.method": "GET", "url.query": "x*y"},
        {"http.request.method": "GET", "url.query": "xZy"},  # \* is a literal star
        {"url.path": "/admin/x.php"},  # no http.request.method: not a proxy event
    ], dataset=None)
    assert got == [0, 2]


def test_contains_startswith_endswith_all():
    rs = rule(
        "  s1: {user_agent.original|contains: curl}\n"
        "  s2: {url.original|startswith: 'http://evil'}\n"
        "  s3: {dns.question.name|endswith: [.ru, .cn]}\n"
        "  s4: {process.command_line|contains|all: [wget, '/tmp']}\n"
        "  condition: 1 of s*",
        "{product: zeek}",
    )
    got = rows(rs, [
        {"event.module": "zeek", "user_agent.original": "Mozilla CURL/8"},
        {"event.module": "zeek", "url.original": "HTTP://EVIL.com/a"},
        {"event.module": "zeek", "dns.question.name": "a.b.RU"},
        {"event.module": "zeek", "process.command_line": "wget http://x -O /tmp/a"},
        {"event.module": "zeek", "process.command_line": "wget http://x"},
        {"event.module": "zeek", "url.original": "https://good/http://evil"},
    ])
    assert got == [0, 1, 2, 3]


def test_regex_case_sensitive_and_i_flag():
    rs = rule("  a: {url.path|re: '^/wp-[a-z]+\\.php$'}\n  b: {user.name|re|i: '^ADMIN\\d+$'}\n  condition: a or b")
    got = rows(rs, [{"url.path": "/wp-login.php"}, {"url.path": "/WP-login.php"}, {"user.name": "admin12"}, {"user.name": "admin"}])
    assert got == [0, 2]


def test_regex_not_re2_is_unsupported_error():
    rs = RuleSet.from_yaml(f"title: t\nid: {RID}\nlogsource: {{product: zeek}}\ndetection:\n  a: {{url.path|re: '(?=x)y'}}\n  condition: a")
    assert not rs.rules
    [issue] = [i for i in rs.check() if i.severity == "error"]
    assert "invalid perl operator" in issue.message  # pySigma validates with RE2 too


def test_cidr_on_ip_and_list_columns():
    rs = rule("  a: {source.ip|cidr: 10.0.0.0/8}\n  b: {related.ip|cidr: 'fd00::/8'}\n  condition: a or b")
    got = rows(rs, [
        {"source.ip": "10.1.2.3"}, {"source.ip": "11.0.0.1"}, {"source.ip": "not-an-ip"},
        {"related.ip": ["1.1.1.1", "fd00::1"]}, {"related.ip": ["1.1.1.1"]}, {"source.ip": None},
        {"source.ip": "::ffff:10.0.0.9"}, {"source.ip": "10.0.0.256"}, {"source.ip": " 10.0.0.7 "},
        {"source.ip": "fe80::1%eth0"}, {"related.ip": ["FD00::ABCD"]},
    ])
    assert got == [0, 3, 6, 8, 10]


def test_numeric_comparisons_and_number_equality():
    rs = rule("  a: {destination.port|gte: 1024, destination.bytes|lt: 100}\n  b: {destination.port: 22}\n  condition: a or b")
    got = rows(rs, [
        {"destination.port": 1024, "destination.bytes": 99},
        {"destination.port": 1023, "destination.bytes": 1},
        {"destination.port": 8080, "destination.bytes": 100},
        {"destination.port": 22},
        {"destination.bytes": 1},
    ])
    assert got == [0, 3]


def test_number_compare_on_string_column():
    rs = rule("  a: {dns.id|gt: 100}\n  condition: a")
    assert rows(rs, [{"dns.id": "101"}, {"dns.id": "7"}, {"dns.id": "x"}]) == [0]


def test_exists_null_and_empty():
    rs = rule("  a: {user.name|exists: true}\n  condition: a")
    assert rows(rs, [{"user.name": "x"}, {}, {"user.name": ""}]) == [0, 2]
    rs = rule("  a: {user.name: null}\n  condition: a")
    assert rows(rs, [{"user.name": "x"}, {}, {"user.name": ""}]) == [1]
    rs = rule("  a: {user.name: ''}\n  condition: a")
    assert rows(rs, [{"user.name": "x"}, {}, {"user.name": ""}]) == [2]


def test_missing_column_is_null():
    rs = rule("  a: {nonexistent.field: x}\n  b: {other.field: null}\n  condition: b and not a")
    t = events_table([{"event.id": "e0", "event.dataset": "zeek.conn"}])
    assert rs.match(t).column("event.row").to_pylist() == [0]


def test_list_column_any_element():
    rs = rule("  a: {dns.answers.data|endswith: .evil.com}\n  condition: a", "{category: dns}")
    got = rows(rs, [
        {"dns.question.name": "a", "dns.answers.data": ["x.good.com", "cdn.EVIL.com"]},
        {"dns.question.name": "b", "dns.answers.data": ["x.good.com"]},
        {"dns.question.name": "c", "dns.answers.data": []},
        {"dns.question.name": "d"},
    ], dataset=None)
    assert got == [0]


def test_keywords_search_message_and_original():
    rs = rule("  keywords: ['Failed password', 'invalid user*root']\n  condition: keywords", "{product: linux, service: auth}")
    got = rows(rs, [
        {"message": "sshd[1]: failed password for x"},
        {"event.original": "Invalid user ROOT from 1.2.3.4"},
        {"message": "Accepted password"},
    ], dataset="system.auth")
    assert got == [0, 1]


def test_condition_forms():
    det = (
        "  sel_a: {user.name: alice}\n  sel_b: {host.name: h1}\n  filter: {source.ip: 10.0.0.1}\n"
    )
    cases = {
        "sel_a and not filter": [0],
        "(sel_a or sel_b) and not filter": [0, 2],
        "1 of sel_*": [0, 1, 2],
        "all of sel_*": [1],
        "1 of them": [0, 1, 2, 3],
        "all of them": [1],
        "not sel_a": [2, 3],
    }
    evs = [
        {"user.name": "alice"},
        {"user.name": "alice", "host.name": "h1", "source.ip": "10.0.0.1"},
        {"host.name": "h1"},
        {"source.ip": "10.0.0.1"},
    ]
    for cond, want in cases.items():
        assert rows(rule(det + f"  condition: {cond}"), evs) == want, cond


def test_list_of_maps_is_or_and_all_modifier_on_list():
    rs = rule("  sel:\n    - {user.name: a}\n    - {host.name: b}\n  condition: sel")
    assert rows(rs, [{"user.name": "a"}, {"host.name": "b"}, {"user.name": "b"}]) == [0, 1]


def test_cased_and_fieldref():
    rs = rule("  a: {user.name|cased: Admin}\n  condition: a")
    assert rows(rs, [{"user.name": "Admin"}, {"user.name": "admin"}]) == [0]
    rs = rule("  a: {user.name|fieldref: user.effective.name}\n  condition: a")
    assert rows(rs, [{"user.name": "a", "user.effective.name": "A"}, {"user.name": "a", "user.effective.name": "b"}]) == [0]


def test_logsource_routing_and_taishi_logsource_tag():
    rs = rule("  a: {user.name: x}\n  condition: a", "{product: linux, service: auth}")
    t = events_table([
        {"event.id": "1", "event.dataset": "system.auth", "user.name": "x"},
        {"event.id": "2", "event.dataset": "zeek.conn", "user.name": "x"},
        {"event.id": "3", "taishi.logsource": "linux//auth", "user.name": "x"},
        {"event.id": "4", "taishi.logsource": "linux//syslog", "user.name": "x"},
    ])
    assert rs.match(t).column("event.row").to_pylist() == [0, 2]


def test_unmapped_logsource_is_a_warning_and_matches_tagged_events_only():
    rs = RuleSet.from_yaml(f"title: t\nid: {RID}\nlogsource: {{product: windows, service: security}}\ndetection:\n  a: {{EventID: 1}}\n  condition: a")
    assert [r.logsource for r in rs.rules] == ["windows//security"]
    [w] = rs.check()
    assert w.severity == "warning" and "no ECS mapping for logsource 'windows//security'" in w.message
    assert "matches only events tagged with it" in w.message
    t = events_from_dicts([
        {"taishi.logsource": "windows//security", "EventID": "1"},
        {"taishi.logsource": "Windows//Security", "EventID": "1"},
        {"taishi.logsource": "windows//system", "EventID": "1"},
        {"EventID": "1"},
        {"taishi.logsource": "windows//security", "EventID": "2"},
    ])
    assert rs.match(t).column("event.row").to_pylist() == [0, 1]


@pytest.mark.parametrize("mod, want", [
    ("startswith", [0, 3]),   # user.name starts with host.name (case-insensitive)
    ("endswith", [1, 3]),
    ("contains", [0, 1, 2, 3]),
])
def test_fieldref_with_startswith_endswith_contains(mod, want):
    rs = rule(f"  a: {{'user.name|fieldref|{mod}': host.name}}\n  condition: a")
    t = events_from_dicts([
        {"event.dataset": "zeek.conn", "user.name": "Web01-admin", "host.name": "web01"},
        {"event.dataset": "zeek.conn", "user.name": "admin@WEB01", "host.name": "web01"},
        {"event.dataset": "zeek.conn", "user.name": "x-web01-y", "host.name": "web01"},
        {"event.dataset": "zeek.conn", "user.name": "web01", "host.name": "WEB01"},
        {"event.dataset": "zeek.conn", "user.name": "db01", "host.name": "web01"},
        {"event.dataset": "zeek.conn", "user.name": None, "host.name": "web01"},
        {"event.dataset": "zeek.conn", "user.name": "web01", "host.name": None},
    ])
    assert sorted(rs.match(t).column("event.row").to_pylist()) == want


def test_non_ecs_field_is_a_warning():
    rs = rule("  a: {c-uri: x}\n  condition: a")
    [w] = rs.check()
    assert w.severity == "warning" and "field c-uri is not an ECS field Taishi produces" in w.message


def test_threat_from_tags():
    assert threat_from_tags(["attack.t1110", "attack.t1110.001", "attack.credential-access", "attack.command_and_control", "cve.2021-1"]) == (
        ["T1110", "T1110.001"],
        ["Credential Access", "Command and Control"],
    )


def test_to_alerts_fields_and_deterministic_ids():
    rs = rule("  a: {user.name: x}\n  condition: a", extra="description: d\ntags: [attack.t1110.001, attack.credential-access]\n")
    t = events_table([
        {"event.id": "e0", "@timestamp": "2024-01-01T00:00:00Z", "event.dataset": "zeek.conn", "user.name": "x",
         "source.ip": "1.2.3.4", "source.port": 5, "destination.ip": "5.6.7.8", "destination.port": 22, "host.name": "h"},
    ])
    m = rs.match(t)
    a = rs.to_alerts(t, m)
    assert a.schema == ALERT_SCHEMA
    [row] = a.to_pylist()
    assert row["id"] == alert_id(RID, ["e0"])
    assert rs.to_alerts(t, rs.match(t)).column("id").to_pylist() == [row["id"]]
    assert row["rule.name"] == "t" and row["rule.level"] == "high" and row["event.severity"] == 4
    assert row["rule.type"] == "sigma" and row["rule.description"] == "d" and row["message"] == "t"
    assert row["threat.technique.id"] == ["T1110.001"] and row["threat.tactic.name"] == ["Credential Access"]
    assert row["source.ip"] == "1.2.3.4" and row["destination.port"] == 22 and row["host.name"] == "h"
    assert row["event.ids"] == ["e0"] and row["event.count"] == 1 and row["event.kind"] == "alert"
    assert row["@timestamp"].isoformat() == "2024-01-01T00:00:00+00:00"


def test_generate_false_base_rule_feeds_correlation_without_alerts():
    text = f"""title: base
id: {RID}
name: base
logsource: {{product: zeek, service: conn}}
detection:
  a: {{user.name: x}}
  condition: a
---
title: corr
id: {uuid.UUID(int=7)}
correlation:
  type: event_count
  rules: [base]
  group-by: [user.name]
  timespan: 1m
  condition: {{gte: 1}}
"""
    rs = RuleSet.from_yaml(text)
    assert len(rs.correlations) == 1 and rs.correlations[0].rule_ids == [RID]
    t = events_table([{"event.id": "e0", "event.dataset": "zeek.conn", "user.name": "x"}])
    m = rs.match(t)
    assert m.num_rows == 1 and rs.to_alerts(t, m).num_rows == 0
    assert RuleSet.from_yaml(text.replace("  condition: {gte: 1}", "  condition: {gte: 1}\n  generate: true")).to_alerts(t, m).num_rows == 1


def test_correlation_unknown_reference_is_error():
    rs = RuleSet.from_yaml(f"title: c\nid: {RID}\ncorrelation:\n  type: event_count\n  rules: [nope]\n  timespan: 1m\n  condition: {{gte: 2}}\n")
    assert not rs.correlations
    assert "unknown or not-loaded rule(s): nope" in rs.check()[0].message


def test_empty_batch_and_no_rules():
    rs = rule("  a: {user.name: x}\n  condition: a")
    assert rs.match(events_table([])).num_rows == 0
    assert RuleSet().match(events_table([{"event.id": "x"}])).num_rows == 0


def test_multi_chunk_and_dictionary_columns():
    rs = rule("  a: {user.name: x, source.ip|cidr: 10.0.0.0/8}\n  condition: a")
    t1 = events_table([{"event.id": "a", "event.dataset": "zeek.conn", "user.name": "x", "source.ip": "10.0.0.1"}])
    t2 = events_table([{"event.id": "b", "event.dataset": "zeek.conn", "user.name": "X", "source.ip": "10.0.0.2"},
                       {"event.id": "c", "event.dataset": "zeek.conn", "user.name": "y", "source.ip": "10.0.0.2"}])
    t = pa.concat_tables([t1, t2])
    assert t.column("user.name").num_chunks == 2
    assert rs.match(t).column("event.row").to_pylist() == [0, 1]
    i = t.schema.get_field_index("user.name")
    td = t.set_column(i, "user.name", t.column("user.name").dictionary_encode())
    assert rs.match(td).column("event.row").to_pylist() == [0, 1]


def test_rule_is_compiled_once_and_leaves_shared_per_batch():
    from detect.compile import BatchContext

    rs = RuleSet.from_yaml(
        "\n---\n".join(
            f"title: r{i}\nid: aaaaaaaa-0000-4000-8000-00000000001{i}\nlogsource: {{product: zeek, service: conn}}\n"
            f"detection:\n  a: {{user.name: x{i}}}\n  condition: a"
            for i in range(3)
        )
    )
    t = events_table([{"event.id": "a", "event.dataset": "zeek.conn", "user.name": "x1"}])
    ctx = BatchContext(t)
    for r in rs.rules:
        r.mask(ctx)
    # one dictionary view per column, one logsource leaf result shared by the three rules
    assert set(ctx._views) == {"event.dataset", "taishi.logsource", "user.name"}
    assert sum(1 for k in ctx._memo if k[0] == "in" and k[1] == "event.dataset") == 1


def test_expand_placeholders_from_the_placeholder_map():
    text = (f"title: t\nid: {RID}\nlogsource: {{product: zeek, service: conn}}\ndetection:\n"
            "  a: {user.name|expand: '%admins%', host.name|expand: 'srv-%sites%'}\n  condition: a")
    rs = RuleSet.from_yaml(text, placeholders={"admins": ["root", "adm_*"], "sites": ["bj", "sh"]})
    assert [i for i in rs.check() if i.severity == "error"] == []
    got = rows(rs, [
        {"user.name": "root", "host.name": "srv-bj"},
        {"user.name": "ADM_x", "host.name": "SRV-SH"},  # values are Sigma strings: wildcards, no case
        {"user.name": "bob", "host.name": "srv-bj"},
        {"user.name": "root", "host.name": "srv-gz"},
    ])
    assert got == [0, 1]
    # a placeholder without values is an error and the rule is not loaded
    rs = RuleSet.from_yaml(text, placeholders={"admins": ["root"]})
    assert not rs.rules
    [e] = [i for i in rs.check() if i.severity == "error"]
    assert "%sites%" in e.message and "detect/placeholders.yaml" in e.message


def test_default_placeholder_map_is_the_data_file():
    from detect.sigma import DEFAULT_PLACEHOLDERS, load_placeholders

    assert DEFAULT_PLACEHOLDERS.name == "placeholders.yaml" and isinstance(load_placeholders(), dict)


def test_sigma_filter_documents_apply_across_files(tmp_path):
    (tmp_path / "r.yml").write_text(
        f"title: rar\nid: {RID}\nname: rar_use\nlogsource: {{product: zeek, service: conn}}\n"
        "detection:\n  a: {process.name: rar.exe}\n  condition: a\n---\n"
        "title: other\nid: bbbbbbbb-0000-4000-8000-000000000002\nlogsource: {product: zeek, service: conn}\n"
        "detection:\n  a: {process.name: rar.exe}\n  condition: a\n"
    )
    (tmp_path / "mf_admins.yml").write_text(
        "title: admins may\nid: ffffffff-0000-4000-8000-000000000001\nlogsource: {product: zeek}\n"
        "filter:\n  rules: [rar_use, not-a-rule]\n  selection: {user.name|startswith: adm_}\n  condition: not selection\n"
    )
    (tmp_path / "mf_linux.yml").write_text(  # other logsource: does not apply
        "title: linux only\nid: ffffffff-0000-4000-8000-000000000002\nlogsource: {product: linux}\n"
        "filter:\n  rules: any\n  selection: {user.name: bob}\n  condition: not selection\n"
    )
    rs = RuleSet.load([tmp_path])
    assert rs.rule(RID).filters == ["ffffffff-0000-4000-8000-000000000001"]
    assert rs.rule("bbbbbbbb-0000-4000-8000-000000000002").filters == []
    assert rs.rule(RID).describe()["filters"] == ["ffffffff-0000-4000-8000-000000000001"]
    evs = [{"process.name": "rar.exe", "user.name": u} for u in ("bob", "adm_x", None)]
    m = rs.match(events_table([{"event.id": f"e{i}", "event.dataset": "zeek.conn", **e} for i, e in enumerate(evs)]))
    got = sorted(zip(m.column("rule.id").to_pylist(), m.column("event.row").to_pylist()))
    assert got == sorted([(RID, 0), (RID, 2)] + [("bbbbbbbb-0000-4000-8000-000000000002", i) for i in range(3)])
    msgs = {(i.severity, i.message) for i in rs.check()}
    assert ("warning", "Sigma filter references unknown or not-loaded rule(s): not-a-rule") in msgs
    assert ("warning", "Sigma filter applies to no loaded rule") in msgs


def test_fieldref_with_a_list_field_matches_any_element():
    rs = rule("  a: {related.user|fieldref: user.name}\n  condition: a")
    t = events_from_dicts([
        {"event.dataset": "zeek.conn", "related.user": ["x", "Bob"], "user.name": "bob"},
        {"event.dataset": "zeek.conn", "related.user": ["x"], "user.name": "bob"},
        {"event.dataset": "zeek.conn", "related.user": None, "user.name": "bob"},
    ])
    assert rs.match(t).column("event.row").to_pylist() == [0]


def test_timestamp_part_modifiers_read_the_field_as_utc_time():
    rs = rule("  a: {'@timestamp|hour': 3, '@timestamp|week': 1}\n  condition: a")
    assert rows(rs, [
        {"@timestamp": "2024-01-01T03:02:00Z"},
        {"@timestamp": "2024-01-01T04:02:00+01:00"},  # 03:02 UTC
        {"@timestamp": "2024-01-01T04:02:00Z"},
        {"@timestamp": "2024-03-01T03:02:00Z"},  # ISO week 9
    ]) == [0, 1]
    # on text fields: ISO 8601 (naive = UTC, offsets converted) or epoch seconds
    rs = rule("  a: {'start|minute': 5, 'start|day': 2, 'start|month': 1, 'start|year': 2024}\n  condition: a")
    t = events_from_dicts([
        {"event.dataset": "zeek.conn", "start": "2024-01-02 10:05:00"},
        {"event.dataset": "zeek.conn", "start": "2024-01-02T10:05:00+05:00"},
        {"event.dataset": "zeek.conn", "start": "1704189900"},  # 2024-01-02T10:05:00Z
        {"event.dataset": "zeek.conn", "start": "2024-01-03T10:05:00Z"},
        {"event.dataset": "zeek.conn", "start": "not a time"},
        {"event.dataset": "zeek.conn"},
    ])
    assert rs.match(t).column("event.row").to_pylist() == [0, 1, 2]


def test_alerts_only_for_generating_rules_among_many_matches():
    """A correlation base (generate: false) matching most events next to an ordinary rule: the
    alerts are the ordinary rule's matches, one per event, in event order."""
    base, loud = str(uuid.UUID(int=11)), str(uuid.UUID(int=12))
    rs = RuleSet.from_yaml(f"""title: base
id: {base}
name: base
logsource: {{product: zeek, service: conn}}
detection:
  a: {{event.action: S0}}
  condition: a
---
title: loud
id: {loud}
logsource: {{product: zeek, service: conn}}
detection:
  a: {{destination.port: 23}}
  condition: a
level: high
---
title: corr
id: {uuid.UUID(int=13)}
correlation: {{type: event_count, rules: [base], group-by: [source.ip], timespan: 1m, condition: {{gte: 50}}}}
""")
    rows = [{"event.id": f"e{i}", "event.dataset": "zeek.conn", "event.action": "S0",
             "destination.port": 23 if i % 7 == 3 else 80, "source.ip": "10.0.0.1"} for i in range(40)]
    t = events_table(rows)
    m = rs.match(t)
    assert m.num_rows == 40 + len([r for r in rows if r["destination.port"] == 23])
    alerts = rs.to_alerts(t, m).to_pylist()
    want = [r["event.id"] for r in rows if r["destination.port"] == 23]
    assert [a["event.ids"] for a in alerts] == [[e] for e in want]
    assert {a["rule.id"] for a in alerts} == {loud}
    assert [a["id"] for a in alerts] == [alert_id(loud, [e]) for e in want]
