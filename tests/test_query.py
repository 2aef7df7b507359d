"""The Lucene query language compiled to DuckDB SQL, run on a small hand-built table."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pytest

from taishi.query import QueryError, compile_query, ip_key, parse_time_value, register_functions
from taishi.schema import EVENT_SCHEMA, events_table

NOW = datetime(2024, 1, 10, 12, 0, tzinfo=timezone.utc)
DEFAULTS = ["message", "event.original", "rule.name"]
ALL = {"e1", "e2", "e3", "e4", "e5", "e6"}

ROWS = [
    {
        "event.id": "e1",
        "@timestamp": "2024-01-01T00:00:00Z",
        "source.ip": "10.0.0.1",
        "destination.ip": "192.168.1.10",
        "source.port": 22,
        "event.severity": 3,
        "message": "Failed password for root",
        "event.original": "<38>sshd: Failed password",
        "host.name": "web-01",
        "user.name": "root",
        "tags": ["ssh", "auth"],
        "related.ip": ["10.0.0.1", "192.168.1.10"],
        "tls.established": True,
    },
    {
        "event.id": "e2",
        "@timestamp": "2024-01-01T12:00:00Z",
        "source.ip": "10.255.255.255",
        "source.port": 443,
        "event.severity": 5,
        "message": "Accepted publickey",
        "host.name": "Web-01",
        "user.name": "admin",
        "tags": ["ssh"],
        "related.ip": ["10.255.255.255"],
        "tls.established": False,
    },
    {
        "event.id": "e3",
        "@timestamp": "2024-01-02T00:00:00Z",
        "source.ip": "11.0.0.1",
        "source.port": 8080,
        "event.severity": 1,
        "message": "50% done_ok",
        "host.name": "db_01",
        "user.name": "o'brien",
        "related.ip": ["2001:db8::1"],
    },
    {
        "event.id": "e4",
        "@timestamp": "2024-01-03T00:00:00Z",
        "source.ip": "2001:db8::5",
        "message": "GET /index.html",
        "host.name": "web-02",
        "tags": [],
        "related.ip": ["2001:db8:ffff::1", "2001:db9::1"],
    },
    {
        "event.id": "e5",
        "@timestamp": "2024-01-10T00:00:00Z",
        "source.ip": "2001:0db8:0:0::1",  # not canonical: must still match 2001:db8::1
        "destination.ip": "::ffff:10.0.0.9",  # IPv4-mapped
        "message": "unicode 日本語 ünï",
        "host.name": "c:\\temp\\x",
        "user.name": "a\\b",
    },
    {
        "event.id": "e6",
        "@timestamp": "2024-01-05T00:00:00Z",
        "host.name": "web*star",
        "user.name": "x%y",
        "rule.name": "Brute force SSH",
        "dns.resolved_ip": ["8.8.8.8"],
    },
]


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    register_functions(c)
    tbl = events_table(ROWS)
    c.register("batch", tbl)
    c.execute("CREATE TABLE events AS SELECT * FROM batch")
    c.unregister("batch")
    yield c
    c.close()


def run(con, q: str, **kw) -> set[str]:
    where, params = compile_query(q, EVENT_SCHEMA, DEFAULTS, now=NOW, **kw)
    rows = con.execute(f'SELECT "event.id" FROM events WHERE {where}', params).fetchall()
    return {r[0] for r in rows}


CASES = [
    # match-all
    ("", ALL),
    ("*", ALL),
    ("   ", ALL),
    # keyword fields: exact, case-sensitive
    ("host.name:web-01", {"e1"}),
    ('host.name:"Web-01"', {"e2"}),
    ("host.name:WEB-01", set()),
    ("user.name:\"o'brien\"", {"e3"}),
    # wildcards, with LIKE's own % and _ taken literally
    ("host.name:web*", {"e1", "e4", "e6"}),
    ("host.name:web-0?", {"e1", "e4"}),
    ("host.name:web\\*star", {"e6"}),
    ("host.name:web\\*", set()),
    ("host.name:db?01", {"e3"}),
    ("host.name:db_01", {"e3"}),
    ("host.name:d%*", set()),
    ("user.name:x%y", {"e6"}),
    ("user.name:x_y", set()),
    ("user.name:x*", {"e6"}),
    ("user.name:x?y", {"e6"}),
    # backslashes
    ('host.name:"c:\\\\temp\\\\x"', {"e5"}),
    ("host.name:c\\:\\\\temp*", {"e5"}),
    ('user.name:"a\\\\b"', {"e5"}),
    ("user.name:a\\\\*", {"e5"}),
    # text fields: contains, case-insensitive
    ("message:failed", {"e1"}),
    ('message:"FAILED PASSWORD"', {"e1"}),
    ("message:50%", {"e3"}),
    ("message:done_ok", {"e3"}),
    ("message:done?ok", {"e3"}),
    ("message:don%", set()),
    ("message:pass*root", {"e1"}),
    ("event.original:sshd", {"e1"}),
    # bare terms and phrases: default fields, case-insensitive contains
    ("failed", {"e1"}),
    ('"accepted publickey"', {"e2"}),
    ("brute", {"e6"}),
    ("BRUTE", {"e6"}),
    ("ünï", {"e5"}),
    ("日本語", {"e5"}),
    ("index.htm*", {"e4"}),
    ("web-01", set()),  # host.name is not a default field
    ("/pass.ord/", {"e1"}),
    # numbers compare numerically
    ("source.port:22", {"e1"}),
    ("source.port:>=443", {"e2", "e3"}),
    ("source.port:>100", {"e2", "e3"}),
    ("source.port:<443", {"e1"}),
    ("source.port:[22 TO 443]", {"e1", "e2"}),
    ("source.port:{22 TO 443}", set()),
    ("source.port:{22 TO 443]", {"e2"}),
    ("source.port:[443 TO *]", {"e2", "e3"}),
    ("source.port:[* TO 100]", {"e1"}),
    ("source.port:[* TO *]", {"e1", "e2", "e3"}),
    ("event.severity:>2", {"e1", "e2"}),
    ("event.severity:(1 OR 5)", {"e2", "e3"}),
    ("event.severity:[-5 TO 2]", {"e3"}),
    ("source.port:-22", set()),
    # times: ISO strings, date-only values cover the whole unit, date math
    ("@timestamp:[2024-01-01 TO 2024-01-01]", {"e1", "e2"}),
    ('@timestamp:"2024-01-02"', {"e3"}),
    ("@timestamp:2024-01", ALL),
    ("@timestamp:<2024-01-02", {"e1", "e2"}),
    ("@timestamp:<=2024-01-02", {"e1", "e2", "e3"}),
    ("@timestamp:>2024-01-03", {"e5", "e6"}),
    ('@timestamp:>"2024-01-01T12:00:00Z"', {"e3", "e4", "e5", "e6"}),
    ("@timestamp:>=2024-01-01T12:00:00Z", {"e2", "e3", "e4", "e5", "e6"}),
    ('@timestamp:"2024-01-01T12:00:00+00:00"', {"e2"}),
    ('@timestamp:"2024-01-01T13:00:00+01:00"', {"e2"}),
    ("@timestamp:{2024-01-01 TO *]", {"e3", "e4", "e5", "e6"}),
    ("@timestamp:>=now-1d", {"e5"}),
    ("@timestamp:[now-24h TO now]", {"e5"}),
    ("@timestamp:[now-7d/d TO now]", {"e4", "e5", "e6"}),
    ("@timestamp:now/d", {"e5"}),
    ("@timestamp:[2024-01-01||+1d TO 2024-01-03||-1s]", {"e3"}),
    ("timestamp:2024-01-02", {"e3"}),
    # IPs and CIDR, IPv4 and IPv6
    ("source.ip:10.0.0.0/8", {"e1", "e2"}),
    ("source.ip:10.0.0.1/32", {"e1"}),
    ("source.ip:10.0.0.0/31", {"e1"}),
    ("source.ip:10.255.255.255", {"e2"}),
    ("source.ip:11.0.0.0/8", {"e3"}),
    ("source.ip:0.0.0.0/0", {"e1", "e2", "e3"}),
    ('source.ip:"2001:db8::/32"', {"e4", "e5"}),
    ('source.ip:"2001:db8::/127"', {"e5"}),
    ('source.ip:"2001:db8::1"', {"e5"}),
    ('source.ip:"2001:db8::4/126"', {"e4"}),
    ('source.ip:"2001:db8::/125"', {"e4", "e5"}),
    ('source.ip:"2001:db8:0:0:0:0:0:0/112"', {"e4", "e5"}),
    ('source.ip:"2001:db9::/32"', set()),
    ("source.ip:2001\\:db8\\:\\:5", {"e4"}),
    ('source.ip:"::/0"', {"e1", "e2", "e3", "e4", "e5"}),
    ("destination.ip:10.0.0.9", {"e5"}),
    ("destination.ip:10.0.0.0/24", {"e5"}),
    ('destination.ip:"::ffff:192.168.1.10"', {"e1"}),
    ("related.ip:192.168.0.0/16", {"e1"}),
    ('related.ip:"2001:db8::/32"', {"e3", "e4"}),
    ('related.ip:"2001:db8::/48"', {"e3"}),
    ('related.ip:"2001:db9::1"', {"e4"}),
    ("source.ip:[10.0.0.0 TO 10.0.0.255]", {"e1"}),
    ("source.ip:[10.0.0.2 TO 11.0.0.1}", {"e2"}),
    ("source.ip:10.0.0.*", {"e1"}),
    ("dns.resolved_ip:8.8.8.0/24", {"e6"}),
    ("_exists_:source.ip", {"e1", "e2", "e3", "e4", "e5"}),
    # list columns: any element
    ("tags:ssh", {"e1", "e2"}),
    ("tags:auth", {"e1"}),
    ("tags:(auth OR nope)", {"e1"}),
    ("tags:(auth AND ssh)", {"e1"}),
    ("tags:s*", {"e1", "e2"}),
    ("tags:SSH", set()),
    ("_exists_:tags", {"e1", "e2"}),
    ("tags:*", {"e1", "e2"}),
    ("NOT _exists_:tags", {"e3", "e4", "e5", "e6"}),
    # booleans
    ("tls.established:true", {"e1"}),
    ("tls.established:false", {"e2"}),
    ("_exists_:tls.established", {"e1", "e2"}),
    # boolean logic; NOT also matches rows lacking the field
    ("tags:ssh AND NOT user.name:root", {"e2"}),
    ("user.name:root OR user.name:admin", {"e1", "e2"}),
    ("user.name:(root OR admin)", {"e1", "e2"}),
    ("-user.name:root", ALL - {"e1"}),
    ("NOT user.name:root", ALL - {"e1"}),
    ("user.name:(NOT root)", ALL - {"e1"}),
    ("user.name:(-root -admin)", ALL - {"e1", "e2"}),
    ("NOT NOT user.name:root", {"e1"}),
    ("+tags:ssh -user.name:root", {"e2"}),
    ("+tags:ssh host.name:nomatch", {"e1", "e2"}),
    ("host.name:web-01 host.name:web-02", {"e1", "e4"}),
    ("(user.name:root OR user.name:admin) AND source.port:443", {"e2"}),
    ("NOT (source.port:22 OR source.port:443)", {"e3", "e4", "e5", "e6"}),
    ("source.port:22 AND (tags:auth OR failed)", {"e1"}),
    ("source.port:22^2", {"e1"}),
    # regular expressions (anchored on keyword fields, RE2)
    ("host.name:/web-0[12]/", {"e1", "e4"}),
    ("host.name:/web/", set()),
    ("message:/pass.ord/", {"e1"}),
]


@pytest.mark.parametrize("q,expected", CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_query_forms(con, q, expected):
    assert run(con, q) == expected


def test_default_operator_and(con):
    assert run(con, "host.name:web-01 tags:ssh", default_operator="AND") == {"e1"}
    assert run(con, "host.name:web-01 tags:ssh") == {"e1", "e2"}


@pytest.mark.parametrize(
    "q,fragment",
    [
        ("source.iip:10.0.0.1", "did you mean source.ip"),
        ("nosuchfield:x", "unknown field 'nosuchfield'"),
        ("_exists_:nosuch", "unknown field"),
        ("source.port:abc", "not a number"),
        ("source.port:22*", "wildcards are not supported"),
        ("@timestamp:yesterday", "not a time"),
        ("@timestamp:now-3x", "not a time"),
        ("source.ip:\"1' OR 1=1 --\"", "not an IP"),
        ("source.ip:10.0.0.0/33", "not a CIDR"),
        ("source.ip:[a TO b]", "not an IP"),
        ("tls.established:maybe", "boolean"),
        ("user.name:root~2", "fuzzy"),
        ('message:"a b"~2', "proximity"),
        ("a:b:c", "unknown field"),
        ("user.name:b:c", "nested field"),
        ("[1 TO 2]", "needs a field"),
    ],
)
def test_query_errors(q, fragment):
    with pytest.raises(QueryError) as ei:
        compile_query(q, EVENT_SCHEMA, DEFAULTS, now=NOW)
    assert fragment in str(ei.value)


@pytest.mark.parametrize("q", ["source.ip:(", 'message:"unterminated', "a AND", "(a OR b", "a:[1 TO"])
def test_syntax_error_has_position(q):
    with pytest.raises(QueryError) as ei:
        compile_query(q, EVENT_SCHEMA, DEFAULTS)
    assert ei.value.pos is not None
    assert "position" in str(ei.value)


INJECTION_VALUES = [
    "source.ip:\"1' OR 1=1 --\"",
    "user.name:\"1' OR 1=1 --\"",
    "\"'; DROP TABLE events; --\"",
    "user.name:\"'; DROP TABLE events; --\"",
    "message:\"'); DELETE FROM events; --\"",
    "host.name:\\\"\\)\\ OR\\ 1=1\\ --",
    'user.name:"\\" OR \\"1\\"=\\"1"',
    "user.name:a\x00b",
    'message:"\x00"',
    "\x00",
    "user.name:'",
    "user.name:\\\\'\\\\",
    "message:\"\\\\'\"",
    "host.name:/.*'; DROP TABLE events; --/",
    "user.name:ro*t\\' OR \\'1\\'=\\'1",
    "user.name:\u202e\u0000\ufeff",
    "source.ip\\\"\\)\\ OR\\ 1=1\\ --:x",
    'source.ip") OR 1=1 --:x',
    "`events`:x",
    "events.\"event.id\":x",
    "user.name\\\"\\ =\\ \\\"user.name:x",
]


@pytest.mark.parametrize("q", INJECTION_VALUES)
def test_injection_matches_nothing_or_errors(con, q):
    try:
        got = run(con, q)
    except QueryError:
        got = set()
    assert got == set()
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == len(ROWS)


def test_values_are_never_spliced():
    marker = "zq'\"x;--"
    for q in [
        f'user.name:"{marker.replace(chr(34), chr(92) + chr(34))}"',
        'message:"zq\'x;--"',
        '"zq\'x;--"',
        "user.name:zq*",
        "user.name:[zqa TO zqb]",
    ]:
        sql, params = compile_query(q, EVENT_SCHEMA, DEFAULTS)
        assert "zq" not in sql, (q, sql)
        assert params


def test_unknown_field_is_not_in_sql_and_quotes_are_safe():
    schema = pa.schema([('we"ird.name', pa.string())])
    sql, params = compile_query('we\\"ird.name:x', schema, [])
    assert sql == '"we""ird.name" = ?' and params == ["x"]
    c = duckdb.connect()
    c.execute('CREATE TABLE t ("we""ird.name" VARCHAR)')
    c.execute("INSERT INTO t VALUES ('x'), ('y')")
    assert c.execute(f"SELECT count(*) FROM t WHERE {sql}", params).fetchone()[0] == 1


def test_default_fields_missing_from_schema_are_skipped():
    schema = pa.schema([("reason", pa.string())])
    sql, params = compile_query("boom", schema, ["message", "reason"])
    assert '"message"' not in sql and params == ["boom"]
    assert compile_query("boom", schema, ["message"]) == ("FALSE", [])


def test_ip_key_orders_addresses():
    keys = [ip_key(a) for a in ["0.0.0.0", "10.0.0.1", "10.0.0.2", "255.255.255.255", "2001:db8::1"]]
    assert keys == sorted(keys)
    assert ip_key("10.0.0.1") == ip_key("::ffff:10.0.0.1")
    assert ip_key("2001:db8::1") == ip_key("2001:0DB8:0000::0001")
    assert ip_key("nope") is None and ip_key(None) is None


def test_parse_time_value():
    assert parse_time_value("now-1h", NOW) == datetime(2024, 1, 10, 11, tzinfo=timezone.utc)
    assert parse_time_value("now/M", NOW) == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert parse_time_value("2024-01-31||+1M", NOW) == datetime(2024, 2, 29, tzinfo=timezone.utc)
    assert parse_time_value("24h", NOW) == datetime(2024, 1, 9, 12, tzinfo=timezone.utc)
    assert parse_time_value("2w", NOW) == datetime(2023, 12, 27, 12, tzinfo=timezone.utc)
    assert parse_time_value(datetime(2024, 1, 1), NOW) == datetime(2024, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(QueryError):
        parse_time_value("soon", NOW)


def test_deep_nesting_is_an_error_not_a_crash():
    q = "(" * 3000 + "a" + ")" * 3000
    with pytest.raises(QueryError):
        compile_query(q, EVENT_SCHEMA, DEFAULTS)


def test_fuzzed_text_compiles_or_raises_query_error(con):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    alphabet = st.sampled_from(list("ab:*?\\\"'()[]{}<>=/ -+!^~%_.\x00é") + ["AND", "OR", "NOT", "TO", "source.ip", "tags", "message"])

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.lists(alphabet, max_size=12).map("".join))
    def check(text):
        try:
            where, params = compile_query(text, EVENT_SCHEMA, DEFAULTS, now=NOW)
        except QueryError:
            return
        con.execute(f'SELECT count(*) FROM events WHERE {where}', params).fetchone()

    check()
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == len(ROWS)
