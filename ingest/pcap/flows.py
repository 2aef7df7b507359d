"""Per-packet core columns and vectorised bidirectional flow aggregation.

A packet's *flow key* is its canonical 5-tuple: transport protocol and the two
(ip, port) endpoints in sorted order, so both directions share one key; for
TCP the key also carries tshark's ``tcp.stream`` index, which tshark advances
when a 5-tuple is reused after the connection closed (port reuse starts a new
flow). Protocols without ports (ICMP, IGMP,
ESP, ...) are keyed by (protocol, address pair). An ICMP error quoting a
TCP/UDP header is an ICMP packet here (its outer IP protocol), not part of the
quoted TCP/UDP flow; tunnels are keyed by the outer header.

Aggregation never walks packets in Python: all packets of a capture are kept
as a few Arrow columns until the end of the capture (~150 bytes a packet with
the address and MAC strings: ~1.5 GB for 10M packets), dictionary-encoded to a key
id, sorted by (key, time, frame) with ``np.lexsort`` and cut into flows where
the key changes or the gap to the previous packet of the key exceeds the idle
timeout. Flows longer than the active timeout are cut again (a packet more
than ``active`` after its flow's first packet starts a new flow); only those
long flows are visited, one ``searchsorted`` per resulting piece. Per-flow sums
are ``np.add.reduceat``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .tshark import first, hex_to_int, to_int

IPV6_EXT = (0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254)
TRANSPORT = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah", 58: "ipv6-icmp", 89: "ospf", 132: "sctp"}
TCP_FLAG_BITS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "A"), (0x20, "U"), (0x40, "E"), (0x80, "C"), (0x100, "N"))


def epoch_ns(arr: pa.Array) -> np.ndarray:
    """``frame.time_epoch`` text (``1352718180.264365000``) -> int64 ns, exactly."""
    s = pc.fill_null(arr, "0.000000000")
    dot = pc.find_substring(s, ".")
    ln = pc.utf8_length(s)
    if len(s) and pc.all(pc.equal(dot, pc.subtract(ln, 10))).as_py():
        return pc.cast(pc.replace_substring(s, ".", ""), pa.int64()).to_numpy()
    f = pc.cast(s, pa.float64()).to_numpy()
    return np.round(f * 1e9).astype(np.int64)


def packet_core(b: pa.RecordBatch) -> dict[str, pa.Array]:
    """Frame, time, length, addresses, transport, ports, TCP flags of each frame."""
    c = b.column
    frame = c("frame.number")
    ts_ns = epoch_ns(c("frame.time_epoch"))
    src = pc.coalesce(first(c("ip.src")), first(c("ipv6.src")))
    dst = pc.coalesce(first(c("ip.dst")), first(c("ipv6.dst")))
    p4 = to_int(c("ip.proto"))
    p6 = to_int(c("ipv6.nxt"))
    proto = pc.coalesce(p4, p6).to_numpy(zero_copy_only=False)
    proto = np.nan_to_num(proto.astype(np.float64), nan=-1).astype(np.int64)
    if p6.null_count < len(p6):  # IPv6 extension headers: the transport is the header present
        ext = np.isin(proto, IPV6_EXT) & pc.is_null(p4).to_numpy(zero_copy_only=False)
        if ext.any():
            has_tcp = pc.is_valid(c("tcp.srcport")).to_numpy(zero_copy_only=False)
            has_udp = pc.is_valid(c("udp.srcport")).to_numpy(zero_copy_only=False)
            has_i6 = pc.is_valid(c("icmpv6.type")).to_numpy(zero_copy_only=False)
            fix = np.where(has_tcp, 6, np.where(has_udp, 17, np.where(has_i6, 58, proto)))
            proto = np.where(ext, fix, proto)
    is_tcp = pa.array(proto == 6)
    is_udp = pa.array(proto == 17)
    null_i = pa.scalar(None, pa.int64())
    sport = pc.if_else(is_tcp, to_int(c("tcp.srcport")), pc.if_else(is_udp, to_int(c("udp.srcport")), null_i))
    dport = pc.if_else(is_tcp, to_int(c("tcp.dstport")), pc.if_else(is_udp, to_int(c("udp.dstport")), null_i))
    flags = pc.if_else(is_tcp, hex_to_int(c("tcp.flags")), null_i)
    stream = pc.if_else(is_tcp, to_int(c("tcp.stream")), null_i)
    return {
        "frame": frame,
        "ts_ns": pa.array(ts_ns),
        "len": c("frame.len"),
        "src": src,
        "dst": dst,
        "proto": pa.array(proto),
        "sport": sport,
        "dport": dport,
        "flags": flags,
        "stream": stream,
        "smac": first(c("eth.src")),
        "dmac": first(c("eth.dst")),
    }


def transport_names(proto: pa.Array) -> pa.Array:
    from .tshark import map_values

    return map_values(proto, lambda p: TRANSPORT.get(p, str(p)) if p is not None and p >= 0 else None)


def flags_text(v: int) -> str:
    return "".join(ch for bit, ch in TCP_FLAG_BITS if v & bit)


@dataclass
class FlowAccumulator:
    """Collects the core columns of IP packets, batch by batch; :meth:`flows` aggregates."""

    parts: list[dict[str, pa.Array]] = field(default_factory=list)
    packets: int = 0

    def add(self, core: dict[str, pa.Array]) -> None:
        ip = pc.is_valid(core["src"])
        keep = {k: core[k] for k in ("frame", "ts_ns", "len", "src", "dst", "proto", "sport", "dport", "flags", "stream", "smac", "dmac")}
        if ip.false_count:
            keep = {k: v.filter(ip) for k, v in keep.items()}
        if len(keep["frame"]):
            self.parts.append(keep)
            self.packets += len(keep["frame"])

    def flows(self, idle_s: float, active_s: float) -> dict[str, object] | None:
        """Per-flow columns (numpy / Arrow), or None when no IP packet was seen."""
        if not self.parts:
            return None
        cat = {k: pa.concat_arrays([p[k] for p in self.parts]) for k in self.parts[0]}
        self.parts = []
        n = len(cat["frame"])
        sport_s = pc.fill_null(pc.cast(cat["sport"], pa.string()), "")
        dport_s = pc.fill_null(pc.cast(cat["dport"], pa.string()), "")
        ep_s = pc.binary_join_element_wise(cat["src"], sport_s, "|")
        ep_d = pc.binary_join_element_wise(cat["dst"], dport_s, "|")
        fwd = pc.less_equal(ep_s, ep_d)  # sent by the canonical "low" endpoint
        lo = pc.if_else(fwd, ep_s, ep_d)
        hi = pc.if_else(fwd, ep_d, ep_s)
        stream_s = pc.fill_null(pc.cast(cat["stream"], pa.string()), "")
        key = pc.binary_join_element_wise(pc.cast(cat["proto"], pa.string()), lo, hi, stream_s, " ")
        kid = pc.dictionary_encode(key).indices.to_numpy().astype(np.int64)
        frame = cat["frame"].to_numpy().astype(np.int64)
        ts = cat["ts_ns"].to_numpy()
        order = np.lexsort((frame, ts, kid))
        k = kid[order]
        t = ts[order]
        big = np.iinfo(np.int64).max // 4  # "no timeout"
        idle_ns = int(idle_s * 1e9) if np.isfinite(idle_s) else big
        active_ns = int(active_s * 1e9) if np.isfinite(active_s) else big
        brk = np.empty(n, dtype=bool)
        brk[0] = True
        brk[1:] = (k[1:] != k[:-1]) | ((t[1:] - t[:-1]) > idle_ns)
        starts = np.flatnonzero(brk)
        ends = np.append(starts[1:], n)
        long = np.flatnonzero(t[ends - 1] - t[starts] > active_ns)
        if len(long):
            extra: list[int] = []
            for i in long:
                s, e = int(starts[i]), int(ends[i])
                cur = s
                while True:
                    nxt = s + int(np.searchsorted(t[s:e], t[cur] + active_ns, side="right"))
                    if nxt >= e:
                        break
                    extra.append(nxt)
                    cur = nxt
            starts = np.sort(np.concatenate([starts, np.asarray(extra, dtype=np.int64)]))
            ends = np.append(starts[1:], n)
        ln = cat["len"].to_numpy().astype(np.int64)[order]
        fw = fwd.to_numpy(zero_copy_only=False)[order]
        fl = pc.fill_null(cat["flags"], 0).to_numpy().astype(np.int64)[order]
        tot_pk = ends - starts
        lo_pk = np.add.reduceat(fw.astype(np.int64), starts)
        tot_by = np.add.reduceat(ln, starts)
        lo_by = np.add.reduceat(np.where(fw, ln, 0), starts)
        flags_or = np.bitwise_or.reduceat(fl, starts)
        syn = (fl & 0x12) == 0x02
        pos = np.where(syn, np.arange(n), n)
        first_syn = np.minimum.reduceat(pos, starts)
        init = np.where(first_syn < ends, first_syn, starts)
        init_lo = fw[init]
        src_pk = np.where(init_lo, lo_pk, tot_pk - lo_pk)
        src_by = np.where(init_lo, lo_by, tot_by - lo_by)
        oi = pa.array(order[init])
        return {
            "n": len(starts),
            "frame": frame[order][starts],
            "start_ns": t[starts],
            "end_ns": t[ends - 1],
            "src": cat["src"].take(oi),
            "dst": cat["dst"].take(oi),
            "sport": cat["sport"].take(oi),
            "dport": cat["dport"].take(oi),
            "smac": cat["smac"].take(oi),
            "dmac": cat["dmac"].take(oi),
            "proto": cat["proto"].take(oi),
            "src_packets": src_pk,
            "dst_packets": tot_pk - src_pk,
            "src_bytes": src_by,
            "dst_bytes": tot_by - src_by,
            "packets": tot_pk,
            "bytes": tot_by,
            "tcp_flags": flags_or,
            "syn_seen": first_syn < ends,
        }
