"""Write tlcp_sm.pcap: a synthetic TCP/443 exchange with a TLCP (GB/T 38636) ClientHello
offering the ShangMi suites and a ServerHello choosing ECC_SM4_GCM_SM3 (0xE053), plus a
TLS 1.2 ClientHello offering RFC 8998 TLS_SM4_GCM_SM3 / TLS_SM4_CCM_SM3 answered with
TLS_SM4_GCM_SM3 (0x00C6). No payload beyond the hellos; made with the standard library
only, so the test input is reproducible:  python tests/data/pcap/make_tlcp_sm.py
"""

from __future__ import annotations

import struct
from pathlib import Path

OUT = Path(__file__).with_name("tlcp_sm.pcap")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    sip = bytes(int(x) for x in src.split("."))
    dip = bytes(int(x) for x in dst.split("."))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload
    pseudo = sip + dip + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, sip, dip)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    eth = bytes.fromhex("020000000002" "020000000001") + b"\x08\x00"
    return eth + ip + tcp


def hello(kind: int, version: int, suites: list[int], server_name: str | None = None) -> bytes:
    body = struct.pack("!H", version) + bytes(range(32)) + b"\x00"  # random, empty session id
    if kind == 1:
        body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites) + b"\x01\x00"
        ext = b""
        if server_name:
            name = server_name.encode()
            sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
            ext += struct.pack("!HH", 0, len(sni)) + sni
        body += struct.pack("!H", len(ext)) + ext
    else:
        body += struct.pack("!H", suites[0]) + b"\x00" + struct.pack("!H", 0)
    hs = struct.pack("!B", kind) + struct.pack("!I", len(body))[1:] + body
    return struct.pack("!BHH", 22, version, len(hs)) + hs


def conversation(cport: int, version: int, offered: list[int], chosen: int, sni: str, t0: float) -> list[tuple[float, bytes]]:
    c, s = "10.1.1.10", "10.2.2.20"
    ch = hello(1, version, offered, sni)
    sh = hello(2, version, [chosen])
    return [
        (t0, packet(c, s, cport, 443, 1000, 0, 0x02)),
        (t0 + 0.001, packet(s, c, 443, cport, 5000, 1001, 0x12)),
        (t0 + 0.002, packet(c, s, cport, 443, 1001, 5001, 0x10)),
        (t0 + 0.003, packet(c, s, cport, 443, 1001, 5001, 0x18, ch)),
        (t0 + 0.004, packet(s, c, 443, cport, 5001, 1001 + len(ch), 0x18, sh)),
        (t0 + 0.005, packet(c, s, cport, 443, 1001 + len(ch), 5001 + len(sh), 0x11)),
        (t0 + 0.006, packet(s, c, 443, cport, 5001 + len(sh), 1002 + len(ch), 0x11)),
    ]


def main() -> None:
    pkts = conversation(50001, 0x0101, [0xE053, 0xE051, 0xE013, 0xE011, 0x00C6], 0xE053, "tlcp.example.cn", 1700000000.0)
    pkts += conversation(50002, 0x0303, [0x00C6, 0x00C7, 0xC02F], 0x00C6, "sm.example.cn", 1700000001.0)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, data in pkts:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
    OUT.write_bytes(b"".join(out))


if __name__ == "__main__":
    main()
