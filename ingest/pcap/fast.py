"""Taishi's own capture decoder: pcap / pcapng records and link/IP/TCP/UDP headers, vectorised.

The fast path of :mod:`ingest.pcap` (see its module doc for which path is used when):

1. :func:`scan` reads the file and walks the record headers (one small loop step per record,
   the only per-packet Python), giving per-packet numpy arrays: offset of the packet bytes,
   captured and wire length, time in ns, link type;
2. :func:`decode` extracts the header fields of every packet at once with numpy gathers over
   the file buffer: Ethernet (802.1Q / 802.1ad tags), Linux cooked (v1 / v2), raw IP, BSD
   loopback; IPv4 and IPv6 (extension headers walked); TCP / UDP ports, TCP flags, sequence
   and acknowledgement numbers and payload length;
3. :func:`tcp_streams` numbers TCP connections the way Wireshark 4.0 numbers ``tcp.stream``: a
   new stream per address/port pair, and another one when a SYN without ACK arrives whose
   sequence number differs from the base sequence number of its direction (port reuse);
4. :func:`app_packets` picks the packets that can carry the application metadata Taishi
   extracts: whole TCP streams with payload on the ports tshark's DNS / HTTP / TLS / SSH /
   Modbus / DNP3 / ENIP dissectors are registered on, or whose payload starts like HTTP, TLS
   (TLCP too) or SSH (tshark's enabled TCP heuristics); UDP datagrams on the DNS / mDNS /
   LLMNR / SSDP / Modbus / DNP3 / ENIP ports, UDP payloads that pass a loose DNS-header test
   (tshark's UDP DNS heuristic) or look like QUIC long-header packets (tshark decrypts QUIC
   Initials and dissects the TLS hellos in them); ICMP errors (tshark dissects the quoted
   datagram). :func:`write_pcap` writes them, unchanged, to a temporary capture for tshark.

IPv4 fragments are reassembled as tshark does in the simple cases (the frame completing a
datagram carries its transport header, the others are port-less). Anything this decoder does
not model exactly (a link type or encapsulation other than those above, overlapping or
duplicated IPv4 fragments, IPv6 fragments, tunnels under IPv6, truncated or bogus headers, a
capture that is cut short or not a capture) makes :func:`scan` / :func:`decode` report a
*reason*; the caller then reads that file with tshark alone, so results never depend on a
guess. Modbus/TCP (:func:`modbus_native`) and TLS hellos (:func:`tls_native`) are decoded here
for the streams that are clean; the others go to tshark.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD = 64  # zero bytes after a file too small to map (gathers clamp their positions to the buffer)
MAX_CAPLEN = 262144  # wiretap's limit for a pcap record

# link types (LINKTYPE_*) decoded here
LT_NULL, LT_ETHERNET, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2 = 0, 1, 101, 108, 113, 228, 229, 276
LINKTYPES = frozenset({LT_NULL, LT_ETHERNET, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2})

# Ports tshark 4.0 registers the mapped dissectors on (``tshark -G decodes``): dns, http, tls,
# ssh, mbtcp, dnp3, enip; UDP: dns, mdns, llmnr, ssdp (http), mbudp, dnp3, enip, cip I/O.
TCP_APP_PORTS = frozenset({
    53, 5353,                                                                # dns
    80, 631, 1900, 2710, 2869, 3128, 3132, 3689, 5985, 8080, 8088, 11371,    # http
    22, 29418,                                                               # ssh
    324, 443, 465, 636, 802, 853, 993, 995, 1300, 2221, 2443, 3249, 3250, 3251, 3252, 3496,
    5061, 5671, 5684, 5868, 8883, 11207, 19999, 27017,                       # tls
    502, 20000, 44818,                                                       # mbtcp, dnp3, enip
})
UDP_APP_PORTS = frozenset({53, 5353, 5355, 1900, 502, 20000, 44818, 2222})
# IP protocols and UDP ports of tunnels: tshark dissects what is inside (inner IP headers,
# inner application data), which this decoder does not follow -> tshark alone.
TUNNEL_PROTOS = frozenset({4, 41, 47, 97, 115, 132, 137})
IPV6_EXT_WALK = (0, 43, 60, 51)


@dataclass
class Records:
    """Per-packet record fields of a capture, and the file buffer they point into."""

    buf: np.ndarray
    off: np.ndarray  # offset of the packet bytes in buf
    caplen: np.ndarray
    wirelen: np.ndarray
    ts_ns: np.ndarray
    linktype: np.ndarray
    problem: str | None = None  # why this capture needs tshark alone (None: it does not)

    @property
    def n(self) -> int:
        return len(self.off)


def _read(path: Path) -> tuple[object, int]:
    """The file mapped read-only (the page cache holds it, not the heap), and its size. Gathers
    clamp their positions to the buffer, so nothing reads past its end."""
    import mmap

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 64:  # too small to map usefully (and mmap refuses empty files)
            return bytes(f.read()) + bytes(PAD), size
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size


def _empty(buf: np.ndarray, problem: str) -> Records:
    z = np.zeros(0, np.int64)
    return Records(buf, z, z, z, z, z, problem)


def scan(path: str | Path) -> Records:
    """The record headers of a pcap or pcapng capture (``problem`` set when it cannot be walked
    cleanly: not a capture, cut short, a block or link type this decoder does not handle)."""
    raw, size = _read(Path(path))
    buf = np.frombuffer(raw, np.uint8)
    head = bytes(raw[:4])
    if size < 24 and head != b"\x0a\x0d\x0d\x0a":
        return _empty(buf, "not a pcap/pcapng capture")
    if head in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        return _scan_pcap(raw, buf, size, "<", head == b"\x4d\x3c\xb2\xa1")
    if head in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        return _scan_pcap(raw, buf, size, ">", head == b"\xa1\xb2\x3c\x4d")
    if head == b"\x0a\x0d\x0d\x0a":
        return _scan_pcapng(raw, buf, size)
    return _empty(buf, "not a pcap/pcapng capture")


def _scan_pcap(raw: bytearray, buf: np.ndarray, size: int, bo: str, nano: bool) -> Records:
    linktype = struct.unpack_from(bo + "I", raw, 20)[0] & 0x0FFFFFFF
    incl_at = struct.Struct(bo + "I").unpack_from
    offs: list[int] = []
    append = offs.append
    off = 24
    while off + 16 <= size:
        incl = incl_at(raw, off + 8)[0]
        if incl > MAX_CAPLEN:
            return _empty(buf, f"record with {incl} captured bytes")
        append(off)
        off += 16 + incl
    if off != size:
        return _empty(buf, "capture cut short")
    o = np.asarray(offs, np.int64)
    if not len(o):
        return Records(buf, o, o, o, o, o)
    h = buf[o[:, None] + np.arange(16)].view(np.dtype(bo + "u4")).reshape(-1, 4).astype(np.int64)
    sub = h[:, 1] if nano else h[:, 1] * 1000
    ts = h[:, 0] * 1_000_000_000 + sub
    if linktype not in LINKTYPES:
        return _empty(buf, f"link type {linktype}")
    return Records(buf, o + 16, h[:, 2], h[:, 3], ts, np.full(len(o), linktype, np.int64))


def _scan_pcapng(raw: bytearray, buf: np.ndarray, size: int) -> Records:
    offs: list[int] = []
    caps: list[int] = []
    wires: list[int] = []
    tss: list[int] = []
    ifs: list[int] = []
    iface_lt: list[int] = []  # per interface of the whole file (sections renumber: we index globally)
    iface_res: list[tuple[int, int]] = []  # (multiplier, divisor) to ns
    iface_snap: list[int] = []
    sect_base = 0  # first global interface index of the current section
    bo = "<"
    off = 0
    while off + 12 <= size:
        btype = struct.unpack_from(bo + "I", raw, off)[0]
        if btype == 0x0A0D0D0A:
            magic = bytes(raw[off + 8:off + 12])
            bo = "<" if magic == b"\x4d\x3c\x2b\x1a" else (">" if magic == b"\x1a\x2b\x3c\x4d" else "")
            if not bo:
                return _empty(buf, "pcapng section header with a bad byte-order magic")
            sect_base = len(iface_lt)
        blen = struct.unpack_from(bo + "I", raw, off + 4)[0]
        if blen < 12 or blen % 4 or off + blen > size:
            return _empty(buf, "capture cut short" if off + blen > size and blen >= 12 else f"pcapng block of length {blen}")
        if btype == 6:  # enhanced packet block
            iface, hi, lo, cap, wire = struct.unpack_from(bo + "IIIII", raw, off + 8)
            g = sect_base + iface
            if g >= len(iface_lt) or cap > blen - 32:
                return _empty(buf, "pcapng packet block without its interface or overrunning its block")
            mul, div = iface_res[g]
            t = (hi << 32) | lo
            offs.append(off + 28)
            caps.append(cap)
            wires.append(wire)
            tss.append(t * mul // div)
            ifs.append(g)
        elif btype == 3:  # simple packet block: interface 0 of the section, no time
            if sect_base >= len(iface_lt):
                return _empty(buf, "pcapng simple packet block without an interface")
            wire = struct.unpack_from(bo + "I", raw, off + 8)[0]
            snap = iface_snap[sect_base] or MAX_CAPLEN
            offs.append(off + 12)
            caps.append(min(wire, snap, blen - 16))
            wires.append(wire)
            tss.append(0)
            ifs.append(sect_base)
        elif btype == 1:  # interface description
            lt, _, snap = struct.unpack_from(bo + "HHI", raw, off + 8)
            mul, div = 1000, 1  # default resolution: microseconds
            p = off + 16
            end = off + blen - 4
            while p + 4 <= end:
                code, ln = struct.unpack_from(bo + "HH", raw, p)
                if code == 0:
                    break
                if code == 9 and ln >= 1:
                    r = raw[p + 4]
                    if r & 0x80:
                        return _empty(buf, "pcapng interface with a power-of-two time resolution")
                    mul, div = (10 ** (9 - r), 1) if r <= 9 else (1, 10 ** (r - 9))
                elif code == 14:
                    return _empty(buf, "pcapng interface with a time offset")
                p += 4 + ((ln + 3) & ~3)
            iface_lt.append(lt)
            iface_res.append((mul, div))
            iface_snap.append(snap)
        elif btype == 2:
            return _empty(buf, "pcapng obsolete packet block")
        off += blen
    if off != size:
        return _empty(buf, "capture cut short")
    o = np.asarray(offs, np.int64)
    if any(lt not in LINKTYPES for lt in {iface_lt[i] for i in set(ifs)}):
        return _empty(buf, "link type " + ",".join(str(iface_lt[i]) for i in sorted(set(ifs))))
    lts = np.asarray(iface_lt, np.int64)[np.asarray(ifs, np.int64)] if len(o) else o
    return Records(buf, o, np.asarray(caps, np.int64), np.asarray(wires, np.int64), np.asarray(tss, np.int64), lts)


# --------------------------------------------------------------------------- headers


@dataclass
class Packets:
    """Header fields of every packet (numpy; -1 / False where absent)."""

    n: int
    frame: np.ndarray
    ts_ns: np.ndarray
    wirelen: np.ndarray
    ip: np.ndarray  # 4, 6 or 0
    l3: np.ndarray
    proto: np.ndarray  # transport as Taishi reports it (-1: not IP)
    src4: np.ndarray
    dst4: np.ndarray
    src6: np.ndarray | None  # (n, 16) uint8 rows for IPv6 packets, else None
    dst6: np.ndarray | None
    eth: np.ndarray  # MACs present
    mac_off: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    l4: np.ndarray
    payload_len: np.ndarray
    payload_off: np.ndarray
    problem: str | None = None
    extra: dict = field(default_factory=dict)


def _u8(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bytes at ``pos``; positions outside the buffer are clamped into it (their values are
    only ever used where a mask says the position is valid)."""
    return buf[np.clip(pos, 0, len(buf) - 1)].astype(np.int64)


def _be16(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (_u8(buf, pos) << 8) | _u8(buf, pos + 1)


def _be32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (_be16(buf, pos) << 16) | _be16(buf, pos + 2)


def _defrag(isfrag, src4, dst4, ident, frag, proto, tot4, ihl, l3, end) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """IPv4 reassembly as tshark does it for the simple cases: per (source, destination, id,
    protocol) the fragments in frame order; the frame that makes the datagram complete (last
    fragment seen, no hole from offset 0) gets the first fragment's index in ``first_of`` and
    the reassembled IP payload length in ``total_of`` (0 elsewhere). Overlaps, duplicates, a
    fragment after completion or a fragment not fully captured give a reason (the capture is
    then read by tshark alone). Returns ``(first_of, group, total_of, reason)``."""
    n = len(isfrag)
    first_of = np.full(n, -1, np.int64)
    group = np.full(n, -1, np.int64)
    total_of = np.zeros(n, np.int64)
    idx = np.flatnonzero(isfrag)
    if (l3[idx] + tot4[idx] > end[idx]).any():
        return first_of, group, total_of, "IPv4 fragments not fully captured"
    k = np.stack([src4[idx], dst4[idx], ident[idx], proto[idx]], axis=1)
    _, gid = np.unique(k, axis=0, return_inverse=True)
    gid = gid.reshape(-1)
    group[idx] = gid
    order = np.lexsort((idx, gid))
    cur, pieces, total, done, first = -1, [], None, False, -1
    for j in order.tolist():
        i = int(idx[j])
        if gid[j] != cur:
            cur, pieces, total, done, first = gid[j], [], None, False, -1
        if done:
            return first_of, group, total_of, "IPv4 fragment after its datagram was complete"
        off = int(frag[i] & 0x1FFF) * 8
        ln = int(tot4[i] - ihl[i])
        if off == 0:
            first = i
        if not frag[i] & 0x2000:
            if total is not None:
                return first_of, group, total_of, "IPv4 datagram with two last fragments"
            total = off + ln
        pieces.append((off, ln))
        pieces.sort()
        pos = 0
        for a, b in pieces:
            if a < pos:
                return first_of, group, total_of, "overlapping IPv4 fragments"
            if a > pos:
                break
            pos = a + b
        if total is not None and pos == total and first >= 0:
            first_of[i] = first
            total_of[i] = sum(b for _, b in pieces)  # every fragment of the group (a later one: reason above)
            done = True
    return first_of, group, total_of, None


def decode(rec: Records) -> Packets:
    """Link, network and transport headers of every packet of ``rec`` (vectorised)."""
    buf, n = rec.buf, rec.n
    start, cap, lt = rec.off, rec.caplen, rec.linktype
    end = start + cap  # first byte past the captured data
    # positions outside the buffer are clamped into it by _u8; masks say what is valid
    problems: list[str] = []
    l3 = np.full(n, -1, np.int64)
    et = np.zeros(n, np.int64)
    eth = lt == LT_ETHERNET
    if eth.any():
        short = eth & (cap < 14)
        if short.any():
            problems.append("Ethernet frame shorter than its header")
        e = _be16(buf, start + 12)
        pos = start + 14
        for _ in range(2):  # 802.1Q / 802.1ad tags
            tag = eth & np.isin(e, (0x8100, 0x88A8, 0x9100)) & (pos + 4 <= end)
            e = np.where(tag, _be16(buf, pos + 2), e)
            pos = np.where(tag, pos + 4, pos)
        et = np.where(eth, e, et)
        l3 = np.where(eth, pos, l3)
        odd = eth & np.isin(e, (0x8100, 0x88A8, 0x9100, 0x8847, 0x8848, 0x8863, 0x8864, 0x88E7, 0x6558, 0x894F))
        # 802.3 + SNAP with an EtherType (OUI 0) carries what an Ethernet II frame would
        llc = (eth & (e <= 1500) & (_u8(buf, pos) == 0xAA) & (_u8(buf, pos + 1) == 0xAA)
               & (_u8(buf, pos + 3) == 0) & (_u8(buf, pos + 4) == 0) & (_u8(buf, pos + 5) == 0))
        if (odd | llc).any():
            problems.append("Ethernet encapsulation not decoded here (MPLS, PPPoE, 3+ tags, SNAP ...)")
    sll = lt == LT_SLL
    if sll.any():
        if (sll & (cap < 16)).any():
            problems.append("Linux cooked header cut short")
        et = np.where(sll, _be16(buf, start + 14), et)
        l3 = np.where(sll, start + 16, l3)
    sll2 = lt == LT_SLL2
    if sll2.any():
        if (sll2 & (cap < 20)).any():
            problems.append("Linux cooked v2 header cut short")
        et = np.where(sll2, _be16(buf, start), et)
        l3 = np.where(sll2, start + 20, l3)
    raw = np.isin(lt, (LT_RAW, LT_IPV4, LT_IPV6))
    if raw.any():
        v = _u8(buf, start) >> 4
        et = np.where(raw, np.where(v == 4, 0x0800, np.where(v == 6, 0x86DD, 0)), et)
        l3 = np.where(raw, start, l3)
        if (raw & ~np.isin(v, (4, 6))).any():
            problems.append("raw IP packet that is neither IPv4 nor IPv6")
    null = np.isin(lt, (LT_NULL, LT_LOOP))
    if null.any():
        le = (_u8(buf, start) | (_u8(buf, start + 1) << 8) | (_u8(buf, start + 2) << 16)
              | (_u8(buf, start + 3) << 24))
        be = _be32(buf, start)
        fam = np.where(lt == LT_LOOP, be, np.where(le > 0xFFFF, be, le))
        et = np.where(null, np.where(fam == 2, 0x0800, np.where(np.isin(fam, (24, 28, 30)), 0x86DD, 0)), et)
        l3 = np.where(null, start + 4, l3)
    is4 = (et == 0x0800)
    is6 = (et == 0x86DD)
    # --- IPv4
    b0 = _u8(buf, l3)
    ihl = (b0 & 0x0F) * 4
    tot4 = _be16(buf, l3 + 2)
    bad4 = is4 & ((l3 + 20 > end) | (b0 >> 4 != 4) | (ihl < 20) | (l3 + ihl > end) | (tot4 < ihl))
    if bad4.any():
        problems.append("IPv4 header cut short or bogus")
    frag = _be16(buf, l3 + 6)
    isfrag = is4 & ((frag & 0x3FFF) != 0) & ~bad4
    proto = np.where(is4, _u8(buf, l3 + 9), -1)
    ip_end = np.where(is4, np.minimum(l3 + np.where(tot4 == 0, cap, tot4), end), end)
    l4 = np.where(is4, l3 + ihl, -1)
    src4 = np.where(is4, _be32(buf, l3 + 12), 0)
    dst4 = np.where(is4, _be32(buf, l3 + 16), 0)
    # --- IPv6
    src6 = dst6 = None
    if is6.any():
        bad6 = is6 & ((l3 + 40 > end) | (_u8(buf, l3) >> 4 != 6))
        if bad6.any():
            problems.append("IPv6 header cut short or bogus")
        plen = _be16(buf, l3 + 4)
        first = _u8(buf, l3 + 6)
        nxt = first.copy()
        pos = l3 + 40
        for _ in range(4):
            walk = is6 & np.isin(nxt, IPV6_EXT_WALK) & (pos + 8 <= end)
            if not walk.any():
                break
            hl = _u8(buf, pos + 1)
            step = np.where(nxt == 51, (hl + 2) * 4, (hl + 1) * 8)
            nxt = np.where(walk, _u8(buf, pos), nxt)
            pos = np.where(walk, pos + step, pos)
        if (is6 & (np.isin(nxt, IPV6_EXT_WALK) | (nxt == 44))).any():
            problems.append("IPv6 fragments or extension headers cut short")
        final = np.where(np.isin(nxt, (6, 17, 58)), nxt, first)
        proto = np.where(is6, final, proto)
        ip_end = np.where(is6, np.minimum(l3 + 40 + np.where(plen == 0, cap, plen), end), ip_end)
        l4 = np.where(is6, np.where(np.isin(nxt, (6, 17, 58)), pos, -1), l4)
        idx6 = np.flatnonzero(is6)
        src6 = np.zeros((n, 16), np.uint8)
        dst6 = np.zeros((n, 16), np.uint8)
        src6[idx6] = buf[np.clip(l3[idx6] + 8, 0, len(buf) - 16)[:, None] + np.arange(16)]
        dst6[idx6] = buf[np.clip(l3[idx6] + 24, 0, len(buf) - 16)[:, None] + np.arange(16)]
        # outer IPv6 carrying IPv4 (tunnels) would put the inner IPv4 address in Taishi's columns
    isip = is4 | is6
    tunnel = isip & np.isin(proto, tuple(TUNNEL_PROTOS))
    tcp = isip & (proto == 6)
    udp = isip & (proto == 17)
    # IPv4 fragments: tshark reassembles them; the frame completing a datagram carries its
    # transport header (read from the first fragment), the others none (port-less in flows)
    whole = np.zeros(n, bool)  # frames completing a fragmented datagram
    fgroup = np.full(n, -1, np.int64)
    lend = end  # where the transport header must end
    if isfrag.any():
        first_of, fgroup, total_of, why = _defrag(isfrag, src4, dst4, _be16(buf, l3 + 4), frag, proto, tot4, ihl,
                                                  l3, end)
        if why:
            problems.append(why)
        whole = first_of >= 0
        part = isfrag & ~whole  # fragments not completing a datagram: no transport header
        f0 = np.maximum(first_of, 0)
        l4 = np.where(part, -1, np.where(whole, l4[f0], l4))
        ip_end = np.where(whole, l4 + total_of, ip_end)
        tcp &= ~part
        udp &= ~part
        lend = np.where(whole, np.minimum(end[f0], l3[f0] + tot4[f0]), end)  # within the first fragment
    if (tcp & (l4 + 20 > lend)).any() or (udp & (l4 + 8 > lend)).any():
        problems.append("TCP/UDP header cut short")
    sport = np.where(tcp | udp, _be16(buf, l4), -1)
    dport = np.where(tcp | udp, _be16(buf, l4 + 2), -1)
    thl = (_u8(buf, l4 + 12) >> 4) * 4
    if (tcp & ((thl < 20) | (l4 + thl > ip_end) | (l4 + thl > lend))).any():
        problems.append("bogus TCP header length")
    flags = np.where(tcp, ((_u8(buf, l4 + 12) & 0x0F) << 8) | _u8(buf, l4 + 13), -1)
    seq = np.where(tcp, _be32(buf, l4 + 4), 0)
    ack = np.where(tcp, _be32(buf, l4 + 8), 0)
    poff = np.where(tcp, l4 + thl, np.where(udp, l4 + 8, -1))
    plen_ = np.where(tcp | udp, np.maximum(ip_end - poff, 0), 0)
    # Tunnels: tshark dissects the inner packet too. Taishi's columns keep the outer headers (as
    # the tshark path's first occurrences do), and the tunnel packets go to tshark for their
    # application data. Under an outer IPv6 header an inner IPv4 address would win in the tshark
    # path's columns (ip.src before ipv6.src): those captures are read by tshark alone.
    on = lambda port: udp & ((sport == port) | (dport == port)) & (plen_ > 0)  # noqa: E731
    pb = lambda k: _u8(buf, poff + k)  # noqa: E731
    tunnel |= on(4789) | on(8472) | on(1701)  # VXLAN, L2TP: tshark decodes whatever follows
    tunnel |= on(6081) & np.isin((pb(2) << 8) | pb(3), (0x6558, 0x0800, 0x86DD, 0x8100, 0x88A8))  # Geneve
    tunnel |= on(2152) & ((pb(0) & 0xF0) == 0x30) & (pb(1) == 0xFF)  # GTP-U v1 T-PDU
    tunnel |= on(3544) & (((pb(0) & 0xF0) == 0x60) | ((pb(0) == 0) & (pb(1) <= 1)))  # Teredo
    if (tunnel & is6).any():
        problems.append("tunnels under IPv6")
    return Packets(
        n=n, frame=np.arange(1, n + 1, dtype=np.int64), ts_ns=rec.ts_ns, wirelen=rec.wirelen,
        ip=np.where(is4, 4, np.where(is6, 6, 0)), l3=l3, proto=np.where(isip, proto, -1),
        src4=src4, dst4=dst4, src6=src6, dst6=dst6, eth=eth, mac_off=start,
        sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, l4=l4, payload_len=plen_, payload_off=poff,
        problem="; ".join(problems) or None,
        extra={"tunnel": tunnel, "end": end, "frag": isfrag, "whole": whole, "fgroup": fgroup},
    )


# --------------------------------------------------------------------------- TCP streams


def _tuple_ids(p: Packets, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id of the canonical address/port pair, True where the sender is the pair's low end) of
    the packets in ``mask`` (ids dense from 0, in no particular order)."""
    idx = np.flatnonzero(mask)
    m = len(idx)
    if p.src6 is None:  # IPv4 only: an endpoint is 48 bits (address, port)
        a = (p.src4[idx] << 16) | p.sport[idx]
        b = (p.dst4[idx] << 16) | p.dport[idx]
        low = a <= b
        lo, hi = np.where(low, a, b), np.where(low, b, a)
        order = np.lexsort((hi, lo))
        brk = np.ones(m, bool)
        brk[1:] = (lo[order][1:] != lo[order][:-1]) | (hi[order][1:] != hi[order][:-1])
        ids = np.empty(m, np.int64)
        ids[order] = np.cumsum(brk) - 1
        return ids, low
    v6 = p.ip[idx] == 6
    s4 = p.src4[idx].astype(">u4").view(np.uint8).reshape(-1, 4)
    d4 = p.dst4[idx].astype(">u4").view(np.uint8).reshape(-1, 4)
    z = np.zeros((m, 12), np.uint8)
    s = np.where(v6[:, None], p.src6[idx], np.concatenate([z, s4], axis=1))
    d = np.where(v6[:, None], p.dst6[idx], np.concatenate([z, d4], axis=1))
    sp = p.sport[idx].astype(">u2").view(np.uint8).reshape(-1, 2)
    dp = p.dport[idx].astype(">u2").view(np.uint8).reshape(-1, 2)
    ver = v6.astype(np.uint8)[:, None]
    ea = np.ascontiguousarray(np.concatenate([ver, s, sp], axis=1))
    eb = np.ascontiguousarray(np.concatenate([ver, d, dp], axis=1))
    neq = ea != eb
    at = np.argmax(neq, axis=1)  # first differing byte (0 when equal)
    r = np.arange(m)
    low = ~neq.any(axis=1) | (ea[r, at] < eb[r, at])
    key = np.ascontiguousarray(np.where(low[:, None], np.concatenate([ea, eb], axis=1), np.concatenate([eb, ea], axis=1)))
    _, inv = np.unique(key.view(np.dtype((np.void, 38))).ravel(), return_inverse=True)
    return inv.reshape(-1).astype(np.int64), low


def tcp_streams(p: Packets) -> np.ndarray:
    """Wireshark's ``tcp.stream`` for every TCP packet (-1 elsewhere), numbered in order of each
    stream's first packet."""
    out = np.full(p.n, -1, np.int64)
    tcp = (p.proto == 6) & (p.sport >= 0)  # not a fragment without its transport header
    if not tcp.any():
        return out
    idx = np.flatnonzero(tcp)
    key, low = _tuple_ids(p, tcp)
    fl = p.flags[idx]
    pure_syn = (fl & 0x12) == 0x02
    order = np.argsort(key, kind="stable")  # frame order within each key
    k = key[order]
    first = np.ones(len(k), bool)
    first[1:] = k[1:] != k[:-1]
    # A key needs the sequential walk when a SYN without ACK that is not its first packet may
    # start a new stream. It cannot when the key's first packet is a SYN without ACK and every
    # later one repeats it (same sender, same sequence number: a retransmission).
    later_syn = pure_syn[order] & ~first
    if later_syn.any():
        head = np.flatnonzero(first)[np.cumsum(first) - 1]  # row of each row's key's first packet
        o_h = order[head]
        repeat = pure_syn[o_h] & (low[order] == low[o_h]) & (p.seq[idx][order] == p.seq[idx][o_h])
        later_syn &= ~repeat
    sub = np.zeros(len(k), np.int64)  # stream number within the key
    if later_syn.any():
        walk_keys = np.unique(k[later_syn])
        starts = np.flatnonzero(first)
        bounds = dict(zip(k[starts].tolist(), zip(starts.tolist(), np.append(starts[1:], len(k)).tolist())))
        seq, ack = p.seq[idx], p.ack[idx]
        for kk in walk_keys.tolist():
            a, b = bounds[kk]
            rows = order[a:b]
            base: list[int | None] = [None, None]  # base seq of the low / high end's direction
            cur = 0
            out_sub = []
            for r in rows.tolist():
                d = 0 if low[r] else 1
                f = int(fl[r])
                s = int(seq[r])
                if (f & 0x12) == 0x02 and base[d] is not None and s != base[d]:
                    cur += 1  # port reuse: a new conversation
                    base = [None, None]
                if base[d] is None:
                    base[d] = s if f & 0x02 else (s - 1) & 0xFFFFFFFF
                if base[1 - d] is None and f & 0x10:
                    base[1 - d] = (int(ack[r]) - 1) & 0xFFFFFFFF
                out_sub.append(cur)
            sub[a:b] = out_sub
    # number (key, sub) pairs by their first packet (frame order)
    pair = np.empty(len(k), np.int64)
    pair[order] = k * (1 << 20) + sub
    _, first_pos, inv = np.unique(pair, return_index=True, return_inverse=True)
    rank = np.empty(len(first_pos), np.int64)
    rank[np.argsort(first_pos, kind="stable")] = np.arange(len(first_pos))
    out[idx] = rank[inv.reshape(-1)]
    return out


# --------------------------------------------------------------------------- Arrow columns

_DEC = pa.array([str(i) for i in range(256)], pa.string())
_HEX = pa.array([f"{i:02x}" for i in range(256)], pa.string())


def _ipv4_text(v: np.ndarray) -> pa.Array:
    parts = [_DEC.take(pa.array((v >> s) & 0xFF)) for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*parts, ".")


def _ipv6_text(rows: np.ndarray) -> pa.Array:
    import ipaddress

    v = np.ascontiguousarray(rows).view(np.dtype((np.void, 16))).ravel()
    uniq, inv = np.unique(v, return_inverse=True)
    texts = []
    for u in uniq.tolist():
        a = ipaddress.IPv6Address(bytes(u))
        m = a.ipv4_mapped
        texts.append(f"::ffff:{m}" if m is not None else a.compressed)
    return pa.array(texts, pa.string()).take(pa.array(inv.reshape(-1)))


def _mac_text(buf: np.ndarray, pos: np.ndarray) -> pa.Array:
    parts = [_HEX.take(pa.array(_u8(buf, pos + i))) for i in range(6)]
    return pc.binary_join_element_wise(*parts, ":")


def _opt(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64(), mask=~valid)


def core_columns(p: Packets, buf: np.ndarray, stream: np.ndarray) -> dict[str, pa.Array]:
    """The per-packet core columns :func:`ingest.pcap.flows.packet_core` makes from tshark's
    fields (same names, types and values)."""
    n = p.n
    is4, is6 = p.ip == 4, p.ip == 6
    null_s = pa.nulls(n, pa.string())
    src = dst = null_s
    if is4.any():
        m = pa.array(~is4)
        src = pc.if_else(m, null_s, _ipv4_text(p.src4))
        dst = pc.if_else(m, null_s, _ipv4_text(p.dst4))
    if is6.any():
        i6 = np.flatnonzero(is6)
        sv, dv = _ipv6_text(p.src6[i6]), _ipv6_text(p.dst6[i6])
        pos = pa.array(np.where(is6, np.cumsum(is6) - 1, 0))
        src = pc.if_else(pa.array(is6), sv.take(pos), src)
        dst = pc.if_else(pa.array(is6), dv.take(pos), dst)
    tcpudp = ((p.proto == 6) | (p.proto == 17)) & (p.sport >= 0)
    tcp = (p.proto == 6) & (p.sport >= 0)  # not a fragment without its transport header
    if p.eth.any():
        noeth = pa.array(~p.eth)
        dmac = pc.if_else(noeth, null_s, _mac_text(buf, p.mac_off))
        smac = pc.if_else(noeth, null_s, _mac_text(buf, p.mac_off + 6))
    else:
        smac = dmac = null_s
    return {
        "frame": pa.array(p.frame, pa.int64()),
        "ts_ns": pa.array(p.ts_ns, pa.int64()),
        "len": pa.array(p.wirelen, pa.int64()),
        "src": src,
        "dst": dst,
        "proto": pa.array(p.proto, pa.int64()),
        "sport": _opt(p.sport, tcpudp),
        "dport": _opt(p.dport, tcpudp),
        "flags": _opt(p.flags, tcp),
        "stream": _opt(stream, tcp),
        "smac": smac,
        "dmac": dmac,
    }


# --------------------------------------------------------------------------- app packets

_HTTP_FIRST = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _payload_byte(buf: np.ndarray, p: Packets, i: int) -> np.ndarray:
    return _u8(buf, np.maximum(p.payload_off, 0) + i)


def app_packets(p: Packets, buf: np.ndarray, stream: np.ndarray, decode_as_ports: frozenset[int] = frozenset()) -> np.ndarray:
    """Mask of the packets tshark must dissect for the application events (see the module doc)."""
    tcp, udp = (p.proto == 6) & (p.sport >= 0), (p.proto == 17) & (p.sport >= 0)
    has = p.payload_len > 0
    b = [_payload_byte(buf, p, i) for i in range(4)]
    upper = (b[0] >= 0x41) & (b[0] <= 0x5A) & (b[1] >= 0x41) & (b[1] <= 0x5A)  # HTTP method / "HTTP/"
    tls = ((b[0] >= 0x14) & (b[0] <= 0x18) & (b[1] == 0x03) & (b[2] <= 0x04)) | ((b[0] == 0x16) & (b[1] == 0x01) & (b[2] == 0x01))
    sslv2 = (b[0] & 0x80 != 0) & (b[2] == 0x01) & ((b[3] == 0x03) | (b[3] == 0x00) | (b[3] == 0x02))
    ssh = (b[0] == 0x53) & (b[1] == 0x53) & (b[2] == 0x48) & (b[3] == 0x2D)
    tports = np.asarray(sorted(TCP_APP_PORTS | decode_as_ports), np.int64)
    uports = np.asarray(sorted(UDP_APP_PORTS | decode_as_ports), np.int64)
    on_port_t = tcp & (np.isin(p.sport, tports) | np.isin(p.dport, tports))
    cut = has & (p.payload_off + np.minimum(p.payload_len, 5) > p.extra["end"])  # too little captured to tell
    hint = tcp & has & (on_port_t | upper | tls | sslv2 | ssh | cut)
    sel = np.zeros(p.n, bool)
    if hint.any():
        sel |= tcp & np.isin(stream, np.unique(stream[hint]))
    # UDP: by port, DNS-looking payloads (tshark's UDP DNS heuristic), QUIC long headers
    on_port_u = udp & (np.isin(p.sport, uports) | np.isin(p.dport, uports))
    dns_like = udp & (p.payload_len > 12) & ((_payload_byte(buf, p, 2) & 0x78) == 0) & (
        ((_payload_byte(buf, p, 4) << 8) | _payload_byte(buf, p, 5)) <= 1)
    ver = (b[1] << 24) | (b[2] << 16) | (b[3] << 8) | _payload_byte(buf, p, 4)
    quic = udp & (p.payload_len >= 7) & ((b[0] & 0xC0) == 0xC0) & (
        (ver == 1) | (ver == 0x6B3343CF) | ((ver >> 8) == 0xFF0000) | ((ver >> 4) == 0xFACEB00))
    usel = udp & (on_port_u | dns_like | quic | cut | p.extra.get("tunnel", False))
    if usel.any():  # whole UDP conversations: a dissector may keep state across datagrams
        uid, _ = _tuple_ids(p, udp)
        ufull = np.full(p.n, -1, np.int64)
        ufull[udp] = uid
        sel |= udp & np.isin(ufull, np.unique(ufull[usel]))
    sel |= p.extra.get("tunnel", np.zeros(p.n, bool)) & ~udp  # IP-in-IP, GRE, SCTP ...: all of them
    # ICMP errors: tshark dissects the quoted datagram (a quoted DNS message gives DNS fields)
    part = p.extra["frag"] & ~p.extra["whole"]  # fragments not completing a datagram: no headers
    whole_groups = np.unique(p.extra["fgroup"][p.extra["whole"]])
    if len(whole_groups):  # every fragment of a reassembled datagram: tshark reassembles it again
        sel |= p.extra["frag"] & np.isin(p.extra["fgroup"], whole_groups)
    icmp = (p.proto == 1) & ~part
    icmp6 = p.proto == 58
    if (icmp | icmp6).any():
        t = _u8(buf, p.l4)
        sel |= icmp & np.isin(t, (3, 4, 5, 11, 12))
        sel |= icmp6 & np.isin(t, (1, 2, 3, 4))
    return sel


def write_pcap(path: Path, rec: Records, idx: np.ndarray) -> None:
    """The packets ``idx`` of ``rec``, bytes and times unchanged, as a nanosecond pcap (one link type)."""
    lt = int(rec.linktype[idx[0]]) if len(idx) else LT_ETHERNET
    mv = memoryview(rec.buf)
    hdr = struct.Struct("<IIII")
    ts = rec.ts_ns[idx]
    sec, nsec = ts // 1_000_000_000, ts % 1_000_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, MAX_CAPLEN, lt))
        parts = []
        for i, s, ns in zip(idx.tolist(), sec.tolist(), nsec.tolist()):
            o, c = int(rec.off[i]), int(rec.caplen[i])
            parts.append(hdr.pack(s, ns, c, int(rec.wirelen[i])))
            parts.append(mv[o:o + c])
            if len(parts) >= 8192:
                f.write(b"".join(parts))
                parts = []
        f.write(b"".join(parts))


# --------------------------------------------------------------------------- Modbus/TCP


class _NotClean(Exception):
    """Not decoded here: tshark reads this stream."""


MODBUS_PORT = 502


@dataclass
class ModbusFrames:
    """Modbus/TCP decoded here: the frames with ADUs and their tshark-shaped field texts."""

    clean: np.ndarray  # packets of the port-502 streams decoded here (tshark need not see them)
    frames: np.ndarray  # 0-based packet index of each frame with ADUs
    trans_id: list[str]
    unit_id: list[str]
    func_code: list[str]
    exception_code: list[str | None]


def modbus_native(p: Packets, buf: np.ndarray, stream: np.ndarray, sep: str) -> ModbusFrames:
    """Modbus/TCP ADUs of the port-502 TCP streams whose segments are whole ADUs in order.

    A stream is decoded here only when every payload segment of each direction either follows
    the previous one exactly (sequence number = previous + length) and holds whole, well-formed
    MBAP ADUs (protocol id 0, length 2..254, an exception code after an exception function
    code), or repeats an earlier segment exactly (a retransmission: tshark does not hand it to
    Modbus again, nor is it an event here). Any other stream goes to tshark whole. Field texts
    are what ``tshark -T fields -E occurrence=a`` prints (function code without the exception
    bit, occurrences joined with ``sep``)."""
    n = p.n
    empty = ModbusFrames(np.zeros(n, bool), np.zeros(0, np.int64), [], [], [], [])
    tcp = (p.proto == 6) & (p.sport >= 0)  # not a fragment without its transport header
    s502, d502 = tcp & (p.sport == MODBUS_PORT), tcp & (p.dport == MODBUS_PORT)
    cand = s502 ^ d502
    if not cand.any():
        return empty
    streams = np.unique(stream[cand])
    if (tcp & np.isin(stream, streams) & ~cand).any():  # both or neither port 502 in one stream: odd
        bad_streams = set(np.unique(stream[tcp & np.isin(stream, streams) & ~cand]).tolist())
    else:
        bad_streams = set()
    bad_streams |= set(np.unique(stream[tcp & p.extra["whole"]]).tolist())  # reassembled IP: tshark
    seg = cand & (p.payload_len > 0)
    short = seg & (p.payload_off + p.payload_len > p.extra["end"])  # payload not all captured (snap length)
    if short.any():
        bad_streams |= set(np.unique(stream[short]).tolist())
    idx = np.flatnonzero(seg)
    g = stream[idx] * 2 + s502[idx]
    order = np.lexsort((idx, g))
    idx, g = idx[order], g[order]
    seq, ln = p.seq[idx], p.payload_len[idx]
    same = np.zeros(len(idx), bool)
    same[1:] = g[1:] == g[:-1]
    follows = ~same.copy()
    follows[1:] |= same[1:] & (seq[1:] == ((seq[:-1] + ln[:-1]) & 0xFFFFFFFF))
    retx = np.zeros(len(idx), bool)
    for gg in np.unique(g[~follows]).tolist():  # sequential walk where the simple rule fails
        rows = np.flatnonzero(g == gg)
        expected = None
        seen: set[tuple[int, int]] = set()
        for r in rows.tolist():
            s_, l_ = int(seq[r]), int(ln[r])
            if expected is None or s_ == expected:
                expected = (s_ + l_) & 0xFFFFFFFF
                seen.add((s_, l_))
            elif (s_, l_) in seen:
                retx[r] = True
            else:
                bad_streams.add(gg // 2)
                break
    keep = ~retx
    idx, seq, ln, gk = idx[keep], seq[keep], ln[keep], g[keep]
    po = p.payload_off[idx]
    at = lambda k: _u8(buf, po + k)  # noqa: E731
    tid = (at(0) << 8) | at(1)
    pid = (at(2) << 8) | at(3)
    mlen = (at(4) << 8) | at(5)
    unit, fc, exc = at(6), at(7), at(8)
    ok1 = (pid == 0) & (mlen >= 2) & (mlen <= 254) & ((fc & 0x80 == 0) | (mlen >= 3))
    single = ok1 & (mlen + 6 == ln)
    texts_t = [None] * len(idx)
    texts_u = [None] * len(idx)
    texts_f = [None] * len(idx)
    texts_e: list[str | None] = [None] * len(idx)
    st = stream[idx]
    for i in np.flatnonzero(single).tolist():
        texts_t[i], texts_u[i], texts_f[i] = str(int(tid[i])), str(int(unit[i])), str(int(fc[i]) & 0x7F)
        if fc[i] & 0x80:
            texts_e[i] = str(int(exc[i]))
    # Directions with a segment that is not exactly one ADU: walk them in order, as tshark's TCP
    # desegmentation does: several ADUs in a segment, an ADU completed in a later segment (its
    # event on the frame completing it). A segment tshark's Modbus/TCP test would reject (fewer
    # than 8 bytes, protocol id not 0, length < 2) or a tail too short to hold a header: the
    # stream goes to tshark.
    walk = np.unique(gk[~single]).tolist()  # gk is sorted (lexsort on g, then a filter): rows of a direction are a run
    raw = memoryview(buf)
    for gg in walk:
        if gg // 2 in bad_streams:
            continue
        pending = b""
        for i in range(np.searchsorted(gk, gg, "left"), np.searchsorted(gk, gg, "right")):
            data = bytes(raw[int(po[i]):int(po[i] + ln[i])])
            t_, u_, f_, e_ = [], [], [], []
            try:
                if pending:
                    total = 6 + ((pending[4] << 8) | pending[5])
                    take = total - len(pending)
                    if len(data) < take:
                        pending += data
                        continue
                    adus, data, pending = [pending + data[:take]], data[take:], b""
                else:
                    if len(data) < 8 or (data[2] << 8 | data[3]) != 0 or (data[4] << 8 | data[5]) < 2:
                        raise _NotClean
                    adus = []
                while data:
                    if len(data) < 8:
                        raise _NotClean
                    ml = (data[4] << 8) | data[5]
                    if 6 + ml > len(data):
                        pending, data = data, b""
                        break
                    adus.append(data[:6 + ml])
                    data = data[6 + ml:]
                for adu in adus:
                    pid_, ml, f0 = (adu[2] << 8) | adu[3], (adu[4] << 8) | adu[5], adu[7]
                    if pid_ != 0 or ml < 2 or ml > 254 or (f0 & 0x80 and ml < 3):
                        raise _NotClean
                    t_.append(str((adu[0] << 8) | adu[1]))
                    u_.append(str(adu[6]))
                    f_.append(str(f0 & 0x7F))
                    if f0 & 0x80:
                        e_.append(str(adu[8]))
            except _NotClean:
                bad_streams.add(gg // 2)
                break
            if f_:
                texts_t[i], texts_u[i], texts_f[i] = sep.join(t_), sep.join(u_), sep.join(f_)
                texts_e[i] = sep.join(e_) if e_ else None
    good_streams = np.setdiff1d(streams, np.asarray(sorted(bad_streams), np.int64))
    clean = tcp & np.isin(stream, good_streams)
    use = np.flatnonzero(np.isin(st, good_streams) & np.asarray([f is not None for f in texts_f], bool))
    use = use[np.argsort(idx[use], kind="stable")]
    return ModbusFrames(clean, idx[use], [texts_t[i] for i in use], [texts_u[i] for i in use],
                        [texts_f[i] for i in use], [texts_e[i] for i in use])


# --------------------------------------------------------------------------- TLS hellos

# Ports tshark 4.0 hands to its TLS dissector (``tshark -G decodes``, tcp.port -> tls).
TLS_PORTS = frozenset({324, 443, 465, 636, 802, 853, 993, 995, 1300, 2221, 2443, 3249, 3250, 3251, 3252, 3496,
                       5061, 5671, 5684, 5868, 8883, 11207, 19999, 27017})
TLS_RECORD_VERSIONS = frozenset({0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0101})
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
TLS_TEXT_FIELDS = ("tls.handshake.type", "tls.handshake.version", "tls.handshake.extensions.supported_version",
                   "tls.handshake.extensions_server_name", "tls.handshake.ciphersuite",
                   "tls.handshake.extensions_alpn_str", "tls.handshake.ja3", "tls.handshake.ja3s")


def _grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def _printable(b: bytes) -> str:
    if not b or any(c < 0x20 or c > 0x7E for c in b):
        raise _NotClean  # tshark escapes such bytes in its text: leave it to tshark
    return b.decode("ascii")


def _hello_fields(msg_type: int, body: bytes, sep: str) -> dict[str, str | None]:
    """tshark's field texts for one ClientHello (1) / ServerHello (2) body."""
    import hashlib

    try:
        ver = int.from_bytes(body[0:2], "big")
        if msg_type == 2 and body[2:34] == HRR_RANDOM:
            raise _NotClean  # a HelloRetryRequest: a second ClientHello follows; tshark sorts that out
        o = 34
        o += 1 + body[o]  # session id
        if msg_type == 1:
            n = int.from_bytes(body[o:o + 2], "big")
            suites = [int.from_bytes(body[o + 2 + i:o + 4 + i], "big") for i in range(0, n, 2)]
            if n % 2 or o + 2 + n > len(body):
                raise _NotClean
            o += 2 + n
            o += 1 + body[o]  # compression methods
        else:
            suites = [int.from_bytes(body[o:o + 2], "big")]
            o += 3
        exts: list[tuple[int, bytes]] = []
        if o < len(body):
            total = int.from_bytes(body[o:o + 2], "big")
            o += 2
            end = o + total
            if end != len(body):
                raise _NotClean
            while o < end:
                t, ln = int.from_bytes(body[o:o + 2], "big"), int.from_bytes(body[o + 2:o + 4], "big")
                if o + 4 + ln > end:
                    raise _NotClean
                exts.append((t, body[o + 4:o + 4 + ln]))
                o += 4 + ln
        elif o > len(body):
            raise _NotClean
    except IndexError:
        raise _NotClean from None
    sv: list[str] = []
    sni: list[str] = []
    alpn: list[str] = []
    groups: list[int] = []
    points: list[int] = []
    for t, d in exts:
        if t == 43:
            vals = d[1:1 + d[0]] if msg_type == 1 else d
            sv += [f"0x{int.from_bytes(vals[i:i + 2], 'big'):04x}" for i in range(0, len(vals) - 1, 2)]
        elif t == 0 and msg_type == 1 and d:
            p, end = 2, 2 + int.from_bytes(d[0:2], "big")
            while p + 3 <= min(end, len(d)):
                ln = int.from_bytes(d[p + 1:p + 3], "big")
                if d[p] == 0:
                    sni.append(_printable(d[p + 3:p + 3 + ln]))
                p += 3 + ln
        elif t == 16 and d:
            p, end = 2, 2 + int.from_bytes(d[0:2], "big")
            while p < min(end, len(d)):
                ln = d[p]
                alpn.append(_printable(d[p + 1:p + 1 + ln]))
                p += 1 + ln
        elif t == 10 and msg_type == 1 and d:
            n = int.from_bytes(d[0:2], "big")
            groups = [int.from_bytes(d[2 + i:4 + i], "big") for i in range(0, n - 1, 2)]
        elif t == 11 and msg_type == 1 and d:
            points = list(d[1:1 + d[0]])
    types = [t for t, _ in exts if not _grease(t)]
    if msg_type == 1:
        full = ",".join([str(ver), "-".join(str(c) for c in suites if not _grease(c)), "-".join(map(str, types)),
                         "-".join(str(g) for g in groups if not _grease(g)), "-".join(map(str, points))])
    else:
        full = ",".join([str(ver), str(suites[0]), "-".join(map(str, types))])
    md5 = hashlib.md5(full.encode()).hexdigest()
    return {
        "tls.handshake.type": str(msg_type),
        "tls.handshake.version": f"0x{ver:04x}",
        "tls.handshake.extensions.supported_version": sep.join(sv) or None,
        "tls.handshake.extensions_server_name": sep.join(sni) or None,
        "tls.handshake.ciphersuite": sep.join(f"0x{c:04x}" for c in suites),
        "tls.handshake.extensions_alpn_str": sep.join(alpn) or None,
        "tls.handshake.ja3": md5 if msg_type == 1 else None,
        "tls.handshake.ja3s": md5 if msg_type == 2 else None,
    }


def _direction_hello(data: bytes, bounds: list[tuple[int, int]], want: int, sep: str) -> tuple | str:
    """The hello in one direction's in-order payload ``data`` (``bounds``: end offset of each
    segment and its packet index): (packet index of the frame completing the hello's record,
    field texts); "none" when the direction has no hello before a non-handshake record; "more"
    when the data ends before one. Raises _NotClean for anything tshark should look at."""
    o = 0
    while o + 5 <= len(data):
        ctype, ver, ln = data[o], int.from_bytes(data[o + 1:o + 3], "big"), int.from_bytes(data[o + 3:o + 5], "big")
        if ctype not in (20, 21, 22, 23) or ver not in TLS_RECORD_VERSIONS:
            raise _NotClean
        if ctype != 22:
            return "none"
        if o + 5 + ln > len(data):
            return "more"
        rec = data[o + 5:o + 5 + ln]
        q = 0
        while q < len(rec):
            if q + 4 > len(rec):
                raise _NotClean  # a handshake message split over records
            mt, ml = rec[q], int.from_bytes(rec[q + 1:q + 4], "big")
            if q + 4 + ml > len(rec):
                raise _NotClean
            if mt in (1, 2):
                if mt != want:
                    raise _NotClean
                end = o + 5 + ln
                frame = next(pi for e, pi in bounds if e >= end)
                return frame, _hello_fields(mt, rec[q + 4:q + 4 + ml], sep)
            q += 4 + ml
        o += 5 + ln
    return "more"


@dataclass
class TlsHellos:
    clean: np.ndarray  # packets of the streams whose hellos were read here
    rows: list[tuple[int, dict]]  # (packet index, tshark-shaped field texts)


def tls_native(p: Packets, buf: np.ndarray, stream: np.ndarray, sep: str, skip_ports: frozenset[int] = frozenset()) -> TlsHellos:
    """ClientHello / ServerHello of the TCP streams on tshark's TLS ports, read here when each
    direction's payload is in order from its first byte (exact retransmissions skipped) and its
    records parse cleanly up to the hello; any other stream is left to tshark whole."""
    n = p.n
    tcp = (p.proto == 6) & (p.sport >= 0)  # not a fragment without its transport header
    ports = np.asarray(sorted(TLS_PORTS - skip_ports), np.int64)
    others = np.asarray(sorted((TCP_APP_PORTS - TLS_PORTS) | skip_ports), np.int64)
    cand = tcp & (np.isin(p.sport, ports) | np.isin(p.dport, ports)) & ~(np.isin(p.sport, others) | np.isin(p.dport, others))
    if not cand.any():
        return TlsHellos(np.zeros(n, bool), [])
    streams = np.setdiff1d(np.unique(stream[cand]), stream[tcp & p.extra["whole"]])  # reassembled IP: tshark
    seg = tcp & np.isin(stream, streams) & (p.payload_len > 0)
    if (seg & (p.payload_off + p.payload_len > p.extra["end"])).any():
        cut = np.unique(stream[seg & (p.payload_off + p.payload_len > p.extra["end"])])
        streams = np.setdiff1d(streams, cut)
        seg &= np.isin(stream, streams)
    idx = np.flatnonzero(seg)
    if not len(idx):
        return TlsHellos(np.zeros(n, bool), [])
    # the client of a stream: the sender of its first SYN, else of its first payload
    first_pkt: dict[int, int] = {}
    syn = tcp & np.isin(stream, streams) & ((p.flags & 0x12) == 0x02)
    for i in np.flatnonzero(syn)[::-1].tolist():
        first_pkt[int(stream[i])] = i
    g = stream[idx]
    order = np.lexsort((idx, g))
    idx, g = idx[order], g[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    raw = memoryview(buf)
    rows: list[tuple[int, dict]] = []
    good: list[int] = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        st = int(g[a])
        rows_st = idx[a:b]
        c0 = first_pkt.get(st, int(rows_st[0]))
        csrc = (int(p.sport[c0]), int(p.dport[c0]))
        try:
            found = []
            for want, is_client in ((1, True), (2, False)):
                data = b""
                bounds: list[tuple[int, int]] = []
                expected = None
                seen: set[tuple[int, int]] = set()
                out: tuple | str = "none"  # a direction without payload has no hello
                for i in rows_st.tolist():
                    if ((int(p.sport[i]), int(p.dport[i])) == csrc) != is_client:
                        continue
                    s_, l_ = int(p.seq[i]), int(p.payload_len[i])
                    if expected is None or s_ == expected:
                        expected = (s_ + l_) & 0xFFFFFFFF
                        seen.add((s_, l_))
                    elif (s_, l_) in seen:
                        continue  # retransmission: tshark does not dissect it again
                    else:
                        raise _NotClean
                    o = int(p.payload_off[i])
                    data += bytes(raw[o:o + l_])
                    bounds.append((len(data), i))
                    out = _direction_hello(data, bounds, want, sep)
                    if out != "more" or len(data) > 1 << 16:
                        break
                if out == "more" or len(data) > 1 << 16:
                    raise _NotClean  # the capture ends inside the first records: tshark decides
                if out != "none":
                    found.append(out)
            rows.extend(found)
            good.append(st)
        except _NotClean:
            continue
    clean = tcp & np.isin(stream, np.asarray(good, np.int64))
    return TlsHellos(clean, sorted(rows, key=lambda r: r[0]))
