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


# Columns of a *partial flow*: a run of packets of one flow already summed up. A packet is the
# smallest partial; the live collector keeps the open flows as partials between batches.
PARTIAL_COLS = ("frame", "start", "end", "by", "pk", "lo_pk", "lo_by", "lo_fl", "hi_fl", "syn",
                "src", "dst", "sport", "dport", "smac", "dmac", "proto", "stream")
_CORE_KEYS = ("frame", "ts_ns", "len", "src", "dst", "proto", "sport", "dport", "flags", "stream", "smac", "dmac")
_BIG = np.iinfo(np.int64).max // 4  # "no timeout"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9) if np.isfinite(seconds) else _BIG


def _endpoints(src: pa.Array, dst: pa.Array, sport: pa.Array, dport: pa.Array, proto: pa.Array,
               stream: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(canonical flow key text, True where the row was sent by the key's "low" endpoint)."""
    sport_s = pc.fill_null(pc.cast(sport, pa.string()), "")
    dport_s = pc.fill_null(pc.cast(dport, pa.string()), "")
    ep_s = pc.binary_join_element_wise(src, sport_s, "|")
    ep_d = pc.binary_join_element_wise(dst, dport_s, "|")
    fwd = pc.less_equal(ep_s, ep_d)
    lo = pc.if_else(fwd, ep_s, ep_d)
    hi = pc.if_else(fwd, ep_d, ep_s)
    stream_s = pc.fill_null(pc.cast(stream, pa.string()), "")
    key = pc.binary_join_element_wise(pc.cast(proto, pa.string()), lo, hi, stream_s, " ")
    return key, fwd.to_numpy(zero_copy_only=False)


def _packets_as_partials(cat: dict[str, pa.Array], fw: np.ndarray) -> dict[str, np.ndarray]:
    ln = cat["len"].to_numpy().astype(np.int64)
    ts = cat["ts_ns"].to_numpy().astype(np.int64)
    fl = pc.fill_null(cat["flags"], 0).to_numpy().astype(np.int64)
    return {
        "frame": cat["frame"].to_numpy().astype(np.int64), "start": ts, "end": ts, "by": ln,
        "pk": np.ones(len(ln), np.int64), "lo_pk": fw.astype(np.int64), "lo_by": np.where(fw, ln, 0),
        "lo_fl": np.where(fw, fl, 0), "hi_fl": np.where(fw, 0, fl), "syn": (fl & 0x12) == 0x02,
    }


def aggregate(packets: dict[str, pa.Array] | None, carry: dict[str, object] | None,
              idle_s: float, active_s: float) -> dict[str, object] | None:
    """Bidirectional flows of ``packets`` (core columns) and ``carry`` (open partial flows).

    Rows of one key are ordered by (start, frame) and cut where the key changes, where the gap
    since the previous row's end exceeds the idle timeout, and where a row starts more than the
    active timeout after its flow's first packet. The initiator is the sender of the flow's first
    SYN without ACK, else of its first packet. Returns per-flow columns, or None without rows.
    """
    parts_s: list[dict[str, pa.Array]] = []
    parts_n: list[dict[str, np.ndarray]] = []
    if carry is not None and carry["n"]:
        parts_s.append({k: carry[k] for k in ("src", "dst", "sport", "dport", "smac", "dmac", "proto", "stream")})
        parts_n.append({k: np.asarray(carry[k]) for k in ("frame", "start", "end", "by", "pk", "lo_pk", "lo_by",
                                                            "lo_fl", "hi_fl", "syn")})
    if packets is not None and len(packets["frame"]):
        parts_s.append({k: packets[k] for k in ("src", "dst", "sport", "dport", "smac", "dmac", "proto", "stream")})
        parts_n.append({})  # filled once the canonical direction is known
    if not parts_s:
        return None
    cat = {k: pa.concat_arrays([p[k] for p in parts_s]) if len(parts_s) > 1 else parts_s[0][k] for k in parts_s[0]}
    key, fw_all = _endpoints(cat["src"], cat["dst"], cat["sport"], cat["dport"], cat["proto"], cat["stream"])
    if packets is not None and len(packets["frame"]):
        fw_p = fw_all[len(fw_all) - len(packets["frame"]):]
        parts_n[-1] = _packets_as_partials(packets, fw_p)
    num = {k: np.concatenate([p[k] for p in parts_n]) if len(parts_n) > 1 else parts_n[0][k] for k in parts_n[0]}
    n = len(num["frame"])
    kid = pc.dictionary_encode(key).indices.to_numpy().astype(np.int64)
    order = np.lexsort((num["frame"], num["start"], kid))
    k = kid[order]
    s = num["start"][order]
    e = num["end"][order]
    idle_ns, active_ns = _ns(idle_s), _ns(active_s)
    brk = np.empty(n, dtype=bool)
    brk[0] = True
    brk[1:] = (k[1:] != k[:-1]) | ((s[1:] - e[:-1]) > idle_ns)
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], n)
    long = np.flatnonzero(np.maximum.reduceat(e, starts) - s[starts] > active_ns)
    if len(long):
        extra: list[int] = []
        for i in long:
            a, b = int(starts[i]), int(ends[i])
            cur = a
            while True:
                nxt = a + int(np.searchsorted(s[a:b], s[cur] + active_ns, side="right"))
                if nxt >= b:
                    break
                extra.append(nxt)
                cur = nxt
        starts = np.sort(np.concatenate([starts, np.asarray(extra, dtype=np.int64)]))
        ends = np.append(starts[1:], n)
    col = {c: num[c][order] for c in ("frame", "by", "pk", "lo_pk", "lo_by", "lo_fl", "hi_fl", "syn")}
    fw = fw_all[order]
    tot_pk = np.add.reduceat(col["pk"], starts)
    lo_pk = np.add.reduceat(col["lo_pk"], starts)
    tot_by = np.add.reduceat(col["by"], starts)
    lo_by = np.add.reduceat(col["lo_by"], starts)
    lo_fl = np.bitwise_or.reduceat(col["lo_fl"], starts)
    hi_fl = np.bitwise_or.reduceat(col["hi_fl"], starts)
    pos = np.where(col["syn"], np.arange(n), n)
    first_syn = np.minimum.reduceat(pos, starts)
    syn_seen = first_syn < ends
    init = np.where(syn_seen, first_syn, starts)
    init_lo = fw[init]
    src_pk = np.where(init_lo, lo_pk, tot_pk - lo_pk)
    src_by = np.where(init_lo, lo_by, tot_by - lo_by)
    orig_fl = np.where(init_lo, lo_fl, hi_fl)
    resp_fl = np.where(init_lo, hi_fl, lo_fl)
    oi = pa.array(order[init])
    kid_f = k[starts]
    last = np.ones(len(starts), dtype=bool)
    last[:-1] = kid_f[1:] != kid_f[:-1]
    return {
        "n": len(starts),
        "frame": col["frame"][starts],
        "start_ns": s[starts],
        "end_ns": np.maximum.reduceat(e, starts),
        "src": cat["src"].take(oi),
        "dst": cat["dst"].take(oi),
        "sport": cat["sport"].take(oi),
        "dport": cat["dport"].take(oi),
        "smac": cat["smac"].take(oi),
        "dmac": cat["dmac"].take(oi),
        "proto": cat["proto"].take(oi),
        "stream": cat["stream"].take(oi),
        "src_packets": src_pk,
        "dst_packets": tot_pk - src_pk,
        "src_bytes": src_by,
        "dst_bytes": tot_by - src_by,
        "packets": tot_pk,
        "bytes": tot_by,
        "tcp_flags": lo_fl | hi_fl,
        "orig_flags": orig_fl,
        "resp_flags": resp_fl,
        "syn_seen": syn_seen,
        "last": last,  # the newest flow of its key (the one later packets may extend)
        "key": key.take(pa.array(order[starts])),
        # the partial-flow view (canonical direction), for carrying open flows over
        "lo_pk": lo_pk, "lo_by": lo_by, "lo_fl": lo_fl, "hi_fl": hi_fl,
    }


def take_flows(f: dict[str, object], mask: np.ndarray) -> dict[str, object]:
    """The flows where ``mask`` holds (same columns)."""
    idx = np.flatnonzero(mask)
    ia = pa.array(idx, pa.int64())
    out: dict[str, object] = {"n": len(idx)}
    for k, v in f.items():
        if k == "n":
            continue
        out[k] = v.take(ia) if isinstance(v, pa.Array) else np.asarray(v)[idx]
    return out


def as_carry(f: dict[str, object]) -> dict[str, object]:
    """Open flows as partial rows for the next :func:`aggregate` (its ``carry``)."""
    return {
        "n": f["n"], "frame": f["frame"], "start": f["start_ns"], "end": f["end_ns"], "by": f["bytes"],
        "pk": f["packets"], "lo_pk": f["lo_pk"], "lo_by": f["lo_by"], "lo_fl": f["lo_fl"], "hi_fl": f["hi_fl"],
        "syn": f["syn_seen"], "src": f["src"], "dst": f["dst"], "sport": f["sport"], "dport": f["dport"],
        "smac": f["smac"], "dmac": f["dmac"], "proto": f["proto"], "stream": f["stream"], "key": f["key"],
    }


def concat_flows(a: dict[str, object] | None, b: dict[str, object] | None) -> dict[str, object] | None:
    """Rows of ``a`` then ``b`` (same columns; either may be None)."""
    if not a or not a["n"]:
        return b if b and b["n"] else None
    if not b or not b["n"]:
        return a
    out: dict[str, object] = {"n": a["n"] + b["n"]}
    for k, v in a.items():
        if k != "n":
            out[k] = pa.concat_arrays([v, b[k]]) if isinstance(v, pa.Array) else np.concatenate([v, b[k]])
    return out


# Zeek's conn_state, from the TCP flags each side sent (docs.zeek.org, base/protocols/conn):
# S0 attempt, no reply; REJ attempt rejected (RST); S1 established; SF established and closed
# both ways; S2/S3 close by originator/responder only; RSTO/RSTR reset by originator/responder;
# RSTOS0 originator SYN then RST, no reply; RSTRH responder SYN-ACK then RST, no SYN seen;
# SH/SHR SYN (SYN-ACK) then FIN without a handshake; OTH anything else (midstream).
def conn_states(proto: np.ndarray, orig_fl: np.ndarray, resp_fl: np.ndarray, resp_pk: np.ndarray,
                has_ports: np.ndarray) -> pa.Array:
    o_syn, r_syn = (orig_fl & 0x02) != 0, (resp_fl & 0x02) != 0
    o_rst, r_rst = (orig_fl & 0x04) != 0, (resp_fl & 0x04) != 0
    o_fin, r_fin = (orig_fl & 0x01) != 0, (resp_fl & 0x01) != 0
    r_none = resp_pk == 0
    tcp = np.select(
        [r_rst & o_syn & ~r_syn, r_rst & ~o_syn & r_syn, r_rst,
         o_rst & o_syn & ~r_syn & r_none, o_rst,
         o_fin & r_fin, o_fin & o_syn & ~r_syn, o_fin, r_fin & ~o_syn & r_syn, r_fin,
         o_syn & r_none, o_syn & r_syn],
        ["REJ", "RSTRH", "RSTR", "RSTOS0", "RSTO", "SF", "SH", "S2", "SHR", "S3", "S0", "S1"],
        "OTH")
    other = np.where(~has_ports, "OTH", np.where(r_none, "S0", "SF"))
    return pa.array(np.where(proto == 6, tcp, other).tolist(), pa.string())


@dataclass
class FlowAccumulator:
    """Collects the core columns of IP packets, batch by batch; :meth:`flows` aggregates them all."""

    parts: list[dict[str, pa.Array]] = field(default_factory=list)
    packets: int = 0

    def add(self, core: dict[str, pa.Array]) -> None:
        keep = ip_packets(core)
        if keep is not None:
            self.parts.append(keep)
            self.packets += len(keep["frame"])

    def flows(self, idle_s: float, active_s: float) -> dict[str, object] | None:
        """Per-flow columns (numpy / Arrow), or None when no IP packet was seen."""
        if not self.parts:
            return None
        cat = {k: pa.concat_arrays([p[k] for p in self.parts]) for k in self.parts[0]}
        self.parts = []
        return aggregate(cat, None, idle_s, active_s)


def ip_packets(core: dict[str, pa.Array]) -> dict[str, pa.Array] | None:
    """The flow columns of the IP packets of a batch (None when it has none)."""
    ip = pc.is_valid(core["src"])
    keep = {k: core[k] for k in _CORE_KEYS}
    if ip.false_count:
        keep = {k: v.filter(ip) for k, v in keep.items()}
    return keep if len(keep["frame"]) else None


class LiveFlows:
    """Flows of an unbounded packet stream: open flows are kept as one partial row each and
    emitted when they can grow no more (idle for ``idle_s``, or older than ``active_s``);
    exactly the flows :func:`aggregate` gives for the whole stream at once (packets arrive in
    time order). ``max_flows`` bounds memory: past it the least recently active flows are
    emitted early and counted in ``evicted``."""

    def __init__(self, idle_s: float, active_s: float, max_flows: int = 500_000) -> None:
        self.idle_s, self.active_s, self.max_flows = idle_s, active_s, max_flows
        self.carry: dict[str, object] | None = None
        self.packets = 0
        self.evicted = 0

    @property
    def open(self) -> int:
        return int(self.carry["n"]) if self.carry else 0

    def add(self, core: dict[str, pa.Array] | None, now_ns: int) -> dict[str, object] | None:
        """Add a batch's packets; the flows finished as of ``now_ns`` (or None)."""
        pk = ip_packets(core) if core is not None else None
        if pk is None:  # nothing new: only expire (no re-aggregation of the open flows)
            c = self.carry
            if not c:
                return None
            still = (now_ns - np.asarray(c["end"]) <= _ns(self.idle_s)) & (now_ns - np.asarray(c["start"]) <= _ns(self.active_s))
            if still.all():
                return None
            done = take_flows(c, ~still)
            self.carry = take_flows(c, still) if still.any() else None
            return aggregate(None, done, self.idle_s, self.active_s)
        self.packets += len(pk["frame"])
        idle_ns, active_ns = _ns(self.idle_s), _ns(self.active_s)
        # only the open flows this batch touches are merged again; the others are just checked
        touched = rest = None
        c = self.carry
        if c:
            keys, _ = _endpoints(pk["src"], pk["dst"], pk["sport"], pk["dport"], pk["proto"], pk["stream"])
            hit = pc.is_in(c["key"], value_set=pc.unique(keys)).to_numpy(zero_copy_only=False)
            touched = take_flows(c, hit) if hit.any() else None
            rest = take_flows(c, ~hit) if not hit.all() else None
        f = aggregate(pk, touched, self.idle_s, self.active_s)
        still = f["last"] & (now_ns - f["end_ns"] <= idle_ns) & (now_ns - f["start_ns"] <= active_ns)
        carry = as_carry(take_flows(f, still)) if still.any() else None
        done = take_flows(f, ~still) if not still.all() else None
        if rest is not None:
            keep = (now_ns - np.asarray(rest["end"]) <= idle_ns) & (now_ns - np.asarray(rest["start"]) <= active_ns)
            if not keep.all():
                done = concat_flows(done, aggregate(None, take_flows(rest, ~keep), self.idle_s, self.active_s))
            carry = concat_flows(take_flows(rest, keep), carry) if keep.any() else carry
        if carry and carry["n"] > self.max_flows:  # least recently active first
            order = np.argsort(np.asarray(carry["end"]), kind="stable")
            over = np.zeros(carry["n"], dtype=bool)
            over[order[: carry["n"] - self.max_flows]] = True
            self.evicted += int(over.sum())
            done = concat_flows(done, aggregate(None, take_flows(carry, over), self.idle_s, self.active_s))
            carry = take_flows(carry, ~over)
        self.carry = carry if carry and carry["n"] else None
        return done if done and done["n"] else None

    def flush(self) -> dict[str, object] | None:
        """Every open flow (shutdown)."""
        if not self.carry:
            return None
        f = aggregate(None, self.carry, self.idle_s, self.active_s)
        self.carry = None
        return f
