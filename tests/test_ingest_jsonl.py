"""Generic JSON lines parser."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa

from ingest.files import read_records
from ingest.parsers import RAW_SCHEMA, parse


def _raw(lines):
    return pa.Table.from_pylist(
        [
            {"taishi.source": "app.json", "log.offset": i, "log.file.path": "/x/app.json", "hint": None, "event.original": ln}
            for i, ln in enumerate(lines)
        ],
        schema=RAW_SCHEMA,
    )


def test_ecs_dotted_and_nested_and_extra():
    lines = [
        json.dumps({"@timestamp": "2024-01-02T03:04:05Z", "source": {"ip": "1.2.3.4", "port": 22},
                    "user.name": "bob", "event": {"action": "login", "outcome": "failure"}, "app": {"x": 1}, "event.id": "spoof"}),
        json.dumps({"ts": 1700000000.5, "destination.ip": "5.6.7.8", "destination.port": "443", "tags": ["a", "b"]}),
        json.dumps({"time": "yesterday", "message": "no time"}),
    ]
    r = parse("json", _raw(lines))
    assert r.deadletters.num_rows == 0
    a, b, c = r.events.to_pylist()
    assert a["@timestamp"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert (a["source.ip"], a["source.port"], a["user.name"]) == ("1.2.3.4", 22, "bob")
    assert (a["event.action"], a["event.outcome"], a["event.module"]) == ("login", "failure", "json")
    assert a["event.id"] != "spoof" and json.loads(a["taishi.extra"]) == {"app.x": 1, "event.id": "spoof"}
    assert a["related.ip"] == ["1.2.3.4"] and a["related.user"] == ["bob"]
    assert b["@timestamp"] == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=timezone.utc)
    assert (b["destination.port"], b["tags"]) == (443, ["a", "b"])
    assert c["@timestamp"] is None and json.loads(c["taishi.extra"]) == {"time": "yesterday"}
    assert c["message"] == "no time"


def test_bad_json_dead_lettered(tmp_path):
    p = tmp_path / "app.json"
    p.write_bytes(b'{"a": 1}\n{"a": 1,, }\n"str"\n{"b": "\xff"}\n')
    evs, dls = [], []
    for raw in read_records(p, "json"):
        r = parse("json", raw)
        evs.append(r.events)
        dls.append(r.deadletters)
    ev, dl = pa.concat_tables(evs), pa.concat_tables(dls)
    assert ev.num_rows == 1
    reasons = dl.column("reason").to_pylist()
    assert reasons[0].startswith("invalid JSON: ")
    assert reasons[1] == "JSON record is not an object (str)"
    assert reasons[2].startswith("invalid UTF-8")
    assert dl.column("log.offset").to_pylist() == [9, 21, 27]
