"""Syslog parser: loghub OpenSSH/Linux checked against the loghub structured CSVs
(independent ground truth: one EventTemplate per line), RFC 5424, sudo/su, years."""

from __future__ import annotations

import collections
import csv
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from ingest.files import read_records
from ingest.parsers import RAW_SCHEMA, parse
from ingest.parsers import syslog as sl


def run(path):
    evs, dls = [], []
    for raw in read_records(path, "syslog", batch_size=500):
        r = parse("syslog", raw)
        evs.append(r.events)
        dls.append(r.deadletters)
    return pa.concat_tables(evs), pa.concat_tables(dls)


def loghub(shared_data, name):
    d = shared_data / "logs/loghub" / name
    ev, dl = run(d / f"{name}_2k.log")
    with open(d / f"{name}_2k.log_structured.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    return ev, dl, truth


def test_openssh_against_loghub_templates(shared_data):
    ev, dl, truth = loghub(shared_data, "OpenSSH")
    assert dl.num_rows == 0 and ev.num_rows == len(truth) == 2000
    rows = ev.to_pylist()
    by_tpl = collections.defaultdict(list)
    for e, t in zip(rows, truth):
        assert e["process.pid"] == int(t["Pid"]) and e["host.name"] == t["Component"]
        assert e["message"].strip() == t["Content"].strip()
        by_tpl[t["EventTemplate"]].append(e)

    def count(pred):
        return sum(1 for e in rows if pred(e))

    failed_pw = [e for tpl, es in by_tpl.items() if tpl.startswith(("Failed password", "Failed none")) or "[ Failed password" in tpl for e in es]
    assert len(failed_pw) == 383 + 135 + 4 + 2  # E9 + E10 + E8 + E14
    assert all(e["event.outcome"] == "failure" and e["event.action"] == "ssh_login" for e in failed_pw)
    assert all(e["source.ip"] and e["user.name"] for e in failed_pw)
    assert count(lambda e: e["event.action"] == "ssh_login" and e["event.outcome"] == "failure") == len(failed_pw)
    accepted = by_tpl["Accepted password for <*> from <*> port <*> ssh2"]
    assert count(lambda e: e["event.action"] == "ssh_login" and e["event.outcome"] == "success") == len(accepted) == 1
    assert accepted[0]["user.name"] == "fztu" and accepted[0]["source.ip"] == "119.137.62.142"
    invalid = by_tpl["Invalid user <*> from <*>"]
    assert count(lambda e: e["event.action"] == "ssh_invalid_user" and e["source.ip"]) == len(invalid) == 113
    pam_fail = [e for tpl, es in by_tpl.items() if "authentication failure" in tpl and "logname=" in tpl for e in es]
    assert count(lambda e: e["event.action"] == "authentication_failure") == len(pam_fail) == 504
    assert all(e["source.ip"] or e["source.domain"] for e in pam_fail)
    rev = by_tpl["reverse mapping checking getaddrinfo for <*> [<*>] failed - POSSIBLE BREAK-IN ATTEMPT!"]
    assert all(e["event.action"] == "ssh_reverse_mapping_failed" and e["source.ip"] for e in rev) and len(rev) == 85
    closed = [e for tpl, es in by_tpl.items() if tpl.startswith(("Connection closed by", "Received disconnect", "error: Received disconnect")) for e in es]
    assert count(lambda e: e["event.action"] == "ssh_disconnect") == len(closed) == 502
    assert set(ev.column("event.dataset").to_pylist()) == {"system.auth"}
    # the first line: Dec 10 06:55:46, year inferred (Dec in the future -> last year)
    ts = rows[0]["@timestamp"]
    assert (ts.month, ts.day, ts.hour, ts.minute, ts.second) == (12, 10, 6, 55, 46)
    assert ts <= datetime.now(timezone.utc)
    assert rows[1]["related.ip"] == ["173.234.31.186"] and rows[1]["related.user"] == ["webmaster"]


def test_linux_against_loghub_templates(shared_data):
    ev, dl, truth = loghub(shared_data, "Linux")
    assert dl.num_rows == 0 and ev.num_rows == len(truth) == 2000
    rows = ev.to_pylist()
    tpl = [t["EventTemplate"] for t in truth]
    auth_fail = sum(1 for t in tpl if t.startswith("authentication failure;"))
    assert sum(1 for e in rows if e["event.action"] == "authentication_failure" and e["process.name"] == "sshd") == auth_fail - 1
    # (the one E15 'tty=:0' failure is from another program)
    assert sum(1 for e in rows if e["event.action"] == "authentication_failure" and e["event.outcome"] == "failure") == auth_fail + sum(
        1 for t in tpl if t.startswith("Authentication failed from")
    )
    opened = sum(1 for t in tpl if t.startswith("session opened for user"))
    assert sum(1 for e in rows if e["event.action"] == "session_opened") == opened == 123
    closed = sum(1 for t in tpl if t.startswith("session closed for user"))
    assert sum(1 for e in rows if e["event.action"] == "session_closed") == closed == 123
    # program names: sshd(pam_unix) -> process.name sshd, appname kept
    comps = collections.Counter(t["Component"] for t in truth)
    assert sum(1 for e in rows if e["log.syslog.appname"] == "sshd(pam_unix)") == comps["sshd(pam_unix)"]
    assert sum(1 for e in rows if e["process.name"] == "su") == comps["su(pam_unix)"]
    users = {e["user.name"] for e in rows if e["event.action"] == "session_opened"}
    assert {"cyrus", "news"} <= users
    datasets = collections.Counter(ev.column("event.dataset").to_pylist())
    assert datasets["system.syslog"] > 0 and datasets["system.auth"] >= auth_fail + opened + closed


def _raw(lines):
    return pa.Table.from_pylist(
        [
            {"taishi.source": "auth.log", "log.offset": i * 100, "log.file.path": "/var/log/auth.log", "hint": None, "event.original": ln}
            for i, ln in enumerate(lines)
        ],
        schema=RAW_SCHEMA,
    )


def test_rfc5424_and_auth_programs():
    lines = [
        '<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 [exampleSDID@32473 iut="3" eventSource="App\\]x"] \ufeffsu failed',
        "<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.",
        "<13>Feb  5 17:32:18 10.0.0.99 sudo:   alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/sh -c id",
        "Mar  1 10:00:00 web sudo: pam_unix(sudo:auth): authentication failure; logname=alice uid=1000 euid=0 tty=/dev/pts/0 ruser=alice rhost=  user=alice",
        "Mar  1 10:00:00 web su: (to root) alice on pts/1",
        "Mar  1 10:00:01 web su: pam_unix(su:session): session opened for user root by alice(uid=1000)",
        "Mar  1 10:00:02 web sshd[99]: Accepted publickey for bob from 2001:db8::1 port 2222 ssh2: ED25519 SHA256:x",
        "Mar  1 10:00:03 web sshd[99]: error: maximum authentication attempts exceeded for invalid user admin from 10.1.1.1 port 5 ssh2 [preauth]",
        "Mar  1 10:00:04 web kernel: [12.3] eth0: link up",
        "this is not syslog",
        "<999>Mar  1 10:00:04 web kernel: bad pri",
    ]
    r = parse("syslog", _raw(lines))
    rows = r.events.to_pylist()
    a = rows[0]
    assert a["@timestamp"] == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=timezone.utc)
    assert (a["log.syslog.version"], a["log.syslog.msgid"], a["log.syslog.appname"]) == ("1", "ID47", "su")
    assert a["log.syslog.structured_data"] == '[exampleSDID@32473 iut="3" eventSource="App\\]x"]'
    assert a["message"] == "su failed" and a["host.name"] == "mymachine.example.com"
    assert (a["log.syslog.facility.code"], a["log.syslog.severity.code"]) == (4, 2)
    b = rows[1]
    assert b["@timestamp"] == datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=timezone.utc)
    assert b["process.pid"] == 8710 and b["log.syslog.structured_data"] is None
    sudo = rows[2]
    assert (sudo["event.action"], sudo["event.outcome"], sudo["user.name"], sudo["user.effective.name"]) == ("sudo", "success", "alice", "root")
    assert sudo["process.command_line"] == "/bin/sh -c id" and sudo["process.working_directory"] == "/home/alice"
    assert sudo["event.dataset"] == "system.auth" and sudo["event.category"] == "authentication"
    assert rows[3]["event.action"] == "sudo_authentication_failure" and rows[3]["user.name"] == "alice"
    assert (rows[4]["event.action"], rows[4]["user.name"], rows[4]["user.effective.name"]) == ("su", "alice", "root")
    assert (rows[5]["event.action"], rows[5]["user.name"], rows[5]["user.effective.name"]) == ("session_opened", "alice", "root")
    acc = rows[6]
    assert (acc["event.outcome"], acc["user.name"], acc["source.ip"], acc["source.port"]) == ("success", "bob", "2001:db8::1", 2222)
    mx = rows[7]
    assert (mx["event.action"], mx["user.name"], mx["source.ip"]) == ("ssh_max_auth_exceeded", "admin", "10.1.1.1")
    assert rows[8]["event.dataset"] == "system.syslog" and rows[8]["process.name"] == "kernel"
    reasons = r.deadletters.column("reason").to_pylist()
    assert reasons == ["not a syslog line (no RFC 3164/5424 header)", "syslog PRI 999 out of range"]


def test_year_inference():
    now = datetime(2026, 1, 2, 0, 0, tzinfo=timezone.utc)
    assert sl.infer_year(12, 31, "23:00:00", now).year == 2025  # would be in the future
    assert sl.infer_year(1, 1, "23:00:00", now).year == 2026
    assert sl.infer_year(6, 1, "00:00:00", now, year=2019).year == 2019
    old = sl.DEFAULT_YEAR
    try:
        sl.DEFAULT_YEAR = 2005
        assert sl.infer_year(12, 31, "23:00:00", now).year == 2005
    finally:
        sl.DEFAULT_YEAR = old


@pytest.mark.parametrize("bad", ["", "   ", "\x00\x01"])
def test_junk_is_dead_lettered(bad):
    r = parse("syslog", _raw([bad]))
    assert r.events.num_rows == 0 and r.deadletters.num_rows == 1
