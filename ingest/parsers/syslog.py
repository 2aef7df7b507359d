"""Syslog (RFC 3164 BSD lines, with or without ``<PRI>``; RFC 5424) -> ECS.

Linux authentication messages (sshd, PAM, sudo, su, login) are parsed into
``user.name``, ``source.ip``/``source.port``, ``event.action`` and
``event.outcome``; such events get ``event.category=authentication`` (sessions:
``session``) and ``event.dataset=system.auth``; everything else is
``system.syslog``.

RFC 3164 timestamps have no year: :data:`DEFAULT_YEAR` (None = the current
year) is used unless that puts the record more than a day in the future, then
the previous year. Times without a zone are taken as UTC (:data:`DEFAULT_TZ`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import (
    EVENT_SCHEMA,
    INVALID_UTF8_HINT,
    ParseResult,
    _register,
    events_from_raw,
    one_chunk,
    parse_lines,
    now_utc,
    raw_event_columns,
    related,
    result,
    safe_parser,
    to_utc,
)

DEFAULT_YEAR: int | None = None  # None: current year (previous one if that is in the future)
DEFAULT_TZ: tzinfo = timezone.utc  # zone of timestamps that carry none (RFC 3164)

_MONTHS = {m: i + 1 for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}

RFC5424 = re.compile(r"^<(?P<pri>\d{1,3})>(?P<ver>\d{1,2}) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+)(?: (?P<rest>.*))?$", re.S)
RFC3164 = re.compile(
    r"^(?:<(?P<pri>\d{1,3})>)?(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(?P<day>\d{1,2}) "
    r"(?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?(?: (?P<year>\d{4}))? (?P<rest>.*)$",
    re.S,
)
ISO_HEADER = re.compile(r"^(?:<(?P<pri>\d{1,3})>)?(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) (?P<rest>.*)$", re.S)
TAG = re.compile(r"^(?P<tag>[^\s:\[\]]+?(?:\([^)\s]*\))?)(?:\[(?P<pid>\d+)\])?: ?(?P<msg>.*)$", re.S)


def infer_year(month: int, day: int, hms: str, now: datetime | None = None, year: int | None = None) -> datetime:
    """A year-less BSD timestamp as an aware UTC datetime (see module doc)."""
    now = now or now_utc()
    y = year if year is not None else (DEFAULT_YEAR if DEFAULT_YEAR is not None else now.year)
    h, m, s = (int(x) for x in hms.split(":"))
    dt = datetime(y, month, day, h, m, s, tzinfo=DEFAULT_TZ)
    if year is None and DEFAULT_YEAR is None and dt - now > timedelta(days=1):
        dt = dt.replace(year=y - 1)
    return dt.astimezone(timezone.utc)


@lru_cache(maxsize=8192)
def _bsd_time(mon: str, day: str, hms: str, frac: str | None, year: str | None, now: datetime,
              default_year: int | None, default_tz: tzinfo) -> datetime:
    """:func:`infer_year` of one BSD header's fields, memoised: a stream repeats each second
    many times. The module defaults are part of the key (tests change them)."""
    dt = infer_year(_MONTHS[mon], int(day), hms, now, int(year) if year else None)
    if frac:
        dt = dt.replace(microsecond=int(frac[:6].ljust(6, "0")))
    return dt


def _sd_and_msg(rest: str | None) -> tuple[str | None, str | None]:
    """Split RFC 5424 STRUCTURED-DATA from MSG (escapes \\] \\" \\\\ inside values)."""
    if not rest:
        return None, None
    if rest.startswith("-"):
        msg = rest[2:] if len(rest) > 1 else None
        return None, msg
    if not rest.startswith("["):
        return None, rest
    i, n = 0, len(rest)
    while i < n and rest[i] == "[":
        in_q = False
        i += 1
        while i < n:
            c = rest[i]
            if c == "\\" and in_q:
                i += 2
                continue
            if c == '"':
                in_q = not in_q
            elif c == "]" and not in_q:
                break
            i += 1
        i += 1
    sd = rest[:i]
    msg = rest[i + 1 :] if i < n else None
    return sd, msg


# --- auth messages -----------------------------------------------------------
IPISH = re.compile(r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]+)$")

_AUTH_RULES: list[tuple[re.Pattern[str], dict[str, Any]]] = [  # literals in _AUTH_LITERALS, same order
    (re.compile(r"Failed (?P<method>password|publickey|none|keyboard-interactive(?:/pam)?|hostbased|gssapi-with-mic) for (?P<invalid>invalid user )?(?P<user>.*?) from (?P<ip>\S+)(?: port (?P<port>\d+))?"),
     {"event.action": "ssh_login", "event.outcome": "failure", "event.type": "start"}),
    (re.compile(r"Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<ip>\S+)(?: port (?P<port>\d+))?"),
     {"event.action": "ssh_login", "event.outcome": "success", "event.type": "start"}),
    (re.compile(r"^Invalid user (?P<user>.*?) from (?P<ip>\S+)(?: port (?P<port>\d+))?\s*$"),
     {"event.action": "ssh_invalid_user", "event.outcome": "failure", "event.type": "start"}),
    (re.compile(r"input_userauth_request: invalid user (?P<user>\S*)"),
     {"event.action": "ssh_invalid_user", "event.type": "info"}),
    (re.compile(r"error: maximum authentication attempts exceeded for (?P<invalid>invalid user )?(?P<user>\S+) from (?P<ip>\S+)(?: port (?P<port>\d+))?"),
     {"event.action": "ssh_max_auth_exceeded", "event.outcome": "failure", "event.type": "info"}),
    (re.compile(r"Disconnecting: Too many authentication failures for (?:invalid user )?(?P<user>\S+)"),
     {"event.action": "ssh_max_auth_exceeded", "event.outcome": "failure", "event.type": "info"}),
    (re.compile(r"reverse mapping checking getaddrinfo for (?P<domain>\S+) \[(?P<ip>[^\]]+)\] failed - POSSIBLE BREAK-IN ATTEMPT"),
     {"event.action": "ssh_reverse_mapping_failed", "event.type": "info"}),
    (re.compile(r"Did not receive identification string from (?P<ip>\S+)"),
     {"event.action": "ssh_no_identification", "event.type": "info"}),
    (re.compile(r"Connection closed by (?:(?:invalid |authenticating )?user (?P<user>\S+) )?(?P<ip>[^\s\[]+)(?: port (?P<port>\d+))?"),
     {"event.action": "ssh_disconnect", "event.type": "end"}),
    (re.compile(r"Received disconnect from (?P<ip>[^\s:]+|[0-9a-fA-F:]+?)(?: port (?P<port>\d+))?: ?(?P<reason>.*)"),
     {"event.action": "ssh_disconnect", "event.type": "end"}),
    (re.compile(r"PAM (?P<count>\d+) more authentication failures?; logname=(?P<logname>\S*) uid=(?P<uid>\d*) euid=\d* tty=\S* ruser=(?P<ruser>\S*) rhost=(?P<rhost>\S*)(?:\s+user=(?P<user>\S+))?"),
     {"event.action": "authentication_failure", "event.outcome": "failure", "event.type": "info"}),
    (re.compile(r"authentication failure; logname=(?P<logname>\S*) uid=(?P<uid>\d*) euid=\d* tty=(?P<tty>\S*) ruser=(?P<ruser>\S*) rhost=(?P<rhost>\S*)(?:\s+user=(?P<user>\S+))?"),
     {"event.action": "authentication_failure", "event.outcome": "failure", "event.type": "info"}),
    (re.compile(r"^Authentication failed from (?P<ip>\S+) \((?P<domain>[^)]*)\)"),
     {"event.action": "authentication_failure", "event.outcome": "failure", "event.type": "info"}),
    (re.compile(r"check pass; user unknown"),
     {"event.action": "user_unknown", "event.outcome": "failure", "event.type": "info"}),
    (re.compile(r"session opened for user (?P<user>\S+?)(?:\(uid=\d+\))? by (?P<by>\S*?)\(uid=(?P<uid>\d+)\)"),
     {"event.action": "session_opened", "event.outcome": "success", "event.type": "start", "event.category": "session"}),
    (re.compile(r"session closed for user (?P<user>\S+)"),
     {"event.action": "session_closed", "event.type": "end", "event.category": "session"}),
    (re.compile(r"FAILED LOGIN (?:\d+ )?FROM (?P<rhost>\S+) FOR (?P<user>\S+?),"),
     {"event.action": "login", "event.outcome": "failure", "event.type": "start"}),
    (re.compile(r"ROOT LOGIN ON (?P<tty>\S+)"),
     {"event.action": "login", "event.outcome": "success", "event.type": "start", "user": "root"}),
    (re.compile(r"LOGIN ON (?P<tty>\S+) BY (?P<user>\S+)"),
     {"event.action": "login", "event.outcome": "success", "event.type": "start"}),
]

# A literal each rule above needs (its regex cannot match a message without it):
# auth_fields skips the regex when the literal is absent, same result, fewer searches.
_AUTH_LITERALS = ["Failed ", "Accepted ", "Invalid user ", "input_userauth_request: invalid user ",
                  "error: maximum authentication attempts exceeded for ", "Disconnecting: Too many authentication failures for ",
                  "reverse mapping checking getaddrinfo for ", "Did not receive identification string from ",
                  "Connection closed by ", "Received disconnect from ", "PAM ", "authentication failure; logname=",
                  "Authentication failed from ", "check pass; user unknown", "session opened for user ",
                  "session closed for user ", "FAILED LOGIN ", "ROOT LOGIN ON ", "LOGIN ON "]
_AUTH_RULES_LIT = [(lit, rx, fields) for lit, (rx, fields) in zip(_AUTH_LITERALS, _AUTH_RULES, strict=True)]
PAM_UNIX = re.compile(r"^pam_unix\((?P<svc>[\w-]+):(?P<kind>\w+)\): ")

SUDO = re.compile(
    r"^\s*(?P<user>\S+) : (?:(?P<err>.*?) ; )?TTY=(?P<tty>\S+) ; PWD=(?P<pwd>.*?) ; USER=(?P<target>\S+) ;"
    r"(?: GROUP=\S+ ;)?(?: TSID=\S+ ;)?(?: ENV=.*? ;)? COMMAND=(?P<cmd>.*)$"
)
SU = re.compile(
    r"^(?:(?P<fail>FAILED SU|FAILED su|BAD SU)\s*(?:\(to (?P<t1>\S+)\))?\s*(?P<u1>\S+)?|"
    r"(?:Successful su for (?P<t2>\S+) by (?P<u2>\S+))|(?:FAILED su for (?P<t3>\S+) by (?P<u3>\S+))|"
    r"(?:\(to (?P<t4>\S+)\) (?P<u4>\S+) on (?P<tty>\S+)))"
)
_AUTH_PROGRAMS = frozenset({"sshd", "sshd-session", "sudo", "su", "login", "passwd", "pam", "systemd-logind",
                            "gdm-password", "polkitd", "unix_chkpwd", "chage", "useradd", "userdel", "usermod",
                            "groupadd", "groupdel", "chpasswd", "chsh", "newgrp"})


def _put_host(ev: dict[str, Any], value: str | None) -> None:
    if not value:
        return
    if IPISH.match(value):
        ev["source.ip"] = value
    else:
        ev["source.domain"] = value


def auth_fields(program: str | None, msg: str, ev: dict[str, Any]) -> bool:
    """Fill auth fields of ``ev`` from a message of ``program``; True when it is an auth event."""
    prog = (program or "").split("(")[0].lower()
    pam_service = None
    m_pam = PAM_UNIX.match(msg) if msg.startswith("pam_unix(") else None
    if m_pam:
        pam_service = m_pam.group("svc")
    if prog == "sudo" or pam_service == "sudo" and not m_pam:
        m = SUDO.match(msg)
        if m:
            ev.update(
                {
                    "event.action": "sudo",
                    "event.category": "authentication",
                    "event.type": "start",
                    "event.outcome": "failure" if m.group("err") else "success",
                    "user.name": m.group("user"),
                    "user.effective.name": m.group("target"),
                    "process.command_line": m.group("cmd"),
                    "process.working_directory": m.group("pwd"),
                }
            )
            if m.group("err"):
                ev["event.reason"] = m.group("err")
            return True
    if prog == "su" and not m_pam:
        m = SU.match(msg)
        if m:
            d = m.groupdict()
            target = d["t1"] or d["t2"] or d["t3"] or d["t4"]
            user = d["u1"] or d["u2"] or d["u3"] or d["u4"]
            ev.update(
                {
                    "event.action": "su",
                    "event.category": "authentication",
                    "event.type": "start",
                    "event.outcome": "failure" if (d["fail"] or d["t3"]) else "success",
                    "user.name": user,
                    "user.effective.name": target,
                }
            )
            return True
    for lit, rx, fields in _AUTH_RULES_LIT:
        if lit not in msg:
            continue
        m = rx.search(msg)
        if not m:
            continue
        d = m.groupdict()
        ev["event.category"] = fields.get("event.category", "authentication")
        ev["event.type"] = fields.get("event.type")
        ev["event.action"] = fields["event.action"]
        if "event.outcome" in fields:
            ev["event.outcome"] = fields["event.outcome"]
        user = d.get("user") or fields.get("user")
        if user:
            ev["user.name"] = user
        if d.get("ip"):
            _put_host(ev, d["ip"])
        if d.get("rhost"):
            _put_host(ev, d["rhost"])
        if d.get("domain") and not IPISH.match(d["domain"]):
            ev["source.domain"] = d["domain"]
        if d.get("port"):
            ev["source.port"] = int(d["port"])
        if d.get("reason"):
            ev["event.reason"] = d["reason"]
        if d.get("invalid"):
            ev["event.reason"] = "invalid user"
        if d.get("method"):
            ev["event.code"] = d["method"]
        if pam_service and ev["event.action"] == "authentication_failure" and pam_service != "sshd":
            ev["event.action"] = f"{pam_service}_authentication_failure" if pam_service in ("sudo", "su") else ev["event.action"]
        if d.get("by") and ev["event.action"] == "session_opened":
            # "session opened for user root by alice(uid=1000)": alice became root
            ev["user.name"] = d["by"]
            ev["user.effective.name"] = user
        return True
    return False


def _parse_line(source: str, offset: int, path: str | None, line: str, now: datetime) -> dict[str, Any] | str:
    ev: dict[str, Any] = {}
    ev["event.module"] = "system"
    ev["event.kind"] = "event"
    pri = None
    program = None
    msg: str | None
    m5 = RFC5424.match(line)
    if m5:
        pri = int(m5.group("pri"))
        ev["log.syslog.version"] = m5.group("ver")
        ts = m5.group("ts")
        if ts != "-":
            t = to_utc(ts)
            if t is None:
                return f"RFC 5424 timestamp not readable: {ts[:40]!r}"
            ev["@timestamp"] = t
        host = m5.group("host")
        app = m5.group("app")
        procid = m5.group("procid")
        msgid = m5.group("msgid")
        if host != "-":
            ev["log.syslog.hostname"] = ev["host.hostname"] = ev["host.name"] = host
        if app != "-":
            ev["log.syslog.appname"] = ev["process.name"] = program = app
        if procid != "-":
            ev["log.syslog.procid"] = procid
            if procid.isdigit() and len(procid) <= 18:  # beyond int64: kept as log.syslog.procid only
                ev["process.pid"] = int(procid)
        if msgid != "-":
            ev["log.syslog.msgid"] = msgid
        sd, msg = _sd_and_msg(m5.group("rest"))
        if sd:
            ev["log.syslog.structured_data"] = sd
        if msg and msg.startswith("\ufeff"):
            msg = msg[1:]
    else:
        m3 = RFC3164.match(line)
        if m3:
            if m3.group("pri"):
                pri = int(m3.group("pri"))
            try:
                dt = _bsd_time(*m3.group("mon", "day", "time", "frac", "year"), now, DEFAULT_YEAR, DEFAULT_TZ)
            except ValueError as exc:
                return f"BSD syslog timestamp not valid: {exc}"
            ev["@timestamp"] = dt
            rest = m3.group("rest")
        else:
            mi = ISO_HEADER.match(line)
            if not mi:
                return "not a syslog line (no RFC 3164/5424 header)"
            if mi.group("pri"):
                pri = int(mi.group("pri"))
            t = to_utc(mi.group("ts"))
            if t is None:
                return f"syslog timestamp not readable: {mi.group('ts')!r}"
            ev["@timestamp"] = t
            rest = mi.group("rest")
        # "host tag[pid]: msg" (host may be missing when the tag follows directly)
        first, _, after = rest.partition(" ")
        if first.endswith(":"):  # no hostname: "sshd[1]: msg"
            host, mt = None, TAG.match(rest)
        else:
            host = first if after else None
            mt = TAG.match(after) if after else None
        if host:
            ev["log.syslog.hostname"] = ev["host.hostname"] = ev["host.name"] = host
        if mt:
            program = mt.group("tag")
            ev["log.syslog.appname"] = program
            ev["process.name"] = program.split("(")[0]
            if mt.group("pid"):
                if len(mt.group("pid")) <= 18:  # beyond int64: kept as log.syslog.procid only
                    ev["process.pid"] = int(mt.group("pid"))
                ev["log.syslog.procid"] = mt.group("pid")
            msg = mt.group("msg").lstrip()
        else:
            msg = after if host else rest
    if pri is not None:
        if pri > 191:
            return f"syslog PRI {pri} out of range"
        ev["log.syslog.priority"] = pri
        ev["log.syslog.facility.code"] = pri // 8
        ev["log.syslog.severity.code"] = pri % 8
    ev["message"] = msg
    is_auth = auth_fields(program, msg or "", ev)
    base = (program or "").split("(")[0].lower()
    if is_auth or base in _AUTH_PROGRAMS or "pam_" in (program or "") + (msg or "")[:20]:
        ev["event.dataset"] = "system.auth"
    else:
        ev["event.dataset"] = "system.syslog"
    ev["related.ip"] = related(ev.get("source.ip"))
    ev["related.user"] = related(ev.get("user.name"), ev.get("user.effective.name"))
    ev["related.hosts"] = related(ev.get("host.name"), ev.get("source.domain"))
    return ev


def parse_per_record(raw: pa.Table) -> ParseResult:
    """Every line through :func:`_parse_line` (the reference the fast path is tested against)."""
    return parse_lines(raw, _parse_line)


# --- column-wise fast path ----------------------------------------------------
# Rows that are printable ASCII (RE2's \s, \d, \w and \S agree with Python's there), short,
# RFC 3164 with a host ("host tag[pid]: msg" or "host msg") or RFC 5424 without
# STRUCTURED-DATA, with a valid timestamp and PRI <= 191 are parsed over the whole batch
# with Arrow kernels. The auth rules run column-wise too, each one RE2 search over the rows
# no earlier rule took; only messages the sudo and su rules match go through auth_fields.
# Every other row takes :func:`_parse_line`. Same events, ids and dead letters
# (tests/test_syslog_equivalence.py).
FAST_PATH = True  # False: every row per record
_FAST_MAX_CHARS = 8192
_PRINTABLE = r"^[\x20-\x7e]*$"
_RFC3164_RE2 = (  # header, host, then "tag[pid]: msg" or (no tag) the rest as the message, in one pass
    r"^(?:<(?P<pri>\d{1,3})>)?(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(?P<day>\d{1,2}) "
    r"(?P<time>\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?(?: (?P<year>\d{4}))? (?P<host>[^ ]*[^ :]) "
    r"(?:(?P<tag>[^\s:\[\]]+?(?:\([^)\s]*\))?)(?:\[(?P<pid>\d+)\])?: ?(?P<msg>.*)|(?P<bare>.+))$"
)
# RFC 5424 with a host, an app and no STRUCTURED-DATA; others (and unreadable timestamps) per record
_RFC5424_RE2 = (
    r"^<(?P<pri>\d{1,3})>(?P<ver>\d{1,2}) (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[^ -][^ ]*|-[^ ]+) (?P<app>[^ -][^ ]*|-[^ ]+) (?P<procid>[^ ]+) (?P<msgid>[^ ]+) - (?P<msg>.*)$"
)
_AUTH_LIT_RE2 = "|".join(re.escape(lit) for lit in _AUTH_LITERALS)


def _fast_rows(raw: pa.Table, now: datetime) -> tuple[pa.Table, pa.Array] | None:
    """(events, their raw row numbers) of the rows the fast path covers, or None."""
    lines = pc.fill_null(one_chunk(raw.column("event.original")), "")
    # printable ASCII (so bytes = characters) and at most _FAST_MAX_CHARS long
    ok = pc.and_(pc.match_substring_regex(lines, _PRINTABLE), pc.less_equal(pc.binary_length(lines), _FAST_MAX_CHARS))
    ok = pc.and_kleene(ok, pc.invert(pc.fill_null(pc.equal(one_chunk(raw.column("hint")), INVALID_UTF8_HINT), False)))
    parts = [p for p in (_head_3164(lines, ok, now), _head_5424(lines, ok)) if p is not None]
    if not parts:
        return None
    done = [_finish(raw, *p) for p in parts]
    if len(done) == 1:
        return done[0]
    return pa.concat_tables([t for t, _ in done]), pa.concat_arrays([i for _, i in done])


def _times_per_distinct(keys: pa.Array, to_time: Callable[[str], datetime | None]) -> pa.Array:
    """``@timestamp`` of each row: ``to_time`` called once per distinct key (a batch repeats its seconds)."""
    uniq = pc.unique(keys)
    times = pa.array([to_time(k) for k in uniq.to_pylist()], EVENT_SCHEMA.field("@timestamp").type)
    return times.take(pc.index_in(keys, value_set=uniq))


def _extract(lines: pa.Array, ok: pa.Array, pattern: str) -> tuple[pa.Array, pa.StructArray] | None:
    """(row numbers, groups) of the ``ok`` lines ``pattern`` matches (one RE2 pass), or None."""
    idx = pc.indices_nonzero(ok)
    if len(idx) == 0:
        return None
    h = pc.extract_regex(lines if len(idx) == len(lines) else lines.take(idx), pattern)  # null: no match
    if h.null_count:
        matched = pc.indices_nonzero(pc.is_valid(h))
        if len(matched) == 0:
            return None
        idx, h = idx.take(matched), h.take(matched)
    return idx, h


def _common_columns(ts: pa.Array, host: pa.Array, pri: pa.Array, msg: pa.Array) -> dict[str, Any]:
    """The columns both headers fill alike (PRI is 0..191 here: facility and severity by bits)."""
    m = len(ts)
    return {
        "@timestamp": ts, "event.module": pa.repeat("system", m), "event.kind": pa.repeat("event", m),
        "log.syslog.hostname": host, "host.hostname": host, "host.name": host,
        "log.syslog.priority": pri, "log.syslog.facility.code": pc.shift_right(pri, 3),
        "log.syslog.severity.code": pc.bit_wise_and(pri, 7),
        "message": msg,
    }


def _head_3164(lines: pa.Array, ok: pa.Array, now: datetime) -> tuple[Any, ...] | None:
    found = _extract(lines, ok, _RFC3164_RE2)
    if found is None:
        return None
    idx, h = found
    # the one case where RE2's backtracking splits the line unlike _parse_line: a year it gave up
    # for the host ("... 17:32:18 2024 sshd[1]: m": per record a year and no host) goes per record
    year_as_host = pc.and_(pc.equal(h.field("year"), ""), pc.match_substring_regex(h.field("host"), r"^\d{4}$"))
    pri_s = h.field("pri")
    pri = pc.cast(pc.if_else(pc.equal(pri_s, ""), None, pri_s), pa.int64())
    keys = pc.binary_join_element_wise(h.field("mon"), h.field("day"), h.field("time"), h.field("frac"),
                                       h.field("year"), "|")

    def bsd(k: str) -> datetime | None:
        mon, day, hms, frac, year = k.split("|")
        try:
            return _bsd_time(mon, day, hms, frac or None, year or None, now, DEFAULT_YEAR, DEFAULT_TZ)
        except ValueError:  # e.g. Feb 30: the per-record path dead-letters it
            return None

    ts = _times_per_distinct(keys, bsd)
    good = pc.and_(pc.is_valid(ts), pc.invert(year_as_host))
    good = pc.and_(good, pc.fill_null(pc.less_equal(pri, 191), True))
    sel = pc.indices_nonzero(good)
    if len(sel) == 0:
        return None
    if len(sel) < len(idx):
        idx, h, pri, ts = idx.take(sel), h.take(sel), pri.take(sel), ts.take(sel)
    pid = h.field("pid")
    tagless = pc.equal(h.field("tag"), "")  # no "tag[pid]:" after the host: the rest is the message
    tag = pc.if_else(tagless, None, h.field("tag"))
    msg = pc.if_else(tagless, h.field("bare"), pc.utf8_ltrim(h.field("msg"), " "))
    pname = pc.struct_field(pc.extract_regex(tag, r"^(?P<p>[^(]*)"), "p")  # null where tagless
    base = pc.fill_null(pc.utf8_lower(pname), "")
    pid_s = pc.if_else(pc.equal(pid, ""), None, pid)
    cols = _common_columns(ts, h.field("host"), pri, msg)
    cols.update({
        "log.syslog.appname": tag, "process.name": pname,
        "process.pid": pc.cast(pc.if_else(pc.less_equal(pc.utf8_length(pid_s), 18), pid_s, None), pa.int64()),
        "log.syslog.procid": pid_s,
    })
    return idx, cols, base


def _head_5424(lines: pa.Array, ok: pa.Array) -> tuple[Any, ...] | None:
    """RFC 5424 rows with host, app, a plain timestamp and no STRUCTURED-DATA ("- msg")."""
    found = _extract(lines, ok, _RFC5424_RE2)
    if found is None:
        return None
    idx, h = found
    pri = pc.cast(h.field("pri"), pa.int64())
    ts = _times_per_distinct(h.field("ts"), to_utc)
    good = pc.and_(pc.is_valid(ts), pc.less_equal(pri, 191))
    sel = pc.indices_nonzero(good)
    if len(sel) == 0:
        return None
    idx, h, pri, ts = idx.take(sel), h.filter(good), pri.filter(good), ts.filter(good)
    app = h.field("app")
    procid = pc.if_else(pc.equal(h.field("procid"), "-"), None, h.field("procid"))
    msgid = pc.if_else(pc.equal(h.field("msgid"), "-"), None, h.field("msgid"))
    is_pid = pc.and_(pc.match_substring_regex(procid, r"^[0-9]+$"), pc.less_equal(pc.utf8_length(procid), 18))
    base = pc.utf8_lower(pc.extract_regex(app, r"^(?P<p>[^(]*)").field("p"))
    cols = _common_columns(ts, h.field("host"), pri, h.field("msg"))
    cols.update({
        "log.syslog.version": h.field("ver"),
        "log.syslog.appname": app, "process.name": app,
        "log.syslog.procid": procid, "process.pid": pc.cast(pc.if_else(is_pid, procid, None), pa.int64()),
        "log.syslog.msgid": msgid,
    })
    return idx, cols, base


def _pair_lists(a: pa.Array, b: pa.Array) -> pa.Array:
    """Per row :func:`related` of two string values: [a, b] without nulls, empties or a repeat; null if none."""
    n = len(a)
    va = pc.fill_null(pc.not_equal(a, ""), False).to_numpy(zero_copy_only=False)
    vb = pc.fill_null(pc.and_(pc.not_equal(b, ""), pc.fill_null(pc.not_equal(a, b), True)), False).to_numpy(zero_copy_only=False)
    pick = np.stack([np.arange(n), n + np.arange(n)], axis=1).ravel()[np.stack([va, vb], axis=1).ravel()]
    values = pa.concat_arrays([pc.cast(a, pa.string()), pc.cast(b, pa.string())]).take(pa.array(pick, pa.int64()))
    counts = va.astype(np.int32) + vb.astype(np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(counts == 0))


_RULE_GROUPS = frozenset({"user", "ip", "rhost", "domain", "port", "reason", "invalid", "method", "by"})  # read below


@lru_cache(maxsize=64)
def _extraction_pattern(pattern: str) -> str:
    """An auth rule's regex for RE2 extraction: only the groups :func:`_rule_columns` reads capture, and
    it is anchored with a lazy ``^.*?`` (the same leftmost match; RE2 extracts both ways about twice as fast)."""
    slim = re.sub(r"\(\?P<(\w+)>", lambda m: m.group(0) if m.group(1) in _RULE_GROUPS else "(?:", pattern)
    return slim if slim.startswith("^") else "^.*?" + slim


def _rule_columns(text: pa.Array, rx: re.Pattern[str], fields: dict[str, Any]) -> dict[str, pa.Array]:
    """Column-wise auth_fields' generic rule part for messages ``text`` the rule matches."""
    h = len(text)
    pattern = _extraction_pattern(rx.pattern)
    names = re.compile(pattern).groupindex
    ext = pc.extract_regex(text, pattern) if names else None

    def grp(name: str) -> pa.Array | None:  # a group's values, empty -> null
        if ext is None or name not in names:
            return None
        v = ext.field(name)
        return pc.if_else(pc.equal(v, ""), None, v)

    def const(v: Any) -> pa.Array:
        return pa.array([v] * h, pa.string())

    out: dict[str, pa.Array] = {
        "event.category": const(fields.get("event.category", "authentication")),
        "event.type": const(fields.get("event.type")),
        "event.action": const(fields["event.action"]),
    }
    if "event.outcome" in fields:
        out["event.outcome"] = const(fields["event.outcome"])
    user = grp("user")
    if fields.get("user"):
        user = const(fields["user"]) if user is None else pc.fill_null(user, fields["user"])
    src_ip = src_dom = None
    for v in (grp("ip"), grp("rhost")):
        if v is None:
            continue
        ipish = pc.match_substring_regex(v, IPISH.pattern)
        src_ip = pc.if_else(pc.fill_null(ipish, False), v, src_ip if src_ip is not None else pa.nulls(h, pa.string()))
        dom_sel = pc.fill_null(pc.and_(pc.is_valid(v), pc.invert(ipish)), False)
        src_dom = pc.if_else(dom_sel, v, src_dom if src_dom is not None else pa.nulls(h, pa.string()))
    dom = grp("domain")
    if dom is not None:
        sel = pc.fill_null(pc.invert(pc.match_substring_regex(dom, IPISH.pattern)), False)
        src_dom = pc.if_else(sel, dom, src_dom if src_dom is not None else pa.nulls(h, pa.string()))
    if src_ip is not None:
        out["source.ip"] = src_ip
    if src_dom is not None:
        out["source.domain"] = src_dom
    port = grp("port")
    if port is not None:
        out["source.port"] = pc.cast(port, pa.int64())
    reason = grp("reason")
    inv = grp("invalid")
    if inv is not None:
        reason = pc.if_else(pc.is_valid(inv), "invalid user", reason if reason is not None else pa.nulls(h, pa.string()))
    if reason is not None:
        out["event.reason"] = reason
    method = grp("method")
    if method is not None:
        out["event.code"] = method
    by = grp("by")
    if by is not None and fields["event.action"] == "session_opened" and user is not None:
        out["user.effective.name"] = pc.if_else(pc.is_valid(by), user, None)
        user = pc.if_else(pc.is_valid(by), by, user)
    if user is not None:
        out["user.name"] = user
    if fields["event.action"] == "authentication_failure":  # "pam_unix(sudo:auth): ..." -> sudo_authentication_failure
        svc = pc.struct_field(pc.extract_regex(text, PAM_UNIX.pattern), "svc")
        out["event.action"] = pc.if_else(pc.fill_null(pc.is_in(svc, value_set=pa.array(["sudo", "su"])), False),
                                         pc.binary_join_element_wise(svc, "_authentication_failure", ""),
                                         out["event.action"])
    return out


def _finish(raw: pa.Table, idx: pa.Array, cols: dict[str, Any], base: pa.Array) -> tuple[pa.Table, pa.Array]:
    """Auth fields, dataset, related.* and the raw columns of the fast rows' events (``base``: the
    program name in lower case, "" if none)."""
    m = len(idx)
    host, tag, msg = cols["host.name"], cols["log.syslog.appname"], cols["message"]
    # auth rules only where one can match: program sudo or su, or a rule's literal in the message
    cand = pc.or_(pc.is_in(base, value_set=pa.array(["sudo", "su"])), pc.match_substring_regex(msg, _AUTH_LIT_RE2))
    cand_at = pc.indices_nonzero(cand)
    c_base, c_msg = base.take(cand_at), msg.take(cand_at)
    # per record: what auth_fields' sudo and su branches take (SUDO after program sudo; SU after program su
    # unless the message is "pam_unix(svc:kind): ..."); every other candidate's rule and fields column-wise
    special = pc.or_(
        pc.and_(pc.equal(c_base, "sudo"), pc.match_substring_regex(c_msg, SUDO.pattern)),
        pc.and_(pc.and_(pc.equal(c_base, "su"), pc.invert(pc.match_substring_regex(c_msg, PAM_UNIX.pattern))),
                pc.match_substring_regex(c_msg, SU.pattern)),
    )
    sp_at = cand_at.filter(special)
    at: list[int] = []
    evs: list[dict[str, Any]] = []
    for i, program, text in zip(sp_at.to_pylist(), tag.take(sp_at).to_pylist(), msg.take(sp_at).to_pylist()):
        ev: dict[str, Any] = {}
        if auth_fields(program, text, ev):
            at.append(i)
            evs.append(ev)
    parts: list[tuple[pa.Array, dict[str, pa.Array]]] = []  # (rows, columns of their auth fields)
    if at:
        names = set().union(*evs)
        parts.append((pa.array(at, pa.int64()),
                      {k: pa.array([ev.get(k) for ev in evs], EVENT_SCHEMA.field(k).type) for k in names}))
    rest = pc.invert(special)
    left, text = cand_at.filter(rest), c_msg.filter(rest)
    for rx, fields in _AUTH_RULES:  # in rule order: a row takes the first rule that matches
        if len(left) == 0:
            break
        hit = pc.match_substring_regex(text, rx.pattern)  # (RE2 finds a rule's literal as fast as a substring search)
        if not pc.any(hit).as_py():
            continue
        parts.append((left.filter(hit), _rule_columns(text.filter(hit), rx, fields)))
        miss = pc.invert(hit)
        left, text = left.filter(miss), text.filter(miss)
    k = sum(len(r) for r, _ in parts)
    # row -> its auth event (k: none); the auth columns are built for the k events, then spread
    pos = np.full(m, k, dtype=np.int64)
    if k:
        pos[np.concatenate([r.to_numpy().astype(np.int64) for r, _ in parts])] = np.arange(k)
    spread = pa.array(pos)
    is_auth = pa.array(pos < k)
    for name in set().union(*[c for _, c in parts]) if parts else ():
        typ = EVENT_SCHEMA.field(name).type
        sub = pa.concat_arrays([pc.cast(c[name], typ) if name in c else pa.nulls(len(r), typ) for r, c in parts]
                               + [pa.nulls(1, typ)])
        cols[name] = sub.take(spread)
    nulls = pa.nulls(m, pa.string())
    cols["related.ip"] = _pair_lists(cols.get("source.ip", nulls), nulls)
    cols["related.user"] = _pair_lists(cols.get("user.name", nulls), cols.get("user.effective.name", nulls))
    cols["related.hosts"] = _pair_lists(host, cols.get("source.domain", nulls))
    pam = pc.match_substring(pc.binary_join_element_wise(pc.fill_null(tag, ""), pc.utf8_slice_codeunits(msg, 0, 20), ""),
                             "pam_")
    auth_ds = pc.or_(pc.or_(is_auth, pc.is_in(base, value_set=pa.array(sorted(_AUTH_PROGRAMS)))), pam)
    cols["event.dataset"] = pc.if_else(auth_ds, "system.auth", "system.syslog")
    cols.update(raw_event_columns(raw.take(idx)))
    arrays = [pc.cast(cols[f.name], f.type) if f.name in cols else pa.nulls(m, f.type) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA), idx


def parse(raw: pa.Table) -> ParseResult:
    """Syslog lines -> ECS; a line without a syslog header is dead-lettered."""
    if not FAST_PATH or raw.num_rows == 0:
        return parse_per_record(raw)
    fast = _fast_rows(raw, now_utc())
    if fast is None:
        return parse_per_record(raw)
    events, idx = fast
    if len(idx) == raw.num_rows:
        return result(events, [])
    rest = np.ones(raw.num_rows, bool)
    rest[idx.to_numpy()] = False
    rest_idx = pa.array(np.flatnonzero(rest))
    kept: list[int] = []

    def build(sub: pa.Table, at: list[int], rows: list[Any]) -> pa.Table:
        kept.extend(at)
        return events_from_raw(sub, at, rows)

    slow = parse_lines(raw.take(rest_idx), _parse_line, build)
    slow_pos = rest_idx.take(pa.array(kept, pa.int64()))  # raw rows of the per-record events
    order = pc.sort_indices(pa.concat_arrays([pc.cast(idx, pa.uint64()), pc.cast(slow_pos, pa.uint64())]))
    both = pa.concat_tables([events, slow.events.cast(events.schema)])
    return ParseResult(both.take(order), slow.deadletters)


_register("syslog")(safe_parser(parse))
