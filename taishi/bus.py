"""The embedded bus: durable, ordered, append-only topics with consumer offsets.

It stands in for Kafka in embedded mode and uses the same topic names
(``raw.<format>``, ``events``, ``alerts``, ``incidents``, ``deadletter``).
A topic is a directory of segment files; each append writes one *frame*
holding one Arrow record batch (many records), so offsets count records, as
in Kafka, while IO happens per batch::

    frame = MAGIC(4) | length u32 | crc32 u32 | base_offset u64 | records u32 | meta length u32
            | meta (JSON) | Arrow IPC stream

Durability: a frame is fsync'd before ``produce`` returns. On open, the tail of
the newest segment is checked frame by frame and a torn frame (crash in the
middle of a write: short, or bad CRC) is cut off, so the log is always a clean
prefix of what was produced.

A frame may carry a small JSON ``meta`` object. Producers use it to record
what input the frame covers (a file position, an input topic's offset), so
after a crash they can tell from the log itself whether their last output
made it, and resume exactly after it (see ``last_meta``): the bus then holds
each record once even though offsets are committed after producing.

Recently produced frames are also kept in memory (up to ``cache_bytes``
per bus, oldest dropped first), so a consumer reading right behind its
producer in the same process gets the batch that was just written instead of
reading and decompressing it back; the frame was already fsync'd, so this
changes speed, not durability. ``release`` drops cached frames every
consumer has passed.

Consumer offsets live per group and topic in ``offsets/<group>/<topic>``,
replaced atomically (temp file, fsync, rename). A consumer that crashes after
producing its output but before committing re-reads the batch: delivery is
at-least-once, and the stages make re-processing harmless by writing with
deterministic ids (the store upserts by id).

>>> import tempfile, pyarrow as pa
>>> bus = Bus(Path(tempfile.mkdtemp()))
>>> bus.produce("events", pa.table({"x": [1, 2, 3]}))
(0, 3)
>>> [(b.offset, b.table.num_rows) for b in bus.read("events", 0)]
[(0, 3)]
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.ipc as ipc

MAGIC = b"TSB1"
HEADER = struct.Struct(">4sIIQII")  # magic, length (meta+payload), crc32, base offset, records, meta length
SEGMENT_BYTES = 64 * 1024 * 1024
CACHE_BYTES = 256 * 1024 * 1024  # recently produced frames kept in memory, per bus
# Frames are LZ4-compressed Arrow IPC: wide event batches are mostly nulls and
# repeated strings, and compressing costs less CPU than writing them out raw.
_IPC_OPTIONS = ipc.IpcWriteOptions(compression="lz4")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

TOPIC_EVENTS = "events"
TOPIC_ALERTS = "alerts"
TOPIC_INCIDENTS = "incidents"
TOPIC_DEADLETTER = "deadletter"


def raw_topic(fmt: str) -> str:
    """The topic raw records of input format ``fmt`` travel on (``raw.zeek`` ...)."""
    return f"raw.{fmt}"


@dataclass(frozen=True)
class Batch:
    topic: str
    offset: int  # offset of the first record
    table: pa.Table

    @property
    def next_offset(self) -> int:
        return self.offset + self.table.num_rows


@dataclass
class _Frame:
    base: int
    records: int
    segment: Path
    position: int  # of the frame header in the segment
    length: int  # meta + payload length
    meta_len: int
    meta: dict | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class _Cache:
    """Tables of recently produced frames, by (topic, base offset), within a byte budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.tables: OrderedDict[tuple[str, int], tuple[pa.Table, int]] = OrderedDict()
        self.lock = threading.Lock()

    def put(self, topic: str, base: int, table: pa.Table) -> None:
        size = table.get_total_buffer_size()
        if size > self.budget:
            return
        with self.lock:
            self.tables[(topic, base)] = (table, size)
            self.used += size
            while self.used > self.budget:
                _, (_, old) = self.tables.popitem(last=False)
                self.used -= old

    def get(self, topic: str, base: int) -> pa.Table | None:
        with self.lock:
            hit = self.tables.get((topic, base))
        return hit[0] if hit is not None else None

    def drop(self, topic: str, before: int | None = None) -> None:
        """Forget ``topic``'s frames that start before ``before`` (all of them if None)."""
        with self.lock:
            for key in [k for k in self.tables if k[0] == topic and (before is None or k[1] < before)]:
                self.used -= self.tables.pop(key)[1]


class _Topic:
    def __init__(self, root: Path, name: str, fsync: bool, cache: _Cache | None = None) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.cache = cache
        self.frames: list[_Frame] = []
        self.lock = threading.Lock()
        self.truncated_bytes = 0  # torn tail cut off at open (for tests and health)
        self._recover()

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.seg"))

    def _recover(self) -> None:
        """Index every frame; verify CRCs of the newest segment and cut a torn tail.

        Older segments were closed cleanly (a segment only rolls after a
        complete frame), so only their headers are walked.
        """
        segs = self._segments()
        for i, seg in enumerate(segs):
            last = i == len(segs) - 1
            size = seg.stat().st_size
            pos = 0
            with open(seg, "rb") as f:
                while pos + HEADER.size <= size:
                    f.seek(pos)
                    head = f.read(HEADER.size)
                    magic, length, crc, base, records, meta_len = HEADER.unpack(head)
                    end = pos + HEADER.size + length
                    if magic != MAGIC or end > size or meta_len > length:
                        break
                    body = f.read(length) if last else f.read(meta_len)
                    if last and zlib.crc32(body) != crc:
                        break
                    meta = json.loads(body[:meta_len]) if meta_len else None
                    self.frames.append(_Frame(base, records, seg, pos, length, meta_len, meta))
                    pos = end
            if pos < size:
                if not last:
                    raise IOError(f"corrupt bus segment {seg} at byte {pos} (not the tail)")
                self.truncated_bytes = size - pos
                with open(seg, "r+b") as f:
                    f.truncate(pos)
                    f.flush()
                    os.fsync(f.fileno())

    @property
    def end(self) -> int:
        return self.frames[-1].base + self.frames[-1].records if self.frames else self._first_offset()

    def _first_offset(self) -> int:
        segs = self._segments()
        return int(segs[0].stem) if segs else 0

    def append(self, table: pa.Table, meta: dict | None) -> tuple[int, int]:
        sink = pa.BufferOutputStream()
        with ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as w:
            w.write_table(table)
        payload = sink.getvalue()  # written as it is: no copy into one body
        meta_bytes = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
        length = len(meta_bytes) + payload.size
        crc = zlib.crc32(payload, zlib.crc32(meta_bytes))  # = crc32(meta + payload)
        with self.lock:
            base = self.end
            segs = self._segments()
            seg = segs[-1] if segs else None
            if seg is None or seg.stat().st_size + length > SEGMENT_BYTES:
                seg = self.dir / f"{base:020d}.seg"
            header = HEADER.pack(MAGIC, length, crc, base, table.num_rows, len(meta_bytes))
            with open(seg, "ab") as f:
                pos = f.tell()
                f.write(header + meta_bytes)
                f.write(payload)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            self.frames.append(_Frame(base, table.num_rows, seg, pos, length, len(meta_bytes), meta))
            if self.cache is not None and table.num_rows:
                self.cache.put(self.dir.name, base, table)
            return base, base + table.num_rows

    def last_meta(self, key: str, value: str) -> dict | None:
        """The meta of the newest frame whose meta has ``key == value``."""
        with self.lock:
            for fr in reversed(self.frames):
                if fr.meta and fr.meta.get(key) == value:
                    return fr.meta
        return None

    def read(self, offset: int, max_records: int | None) -> Iterator[Batch]:
        with self.lock:
            frames = [f for f in self.frames if f.base + f.records > offset]
        taken = 0
        for fr in frames:
            if max_records is not None and taken >= max_records:
                return
            table = self.cache.get(self.dir.name, fr.base) if self.cache is not None else None
            if table is None or table.num_rows != fr.records:
                with open(fr.segment, "rb") as f:
                    f.seek(fr.position + HEADER.size + fr.meta_len)
                    payload = f.read(fr.length - fr.meta_len)
                table = ipc.open_stream(pa.BufferReader(payload)).read_all()
            skip = max(0, offset - fr.base)
            if skip:
                table = table.slice(skip)
            taken += table.num_rows
            yield Batch(self.dir.name, fr.base + skip, table)

    def delete_before(self, offset: int) -> int:
        """Delete whole segments every record of which is below ``offset``."""
        with self.lock:
            segs = self._segments()
            removed = 0
            for seg, nxt in zip(segs, segs[1:]):  # never the active (last) segment
                if int(nxt.stem) <= offset:
                    seg.unlink()
                    removed += 1
            if removed:
                live = set(self._segments())
                self.frames = [f for f in self.frames if f.segment in live]
                if self.cache is not None:
                    self.cache.drop(self.dir.name, self.frames[0].base if self.frames else None)
            return removed


class Bus:
    """A set of topics and consumer groups under one directory."""

    def __init__(self, root: Path, fsync: bool = True, cache_bytes: int = CACHE_BYTES) -> None:
        self.root = Path(root)
        (self.root / "topics").mkdir(parents=True, exist_ok=True)
        (self.root / "offsets").mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._cache = _Cache(cache_bytes) if cache_bytes > 0 else None
        self._topics: dict[str, _Topic] = {}
        self._lock = threading.Lock()

    def _topic(self, name: str) -> _Topic:
        if not _TOPIC_RE.match(name):
            raise ValueError(f"bad topic name {name!r}")
        with self._lock:
            t = self._topics.get(name)
            if t is None:
                t = self._topics[name] = _Topic(self.root / "topics", name, self.fsync, self._cache)
            return t

    def topics(self) -> list[str]:
        return sorted(p.name for p in (self.root / "topics").iterdir() if p.is_dir())

    def produce(self, topic: str, table: pa.Table, meta: dict | None = None) -> tuple[int, int]:
        """Append a batch durably; returns (first offset, next offset).

        An empty batch writes nothing unless it carries ``meta`` (a producer
        recording progress over input that yielded no records).
        """
        if table.num_rows == 0 and not meta:
            end = self.end_offset(topic)
            return end, end
        return self._topic(topic).append(table, meta)

    def last_meta(self, topic: str, key: str, value: str) -> dict | None:
        """The meta of the newest frame of ``topic`` whose meta has ``key == value``."""
        return self._topic(topic).last_meta(key, value)

    def read(self, topic: str, offset: int, max_records: int | None = None) -> Iterator[Batch]:
        """Batches from ``offset`` on (the first may be cut to start exactly there)."""
        return self._topic(topic).read(offset, max_records)

    def end_offset(self, topic: str) -> int:
        return self._topic(topic).end

    def release(self, topic: str, offset: int) -> None:
        """Every consumer of ``topic`` in this process is past ``offset``: drop the
        in-memory copies of frames that end at or before it (the log keeps them)."""
        t = self._topic(topic)
        if t.cache is None:
            return
        with t.lock:
            before = next((f.base for f in t.frames if f.base + f.records > offset), None)
        t.cache.drop(topic, before)

    # consumer groups -------------------------------------------------------
    def _offset_path(self, group: str, topic: str) -> Path:
        if not _TOPIC_RE.match(group):
            raise ValueError(f"bad group name {group!r}")
        return self.root / "offsets" / group / topic

    def committed(self, group: str, topic: str) -> int:
        p = self._offset_path(group, topic)
        return int(p.read_text()) if p.exists() else 0

    def commit(self, group: str, topic: str, offset: int) -> None:
        atomic_write(self._offset_path(group, topic), str(offset).encode())

    def poll(self, group: str, topic: str, max_records: int | None = None) -> Iterator[Batch]:
        """Uncommitted batches of ``topic`` for ``group``; commit each when done with it."""
        return self.read(topic, self.committed(group, topic), max_records)

    def lag(self, group: str, topic: str) -> int:
        return self.end_offset(topic) - self.committed(group, topic)

    def groups(self) -> list[str]:
        return sorted(p.name for p in (self.root / "offsets").iterdir() if p.is_dir())

    def compact(self) -> dict[str, int]:
        """Drop segments that every consumer group has committed past."""
        out: dict[str, int] = {}
        groups = self.groups()
        for topic in self.topics():
            offs = [self.committed(g, topic) for g in groups if self._offset_path(g, topic).exists()]
            if offs:
                out[topic] = self._topic(topic).delete_before(min(offs))
        return out
