"""The fast pcap path (``decoder="auto"``: Taishi decodes the headers, tshark only the
application packets) against the tshark-only path (``decoder="tshark"``).

Both paths must give the same events (ids, every column), the same dead letters and the same
counts on every shared capture and on synthetic captures with VLAN tags, Linux cooked
headers, IPv6 extension headers, TCP port reuse, retransmitted SYNs, non-IP frames and
Modbus/TCP edge cases and IPv4 fragments; a capture the fast decoder does not model
(overlapping fragments, a file cut short, not a capture) is read by tshark alone and says why. The tshark-only path is itself
checked against tshark's conversation tables and field output in test_ingest_pcap.py.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from ingest.pcap import read_pcap
from support import require_tool


@pytest.fixture(autouse=True, scope="module")
def _tshark() -> str:
    return require_tool("tshark")


def both(path: Path, **kw):
    out = {}
    for dec in ("tshark", "auto"):
        r = read_pcap(path, decoder=dec, **kw)
        t = r.read_all()
        out[dec] = (t.sort_by([("event.id", "ascending")]), r.summary, r.deadletters)
    return out["tshark"], out["auto"]


def assert_same(path: Path, **kw):
    (a, sa, da), (b, sb, db) = both(path, **kw)
    assert sb.decoder in ("taishi", "tshark") and sa.decoder == "tshark"
    assert a.num_rows == b.num_rows
    assert a["event.id"].to_pylist() == b["event.id"].to_pylist()
    for col in a.column_names:
        if col != "event.ingested":
            assert a[col].equals(b[col]), col
    assert sorted(da["reason"].to_pylist()) == sorted(db["reason"].to_pylist())
    for k in ("packets", "ip_packets", "bytes", "flows", "flows_by_transport", "events_by_dataset"):
        assert getattr(sa, k) == getattr(sb, k), k
    return a, sb


# ------------------------------------------------------------------------- shared captures


def test_every_shared_capture_same_as_tshark_alone(shared_data: Path) -> None:
    root = shared_data / "pcap"
    paths = sorted(p for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    assert len(paths) >= 30
    fast = 0
    for p in paths:
        _, s = assert_same(p)
        fast += s.decoder == "taishi"
    assert fast == len(paths)  # no shared capture needs tshark alone


def test_ssh_decode_as_same_as_tshark_alone(shared_data: Path) -> None:
    t, s = assert_same(shared_data / "pcap/bruteforce/ssh/slips_test19_ssh_bruteforce.pcap",
                       decode_as=("tcp.port==902,ssh",))
    assert s.decoder == "taishi" and (t["event.dataset"].to_pylist().count("pcap.ssh")) > 0


def test_tshark_skipped_where_no_packet_carries_application_data(shared_data: Path) -> None:
    for rel in ("pcap/dos/stopddos_pkt.TCP.synflood.spoofed.pcap", "pcap/scan/evilfingers_nmap/TCP_CONNECT_SCAN.pcap",
                "pcap/ics/modbus_cset2016/characterization_modbus_6RTU_with_operate.pcap"):
        r = read_pcap(shared_data / rel)
        t = r.read_all()
        assert r.summary.decoder == "taishi" and r.summary.tshark_packets == 0, rel
        assert r.summary.tshark_status is None and t.num_rows > 0


def test_only_application_packets_go_to_tshark(shared_data: Path) -> None:
    r = read_pcap(shared_data / "pcap/dns_tunnel/iodine_elastic.pcap")
    r.read_all()
    assert r.summary.decoder == "taishi" and 0 < r.summary.tshark_packets < r.summary.packets


# ------------------------------------------------------------------------- synthetic captures


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip4(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def tcp_seg(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload


def udp_dgram(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, proto: int, l4: bytes, ident: int = 1, frag: int = 0x4000) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, frag, 64, proto, 0, _ip4(src), _ip4(dst))
    return h[:10] + struct.pack("!H", _csum(h)) + h[12:] + l4


def ipv6(src: bytes, dst: bytes, proto: int, l4: bytes, hop_by_hop: bool = False) -> bytes:
    body, nxt = l4, proto
    if hop_by_hop:  # hop-by-hop options header (8 bytes: next header, length 0, PadN)
        body = bytes([proto, 0, 1, 4, 0, 0, 0, 0]) + l4
        nxt = 0
    return struct.pack("!IHBB", 6 << 28, len(body), nxt, 64) + src + dst + body


def eth(l3: bytes, etype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    out = bytes.fromhex("020000000002" "020000000001")
    for i, v in enumerate(vlans):
        out += struct.pack("!HH", 0x88A8 if i == 0 and len(vlans) > 1 else 0x8100, v)
    return out + struct.pack("!H", etype) + l3


def sll(l3: bytes, etype: int = 0x0800) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, bytes.fromhex("0200000000010000"), etype) + l3


def write(path: Path, frames: list[bytes], linktype: int = 1, t0: float = 1_700_000_000.0) -> Path:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, fr in enumerate(frames):
            t = t0 + i * 0.01
            f.write(struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)), len(fr), len(fr)) + fr)
    return path


def dns_query(qid: int, name: str) -> bytes:
    q = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q


def _port_reuse_frames(l3=lambda s, d, p, l4: ipv4(s, d, p, l4), link=eth) -> list[bytes]:
    c, s = "10.0.0.1", "10.0.0.2"
    req = b"GET /a HTTP/1.1\r\nHost: x.example\r\nUser-Agent: t\r\n\r\n"
    out = [link(l3(c, s, 6, tcp_seg(40000, 80, 1000, 0, 0x02)))]  # then retransmitted (same ISN)
    for isn in (1000, 90000):  # the second connection reuses the ports (new ISN)
        out += [
            link(l3(c, s, 6, tcp_seg(40000, 80, isn, 0, 0x02))),
            link(l3(s, c, 6, tcp_seg(80, 40000, 5000, isn + 1, 0x12))),
            link(l3(c, s, 6, tcp_seg(40000, 80, isn + 1, 5001, 0x18, req))),
            link(l3(s, c, 6, tcp_seg(80, 40000, 5001, isn + 1 + len(req), 0x11))),
            link(l3(c, s, 6, tcp_seg(40000, 80, isn + 1 + len(req), 5002, 0x11))),
        ]
    out.append(link(l3(c, "10.0.0.53", 17, udp_dgram(5555, 53, dns_query(7, "www.example.org")))))
    out.append(link(l3(c, s, 6, tcp_seg(41000, 22, 1, 0, 0x02))))  # a SYN, no answer
    return out


def test_vlan_tags_port_reuse_and_non_ip(tmp_path: Path) -> None:
    frames = [eth(f, vlans=(10,)) if i % 2 else eth(f, vlans=(20, 30))
              for i, f in enumerate(fr[14:] for fr in _port_reuse_frames())]
    frames.append(eth(bytes(28), etype=0x0806))  # ARP: a packet, not a flow
    t, s = assert_same(write(tmp_path / "vlan.pcap", frames))
    assert s.decoder == "taishi" and s.packets == len(frames) and s.ip_packets == len(frames) - 1
    http = t.filter(pa.compute.equal(t["event.dataset"], "pcap.http"))
    assert http.num_rows == 2  # one request per connection
    flows = t.filter(pa.compute.equal(t["event.dataset"], "pcap.flow"))
    web = [r for r in flows.to_pylist() if r["destination.port"] == 80]
    out = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "vlan.pcap"), "-Y", "tcp.port==80", "-T", "fields",
                          "-e", "tcp.stream"], capture_output=True, text=True, check=True).stdout.split()
    assert len(web) == len(set(out)) == 2  # port reuse: two flows for one 5-tuple, as tshark's tcp.stream says


def test_linux_cooked_and_ipv6_extension_headers(tmp_path: Path) -> None:
    a, b = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002")
    name = {"10.0.0.1": a, "10.0.0.2": b, "10.0.0.53": bytes.fromhex("20010db8000000000000000000000035")}
    v6 = lambda s, d, p, l4: ipv6(name[s], name[d], p, l4, hop_by_hop=p == 17)  # noqa: E731
    frames = _port_reuse_frames(l3=v6, link=lambda l3: sll(l3, 0x86DD))
    t, s = assert_same(write(tmp_path / "sll6.pcap", frames, linktype=113))
    assert s.decoder == "taishi"
    dns = t.filter(pa.compute.equal(t["event.dataset"], "pcap.dns"))
    assert dns["dns.question.name"].to_pylist() == ["www.example.org"]
    assert set(t["source.ip"].to_pylist()) <= {"2001:db8::1", "2001:db8::2", "2001:db8::35"}


def test_modbus_segments_split_or_retransmitted(tmp_path: Path) -> None:
    c, s = "10.0.1.1", "10.0.1.2"
    adu = lambda tid, fc, data: struct.pack("!HHHB", tid, 0, 2 + len(data), 1) + bytes([fc]) + data  # noqa: E731
    r1, r2, r3 = adu(1, 3, b"\x00\x00\x00\x02"), adu(2, 3, b"\x00\x10\x00\x01"), adu(3, 0x83, b"\x02")
    frames = [eth(ipv4(c, s, 6, tcp_seg(50000, 502, 100, 1, 0x18, r1 + r2))),  # two ADUs in a segment
              eth(ipv4(s, c, 6, tcp_seg(502, 50000, 1, 100 + len(r1 + r2), 0x18, r3))),  # an exception
              eth(ipv4(s, c, 6, tcp_seg(502, 50000, 1, 100 + len(r1 + r2), 0x18, r3))),  # retransmitted
              # a second connection whose ADU is split over two segments: tshark reassembles it
              eth(ipv4(c, s, 6, tcp_seg(50001, 502, 7, 1, 0x18, r1[:5]))),
              eth(ipv4(c, s, 6, tcp_seg(50001, 502, 12, 1, 0x18, r1[5:])))]
    t, s_ = assert_same(write(tmp_path / "modbus.pcap", frames))
    mb = t.filter(pa.compute.equal(t["event.dataset"], "pcap.modbus"))
    theirs = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "modbus.pcap"), "-Y", "modbus", "-T", "fields",
                             "-e", "modbus.func_code"], capture_output=True, text=True, check=True).stdout
    assert mb.num_rows == sum(len(x.split(",")) for x in theirs.split()) >= 3 and s_.decoder == "taishi"
    assert 0 < s_.tshark_packets <= 2  # only the split connection needed tshark


def test_fragments_truncation_and_garbage_fall_back_to_tshark(tmp_path: Path, shared_data: Path) -> None:
    big = dns_query(9, "a" * 60 + ".example.org") + bytes(100)
    udp = udp_dgram(5353, 53, big)
    frames = [eth(ipv4("10.0.0.1", "10.0.0.53", 17, udp[:64], ident=5, frag=0x2000)),
              eth(ipv4("10.0.0.1", "10.0.0.53", 6, tcp_seg(1, 2, 3, 4, 0x02)[:16], ident=6, frag=0x2000)),  # never completed
              eth(ipv4("10.0.0.1", "10.0.0.53", 17, udp[64:], ident=5, frag=8))]
    t, s = assert_same(write(tmp_path / "frag.pcap", frames))
    assert s.decoder == "taishi"  # reassembled here as tshark does: the DNS message on the completing frame
    dns = t.filter(pa.compute.equal(t["event.dataset"], "pcap.dns"))
    theirs = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "frag.pcap"), "-Y", "dns", "-T", "fields", "-e",
                             "frame.number"], capture_output=True, text=True, check=True).stdout.split()
    assert dns["log.offset"].to_pylist() == [int(x) for x in theirs] == [3]
    overlap = frames[:1] + [eth(ipv4("10.0.0.1", "10.0.0.53", 17, udp[56:], ident=5, frag=7))]
    _, s = assert_same(write(tmp_path / "overlap.pcap", overlap))
    assert s.decoder == "tshark" and "overlapping" in s.fallback
    src = (shared_data / "pcap/scan/evilfingers_nmap/TCP_SYN_SCAN.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(src[: len(src) // 2 + 7])
    _, s = assert_same(cut)
    assert s.decoder == "tshark" and s.fallback == "capture cut short"
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all\n" * 10)
    _, s = assert_same(junk)
    assert s.decoder == "tshark" and "not a pcap" in s.fallback


def test_decoder_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path / "x.pcap", _port_reuse_frames())
    monkeypatch.setenv("TAISHI_PCAP_DECODER", "tshark")
    r = read_pcap(p)
    r.read_all()
    assert r.summary.decoder == "tshark" and r.summary.fallback == ""
    monkeypatch.delenv("TAISHI_PCAP_DECODER")
    r = read_pcap(p)
    r.read_all()
    assert r.summary.decoder == "taishi"
    with pytest.raises(ValueError):
        read_pcap(p, decoder="dpkt")
