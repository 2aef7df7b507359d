"""The syslog parser's column-wise fast path gives the same events, ids and dead
letters as its per-record path (``syslog.parse_per_record``, every row through
``_parse_line``): on every shared loghub sample (OpenSSH and Linux as files, as
RFC 3164 with PRI and as RFC 5424; Apache, which is mostly not syslog) and on edge
cases and generated lines."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.parsers import MAX_RECORD_BYTES, RAW_SCHEMA, now_utc
from ingest.parsers import syslog as sl

MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def _raw(lines, hint=None):
    return pa.Table.from_pylist(
        [{"taishi.source": "syslog-tcp", "log.offset": i, "log.file.path": None, "hint": hint, "event.original": ln}
         for i, ln in enumerate(lines)],
        schema=RAW_SCHEMA,
    )


def assert_same(lines, year=None):
    """Fast and per-record path agree on ``lines`` (the dead letters' wall-clock time aside)."""
    old = sl.DEFAULT_YEAR
    sl.DEFAULT_YEAR = year
    try:
        raw = _raw(lines)
        assert sl.FAST_PATH
        new, want = sl.parse(raw), sl.parse_per_record(raw)
    finally:
        sl.DEFAULT_YEAR = old
    assert new.events.schema == want.events.schema
    assert new.events.to_pylist() == want.events.to_pylist()
    drop = lambda t: t.drop_columns(["@timestamp"]).to_pylist()  # noqa: E731 - when it was dead-lettered
    assert drop(new.deadletters) == drop(want.deadletters)
    return new


def _as_5424(line: str) -> str:
    mon, day, hms, host, rest = (line.split(None, 4) + [""] * 5)[:5]
    tag, _, msg = rest.partition(": ")
    app, _, pid = tag.partition("[")
    m = MONTHS.index(mon) + 1 if mon in MONTHS else 1
    return f"<86>1 2026-{m:02d}-{int(day) if day.isdigit() else 1:02d}T{hms}Z {host or '-'} {app or '-'} {pid.rstrip(']') or '-'} - - {msg}"


@pytest.mark.parametrize("name", ["OpenSSH", "Linux", "Apache"])
@pytest.mark.parametrize("form", ["file", "rfc3164", "rfc5424"])
def test_shared_loghub_samples_identical(shared_data, name, form):
    lines = (shared_data / "logs/loghub" / name / f"{name}_2k.log").read_text(errors="replace").splitlines()
    if form == "rfc3164":
        lines = [f"<86>{ln}" for ln in lines]
    elif form == "rfc5424":
        lines = [_as_5424(ln) for ln in lines]
    res = assert_same(lines)
    if name != "Apache":
        assert res.events.num_rows >= 1990  # the comparison covers parsed events, not only dead letters
    if name != "Apache":  # and rows of the fast path
        assert len(sl._fast_rows(_raw(lines), now_utc())[1]) >= 1990
    for year in (2005, 2026):
        assert_same(lines[:300], year)


EDGE = [
    "\ufeff<13>Feb  5 17:32:18 host sshd[1]: BOM before the PRI",
    '<34>1 2003-10-11T22:14:15.003Z m.example.com su - ID47 [a@1 x="1\\"]2" y="\\\\"][b@2 z="]"] \ufeffmsg',
    '<34>1 2003-10-11T22:14:15.003Z m su - ID47 [a@1 x="unterminated',
    "<34>1 2003-10-11T22:14:15.003Z m su - ID47 -",
    "<34>1 2003-10-11T22:14:15.003Z m su - ID47",
    "<34>1 - - - - -",
    "<34>1 not-a-time host app 1 - - msg",
    "<192>Feb  5 17:32:18 host app: PRI out of range",
    "<abc>Feb  5 17:32:18 host app: bad PRI",
    "<1234>Feb  5 17:32:18 host app: PRI too long",
    "Feb 30 17:32:18 host app: no such day",
    "Feb  5 17:32:18.123456789 2024 host app[12]: fraction and year",
    "Feb  5 17:32:18 sshd[1]: no host",
    "Feb  5 17:32:18 host",
    "Feb  5 17:32:18 ",
    "2024-02-05T17:32:18+01:00 host sshd[2]: Failed password for invalid user  from 10.0.0.1 port 22 ssh2",
    "<38>2024-02-05 17:32:18 host sshd[3]: Accepted password for root from fe80::1 port 22",
    "Feb  5 17:32:18 host sshd[4]: Connection closed by authenticating user root 10.0.0.2 port 5 [preauth]",
    "Feb  5 17:32:18 host sshd[5]: Received disconnect from 10.0.0.3 port 6:11: Bye Bye [preauth]",
    "Feb  5 17:32:18 host sshd(pam_unix)[6]: PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=x.example  user=root",
    "Feb  5 17:32:18 host su(pam_unix)[7]: session opened for user news by (uid=0)",
    "Feb  5 17:32:18 host sudo: pam_unix(sudo:auth): authentication failure; logname=a uid=1 euid=0 tty=/dev/pts/0 ruser=a rhost=  user=a",
    "Feb  5 17:32:18 host sudo:   bob : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/bin/ls",
    "Feb  5 17:32:18 host su: FAILED SU (to root) alice on pts/2",
    "Feb  5 17:32:18 host login[8]: FAILED LOGIN 1 FROM 10.0.0.9 FOR bob, Authentication failure",
    "Feb  5 17:32:18 host login[8]: ROOT LOGIN ON tty1",
    "Feb  5 17:32:18 host login[8]: LOGIN ON tty2 BY carol",
    "Feb  5 17:32:18 host sshd[9]: error: maximum authentication attempts exceeded for root from 10.0.0.4 port 7 ssh2",
    "Feb  5 17:32:18 host sshd[9]: Disconnecting: Too many authentication failures for invalid user x [preauth]",
    "Feb  5 17:32:18 host sshd[9]: Did not receive identification string from 10.0.0.8",
    "Feb  5 17:32:18 host ftpd[9]: Authentication failed from 10.0.0.7 (h.example)",
    "Feb  5 17:32:18 host sshd[9]: pam_unix(sshd:auth): check pass; user unknown",
    "Feb  5 17:32:18 host sshd[9]: Failed password for bob from 10.0.0.1 port 22 ssh2 Accepted publickey for x from 1.2.3.4",
    "Feb  5 17:32:18 host sshd[9]: failed password for bob from 10.0.0.1",  # wrong case: no rule
    "Feb  5 17:32:18 host sshd[9]: Failed password for bob from 10.0.0.\u0661",  # Unicode digit
    "Feb  5 17:32:18 host kernel: pam_unix(cron:session): session closed for user root",
    "Feb  5 17:32:18 host app: " + "x" * 70000,
    "x" * (MAX_RECORD_BYTES + 10),  # oversized: dead-lettered before parsing
    "",
    "   ",
    "\x00\x01",
    "not syslog at all",
    # shapes at the fast path's edges (RE2 header split; anything it does not cover goes per record)
    "Feb  5 17:32:18 2024 sshd[1]: year, then no host",
    "Feb  5 17:32:18 2024 host sshd[1]: year and host",
    "Feb  5 17:32:18 host  sshd[1]: two spaces after the host",
    "Feb  5 17:32:18 host sshd[99999999999999999999]: pid beyond int64",
    "<13>1 2026-01-01T00:00:00Z host app 99999999999999999999 - - RFC 5424 procid beyond int64",
    "Feb  5 17:32:18 host sshd[0042]:    leading zeros and spaces",
    "Feb  5 17:32:18 host: app: host ends with a colon",
    "Feb  5 17:32:18 host app(x:y): colon inside the parentheses",
    "Feb  5 17:32:18 host message without a tag",
    "Feb  5 17:32:18 host app:",
    "Feb  5 17:32:18 host xpa: m_ pam_ across program and message",
    "Feb  5 17:32:18 host sudo[1]: pam_unix(sudo:session): session opened for user root by bob(uid=1000)",
    "Feb  5 17:32:18 host SSHD[1]: Accepted password for root from 10.0.0.1 port 22",
    "Feb  5 17:32:18 host sshd[1]:\tFailed password for tab from 10.0.0.1 port 22",
    "Feb  5 17:32:18 host sshd[1]: Failed password for caf\u00e9 from 10.0.0.1 port 22",
    "Feb 29 17:32:18 host app: leap day (valid only in some years)",
    "<191>Dec 31 23:59:59.5 host app: last PRI, fraction",
    "<0>Jan  1 00:00:00 host app: first PRI",
    "<13>1 2026-01-01T00:00:00Z host app 12 ID1 - ",
    "<13>1 2026-01-01T00:00:00Z host app 12 ID1 -",
    "<13>1 2026-01-01T00:00:00Z host app 12 ID1 -x not a nil SD",
    "<13>1 2026-01-01T00:00:00Z -h -a - - - dash-led host and app",
    "<13>1 2026-01-01T00:00:00Z - sshd 1 - - Failed password for root from 10.0.0.1 port 22 ssh2",
    "<13>1 2026-01-01T00:00:00.1234567+05:30 host sshd(pam_unix) 0x1 - - pam_unix(sshd:auth): check pass; user unknown",
    "<13>1 2026-02-30T00:00:00Z host app 1 - - no such day",
    "<13>1 2026-01-01T25:00:00+01:00 host app 1 - - no such hour",
    "<200>1 2026-01-01T00:00:00Z host app 1 - - PRI out of range",
    "<13>1 2026-01-01T00:00:00Z  host app 1 - - two spaces",
    "<13>12 2026-01-01T00:00:00-08:00 host SUDO 1 - -   bob : TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/bin/ls",
    "Feb  5 17:32:18 host sshd[1]: reverse mapping checking getaddrinfo for 10.0.0.1 [h.example] failed - POSSIBLE BREAK-IN ATTEMPT!",
    "Feb  5 17:32:18 host sshd[1]: reverse mapping checking getaddrinfo for a.example [b.example] failed - POSSIBLE BREAK-IN ATTEMPT!",
    "Feb  5 17:32:18 host cron[1]: session opened for user root by alice(uid=1000)",
    "Feb  5 17:32:18 host cron[1]: session opened for user root by root(uid=0)",
    "Feb  5 17:32:18 host sshd[1]: Connection closed by invalid user admin host.example port 22 [preauth]",
    "Feb  5 17:32:18 host sshd[1]: Received disconnect from fe80::1: 11: bye",
    "Feb  5 17:32:18 host sshd[1]: Accepted publickey for host from host port 1",
    "Feb  5 17:32:18 host sshd[1]: PAM 1 more authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.1.1.1",
    "Feb  5 17:32:18 host sshd[1]: Invalid user  from 10.0.0.1",
    "Feb  5 17:32:18 host sshd[1]: input_userauth_request: invalid user ",
    # no "tag:" after the host: the rest is the message (one RE2 pass with the header)
    "Jun 19 04:09:11 combo syslogd 1.4.1: restart.",
    "Jul  7 08:06:15 combo  -- root[2421]: ROOT LOGIN ON tty2",
    "Feb  5 17:32:18 host -- pam_unix(sshd:auth): check pass; user unknown",
    "Feb  5 17:32:18 host trailing space ",
    "Feb  5 17:32:18 host ",
    "Feb  5 17:32:18 2024 syslogd 1.4.1: year, then a tagless message",
    "Feb  5 17:32:18 2024 host",
    "Feb  5 17:32:18 2024 host ",
    "Feb  5 17:32:18 2024 2025 sshd[1]: two years",
    "Feb  5 17:32:18 20245 sshd[1]: five digits are a host",
    "Feb  5 17:32:18.5 2024: app[1]: year followed by a colon",
    "Feb  5 17:32:18 host app[12x]: m",
    "Feb  5 17:32:18 host app[]: empty pid",
    "Feb  5 17:32:18 host sudo  bob : TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/bin/ls",
    # PAM services and the sudo/su programs (their own rules per record, the generic ones column-wise)
    "Feb  5 17:32:18 host su(pam_unix)[7]: pam_unix(su:auth): authentication failure; logname=a uid=1 euid=0 tty=pts/0 ruser=a rhost=  user=root",
    "Feb  5 17:32:18 host kernel: pam_unix(sudo:auth): authentication failure; logname=a uid=1 euid=0 tty= ruser=a rhost=h.example",
    "Feb  5 17:32:18 host sudo: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.0.0.1",
    "Feb  5 17:32:18 host cron: pam_unix(su-l:auth): authentication failure; logname= uid=0 euid=0 tty= ruser= rhost=",
    "Feb  5 17:32:18 host su: pam_unix(x y): FAILED SU (to root) bob on pts/1",
    "Feb  5 17:32:18 host su: session opened for user root by bob(uid=1000)",
    "Feb  5 17:32:18 host su[3]: Successful su for root by bob",
    "Feb  5 17:32:18 host sudo[4]: Failed password for bob from 10.0.0.1 port 22 ssh2",
    "Feb  5 17:32:18 host Su: (to root) bob on pts/3",
]


def test_edge_cases_identical():
    assert_same(EDGE)
    assert_same(EDGE, 2026)


_words = st.sampled_from(["Failed", "password", "for", "invalid", "user", "from", "port", "Accepted", "publickey",
                          "session", "opened", "closed", "by", "root", "(uid=0)", "10.0.0.1", "::1", "PAM", "LOGIN",
                          "ON", "FROM", "FOR", "TTY=pts/0", ";", "COMMAND=/bin/id", "USER=root", "PWD=/", "su", ":",
                          "authentication", "failure;", "logname=", "rhost=h", "Connection", "disconnect", "Received",
                          "\ufeff", "[x@1", 'a="\\]"]', "-", "\\", "22", "BY", "ON", "tty1"])


@st.composite
def syslog_lines(draw):
    msg = " ".join(draw(st.lists(_words, max_size=14))) + draw(st.text(max_size=6))
    pri = draw(st.sampled_from(["", "<0>", "<86>", "<191>", "<192>", "<x>", "<13>"]))
    host = draw(st.sampled_from(["host", "10.0.0.5", "", "a.b"]))
    tag = draw(st.sampled_from(["sshd[12]", "sudo", "su", "login", "sshd(pam_unix)[3]", "kernel", "cron", "app(x)",
                                "syslogd 1.4", "--", "2024", "a[1]x"]))
    if draw(st.booleans()):
        mon = draw(st.sampled_from(MONTHS + ["Foo"]))
        day = draw(st.integers(0, 32))
        ts = f"{mon} {day:>2} {draw(st.integers(0, 24)):02d}:{draw(st.integers(0, 60)):02d}:0{draw(st.integers(0, 9))}"
        return f"{pri}{ts} {host + ' ' if host else ''}{tag}: {msg}"
    sd = draw(st.sampled_from(["-", '[a@1 k="v"]', '[a@1 k="\\"]"][b@2]', "[", "-x"]))
    return f"{pri or '<13>'}1 2026-11-29T16:00:0{draw(st.integers(0, 9))}Z {host or '-'} {tag.split('[')[0]} 7 ID {sd} {msg}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(syslog_lines(), min_size=1, max_size=40))
def test_generated_lines_identical(lines):
    assert_same(lines)
