"""Packet captures (pcap / pcapng) -> ECS flow events and application-metadata events.

API::

    reader = read_pcap("capture.pcap")        # also: idle_timeout=, active_timeout=, decode_as=, tshark_args=
    for table in reader:                      # pyarrow.Table batches, EVENT_SCHEMA
        ...
    reader.summary                            # PcapSummary: packets, flows, per-protocol counts
    reader.deadletters                        # DEADLETTER_SCHEMA table (truncated / unreadable capture)

Which path is used when
-----------------------
``decoder="auto"`` (the default; ``TAISHI_PCAP_DECODER`` overrides it): Taishi's own
decoder (:mod:`ingest.pcap.fast`) walks the pcap/pcapng records and extracts the
link/IP/TCP/UDP header fields of every packet with numpy, numbers TCP connections as
Wireshark's ``tcp.stream`` does, and builds the flows from that. Modbus/TCP ADUs and TLS
ClientHello/ServerHello of clean streams (in-order segments; anything unusual is left to
tshark) are decoded there too. The packets that can carry the other application metadata
(selected by port and payload signature, whole TCP streams / UDP conversations) are written to
a temporary capture which one ``tshark -n -r SUB -T fields -E occurrence=a`` run dissects
(Wireshark 4.x, ``/usr/bin/tshark`` or ``$TAISHI_TSHARK``); their frame and stream numbers
are mapped back, so events and ids are those of the tshark-only path. A capture without such
packets never starts tshark. What the decoder does not model (overlapping IPv4 fragments, IPv6
fragments, MPLS/PPPoE,
tunnels under IPv6, other link types, bogus or cut headers, a file cut short or not a
capture, ``decode_as`` other than ``tcp/udp.port==N``) is read by tshark alone, and the
summary says why (``summary.fallback``).

``decoder="tshark"``: tshark alone, as before the fast path: one ``tshark -T fields`` run
dissects every frame and prints ~60 fields (``ingest.pcap.tshark.FIELDS``); ``pyarrow.csv``
reads that stream in 4 MiB blocks straight into Arrow columns. The live capture collector
(``ingest.collectors.capture``) always uses this path (``dumpcap | tshark -l``).

Either way nothing creates one Python object per packet:

* flows (``pcap.flow``): core columns of every IP packet are kept as Arrow /
  numpy arrays and aggregated at the end of the capture with a sort and
  ``reduceat`` (see ``ingest.pcap.flows``); idle timeout 60 s, active timeout
  30 min by default;
* DNS, Modbus/TCP, DNP3, EtherNet/IP-CIP events are built column-wise per batch
  (``ingest.pcap.apps``);
* HTTP messages, TLS handshakes and SSH banners, a handful per connection,
  are built as row dicts from the (few) frames that carry them.

On the fast path a frame a dissector gave up on (``_ws.malformed``) is dead-lettered only
among the frames tshark dissects (the application packets).

pyshark is not used (not a dependency): it would wrap every packet in Python
objects. For richer one-off dissection of a small capture, run tshark
(or pyshark) by hand; protocols on non-standard ports need ``decode_as``
(tshark ``-d`` syntax, e.g. ``("tcp.port==902,ssh",)``).

Events
------
Flow events: ``event.dataset=pcap.flow``, ``event.category=network``,
``event.type=connection``; ``source`` is the initiator (for TCP the sender of
the first SYN without ACK, otherwise the sender of the first packet), with
per-direction ``source/destination.bytes/packets`` (bytes = frame length on the
wire, as tshark's conversation tables count), ``network.bytes/packets``,
``event.start/end/duration`` (ns), and the TCP flags seen in ``taishi.extra``.
App events: ``pcap.dns``, ``pcap.http``, ``pcap.tls``, ``pcap.ssh``,
``pcap.modbus``, ``pcap.dnp3``, ``pcap.enip`` (ICS fields in ``taishi.extra``).
All have ``event.module=pcap`` and ``observer.name`` = the capture's file name.

Event ids are ``ingest.parsers.event_ids(source, offset, original)`` with
source = the capture's base name, offset = the frame number of the flow's
first packet (of the app packet) and original = a compact text of the flow key
(the app fields), so re-reading a capture gives the same ids.

A capture tshark cannot read completely (truncated, corrupt, not a capture)
gives the events of the frames it did read plus a dead letter carrying
tshark's exit status and message; the reader never raises on bad input.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.parsers import deadletter
from taishi.schema import DEADLETTER_SCHEMA, EVENT_SCHEMA, deadletters_table

from . import apps, fast
from .flows import FlowAccumulator, packet_core
from .tshark import AGG, TsharkRun

__all__ = ["read_pcap", "PcapReader", "PcapSummary", "IDLE_TIMEOUT_S", "ACTIVE_TIMEOUT_S", "PCAP_MAGICS", "is_pcap"]

IDLE_TIMEOUT_S = 60.0
ACTIVE_TIMEOUT_S = 1800.0
FLOW_BATCH = 65536  # rows per yielded flow table
DECODERS = ("auto", "tshark")  # auto: Taishi's header decoder + tshark on the application packets

# File magics: pcap (us / ns resolution, both byte orders) and pcapng (section header block).
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")


def is_pcap(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts like a pcap or pcapng capture."""
    return head[:4] in PCAP_MAGICS


@dataclass
class PcapSummary:
    """What reading one capture saw (filled while iterating; final after the last batch)."""

    path: str = ""
    packets: int = 0
    ip_packets: int = 0
    bytes: int = 0
    flows: int = 0
    flows_by_transport: Counter = field(default_factory=Counter)
    events_by_dataset: Counter = field(default_factory=Counter)
    first_frame_time_ns: int | None = None
    last_frame_time_ns: int | None = None
    tshark_status: int | None = None
    tshark_stderr: str = ""
    decoder: str = ""  # "taishi" (own header decoder + tshark on the app packets) or "tshark" (tshark alone)
    tshark_packets: int = 0  # frames tshark dissected
    fallback: str = ""  # why the capture was read by tshark alone, when it was not asked for
    deadletters: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.events_by_dataset.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "packets": self.packets, "ip_packets": self.ip_packets, "bytes": self.bytes,
            "flows": self.flows, "flows_by_transport": dict(self.flows_by_transport),
            "events": self.events, "events_by_dataset": dict(self.events_by_dataset),
            "tshark_status": self.tshark_status, "deadletters": self.deadletters, "seconds": round(self.seconds, 3),
            "decoder": self.decoder, "tshark_packets": self.tshark_packets, "fallback": self.fallback,
        }


class PcapReader:
    """Iterator of ECS event tables for one capture; see the module doc."""

    def __init__(
        self,
        path: str | Path,
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        active_timeout: float = ACTIVE_TIMEOUT_S,
        decode_as: tuple[str, ...] | list[str] = (),
        source: str | None = None,
        block_size: int | None = None,
        tshark_args: tuple[str, ...] | list[str] = (),
        decoder: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.decoder = decoder or os.environ.get("TAISHI_PCAP_DECODER") or "auto"
        if self.decoder not in DECODERS:
            raise ValueError(f"pcap decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}")
        self.source = source or self.path.name
        self.idle_timeout = float(idle_timeout)
        self.active_timeout = float(active_timeout)
        self.decode_as = tuple(decode_as)
        self.block_size = block_size
        self.tshark_args = tuple(tshark_args)
        self.summary = PcapSummary(path=str(self.path))
        self._dls: list[dict[str, Any]] = []
        self._ctx = apps.Ctx(self.source, str(self.path), self.path.name)
        self._it: Iterator[pa.Table] | None = None

    @property
    def deadletters(self) -> pa.Table:
        return deadletters_table(self._dls) if self._dls else DEADLETTER_SCHEMA.empty_table()

    def __iter__(self) -> "PcapReader":
        return self

    def __next__(self) -> pa.Table:
        if self._it is None:
            self._it = self._run()
        return next(self._it)

    def read_all(self) -> pa.Table:
        """Every event of the capture in one table."""
        parts = list(self)
        return pa.concat_tables(parts) if parts else EVENT_SCHEMA.empty_table()

    # ---------------------------------------------------------------------------------
    def _dead(self, offset: int, original: str, reason: str) -> None:
        self._dls.append(deadletter(self.source, offset, original, reason))
        self.summary.deadletters += 1

    def _count(self, t: pa.Table) -> pa.Table:
        for row in pc.value_counts(t.column("event.dataset")).to_pylist():
            self.summary.events_by_dataset[row["values"]] += row["counts"]
        return t

    def _run(self) -> Iterator[pa.Table]:
        t0 = time.perf_counter()
        s = self.summary
        if not self.path.is_file():
            self._dead(-1, str(self.path), f"cannot read capture: no such file {self.path}")
            return
        if self.path.stat().st_size == 0:  # tshark reads an empty file as an empty capture, silently
            self._dead(-1, str(self.path), "not a capture: the file is empty (tshark read no header)")
            return
        if self.decoder == "auto":
            plan = self._fast_plan()
            if plan is not None:
                yield from self._run_fast(*plan)
                s.seconds = time.perf_counter() - t0
                return
        s.decoder = "tshark"
        run = self._open_tshark(self.path)
        if run is None:
            return
        acc = FlowAccumulator()
        hellos: list[dict[str, Any]] = []

        def whole(b: Any) -> dict[str, Any]:  # every packet: counts, times, flows
            core = packet_core(b)
            s.packets += b.num_rows
            s.bytes += int(pc.sum(core["len"]).as_py() or 0)
            tmin, tmax = int(core["ts_ns"].to_numpy().min()), int(core["ts_ns"].to_numpy().max())
            s.first_frame_time_ns = tmin if s.first_frame_time_ns is None else min(s.first_frame_time_ns, tmin)
            s.last_frame_time_ns = tmax if s.last_frame_time_ns is None else max(s.last_frame_time_ns, tmax)
            acc.add(core)
            return core

        last_frame = yield from self._tshark_tables(run, whole, hellos, lambda: f"after {s.packets} frames")
        s.ip_packets = acc.packets
        yield from self._finish(acc, hellos, last_frame)
        s.seconds = time.perf_counter() - t0

    # --- the fast path: Taishi decodes the headers, tshark dissects only the application packets

    def _fast_plan(self) -> tuple | None:
        """(records, packets, tcp streams, app packet indices), or None (reason in the summary)
        when this capture is read by tshark alone."""
        s = self.summary
        ports = fast_ports(self.decode_as)
        if ports is None:
            s.fallback = "decode_as other than tcp/udp.port==N"
            return None
        try:
            rec = fast.scan(self.path)
            if rec.problem is not None:
                s.fallback = rec.problem
                return None
            p = fast.decode(rec)
            if p.problem is not None:
                s.fallback = p.problem
                return None
            stream = fast.tcp_streams(p)
            sel = fast.app_packets(p, rec.buf, stream, ports)
            mb = None
            if fast.MODBUS_PORT not in ports and not self.tshark_args:  # Modbus/TCP decoded here
                mb = fast.modbus_native(p, rec.buf, stream, AGG)
                sel &= ~mb.clean
            tl = None
            if not self.tshark_args:  # TLS hellos read here
                tl = fast.tls_native(p, rec.buf, stream, AGG, skip_ports=ports)
                sel &= ~tl.clean
            idx = np.flatnonzero(sel)
        except Exception:  # noqa: BLE001 - never crash: tshark alone reads it
            s.fallback = "fast decoder error: " + traceback.format_exc(limit=2).strip().splitlines()[-1][:300]
            return None
        if len(idx) and len(np.unique(rec.linktype[idx])) > 1:
            s.fallback = "application packets on interfaces of different link types"
            return None
        return rec, p, stream, idx, mb, tl

    def _modbus_events(self, core: dict[str, pa.Array], mb: Any) -> pa.Table | None:
        """Modbus events of the streams decoded here, through the same builder as tshark's fields."""
        if mb is None or not len(mb.frames):
            return None
        rows = pa.array(mb.frames, pa.int64())
        sub = {k: v.take(rows) for k, v in core.items()}
        b = pa.record_batch({
            "mbtcp.trans_id": pa.array(mb.trans_id, pa.string()),
            "mbtcp.unit_id": pa.array(mb.unit_id, pa.string()),
            "modbus.func_code": pa.array(mb.func_code, pa.string()),
            "modbus.exception_code": pa.array(mb.exception_code, pa.string()),
        })
        return apps.modbus_events(b, sub, self._ctx)

    def _run_fast(self, rec: Any, p: Any, stream: np.ndarray, idx: np.ndarray, mb: Any, tl: Any) -> Iterator[pa.Table]:
        s = self.summary
        s.decoder = "taishi"
        s.packets = p.n
        s.bytes = int(p.wirelen.sum())
        if p.n:
            s.first_frame_time_ns, s.last_frame_time_ns = int(p.ts_ns.min()), int(p.ts_ns.max())
        acc = FlowAccumulator()
        core = fast.core_columns(p, rec.buf, stream)
        acc.add(core)
        hellos: list[dict[str, Any]] = []
        try:
            t = self._modbus_events(core, mb)
            if tl is not None and tl.rows:
                rows = pa.array([i for i, _ in tl.rows], pa.int64())
                b = pa.record_batch({f: pa.array([r[f] for _, r in tl.rows], pa.string()) for f in fast.TLS_TEXT_FIELDS})
                hellos.extend(apps.tls_hellos(b, {k: v.take(rows) for k, v in core.items()}))
        except Exception:  # noqa: BLE001
            t = None
            err = traceback.format_exc(limit=2).strip().splitlines()[-1]
            self._dead(-1, str(self.path), f"pcap Modbus/TLS decoder error: {err}"[:500])
        del core
        if t is not None:
            yield self._count(t)
        s.tshark_packets = len(idx)
        if len(idx):
            yield from self._apps_of(rec, stream, idx, hellos)
        s.ip_packets = acc.packets
        del rec
        yield from self._finish(acc, hellos, p.n)

    def _apps_of(self, rec: Any, stream: np.ndarray, idx: np.ndarray, hellos: list) -> Iterator[pa.Table]:
        """tshark over the application packets only (a temporary capture); frame numbers and TCP
        stream numbers mapped back to the whole capture's."""
        with tempfile.TemporaryDirectory(prefix="taishi-pcap-") as tmp:
            sub = Path(tmp) / "apps.pcap"
            fast.write_pcap(sub, rec, idx)
            run = self._open_tshark(sub)
            if run is None:
                return

            def mapped(b: Any) -> dict[str, Any]:  # the sub-capture's frames and streams -> the capture's
                core = packet_core(b)
                orig = idx[core["frame"].to_numpy() - 1]
                core["frame"] = pa.array(orig + 1, pa.int64())
                tcp = pc.equal(core["proto"], 6)
                core["stream"] = pc.if_else(tcp, pa.array(stream[orig], pa.int64()), pa.scalar(None, pa.int64()))
                return core

            yield from self._tshark_tables(run, mapped, hellos, lambda: f"on the {len(idx)} application frames")

    # --- shared by both paths

    def _open_tshark(self, path: Path) -> TsharkRun | None:
        try:
            kw = {"block_size": self.block_size} if self.block_size else {}
            return TsharkRun(path, self.decode_as, extra_args=self.tshark_args, **kw)
        except OSError as exc:
            self._dead(-1, str(self.path), f"cannot run tshark: {exc}")
            return None

    def _tshark_tables(self, run: TsharkRun, core_of: Callable[[Any], dict[str, Any]], hellos: list,
                       where: Callable[[], str]) -> Generator[pa.Table, None, int]:
        """Application events of tshark's batches (``core_of`` gives a batch's packet core, frame
        numbers of the whole capture); TLS hellos collected into ``hellos``. Malformed packets, bad
        output lines, a reader error and a failed tshark are dead letters. Returns the last frame."""
        s = self.summary
        last_frame = 0
        failed = False
        try:
            for b in run.batches():
                core = core_of(b)
                last_frame = int(pc.max(core["frame"]).as_py())
                for frame, text, reason in apps.malformed(b, core):
                    self._dead(frame, text, reason)
                table, hello = apps.frame_events(b, core, self._ctx)
                hellos.extend(hello)
                if table is not None:
                    yield self._count(table)
        except GeneratorExit:
            run.kill()
            run.close()
            raise
        except Exception:  # noqa: BLE001 - a capture never crashes the reader
            failed = True
            run.kill()
            err = traceback.format_exc(limit=2).strip().splitlines()[-1]
            self._dead(last_frame, str(self.path), f"pcap reader error: {err} (after frame {last_frame})"[:500])
        rc, err = run.close()
        s.tshark_status, s.tshark_stderr = rc, err
        for line in run.bad_lines:
            self._dead(last_frame, line, "unparseable tshark output line")
        if (rc != 0 or err) and not failed:
            msg = err.splitlines()[0] if err else "(no message)"
            self._dead(last_frame + 1 if last_frame else -1, f"{self.path}\n{err}"[:4000],
                       f"tshark exit status {rc}: {msg} ({where()})"[:500])
        return last_frame

    def _finish(self, acc: FlowAccumulator, hellos: list, frame: int) -> Iterator[pa.Table]:
        """TLS events of the collected hellos, then the flows."""
        try:
            if hellos:
                yield self._count(apps.events_from_rows(apps.tls_rows(hellos, self._ctx)))
            f = acc.flows(self.idle_timeout, self.active_timeout)
            if f is not None:
                for t in self._flow_tables(f):
                    yield self._count(t)
        except Exception:  # noqa: BLE001
            err = traceback.format_exc(limit=2).strip().splitlines()[-1]
            self._dead(frame, str(self.path), f"pcap flow aggregation error: {err}"[:500])

    def _flow_tables(self, f: dict[str, Any]) -> Iterator[pa.Table]:
        s = self.summary
        s.flows += f["n"]
        table = apps.flow_events(f, self._ctx)
        for row in pc.value_counts(table.column("network.transport")).to_pylist():
            s.flows_by_transport[row["values"]] += row["counts"]
        for i in range(0, f["n"], FLOW_BATCH):
            yield table.slice(i, FLOW_BATCH)


_DECODE_AS_PORT = re.compile(r"^(?:tcp|udp)\.port\s*==\s*(\d+)(?:-(\d+))?\s*,")


def fast_ports(decode_as: tuple[str, ...]) -> frozenset[int] | None:
    """The ports named by ``decode_as`` specs (``tcp.port==902,ssh``; ranges too), or None when
    a spec is of another kind (the fast path cannot tell which packets it concerns)."""
    out: set[int] = set()
    for spec in decode_as:
        m = _DECODE_AS_PORT.match(spec.strip())
        if not m:
            return None
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if hi - lo > 4096:
            return None
        out.update(range(lo, hi + 1))
    return frozenset(out)


def read_pcap(path: str | Path, **kw: Any) -> PcapReader:
    """Events of the capture at ``path``: an iterator of ``pa.Table`` with ``.summary`` / ``.deadletters``."""
    return PcapReader(path, **kw)
