"""Live packet capture on an interface -> flow and application events on ``events``.

``dumpcap -i IFACE -f BPF -w - | tshark -r - -l -T fields`` (``ingest.pcap.tshark.LiveTshark``)
prints the same TSV fields the capture-file path reads; this collector reads that pipe without
blocking, and every ``flush_interval`` seconds (or when a few MiB are waiting) turns the complete
lines into an Arrow batch and then into events with the *same* code as ``taishi ingest
CAPTURE.pcap``:

* application events (DNS, HTTP, TLS incl. TLCP / SM suites, SSH, Modbus/TCP, DNP3,
  EtherNet/IP-CIP) per batch (``ingest.pcap.apps.frame_events``); a TLS ClientHello waits for its
  ServerHello (at most the idle timeout) so the handshake is one event;
* flows: ``ingest.pcap.flows.LiveFlows`` keeps each open flow as one partial row and emits it once
  it can grow no more, i.e. idle for ``idle_timeout`` or older than ``active_timeout`` (wall clock;
  the packet timestamps are capture times). The flows are exactly those the file path computes
  for the same packets.

Like packets from a file, events bypass the raw topics and are written to ``events``. Offsets:
``log.offset`` is the collector's packet sequence number (not tshark's frame number, which
restarts with each session reset), continued after a restart from the ``seq`` in the meta of the
last frame this collector wrote, so event ids never repeat. Flows still open at ``stop()`` and
hellos still waiting are flushed; a crash loses only those.

Bounded memory: open flows are at most ``max_flows`` (past it the least recently active are
emitted early and counted in ``flows_evicted``); waiting TLS hellos at most ``max_hellos``;
tshark resets its session every ``session_reset`` packets. When Python falls behind, the pipe
fills and the kernel drops packets; dumpcap counts them (``kernel_drops``, read when the capture
ends), and what the kernel still held when the capture stopped is counted too (``stop()`` first
lets the capture catch up for up to ``drain_timeout`` seconds). A frame a dissector gave up on is
dead-lettered (reason ``malformed packet: ...``) and still counted in its flow; a TSV line that
cannot be read, or tshark/dumpcap dying, is dead-lettered with the reason.

Packets can also be lost before the capture sees them (the interface's receive queue overflows,
e.g. a veth backlog under a burst): the interface's own counters (``rx_dropped``,
``rx_missed_errors``, ``rx_fifo_errors`` in /sys/class/net/IFACE/statistics) since the capture
started are reported as ``interface_drops``.

Metrics (``metrics()``, Prometheus text via ``prometheus()``): received (packets), parsed
(events written), flows, open_flows (gauge), flows_evicted, deadlettered, kernel_drops,
interface_drops, dropped (kernel drops, packets unread at stop and interface drops: packets lost
before decoding), bytes,
batches, pending (bytes of TSV waiting: the lag, gauge), lag_seconds (age of the newest packet
decoded when it was decoded, gauge).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.collectors import Collector
from ingest.pcap import apps
from ingest.pcap.flows import LiveFlows, packet_core
from ingest.pcap.tshark import LiveTshark, parse_tsv
from taishi import ids
from taishi.bus import TOPIC_DEADLETTER, TOPIC_EVENTS, Bus
from taishi.schema import deadletters_table

PROCESS_BYTES = 4 << 20  # decode as soon as this much TSV is waiting


@dataclass
class Metrics:
    received: int = 0
    parsed: int = 0
    flows: int = 0
    deadlettered: int = 0
    bytes: int = 0
    batches: int = 0
    lag_seconds: float = 0.0
    by_dataset: dict[str, int] = field(default_factory=dict)


class CaptureCollector(Collector):
    """Capture on ``interface`` with a BPF filter (see the module doc)."""

    topic = TOPIC_EVENTS

    def __init__(
        self,
        bus: Bus,
        interface: str,
        *,
        bpf: str = "",
        name: str | None = None,
        idle_timeout: float = 60.0,
        active_timeout: float = 300.0,
        decode_as: tuple[str, ...] | list[str] = (),
        flush_interval: float = 1.0,
        max_flows: int = 500_000,
        max_hellos: int = 100_000,
        session_reset: int = 500_000,
        snaplen: int = 0,
        drain_timeout: float = 10.0,
    ) -> None:
        super().__init__(bus, [], name or f"capture-{interface}")
        self.interface, self.bpf = interface, bpf
        self.idle_timeout, self.active_timeout = float(idle_timeout), float(active_timeout)
        self.decode_as = tuple(decode_as)
        self.flush_interval = flush_interval
        self.max_hellos = max_hellos
        self.session_reset, self.snaplen = session_reset, snaplen
        self.drain_timeout = drain_timeout
        self.m = Metrics()
        self.flows = LiveFlows(self.idle_timeout, self.active_timeout, max_flows)
        self.ctx = apps.Ctx(self.name, None, interface, "sensor")
        self.status: dict[str, Any] = {}
        self._buf = bytearray()
        self._hellos: list[dict[str, Any]] = []
        self._dead: list[dict] = []
        self._out: list[pa.Table] = []
        self._next = self._seq  # sequence number of the next packet
        self._epoch = 0  # tshark session resets seen (tcp.stream restarts at 0 after each)
        self._last_frame = 0
        self._eof = False
        self._cap: LiveTshark | None = None
        self._wake: asyncio.Event | None = None
        self._if_base: int | None = None
        self._if_last = 0

    # -- lifecycle -------------------------------------------------------------------
    def _if_drops(self) -> int | None:
        total = None
        for name in ("rx_dropped", "rx_missed_errors", "rx_fifo_errors"):
            try:
                v = int(open(f"/sys/class/net/{self.interface}/statistics/{name}").read())
            except (OSError, ValueError):
                continue
            total = (total or 0) + v
        return total

    def interface_drops(self) -> int:
        now = self._if_drops()
        if now is not None and self._if_base is not None:
            self._if_last = max(self._if_last, now - self._if_base)
        return self._if_last

    async def _serve(self) -> None:
        self._if_base = self._if_drops()
        cap = LiveTshark(self.interface, self.bpf, decode_as=self.decode_as, session_reset=self.session_reset,
                         snaplen=self.snaplen)
        self._cap = cap
        await self._loop.run_in_executor(None, cap.wait_started)
        self._wake = asyncio.Event()
        self._loop.add_reader(cap.fd, self._readable)
        self.bound["capture"] = (self.interface, 0)
        self._ready.set()
        ticker = asyncio.create_task(self._tick_loop())
        stop = asyncio.create_task(self._stopping.wait())
        ended = asyncio.create_task(self._wake.wait())
        await asyncio.wait({stop, ended}, return_when=asyncio.FIRST_COMPLETED)
        # shutdown: let the capture catch up (output keeps coming) for up to drain_timeout, then
        # dumpcap finishes; tshark prints what is left and ends. What the kernel still held then
        # is counted (unread_at_stop), not lost silently.
        deadline = time.monotonic() + self.drain_timeout
        last = -1
        while not self._eof and time.monotonic() < deadline and self.m.bytes != last:
            last = self.m.bytes
            await asyncio.sleep(0.5)
        cap.stop()
        deadline = time.monotonic() + 30
        while not self._eof and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._loop.remove_reader(cap.fd)
        ticker.cancel()
        stop.cancel()
        ended.cancel()
        self.status = await self._loop.run_in_executor(None, cap.close)
        self._process(final=True)
        self._ended(self.status, stopped=self._stopping.is_set())
        self._flush()

    def _readable(self) -> None:
        assert self._cap is not None
        while True:
            data = self._cap.read()
            if data is None:
                self._eof = True
                self._loop.remove_reader(self._cap.fd)
                if not self._stopping.is_set():
                    self._wake.set()  # tshark ended on its own: the capture failed
                return
            if not data:
                return
            self._buf += data
            self.m.bytes += len(data)
            if len(self._buf) >= PROCESS_BYTES:
                self._process()
                self._flush()
                return

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                self._process()
            except Exception:  # noqa: BLE001 - the collector keeps capturing
                self._reject(self._next, "", "capture processing error: "
                             + traceback.format_exc(limit=2).strip().splitlines()[-1][:400])
            self._flush()

    def _ended(self, st: dict, *, stopped: bool) -> None:
        """Dead letters for a capture that ended badly (interface gone, tshark crashed)."""
        bad_cap = st.get("dumpcap_status") not in (0, -15, None) or st.get("dumpcap_stderr")
        bad_tshark = st.get("tshark_status") not in (0, None) or st.get("tshark_stderr")
        if bad_cap or bad_tshark or not stopped:
            msg = st.get("dumpcap_stderr") or st.get("tshark_stderr") or "capture ended unexpectedly"
            self._reject(self._next, f"{self.interface}\n{st}"[:4000],
                         f"capture on {self.interface} ended: dumpcap status {st.get('dumpcap_status')}, "
                         f"tshark status {st.get('tshark_status')}: {msg.splitlines()[0][:300]}")

    # -- decoding --------------------------------------------------------------------
    def _process(self, final: bool = False) -> None:
        cut = self._buf.rfind(b"\n") + 1
        now_ns = time.time_ns()
        if cut:
            chunk = bytes(self._buf[:cut])
            del self._buf[:cut]
            bad: list[str] = []

            def invalid(row) -> str:
                bad.append((row.text or "")[:500])
                return "skip"

            try:
                table = parse_tsv(chunk, invalid)
            except pa.ArrowInvalid as exc:
                self._reject(self._next, chunk[:4000].decode("utf-8", "replace"), f"unreadable tshark output: {exc}"[:500])
                table = None
            for line in bad:
                self._reject(self._next, line, "unparseable tshark output line")
            if table is not None and table.num_rows:
                for b in table.to_batches():
                    self._batch(b, now_ns)
        if final and self._buf:
            self._reject(self._next, bytes(self._buf[:4000]).decode("utf-8", "replace"),
                         "tshark output cut short (no end of line)")
            self._buf.clear()
        done = self.flows.flush() if final else self.flows.add(None, now_ns)
        self._emit_flows(done)
        self._emit_hellos(now_ns, final)

    def _batch(self, b: pa.RecordBatch, now_ns: int) -> None:
        n = b.num_rows
        frames = b.column("frame.number").to_numpy(zero_copy_only=False)
        # tshark restarts frame numbers (and tcp.stream) at each session reset: number the epochs
        resets = np.concatenate([[frames[0] <= self._last_frame], frames[1:] <= frames[:-1]])
        epoch = self._epoch + np.cumsum(resets, dtype=np.int64)
        self._last_frame = int(frames[-1])
        self._epoch = int(epoch[-1])
        seq = pa.array(range(self._next, self._next + n), pa.int64())
        self._next += n
        b = b.set_column(b.schema.get_field_index("frame.number"), "frame.number", seq)
        core = packet_core(b)
        if epoch.any():
            core["stream"] = pc.add(core["stream"], pa.array(epoch << 32))
        self.m.received += n
        ts = core["ts_ns"].to_numpy()
        self.m.lag_seconds = max(0.0, (now_ns - int(ts.max())) / 1e9)
        for frame, text, reason in apps.malformed(b, core):
            self._reject(frame, text, reason)
        table, hellos = apps.frame_events(b, core, self.ctx)
        if table is not None:
            self._out.append(table)
        self._hellos.extend(hellos)
        self._emit_flows(self.flows.add(core, now_ns))

    def _emit_flows(self, done: dict | None) -> None:
        if done is not None and done["n"]:
            self._out.append(apps.flow_events(done, self.ctx))
            self.m.flows += done["n"]

    def _emit_hellos(self, now_ns: int, final: bool) -> None:
        if not self._hellos:
            return
        hold = -1 if final else int(self.idle_timeout * 1e9)
        ready, wait = apps.tls_ready(self._hellos, now_ns, hold)
        if len(wait) > self.max_hellos:  # oldest first: paired with nothing
            wait.sort(key=lambda h: h["@ts_ns"])
            ready += wait[: len(wait) - self.max_hellos]
            wait = wait[len(wait) - self.max_hellos:]
        self._hellos = wait
        if ready:
            self._out.append(apps.events_from_rows(apps.tls_rows(ready, self.ctx)))

    def _reject(self, offset: int, text: str, reason: str) -> None:
        self._dead.append({
            "id": ids.deadletter_id(self.name, offset, "read", f"{time.time_ns()}\x1f{text}\x1f{reason}"),
            "@timestamp": datetime.now(timezone.utc),
            "taishi.source": self.name,
            "log.offset": offset,
            "stage": "read",
            "reason": f"{reason} (on {self.interface})",
            "event.original": text,
        })
        self.m.deadlettered += 1

    # -- delivery --------------------------------------------------------------------
    def _flush(self) -> None:
        if self._dead:
            self.bus.produce(TOPIC_DEADLETTER, deadletters_table(self._dead))
            self._dead = []
        if self._next == self._seq and not self._out:
            return
        out, self._out = self._out, []
        table = pa.concat_tables(out) if len(out) > 1 else (out[0] if out else None)
        if table is None:
            from taishi.schema import EVENT_SCHEMA

            table = EVENT_SCHEMA.empty_table()
        for row in pc.value_counts(table.column("event.dataset")).to_pylist() if table.num_rows else []:
            self.m.by_dataset[row["values"]] = self.m.by_dataset.get(row["values"], 0) + row["counts"]
        self.m.parsed += table.num_rows
        self.bus.produce(TOPIC_EVENTS, table, meta={"listener": self.name, "seq": self._next - 1})
        self._seq = self._next
        self.m.batches += 1

    # -- metrics ---------------------------------------------------------------------
    def metrics(self) -> dict:
        drops = (self.status.get("kernel_drops") or 0) + (self.status.get("unread_at_stop") or 0)
        if_drops = self.interface_drops()
        return {
            "received": self.m.received,
            "parsed": self.m.parsed,
            "flows": self.m.flows,
            "open_flows": self.flows.open,
            "flows_evicted": self.flows.evicted,
            "dropped": drops + if_drops,
            "kernel_drops": drops,
            "interface_drops": if_drops,
            "deadlettered": self.m.deadlettered,
            "bytes": self.m.bytes,
            "batches": self.m.batches,
            "pending": len(self._buf),
            "lag_seconds": round(self.m.lag_seconds, 3),
        }

    def prometheus(self) -> str:
        """The metrics in Prometheus text exposition format."""
        gauges = {"open_flows", "pending", "lag_seconds"}
        out = []
        labels = f'collector="{self.name}",interface="{self.interface}"'
        for key, value in self.metrics().items():
            kind = "gauge" if key in gauges else "counter"
            name = f"taishi_capture_{key}" + ("_total" if kind == "counter" else "")
            out.append(f"# TYPE {name} {kind}")
            out.append(f"{name}{{{labels}}} {value}")
        out.append("# TYPE taishi_capture_events_total counter")
        for ds, n in sorted(self.m.by_dataset.items()):
            out.append(f'taishi_capture_events_total{{{labels},dataset="{ds}"}} {n}')
        return "\n".join(out) + "\n"
