"""ingest.files: framing of plain/.gz files, JSON arrays, Zeek TSV headers, the tailer."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from ingest.files import FileTailer, read_records, source_name, zeek_path_from_name
from ingest.parsers import INVALID_UTF8_HINT, MAX_RECORD_BYTES, RAW_SCHEMA, parse

CONN_008 = "zeek/stratosphere_sdt/008-zeek-mixed/conn.log.labeled"


def _all(path, fmt, **kw) -> pa.Table:
    batches = list(read_records(path, fmt, **kw))
    for b in batches:
        assert b.schema == RAW_SCHEMA
    return pa.concat_tables(batches) if batches else RAW_SCHEMA.empty_table()


def _data_lines(path: Path) -> list[tuple[int, bytes]]:
    """(offset, line) of every non-header, non-empty line: an independent reader."""
    out, off = [], 0
    with open(path, "rb") as f:
        for line in f:
            body = line.rstrip(b"\n")
            if body and not body.startswith(b"#"):
                out.append((off, body))
            off += len(line)
    return out


@pytest.mark.parametrize(
    "name,expected",
    [
        ("conn.log", "conn"),
        ("conn.log.labeled", "conn"),
        ("labeled-conn.log", "conn"),
        ("dns.json.gz", "dns"),
        ("conn.00:00:00-01:00:00.log", "conn"),
        ("/x/y/smb_files.json.gz", "smb_files"),
        ("known_services.log", "known_services"),
    ],
)
def test_zeek_path_from_name(name, expected):
    assert zeek_path_from_name(name) == expected


def test_source_name_drops_gz():
    assert source_name("/a/b/dns.json.gz") == "dns.json"
    assert source_name("/a/b/conn.log.labeled") == "conn.log.labeled"


def test_zeek_tsv_framing_offsets_and_header(shared_data):
    path = shared_data / CONN_008
    t = _all(path, "zeek", batch_size=1000)
    expected = _data_lines(path)
    assert t.num_rows == len(expected) == 5663  # grep -vc '^#' conn.log.labeled
    assert t.column("log.offset").to_pylist() == [o for o, _ in expected]
    assert t.column("event.original").to_pylist() == [b.decode() for _, b in expected]
    assert set(t.column("taishi.source").to_pylist()) == {"conn.log.labeled"}
    assert set(t.column("log.file.path").to_pylist()) == {str(path)}
    hints = set(t.column("hint").to_pylist())
    assert len(hints) == 1
    hint = json.loads(hints.pop())
    with open(path) as f:
        fields_line = next(ln for ln in f if ln.startswith("#fields"))
    assert hint["fields"] == fields_line.rstrip("\n").split("\t")[1:]
    assert hint["path"] == "conn" and hint["separator"] == "\t" and hint["unset_field"] == "-"
    assert len(hint["types"]) == len(hint["fields"]) == 23


def test_start_offset_resumes_with_header(shared_data):
    path = shared_data / CONN_008
    full = _all(path, "zeek")
    k = 1234
    start = full.column("log.offset")[k].as_py()
    rest = _all(path, "zeek", start=start)
    assert rest.num_rows == full.num_rows - k
    assert rest.column("log.offset").to_pylist() == full.column("log.offset").to_pylist()[k:]
    assert rest.column("hint").to_pylist() == full.column("hint").to_pylist()[k:]


def test_gz_offsets_are_in_decompressed_bytes(shared_data):
    path = shared_data / "zeek/wrccdc2018_zed/ssh.json.gz"
    data = gzip.decompress(path.read_bytes())
    lines = [ln for ln in data.split(b"\n") if ln]
    t = _all(path, "zeek")
    assert t.num_rows == len(lines) == 22
    assert set(t.column("hint").to_pylist()) == {"ssh"}
    assert set(t.column("taishi.source").to_pylist()) == {"ssh.json"}
    for off, orig in zip(t.column("log.offset").to_pylist(), t.column("event.original").to_pylist()):
        assert data[off : off + len(orig.encode())] == orig.encode()


@pytest.mark.parametrize("sample", ["honeypot-2018", "wrccdc-2017", "first-org-conf-2015"])
def test_json_array_elements_are_records(shared_data, sample):
    path = shared_data / "suricata/frank_samples" / sample / "alerts-only.json"
    items = json.loads(path.read_text())
    t = _all(path, "suricata", batch_size=50)
    assert t.num_rows == len(items)
    assert t.column("log.offset").to_pylist() == list(range(len(items)))
    assert [json.loads(s) for s in t.column("event.original").to_pylist()] == items
    assert all("\n" not in s for s in t.column("event.original").to_pylist())
    # resume by element index
    assert _all(path, "suricata", start=10).column("log.offset").to_pylist()[0] == 10


def test_empty_lines_crlf_invalid_utf8_and_oversized(tmp_path):
    p = tmp_path / "x.log"
    big = b"A" * (MAX_RECORD_BYTES + 10)
    p.write_bytes(b"one\r\n\n   \ntwo \xff\xfe bytes\n" + big + b"\nlast-no-newline")
    t = _all(p, "syslog")
    originals = t.column("event.original").to_pylist()
    assert originals[0] == "one"
    assert originals[1] == "two \ufffd\ufffd bytes"
    assert t.column("hint").to_pylist()[:2] == [None, INVALID_UTF8_HINT]
    assert len(originals[2]) == len(big)
    assert originals[3] == "last-no-newline"
    assert t.num_rows == 4
    assert t.column("log.offset").to_pylist() == [0, 10, 23, 23 + len(big) + 1]


def test_combined_label_column_header(tmp_path):
    """'tunnel_parents   label   detailed-label' in one #fields entry -> three fields."""
    p = tmp_path / "conn.log.labeled"
    fields = "ts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttunnel_parents   label   detailed-label"
    types = "time\tstring\taddr\tport\taddr\tport\tenum\tset[string]"
    p.write_text(
        "#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n"
        f"#fields\t{fields}\n#types\t{types}\n"
        "1.5\tC1\t10.0.0.1\t1\t10.0.0.2\t2\ttcp\t-\tMalicious\tC&C\n#close\t2020\n"
    )
    t = _all(p, "zeek")
    assert t.num_rows == 1
    hint = json.loads(t.column("hint")[0].as_py())
    assert hint["fields"][-3:] == ["tunnel_parents", "label", "detailed-label"]
    assert hint["types"][-3:] == ["set[string]", "string", "string"]
    r = parse("zeek", t)
    assert r.deadletters.num_rows == 0
    extra = json.loads(r.events.column("taishi.extra")[0].as_py())
    assert extra["label"] == "Malicious" and extra["detailed-label"] == "C&C"


# --- FileTailer ---------------------------------------------------------------


def _rows(tables) -> list[tuple[int, str]]:
    out = []
    for t in tables:
        out += list(zip(t.column("log.offset").to_pylist(), t.column("event.original").to_pylist()))
    return out


def test_tailer_append_commit_restart_partial(tmp_path):
    log, cp = tmp_path / "app.log", tmp_path / "state" / "app.cp"
    log.write_bytes(b"a1\na2\n")
    t1 = FileTailer(log, "syslog", cp)
    assert _rows(t1.poll()) == [(0, "a1"), (3, "a2")]
    assert _rows(t1.poll()) == []  # nothing new, nothing re-read
    with open(log, "ab") as f:
        f.write(b"a3\npart")
    assert _rows(t1.poll()) == [(6, "a3")]  # the partial line waits
    t1.commit()
    saved = json.loads(cp.read_text())
    assert saved["offset"] == 9
    st = os.stat(log)
    assert (saved["inode"], saved["device"]) == (st.st_ino, st.st_dev)
    with open(log, "ab") as f:
        f.write(b"ial\na4\n")
    # a crash before commit: a new tailer resumes at the committed offset
    t2 = FileTailer(log, "syslog", cp)
    assert _rows(t2.poll()) == [(9, "partial"), (17, "a4")]
    t2.commit()
    t3 = FileTailer(log, "syslog", cp)
    assert _rows(t3.poll()) == []


def test_tailer_uncommitted_records_are_read_again(tmp_path):
    log, cp = tmp_path / "app.log", tmp_path / "app.cp"
    log.write_bytes(b"x1\nx2\n")
    t1 = FileTailer(log, "syslog", cp)
    first = _rows(t1.poll())
    t1.commit(first[0][0] + len("x1") + 1)  # only x1 handled
    t2 = FileTailer(log, "syslog", cp)
    assert _rows(t2.poll()) == [(3, "x2")]


def test_tailer_rotation_and_truncation(tmp_path):
    log, cp = tmp_path / "app.log", tmp_path / "app.cp"
    log.write_bytes(b"old1\nold2\n")
    t = FileTailer(log, "syslog", cp)
    assert len(_rows(t.poll())) == 2
    t.commit()
    # rotation: the file is replaced by a new one (new inode)
    os.rename(log, tmp_path / "app.log.1")
    log.write_bytes(b"new1\n")
    t2 = FileTailer(log, "syslog", cp)
    assert _rows(t2.poll()) == [(0, "new1")]
    t2.commit()
    # truncation in place (same inode, smaller than the offset)
    with open(log, "wb") as f:
        f.write(b"")
    assert _rows(t2.poll()) == []
    with open(log, "ab") as f:
        f.write(b"z\n")
    assert _rows(t2.poll()) == [(0, "z")]


def test_tailer_zeek_header_survives_restart(shared_data, tmp_path):
    src = (shared_data / "zeek/stratosphere_sdt/006-ssh-honeypot/conn.log").read_bytes()
    lines = src.split(b"\n")
    head = b"\n".join(lines[:10]) + b"\n"  # header + first 2 data lines
    log, cp = tmp_path / "conn.log", tmp_path / "conn.cp"
    log.write_bytes(head)
    t1 = FileTailer(log, "zeek", cp)
    b1 = list(t1.poll())
    t1.commit()
    log.write_bytes(src)  # the rest arrives (same inode: write in place)
    t2 = FileTailer(log, "zeek", cp)
    b2 = list(t2.poll())
    got = pa.concat_tables(b1 + b2)
    ref = _all(log, "zeek")
    assert got.column("log.offset").to_pylist() == ref.column("log.offset").to_pylist()
    assert got.column("hint").to_pylist() == ref.column("hint").to_pylist()
    # same ids whichever way the file was read
    ids_tail = parse("zeek", got).events.column("event.id").to_pylist()
    ids_file = parse("zeek", ref).events.column("event.id").to_pylist()
    assert ids_tail == ids_file and len(ids_file) == 18


def test_vector_and_line_framing_agree(tmp_path):
    """Chunks framed without a python loop and chunks framed line by line (here
    forced by a CR) give the same records."""
    body = b"a 1\n   \n\t\nb 2\n\nc 3\n"
    plain, crlf = tmp_path / "p.log", tmp_path / "c.log"
    plain.write_bytes(body)
    crlf.write_bytes(body + b"d 4\r\n")
    p = _all(plain, "syslog")
    c = _all(crlf, "syslog")
    assert p.column("event.original").to_pylist() == ["a 1", "b 2", "c 3"]
    assert p.column("log.offset").to_pylist() == [0, 10, 15]
    assert c.column("event.original").to_pylist() == ["a 1", "b 2", "c 3", "d 4"]
    assert c.column("log.offset").to_pylist() == [0, 10, 15, 19]


def test_zeek_header_blocks_mid_file_and_close_lines(tmp_path, monkeypatch):
    """Header and '#close' lines are framed one by one and the data lines between them column-wise
    (small chunks so that runs fall inside and across chunks): every record carries the header in
    force at its line, with its byte offset, and the same records as the line-by-line path."""
    import ingest.files as files

    def header(path, fields):
        return (f"#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\t{path}\n"
                f"#fields\t{chr(9).join(fields)}\n#types\t{chr(9).join(['string'] * len(fields))}\n")

    text = (header("conn", ["ts", "uid"]) + "".join(f"{i}\tC{i}\n" for i in range(300)) + "#close\tx\n"
            + header("dns", ["ts", "uid", "query"]) + "".join(f"{i}\tD{i}\tq{i}\n" for i in range(300))
            + "#close\ty\n")
    p = tmp_path / "mixed.log"
    p.write_text(text)
    monkeypatch.setattr(files, "CHUNK", 1500)
    got = _all(p, "zeek")
    lines = _data_lines(p)
    assert got.column("log.offset").to_pylist() == [o for o, _ in lines]
    assert got.column("event.original").to_pylist() == [b.decode() for _, b in lines]
    paths = [json.loads(h)["path"] for h in got.column("hint").to_pylist()]
    assert paths == ["conn"] * 300 + ["dns"] * 300
    assert [len(json.loads(h)["fields"]) for h in got.column("hint").to_pylist()] == [2] * 300 + [3] * 300
    monkeypatch.setattr(files._Framer, "feed_chunk", lambda *a: None)  # every line through feed()
    assert _all(p, "zeek").equals(got)
