"""Demo data: one attack campaign against a simulated CII network, in real log formats.

``generate_campaign(out_dir)`` writes what the sensors of a provincial
power-dispatch centre would have recorded over one day: Zeek 6 TSV logs
(``conn.log``, ``dns.log``, ``http.log``, ``ssl.log``, ``ssh.log``), a
Suricata 7 ``eve.json`` and an rsyslog ``auth.log`` (RFC 3164 lines from the
Linux servers). Thousands of benign records (browsing, DNS, TLS, SMB to the
file server, admin SSH/RDP, OT polling, a few mistyped passwords) surround an
intrusion told in seven stages, each at its own time::

    recon -> ssh brute force -> login + sudo -> lateral movement (SMB/RDP)
          -> cleartext admin login -> OT access (weak TLS HMI, telnet RTU)
          -> DNS-tunnel exfiltration

The returned :class:`CampaignManifest` (also written as ``campaign.json``)
lists every stage with its ATT&CK technique, the addresses involved, its time
window and the ids of the rules under ``rules/sigma`` expected to fire on it.

Output is a pure function of ``(seed, start)``: same inputs, byte-identical
files. The sensor vantage point is the core switch (it sees DMZ <-> office <->
OT and Internet <-> DMZ traffic, not the resolver's upstream queries). The
HTTP sensor runs with ``HTTP::default_capture_password = T``, so http.log
carries basic-auth passwords.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------
# the network

ATTACKER_IP = "203.0.113.50"  # external scanner / brute forcer (TEST-NET-3)
EXFIL_DOMAIN = "t.exfil-cdn.net"

HOSTS: dict[str, str] = {
    # DMZ 10.10.1.0/24
    "portal01": "10.10.1.10",  # e-government web portal (nginx, Linux)
    "jump01": "10.10.1.20",  # SSH bastion / jump host (Linux)
    "mail01": "10.10.1.25",  # mail relay (Linux)
    # office / server zone 10.20.0.0/16
    "dc01": "10.20.0.10",  # AD domain controller, NTP
    "adm01": "10.20.0.25",  # internal OA / admin web application (plain HTTP)
    "fs01": "10.20.0.30",  # Windows file server
    "db01": "10.20.0.40",  # dispatch database server (Windows, SQL Server)
    "dns01": "10.20.0.53",  # internal DNS resolver (Linux, bind)
    "itadm01": "10.20.5.10",  # IT administrator's workstation
    "itadm02": "10.20.5.11",
    # production / OT 10.30.0.0/24
    "hmi01": "10.30.0.10",  # HMI / SCADA server (legacy web UI on 443)
    "hist01": "10.30.0.20",  # process historian
    "rtu01": "10.30.0.50",  # substation RTU gateway (telnet management)
    "opws01": "10.30.0.100",  # dispatcher operator workstation
}
ZONES = {"dmz": "10.10.1.0/24", "office": "10.20.0.0/16", "ot": "10.30.0.0/24"}
DOMAIN = "pdc.local"
LINUX_HOSTS = ("jump01", "portal01", "mail01", "dns01")

# Rule ids (rules/sigma/**) the campaign is built to trigger; tests check they exist.
RULE_IDS: dict[str, str] = {
    "port_scan": "426bef6d-8890-44d3-834c-83bde68dc2b2",
    "horizontal_scan": "e1101139-f07c-4958-aae2-974a56913e6e",
    "suricata_scan": "696184f1-410c-4743-b295-4ceae47ddc8e",
    "ssh_bf_auth": "2f1b982b-c137-4df9-8112-b39b7325622d",
    "ssh_bf_zeek": "d39dc470-a2b0-49f8-82b2-8ddbeae60a44",
    "ssh_login_external": "2f3e2c34-88b2-45ec-a89c-5c9a388f166a",
    "sudo_root_shell": "92859213-3538-4808-b917-026cf5404cb2",
    "smb_fan_out": "e1cd69fd-b70a-4f34-8506-f93be68e03c9",
    "rdp_from_dmz": "9518ddd1-cdf0-4f26-b956-2797d0b92195",
    "http_cleartext_credentials": "c8f5a084-048c-4323-92bc-76426773f784",
    "ftp_telnet_internal": "6990b8d5-0788-4eb6-9c00-02bd12be4d6d",
    "weak_tls_version": "147f10fe-b3f0-4f11-8e1c-392cfb377f38",
    "weak_tls_cipher": "8bc0f2d7-428a-4d23-90e6-f1b756bb62c1",
    "dns_tunnel": "4ceaab27-551c-4d3a-8c75-a7df5404624e",
    "dns_txt_null_volume": "abbda102-cff4-488d-a96e-d536f39ca5c0",
}

FILES = ("conn.log", "dns.log", "http.log", "ssl.log", "ssh.log", "eve.json", "auth.log")

US = 1_000_000  # all times are integer microseconds since the epoch


# ---------------------------------------------------------------------------
# manifest


@dataclass
class Stage:
    name: str
    tactic: str
    technique: str  # ATT&CK technique id
    description: str
    attacker_ips: list[str]  # where the adversary acts from in this stage (own or controlled hosts)
    victim_ips: list[str]
    victim_hosts: list[str]
    start: str  # ISO-8601 UTC
    end: str
    files: list[str]  # log files (base names) holding this stage's evidence
    expected_rule_ids: list[str]

    # short forms for reports
    @property
    def attacker(self) -> str:
        return self.attacker_ips[0]

    @property
    def victim(self) -> str:
        return ", ".join(self.victim_ips)

    @property
    def expected_rules(self) -> list[str]:
        return self.expected_rule_ids


@dataclass
class CampaignManifest:
    seed: int
    start: str  # the day's capture window
    end: str
    out_dir: str
    files: list[str]  # paths of the log files written (campaign.json lists base names)
    hosts: dict[str, str]
    zones: dict[str, str]
    attacker_ip: str
    stages: list[Stage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        d = self.to_dict()
        d.pop("out_dir")  # keep campaign.json independent of where it was written
        d["files"] = [Path(f).name for f in d["files"]]
        return json.dumps(d, indent=2, sort_keys=False) + "\n"


# ---------------------------------------------------------------------------
# formatting helpers


def _iso(us: int) -> str:
    dt = datetime.fromtimestamp(us // US, tz=timezone.utc)
    frac = f".{us % US:06d}" if us % US else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def _zeek_time(us: int) -> str:
    return f"{us // US}.{us % US:06d}"


def _suri_time(us: int) -> str:
    dt = datetime.fromtimestamp(us // US, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % US:06d}+0000"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _syslog_time(us: int) -> str:
    dt = datetime.fromtimestamp(us // US, tz=timezone.utc)
    return f"{_MONTHS[dt.month - 1]} {dt.day:>2} {dt:%H:%M:%S}"


def _private(ip: str) -> bool:
    a, b = (int(x) for x in ip.split(".")[:2])
    return a == 10 or (a == 172 and 16 <= b <= 31) or (a == 192 and b == 168)


# Zeek 6 default columns, in order, with their types.
_ID = [("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"), ("id.resp_p", "port")]
ZEEK_FIELDS: dict[str, list[tuple[str, str]]] = {
    "conn": [("ts", "time"), ("uid", "string"), *_ID, ("proto", "enum"), ("service", "string"),
             ("duration", "interval"), ("orig_bytes", "count"), ("resp_bytes", "count"),
             ("conn_state", "string"), ("local_orig", "bool"), ("local_resp", "bool"),
             ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
             ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
             ("tunnel_parents", "set[string]")],
    "dns": [("ts", "time"), ("uid", "string"), *_ID, ("proto", "enum"), ("trans_id", "count"),
            ("rtt", "interval"), ("query", "string"), ("qclass", "count"), ("qclass_name", "string"),
            ("qtype", "count"), ("qtype_name", "string"), ("rcode", "count"), ("rcode_name", "string"),
            ("AA", "bool"), ("TC", "bool"), ("RD", "bool"), ("RA", "bool"), ("Z", "count"),
            ("answers", "vector[string]"), ("TTLs", "vector[interval]"), ("rejected", "bool")],
    "http": [("ts", "time"), ("uid", "string"), *_ID, ("trans_depth", "count"), ("method", "string"),
             ("host", "string"), ("uri", "string"), ("referrer", "string"), ("version", "string"),
             ("user_agent", "string"), ("origin", "string"), ("request_body_len", "count"),
             ("response_body_len", "count"), ("status_code", "count"), ("status_msg", "string"),
             ("info_code", "count"), ("info_msg", "string"), ("tags", "set[enum]"),
             ("username", "string"), ("password", "string"), ("proxied", "set[string]"),
             ("orig_fuids", "vector[string]"), ("orig_filenames", "vector[string]"),
             ("orig_mime_types", "vector[string]"), ("resp_fuids", "vector[string]"),
             ("resp_filenames", "vector[string]"), ("resp_mime_types", "vector[string]")],
    "ssl": [("ts", "time"), ("uid", "string"), *_ID, ("version", "string"), ("cipher", "string"),
            ("curve", "string"), ("server_name", "string"), ("resumed", "bool"),
            ("last_alert", "string"), ("next_protocol", "string"), ("established", "bool"),
            ("ssl_history", "string"), ("cert_chain_fps", "vector[string]"),
            ("client_cert_chain_fps", "vector[string]"), ("sni_matches_cert", "bool")],
    "ssh": [("ts", "time"), ("uid", "string"), *_ID, ("version", "count"), ("auth_success", "bool"),
            ("auth_attempts", "count"), ("direction", "enum"), ("client", "string"),
            ("server", "string"), ("cipher_alg", "string"), ("mac_alg", "string"),
            ("compression_alg", "string"), ("kex_alg", "string"), ("host_key_alg", "string"),
            ("host_key", "string")],
}


def _zeek_value(v: Any, typ: str) -> str:
    if v is None:
        return "-"
    if typ == "time":
        return _zeek_time(v)
    if typ == "interval":
        return f"{v:.6f}"
    if typ == "bool":
        return "T" if v else "F"
    if typ.startswith(("set[", "vector[")):
        if not v:
            return "(empty)"
        if typ == "vector[interval]":
            return ",".join(f"{x:.6f}" for x in v)
        return ",".join(str(x) for x in v)
    s = str(v)
    if s == "":
        return "(empty)"
    return s.replace("\\", "\\\\").replace("\t", "\\x09").replace("\n", "\\x0a")


def _zeek_file(path: str, rows: list[dict[str, Any]], open_us: int, close_us: int) -> str:
    fields = ZEEK_FIELDS[path]
    fmt = "%Y-%m-%d-%H-%M-%S"
    out = [
        "#separator \\x09",
        "#set_separator\t,",
        "#empty_field\t(empty)",
        "#unset_field\t-",
        f"#path\t{path}",
        f"#open\t{datetime.fromtimestamp(open_us // US, tz=timezone.utc).strftime(fmt)}",
        "#fields\t" + "\t".join(n for n, _ in fields),
        "#types\t" + "\t".join(t for _, t in fields),
    ]
    for r in sorted(rows, key=lambda r: (r["ts"], r["uid"])):
        out.append("\t".join(_zeek_value(r.get(n), t) for n, t in fields))
    out.append(f"#close\t{datetime.fromtimestamp(close_us // US, tz=timezone.utc).strftime(fmt)}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# benign world

WEB_SITES = [
    "www.baidu.com", "www.gov.cn", "www.sgcc.com.cn", "mirrors.aliyun.com", "www.qq.com",
    "news.cctv.com", "www.people.com.cn", "www.weather.com.cn", "cdn.jsdelivr.net",
    "ctldl.windowsupdate.com", "officecdn.microsoft.com", "www.wps.cn", "pan.baidu.com",
    "map.baidu.com", "www.xinhuanet.com", "www.nea.gov.cn", "www.cnki.net", "dl.360safe.com",
    "ocsp.digicert.cn", "www.csg.cn", "www.12306.cn", "www.ccgp.gov.cn",
]
# internal DNS names -> host
INTERNAL_NAMES = {"dc01": "dc01", "fs01": "fs01", "oa": "adm01", "mail": "mail01", "db01": "db01",
                  "hist01": "hist01", "portal01": "portal01"}
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36 Edg/128.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:131.0) Gecko/20100101 Firefox/131.0",
    "Microsoft-CryptoAPI/10.0",
    "Windows-Update-Agent/10.0.10011.16384 Client-Protocol/2.50",
]
OFFICE_USERS = ["zhangwei", "liqiang", "wangfang", "liuyang", "chenjing", "yanglei", "zhaomin"]
ADMINS = [("yanglei", "10.20.5.10"), ("zhaomin", "10.20.5.11"), ("ops", "10.20.5.10")]
UID = {"root": 0, "ops": 1001, "yanglei": 1002, "zhaomin": 1003}

TLS12_CIPHERS = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                 "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]
TLS13_CIPHERS = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
SSH_CLIENT_LINUX = "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10"
SSH_SERVER = "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.10"
SSH_CLIENT_WIN = "SSH-2.0-OpenSSH_for_Windows_8.1"
SSH_CLIENT_BRUTE = "SSH-2.0-libssh_0.9.6"
# The nmap "top ports" the scanner probes (the first entries of nmap-services by frequency).
TOP_PORTS = [80, 23, 443, 21, 22, 25, 3389, 110, 445, 139, 143, 53, 135, 3306, 8080, 1723, 111,
             995, 993, 5900, 1025, 587, 8888, 199, 1720, 465, 548, 113, 81, 6001, 10000, 514, 5060,
             179, 1026, 2000, 8443, 8000, 32768, 554, 26, 1433, 49152, 2001, 515, 8008, 49154, 1027,
             5666, 646, 5000, 5631, 631, 49153, 8081, 2049, 88, 79, 5800, 106, 2121, 1110, 49155,
             6000, 513, 990, 5357, 427, 49156, 543, 544, 5101, 144, 7, 389, 8009, 3128, 444, 9999,
             5009, 7070, 5190, 3000, 5432, 1900, 3986, 13, 1029, 9, 5051, 6646, 49157, 1028, 873,
             1755, 2717, 4899, 9100, 119, 37, 502, 102, 20000, 44818]


class _World:
    """Accumulates records for every output file; one RNG drives everything."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.zeek: dict[str, list[dict[str, Any]]] = {k: [] for k in ZEEK_FIELDS}
        self.eve: list[tuple[int, int, dict[str, Any]]] = []
        self.auth: list[tuple[int, int, str]] = []
        self._seq = 0
        self._pid_base = {h: 900 + rng.randrange(2000) for h in LINUX_HOSTS}
        self._logind = {h: 500 + rng.randrange(400) for h in LINUX_HOSTS}
        self.t0 = 0  # set by generate_campaign: PIDs grow with time, as on a real host
        self._ext: dict[str, str] = {}
        self._session = 40 + rng.randrange(200)

    # -- ids ---------------------------------------------------------------
    def uid(self) -> str:
        alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        return "C" + "".join(self.rng.choice(alphabet) for _ in range(17))

    def flow_id(self) -> int:
        return self.rng.randrange(10**14, 2**51)

    def eport(self) -> int:
        return self.rng.randrange(32768, 61000)

    def wport(self) -> int:
        return self.rng.randrange(49152, 65535)

    def pid(self, host: str, ts: int) -> int:
        """A process id on ``host`` at ``ts``: rising through the day (about one fork every 2 s)."""
        return self._pid_base[host] + max(0, ts - self.t0) // (2 * US) + self.rng.randrange(2)

    def logind_pid(self, host: str) -> int:
        return self._logind[host]

    def ext_ip(self, name: str) -> str:
        """A stable documentation-range address for an Internet name."""
        if name not in self._ext:
            h = int(hashlib.sha1(name.encode()).hexdigest(), 16)
            net = ("198.51.100", "192.0.2")[h % 2]
            self._ext[name] = f"{net}.{(h >> 8) % 200 + 20}"
        return self._ext[name]

    def fp(self) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(64))

    # -- records -------------------------------------------------------------
    def conn(self, ts: int, src: str, sport: int, dst: str, dport: int, proto: str = "tcp",
             service: str | None = None, state: str = "SF", duration: float | None = None,
             ob: int | None = None, rb: int | None = None, uid: str | None = None,
             eve_flow: bool | None = None, app_proto: str | None = None) -> str:
        rng = self.rng
        uid = uid or self.uid()
        hdr = 20 + (20 if proto == "tcp" else 8)
        if state == "S0":
            history, duration, ob, rb, op, rp = ("S" if proto == "tcp" else "D"), None, None, None, 1, 0
            oip, rip = 44 if proto == "tcp" else 68, 0
        elif state == "REJ":
            history, duration, ob, rb, op, rp = "Sr", rng.uniform(0.0001, 0.002), 0, 0, 1, 1
            oip, rip = 44, 40
        elif state == "RSTO" and ob is None:  # half-open scan of an open port
            history, duration, ob, rb, op, rp = "ShR", rng.uniform(0.0001, 0.002), 0, 0, 2, 1
            oip, rip = 84, 44
        else:
            if duration is None:
                duration = rng.uniform(0.01, 2.0)
            ob = rng.randrange(200, 2000) if ob is None else ob
            rb = rng.randrange(300, 60000) if rb is None else rb
            if proto == "tcp":
                history = "ShADadFf" if state == "SF" else "ShADadR"
                op, rp = 4 + ob // 1200, 4 + rb // 1400
            else:
                history, op, rp = "Dd", 1 + ob // 1400, 1 + rb // 1400
            oip, rip = ob + op * hdr, rb + rp * hdr
        self.zeek["conn"].append({
            "ts": ts, "uid": uid, "id.orig_h": src, "id.orig_p": sport, "id.resp_h": dst,
            "id.resp_p": dport, "proto": proto, "service": service, "duration": duration,
            "orig_bytes": ob, "resp_bytes": rb, "conn_state": state, "local_orig": _private(src),
            "local_resp": _private(dst), "missed_bytes": 0, "history": history, "orig_pkts": op,
            "orig_ip_bytes": oip, "resp_pkts": rp, "resp_ip_bytes": rip, "tunnel_parents": None,
        })
        if eve_flow is None:
            eve_flow = rng.random() < 0.35
        if eve_flow:
            end = ts + int((duration or 0) * US)
            ev: dict[str, Any] = {
                "timestamp": None, "flow_id": self.flow_id(), "in_iface": "ens1f0",
                "event_type": "flow", "src_ip": src, "src_port": sport, "dest_ip": dst,
                "dest_port": dport, "proto": proto.upper(),
            }
            ap = app_proto or {"ssl": "tls", "gssapi,smb": "smb", "krb": "krb5"}.get(service or "", service)
            if ap:
                ev["app_proto"] = ap
            elif state == "SF":
                ev["app_proto"] = "failed"
            ev["flow"] = {
                "pkts_toserver": op, "pkts_toclient": rp, "bytes_toserver": oip,
                "bytes_toclient": rip, "start": _suri_time(ts), "end": _suri_time(end),
                "age": int((duration or 0)), "state": "closed" if state in ("SF", "REJ", "RSTO") else "new",
                "reason": "timeout", "alerted": False,
            }
            if proto == "tcp":
                flags = {"SF": "1b", "REJ": "16", "RSTO": "16", "S0": "02"}.get(state, "1f")
                ev["tcp"] = {"tcp_flags": flags, "tcp_flags_ts": "02" if state == "S0" else flags,
                             "tcp_flags_tc": "00" if state == "S0" else flags, "syn": True}
                if state == "SF":
                    ev["tcp"].update({"fin": True, "psh": True, "ack": True})
                if state in ("REJ", "RSTO"):
                    ev["tcp"].update({"rst": True, "ack": True})
                ev["tcp"]["state"] = "closed" if state != "S0" else "syn_sent"
            # flow records are emitted when the flow times out
            self.eve.append((end + 60 * US + rng.randrange(US), self._next(), ev))
        return uid

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def eve_event(self, ts: int, ev: dict[str, Any]) -> None:
        self.eve.append((ts, self._next(), ev))

    def alert(self, ts: int, src: str, sport: int, dst: str, dport: int, sid: int, rev: int,
              sig: str, category: str, severity: int, proto: str = "TCP",
              app_proto: str | None = None, created: str = "2010_07_30") -> None:
        ev: dict[str, Any] = {
            "timestamp": None, "flow_id": self.flow_id(), "in_iface": "ens1f0", "event_type": "alert",
            "src_ip": src, "src_port": sport, "dest_ip": dst, "dest_port": dport, "proto": proto,
            "pkt_src": "wire/pcap",
            "alert": {"action": "allowed", "gid": 1, "signature_id": sid, "rev": rev,
                      "signature": sig, "category": category, "severity": severity,
                      "metadata": {"created_at": [created], "updated_at": ["2024_03_12"]}},
        }
        if app_proto:
            ev["app_proto"] = app_proto
        ev["direction"] = "to_server"
        ev["flow"] = {"pkts_toserver": 1, "pkts_toclient": 0, "bytes_toserver": 58,
                      "bytes_toclient": 0, "start": _suri_time(ts), "src_ip": src,
                      "dest_ip": dst, "src_port": sport, "dest_port": dport}
        self.eve_event(ts, ev)

    def dns(self, ts: int, src: str, query: str, qtype: str = "A", answers: list[str] | None = None,
            rcode: str = "NOERROR", ttl: float = 300.0, eve: bool | None = None,
            resolver: str = HOSTS["dns01"]) -> None:
        rng = self.rng
        qtypes = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "NULL": 10, "PTR": 12, "MX": 15, "TXT": 16,
                  "AAAA": 28, "SRV": 33}
        sport = self.eport() if src in (HOSTS[h] for h in LINUX_HOSTS) else self.wport()
        rtt = rng.uniform(0.0003, 0.08)
        qlen = len(query) + 18
        answers = answers or []
        rlen = qlen + sum(16 + len(a) for a in answers)
        uid = self.conn(ts, src, sport, resolver, 53, "udp", "dns", "SF", rtt, qlen, rlen, eve_flow=False)
        tid = rng.randrange(65536)
        self.zeek["dns"].append({
            "ts": ts, "uid": uid, "id.orig_h": src, "id.orig_p": sport, "id.resp_h": resolver,
            "id.resp_p": 53, "proto": "udp", "trans_id": tid, "rtt": rtt, "query": query,
            "qclass": 1, "qclass_name": "C_INTERNET", "qtype": qtypes[qtype], "qtype_name": qtype,
            "rcode": {"NOERROR": 0, "NXDOMAIN": 3, "SERVFAIL": 2}[rcode], "rcode_name": rcode,
            "AA": False, "TC": False, "RD": True, "RA": True, "Z": 0,
            "answers": answers or None, "TTLs": [ttl] * len(answers) or None, "rejected": False,
        })
        if eve is None:
            eve = rng.random() < 0.4
        if eve:
            fid = self.flow_id()
            base = {"flow_id": fid, "in_iface": "ens1f0", "event_type": "dns", "src_ip": src,
                    "src_port": sport, "dest_ip": resolver, "dest_port": 53, "proto": "UDP",
                    "pkt_src": "wire/pcap"}
            self.eve_event(ts, {"timestamp": None, **base,
                                "dns": {"type": "query", "id": tid, "rrname": query, "rrtype": qtype,
                                        "tx_id": 0, "opcode": 0}})
            ans: dict[str, Any] = {"version": 2, "type": "answer", "id": tid,
                                   "flags": "8180" if rcode == "NOERROR" else "8183", "qr": True,
                                   "rd": True, "ra": True, "opcode": 0, "rrname": query,
                                   "rrtype": qtype, "rcode": rcode}
            if answers:
                ans["answers"] = [{"rrname": query, "rrtype": qtype, "ttl": int(ttl),
                                   "rdata": a.removeprefix("TXT ").split(" ", 1)[-1] if qtype == "TXT" else a}
                                  for a in answers]
            rsp = {"timestamp": None, **base, "src_ip": resolver, "src_port": 53, "dest_ip": src,
                   "dest_port": sport, "dns": ans}
            self.eve_event(ts + int(rtt * US), rsp)

    def tls(self, ts: int, src: str, dst: str, sni: str | None, version: str = "TLSv13",
            cipher: str | None = None, dport: int = 443, eve: bool | None = None,
            subject: str | None = None) -> str:
        rng = self.rng
        sport = self.wport()
        if cipher is None:
            cipher = rng.choice(TLS13_CIPHERS if version == "TLSv13" else TLS12_CIPHERS)
        uid = self.conn(ts, src, sport, dst, dport, "tcp", "ssl", "SF", rng.uniform(0.05, 30.0),
                        rng.randrange(600, 4000), rng.randrange(3000, 400000))
        legacy = version in ("TLSv10", "SSLv3")
        self.zeek["ssl"].append({
            "ts": ts + rng.randrange(500, 5000), "uid": uid, "id.orig_h": src, "id.orig_p": sport,
            "id.resp_h": dst, "id.resp_p": dport, "version": version, "cipher": cipher,
            "curve": None if legacy else rng.choice(["x25519", "secp256r1"]), "server_name": sni,
            "resumed": False, "last_alert": None,
            "next_protocol": None if legacy else rng.choice(["h2", "http/1.1"]),
            "established": True, "ssl_history": "CsiI" if version == "TLSv13" else "CsxknGIi",
            "cert_chain_fps": None if version == "TLSv13" else [self.fp(), self.fp()][: 1 if legacy else 2],
            "client_cert_chain_fps": None if version == "TLSv13" else [],
            "sni_matches_cert": None if (version == "TLSv13" or sni is None) else True,
        })
        if eve is None:
            eve = rng.random() < 0.5
        if eve:
            ver = {"TLSv13": "TLS 1.3", "TLSv12": "TLS 1.2", "TLSv11": "TLS 1.1",
                   "TLSv10": "TLS 1.0", "SSLv3": "SSLv3"}[version]
            tls: dict[str, Any] = {}
            if version != "TLSv13":
                cn = subject or (sni or dst)
                tls.update({"subject": f"CN={cn}", "issuerdn": "C=CN, O=WoTrus CA Limited, CN=WoTrus DV Server CA",
                            "serial": ":".join(f"{rng.randrange(256):02X}" for _ in range(12)),
                            "fingerprint": ":".join(self.fp()[i:i + 2] for i in range(0, 40, 2))})
            if sni:
                tls["sni"] = sni
            tls["version"] = ver
            if version != "TLSv13":
                nb = datetime.fromtimestamp(ts // US - 200 * 86400, tz=timezone.utc).strftime("%Y-%m-%dT00:00:00")
                na = datetime.fromtimestamp(ts // US + 165 * 86400, tz=timezone.utc).strftime("%Y-%m-%dT23:59:59")
                tls.update({"notbefore": nb, "notafter": na})
            wire = {"TLSv13": 771, "TLSv12": 771, "TLSv11": 770, "TLSv10": 769}.get(version, 768)
            ja3s = f"{wire},4865,43-51" if version == "TLSv13" else f"{wire},{49199 if not legacy else 5},65281"
            ja3 = "771,4865-4866-4867-49195-49199-49196-49200-52393-52392,0-23-65281-10-11-35-16-5-13-18-51-45-43,29-23-24,0"
            tls["ja3"] = {"hash": hashlib.md5(ja3.encode()).hexdigest(), "string": ja3}
            tls["ja3s"] = {"hash": hashlib.md5(ja3s.encode()).hexdigest(), "string": ja3s}
            self.eve_event(ts + rng.randrange(5000, 50000), {
                "timestamp": None, "flow_id": self.flow_id(), "in_iface": "ens1f0", "event_type": "tls",
                "src_ip": src, "src_port": sport, "dest_ip": dst, "dest_port": dport, "proto": "TCP",
                "pkt_src": "wire/pcap", "tls": tls})
        return uid

    def http(self, ts: int, src: str, dst: str, host: str, uris: list[tuple[str, str, int]],
             ua: str, dport: int = 80, username: str | None = None, password: str | None = None,
             auth_from: int = 0) -> str:
        """One TCP connection carrying ``uris`` = [(method, uri, status)] requests."""
        rng = self.rng
        sport = self.wport() if not src.startswith("10.10.1.") else self.eport()
        uid = self.conn(ts, src, sport, dst, dport, "tcp", "http", "SF", rng.uniform(0.05, 8.0),
                        400 * len(uris) + rng.randrange(100), rng.randrange(1000, 200000))
        msgs = {200: "OK", 301: "Moved Permanently", 302: "Found", 304: "Not Modified",
                401: "Unauthorized", 404: "Not Found"}
        t = ts
        for depth, (method, uri, status) in enumerate(uris, 1):
            t += rng.randrange(2000, 400000)
            body = 0 if status in (304, 301, 302) else rng.randrange(300, 90000)
            mime = None
            if body:
                mime = ["text/html"] if uri.endswith(("/", ".jsp", ".html", ".htm")) or "?" in uri else (
                    ["application/javascript"] if uri.endswith(".js") else ["text/plain"])
            authed = username is not None and depth > auth_from
            self.zeek["http"].append({
                "ts": t, "uid": uid, "id.orig_h": src, "id.orig_p": sport, "id.resp_h": dst,
                "id.resp_p": dport, "trans_depth": depth, "method": method, "host": host, "uri": uri,
                "referrer": None if depth == 1 else f"http://{host}{uris[0][1]}", "version": "1.1",
                "user_agent": ua, "origin": None, "request_body_len": 0, "response_body_len": body,
                "status_code": status, "status_msg": msgs.get(status, "OK"), "info_code": None,
                "info_msg": None, "tags": [], "username": username if authed else None,
                "password": password if authed else None, "proxied": None, "orig_fuids": None,
                "orig_filenames": None, "orig_mime_types": None,
                "resp_fuids": ["F" + self.uid()[1:] for _ in range(1)] if body else None,
                "resp_filenames": None, "resp_mime_types": mime,
            })
        return uid

    def ssh(self, ts: int, src: str, dst: str, success: bool | None, attempts: int,
            client: str = SSH_CLIENT_LINUX, duration: float | None = None,
            sport: int | None = None) -> int:
        rng = self.rng
        sport = sport or (self.wport() if src.startswith("10.20.5.") else self.eport())
        dur = duration if duration is not None else rng.uniform(2.0, 600.0)
        uid = self.conn(ts, src, sport, dst, 22, "tcp", "ssh", "SF", dur,
                        rng.randrange(2500, 6000) + 900 * attempts, rng.randrange(2500, 9000))
        self.zeek["ssh"].append({
            "ts": ts + rng.randrange(2000, 40000), "uid": uid, "id.orig_h": src, "id.orig_p": sport,
            "id.resp_h": dst, "id.resp_p": 22, "version": 2, "auth_success": success,
            "auth_attempts": attempts, "direction": "INBOUND" if not _private(src) else None,
            "client": client, "server": SSH_SERVER, "cipher_alg": "chacha20-poly1305@openssh.com",
            "mac_alg": "umac-64-etm@openssh.com", "compression_alg": "none",
            "kex_alg": "curve25519-sha256", "host_key_alg": "ssh-ed25519",
            "host_key": ":".join(f"{b:02x}" for b in hashlib.md5(dst.encode()).digest()),
        })
        return sport

    def syslog(self, ts: int, host: str, prog: str, msg: str, pid: int | None = None) -> None:
        tag = f"{prog}[{pid}]" if pid is not None else prog
        self.auth.append((ts, self._next(), f"{_syslog_time(ts)} {host} {tag}: {msg}"))

    def mark(self) -> tuple:
        """Position in every record list; :meth:`span` gives the time range of what came after."""
        return tuple(len(v) for v in self.zeek.values()) + (len(self.eve), len(self.auth))

    def span(self, mark: tuple) -> tuple[int, int]:
        """(first, last) record time since ``mark``, whole seconds outward (syslog has 1 s resolution).

        Suricata ``flow`` records are left out: they are written when the flow times out, after the activity.
        """
        times: list[int] = []
        for (name, rows), m in zip(self.zeek.items(), mark):
            times += [r["ts"] for r in rows[m:]]
        times += [ts for ts, _, ev in self.eve[mark[-2]:] if ev["event_type"] != "flow"]
        times += [ts for ts, _, _ in self.auth[mark[-1]:]]
        lo, hi = min(times), max(times)
        return lo - lo % US, hi - hi % US + (US if hi % US else 0)

    def session_no(self) -> int:
        self._session += 1
        return self._session


# ---------------------------------------------------------------------------
# background


def _day_times(w: _World, t0: int, span: int, n: int, business: float = 0.75) -> list[int]:
    """``n`` sorted times over [t0, t0+span): ``business`` of them in office hours (08-18 CST = 00-10 UTC)."""
    rng = w.rng
    out = []
    day0 = t0 - t0 % (86400 * US)
    for _ in range(n):
        if rng.random() < business:
            # office hours in China Standard Time are 00:00-10:00 UTC
            t = day0 + rng.randrange(0, 10 * 3600 * US)
            if t < t0:
                t += 86400 * US
            if t >= t0 + span:
                t = t0 + rng.randrange(span)
        else:
            t = t0 + rng.randrange(span)
        out.append(t)
    return sorted(out)


def _background(w: _World, t0: int, span: int) -> None:
    rng = w.rng
    workstations = [f"10.20.1.{i}" for i in range(11, 81)] + [f"10.20.2.{i}" for i in range(11, 31)]
    dc01, fs01 = HOSTS["dc01"], HOSTS["fs01"]

    # web browsing: DNS lookup, then HTTPS (mostly) or HTTP
    for t in _day_times(w, t0, span, 900):
        ws = rng.choice(workstations)
        site = rng.choice(WEB_SITES)
        ip = w.ext_ip(site)
        w.dns(t, ws, site, "A", [ip], ttl=float(rng.choice([60, 300, 600])))
        if rng.random() < 0.3:
            w.dns(t + 1000, ws, site, "AAAA", [], ttl=300.0)
        t2 = t + rng.randrange(20_000, 200_000)
        if rng.random() < 0.78:
            w.tls(t2, ws, ip, site, rng.choice(["TLSv13", "TLSv13", "TLSv12"]))
        else:
            paths = ["/", "/index.html", "/static/js/app.js", "/news/2024/list.htm", "/favicon.ico"]
            reqs = [("GET", p, rng.choice([200, 200, 200, 304])) for p in rng.sample(paths, rng.randrange(1, 4))]
            w.http(t2, ws, ip, site, reqs, rng.choice(USER_AGENTS))

    # internal name lookups, AD traffic, SMB to file server and DC
    for t in _day_times(w, t0, span, 700):
        ws = rng.choice(workstations)
        r = rng.random()
        if r < 0.35:
            label = rng.choice(sorted(INTERNAL_NAMES))
            w.dns(t, ws, f"{label}.{DOMAIN}", "A", [HOSTS[INTERNAL_NAMES[label]]], ttl=1200.0)
        elif r < 0.45:
            w.dns(t, ws, f"_ldap._tcp.dc._msdcs.{DOMAIN}", "SRV", [f"dc01.{DOMAIN}"], ttl=600.0)
            w.conn(t + 3000, ws, w.wport(), dc01, 389, "tcp", "ldap", "SF")
            w.conn(t + 9000, ws, w.wport(), dc01, 88, "tcp", "krb", "SF")
        elif r < 0.5:
            w.dns(t, ws, f"wpad.{DOMAIN}", "A", [], rcode="NXDOMAIN")
        elif r < 0.85:
            w.conn(t, ws, w.wport(), fs01, 445, "tcp", "gssapi,smb", "SF", rng.uniform(1, 900),
                   rng.randrange(2000, 400000), rng.randrange(5000, 5_000_000))
        else:
            w.conn(t, ws, w.wport(), dc01, 445, "tcp", "gssapi,smb", "SF", rng.uniform(0.2, 5))
    # NTP
    for t in _day_times(w, t0, span, 150, business=0.3):
        w.conn(t, rng.choice(workstations), 123, dc01, 123, "udp", "ntp", "SF", 0.001, 48, 48)

    # the internal OA application (same server the attacker abuses later), no credentials in URL/header
    for t in _day_times(w, t0, span, 220):
        ws = rng.choice(workstations)
        pages = ["/oa/index.jsp", "/oa/notice/list.jsp", "/oa/static/oa.js", "/oa/workflow/todo.jsp"]
        w.http(t, ws, HOSTS["adm01"], f"oa.{DOMAIN}", [("GET", p, 200) for p in rng.sample(pages, 2)],
               rng.choice(USER_AGENTS[:3]))

    # citizens using the e-government portal from the Internet
    for t in _day_times(w, t0, span, 450):
        client = f"{rng.choice(['198.51.100', '192.0.2'])}.{rng.randrange(1, 255)}"
        w.tls(t, client, HOSTS["portal01"], "www.pdc.example", rng.choice(["TLSv13", "TLSv12"]))
    # portal application -> database
    for t in _day_times(w, t0, span, 260):
        w.conn(t, HOSTS["portal01"], w.eport(), HOSTS["db01"], 1433, "tcp", None, "SF",
               rng.uniform(0.01, 0.5), eve_flow=rng.random() < 0.2, app_proto="tds")
    # mail relay: SPF/DMARC TXT lookups (legitimate TXT traffic, low volume)
    for t in _day_times(w, t0, span, 70, business=0.6):
        dom = rng.choice(["qq.com", "163.com", "sgcc.com.cn", "gov.cn", "126.com"])
        name = rng.choice([dom, f"_dmarc.{dom}"])
        w.dns(t, HOSTS["mail01"], name, "TXT", [f"TXT 30 v=spf1 include:spf.{dom} -all"])
        w.dns(t + 2000, HOSTS["mail01"], dom, "MX", [f"mx.{dom}"])

    # OT: operator workstation -> HMI thick client; HMI polls the RTU over Modbus; historian
    for t in range(t0 + rng.randrange(60 * US), t0 + span, 300 * US):
        w.conn(t, HOSTS["hmi01"], w.wport(), HOSTS["rtu01"], 502, "tcp", "modbus", "SF",
               rng.uniform(0.05, 0.4), rng.randrange(120, 400), rng.randrange(120, 600), eve_flow=False)
        if rng.random() < 0.25:
            w.conn(t + 7 * US, HOSTS["hist01"], w.wport(), HOSTS["hmi01"], 1433, "tcp", None, "SF",
                   rng.uniform(0.1, 2), eve_flow=False)
    for t in _day_times(w, t0, span, 60):
        w.conn(t, HOSTS["opws01"], w.wport(), HOSTS["hmi01"], 4840, "tcp", None, "SF",
               rng.uniform(30, 3000), rng.randrange(5000, 90000), rng.randrange(50000, 900000))

    # IT administrators RDP to the Windows servers from their workstations
    for t in _day_times(w, t0, span, 14, business=0.95):
        src = rng.choice([HOSTS["itadm01"], HOSTS["itadm02"]])
        dst = HOSTS[rng.choice(["db01", "fs01", "dc01"])]
        w.conn(t, src, w.wport(), dst, 3389, "tcp", "rdp", "SF", rng.uniform(60, 3600),
               rng.randrange(100_000, 900_000), rng.randrange(1_000_000, 30_000_000))

    # a few ordinary failed connections (dead hosts, closed ports)
    for t in _day_times(w, t0, span, 40):
        ws = rng.choice(workstations)
        if rng.random() < 0.5:
            w.conn(t, ws, w.wport(), w.ext_ip(rng.choice(WEB_SITES)), 443, "tcp", None, "S0")
        else:
            w.conn(t, ws, w.wport(), "10.20.0.80", 9100, "tcp", None, "REJ")  # printer switched off
    # an Internet background prober touching the portal on a few ports (well under scan thresholds)
    prober = "198.51.100.77"
    tp = t0 + rng.randrange(span // 2, span - 3600 * US)
    for i, port in enumerate((8080, 8443, 22, 3389)):
        w.conn(tp + i * 11 * US, prober, w.eport(), HOSTS["portal01"], port, "tcp", None, "S0")

    # Suricata: benign informational alerts
    for t in _day_times(w, t0, span, 25):
        ws = rng.choice(workstations)
        w.alert(t, ws, w.wport(), w.ext_ip("www.wps.cn"), 80, 2013028, 7,
                "ET POLICY curl User-Agent Outbound", "Attempted Information Leak", 2, app_proto="http",
                created="2011_06_14")

    # Linux admin logins (ssh.log + auth.log), a few typos, cron, sudo maintenance
    admin_targets = ["jump01", "portal01", "dns01", "mail01"]
    for t in _day_times(w, t0, span, 22, business=0.9):
        user, src = rng.choice(ADMINS)
        host = rng.choice(admin_targets)
        typo = rng.random() < 0.25
        client = SSH_CLIENT_WIN
        sport = w.ssh(t, src, HOSTS[host], True, 2 if typo else 1, client)
        pid = w.pid(host, t)
        tt = t + rng.randrange(300_000, 900_000)
        if typo:
            w.syslog(tt, host, "sshd", f"Failed password for {user} from {src} port {sport} ssh2", pid)
            tt += rng.randrange(2, 6) * US
        method = "password" if user == "ops" else "publickey"
        suffix = "" if method == "password" else f": ED25519 SHA256:{base64.b64encode(hashlib.sha256(user.encode()).digest()).decode().rstrip('=')}"
        w.syslog(tt, host, "sshd", f"Accepted {method} for {user} from {src} port {sport} ssh2{suffix}", pid)
        w.syslog(tt + 3000, host, "sshd", f"pam_unix(sshd:session): session opened for user {user}(uid={UID[user]}) by (uid=0)", pid)
        w.syslog(tt + 9000, host, "systemd-logind", f"New session {w.session_no()} of user {user}.",
                 w.logind_pid(host))
        if rng.random() < 0.6:
            cmd = rng.choice(["/usr/bin/systemctl restart nginx", "/usr/bin/apt-get update",
                              "/usr/bin/journalctl -u named --since today", "/usr/bin/tail -n 200 /var/log/syslog",
                              "/usr/sbin/rndc reload"])
            ts2 = tt + rng.randrange(20, 300) * US
            w.syslog(ts2, host, "sudo", f"{user:>8} : TTY=pts/{rng.randrange(4)} ; PWD=/home/{user} ; USER=root ; COMMAND={cmd}")
            w.syslog(ts2 + 2000, host, "sudo", f"pam_unix(sudo:session): session opened for user root(uid=0) by {user}(uid={UID[user]})")
            w.syslog(ts2 + rng.randrange(1, 30) * US, host, "sudo", "pam_unix(sudo:session): session closed for user root")
        end = tt + rng.randrange(60, 1800) * US
        w.syslog(end, host, "sshd", f"Received disconnect from {src} port {sport}:11: disconnected by user", pid)
        w.syslog(end + 1000, host, "sshd", f"Disconnected from user {user} {src} port {sport}", pid)
        w.syslog(end + 4000, host, "sshd", f"pam_unix(sshd:session): session closed for user {user}", pid)
    for host in LINUX_HOSTS:
        for t in range(t0 + 17 * 60 * US, t0 + span, 3600 * US):
            pid = w.pid(host, t)
            w.syslog(t, host, "CRON", "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)", pid)
            w.syslog(t + rng.randrange(50_000, 900_000), host, "CRON", "pam_unix(cron:session): session closed for user root", pid)


# ---------------------------------------------------------------------------
# the campaign


def _b32(rng: random.Random, nbytes: int) -> str:
    return base64.b32encode(bytes(rng.randrange(256) for _ in range(nbytes))).decode().rstrip("=").lower()


def _campaign(w: _World, t0: int) -> list[Stage]:
    rng = w.rng
    A = ATTACKER_IP
    H = HOSTS
    stages: list[Stage] = []
    M = 60 * US

    mark = w.mark()

    def stage(name, tactic, tech, desc, att, vic, vhosts, files, rules):
        nonlocal mark
        s, e = w.span(mark)
        mark = w.mark()
        stages.append(Stage(name, tactic, tech, desc, att, vic, vhosts, _iso(s), _iso(e), files,
                            [RULE_IDS[r] for r in rules]))

    # 1. reconnaissance: ping-less sweep of the DMZ on 22/443/3389, then SYN scan of the two live hosts
    s1 = t0 + 10 * M + rng.randrange(30 * US)
    t = s1
    for port in (22, 443, 3389):
        for last in range(1, 31):
            ip = f"10.10.1.{last}"
            live = ip in (H["portal01"], H["jump01"], H["mail01"])
            state = "S0"
            if live and (port, ip) in ((22, H["jump01"]), (443, H["portal01"])):
                state = "RSTO"
            elif live:
                state = "REJ"
            w.conn(t, A, w.eport(), ip, port, "tcp", None, state, eve_flow=rng.random() < 0.2)
            t += rng.randrange(20_000, 150_000)
    w.alert(s1 + 2 * US, A, w.eport(), H["portal01"], 3389, 2009582, 3, "ET SCAN NMAP -sS window 1024",
            "Attempted Information Leak", 2, created="2010_06_23")
    t += 20 * US
    open_ports = {H["portal01"]: {80, 443}, H["jump01"]: {22}}
    for victim in (H["portal01"], H["jump01"]):
        ports = TOP_PORTS[:]
        rng.shuffle(ports)
        for port in ports:
            state = "RSTO" if port in open_ports[victim] else ("REJ" if rng.random() < 0.15 else "S0")
            w.conn(t, A, w.eport(), victim, port, "tcp", None, state, eve_flow=rng.random() < 0.1)
            if port in (1433, 3306, 5432) :
                sig = {1433: (2010935, "ET SCAN Suspicious inbound to MSSQL port 1433"),
                       3306: (2010937, "ET SCAN Suspicious inbound to mySQL port 3306"),
                       5432: (2010939, "ET SCAN Suspicious inbound to PostgreSQL port 5432")}[port]
                w.alert(t + 300, A, w.eport(), victim, port, sig[0], 3, sig[1], "Potentially Bad Traffic", 2)
            t += rng.randrange(200_000, 900_000)
    stage("reconnaissance", "discovery", "T1046",
          f"{A} sweeps the DMZ (10.10.1.1-30 on 22/443/3389) and SYN-scans the top {len(TOP_PORTS)} ports "
          "of the web portal and the jump host; Suricata raises ET SCAN alerts.",
          [A], [H["portal01"], H["jump01"]], ["portal01", "jump01"],
          ["conn.log", "eve.json"], ["port_scan", "horizontal_scan", "suricata_scan"])

    # 2. SSH brute force against the jump host
    s2 = t0 + 40 * M + rng.randrange(30 * US)
    t = s2
    users = ["root", "admin", "root", "oracle", "test", "root", "ops", "ubuntu", "root", "admin",
             "postgres", "ops", "root", "user", "ops", "root"]
    for i, user in enumerate(users):
        valid = user in ("root", "ops")
        sport = w.ssh(t, A, H["jump01"], False, 3, SSH_CLIENT_BRUTE, duration=rng.uniform(6, 12))
        pid = w.pid("jump01", t)
        tt = t + 300_000
        if not valid:
            w.syslog(tt, "jump01", "sshd", f"Invalid user {user} from {A} port {sport}", pid)
            w.syslog(tt + 2000, "jump01", "sshd", "pam_unix(sshd:auth): check pass; user unknown", pid)
        w.syslog(tt + 4000, "jump01", "sshd",
                 "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
                 f"rhost={A}" + ("" if not valid else f"  user={user}"), pid)
        for k in range(3):
            tt += rng.randrange(1_800_000, 3_000_000)
            inv = "" if valid else "invalid user "
            w.syslog(tt, "jump01", "sshd", f"Failed password for {inv}{user} from {A} port {sport} ssh2", pid)
        if valid:
            w.syslog(tt + 5000, "jump01", "sshd", f"Connection closed by authenticating user {user} {A} port {sport} [preauth]", pid)
            w.syslog(tt + 6000, "jump01", "sshd",
                     f"PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost={A}  user={user}", pid)
        else:
            w.syslog(tt + 5000, "jump01", "sshd", f"Connection closed by invalid user {user} {A} port {sport} [preauth]", pid)
        if i in (0, 8):
            w.alert(t + 1000, A, sport, H["jump01"], 22, 2006546, 9,
                    "ET SCAN LibSSH Based Frequent SSH Connections Likely BruteForce Attack",
                    "Attempted Administrator Privilege Gained", 1, app_proto="ssh", created="2010_07_30")
        t += rng.randrange(9 * US, 14 * US)
    stage("ssh_brute_force", "credential_access", "T1110.001",
          f"{A} tries {len(users) * 3} passwords for root/ops/admin... over {len(users)} SSH connections to jump01.",
          [A], [H["jump01"]], ["jump01"], ["auth.log", "ssh.log", "conn.log", "eve.json"],
          ["ssh_bf_auth", "ssh_bf_zeek", "suricata_scan"])

    # 3. valid login with the guessed password, sudo to a root shell
    s3 = t0 + 58 * M + rng.randrange(30 * US)
    sport = w.ssh(s3, A, H["jump01"], True, 1, SSH_CLIENT_LINUX, duration=4200.0)
    pid = w.pid("jump01", s3)
    tt = s3 + 700_000
    w.syslog(tt, "jump01", "sshd", f"Accepted password for ops from {A} port {sport} ssh2", pid)
    w.syslog(tt + 3000, "jump01", "sshd", f"pam_unix(sshd:session): session opened for user ops(uid={UID['ops']}) by (uid=0)", pid)
    w.syslog(tt + 9000, "jump01", "systemd-logind", f"New session {w.session_no()} of user ops.", w.logind_pid("jump01"))
    ts_sudo = tt + 95 * US
    w.syslog(ts_sudo, "jump01", "sudo", "     ops : TTY=pts/1 ; PWD=/home/ops ; USER=root ; COMMAND=/bin/bash")
    w.syslog(ts_sudo + 2000, "jump01", "sudo", f"pam_unix(sudo:session): session opened for user root(uid=0) by ops(uid={UID['ops']})")
    stage("valid_account_login", "initial_access", "T1078",
          f"Accepted password for ops from {A} on jump01, then `sudo -s` to a root shell.",
          [A], [H["jump01"]], ["jump01"], ["auth.log", "ssh.log"],
          ["ssh_login_external", "sudo_root_shell"])

    # 4. lateral movement from the jump host: SMB fan-out, RDP to the DB server, SMB session to it
    J = H["jump01"]
    s4 = t0 + 80 * M + rng.randrange(30 * US)
    t = s4
    for name, state in (("dc01", "SF"), ("fs01", "SF"), ("adm01", "REJ"), ("db01", "SF"), ("hist01", "S0")):
        w.conn(t, J, w.eport(), H[name], 445, "tcp", "gssapi,smb" if state == "SF" else None, state,
               1.2 if state == "SF" else None, 1800 if state == "SF" else None, 1500 if state == "SF" else None,
               eve_flow=True)
        t += rng.randrange(3 * US, 9 * US)
    t += 40 * US
    w.conn(t, J, w.eport(), H["db01"], 3389, "tcp", "rdp", "SF", 1260.0, 480_000, 9_800_000, eve_flow=True)
    t += 200 * US
    w.conn(t, J, w.eport(), H["db01"], 445, "tcp", "gssapi,smb", "SF", 310.0, 2_400_000, 88_000_000,
           eve_flow=True)
    stage("lateral_movement", "lateral_movement", "T1021.002",
          "jump01 probes SMB on five internal servers, RDPs to db01 and opens an SMB session to it.",
          [J], [H["dc01"], H["fs01"], H["adm01"], H["db01"], H["hist01"]],
          ["dc01", "fs01", "adm01", "db01", "hist01"], ["conn.log", "eve.json"],
          ["smb_fan_out", "rdp_from_dmz"])

    # 5. internal admin page over plain HTTP with basic auth
    s5 = t0 + 100 * M + rng.randrange(30 * US)
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    w.http(s5, J, H["adm01"], f"oa.{DOMAIN}",
           [("GET", "/admin/", 401), ("GET", "/admin/", 200), ("GET", "/admin/users.jsp", 200),
            ("GET", "/admin/backup/config.jsp?download=1", 200)], ua,
           username="admin", password="Pdc@2024", auth_from=1)
    stage("cleartext_admin_login", "credential_access", "T1552.001",
          "From jump01 the attacker logs into the OA admin console (oa.pdc.local, 10.20.0.25) with HTTP basic "
          "auth over plain HTTP and downloads the configuration backup.",
          [J], [H["adm01"]], ["adm01"], ["http.log", "conn.log"], ["http_cleartext_credentials"])

    # 6. OT access: legacy HMI web UI (TLS 1.0, RC4), telnet to the RTU, FTP to the historian
    s6 = t0 + 115 * M + rng.randrange(30 * US)
    w.tls(s6, J, H["hmi01"], None, "TLSv10", "TLS_RSA_WITH_RC4_128_SHA", eve=True, subject="hmi01")
    w.conn(s6 + 120 * US, J, w.eport(), H["rtu01"], 23, "tcp", "telnet", "SF", 380.0, 900, 14000, eve_flow=True,
           app_proto="telnet")
    w.conn(s6 + 540 * US, J, w.eport(), H["hist01"], 21, "tcp", "ftp", "SF", 40.0, 420, 1900, eve_flow=True)
    stage("ot_access", "lateral_movement", "T0886",
          "jump01 opens the HMI's web UI (TLSv1.0 with RC4), telnets to the substation RTU gateway and FTPs "
          "to the historian.",
          [J], [H["hmi01"], H["rtu01"], H["hist01"]], ["hmi01", "rtu01", "hist01"],
          ["ssl.log", "conn.log", "eve.json"],
          ["weak_tls_version", "weak_tls_cipher", "ftp_telnet_internal"])

    # 7. exfiltration over a DNS tunnel from the DB server
    D = H["db01"]
    s7 = t0 + 150 * M + rng.randrange(30 * US)
    t = s7
    n = 160
    for i in range(n):
        qtype = "NULL" if i % 5 == 4 else "TXT"
        name = f"{_b32(rng, 32)}.{i:04x}.{EXFIL_DOMAIN}"
        ans = [f"TXT 8 {_b32(rng, 5)}"] if qtype == "TXT" else []
        w.dns(t, D, name, qtype, ans, ttl=0.0, eve=rng.random() < 0.5)
        t += rng.randrange(600_000, 2_200_000)
    stage("dns_tunnel_exfiltration", "exfiltration", "T1048.003",
          f"db01 sends {n} TXT/NULL queries with 52-character base32 labels under {EXFIL_DOMAIN} "
          "through the internal resolver.",
          [D], [H["dns01"]], ["dns01"], ["dns.log", "conn.log"],
          ["dns_tunnel", "dns_txt_null_volume"])
    return stages


# ---------------------------------------------------------------------------
# entry point


def default_start(now: datetime | None = None) -> datetime:
    """20 hours before the current whole hour: the 20-hour capture ends now, so
    the whole campaign lies inside the default 24-hour views of the CLI and
    the console."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=20)


def generate_campaign(out_dir: Path, seed: int = 7, start: datetime | None = None) -> CampaignManifest:
    """Write the campaign's logs and ``campaign.json`` into ``out_dir``; return the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if start is None:
        start = default_start()
    elif start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    start = start.astimezone(timezone.utc).replace(microsecond=0)
    t0 = int(start.timestamp()) * US
    span = 20 * 3600 * US  # the capture: 20 hours from start

    w = _World(random.Random(f"taishi-demo:{seed}"))
    w.t0 = t0
    stages = _campaign(w, t0)
    _background(w, t0, span)

    t_end = t0 + span
    texts: dict[str, str] = {}
    for path in ("conn", "dns", "http", "ssl", "ssh"):
        texts[f"{path}.log"] = _zeek_file(path, w.zeek[path], t0, t_end)
    eve_lines = []
    for ts, _, ev in sorted(w.eve, key=lambda x: (x[0], x[1])):
        ev["timestamp"] = _suri_time(ts)
        eve_lines.append(json.dumps(ev, separators=(",", ":")))
    texts["eve.json"] = "\n".join(eve_lines) + "\n"
    texts["auth.log"] = "\n".join(line for _, _, line in sorted(w.auth)) + "\n"

    for name in FILES:
        (out_dir / name).write_text(texts[name], encoding="utf-8", newline="\n")

    manifest = CampaignManifest(
        seed=seed, start=_iso(t0), end=_iso(t_end), out_dir=str(out_dir), files=[str(out_dir / f) for f in FILES],
        hosts=dict(HOSTS), zones=dict(ZONES), attacker_ip=ATTACKER_IP, stages=stages,
    )
    (out_dir / "campaign.json").write_text(manifest.to_json(), encoding="utf-8", newline="\n")
    return manifest


def demo_inventory() -> dict[str, Any]:
    """The simulated network as a CII inventory (``{systems, assets}``, the YAML import shape):
    one CII system per zone, one asset per host. ``opws01`` is left out on purpose, so
    passive discovery has an unknown host to find."""
    import ipaddress

    meta = {  # zone -> (name, sector, MLPS level, region, key business)
        "dmz": ("省调门户与远程接入区", "e_government", 3, "杭州市", "对外门户与运维远程接入"),
        "office": ("调度管理信息系统", "energy", 3, "杭州市", "调度计划、OA 与数据库"),
        "ot": ("电力监控系统（SCADA）", "energy", 4, "湖州市", "变电站监控与调度控制"),
    }
    roles = {"portal01": ("web portal", "high", ["tcp/443", "tcp/80"]), "jump01": ("bastion host", "critical", ["tcp/22"]),
             "mail01": ("mail relay", "medium", ["tcp/25"]), "dc01": ("domain controller", "critical", []),
             "adm01": ("OA web application", "medium", []), "fs01": ("file server", "high", []),
             "db01": ("dispatch database", "critical", []), "dns01": ("DNS resolver", "high", ["udp/53"]),
             "itadm01": ("admin workstation", "high", []), "itadm02": ("admin workstation", "high", []),
             "hmi01": ("HMI / SCADA server", "critical", ["tcp/443", "tcp/1433", "tcp/4840"]),
             "hist01": ("process historian", "high", ["tcp/1433"]), "rtu01": ("substation RTU gateway", "critical", ["tcp/502"])}
    systems = [{"cii_id": f"PDC-{z.upper()}", "name": name, "operator": "省电力调度控制中心",
                "credit_code": "12330000470051726F", "sector": sector, "mlps_level": level,
                "protection_dept": "省能源局", "key_business": business, "zone": z, "cidrs": [ZONES[z]],
                "location": region, "filing_no": f"33010099{i:03d}-0000{i}", "owner": "调度自动化处",
                "security_contacts": ["soc@pdc.example"], "crypto_assessment": "in_progress" if z == "ot" else "passed",
                "last_assessment_date": "2026-06-30", "last_assessment_result": "good"}
               for i, (z, (name, sector, level, region, business)) in enumerate(meta.items(), 1)]
    assets = []
    for host, ip in HOSTS.items():
        if host == "opws01":
            continue
        z = next(z for z, c in ZONES.items() if ipaddress.ip_address(ip) in ipaddress.ip_network(c))
        role, crit, services = roles[host]
        assets.append({"asset_id": host, "system_id": f"PDC-{z.upper()}", "hostname": host, "ips": [ip],
                       "role": role, "criticality": crit, "services": services})
    return {"systems": systems, "assets": assets}


def load_manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


if __name__ == "__main__":  # python -m taishi.demo OUT_DIR [SEED]
    import sys

    m = generate_campaign(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out"),
                          int(sys.argv[2]) if len(sys.argv) > 2 else 7)
    for s in m.stages:
        print(f"{s.start}  {s.name:<26} {s.technique:<10} {','.join(s.attacker_ips)} -> {','.join(s.victim_ips)}")
