"""Guess a file's log format from its first non-empty lines.

``sniff(path)`` returns one of ``"zeek"``, ``"suricata"``, ``"syslog"``,
``"cef"``, ``"json"``, ``"pcap"`` or ``"unknown"`` (also for ``.gz`` files). The
names are the ``ingest.parsers.PARSERS`` keys, except ``"pcap"`` (a packet
capture, pcap or pcapng by its magic number), which the pipeline reads with
``ingest.pcap`` instead of a text parser.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import Counter

import orjson

__all__ = ["sniff", "sniff_lines", "FORMATS", "BINARY_FORMATS"]

FORMATS = ("zeek", "suricata", "syslog", "cef", "json", "unknown")
BINARY_FORMATS = ("pcap",)  # sniffed too, but read by ingest.pcap, not by a text parser
# pcap (us / ns timestamps, either byte order) and pcapng (section header block);
# the same list as ingest.pcap.PCAP_MAGICS, kept here so sniffing imports nothing heavy
_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")
PEEK_BYTES = 1 << 16
MAX_LINES = 8

_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_RFC3164 = re.compile(rf"^(?:<\d{{1,3}}>)?(?:{_MONTHS}) [ \d]?\d \d\d:\d\d:\d\d(?:\.\d+)? ")
_RFC5424 = re.compile(r"^<\d{1,3}>\d{1,2} (?:-|\d{4}-\d\d-\d\dT\S+) \S+ \S+ \S+ \S+ ")
_ISO_SYSLOG = re.compile(r"^(?:<\d{1,3}>)?\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S* \S+ [^\s:]+(?:\[\d+\])?: ")
_CEF = re.compile(r"(?:^|\s)CEF:\d+\|")
_ZEEK_KEYS = ("_path", "id.orig_h", "id.resp_h", "uid", "uids", "fuid", "conn_uids", "_write_ts",
              "certificate.serial", "software_type", "tx_hosts")
# Zeek log names: a JSON line with a numeric ``ts`` in a file named like one is Zeek
ZEEK_LOGS = frozenset(
    "conn dns http ssl ssh x509 files notice weird dhcp smtp software tunnel sip rdp arp pe ftp irc kerberos ntlm "
    "smb_files smb_mapping dce_rpc dpd modbus dnp3 snmp syslog socks mysql radius rfb known_hosts known_services "
    "known_certs ldap ldap_search quic ocsp intel signatures traceroute capture_loss stats reporter loaded_scripts "
    "packet_filter analyzer conn_long ntp".split()
)


def _classify_json(obj: object, name: str | None = None) -> str:
    if isinstance(obj, dict):
        if "event_type" in obj:
            return "suricata"
        if any(k in obj for k in _ZEEK_KEYS):
            return "zeek"
        if name in ZEEK_LOGS and isinstance(obj.get("ts"), (int, float, str)):
            return "zeek"
        return "json"
    return "unknown"


def sniff_lines(lines: list[str], zeek_name: str | None = None) -> str:
    """Classify a few non-empty lines (see module doc); ``zeek_name`` is the Zeek
    log type the file name suggests (``conn`` for conn.log), if any."""
    votes: Counter[str] = Counter()
    for line in lines[:MAX_LINES]:
        s = line.strip()
        if not s:
            continue
        if s.startswith("#separator") or s.startswith("#fields"):
            return "zeek"
        if s.startswith("#"):
            continue
        if s.startswith("{"):
            try:
                votes[_classify_json(orjson.loads(s), zeek_name)] += 1
            except orjson.JSONDecodeError:
                votes["json" if s.endswith("}") else "unknown"] += 0
            continue
        if _CEF.search(s):
            votes["cef"] += 1
        elif _RFC5424.match(s) or _RFC3164.match(s) or _ISO_SYSLOG.match(s):
            votes["syslog"] += 1
        else:
            votes["unknown"] += 1
    if not votes:
        return "unknown"
    # CEF over syslog: a CEF feed is syslog-framed, and one CEF line decides it
    if votes.get("cef"):
        return "cef"
    best, n = votes.most_common(1)[0]
    if best == "unknown":
        known = [(k, v) for k, v in votes.items() if k != "unknown"]
        if known:
            return max(known, key=lambda kv: kv[1])[0]
    return best


def _peek(path: str) -> bytes:
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read(PEEK_BYTES)
    with open(path, "rb") as f:
        return f.read(PEEK_BYTES)


_ARRAY_EVENT_TYPE = re.compile(rb'"event_type"\s*:')
_ARRAY_ZEEK = re.compile(rb'"(?:_path|id\.orig_h|uid)"\s*:')


def sniff(path: str | os.PathLike[str]) -> str:
    """Format name of the file at ``path`` from its first few non-empty lines."""
    path = os.fspath(path)
    try:
        head = _peek(path)
    except (OSError, EOFError):
        return "unknown"
    if head[:4] in _PCAP_MAGICS:
        return "pcap"
    text = head.lstrip()
    if re.match(rb"\[\s*(?:\{|\]|$)", text):
        # a top-level JSON array (pretty-printed or not): look at the first element
        if _ARRAY_EVENT_TYPE.search(text):
            return "suricata"
        if _ARRAY_ZEEK.search(text):
            return "zeek"
        return "json"
    lines = head.decode("utf-8", "replace").split("\n")
    if len(head) == PEEK_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last one may be cut
    nonempty = [ln for ln in lines if ln.strip()][: MAX_LINES * 2]
    from ingest.files import zeek_path_from_name

    return sniff_lines(nonempty, zeek_path_from_name(path))
