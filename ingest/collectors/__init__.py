"""Long-running network collectors that feed the bus (``taishi run`` starts them).

Every collector is a :class:`Collector`: an asyncio loop in a background
thread that binds its listeners, decodes what arrives, and writes raw batches
to ``raw.<format>`` with a per-listener sequence number in the frame meta (so a
restart continues the sequence and event ids never repeat). ``start()`` returns
once the sockets are bound; ``stop()`` flushes what is in flight.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from typing import Callable

from taishi.bus import Bus

UDP_RCVBUF = 8 * 1024 * 1024  # a burst of datagrams must not overflow the kernel buffer


@dataclass
class Listener:
    """One listening socket: ``proto`` udp, tcp or tls on host:port."""

    proto: str
    host: str = "127.0.0.1"
    port: int = 5514

    @classmethod
    def parse(cls, proto: str, spec: str) -> "Listener":
        host, _, port = spec.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"{proto} listener {spec!r}: expected HOST:PORT")
        return cls(proto, host or "0.0.0.0", int(port))


def udp_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket with a large receive buffer."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


UDP_BURST = 512  # datagrams read per wake-up before the loop turns to its other work (timers, TCP)


def read_udp(loop: asyncio.AbstractEventLoop, sock: socket.socket,
             on_datagram: Callable[[bytes, tuple], None]) -> Callable[[], None]:
    """Hand every datagram arriving on ``sock`` to ``on_datagram(data, addr)`` on ``loop``; returns
    the function that stops reading and closes the socket.

    A wake-up drains up to :data:`UDP_BURST` datagrams: asyncio's datagram transport reads one per
    wake-up (a poll, a read and the callbacks each time), which cost a syslog receiver ~8 us a
    datagram.
    """
    sock.setblocking(False)
    fd, recv = sock.fileno(), sock.recvfrom

    def ready() -> None:
        for _ in range(UDP_BURST):
            try:
                data, addr = recv(65535)
            except OSError:  # nothing left (BlockingIOError), or an error queued on the socket: next wake-up
                return
            on_datagram(data, addr)

    loop.add_reader(fd, ready)

    def close() -> None:
        loop.remove_reader(fd)
        sock.close()

    return close


class Collector:
    """Lifecycle shared by the collectors: subclasses implement ``_serve()``
    (bind, set ``self.bound``, call ``self._ready.set()``, run until
    ``self._stopping`` is set) and ``_flush()``."""

    topic: str = ""

    def __init__(self, bus: Bus, listeners: list[Listener], name: str) -> None:
        self.bus = bus
        self.listeners = listeners
        self.name = name
        meta = bus.last_meta(self.topic, "listener", name)
        self._seq = int(meta["seq"]) + 1 if meta else 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self.bound: dict[str, tuple[str, int]] = {}  # proto -> actual (host, port)
        self._error: BaseException | None = None

    def start(self):
        """Start in a background thread; returns once the sockets are bound."""
        self._thread = threading.Thread(target=self._run, name=f"taishi-{self.name}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop listening and flush everything received to the bus."""
        if self._loop and self._stopping:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread:
            self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._serve()

    async def _serve(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
