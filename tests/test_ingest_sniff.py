"""Format sniffing on every shared sample and on small synthetic files."""

from __future__ import annotations

import gzip

import pytest

from ingest.parsers import PARSERS
from ingest.sniff import FORMATS, sniff


def test_every_shared_sample(shared_data):
    for p in sorted((shared_data / "zeek").rglob("*")):
        if p.is_file():
            assert sniff(p) == ("unknown" if p.name == "labels.config" else "zeek"), p
    for p in sorted((shared_data / "suricata").rglob("*.json")):
        assert sniff(p) == "suricata", p
    assert sniff(shared_data / "logs/loghub/OpenSSH/OpenSSH_2k.log") == "syslog"
    assert sniff(shared_data / "logs/loghub/Linux/Linux_2k.log") == "syslog"
    # an Apache error log starts with '[' but is no JSON array
    assert sniff(shared_data / "logs/loghub/Apache/Apache_2k.log") == "unknown"


@pytest.mark.parametrize(
    "text,fmt",
    [
        ("#separator \\x09\n#set_separator\t,\n", "zeek"),
        ('{"_path":"conn","ts":1.0}\n', "zeek"),
        ('{"ts":1.0,"uid":"C1","id.orig_h":"1.1.1.1"}\n', "zeek"),
        ('{"timestamp":"2020-01-01T00:00:00Z","event_type":"alert"}\n', "suricata"),
        ('[\n  {\n    "event_type": "alert"\n  }\n]\n', "suricata"),
        ("Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user webmaster from 173.234.31.186\n", "syslog"),
        ("<13>Feb  5 17:32:18 10.0.0.99 sudo: x\n", "syslog"),
        ("<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed\n", "syslog"),
        ("CEF:0|Security|threatmanager|1.0|100|worm|10|src=10.0.0.1\n", "cef"),
        ("Sep 19 08:26:10 host CEF:0|Security|threatmanager|1.0|100|worm|10|src=10.0.0.1\n", "cef"),
        ('{"msg":"hello","level":"info"}\n{"msg":"x"}\n', "json"),
        ("hello world\nfoo bar\n", "unknown"),
        ("", "unknown"),
    ],
)
def test_synthetic(tmp_path, text, fmt):
    p = tmp_path / "sample.txt"
    p.write_text(text)
    assert sniff(p) == fmt
    g = tmp_path / "sample.txt.gz"
    g.write_bytes(gzip.compress(text.encode()))
    assert sniff(g) == fmt


def test_format_names_are_parsers():
    assert set(FORMATS) - {"unknown"} <= set(PARSERS)
