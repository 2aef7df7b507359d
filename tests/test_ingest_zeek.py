"""Zeek parser on the shared samples: counts, field values checked against an
independent plain-python reading of the files, TSV == JSON, dead letters."""

from __future__ import annotations

import collections
import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from ingest.files import read_records
from ingest.parsers import MAX_RECORD_BYTES, RAW_SCHEMA, parse
from taishi.ids import event_id
from taishi.schema import EVENT_SCHEMA

ZEEK = "zeek"


def run(path, batch_size=8192):
    evs, dls = [], []
    for raw in read_records(path, "zeek", batch_size=batch_size):
        r = parse("zeek", raw)
        assert r.events.schema == EVENT_SCHEMA
        evs.append(r.events)
        dls.append(r.deadletters)
    return pa.concat_tables(evs), pa.concat_tables(dls)


def tsv(path: Path) -> list[dict[str, str]]:
    """Independent TSV reader: dicts of raw strings per data line."""
    fields: list[str] = []
    rows = []
    for line in path.read_text().split("\n"):
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"))))
    return rows


def jsonl(path: Path) -> list[dict]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(ln) for ln in data.split(b"\n") if ln.strip()]


def utc(epoch: str) -> datetime:
    return datetime.fromtimestamp(float(epoch), tz=timezone.utc)


def all_zeek_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "zeek").rglob("*") if p.is_file() and p.name != "labels.config")


def test_every_zeek_sample_parses_without_dead_letters(shared_data):
    files = all_zeek_files(shared_data)
    assert len(files) >= 70
    for p in files:
        if p.suffix == ".gz":
            expected = len(jsonl(p))
        else:
            expected = sum(1 for ln in p.read_bytes().split(b"\n") if ln.strip() and not ln.startswith(b"#"))
        ev, dl = run(p)
        assert dl.num_rows == 0, (p, dl.column("reason").to_pylist()[:3])
        assert ev.num_rows == expected, p
        datasets = set(ev.column("event.dataset").to_pylist())
        assert len(datasets) == 1 and datasets.pop().startswith("zeek."), p
        assert ev.column("@timestamp").null_count == 0, p


def test_conn_tsv_fields_match_the_file(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"
    ref = tsv(p)
    ev, _ = run(p, batch_size=1000)
    rows = ev.to_pylist()
    assert len(rows) == len(ref) == 5663
    for e, r in zip(rows, ref):
        assert e["@timestamp"] == utc(r["ts"])
        assert e["source.ip"] == r["id.orig_h"] and e["source.port"] == int(r["id.orig_p"])
        assert e["destination.ip"] == r["id.resp_h"] and e["destination.port"] == int(r["id.resp_p"])
        assert e["network.transport"] == r["proto"]
        assert e["network.protocol"] == (None if r["service"] == "-" else r["service"])
        assert e["source.bytes"] == (None if r["orig_bytes"] == "-" else int(r["orig_bytes"]))
        assert e["destination.packets"] == int(r["resp_pkts"])
        assert e["event.action"] == r["conn_state"]
        if r["duration"] != "-":
            assert e["event.duration"] == round(float(r["duration"]) * 1e9)
        extra = json.loads(e["taishi.extra"])
        assert extra["uid"] == r["uid"] and extra["history"] == (None if r["history"] == "-" else r["history"])
        assert extra["label"] == r["label"]
    first = rows[0]
    assert first["@timestamp"] == datetime(2022, 6, 12, 21, 59, 58, 444458, tzinfo=timezone.utc)
    assert first["event.duration"] == 1_135_424_000
    assert first["network.direction"] == "outbound"  # local_orig T, local_resp F
    assert first["related.ip"] == ["147.32.81.167", "40.74.108.123"]
    assert (first["event.module"], first["event.dataset"], first["event.kind"]) == ("zeek", "zeek.conn", "event")
    assert (first["event.category"], first["event.type"]) == ("network", "connection")
    # labels per the MANIFEST: 4201 Malicious, 1402 Benign, 60 Background
    labels = collections.Counter(json.loads(x)["label"] for x in ev.column("taishi.extra").to_pylist())
    assert labels == {"Malicious": 4201, "Benign": 1402, "Background": 60}


def test_event_ids_are_the_taishi_ids(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/006-ssh-honeypot/conn.log"
    ev, _ = run(p)
    for e in ev.to_pylist():
        assert e["event.id"] == event_id("conn.log", e["log.offset"], e["event.original"])
        assert e["log.file.path"] == str(p) and e["taishi.source"] == "conn.log"


def _tsv_to_zeek_json(path: Path, out: Path) -> None:
    """Write the TSV file as Zeek JSON lines (types per #types), like Zeek's JSON writer."""
    types: list[str] = []
    fields: list[str] = []
    lines = []
    for line in path.read_text().split("\n"):
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line.startswith("#types"):
            types = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rec = {}
            for f, t, v in zip(fields, types, line.split("\t")):
                if v == "-" or v == "(empty)" and not t.startswith(("set[", "vector[")):
                    continue  # unset; an empty string
                if t.startswith(("set[", "vector[")):
                    rec[f] = [] if v == "(empty)" else v.split(",")
                elif t in ("count", "port", "int"):
                    rec[f] = int(v)
                elif t in ("time", "interval", "double"):
                    rec[f] = float(v)
                elif t == "bool":
                    rec[f] = v == "T"
                else:
                    rec[f] = v
            lines.append(json.dumps(rec))
    out.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "rel",
    [
        "zeek/stratosphere_sdt/005-simda/dns.log",
        "zeek/stratosphere_sdt/005-simda/http.log",
        "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled",
        "zeek/stratosphere_sdt/010-zeek-mixed/ssl.log.labeled",
        "zeek/stratosphere_sdt/006-ssh-honeypot/ssh.log",
        "zeek/stratosphere_sdt/008-zeek-mixed/notice.log.labeled",
    ],
)
def test_tsv_and_json_give_the_same_ecs(shared_data, tmp_path, rel):
    src = shared_data / rel
    js = tmp_path / src.name  # same name -> same log type hint
    _tsv_to_zeek_json(src, js)
    a, _ = run(src)
    b, dl = run(js)
    assert dl.num_rows == 0 and a.num_rows == b.num_rows > 0
    skip = {"event.id", "event.original", "log.offset", "log.file.path", "taishi.extra"}
    for name in EVENT_SCHEMA.names:
        if name not in skip:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    for x, y in zip(a.column("taishi.extra").to_pylist(), b.column("taishi.extra").to_pylist()):
        xa = {k for k, v in json.loads(x).items() if v not in (None, [], "")}
        ya = {k for k, v in json.loads(y).items() if v not in (None, [], "")}
        assert xa == ya


def test_dns_tsv(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/005-simda/dns.log"
    ref = tsv(p)
    ev, _ = run(p)
    rows = ev.to_pylist()
    for e, r in zip(rows, ref):
        assert e["dns.question.name"] == (None if r["query"] == "-" else r["query"])
        assert e["dns.id"] == r["trans_id"]
        assert e["dns.question.type"] == (None if r["qtype_name"] == "-" else r["qtype_name"])
        assert e["dns.response_code"] == (None if r["rcode_name"] == "-" else r["rcode_name"])
        answers = [] if r["answers"] == "(empty)" else None if r["answers"] == "-" else r["answers"].split(",")
        assert e["dns.answers.data"] == answers
        if answers:
            ips = [a for a in answers if a.replace(".", "").isdigit()]
            assert [i for i in (e["dns.resolved_ip"] or []) if "." in i] == ips
    nx = sum(1 for r in ref if r["rcode_name"] == "NXDOMAIN")
    assert nx > 0 and sum(1 for e in rows if e["dns.response_code"] == "NXDOMAIN") == nx


def test_dns_zeek6_json_iso_ts(shared_data):
    p = shared_data / "zeek/wrccdc2018_zed/dns.json.gz"
    ref = jsonl(p)
    ev, _ = run(p)
    assert ev.num_rows == len(ref) == 53615
    first = ev.slice(0, 1).to_pylist()[0]
    assert first["@timestamp"] == datetime(2018, 3, 24, 17, 15, 20, 865716, tzinfo=timezone.utc)
    assert first["dns.question.name"] == "ise.wrccdc.org"
    assert first["dns.answers.data"] == ["ise.wrccdc.cpp.edu", "134.71.3.16"]
    assert first["dns.resolved_ip"] == ["134.71.3.16"]
    assert first["dns.id"] == "36329" and first["dns.type"] == "answer"
    assert first["event.dataset"] == "zeek.dns" and first["taishi.source"] == "dns.json"
    q = collections.Counter(r.get("query") or None for r in ref)  # "" (empty string) -> null
    got = collections.Counter(ev.column("dns.question.name").to_pylist())
    assert got == q


def test_http(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/005-simda/http.log"
    ref = tsv(p)
    ev, _ = run(p)
    for e, r in zip(ev.to_pylist(), ref):
        nz = lambda v: None if v == "-" else v  # noqa: E731
        assert e["http.request.method"] == nz(r["method"])
        assert e["url.original"] == nz(r["uri"])
        assert e["url.domain"] == nz(r["host"])
        assert e["user_agent.original"] == nz(r["user_agent"])
        assert e["http.response.status_code"] == (None if r["status_code"] == "-" else int(r["status_code"]))
        if r["uri"] != "-":
            assert e["url.path"] == r["uri"].split("?")[0].split("#")[0]
        assert e["event.category"] == "web"


def test_ssl_versions_and_sni(shared_data):
    p = shared_data / "zeek/wrccdc2018_zed/ssl.json.gz"
    ref = jsonl(p)
    ev, _ = run(p)
    want = {"TLSv10": "1.0", "TLSv11": "1.1", "TLSv12": "1.2", "TLSv13": "1.3", "SSLv3": "3.0", "SSLv2": "2.0"}
    for e, r in zip(ev.to_pylist(), ref):
        v = r.get("version")
        assert e["tls.version"] == want.get(v), v
        if v in want:
            assert e["tls.version_protocol"] == ("ssl" if v.startswith("SSL") else "tls")
        assert e["tls.client.server_name"] == r.get("server_name")
        assert e["tls.established"] == r.get("established")
        assert e["tls.cipher"] == r.get("cipher")


def test_ssh_auth_outcome(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/006-ssh-honeypot/ssh.log"
    ref = tsv(p)
    ev, _ = run(p)
    want = [{"T": "success", "F": "failure", "-": None}[r["auth_success"]] for r in ref]
    assert ev.column("event.outcome").to_pylist() == want
    assert set(ev.column("event.category").to_pylist()) == {"authentication"}
    extra = json.loads(ev.column("taishi.extra")[0].as_py())
    assert extra["client"] == ref[0]["client"] and extra["server"] == ref[0]["server"]


def test_notice_is_alert(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/notice.log.labeled"
    ref = tsv(p)
    ev, _ = run(p)
    assert set(ev.column("event.kind").to_pylist()) == {"alert"}
    assert ev.column("rule.name").to_pylist() == [r["note"] for r in ref]
    assert ev.column("message").to_pylist() == [r["msg"] for r in ref]


def test_weird_and_x509(shared_data):
    w = shared_data / "zeek/stratosphere_sdt/010-zeek-mixed/weird.log.labeled"
    ev, _ = run(w)
    assert ev.column("event.action").to_pylist() == [r["name"] for r in tsv(w)]
    x = shared_data / "zeek/wrccdc2018_zed/x509.json.gz"
    ref = jsonl(x)
    ev, _ = run(x)
    rows = ev.to_pylist()
    assert rows[0]["x509.subject.common_name"] == ["localhost.localdomain"]
    for e, r in zip(rows, ref):
        assert e["x509.serial_number"] == r.get("certificate.serial")
        assert e["x509.public_key_size"] == r.get("certificate.key_length")
        assert e["x509.alternative_names"] == r.get("san.dns")
        assert json.loads(e["taishi.extra"]).get("certificate.subject") == r.get("certificate.subject")
    # slips x509 (Zeek JSON without _path, epoch floats for validity)
    s = shared_data / "zeek/slips/test9-mixed/x509.log"
    ev, _ = run(s)
    first = ev.slice(0, 1).to_pylist()[0]
    assert first["x509.subject.common_name"] == ["www.bing.com"]
    assert first["x509.issuer.common_name"] == ["Microsoft IT TLS CA 5"]
    assert first["x509.not_before"] == datetime.fromtimestamp(1500565628, tz=timezone.utc)


def test_generic_log_types(shared_data):
    for rel, ds in [
        ("zeek/slips/test9-mixed/files.log", "zeek.files"),
        ("zeek/slips/test9-mixed/dhcp.log", "zeek.dhcp"),
        ("zeek/stratosphere_sdt/008-zeek-mixed/sip.log.labeled", "zeek.sip"),
        ("zeek/wrccdc2018_zed/smb_mapping.json.gz", "zeek.smb_mapping"),
        ("zeek/wrccdc2018_zed/modbus.json.gz", "zeek.modbus"),
    ]:
        ev, dl = run(shared_data / rel)
        assert dl.num_rows == 0 and ev.num_rows > 0
        assert set(ev.column("event.dataset").to_pylist()) == {ds}
        assert ev.column("taishi.extra").null_count == 0
    ev, _ = run(shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/sip.log.labeled")
    ref = tsv(shared_data / "zeek/stratosphere_sdt/008-zeek-mixed/sip.log.labeled")
    assert ev.column("source.ip").to_pylist() == [r["id.orig_h"] for r in ref]
    assert [json.loads(x)["method"] for x in ev.column("taishi.extra").to_pylist()] == [
        None if r["method"] == "-" else r["method"] for r in ref
    ]


# --- dead letters ------------------------------------------------------------------


def _raw(originals, hints, source="conn.log"):
    return pa.Table.from_pylist(
        [
            {"taishi.source": source, "log.offset": i * 10, "log.file.path": "/x", "hint": h, "event.original": o}
            for i, (o, h) in enumerate(zip(originals, hints))
        ],
        schema=RAW_SCHEMA,
    )


def test_dead_letters_never_raise(shared_data):
    p = shared_data / "zeek/stratosphere_sdt/006-ssh-honeypot/conn.log"
    raw = next(read_records(p, "zeek"))
    hint = raw.column("hint")[0].as_py()
    good = raw.column("event.original").to_pylist()[:3]
    originals = good + ["only\tfive\tfields\there\tnow", "x" * (MAX_RECORD_BYTES + 1), "bad \ufffd", "1.0\tC1\t10.0.0.1\tnot-a-port" + "\t-" * 17]
    hints = [hint] * 5 + ["invalid-utf8", hint]
    # the port column of the last line is not a number
    r = parse("zeek", _raw(originals, hints))
    assert r.events.num_rows == 3
    reasons = dict(zip(r.deadletters.column("log.offset").to_pylist(), r.deadletters.column("reason").to_pylist()))
    assert reasons[30] == "zeek TSV line has 5 fields, header has 21"
    assert reasons[40].startswith("record exceeds 1 MiB") and "truncated" in reasons[40]
    originals_dl = dict(zip(r.deadletters.column("log.offset").to_pylist(), r.deadletters.column("event.original").to_pylist()))
    assert len(originals_dl[40]) == 64 * 1024
    assert reasons[50].startswith("invalid UTF-8")
    assert reasons[60] == "zeek TSV value does not fit its #types (id.orig_p: port)"
    assert set(r.deadletters.column("stage").to_pylist()) == {"parse"}


def test_bad_json_lines_are_isolated():
    lines = [
        '{"ts":1.5,"uid":"C1","id.orig_h":"10.0.0.1","id.orig_p":1,"id.resp_h":"10.0.0.2","id.resp_p":53,"proto":"udp","query":"a.example"}',
        '{"ts":2.5,"uid":"C2", "id.orig_h" "10.0.0.1"}',
        "[1, 2]",
        '{"ts":3.5,"uid":"C3","id.orig_h":"10.0.0.3","id.orig_p":2,"id.resp_h":"10.0.0.2","id.resp_p":53,"proto":"udp","query":"b.example"}',
    ]
    r = parse("zeek", _raw(lines, ["dns"] * 4, source="dns.log"))
    assert r.events.column("dns.question.name").to_pylist() == ["a.example", "b.example"]
    reasons = r.deadletters.column("reason").to_pylist()
    assert reasons[0].startswith("invalid JSON:") and len(reasons) == 2
    assert "not an object" in reasons[1]


def test_mixed_value_types_across_lines():
    lines = [
        '{"_path":"conn","ts":1.5,"uid":"C1","id.orig_h":"10.0.0.1","id.orig_p":1,"id.resp_h":"10.0.0.2","id.resp_p":80,"proto":"tcp","x":1}',
        '{"_path":"conn","ts":2.5,"uid":"C2","id.orig_h":"10.0.0.1","id.orig_p":1,"id.resp_h":"10.0.0.2","id.resp_p":80,"proto":"tcp","x":"str"}',
        '{"_path":"weird","ts":"2020-01-01T00:00:00Z","name":"bad_TCP_checksum"}',
    ]
    r = parse("zeek", _raw(lines, ["conn"] * 3))
    assert r.deadletters.num_rows == 0
    assert sorted(r.events.column("event.dataset").to_pylist()) == ["zeek.conn", "zeek.conn", "zeek.weird"]


def test_tsv_escapes_are_undone(tmp_path):
    p = tmp_path / "http.log"
    p.write_text(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\thttp\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\thost\turi\ttags\n"
        "#types\ttime\tstring\taddr\tport\taddr\tport\tstring\tstring\tset[enum]\n"
        "1.0\tC1\t10.0.0.1\t1\t10.0.0.2\t80\tcaf\\xc3\\xa9.example\t/a\\x09b\\xff\tx\\x2cy,z\n"
    )
    ev, dl = run(p)
    assert dl.num_rows == 0
    e = ev.to_pylist()[0]
    assert e["url.domain"] == "café.example"
    assert e["url.original"] == "/a\tb\\xff"  # invalid UTF-8 stays escaped
    assert json.loads(e["taishi.extra"])["tags"] == ["x,y", "z"]
    assert "\\x09" in e["event.original"]


def test_tsv_extras_are_valid_json_with_quotes(tmp_path):
    p = tmp_path / "weird.log"
    p.write_text(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tweird\n"
        "#fields\tts\tuid\tname\taddl\tpeer\n#types\ttime\tstring\tstring\tstring\tstring\n"
        '1.0\tC1\tbad_HTTP_request\tGET "/x" \\ y\tzeek\n'
        "2.0\tC2\tother\tplain\tzeek\n"
    )
    ev, dl = run(p)
    assert dl.num_rows == 0
    extras = [json.loads(x) for x in ev.column("taishi.extra").to_pylist()]
    assert extras[0]["addl"] == 'GET "/x" \\ y' and extras[1]["addl"] == "plain"
    assert ev.column("event.action").to_pylist() == ["bad_HTTP_request", "other"]


def test_tsv_custom_unset_and_empty_markers_and_control_characters(tmp_path):
    """Unset/empty markers are whole values (not prefixes), per the file's header; a raw control
    character in a value (not the separator) is escaped in the extras JSON."""
    p = tmp_path / "conn.log"
    p.write_text(
        "#separator \\x09\n#set_separator\t;\n#empty_field\tEMPTY\n#unset_field\tNA\n#path\tconn\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\torig_bytes\thistory\ttunnel_parents\n"
        "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tcount\tstring\tset[string]\n"
        "1.0\tC1\t10.0.0.1\t1\t10.0.0.2\t80\ttcp\tNA\tNA\tEMPTY\tEMPTY\n"
        "2.0\tC2\t10.0.0.1\t2\t10.0.0.2\t80\ttcp\tNAX\t7\tS\x01h\tNA\n"
        "3.0\tC3\t10.0.0.1\t3\t10.0.0.2\t80\ttcp\t-\t0\t(empty)\ta;EMPTY\n"
    )
    ev, dl = run(p)
    assert dl.num_rows == 0
    rows = ev.to_pylist()
    assert [r["network.protocol"] for r in rows] == [None, "NAX", "-"]
    assert [r["source.bytes"] for r in rows] == [None, 7, 0]
    extras = [json.loads(r["taishi.extra"]) for r in rows]
    assert [x["history"] for x in extras] == [None, "S\x01h", "(empty)"]
    assert [x["tunnel_parents"] for x in extras] == [[], None, ["a", "EMPTY"]]


def test_vectorised_event_ids_equal_the_reference_on_sliced_and_odd_input():
    from ingest.parsers import event_ids

    srcs = ["conn.log", "dns.log", "é.log", ""]
    texts = ["", "x", "tab\tsep", "caf\u00e9 \u2603", "\x1f", "a" * 5000]
    rows = [(srcs[i % 4], i * 7, texts[i % 6]) for i in range(50)]
    s, o, t = (pa.array([r[k] for r in rows]) for k in range(3))
    for lo, hi in ((0, 50), (3, 41), (49, 50), (10, 10)):
        got = event_ids(s.slice(lo, hi - lo), o.slice(lo, hi - lo), t.slice(lo, hi - lo)).to_pylist()
        assert got == [event_id(*r) for r in rows[lo:hi]]
    chunked = [pa.chunked_array([a.slice(0, 20), a.slice(20)]) for a in (s, o, t)]
    assert event_ids(*chunked).to_pylist() == [event_id(*r) for r in rows]
