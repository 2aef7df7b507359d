"""Syslog receiver: UDP, TCP and TLS listeners feeding ``raw.syslog``.

RFC 3164 and RFC 5424 messages are accepted on any listener; the parser
(``ingest.parsers.syslog``) tells them apart. TCP and TLS streams are framed
per RFC 6587: a frame that starts with a digit is *octet-counted*
(``LEN SP MSG``, what RFC 5425 prescribes for TLS), anything else is
*newline*-delimited. The sender's address becomes ``observer.ip``.

Delivery: received messages wait in a bounded buffer and are written to the
bus every ``flush_interval`` seconds (or when ``batch_size`` are waiting),
each frame carrying the listener's sequence number in its meta. A restarted
receiver continues the sequence from the bus, so ``event.id``
(listener name, sequence, text) never repeats. ``stop()`` flushes what is in
flight.

Flood: when the buffer holds ``max_pending`` messages, UDP datagrams are
dropped and *counted* (UDP has no backpressure), while TCP/TLS readers wait
for room (backpressure to the sender). Nothing is dropped silently.

Bad input: an octet count that is not a number, a frame over
``MAX_RECORD_BYTES``, or an empty datagram is dead-lettered with the reason;
the connection is closed when its framing cannot be trusted any more.

Metrics (``metrics()`` and Prometheus text via ``prometheus()``): received,
dropped, deadlettered, bytes, connections, pending (the lag), flushed batches.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ingest.collectors import Collector, Listener, read_udp, udp_socket
from ingest.parsers import MAX_RECORD_BYTES, RAW_SCHEMA, set_hint
from taishi import ids
from taishi.bus import TOPIC_DEADLETTER, Bus, raw_topic
from taishi.schema import deadletters_table

import pyarrow as pa

TOPIC = raw_topic("syslog")
STREAM_LIMIT = MAX_RECORD_BYTES + 1024  # bytes a TCP frame may take before its separator


@dataclass
class Metrics:
    received: int = 0
    dropped: int = 0
    deadlettered: int = 0
    bytes: int = 0
    connections: int = 0
    batches: int = 0
    by_listener: dict[str, int] = field(default_factory=dict)


class SyslogCollector(Collector):
    topic = TOPIC

    def __init__(
        self,
        bus: Bus,
        listeners: list[Listener],
        *,
        name: str = "syslog",
        certfile: Path | None = None,
        keyfile: Path | None = None,
        max_pending: int = 100_000,
        batch_size: int = 8192,
        flush_interval: float = 0.5,
    ) -> None:
        super().__init__(bus, listeners, name)
        self.certfile, self.keyfile = certfile, keyfile
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.m = Metrics()
        self._pending: list[tuple[str, str, str]] = []  # (listener source, sender ip, text)
        self._dead: list[dict] = []
        self._room: asyncio.Condition | None = None

    async def _serve(self) -> None:
        self._room = asyncio.Condition()
        servers: list = []
        closers: list = []
        for ls in self.listeners:
            if ls.proto == "udp":
                sock = udp_socket(ls.host, ls.port)
                self.bound["udp"] = sock.getsockname()[:2]
                closers.append(read_udp(self._loop, sock, self.datagram))
            elif ls.proto in ("tcp", "tls"):
                ctx = None
                if ls.proto == "tls":
                    if not (self.certfile and self.keyfile):
                        raise ValueError("a TLS syslog listener needs a certificate and key")
                    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                    ctx.load_cert_chain(str(self.certfile), str(self.keyfile))
                srv = await asyncio.start_server(
                    lambda r, w, p=ls.proto: self._stream(r, w, p), ls.host, ls.port, ssl=ctx, limit=STREAM_LIMIT
                )
                servers.append(srv)
                self.bound[ls.proto] = srv.sockets[0].getsockname()[:2]
            else:
                raise ValueError(f"unknown syslog listener protocol {ls.proto!r}")
        self._ready.set()
        flusher = asyncio.create_task(self._flush_loop())
        await self._stopping.wait()
        for srv in servers:
            srv.close()
            await srv.wait_closed()
        for close in closers:
            close()
        flusher.cancel()
        self._flush()

    # -- receiving -------------------------------------------------------------------
    def _accept(self, proto: str, sender: str, text: str) -> bool:
        """Queue one message; False when the buffer is full."""
        if len(self._pending) >= self.max_pending:
            return False
        self._pending.append((f"{self.name}-{proto}", sender, text))
        self.m.received += 1
        self.m.by_listener[proto] = self.m.by_listener.get(proto, 0) + 1
        if len(self._pending) >= self.batch_size:
            self._flush()
        return True

    def _reject(self, proto: str, sender: str, data: bytes | str, reason: str) -> None:
        text = data if isinstance(data, str) else data[:65536].decode("utf-8", "replace")
        now = datetime.now(timezone.utc)
        source = f"{self.name}-{proto}"
        self._dead.append({
            "id": ids.deadletter_id(source, self._seq + len(self._dead), "read", f"{sender}\x1f{time.time_ns()}\x1f{text}"),
            "@timestamp": now,
            "taishi.source": source,
            "log.offset": -1,
            "stage": "read",
            "reason": f"{reason} (from {sender})",
            "event.original": text,
        })
        self.m.deadlettered += 1

    def datagram(self, data: bytes, addr: tuple) -> None:
        self.m.bytes += len(data)
        sender = addr[0]
        text = data.decode("utf-8", "replace").rstrip("\r\n\x00")
        if not text.strip():
            self._reject("udp", sender, data, "empty datagram")
        elif len(data) > MAX_RECORD_BYTES:
            self._reject("udp", sender, data, f"datagram exceeds {MAX_RECORD_BYTES} bytes")
        elif not self._accept("udp", sender, text):
            self.m.dropped += 1

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: str) -> None:
        """One TCP/TLS connection: RFC 6587 frames, each either octet-counted (``LEN SP MSG``) or
        newline-terminated (a last line without a newline counts at the end of the stream). The
        connection's bytes are read in chunks and cut into frames in place (no await per frame)."""
        peer = writer.get_extra_info("peername")
        sender = peer[0] if peer else "?"
        self.m.connections += 1
        limit = STREAM_LIMIT
        buf, pos, eof = b"", 0, False

        async def more() -> bool:
            """Append the next chunk to ``buf``; False at the end of the stream."""
            nonlocal buf, eof
            if eof:
                return False
            chunk = await reader.read(1 << 16)
            if not chunk:
                eof = True
                return False
            buf += chunk
            return True

        try:
            while True:
                if pos >= 1 << 16:  # keep the buffer to what is not framed yet
                    buf, pos = buf[pos:], 0
                while pos < len(buf) and buf[pos] in b" \r\n":
                    pos += 1
                if pos >= len(buf):
                    if not await more():
                        return
                    continue
                if 48 <= buf[pos] <= 57:  # octet counting
                    sp = buf.find(b" ", pos)
                    if sp < 0:
                        if len(buf) - pos > limit:
                            self._reject(proto, sender, b"", "octet count without a terminating space; connection closed")
                            return
                        if not await more():
                            return
                        continue
                    head = buf[pos:sp + 1]
                    count = head[:-1]
                    if not count.isdigit() or int(count) > MAX_RECORD_BYTES:
                        self._reject(proto, sender, head, f"bad octet count {count[:20]!r}; connection closed")
                        return
                    end = sp + 1 + int(count)
                    while len(buf) < end:
                        if not await more():
                            return  # the stream ended inside a frame
                    data = buf[sp + 1:end]
                    self.m.bytes += end - pos
                    pos = end
                else:  # newline framing
                    nl = buf.find(b"\n", pos, pos + limit + 1)
                    if nl < 0:
                        if len(buf) - pos > limit:
                            self._reject(proto, sender, buf[pos:pos + 1],
                                         f"frame exceeds {MAX_RECORD_BYTES} bytes; connection closed")
                            return
                        if await more():
                            continue
                        nl = len(buf) - 1  # last line without newline
                    data = buf[pos:nl + 1]
                    self.m.bytes += len(data)
                    pos = nl + 1
                text = data.decode("utf-8", "replace").rstrip("\r\n")
                if "\ufffd" in text and b"\xef\xbf\xbd" not in data:
                    self._reject(proto, sender, data, "invalid UTF-8 in message")
                    continue
                if not text:
                    continue
                while not self._accept(proto, sender, text):  # backpressure: wait for room
                    async with self._room:
                        await self._room.wait()
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()

    # -- delivery --------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            self._flush()
            async with self._room:
                self._room.notify_all()

    def _flush(self) -> None:
        if self._dead:
            self.bus.produce(TOPIC_DEADLETTER, deadletters_table(self._dead))
            self._dead = []
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        hints: dict[str, str] = {}  # one hint per sender
        seq0 = self._seq
        n = len(batch)
        table = pa.table(
            {
                "taishi.source": [s for s, _, _ in batch],
                "log.offset": list(range(seq0, seq0 + n)),
                "log.file.path": [None] * n,
                "hint": [hints.get(ip) or hints.setdefault(ip, set_hint({"observer.ip": ip})) for _, ip, _ in batch],
                "event.original": [t for _, _, t in batch],
            },
            schema=RAW_SCHEMA,
        )
        self._seq += n
        self.bus.produce(TOPIC, table, meta={"listener": self.name, "seq": self._seq - 1})
        self.m.batches += 1

    # -- metrics ---------------------------------------------------------------------
    def metrics(self) -> dict:
        return {
            "received": self.m.received,
            "dropped": self.m.dropped,
            "deadlettered": self.m.deadlettered,
            "bytes": self.m.bytes,
            "connections": self.m.connections,
            "batches": self.m.batches,
            "pending": len(self._pending),
        }

    def prometheus(self) -> str:
        """The metrics in Prometheus text exposition format."""
        out = []
        for key, value in self.metrics().items():
            kind = "gauge" if key == "pending" else "counter"
            name = f"taishi_syslog_{key}" + ("_total" if kind == "counter" else "")
            out.append(f"# TYPE {name} {kind}")
            out.append(f'{name}{{collector="{self.name}"}} {value}')
        return "\n".join(out) + "\n"
