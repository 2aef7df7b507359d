"""CEF parser: header/extension escaping, severities, syslog prefix, dead letters."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa

from ingest.parsers import RAW_SCHEMA, parse
from ingest.parsers.cef import parse_extension, split_header


def _raw(lines):
    return pa.Table.from_pylist(
        [
            {"taishi.source": "cef.log", "log.offset": i, "log.file.path": "/x/cef.log", "hint": None, "event.original": ln}
            for i, ln in enumerate(lines)
        ],
        schema=RAW_SCHEMA,
    )


def test_escapes():
    # examples from the CEF spec (ArcSight "Implementing ArcSight CEF")
    h = split_header(r"Security|threatmanager|1.0|100|detected a \| in message|10|src=10.0.0.1 act=blocked a \= dst=1.1.1.1")
    assert h[:6] == ["Security", "threatmanager", "1.0", "100", "detected a | in message", "10"]
    assert split_header(r"Security|threatmanager|1.0|100|detected a \\ in packet|10|x=y")[4] == "detected a \\ in packet"
    ext = parse_extension(r"src=10.0.0.1 act=blocked a \= dst=1.1.1.1 msg=line1\nline2 fname=C:\\temp\\x.exe cs1Label=Rule Name cs1=My rule  ")
    assert ext == {
        "src": "10.0.0.1",
        "act": "blocked a =",
        "dst": "1.1.1.1",
        "msg": "line1\nline2",
        "fname": "C:\\temp\\x.exe",
        "cs1Label": "Rule Name",
        "cs1": "My rule",
    }


def test_mapping_with_syslog_header():
    lines = [
        "Sep 19 08:26:10 host1 CEF:0|Security|threatmanager|1.0|100|worm successfully stopped|10|src=10.0.0.1 dst=2.1.2.2 spt=1232 dpt=445 proto=TCP act=blocked",
        "<134>1 2021-01-01T00:00:00Z fw1 - - - - CEF:0|Vendor|Prod|2.0|sig-7|Login failed|High|rt=1609459200123 suser=bob duser=root "
        "src=192.168.1.5 shost=ws1.example msg=bad login cs1Label=Policy cs1=Default Policy outcome=Failure dvchost=fw1.example in=10 out=20",
        "CEF:1|V|P|3|x|Low sev|Very-High|start=Jan 02 2021 03:04:05 end=Jan 02 2021 03:04:06 requestURL=http://a/b?c requestMethod=GET",
    ]
    r = parse("cef", _raw(lines))
    assert r.deadletters.num_rows == 0
    a, b, c = r.events.to_pylist()
    assert (a["observer.vendor"], a["observer.product"], a["rule.id"], a["rule.name"], a["event.severity"]) == (
        "Security", "threatmanager", "100", "worm successfully stopped", 10)
    assert (a["source.ip"], a["source.port"], a["destination.ip"], a["destination.port"]) == ("10.0.0.1", 1232, "2.1.2.2", 445)
    assert (a["network.transport"], a["event.action"], a["host.name"]) == ("tcp", "blocked", "host1")
    assert a["@timestamp"].month == 9 and a["@timestamp"].day == 19
    assert a["event.module"] == "cef" and a["related.ip"] == ["10.0.0.1", "2.1.2.2"]
    assert b["@timestamp"] == datetime(2021, 1, 1, 0, 0, 0, 123000, tzinfo=timezone.utc)  # rt wins
    assert (b["event.severity"], b["user.name"], b["event.outcome"], b["message"]) == (8, "bob", "failure", "bad login")
    assert b["related.user"] == ["bob", "root"] and b["source.domain"] == "ws1.example"
    assert (b["observer.hostname"], b["destination.bytes"], b["source.bytes"]) == ("fw1.example", 10, 20)
    extra = json.loads(b["taishi.extra"])
    assert extra["Policy"] == "Default Policy" and extra["duser"] == "root" and extra["cef.version"] == "0"
    assert c["event.severity"] == 10
    assert c["event.start"] == datetime(2021, 1, 2, 3, 4, 5, tzinfo=timezone.utc) == c["@timestamp"]
    assert c["event.end"] == datetime(2021, 1, 2, 3, 4, 6, tzinfo=timezone.utc)
    assert (c["url.original"], c["http.request.method"]) == ("http://a/b?c", "GET")


def test_dead_letters():
    r = parse("cef", _raw(["not cef at all", "CEF:0|only|three|fields", "", "x" * (2 << 20)]))
    assert r.events.num_rows == 0
    reasons = r.deadletters.column("reason").to_pylist()
    assert reasons[0] == "no 'CEF:<version>|' in record"
    assert reasons[1].startswith("CEF header has fewer than 7")
    assert reasons[2] == "no 'CEF:<version>|' in record"
    assert reasons[3].startswith("record exceeds 1 MiB")
