"""Suricata EVE parser on the shared samples (JSON lines and pretty-printed arrays)."""

from __future__ import annotations

import collections
import json
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from ingest.files import read_records
from ingest.parsers import RAW_SCHEMA, parse
from taishi.schema import EVENT_SCHEMA

EVE = "suricata/slips_test6-malicious.suricata.json"


def run(path):
    evs, dls = [], []
    for raw in read_records(path, "suricata", batch_size=1000):
        r = parse("suricata", raw)
        assert r.events.schema == EVENT_SCHEMA
        evs.append(r.events)
        dls.append(r.deadletters)
    return pa.concat_tables(evs), pa.concat_tables(dls)


def records(path):
    return [json.loads(ln) for ln in path.read_text().split("\n") if ln.strip()]


def test_eve_counts_per_event_type(shared_data):
    ev, dl = run(shared_data / EVE)
    assert dl.num_rows == 0
    # jq -r .event_type slips_test6-malicious.suricata.json | sort | uniq -c
    assert collections.Counter(ev.column("event.dataset").to_pylist()) == {
        "suricata.flow": 3512,
        "suricata.alert": 745,
        "suricata.dns": 680,
        "suricata.http": 56,
        "suricata.anomaly": 3,
        "suricata.fileinfo": 3,
        "suricata.tls": 1,
    }
    kinds = collections.Counter(zip(ev.column("event.dataset").to_pylist(), ev.column("event.kind").to_pylist()))
    assert kinds[("suricata.alert", "alert")] == 745
    assert sum(v for (d, k), v in kinds.items() if k == "alert") == 745


def test_eve_fields_match_the_records(shared_data):
    path = shared_data / EVE
    ref = records(path)
    ev, _ = run(path)
    rows = ev.to_pylist()
    assert len(rows) == len(ref) == 5000
    for e, r in zip(rows, ref):
        assert e["source.ip"] == r.get("src_ip") and e["destination.ip"] == r.get("dest_ip")
        assert e["source.port"] == r.get("src_port") and e["destination.port"] == r.get("dest_port")
        assert e["network.transport"] == r["proto"].lower()
        assert e["@timestamp"] == datetime.fromisoformat(r["timestamp"]).astimezone(timezone.utc)
        assert e["observer.product"] == "Suricata" and e["event.module"] == "suricata"
        assert json.loads(e["taishi.extra"])["flow_id"] == r["flow_id"]
        et = r["event_type"]
        if et == "alert":
            a = r["alert"]
            assert e["rule.id"] == str(a["signature_id"]) and e["rule.name"] == a["signature"]
            assert e["rule.category"] == a["category"] and e["event.severity"] == a["severity"]
        elif et == "flow":
            assert e["source.bytes"] == r["flow"]["bytes_toserver"]
            assert e["destination.packets"] == r["flow"]["pkts_toclient"]
            assert e["event.category"] == "network" and e["event.type"] == "connection"
        elif et == "dns":
            assert e["dns.question.name"] == r["dns"].get("rrname")
            assert e["dns.type"] == r["dns"]["type"]
            assert e["dns.id"] == str(r["dns"]["id"])
        elif et == "http":
            assert e["url.domain"] == r["http"].get("hostname")
            assert e["url.original"] == r["http"].get("url")
            assert e["http.response.status_code"] == r["http"].get("status")
        elif et == "tls":
            assert e["tls.client.server_name"] == r["tls"].get("sni")
            assert e["tls.server.subject"] == r["tls"].get("subject")
            assert e["tls.client.ja3"] == r["tls"]["ja3"]["hash"]
            assert r["tls"]["version"] == "TLS 1.1" and e["tls.version"] == "1.1"
            assert e["tls.version_protocol"] == "tls"
    first = rows[0]
    assert first["rule.id"] == "2403388"
    assert first["@timestamp"] == datetime(2021, 6, 6, 13, 59, 46, 457984, tzinfo=timezone.utc)
    assert first["related.ip"] == ["78.36.196.213", "192.168.1.129"]


@pytest.mark.parametrize("sample", ["honeypot-2018", "wrccdc-2017", "first-org-conf-2015"])
def test_json_array_alert_files(shared_data, sample):
    path = shared_data / "suricata/frank_samples" / sample / "alerts-only.json"
    items = json.loads(path.read_text())
    ev, dl = run(path)
    assert dl.num_rows == 0 and ev.num_rows == len(items)
    assert set(ev.column("event.kind").to_pylist()) == {"alert"}
    assert ev.column("rule.name").to_pylist() == [i["alert"]["signature"] for i in items]
    assert ev.column("log.offset").to_pylist() == list(range(len(items)))
    assert ev.column("event.severity").to_pylist() == [i["alert"]["severity"] for i in items]


def _raw(lines):
    return pa.Table.from_pylist(
        [
            {"taishi.source": "eve.json", "log.offset": i, "log.file.path": "/x/eve.json", "hint": None, "event.original": ln}
            for i, ln in enumerate(lines)
        ],
        schema=RAW_SCHEMA,
    )


def test_dns_v1_v2_tls_versions_and_dead_letters():
    lines = [
        # v1 answer: one record per answer
        '{"timestamp":"2020-01-01T00:00:00.000000+0000","event_type":"dns","src_ip":"8.8.8.8","dest_ip":"10.0.0.1","proto":"UDP",'
        '"dns":{"type":"answer","id":7,"rrname":"example.com","rrtype":"A","ttl":60,"rdata":"93.184.216.34","rcode":"NOERROR"}}',
        # v2 answer: grouped answers
        '{"timestamp":"2020-01-01T00:00:01Z","event_type":"dns","src_ip":"8.8.8.8","dest_ip":"10.0.0.1","proto":"UDP",'
        '"dns":{"version":2,"type":"answer","id":8,"rrname":"example.org","rrtype":"A","rcode":"NOERROR",'
        '"answers":[{"rrname":"example.org","rrtype":"CNAME","rdata":"x.example.net"},{"rrname":"x.example.net","rrtype":"A","rdata":"1.2.3.4"}]}}',
        '{"timestamp":"2020-01-01T00:00:02Z","event_type":"tls","src_ip":"10.0.0.1","dest_ip":"1.1.1.1","proto":"TCP",'
        '"tls":{"version":"TLSv1.3","sni":"one.one"}}',
        '{"timestamp":"2020-01-01T00:00:03Z","event_type":"stats","stats":{"uptime":5}}',
        '{"timestamp":"2020-01-01T00:00:04Z", "event_type": "alert", "src_ip": }',
        '{"timestamp":"2020-01-01T00:00:05Z"}',
        "[]",
    ]
    r = parse("suricata", _raw(lines))
    rows = r.events.to_pylist()
    assert [e["dns.answers.data"] for e in rows[:2]] == [["93.184.216.34"], ["x.example.net", "1.2.3.4"]]
    assert [e["dns.resolved_ip"] for e in rows[:2]] == [["93.184.216.34"], ["1.2.3.4"]]
    assert rows[1]["dns.question.name"] == "example.org" and rows[1]["dns.id"] == "8"
    assert (rows[2]["tls.version"], rows[2]["tls.version_protocol"]) == ("1.3", "tls")
    assert rows[3]["event.dataset"] == "suricata.stats" and json.loads(rows[3]["taishi.extra"]) == {"stats": {"uptime": 5}}
    reasons = r.deadletters.column("reason").to_pylist()
    assert len(reasons) == 3
    assert reasons[0].startswith("invalid JSON: ")
    assert reasons[1] == "EVE record has no event_type"
    assert reasons[2] == "EVE record is not a JSON object (list)"
