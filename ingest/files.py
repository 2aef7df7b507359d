"""Framing: files -> raw record batches (``ingest.parsers.RAW_SCHEMA``).

``read_records(path, fmt)`` reads a whole file (plain or ``.gz``) once;
``FileTailer`` follows a growing file from a durable checkpoint.

One record per non-empty line, with its byte offset in the (decompressed)
file, except a file whose first non-blank byte is ``[`` (a top-level JSON
array, e.g. the pretty-printed Suricata samples) read as ``json``/``suricata``:
there each element is one record, its offset is the element index and its
``event.original`` is the element's compact JSON.

Hints (``RAW_SCHEMA.hint``):

* Zeek TSV data lines: the compact JSON of the header seen so far (see
  :func:`header_hint`) so a line parses alone anywhere;
* Zeek JSON lines: the log type guessed from the file name (``conn`` for
  ``conn.log``, ``conn.log.labeled``, ``labeled-conn.log``, ``dns.json.gz``,
  ``conn.00:00:00-01:00:00.log``); the parser prefers the record's ``_path``;
* any line with undecodable bytes: ``"invalid-utf8"`` (the text is decoded
  with U+FFFD replacements and the parser dead-letters it).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingest.parsers import INVALID_UTF8_HINT, RAW_SCHEMA

__all__ = ["read_records", "FileTailer", "zeek_path_from_name", "header_hint", "source_name"]

CHUNK = 1 << 22
_ZEEK_HEADER_KEYS = ("separator", "set_separator", "empty_field", "unset_field", "path", "fields", "types")


def source_name(path: str | os.PathLike[str]) -> str:
    """A file's stable source name: its base name without ``.gz``."""
    name = os.path.basename(os.fspath(path))
    return name[:-3] if name.endswith(".gz") else name


_ZEEK_NAME_RE = re.compile(r"^(?:labeled-)?([A-Za-z0-9_]+?)(?:[.-].*)?$")


def zeek_path_from_name(path: str | os.PathLike[str]) -> str:
    """Zeek log type from a file name: conn.log, conn.log.labeled, labeled-conn.log,
    dns.json.gz, conn.00:00:00-01:00:00.log -> conn / dns."""
    name = source_name(path)
    m = _ZEEK_NAME_RE.match(name)
    return m.group(1) if m else name


def _unescape_sep(value: str) -> str:
    # "#separator \x09" -> tab
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def header_hint(header: dict[str, Any]) -> str:
    return orjson.dumps({k: header[k] for k in _ZEEK_HEADER_KEYS if k in header}).decode()


class _Framer:
    """Turns (offset, line bytes) into raw rows; keeps the Zeek TSV header state."""

    def __init__(self, path: str, fmt: str, header: dict[str, Any] | None = None) -> None:
        self.path = path
        self.fmt = fmt
        self.source = source_name(path)
        self.zeek_name = zeek_path_from_name(path) if fmt == "zeek" else None
        self.header: dict[str, Any] | None = header
        self._hint: str | None = header_hint(header) if header and "fields" in header else None
        self._building = False  # inside a header block
        self.sources: list[str] = []
        self.offsets: list[int] = []
        self.hints: list[str | None] = []
        self.originals: list[str] = []

    # -- zeek header ------------------------------------------------------
    def _header_line(self, text: str) -> bool:
        """Handle a '#' line of a Zeek TSV file; True when it was a header/close line."""
        if text.startswith("#separator"):
            sep = text[len("#separator") :].strip() or "\\x09"
            self.header = {"separator": _unescape_sep(sep)}
            self._hint = None
            self._building = True
            return True
        if self.header is None:
            if text.startswith("#"):
                return True  # a stray comment before any header
            return False
        sep = self.header.get("separator", "\t")
        key, _, value = text[1:].partition(sep)
        if key in ("set_separator", "empty_field", "unset_field", "path"):
            self.header[key] = value
        elif key in ("fields", "types"):
            self.header["raw_" + key] = value.split(sep)
        # open/close/other comments: not records
        if key in ("fields", "types"):
            self._fix_header()
        return True

    def _fix_header(self) -> None:
        h = self.header
        assert h is not None
        fields = h.get("raw_fields")
        if fields is None:
            return
        types = h.get("raw_types")
        # Some labelled Stratosphere files put 'tunnel_parents   label   detailed-label'
        # in one #fields entry; the data lines have one value per name.
        new_f: list[str] = []
        new_t: list[str] = []
        for i, f in enumerate(fields):
            parts = f.split() if re.search(r"\s", f) else [f]
            new_f.extend(parts)
            if types is not None:
                t = types[i] if i < len(types) else "string"
                new_t.extend([t] + ["string"] * (len(parts) - 1))
        h["fields"] = new_f
        if types is not None:
            h["types"] = new_t + types[len(fields) :]
        h.setdefault("set_separator", ",")
        h.setdefault("empty_field", "(empty)")
        h.setdefault("unset_field", "-")
        self._hint = header_hint(h)

    # -- records ----------------------------------------------------------
    def feed(self, offset: int, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return
        try:
            text = line.decode("utf-8")
            bad = False
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="replace")
            bad = True
        if text.isspace():
            return
        hint: str | None = None
        if self.fmt == "zeek":
            if text.startswith("#") and self._header_line(text):
                return
            if self.header is not None and self._hint is not None and not text.lstrip().startswith("{"):
                hint = self._hint
            else:
                hint = self.zeek_name
        if bad:
            hint = INVALID_UTF8_HINT
        self.sources.append(self.source)
        self.offsets.append(offset)
        self.hints.append(hint)
        self.originals.append(text)

    def feed_chunk(self, base: int, buf: bytes, batch_size: int) -> list[tuple[pa.Table, int]] | None:
        """Frame a buffer of complete ('\\n'-terminated) lines at file offset ``base``
        without a python loop per line; None when the chunk needs the per-line
        path (header or comment lines, JSON lines in a TSV file, bad UTF-8)."""
        if len(self.originals) or not buf:
            return None
        a = np.frombuffer(buf, dtype=np.uint8)
        nl = np.flatnonzero(a == 10)
        if len(nl) == 0 or nl[-1] != len(a) - 1:
            return None
        starts = np.empty(len(nl), dtype=np.int64)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        lengths = nl - starts
        nonempty = lengths > 0
        first = a[np.minimum(starts, len(a) - 1)]
        if self.fmt == "zeek":
            if np.any(first[nonempty] == 35):  # '#'
                return None
            if self._hint is not None and np.any(first[nonempty] == 123):  # '{' in a TSV file
                return None
            hint = self._hint if self._hint is not None else self.zeek_name
        else:
            hint = None
        if np.any(a == 13) or len(buf) >= (1 << 31) - 1:
            return None
        offs = np.empty(len(nl) + 1, dtype=np.int32)
        offs[0] = 0
        offs[1:] = nl + 1
        arr = pa.StringArray.from_buffers(len(nl), pa.py_buffer(offs), pa.py_buffer(buf))
        try:
            arr.validate(full=True)
        except pa.ArrowInvalid:
            return None
        text = pc.utf8_slice_codeunits(arr, 0, -1)  # drop the '\\n'
        blank = pc.utf8_is_space(text).to_numpy(zero_copy_only=False)
        if blank.any():  # whitespace-only lines are no records (as in feed())
            nonempty &= ~blank
        if not np.all(nonempty):
            keep = pa.array(nonempty)
            text = text.filter(keep)
            starts = starts[nonempty]
            nl = nl[nonempty]
        n = len(text)
        if n == 0:
            return []
        offsets = pa.array(starts + base, pa.int64())
        out = []
        src = pa.scalar(self.source, pa.string())
        pth = pa.scalar(self.path, pa.string())
        hnt = pa.scalar(hint, pa.string())
        for i in range(0, n, batch_size):
            m = min(batch_size, n - i)
            t = pa.Table.from_arrays(
                [pa.repeat(src, m), offsets.slice(i, m), pa.repeat(pth, m), pa.repeat(hnt, m), text.slice(i, m)],
                schema=RAW_SCHEMA,
            )
            out.append((t, base + int(nl[i + m - 1]) + 1))
        return out

    def __len__(self) -> int:
        return len(self.originals)

    def flush(self) -> pa.Table:
        n = len(self.originals)
        t = pa.Table.from_arrays(
            [
                pa.array(self.sources, pa.string()),
                pa.array(self.offsets, pa.int64()),
                pa.repeat(pa.scalar(self.path, pa.string()), n),
                pa.array(self.hints, pa.string()),
                pa.array(self.originals, pa.string()),
            ],
            schema=RAW_SCHEMA,
        )
        self.sources, self.offsets, self.hints, self.originals = [], [], [], []
        return t


def _open(path: str) -> IO[bytes]:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _first_byte(path: str) -> bytes:
    with _open(path) as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return b""
            s = chunk.lstrip()
            if s:
                return s[:1]


def _skip(f: IO[bytes], n: int) -> None:
    if n <= 0:
        return
    try:
        f.seek(n)
    except (OSError, ValueError):  # pragma: no cover - non-seekable
        while n > 0:
            got = f.read(min(n, CHUNK))
            if not got:
                break
            n -= len(got)


def _read_zeek_header(path: str, upto: int) -> dict[str, Any] | None:
    """The Zeek TSV header in force at byte ``upto`` (reads the '#' lines before it)."""
    framer = _Framer(path, "zeek")
    with _open(path) as f:
        pos = 0
        for line in f:
            if pos >= upto:
                break
            if line.startswith(b"#"):
                framer._header_line(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            pos += len(line)
    return framer.header if framer._hint else None


def _iter_chunks(f: IO[bytes], pos: int, final: bool) -> Iterator[tuple[int, bytes]]:
    """(offset, buffer of complete lines) from ``pos``; a trailing unterminated line
    is yielded alone at the end (without '\\n') only when ``final``."""
    rest = b""
    rest_pos = pos
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            break
        buf = rest + chunk if rest else chunk
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield rest_pos, buf[:cut]
            rest_pos += cut
        rest = buf[cut:]
    if rest and final:
        yield rest_pos, rest


def _frame(
    framer: _Framer, chunks: Iterator[tuple[int, bytes]], batch_size: int
) -> Iterator[tuple[pa.Table | None, int]]:
    """(raw batch or None, offset after the last line it covers) for the chunks;
    a None batch only moves the position (a chunk's tail without records)."""
    for base, buf in chunks:
        end = base + len(buf)
        tables = framer.feed_chunk(base, buf, batch_size)
        if tables is not None:
            yield from tables
            yield None, end
            continue
        # line by line: only the Zeek header/comment lines, when the other lines can go column-wise
        for lo, hi, by_line in _comment_runs(buf) if framer.fmt == "zeek" else [(0, len(buf), True)]:
            if not by_line:
                if len(framer):
                    yield framer.flush(), base + lo
                tables = framer.feed_chunk(base + lo, buf[lo:hi], batch_size)
                if tables is not None:
                    yield from tables
                    continue
            off = base + lo
            stop = base + hi
            for line in buf[lo:hi].split(b"\n"):
                if off >= stop:
                    break
                framer.feed(off, line)
                off += len(line) + 1
                if len(framer) >= batch_size:
                    yield framer.flush(), min(off, end)
        yield (framer.flush() if len(framer) else None), end


def _comment_runs(buf: bytes) -> list[tuple[int, int, bool]]:
    """``buf`` (whole lines, refused by the column-wise path) cut into runs of '#' lines
    and runs of other lines: (start, stop, framed line by line?), in order."""
    a = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    starts = np.concatenate([[0], nl + 1])
    starts = starts[starts < len(a)]
    hashed = a[starts] == 35
    if not hashed.any():  # no '#' line: the other lines were what the column-wise path refused
        return [(0, len(buf), True)]
    flips = np.flatnonzero(hashed[1:] != hashed[:-1]) + 1  # first line of each run after the first
    bounds = [0, *starts[flips].tolist(), len(buf)]
    kinds = [bool(hashed[0]), *hashed[flips].tolist()]
    return [(lo, hi, k) for lo, hi, k in zip(bounds, bounds[1:], kinds)]


def _read_json_array(path: str, fmt: str, start: int, batch_size: int) -> Iterator[pa.Table]:
    with _open(path) as f:
        data = f.read()
    framer = _Framer(path, fmt)
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError:
        items = None
    if not isinstance(items, list):
        # not a valid array: hand the whole text over so the parser dead-letters it
        framer.sources.append(framer.source)
        framer.offsets.append(0)
        framer.hints.append(None)
        framer.originals.append(data.decode("utf-8", "replace"))
        yield framer.flush()
        return
    for i in range(start, len(items)):
        framer.sources.append(framer.source)
        framer.offsets.append(i)
        framer.hints.append(None)
        framer.originals.append(orjson.dumps(items[i]).decode())
        if len(framer) >= batch_size:
            yield framer.flush()
    if len(framer):
        yield framer.flush()


def read_records(
    path: str | os.PathLike[str], fmt: str, start: int = 0, batch_size: int = 8192
) -> Iterator[pa.Table]:
    """Yield ``RAW_SCHEMA`` batches of at most ``batch_size`` records of ``path``.

    ``start`` is a byte offset in the (decompressed) file — or an element index
    for a top-level JSON array file — to resume from; it must be a record
    boundary (a previous record's offset or the offset after a line).
    """
    path = os.fspath(path)
    if fmt in ("suricata", "json", "jsonl") and _first_byte(path) == b"[":
        yield from _read_json_array(path, fmt, start, batch_size)
        return
    header = _read_zeek_header(path, start) if fmt == "zeek" and start > 0 else None
    framer = _Framer(path, fmt, header)
    with _open(path) as f:
        _skip(f, start)
        for table, _end in _frame(framer, _iter_chunks(f, start, final=True), batch_size):
            if table is not None:
                yield table


class FileTailer:
    """Follow a growing (plain, not gzip) file from a durable checkpoint.

    The checkpoint (JSON) holds the offset of the next unread byte, the file's
    inode and device, and the Zeek TSV header seen so far. ``poll()`` yields
    batches of the complete lines appended since the last poll (a partial last
    line waits for its newline); ``commit(offset)`` persists the position once
    the caller has durably handled everything before it (``commit()`` with no
    argument commits what the last ``poll()`` returned). A new tailer on the same
    checkpoint resumes there: nothing lost, nothing read twice. If the file was
    truncated or replaced (inode/device change, or size below the offset) it is
    read again from 0. Lines only: a top-level JSON array file is read with
    :func:`read_records`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: str,
        checkpoint_path: str | os.PathLike[str],
        batch_size: int = 8192,
    ) -> None:
        self.path = os.fspath(path)
        if self.path.endswith(".gz"):
            raise ValueError("FileTailer follows plain growing files; read .gz files with read_records")
        self.fmt = fmt
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.batch_size = batch_size
        cp = self._load()
        self.offset: int = int(cp.get("offset", 0))  # next unread byte
        self.inode: int | None = cp.get("inode")
        self.device: int | None = cp.get("device")
        self.header: dict[str, Any] | None = cp.get("header")
        self.committed: int = self.offset

    # -- checkpoint -------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            with open(self.checkpoint_path, "rb") as f:
                data = json.loads(f.read())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}

    def commit(self, offset: int | None = None) -> None:
        """Durably record that everything before ``offset`` has been handled."""
        off = self.offset if offset is None else int(offset)
        state = {"offset": off, "inode": self.inode, "device": self.device, "header": self.header, "path": self.path}
        target = Path(self.checkpoint_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        try:
            dfd = os.open(str(target.parent), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - platforms without dir fsync
            pass
        self.committed = off

    @property
    def position(self) -> int:
        """Offset of the next unread byte (after the last complete line polled)."""
        return self.offset

    # -- reading ----------------------------------------------------------
    def poll(self) -> Iterator[pa.Table]:
        """Batches of the complete lines appended since the last poll."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if (self.inode is not None and (st.st_ino, st.st_dev) != (self.inode, self.device)) or st.st_size < self.offset:
            self.offset = 0
            self.header = None
        self.inode, self.device = st.st_ino, st.st_dev
        if st.st_size == self.offset:
            return
        framer = _Framer(self.path, self.fmt, self.header)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for table, end in _frame(framer, _iter_chunks(f, self.offset, final=False), self.batch_size):
                self.header = framer.header
                self.offset = end
                if table is not None:
                    yield table
